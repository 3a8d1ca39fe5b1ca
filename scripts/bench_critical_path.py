#!/usr/bin/env python3
"""make bench BENCH=critical-path: the suite's downtime against CRIU chained by hand.

Three variants migrate the memory workload (full dump, 256 MiB and 1 GiB, with and without
the page server) between the local lab's two hosts:

  floor     scripts/bench/floor.sh on the source, no Ansible: an SSH master connection to
            the destination (and the page server) opened before the freeze, then the same
            `criu dump` argv the fused module runs, `rsync -a --whole-file` of the images
            and the working directory over the master (aes128-gcm), and `criu restore -d`
            started over the master; wall-clock stamps on the source.
  fused     migrate.yml -e critical_path=fused (one module call does dump, transfer, restore)
  stepwise  migrate.yml -e critical_path=stepwise (one Ansible task per phase)

One interleaved session after a warm-up (the lab's VM hands freed memory back to its host;
touching it again is slower: docs/lab.md): every round runs every combination, in an order
rotated by one per round. Then the parallel section, on a three-pair lab of its own beside
the default one (prefix crbench, 10.78.0.0/24): one migrate.yml over the three pairs (256 MiB
each), all at once against `pairs_at_once=1` (the migrate play at serial: 1), from the
first dump's start to the last restore's end.

Prints a table (median, min, max of the downtime and of each phase) and the lines
`ratio fused/floor <size> <mode>: X.XX`, `ratio stepwise/floor ...` and
`ratio parallel3/sequential3: X.XX`, and writes bench.json and critical_path.png under
results/bench/<UTC timestamp>/.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shlex
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "module_utils"))

from criu_cli import build_criu_argv  # noqa: E402
from lab_hosts import LabHosts  # noqa: E402
from processes import BASE_ENV, start_detached, terminate, wait_until  # noqa: E402

SIZES_MB = {"256MiB": 256, "1GiB": 1024}
MODES = ("full", "page_server")
VARIANTS = ("floor", "fused", "stepwise")
NODE_ROOT = "/var/lib/criu-migration"
WORKLOAD_PYTHON = "/opt/criu-migration/venv/bin/python3"
WORKLOAD_SCRIPT = "/opt/criu-migration/workloads/memory_standalone.py"
CIPHER = "aes128-gcm@openssh.com"
PAGE_SERVER_PORT = 27000
PHASES = ("dump", "transfer", "restore")


def memory_params(size_mb: int) -> dict[str, Any]:
    """The memory workload at `size_mb` from its first block on (one block, then no more)."""
    return {"mb_size": size_mb, "interval": 0.2, "max_memory": size_mb}


# -- node side (run on a lab host by /usr/bin/python3 over ssh) -----------------------------------


def node_main(args: argparse.Namespace) -> dict[str, Any]:
    work = Path(args.work)
    if args.node == "start":  # source: the workload, as workload_process starts it
        work.mkdir(parents=True, exist_ok=True)
        (work / "checkpoint_flag").touch()
        argv = json.loads(args.argv)
        pid = start_detached(argv, cwd=work, env={**BASE_ENV, "PYTHONUNBUFFERED": "1"})
        progress = work / "progress.log"

        def ready() -> bool:
            marker = work / "checkpoint_ready"
            lines = progress.read_text().splitlines() if progress.exists() else []
            return (
                marker.exists() and marker.read_text().strip() == f"ready:{pid}" and len(lines) >= 2
            )

        if not wait_until(ready, 120, 0.05):
            raise SystemExit(f"the workload {pid} was not ready within 120 s")
        return {"pid": pid}
    if args.node == "finish":  # destination: end the restored workload, wait for its exit
        pid = int(Path(args.pidfile).read_text().strip())
        (work / "checkpoint_flag").unlink(missing_ok=True)
        ended = wait_until(lambda: not Path(f"/proc/{pid}").exists(), 60, 0.05)
        return {"pid": pid, "ended": ended}
    if args.node == "clear":  # either host: what this benchmark's run left there
        ended = []
        for entry in Path("/proc").iterdir():  # a workload of this run still running here
            try:
                cwd = os.readlink(entry / "cwd") if entry.name.isdigit() else ""
            except OSError:
                continue
            if cwd == args.work:
                terminate(int(entry.name))
                ended.append(int(entry.name))
        subprocess.run(["rm", "-rf", args.work, args.images], check=False)
        return {"ended": ended}
    raise SystemExit(f"unknown node command {args.node}")


# -- control side -----------------------------------------------------------------------------------


class Lab(LabHosts):
    def node(self, address: str, *node_args: str) -> dict[str, Any]:  # type: ignore[override]
        return super().node(address, Path(__file__).resolve(), *node_args)


def floor_run(lab: Lab, size_mb: int, mode: str, index: int) -> dict[str, Any]:
    """One hand-chained migration (scripts/bench/floor.sh); its timings and both argv."""
    name = f"bench-floor-{os.getpid()}-{index}"
    work, images_base = f"{NODE_ROOT}/work/{name}", f"{NODE_ROOT}/images/{name}"
    images = f"{images_base}/1"
    params = memory_params(size_mb)
    workload_argv = [
        WORKLOAD_PYTHON, WORKLOAD_SCRIPT, "--working-dir", work,
        "--mb-size", str(params["mb_size"]), "--interval", str(params["interval"]),
        "--max-memory", str(params["max_memory"]),
    ]  # fmt: skip
    pid = lab.node(lab.source, "start", "--work", work, "--argv", json.dumps(workload_argv))["pid"]
    page_server = mode == "page_server"
    # the options the critical_path role gives the fused module, for a full dump
    dump_opts = {
        "pid": pid,
        "images_dir": images,
        "log_file": f"{images_base}/criu-dump.log",
        "page_server": page_server,
        "address": lab.destination if page_server else None,
        "port": PAGE_SERVER_PORT if page_server else None,
    }
    restore_opts = {
        "images_dir": images,
        "log_file": f"{images_base}/criu-restore.log",
        "pidfile": f"{images_base}/restored.pid",
    }
    dump = build_criu_argv("/usr/local/sbin/criu", "dump", dump_opts)
    restore = build_criu_argv("/usr/local/sbin/criu", "restore", restore_opts)
    argv = [
        "sh", str(REPO / "scripts" / "bench" / "floor.sh"),
        lab.destination, lab.key, lab.known_hosts, CIPHER, f"/tmp/{name}",
        "--", images, work, "--", *dump, "--", *restore,
    ]  # fmt: skip
    if page_server:
        server = {
            "images_dir": images,
            "address": lab.destination,
            "port": PAGE_SERVER_PORT,
            "log_file": f"{images_base}/criu-page-server.log",
        }
        argv += ["--", *build_criu_argv("/usr/local/sbin/criu", "page-server", server)]
    try:
        for address in (lab.source, lab.destination):  # before the freeze, as the suite does
            lab.ssh(address, f"mkdir -p {images}")
        stamps = json.loads(lab.ssh(lab.source, shlex.join(argv)).strip().splitlines()[-1])
        lab.node(lab.destination, "finish", "--work", work, "--pidfile", restore_opts["pidfile"])
    finally:
        for address in (lab.source, lab.destination):
            lab.node(address, "clear", "--work", work, "--images", images_base)
    return {
        "variant": "floor",
        "downtime_s": stamps["restore_end"] - stamps["dump_start"],
        "dump_s": stamps["dump_end"] - stamps["dump_start"],
        "transfer_s": stamps["transfer_end"] - stamps["dump_end"],
        "restore_s": stamps["restore_end"] - stamps["transfer_end"],
        "gap_s": 0.0,
        "argv": {"dump": dump, "restore": restore},
    }


def suite_run(
    root: Path,
    size_mb: int,
    mode: str,
    path: str,
    extra: dict[str, Any] | None = None,
    inventory: str | None = None,
) -> list[dict[str, Any]]:
    """One migrate.yml; the metrics of each pair it migrated."""
    runs = root / "runs"
    runs.mkdir(parents=True, exist_ok=True)
    before = set(runs.iterdir())
    variables = {
        "workload": "memory",
        **memory_params(size_mb),
        "checkpoint_strategy": "full",
        "page_server": mode == "page_server",
        "critical_path": path,
        "post_restore_capture_s": 0,
        "results_root": str(runs),
        **(extra or {}),
    }
    argv = [str(REPO / ".venv" / "bin" / "ansible-playbook"), "migrate.yml"]
    if inventory:
        argv += ["-i", inventory]
    for key, value in variables.items():
        argv += ["-e", f"{key}={json.dumps(value) if isinstance(value, bool) else value}"]
    env = {**os.environ, "ANSIBLE_CONFIG": str(REPO / "ansible.cfg")}
    proc = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, check=False)
    made = sorted(set(runs.iterdir()) - before)
    if proc.returncode or not made:
        raise SystemExit(f"migrate.yml failed ({' '.join(argv[2:])}):\n{proc.stdout[-4000:]}")
    return [json.loads((folder / "metrics.json").read_text()) for folder in made]


def suite_figures(metrics: dict[str, Any], variant: str) -> dict[str, Any]:
    phases = metrics["phases"]
    return {
        "variant": variant,
        "downtime_s": metrics["downtime_s"],
        "dump_s": phases["final_dump"]["duration_s"],
        "transfer_s": phases["transfer"]["duration_s"],
        "restore_s": phases["restore"]["duration_s"],
        "gap_s": metrics["orchestration_gap_s"],
        "results_dir": metrics["experiment"]["results_dir"],
        "argv": {"dump": phases["final_dump"].get("cmd"), "restore": phases["restore"].get("cmd")},
    }


def epoch(stamp: str) -> float:
    return dt.datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def span_s(pairs: list[dict[str, Any]]) -> float:
    """From the first dump's start to the last restore's end, over every pair (one clock:
    the lab's hosts share this machine's)."""
    starts = [epoch(m["phases"]["final_dump"]["started_at"]) for m in pairs]
    ends = [epoch(m["phases"]["restore"]["finished_at"]) for m in pairs]
    return max(ends) - min(starts)


# The parallel section's own three-pair lab, beside the default one (which stays as it is).
PARALLEL_LAB = {
    "lab_prefix": "crbench",
    "lab_subnet": "10.78.0.0/24",
    "lab_dir": str(REPO / ".cache" / "bench-lab"),
    "lab_inventory": str(REPO / ".cache" / "bench-lab" / "hosts.yml"),
}


def lab_playbook(state: str, pairs: int = 1, lab: dict[str, str] | None = None) -> None:
    argv = [
        str(REPO / ".venv" / "bin" / "ansible-playbook"), "playbooks/lab.yml",
        "-e", f"lab_state={state}", "-e", f"lab_pairs={pairs}",
    ]  # fmt: skip
    for key, value in (lab or {}).items():
        argv += ["-e", f"{key}={value}"]
    env = {**os.environ, "ANSIBLE_CONFIG": str(REPO / "ansible.cfg")}
    proc = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, check=False)
    if proc.returncode:
        raise SystemExit(f"lab {state} with {pairs} pairs failed:\n{proc.stdout[-3000:]}")


def summarize(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def table(results: list[dict[str, Any]]) -> tuple[str, list[str], dict[str, Any]]:
    lines = [
        f"{'size':7} {'mode':12} {'variant':9} {'downtime median (min-max)':>27} "
        f"{'dump':>7} {'transfer':>9} {'restore':>8} {'gap':>7}",
        "-" * 92,
    ]
    ratios: list[str] = []
    summary: dict[str, Any] = {}
    for size in SIZES_MB:
        for mode in MODES:
            medians: dict[str, float] = {}
            for variant in VARIANTS:
                runs = [
                    r
                    for r in results
                    if (r["size"], r["mode"], r["variant"]) == (size, mode, variant)
                ]
                if not runs:
                    continue
                stats = {
                    key: summarize([r[key] for r in runs])
                    for key in ("downtime_s", "dump_s", "transfer_s", "restore_s", "gap_s")
                }
                summary[f"{size} {mode} {variant}"] = {**stats, "rounds": len(runs)}
                down = stats["downtime_s"]
                medians[variant] = down["median"]
                lines.append(
                    f"{size:7} {mode:12} {variant:9} "
                    f"{down['median']:9.2f} s ({down['min']:.2f}-{down['max']:.2f})"
                    f"{stats['dump_s']['median']:8.2f} {stats['transfer_s']['median']:9.2f} "
                    f"{stats['restore_s']['median']:8.2f} {stats['gap_s']['median']:7.2f}"
                )
            for variant in ("fused", "stepwise"):
                if variant in medians and medians.get("floor"):
                    ratios.append(
                        f"ratio {variant}/floor {size} {mode}: {medians[variant] / medians['floor']:.2f}"
                    )
    return "\n".join(lines), ratios, summary


def chart(results: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels, stacks = [], {key: [] for key in ("dump_s", "transfer_s", "restore_s", "gap_s")}
    for size in SIZES_MB:
        for mode in MODES:
            for variant in VARIANTS:
                runs = [
                    r
                    for r in results
                    if (r["size"], r["mode"], r["variant"]) == (size, mode, variant)
                ]
                if not runs:
                    continue
                labels.append(f"{size}\n{mode}\n{variant}")
                for key in stacks:
                    stacks[key].append(statistics.median(r[key] for r in runs))
    fig, ax = plt.subplots(figsize=(max(8, len(labels) * 0.9), 5))
    bottom = [0.0] * len(labels)
    names = {
        "dump_s": "dump",
        "transfer_s": "transfer",
        "restore_s": "restore",
        "gap_s": "orchestration gap",
    }
    for key, values in stacks.items():
        ax.bar(labels, values, bottom=bottom, label=names[key])
        bottom = [b + v for b, v in zip(bottom, values, strict=True)]
    ax.set_ylabel("seconds (median)")
    ax.set_title("Critical path per variant: phases stacked (memory workload, local lab)")
    ax.legend()
    ax.tick_params(axis="x", labelsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5, help="measured rounds (after a warm-up)")
    parser.add_argument("--sizes", nargs="*", default=list(SIZES_MB), choices=list(SIZES_MB))
    parser.add_argument("--modes", nargs="*", default=list(MODES), choices=list(MODES))
    parser.add_argument(
        "--parallel-rounds", type=int, default=3, help="rounds of the 3-pair section (0: skip it)"
    )
    parser.add_argument("--node", help=argparse.SUPPRESS)
    for name in ("--work", "--argv", "--pidfile", "--images"):
        parser.add_argument(name, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.node:
        print(json.dumps(node_main(args)))
        return 0

    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    out = REPO / "results" / "bench" / stamp
    out.mkdir(parents=True, exist_ok=True)
    lab_playbook("present")
    lab = Lab()
    combos = [
        (size, mode, variant) for size in args.sizes for mode in args.modes for variant in VARIANTS
    ]
    results: list[dict[str, Any]] = []
    for round_index in range(args.rounds + 1):
        shift = round_index % len(combos)
        for size, mode, variant in combos[shift:] + combos[:shift]:
            size_mb = SIZES_MB[size]
            if variant == "floor":
                figures = floor_run(lab, size_mb, mode, len(results) + round_index * 100)
            else:
                figures = suite_figures(suite_run(out, size_mb, mode, variant)[0], variant)
            figures.update(size=size, mode=mode, round=round_index)
            label = "warm-up" if round_index == 0 else f"round {round_index}"
            print(
                f"{label:8} {size:7} {mode:12} {variant:9} downtime {figures['downtime_s']:6.2f} s",
                file=sys.stderr,
            )
            if round_index:
                results.append(figures)
    text, ratios, summary = table(results)

    parallel: dict[str, Any] = {}
    if args.parallel_rounds:
        lab_playbook("present", 3, PARALLEL_LAB)
        try:
            spans: dict[str, list[float]] = {"parallel3": [], "sequential3": []}
            for round_index in range(args.parallel_rounds + 1):
                order = ["parallel3", "sequential3"]
                for variant in order if round_index % 2 == 0 else order[::-1]:
                    at_once = 0 if variant == "parallel3" else 1
                    pairs = suite_run(
                        out, 256, "full", "fused", {"pairs_at_once": at_once},
                        PARALLEL_LAB["lab_inventory"],
                    )  # fmt: skip
                    span = span_s(pairs)
                    label = "warm-up" if round_index == 0 else f"round {round_index}"
                    print(f"{label:8} {variant:11} {span:6.2f} s", file=sys.stderr)
                    if round_index:
                        spans[variant].append(span)
            parallel = {name: summarize(values) for name, values in spans.items()}
            ratios.append(
                "ratio parallel3/sequential3: "
                f"{parallel['parallel3']['median'] / parallel['sequential3']['median']:.2f}"
            )
        finally:
            lab_playbook("absent", 3, PARALLEL_LAB)

    chart(results, out / "critical_path.png")
    (out / "bench.json").write_text(
        json.dumps(
            {
                "section": "critical-path",
                "started": stamp,
                "machine": {
                    "host": os.uname().nodename,
                    "kernel": os.uname().release,
                    "cpus": os.cpu_count(),
                },
                "rounds": args.rounds,
                "results": results,
                "summary": summary,
                "parallel": parallel,
                "ratios": ratios,
                "argv": {
                    variant: next((r["argv"] for r in results if r["variant"] == variant), None)
                    for variant in ("floor", "fused")
                },
            },
            indent=1,
        )
    )
    print(text)
    if parallel:
        print(
            f"3 pairs, 256 MiB each: all at once {parallel['parallel3']['median']:.2f} s, "
            f"one at a time {parallel['sequential3']['median']:.2f} s (first dump start -> last restore end)"
        )
    print("\n".join(ratios))
    print(
        f"{args.rounds} rounds after a warm-up, interleaved; results/bench/{stamp}/ (bench.json, critical_path.png)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
