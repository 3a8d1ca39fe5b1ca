#!/usr/bin/env python3
"""make bench BENCH=links: every link profile on the lab's pair link, measured against itself.

Each profile of config/link_profiles.yaml is applied to the lab's first pair the way a run
applies it (playbooks/link.yml, library/lab_link.py), then the shaped link is measured with
the suite's own tools, from the source host's network namespace to the destination's:

  RTT     50 TCP round trips (module_utils/link_probe.py rtt): median and 90th percentile
  stream  one bulk TCP stream for 3 s (link_probe.py stream): Mbit/s counted by the receiver
  ssh     256 MiB through the transfer's own ssh argv, key, pinned host key and cipher
          (module_utils/transfer_backends.py ssh_command) into link_probe.py count on the
          destination (timed from the first byte to the last): what rsync's pipe can carry

The delay stage's own ceiling is measured first (no delay, no rate: library/lab_link.py
measure_ceiling=always), and the bare link (no shaping) is measured too. Prints measured vs
profile per profile and writes the raw figures to results/bench/links_<UTC>.json.

make bench BENCH=links-downtime (--downtime): the memory workload migrated (migrate.yml,
critical_path=fused) under each link profile, per strategy (full dump + rsync, page server,
lazy pages) at two sizes, against the 30 s and 120 s notices. One run per cell; prints the
table and writes results/bench/links_downtime_<UTC>.json.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "module_utils"))

from lab_hosts import LabHosts  # noqa: E402
from lab_links import LabHostLink, find_lab_hosts  # noqa: E402
from link_profiles import load_profiles  # noqa: E402
from transfer_backends import TransferRequest, ssh_command  # noqa: E402

PROBE = REPO / "module_utils" / "link_probe.py"
PORT = 5298
CIPHER = "aes128-gcm@openssh.com"
SSH_BYTES = 256 << 20
OUT_DIR = REPO / "results" / "bench"
# the sweep: strategies (migrate.yml variables) and sizes (MiB)
STRATEGIES = {
    "full": {"checkpoint_strategy": "full"},
    "page_server": {"checkpoint_strategy": "full", "page_server": True},
    "lazy_pages": {"checkpoint_strategy": "full", "lazy_pages": True, "lazy_pages_mode": "images"},
}
SIZES_MB = (256, 1024)
DEADLINES_S = {"30 s": 30.0, "120 s": 120.0}


def run(argv: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, check=False, **kwargs)


def runner(argv: list[str]) -> tuple[int, str, str]:
    proc = run(argv)
    return proc.returncode, proc.stdout, proc.stderr


def in_netns(host: LabHostLink, argv: list[str]) -> list[str]:
    return ["nsenter", f"--net={host.netns}", "--", *argv]


def probe(src: LabHostLink, dst: LabHostLink, mode: str, *args: str) -> dict[str, Any]:
    """One link_probe session, server in the destination's namespace, client in the source's."""
    server = subprocess.Popen(
        in_netns(dst, [sys.executable, str(PROBE), "serve", "--bind", dst.address, "--port", str(PORT), "--timeout", "30"]),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        proc = run(
            in_netns(src, [sys.executable, str(PROBE), mode, "--host", dst.address, "--port", str(PORT), *args]),
            timeout=120,
        )  # fmt: skip
    finally:
        try:
            server.wait(timeout=35)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
    if proc.returncode:
        raise SystemExit(f"link_probe {mode} failed: {proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def ssh_cat(lab: LabHosts, src: LabHostLink, dst: LabHostLink) -> dict[str, Any]:
    """SSH_BYTES through the transfer's own ssh (argv, key, pinned host key, cipher) into
    link_probe.py count on the destination, which times them from the first byte to the last
    (the session's handshake is not in the rate)."""
    request = TransferRequest(
        paths=[],
        destination=dst.address,
        ssh_key=lab.key,
        known_hosts=lab.known_hosts,
        cipher=CIPHER,
    )
    remote = f"/usr/bin/python3 {PROBE} count"
    argv = in_netns(src, [*ssh_command(request), f"root@{dst.address}", remote])
    with subprocess.Popen(
        argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    ) as proc:
        chunk = b"\0" * (1 << 20)
        assert proc.stdin is not None
        for _ in range(SSH_BYTES >> 20):
            proc.stdin.write(chunk)
        proc.stdin.close()
        out = proc.stdout.read() if proc.stdout else b""
        err = proc.stderr.read() if proc.stderr else b""
    if proc.returncode:
        raise SystemExit(f"ssh to link_probe count failed: {err.decode(errors='replace')}")
    return json.loads(out.decode().strip().splitlines()[-1])


def link_playbook(
    inventory: Path, state: str, profile: str | None = None, extra: dict[str, str] | None = None
) -> dict[str, Any]:
    """playbooks/link.yml present/absent; the lab_link module's result (present)."""
    with tempfile.TemporaryDirectory() as tmp:
        result_file = Path(tmp) / "link.json"
        argv = [str(REPO / ".venv" / "bin" / "ansible-playbook"), "playbooks/link.yml", "-i", str(inventory),
                "-e", f"link_state={state}"]  # fmt: skip
        if profile:
            argv += ["-e", f"lab_link_profile={profile}", "-e", f"link_result_file={result_file}"]
        for key, value in (extra or {}).items():
            argv += ["-e", f"{key}={value}"]
        env = {**os.environ, "ANSIBLE_CONFIG": str(REPO / "ansible.cfg")}
        proc = run(argv, cwd=REPO, env=env)
        if proc.returncode:
            raise SystemExit(
                f"playbooks/link.yml {state} {profile or ''} failed:\n{proc.stdout[-3000:]}"
            )
        return json.loads(result_file.read_text()) if profile and result_file.exists() else {}


def measure(lab: LabHosts, src: LabHostLink, dst: LabHostLink) -> dict[str, Any]:
    rtt = probe(src, dst, "rtt", "--count", "50")
    stream = probe(src, dst, "stream", "--seconds", "3")
    return {"rtt": rtt, "stream": stream, "ssh": ssh_cat(lab, src, dst)}


def p90(rtt: dict[str, Any]) -> float:
    return float(rtt["p90_ms"])


def links_table(rows: list[dict[str, Any]]) -> str:
    head = (
        f"{'profile':18} {'RTT ms':>8} {'measured':>9} {'p90':>7} {'Mbit/s':>8} "
        f"{'stream':>8} {'ssh':>8}  notes"
    )
    lines = [head, "-" * len(head)]
    for row in rows:
        m, prof = row["measured"], row.get("profile") or {}
        notes = []
        if row.get("above_stage_ceiling"):
            notes.append("above the stage's ceiling")
        if row.get("below_stage_floor"):
            notes.append("below the stage's floor")
        lines.append(
            f"{row['name']:18} {prof.get('rtt_ms', '-')!s:>8} {m['rtt']['median_ms']:9.2f} "
            f"{p90(m['rtt']):7.2f} {prof.get('rate_mbit', '-')!s:>8} {m['stream']['mbit_s']:8.0f} "
            f"{m['ssh']['mbit_s']:8.0f}  {'; '.join(notes)}"
        )
    return "\n".join(lines)


def links_main(args: argparse.Namespace, lab: LabHosts) -> int:
    found, errors = find_lab_hosts([lab.source, lab.destination], runner, "nsenter", "ip")
    if errors:
        raise SystemExit("; ".join(errors))
    src, dst = found[lab.source], found[lab.destination]
    profiles = load_profiles()
    names = args.profiles or list(profiles)
    rows: list[dict[str, Any]] = []
    link_playbook(args.inventory, "absent")
    print("bare link (no shaping) ...", file=sys.stderr)
    rows.append({"name": "bare", "measured": measure(lab, src, dst)})
    ceiling: dict[str, Any] = {}
    for index, name in enumerate(names):
        print(f"{name} ...", file=sys.stderr)
        extra = {"link_measure_ceiling": "always"} if index == 0 else {}
        applied = link_playbook(args.inventory, "present", name, extra)
        try:
            ceiling = ceiling or (applied.get("stage") or {})
            rows.append(
                {
                    "name": name,
                    "profile": applied["figures"],
                    "applied": applied["applied"],
                    "method": applied["method"],
                    "above_stage_ceiling": applied.get("above_stage_ceiling"),
                    "below_stage_floor": applied["applied"].get("below_stage_floor"),
                    "measured": measure(lab, src, dst),
                }
            )
        finally:
            link_playbook(args.inventory, "absent")
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    out = OUT_DIR / f"links_{dt.datetime.now(dt.UTC).strftime('%Y%m%d_%H%M%S')}.json"
    out.write_text(json.dumps({"ceiling": ceiling, "rows": rows}, indent=1))
    print(links_table(rows))
    if ceiling:
        print(
            f"\ndelay stage ({rows[1]['method'] if len(rows) > 1 else 'stage'}): ceiling "
            f"{ceiling.get('ceiling_mbit')} Mbit/s (one TCP stream, no delay, no rate), measured "
            f"{ceiling.get('ceiling_measured_at')}"
        )
    print(f"raw figures: {out}")
    return 0


# -- the downtime sweep ----------------------------------------------------------------------


def migrate(
    inventory: Path, root: Path, profile: str, strategy: str, size_mb: int
) -> dict[str, Any]:
    """One migrate.yml of the memory workload at `size_mb`; its metrics.json."""
    runs = root / "runs"
    runs.mkdir(parents=True, exist_ok=True)
    before = set(runs.iterdir())
    variables: dict[str, Any] = {
        "workload": "memory",
        # one block of size_mb at once, then no more (as the critical-path bench)
        "mb_size": size_mb,
        "interval": 0.2,
        "max_memory": size_mb,
        "critical_path": "fused",
        "post_restore_capture_s": 0,
        "lab_link_profile": profile,
        "results_root": str(runs),
        **STRATEGIES[strategy],
    }
    argv = [str(REPO / ".venv" / "bin" / "ansible-playbook"), "migrate.yml", "-i", str(inventory)]
    for key, value in variables.items():
        argv += ["-e", f"{key}={json.dumps(value) if isinstance(value, bool) else value}"]
    env = {**os.environ, "ANSIBLE_CONFIG": str(REPO / "ansible.cfg")}
    started = time.monotonic()
    proc = run(argv, cwd=REPO, env=env)
    made = sorted(set(runs.iterdir()) - before)
    metrics_file = made[-1] / "metrics.json" if made else None
    if not metrics_file or not metrics_file.exists():
        return {"status": "no metrics", "rc": proc.returncode, "tail": proc.stdout[-1500:]}
    metrics = json.loads(metrics_file.read_text())
    link = metrics.get("environment", {}).get("link", {})
    transfer = metrics.get("phases", {}).get("transfer", {})
    return {
        "status": metrics.get("status"),
        "downtime_s": metrics.get("downtime_s"),
        "migration_s": metrics.get("migration_s"),
        "app_downtime_s": metrics.get("app_downtime_s"),
        "transfer_s": transfer.get("duration_s"),
        "transfer_bytes": transfer.get("bytes"),
        "verified_rtt_ms": ((link.get("verified") or {}).get("rtt") or {}).get("median_ms"),
        "verified_mbit_s": ((link.get("verified") or {}).get("stream") or {}).get("mbit_s"),
        "above_stage_ceiling": link.get("above_stage_ceiling"),
        "run_s": round(time.monotonic() - started, 1),
        "results": str(made[-1]),
    }


def verdict(seconds: float | None) -> str:
    if seconds is None:
        return "failed"
    met = [name for name, limit in DEADLINES_S.items() if seconds <= limit]
    return f"{seconds:.1f} s" + ("" if "30 s" in met else " (>30 s)" if met else " (>120 s)")


def downtime_table(
    cells: list[dict[str, Any]], profiles: list[str], sizes: list[int], strategies: list[str]
) -> str:
    """Markdown: one row per profile, one column per strategy and size."""
    columns = [(s, size) for size in sizes for s in strategies]
    head = "| link | " + " | ".join(f"{s} {size} MiB" for s, size in columns) + " |"
    lines = [head, "|---" * (len(columns) + 1) + "|"]
    for profile in profiles:
        row = [f"`{profile}`"]
        for strategy, size in columns:
            cell = next(
                (
                    c
                    for c in cells
                    if c["profile"] == profile
                    and c["strategy"] == strategy
                    and c["size_mb"] == size
                ),
                None,
            )
            if cell is None:
                row.append("-")
            elif cell["status"] != "ok":
                row.append(f"failed ({cell['status']})")
            else:
                row.append(verdict(cell["migration_s"]))
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def downtime_main(args: argparse.Namespace) -> int:
    profiles = args.profiles or [
        "none",
        "same_az",
        "cross_az",
        "cross_region",
        "cross_region_far",
        "large_baseline",
    ]
    root = REPO / ".cache" / "bench-links"
    cells: list[dict[str, Any]] = []
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    out = OUT_DIR / f"links_downtime_{dt.datetime.now(dt.UTC).strftime('%Y%m%d_%H%M%S')}.json"
    for size in args.sizes:
        for profile in profiles:
            for strategy in args.strategies:
                result = migrate(args.inventory, root, profile, strategy, size)
                cells.append({"profile": profile, "strategy": strategy, "size_mb": size, **result})
                print(
                    f"{profile:18} {strategy:12} {size:5} MiB: {result.get('status')} "
                    f"migration {result.get('migration_s')} s, downtime {result.get('downtime_s')} s "
                    f"(run {result.get('run_s')} s)",
                    file=sys.stderr,
                    flush=True,
                )
                out.write_text(json.dumps(cells, indent=1))
    print(downtime_table(cells, profiles, args.sizes, args.strategies))
    print(
        "\nmigration time on the deadline clock (first checkpoint operation -> restored); "
        "(>30 s): misses GCP / Azure's 30 s notice, (>120 s): misses AWS's 120 s too"
    )
    print(f"raw figures: {out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--profiles", nargs="*", help="profile names (default: all / the sweep's)")
    parser.add_argument(
        "--inventory", type=Path, default=REPO / "inventories" / "lab" / "hosts.yml"
    )
    parser.add_argument("--downtime", action="store_true", help="the migration sweep instead")
    parser.add_argument("--sizes", type=int, nargs="*", default=list(SIZES_MB))
    parser.add_argument(
        "--strategies", nargs="*", default=list(STRATEGIES), choices=list(STRATEGIES)
    )
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        raise SystemExit("the links benchmark needs root (nsenter into the lab's namespaces)")
    if args.downtime:
        return downtime_main(args)
    return links_main(args, LabHosts(args.inventory))


if __name__ == "__main__":
    sys.exit(main())
