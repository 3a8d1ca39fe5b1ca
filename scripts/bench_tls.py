#!/usr/bin/env python3
"""make bench BENCH=tls: what page_server_tls costs - CRIU's page traffic with and without TLS.

The memory workload (256 MiB and 1 GiB, one block, every page touched) is dumped from the
local lab's source to `criu page-server` on its destination, with and without `--tls` (the
experiment's own CA and host certificates, made by library/tls_material.py):

  floor  on the source, no Ansible: `criu dump --page-server [--tls ...]`, timed on the
         source, CRIU's own stats-dump beside it (frozen time, pages); the page server started
         over SSH before it, as the suite does.
  fused  migrate.yml -e page_server=true [-e page_server_tls=true] (critical_path=fused):
         the suite's dump and downtime, its TLS check in the node checks included in the run's
         total but not in the downtime.

One interleaved session after a warm-up (docs/lab.md: the lab's VM hands freed memory back):
every round runs every combination, the order rotated by one per round. Prints a table
(median, min-max) and `ratio tls/plain <size> <path>: X.XX` lines (dump time), and writes
bench.json under results/bench/<UTC timestamp>-tls/.

    .venv/bin/python scripts/bench_tls.py [--rounds 5] [--suite-rounds 2] [--inventory PATH]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "module_utils"))
sys.path.insert(0, str(REPO / "scripts"))

from criu_cli import build_criu_argv  # noqa: E402
from lab_hosts import LAB_INVENTORY, LabHosts  # noqa: E402

SIZES_MB = {"256MiB": 256, "1GiB": 1024}
VARIANTS = ("plain", "tls")
NODE_ROOT = "/var/lib/criu-migration"
CRIU = "/usr/local/sbin/criu"
WORKLOAD_PYTHON = "/opt/criu-migration/venv/bin/python3"
WORKLOAD_SCRIPT = "/opt/criu-migration/workloads/memory_standalone.py"
# bench_critical_path.py's node commands start and clear the workload on a lab host
NODE_SCRIPT = REPO / "scripts" / "bench_critical_path.py"
PORT = 27000


def node_stats(images: str) -> dict[str, Any]:
    """On a lab host: the dump's stats-dump, decoded (`--node stats`)."""
    from criu_stats import summarize_stats_image

    return summarize_stats_image(f"{images}/stats-dump").get("dump", {})


def make_material(folder: Path, source: str, destination: str) -> dict[str, Any]:
    """The experiment's CA and both hosts' certificates, in `folder` (which the lab's hosts
    see: this machine's filesystem outside their private mounts)."""
    sys.path.insert(0, str(REPO / "library"))
    import tls_material

    params = {
        "dir": str(folder),
        "name": "bench",
        "hosts": [
            {"name": "source", "address": source},
            {"name": "destination", "address": destination},
        ],
        "valid_hours": 24,
        "fault": "none",
        "fault_host": None,
        "file_names": {"cacert": "ca.pem", "cert": "cert.pem", "key": "key.pem"},
    }
    old = os.umask(0o077)
    try:
        return tls_material.make(params)
    finally:
        os.umask(old)


