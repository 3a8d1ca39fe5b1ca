#!/usr/bin/python
"""Ansible module: prove the restored workload runs and continued its state."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: workload_verify
short_description: Verify a migrated workload on the destination
description:
  - Runs on the destination after the restore. Checks that the restored process runs with
    the PID it had on the source, that it no longer runs on the source (I(source_running),
    probed by a task on the source), and that its C(progress.log) continues - the sequence
    goes on by exactly one from the last value written before the freeze, and the values
    named by the workload's continuity rules match the destination's C(restored) line.
  - Computes the app-perceived downtime, the largest gap between consecutive progress.log
    timestamps across the migration.
  - Fails when any check fails; the details are in the result either way.
options:
  working_dir:
    description: The workload's working directory (holds progress.log).
    type: path
    required: true
  pid:
    description: The restored PID (equal to the source PID).
    type: int
    required: true
  source_pid:
    description: The workload's PID on the source before the migration.
    type: int
    required: true
  source_running:
    description: Whether the workload still runs on the source.
    type: bool
    required: true
  rules:
    description: The workload's continuity rules (C(equal), C(close), C(increasing)).
    type: dict
    default: {}
  destination_host:
    description: The host name the workload writes on the destination. Defaults to this host's name.
    type: str
  wait_s:
    description: Seconds to wait for the workload's C(restored) line.
    type: float
    default: 30
attributes:
  check_mode:
    support: full
author: CRIU migration suite
"""

EXAMPLES = r"""
- name: Verify the migrated workload
  workload_verify:
    working_dir: /var/lib/criu-migration/work/e1
    pid: 16020
    source_pid: 16020
    source_running: false
    rules: {equal: [checksum], close: {rss_kb: 0.1}}
"""

RETURN = r"""
verification:
  description: Every check and its evidence.
  returned: always
  type: dict
  sample: {restored_running: true, state_continuous: true, seq_continuous: true, app_downtime_s: 1.9}
migration_metrics:
  description: What the metrics callback records.
  returned: always
  type: dict
  sample: {phase: verification, data: {restored_running: true}}
"""

import platform
import time
from pathlib import Path
from typing import Any

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.continuity import check_continuity, parse_progress


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "working_dir": {"type": "path", "required": True},
            "pid": {"type": "int", "required": True},
            "source_pid": {"type": "int", "required": True},
            "source_running": {"type": "bool", "required": True},
            "rules": {"type": "dict", "default": {}},
            "destination_host": {"type": "str"},
            "wait_s": {"type": "float", "default": 30},
        },
        supports_check_mode=True,
    )
    p = module.params
    host = p["destination_host"] or platform.node()
    progress = Path(p["working_dir"]) / "progress.log"
    deadline = time.monotonic() + p["wait_s"]
    while True:
        text = progress.read_text(errors="replace") if progress.exists() else ""
        lines, bad = parse_progress(text)
        restored_seen = any(
            line.get("host") == host and line.get("event") == "restored" for line in lines
        )
        if restored_seen or time.monotonic() >= deadline:
            break
        time.sleep(0.2)
    report = check_continuity(lines, host, p["rules"], bad)
    restored_running = _running(p["pid"])
    same_pid = p["pid"] == p["source_pid"]
    verification: dict[str, Any] = {
        "restored_running": restored_running and same_pid,
        "restored_pid": p["pid"],
        "source_pid": p["source_pid"],
        "same_pid": same_pid,
        "running_on_source": p["source_running"],
        "seq_continuous": report.seq_continuous,
        "state_continuous": report.state_continuous and report.seq_continuous,
        "last_source_seq": report.last_source_seq,
        "first_destination_seq": report.first_destination_seq,
        "source_lines": report.source_lines,
        "destination_lines": report.destination_lines,
        "app_downtime_s": report.app_downtime_s,
        "boundary_gap_s": report.boundary_gap_s,
        "typical_interval_s": report.typical_interval_s,
        "checks": [{"name": c.name, "ok": c.ok, "detail": c.detail} for c in report.checks],
        "progress_log": str(progress),
        "clock": f"{host}'s wall clock (progress.log timestamps)",
    }
    failed = [c for c in report.checks if not c.ok]
    problems = [f"{c.name}: {c.detail}" for c in failed]
    if not restored_running:
        problems.insert(0, f"restored process {p['pid']} does not run on {host}")
    if not same_pid:
        problems.insert(0, f"restored PID {p['pid']} differs from the source PID {p['source_pid']}")
    if p["source_running"]:
        problems.insert(0, f"the workload (pid {p['source_pid']}) still runs on the source")
    verification["ok"] = not problems
    verification["details"] = (
        "; ".join(problems)
        if problems
        else (
            f"pid {p['pid']} runs on {host}, seq {report.last_source_seq} -> {report.first_destination_seq}, "
            f"{len(report.checks)} checks passed"
        )
    )
    result = {
        "changed": False,
        "verification": verification,
        "migration_metrics": {"phase": "verification", "data": verification},
    }
    if problems:
        module.fail_json(msg=f"verification failed on {host}: {verification['details']}", **result)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
