#!/usr/bin/python
"""Ansible module: wait until the workload has run long enough, written enough progress
lines, or grown enough anonymous memory before the checkpoint starts (trigger=ready)."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: workload_conditions
short_description: Wait for the workload to reach chosen conditions before the checkpoint
description:
  - The conditions of C(trigger=ready) (roles/migration_trigger), so that a sweep can migrate
    a growing workload at chosen sizes. Returns once every condition given holds -
    I(after_s) seconds since the workload wrote C(checkpoint_ready), I(after_lines) lines in
    its C(progress.log), I(at_rss_mb) MB of anonymous memory (C(RssAnon) summed over its
    process tree) - with when each one first held.
  - Fails, with where the workload stood, when it exits meanwhile or the conditions do not
    all hold within I(timeout_s); the workload keeps running.
options:
  pid:
    description: Root PID of the workload.
    type: int
    required: true
  working_dir:
    description: The workload's working directory (C(checkpoint_ready), C(progress.log)).
    type: path
    required: true
  ready_at:
    description: When the workload was ready (epoch seconds); defaults to the modification
      time of C(checkpoint_ready), which the workload writes once, by a rename.
    type: float
  after_s:
    description: Seconds the workload must run after it is ready (C(migrate_after_s)); 0 - off.
    type: float
    default: 0
  after_lines:
    description: Lines C(progress.log) must have (C(migrate_after_lines)); 0 - off.
    type: int
    default: 0
  at_rss_mb:
    description: MB (2^20 bytes) of anonymous memory the process tree must hold
      (C(migrate_at_rss_mb)); 0 - off.
    type: int
    default: 0
  timeout_s:
    description: Seconds to wait for every condition.
    type: float
    default: 600
  poll_s:
    description: Seconds between two readings.
    type: float
    default: 0.1
attributes:
  check_mode:
    support: full
    details: Reports where the workload stands and which conditions hold, without waiting.
author: CRIU migration suite
"""

EXAMPLES = r"""
- name: Migrate the memory workload once it holds 256 MB
  workload_conditions:
    pid: "{{ workload_pid }}"
    working_dir: /var/lib/criu-migration/work/e1
    at_rss_mb: 256
"""

RETURN = r"""
held:
  description: Each condition given - wanted, reached (the reading that made it hold) and
    at (epoch seconds on the source's clock).
  returned: success
  type: dict
  sample: {migrate_at_rss_mb: {wanted: 256, reached: 258.1, at: 1764150012.3}}
reading:
  description: The last reading - after_ready_s, lines, rss_anon_kb.
  returned: always
  type: dict
  sample: {after_ready_s: 4.1, lines: 9, rss_anon_kb: 264294}
migration_metrics:
  description: Phase C(trigger) for the metrics callback - the conditions, what held and when.
  returned: success
  type: dict
  sample: {phase: trigger, data: {kind: ready, held_at: 1764150012.3, waited_s: 3.8}}
"""

import os
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.proc_status import process_tree, read_status
from ansible.module_utils.processes import is_alive
from ansible.module_utils.trigger_conditions import (
    Conditions,
    Reading,
    all_held,
    track,
    waiting_for,
)


class LineCounter:
    """Non-empty lines of a growing file, read incrementally (only complete lines count)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0
        self.lines = 0

    def count(self) -> int:
        try:
            with self.path.open("rb") as handle:
                handle.seek(self.offset)
                chunk = handle.read()
        except OSError:
            return self.lines
        complete = chunk.rfind(b"\n") + 1
        self.lines += sum(1 for line in chunk[:complete].split(b"\n") if line.strip())
        self.offset += complete
        return self.lines


def rss_anon_kb(pid: int) -> int:
    """RssAnon summed over the process tree under `pid`, in kB."""
    total = 0
    for member in process_tree(pid):
        status = read_status(member) or {}
        value = status.get("RssAnon", "0 kB").split()
        total += int(value[0]) if value and value[0].isdigit() else 0
    return total


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "pid": {"type": "int", "required": True},
            "working_dir": {"type": "path", "required": True},
            "ready_at": {"type": "float"},
            "after_s": {"type": "float", "default": 0.0},
            "after_lines": {"type": "int", "default": 0},
            "at_rss_mb": {"type": "int", "default": 0},
            "timeout_s": {"type": "float", "default": 600.0},
            "poll_s": {"type": "float", "default": 0.1},
        },
        supports_check_mode=True,
    )
    p = module.params
    conditions = Conditions(p["after_s"], p["after_lines"], p["at_rss_mb"])
    if min(p["after_s"], p["after_lines"], p["at_rss_mb"]) < 0:
        module.fail_json(msg="after_s, after_lines and at_rss_mb must not be negative")
    working_dir = Path(p["working_dir"])
    ready_file = working_dir / "checkpoint_ready"
    ready_at = p["ready_at"]
    if ready_at is None:
        try:
            ready_at = os.stat(ready_file).st_mtime
        except OSError as exc:
            module.fail_json(msg=f"the workload is not ready: {ready_file}: {exc.strerror}")
    counter = LineCounter(working_dir / "progress.log")
    started = time.time()
    deadline = time.monotonic() + p["timeout_s"]
    held: dict[str, dict[str, Any]] = {}

    def read() -> Reading:
        now = time.time()
        return Reading(
            at=now,
            after_ready_s=round(now - float(ready_at), 3),
            lines=counter.count(),
            rss_anon_kb=rss_anon_kb(p["pid"]),
        )

    reading = read()
    track(conditions, reading, held)
    while not all_held(conditions, held) and not module.check_mode:
        if not is_alive(p["pid"]):
            module.fail_json(
                msg=f"the workload (pid {p['pid']}) ended while waiting for "
                + ", ".join(waiting_for(conditions, reading, held)),
                reading=asdict(reading),
                held=held,
            )
        if time.monotonic() >= deadline:
            module.fail_json(
                msg="the workload did not reach "
                + ", ".join(waiting_for(conditions, reading, held))
                + f" within {p['timeout_s']:g} s; it keeps running on the source",
                reading=asdict(reading),
                held=held,
            )
        time.sleep(p["poll_s"])
        reading = read()
        track(conditions, reading, held)
    held_at = max((h["at"] for h in held.values()), default=reading.at)
    data = {
        "kind": "ready",
        "conditions": conditions.as_settings(),
        "held": held,
        "ready_at": float(ready_at),
        "held_at": held_at,
        "waited_s": round(max(0.0, held_at - started), 3),
        "after_ready_s": round(held_at - float(ready_at), 3),
        "reading": asdict(reading),
    }
    result: dict[str, Any] = {"changed": False, "held": held, "reading": asdict(reading)}
    if module.check_mode:
        result["msg"] = "check mode: not waiting; " + (
            ", ".join(waiting_for(conditions, reading, held)) or "every condition holds"
        )
    else:
        result["migration_metrics"] = {"phase": "trigger", "data": data}
    module.exit_json(**result)


if __name__ == "__main__":
    main()