def floor_run(lab: LabHosts, size_mb: int, variant: str, tls: dict[str, Any], index: int) -> dict:
    """One dump of the workload to the destination's page server; its timings and stats."""
    name = f"bench-tls-{os.getpid()}-{index}"
    work, images_base = f"{NODE_ROOT}/work/{name}", f"{NODE_ROOT}/images/{name}"
    images = f"{images_base}/1"
    workload = [
        WORKLOAD_PYTHON, WORKLOAD_SCRIPT, "--working-dir", work, "--mb-size", str(size_mb),
        "--interval", "0.2", "--max-memory", str(size_mb),
    ]  # fmt: skip
    node = ["/usr/bin/python3", str(NODE_SCRIPT), "--node"]
    pid = json.loads(
        lab.ssh(
            lab.source, shlex.join([*node, "start", "--work", work, "--argv", json.dumps(workload)])
        )
        .strip()
        .splitlines()[-1]
    )["pid"]
    use_tls = variant == "tls"

    def files(side: str) -> dict[str, Any]:
        if not use_tls:
            return {}
        host = tls["hosts"][side]
        return {
            "tls": True,
            "tls_cacert": host["cacert"],
            "tls_cert": host["cert"],
            "tls_key": host["key"],
        }

    server = build_criu_argv(
        CRIU, "page-server",
        {"images_dir": images, "address": lab.destination, "port": PORT,
         "log_file": f"{images_base}/criu-page-server.log", **files("destination")},
    )  # fmt: skip
    dump = build_criu_argv(
        CRIU, "dump",
        {"pid": pid, "images_dir": images, "log_file": f"{images_base}/criu-dump.log",
         "page_server": True, "address": lab.destination, "port": PORT, **files("source")},
    )  # fmt: skip
    try:
        lab.ssh(lab.destination, f"umask 077; mkdir -p {images} && {shlex.join(server)}")
        timed = (
            f"umask 077; mkdir -p {images}; s=$(date +%s.%N); {shlex.join(dump)}; rc=$?; "
            "e=$(date +%s.%N); echo $rc $s $e"
        )
        rc, start, end = lab.ssh(lab.source, timed).split()[-3:]
        if rc != "0":
            log = lab.ssh(lab.source, f"tail -5 {images_base}/criu-dump.log")
            raise SystemExit(f"criu dump ({variant}) failed (rc={rc}):\n{log}")
        stats = json.loads(
            lab.ssh(
                lab.source,
                shlex.join(
                    [
                        "/usr/bin/python3",
                        str(Path(__file__).resolve()),
                        "--node",
                        "stats",
                        "--images",
                        images,
                    ]
                ),
            )
            .strip()
            .splitlines()[-1]
        )
    finally:
        for address in (lab.source, lab.destination):
            lab.ssh(address, shlex.join([*node, "clear", "--work", work, "--images", images_base]))
    dump_s = float(end) - float(start)
    return {
        "path": "floor",
        "dump_s": dump_s,
        "frozen_s": stats.get("frozen_s"),
        "pages": stats.get("pages_written"),
        "mb_s": (stats.get("pages_written") or 0) * 4096 / 1e6 / dump_s if dump_s else None,
        "argv": dump,
    }


def suite_run(out: Path, size_mb: int, variant: str, inventory: Path) -> dict[str, Any]:
    """One migrate.yml (fused path, page server, with or without TLS)."""
    runs = out / "runs"
    runs.mkdir(parents=True, exist_ok=True)
    before = set(runs.iterdir())
    variables = {
        "workload": "memory", "mb_size": size_mb, "interval": 0.2, "max_memory": size_mb,
        "checkpoint_strategy": "full", "critical_path": "fused", "page_server": "true",
        "page_server_tls": "true" if variant == "tls" else "false",
        "post_restore_capture_s": 0, "results_root": str(runs),
    }  # fmt: skip
    argv = [str(REPO / ".venv" / "bin" / "ansible-playbook"), "migrate.yml", "-i", str(inventory)]
    for key, value in variables.items():
        argv += ["-e", f"{key}={value}"]
    env = {**os.environ, "ANSIBLE_CONFIG": str(REPO / "ansible.cfg")}
    proc = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, check=False)
    made = sorted(set(runs.iterdir()) - before)
    if proc.returncode or not made:
        raise SystemExit(f"migrate.yml failed ({variant}):\n{proc.stdout[-4000:]}")
    metrics = json.loads((made[0] / "metrics.json").read_text())
    dump = metrics["phases"]["final_dump"]
    return {
        "path": "fused",
        "dump_s": dump["duration_s"],
        "frozen_s": dump.get("frozen_s"),
        "pages": dump.get("pages_written"),
        "mb_s": (dump.get("bytes") or 0) / 1e6 / dump["duration_s"] if dump["duration_s"] else None,
        "downtime_s": metrics["downtime_s"],
        "total_s": metrics["experiment"]["duration_s"],
        "results_dir": metrics["experiment"]["results_dir"],
    }


