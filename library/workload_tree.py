#!/usr/bin/python
"""Ansible module: the workload's process tree on a host after a failure - probe and settle it."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: workload_tree
short_description: Probe the workload's tree on a host, resume or end a stopped copy, remove CRIU's network lock
description:
  - Used by the rollback (roles/migration_rollback) and the recovery (playbooks/recover.yml)
    after a failure, when the workload may be running, stopped by a C(--leave-stopped) dump,
    dead of its own error, or gone with a checkpoint left.
  - C(state=probed) says whether the tree of I(pid) exists here, runs, or is stopped; when
    it does not run and I(working_dir) holds C(workload_error.log), the workload died and
    the log's tail is returned (and filed under the C(workload_died) metrics phase).
  - C(state=settled) decides the fate of a copy on this host, the source, from whether
    the destination runs the workload (I(destination_running)) - true ends a stopped copy
    here; false resumes it (TCP repair mode off, CRIU's network lock removed, SIGCONT;
    C(module_utils/source_tree.py)) and removes a lock a killed dump left beside a running
    one; unknown (omitted) keeps it stopped. A copy that runs while the destination runs
    one too is left alone, reported as C(both).
  - C(state=unlocked) removes CRIU's network lock of the dump whose log is I(dump_log)
    (its run id names the nftables table), or of I(run_id), on this host.
options:
  state:
    description: What to do.
    type: str
    choices: [probed, settled, unlocked]
    default: probed
  pid:
    description: The workload's root PID (the same on both hosts after a restore).
    type: int
  match:
    description: Text the root's command line must contain to count as the workload (its
      script), so that another process holding the PID is not taken for it.
    type: str
  working_dir:
    description: The workload's working directory here (C(workload_error.log)).
    type: path
  destination_running:
    description: Whether the destination runs the workload (state=settled); omitted - unknown.
    type: bool
  dump_log:
    description: The final dump's CRIU log (its first line names the run, and so its lock).
    type: path
  run_id:
    description: The dump's CRIU run id, when this host does not have its log.
    type: str
attributes:
  check_mode:
    support: partial
    details: C(probed) runs; the other states report what they would do.
author: CRIU migration suite
"""

EXAMPLES = r"""
- name: Settle the source's copy (the destination does not run the workload)
  workload_tree:
    state: settled
    pid: "{{ workload_pid }}"
    match: memory_standalone.py
    destination_running: false
    dump_log: /var/lib/criu-migration/images/e1/criu-dump.log
"""

RETURN = r"""
exists:
  description: The tree's root exists here (running or stopped) and is the workload.
  returned: always
  type: bool
running:
  description: The root runs (exists and is not stopped).
  returned: always
  type: bool
stopped:
  description: A process of the tree is stopped (SIGSTOP, a --leave-stopped dump).
  returned: always
  type: bool
pids:
  description: The tree's processes.
  returned: always
  type: list
  elements: int
died:
  description: The workload does not run here and its workload_error.log says why.
  returned: state=probed
  type: bool
error_tail:
  description: The last lines of workload_error.log, when it died.
  returned: when died
  type: str
action:
  description: What state=settled did - C(ended), C(resumed), C(unlocked), C(kept stopped),
    C(none).
  returned: state=settled
  type: str
location:
  description: Where the workload runs after state=settled - C(source), C(destination),
    C(both), C(unknown), C(nowhere).
  returned: state=settled
  type: str
lock_removed:
  description: CRIU network-lock tables removed.
  returned: state=settled, state=unlocked
  type: list
  elements: str
run_id:
  description: The dump's CRIU run id (read from I(dump_log)).
  returned: when known
  type: str
"""

import platform
from pathlib import Path
from typing import Any

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.processes import cmdline, process_state
from ansible.module_utils.source_tree import (
    STOPPED_STATES,
    dump_run_id,
    is_stopped,
    kill,
    remove_lock,
    resume,
    tree_pids,
    tree_states,
)

ERROR_LOG = "workload_error.log"
ERROR_TAIL_LINES = 8


def error_tail(working_dir: str | None) -> str:
    """The last lines of the workload's own error log ('' when there is none)."""
    if not working_dir:
        return ""
    path = Path(working_dir) / ERROR_LOG
    try:
        text = path.read_text(errors="replace").strip()
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-ERROR_TAIL_LINES:])


