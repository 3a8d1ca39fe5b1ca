#!/usr/bin/python
"""Ansible module: inject a fault on a host to exercise the suite's failure paths."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: fault_inject
short_description: Inject (or clear) a fault that makes a migration phase fail
description:
  - For failure-path experiments and tests - the suite's rollback and collection must hold
    up when a phase fails for real.
  - C(fault=pid_busy) occupies PID I(pid) on this host with a detached C(sleep), by setting
    the PID namespace's C(ns_last_pid) to I(pid)-1 just before forking; a CRIU restore that
    needs that PID then fails with "File exists".
  - C(state=cleared) kills the holder started earlier (I(holder_pid)).
options:
  fault:
    description: Which fault.
    type: str
    choices: [pid_busy]
    default: pid_busy
  state:
    description: C(present) injects, C(cleared) removes.
    type: str
    choices: [present, cleared]
    default: present
  pid:
    description: The PID to occupy (fault=pid_busy).
    type: int
  holder_pid:
    description: The holder to kill (state=cleared).
    type: int
attributes:
  check_mode:
    support: none
author: CRIU migration suite
"""

EXAMPLES = r"""
- name: Make the restore fail - take the workload's PID on the destination
  fault_inject:
    fault: pid_busy
    pid: "{{ workload_pid }}"
  delegate_to: "{{ migration_peer_host }}"
"""

RETURN = r"""
holder_pid:
  description: The process holding the PID.
  returned: state=present
  type: int
  sample: 16591
"""

import os
import signal
import subprocess
import time
from pathlib import Path

from ansible.module_utils.basic import AnsibleModule

NS_LAST_PID = Path("/proc/sys/kernel/ns_last_pid")


def occupy(module: AnsibleModule, pid: int) -> int:
    if Path(f"/proc/{pid}").exists():
        module.fail_json(msg=f"PID {pid} is already in use on this host; nothing injected")
    for _ in range(20):
        NS_LAST_PID.write_text(str(pid - 1))
        holder = subprocess.Popen(
            ["sleep", "3600"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            close_fds=True,
            start_new_session=True,
        )
        if holder.pid == pid:
            return pid
        holder.kill()  # another process took it first: try again
        holder.wait()
        time.sleep(0.01)
    module.fail_json(msg=f"could not occupy PID {pid}")
    raise AssertionError("unreachable")


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "fault": {"type": "str", "default": "pid_busy", "choices": ["pid_busy"]},
            "state": {"type": "str", "default": "present", "choices": ["present", "cleared"]},
            "pid": {"type": "int"},
            "holder_pid": {"type": "int"},
        },
        required_if=[("state", "present", ("pid",)), ("state", "cleared", ("holder_pid",))],
    )
    p = module.params
    if p["state"] == "present":
        holder = occupy(module, p["pid"])
        module.exit_json(changed=True, holder_pid=holder, fault=p["fault"])
    try:
        os.kill(p["holder_pid"], signal.SIGKILL)
    except ProcessLookupError:
        module.exit_json(changed=False, holder_pid=p["holder_pid"])
    module.exit_json(changed=True, holder_pid=p["holder_pid"])


if __name__ == "__main__":
    main()