def summarize(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def table(results: list[dict[str, Any]]) -> tuple[str, list[str], dict[str, Any]]:
    lines = [
        f"{'size':7} {'path':6} {'variant':7} {'dump median (min-max)':>24} {'frozen':>7} "
        f"{'MB/s':>6} {'downtime':>9}",
        "-" * 72,
    ]
    ratios: list[str] = []
    summary: dict[str, Any] = {}
    for size in SIZES_MB:
        for path in ("floor", "fused"):
            medians: dict[str, float] = {}
            for variant in VARIANTS:
                runs = [
                    r
                    for r in results
                    if (r["size"], r["path"], r["variant"]) == (size, path, variant)
                ]
                if not runs:
                    continue
                stats = {
                    key: summarize([r[key] for r in runs if r.get(key) is not None])
                    for key in ("dump_s", "frozen_s", "mb_s", "downtime_s")
                    if any(r.get(key) is not None for r in runs)
                }
                summary[f"{size} {path} {variant}"] = {**stats, "rounds": len(runs)}
                dump = stats["dump_s"]
                medians[variant] = dump["median"]
                down = stats.get("downtime_s", {}).get("median")
                spread = f"{dump['median']:.2f} s ({dump['min']:.2f}-{dump['max']:.2f})"
                downtime = f"{down:8.2f} s" if down is not None else f"{'-':>10}"
                lines.append(
                    f"{size:7} {path:6} {variant:7} {spread:>24} "
                    f"{stats['frozen_s']['median']:7.2f} {stats['mb_s']['median']:6.0f} {downtime}"
                )
            if medians.get("plain") and "tls" in medians:
                ratios.append(
                    f"ratio tls/plain {size} {path}: {medians['tls'] / medians['plain']:.2f}"
                )
    return "\n".join(lines), ratios, summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--rounds", type=int, default=5, help="measured floor rounds (after a warm-up)"
    )
    parser.add_argument(
        "--suite-rounds", type=int, default=2, help="measured migrate.yml rounds (0: skip them)"
    )
    parser.add_argument("--sizes", nargs="*", default=list(SIZES_MB), choices=list(SIZES_MB))
    parser.add_argument("--inventory", type=Path, default=LAB_INVENTORY, help="the lab's inventory")
    parser.add_argument("--node", help=argparse.SUPPRESS)
    parser.add_argument("--images", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.node == "stats":
        print(json.dumps(node_stats(args.images)))
        return 0

    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    out = REPO / "results" / "bench" / f"{stamp}-tls"
    out.mkdir(parents=True, exist_ok=True)
    lab = LabHosts(args.inventory)
    # the hosts see this machine's /var/tmp (not /tmp: a private tmpfs in each host)
    folder = Path(tempfile.mkdtemp(prefix="criu-bench-tls-", dir="/var/tmp"))
    results: list[dict[str, Any]] = []
    try:
        tls = make_material(folder, lab.source, lab.destination)
        combos = [(size, variant) for size in args.sizes for variant in VARIANTS]
        for round_index in range(args.rounds + 1):
            shift = round_index % len(combos)
            for size, variant in combos[shift:] + combos[:shift]:
                figures = floor_run(
                    lab, SIZES_MB[size], variant, tls, len(results) + round_index * 100
                )
                figures.update(size=size, variant=variant, round=round_index)
                label = "warm-up" if round_index == 0 else f"round {round_index}"
                print(
                    f"{label:8} {size:7} floor {variant:6} dump {figures['dump_s']:6.2f} s",
                    file=sys.stderr,
                )
                if round_index:
                    results.append(figures)
        for round_index in range(1, args.suite_rounds + 1):
            shift = round_index % len(combos)
            for size, variant in combos[shift:] + combos[:shift]:
                figures = suite_run(out, SIZES_MB[size], variant, args.inventory)
                figures.update(size=size, variant=variant, round=round_index)
                print(
                    f"round {round_index:<2} {size:7} fused {variant:6} dump {figures['dump_s']:6.2f} s "
                    f"downtime {figures['downtime_s']:6.2f} s",
                    file=sys.stderr,
                )
                results.append(figures)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    text, ratios, summary = table(results)
    (out / "bench.json").write_text(
        json.dumps(
            {
                "section": "tls",
                "started": stamp,
                "machine": {
                    "host": os.uname().nodename,
                    "kernel": os.uname().release,
                    "cpus": os.cpu_count(),
                },
                "rounds": args.rounds,
                "suite_rounds": args.suite_rounds,
                "results": results,
                "summary": summary,
                "ratios": ratios,
            },
            indent=1,
        )
    )
    print(text)
    print("\n".join(ratios))
    print(
        f"{args.rounds} floor rounds after a warm-up and {args.suite_rounds} migrate.yml rounds, "
        f"interleaved; results/bench/{stamp}-tls/bench.json"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