class Tree:
    def __init__(self, module: AnsibleModule) -> None:
        self.module = module
        self.p = module.params
        self.host = platform.node()
        self.run_id = self.p["run_id"] or self._run_id_from_log()

    def _run_id_from_log(self) -> str | None:
        log = self.p["dump_log"]
        if not log:
            return None
        try:
            return dump_run_id(Path(log).read_text(errors="replace")[:4096])
        except OSError:
            return None

    def run(self, argv: list[str]) -> tuple[int, str, str]:
        return self.module.run_command(argv, check_rc=False)

    def probe(self) -> dict[str, Any]:
        pid = self.p["pid"]
        state = process_state(pid) if pid else None
        is_workload = state not in (None, "Z", "X") and (
            not self.p["match"] or any(self.p["match"] in arg for arg in cmdline(pid))
        )
        pids = tree_pids(pid) if is_workload else []
        states = tree_states(pids)
        stopped = is_stopped(states)
        result: dict[str, Any] = {
            "changed": False,
            "host": self.host,
            "pid": pid,
            "exists": is_workload,
            "running": is_workload and state not in STOPPED_STATES,
            "stopped": stopped,
            "pids": pids,
            "states": {str(k): v for k, v in states.items()},
        }
        if self.run_id:
            result["run_id"] = self.run_id
        return result

    def probed(self) -> dict[str, Any]:
        result = self.probe()
        tail = "" if result["exists"] else error_tail(self.p["working_dir"])
        result["died"] = bool(tail)
        if tail:
            log = f"{self.p['working_dir']}/{ERROR_LOG}"
            result["error_tail"] = tail
            result["error_log"] = log
            result["migration_metrics"] = {
                "phase": "workload_died",
                "data": {"pid": self.p["pid"], "error_log": log, "error_tail": tail},
            }
        return result

    def settled(self) -> dict[str, Any]:
        result = self.probe()
        dest = self.p["destination_running"]
        pid = self.p["pid"]
        action, location = "none", "nowhere"
        done: dict[str, Any] = {}
        if not result["exists"]:
            location = "destination" if dest else ("unknown" if dest is None else "nowhere")
        elif dest is None:
            action, location = (
                ("kept stopped", "unknown") if result["stopped"] else ("none", "source")
            )
        elif dest and result["stopped"]:
            action, location = "ended", "destination"
            done = {} if self.module.check_mode else kill(pid, self.run, self.run_id)
        elif dest:
            location = "both"
        elif result["stopped"]:
            action, location = "resumed", "source"
            done = {} if self.module.check_mode else resume(pid, self.run, self.run_id)
        else:
            action, location = "unlocked", "source"
            done = {} if self.module.check_mode else remove_lock(self.run, self.run_id)
            if not done.get("removed"):
                action = "none"
        result.update(
            changed=action not in ("none", "kept stopped"),
            action=action,
            location=location,
            lock_removed=done.get("lock_removed", done.get("removed", [])),
            detail=done,
        )
        if action == "resumed" and done.get("resumed"):
            result["migration_metrics"] = {
                "phase": "source_resumed",
                "data": {"pid": pid, "by": "workload_tree", **done},
            }
        return result

    def unlocked(self) -> dict[str, Any]:
        if self.module.check_mode:
            return {"changed": False, "lock_removed": [], "run_id": self.run_id}
        done = remove_lock(self.run, self.run_id)
        return {
            "changed": bool(done["removed"]),
            "lock_removed": done["removed"],
            "error": done["error"],
            "run_id": self.run_id,
        }


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "state": {
                "type": "str",
                "default": "probed",
                "choices": ["probed", "settled", "unlocked"],
            },
            "pid": {"type": "int"},
            "match": {"type": "str"},
            "working_dir": {"type": "path"},
            "destination_running": {"type": "bool"},
            "dump_log": {"type": "path"},
            "run_id": {"type": "str"},
        },
        required_if=[("state", "probed", ("pid",)), ("state", "settled", ("pid",))],
        supports_check_mode=True,
    )
    tree = Tree(module)
    state = module.params["state"]
    if state == "unlocked" and not tree.run_id:
        # without the run id every CRIU table here would go: only one experiment runs on a
        # host at a time (the lock), but refuse to guess
        module.exit_json(changed=False, lock_removed=[], msg="no dump log or run id: nothing done")
    module.exit_json(**getattr(tree, state)())


if __name__ == "__main__":
    main()
