#!/usr/bin/python
"""Ansible module: start a standalone workload the way CRIU needs it, and watch it."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: workload_process
short_description: Start a workload for checkpointing, or check / await its process
description:
  - C(state=started) starts a workload's command line detached from the Ansible session
    the way CRIU needs it - in a new session (C(setsid)), stdio on C(/dev/null), no inherited
    file descriptors, cwd in its working directory - after creating the working directory
    and C(checkpoint_flag); then waits until it writes C(checkpoint_ready) with C(ready:<pid>).
  - C(state=running) / C(state=absent) check that a PID runs (not a zombie) or does not, and
    fail otherwise. C(state=exited) waits up to I(timeout) for the process to end.
  - C(state=probed) only reports whether the PID runs.
  - C(state=ready) waits for a workload started with I(wait_ready=false) (e.g. so that a
    tracer could attach first) to write C(checkpoint_ready) and its first progress lines.
options:
  state:
    description: What to do.
    type: str
    choices: [started, ready, running, absent, exited, probed]
    default: started
  argv:
    description: The workload's command line (state=started), a list, never a shell string.
    type: list
    elements: str
  working_dir:
    description: The workload's working directory (created; holds the protocol files).
    type: path
  create_flag:
    description: Create C(checkpoint_flag) in I(working_dir) before the start.
    type: bool
    default: true
  pid:
    description: The process to check (states running, absent, exited, probed).
    type: int
  match:
    description: Text the process's command line must contain to count as the workload
      (e.g. its script name), so that another process that took the same PID is not
      mistaken for it (states running, absent, exited, probed).
    type: str
  wait_ready:
    description: With state=started, wait for C(checkpoint_ready) before returning.
    type: bool
    default: true
  started_at:
    description: The start time returned by state=started (state=ready reports ready_s from it).
    type: float
  progress_lines:
    description: After C(checkpoint_ready), also wait until C(progress.log) has this many lines
      (state=started), so that a line written before the freeze exists.
    type: int
    default: 0
  timeout:
    description: Seconds to wait for C(checkpoint_ready) (started) or for the exit (exited).
    type: float
    default: 120
  env:
    description: Extra environment variables for the workload.
    type: dict
    default: {}
attributes:
  check_mode:
    support: partial
    details: C(started) and C(exited) do nothing in check mode; the checks run.
author: CRIU migration suite
"""

EXAMPLES = r"""
- name: Start the memory workload
  workload_process:
    argv: [/opt/criu-migration/venv/bin/python3, /opt/criu-migration/workloads/memory_standalone.py,
           --working-dir, /var/lib/criu-migration/work/e1, --mb-size, "64"]
    working_dir: /var/lib/criu-migration/work/e1
  register: started

- name: The workload must be gone from the source
  workload_process:
    state: absent
    pid: "{{ started.pid }}"
"""

RETURN = r"""
pid:
  description: The workload's PID.
  returned: always
  type: int
  sample: 16020
running:
  description: Whether the PID runs (not a zombie).
  returned: always
  type: bool
  sample: true
ready_s:
  description: Seconds from the start until checkpoint_ready appeared.
  returned: state=started
  type: float
  sample: 0.41
started_at:
  description: Wall-clock start, seconds since the epoch (host clock).
  returned: state=started
  type: float
  sample: 1764150000.0
non_root:
  description: With state=ready, the processes of the workload's tree that do not run as
    root (pid, name, real / effective / saved uid) - criu dump needs CAP_SYS_RESOURCE for them.
  returned: state=ready, and state=started with wait_ready
  type: list
  elements: dict
  sample: [{pid: 16031, name: postgres, uids: [105, 105, 105]}]
cmdline:
  description: The process's command line, when it runs.
  returned: when running
  type: list
  elements: str
  sample: [/opt/criu-migration/venv/bin/python3, memory_standalone.py]
migration_metrics:
  description: What the metrics callback records (state=started).
  returned: state=started
  type: dict
  sample: {phase: workload_start, data: {pid: 16020, ready_s: 0.41}}
"""

import platform
import time
from pathlib import Path
from typing import Any

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.private_files import private_umask
from ansible.module_utils.proc_status import non_root_processes
from ansible.module_utils.processes import (
    BASE_ENV,
    cmdline,
    is_alive,
    reap,
    start_detached,
    wait_until,
)

# A clean environment (the SSH session's variables must not leak into the workload), with
# Python's output unbuffered.
_BASE_ENV = {**BASE_ENV, "PYTHONUNBUFFERED": "1"}


def _count_lines(path: Path) -> int:
    try:
        with path.open("rb") as handle:
            return sum(1 for line in handle if line.strip())
    except OSError:
        return 0


class WorkloadProcess:
    def __init__(self, module: AnsibleModule) -> None:
        self.module = module
        self.params = module.params
        self.host = platform.node()

    def start(self) -> dict[str, Any]:
        argv = self.params["argv"]
        working_dir = Path(self.params["working_dir"] or "")
        if not argv or not self.params["working_dir"]:
            self.module.fail_json(msg="state=started needs argv and working_dir")
        if self.module.check_mode:
            return {"changed": True, "pid": 0, "running": False, "msg": "check mode: not started"}
        working_dir.mkdir(parents=True, exist_ok=True)
        (working_dir / "checkpoint_ready").unlink(missing_ok=True)
        if self.params["create_flag"]:
            (working_dir / "checkpoint_flag").touch()
        env = dict(_BASE_ENV, **{k: str(v) for k, v in self.params["env"].items()})
        started_at = time.time()
        try:
            # new session, stdio on /dev/null, no inherited descriptors (CRIU fails on stray
            # ones), cwd in the working directory
            pid = start_detached(argv, cwd=working_dir, env=env)
        except OSError as exc:
            self.module.fail_json(msg=f"cannot start the workload on {self.host}: {exc}", argv=argv)
        result: dict[str, Any] = {
            "changed": True,
            "pid": pid,
            "running": True,
            "started_at": started_at,
            "argv": argv,
        }
        if self.params["wait_ready"]:
            result.update(self.wait_ready(pid, working_dir, started_at))
        result["migration_metrics"] = {
            "phase": "workload_start",
            "data": {
                "pid": pid,
                "started_at": started_at,
                "argv": argv,
                "ready_s": result.get("ready_s"),
            },
        }
        return result

    def wait_ready(self, pid: int, working_dir: Path, started_at: float) -> dict[str, Any]:
        """Wait for `ready:<pid>` and the first progress lines; fail if the workload dies.

        A workload this module call started is its child: its exit status is reported.
        """
        ready = working_dir / "checkpoint_ready"
        progress = working_dir / "progress.log"
        error_log = working_dir / "workload_error.log"
        deadline = time.monotonic() + self.params["timeout"]
        expected = f"ready:{pid}"
        while time.monotonic() < deadline:
            if (
                ready.exists()
                and ready.read_text().strip() == expected
                and _count_lines(progress) >= self.params["progress_lines"]
            ):
                return {
                    "running": True,
                    "ready_s": round(time.time() - started_at, 3),
                    "cmdline": cmdline(pid),
                    # CRIU needs CAP_SYS_RESOURCE to dump these (roles/workload_start)
                    "non_root": non_root_processes(pid),
                }
            if not is_alive(pid):
                rc = reap(pid)  # our child's exit status (None: another parent's process)
                detail = error_log.read_text(errors="replace")[-3000:] if error_log.exists() else ""
                last = detail.strip().splitlines()[-1] if detail.strip() else ""
                self.module.fail_json(
                    msg=f"the workload (pid {pid}) exited on {self.host} before it was ready"
                    + (f" (status {rc})" if rc is not None else "")
                    + (f"; {error_log}: {last}" if last else ""),
                    pid=pid,
                    rc=rc,
                    error_log=detail,
                )
            time.sleep(0.05)
        self.module.fail_json(
            msg=f"the workload (pid {pid}) on {self.host} did not write {ready} and "
            f"{self.params['progress_lines']} progress lines within {self.params['timeout']} s; "
            "it is left running",
            pid=pid,
        )
        raise AssertionError("unreachable")

    def check(self, state: str) -> dict[str, Any]:
        pid = self.params["pid"]
        if not pid:
            self.module.fail_json(msg=f"state={state} needs pid")
        match = self.params["match"]

        def workload_runs() -> bool:
            return is_alive(pid) and (not match or any(match in arg for arg in cmdline(pid)))

        if state == "exited" and not self.module.check_mode:
            wait_until(lambda: not workload_runs(), self.params["timeout"], interval_s=0.1)
        running = workload_runs()
        result: dict[str, Any] = {
            "changed": False,
            "pid": pid,
            "running": running,
            "host": self.host,
        }
        if is_alive(pid):
            result["cmdline"] = cmdline(pid)
            if not running:
                result["msg"] = f"PID {pid} is held by another process, not the workload ({match})"
        if state == "running" and not running:
            self.module.fail_json(msg=f"process {pid} does not run on {self.host}", **result)
        if state == "exited" and not running:
            result["migration_metrics"] = {"phase": "finish", "data": {"pid": pid, "exited": True}}
        if state in ("absent", "exited") and running and not self.module.check_mode:
            self.module.fail_json(
                msg=f"process {pid} still runs on {self.host}: {' '.join(result['cmdline'])[:200]}",
                **result,
            )
        return result


def main() -> None:
    private_umask()  # the experiment's files: 0600 / 0700 (module_utils/private_files.py)
    module = AnsibleModule(
        argument_spec={
            "state": {
                "type": "str",
                "default": "started",
                "choices": ["started", "ready", "running", "absent", "exited", "probed"],
            },
            "argv": {"type": "list", "elements": "str"},
            "working_dir": {"type": "path"},
            "create_flag": {"type": "bool", "default": True},
            "pid": {"type": "int"},
            "timeout": {"type": "float", "default": 120},
            "progress_lines": {"type": "int", "default": 0},
            "wait_ready": {"type": "bool", "default": True},
            "started_at": {"type": "float"},
            "match": {"type": "str"},
            "env": {"type": "dict", "default": {}},
        },
        required_if=[("state", "started", ("argv", "working_dir"))],
        supports_check_mode=True,
    )
    worker = WorkloadProcess(module)
    state = module.params["state"]
    if state == "started":
        module.exit_json(**worker.start())
    if state == "ready":
        if not module.params["pid"] or not module.params["working_dir"]:
            module.fail_json(msg="state=ready needs pid and working_dir")
        started_at = module.params["started_at"] or time.time()
        ready = worker.wait_ready(
            module.params["pid"], Path(module.params["working_dir"]), started_at
        )
        module.exit_json(
            changed=False,
            pid=module.params["pid"],
            **ready,
            migration_metrics={
                "phase": "workload_ready",
                "data": {"pid": module.params["pid"], **ready},
            },
        )
    module.exit_json(**worker.check(state))


if __name__ == "__main__":
    main()
