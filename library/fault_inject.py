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
  - C(fault=corrupt_image) flips one byte (XOR 0xff, in the middle) of the largest page
    image (C(pages-*.img)) in the images folder I(path) on this host - a transfer that
    corrupted data silently; C(transfer_verify=true) must catch it before the restore.
  - C(fault=workload_dies) makes the running workload I(pid) die of its own error - its
    address space is capped (C(RLIMIT_AS), as C(prlimit --as)) a little above its current
    size, so its next allocation of a block fails (C(MemoryError)), which the workload
    protocol writes to C(workload_error.log) before it exits 1. The call waits up to
    I(timeout) seconds for the death (a workload that allocates nothing more, e.g. not the
    memory workload, does not die - the call fails saying so).
  - C(state=cleared) stops the holder started earlier (I(holder_pid)) - C(SIGTERM), then
    C(SIGKILL) if it lingers.
options:
  fault:
    description: Which fault.
    type: str
    choices: [pid_busy, corrupt_image, workload_dies]
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
    description: The holder to stop (state=cleared).
    type: int
  path:
    description: The images folder whose largest page image is altered (fault=corrupt_image).
    type: path
  timeout:
    description: Seconds to wait for the workload's death (fault=workload_dies).
    type: float
    default: 30
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
  returned: fault=pid_busy, state=present
  type: int
  sample: 16591
corrupted:
  description: The file, offset and byte values altered.
  returned: fault=corrupt_image
  type: dict
  sample: {file: /var/lib/criu-migration/images/e1/1/pages-1.img, offset: 16777216, old: 0, new: 255}
"""

import resource
import time
from pathlib import Path

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.faults import CORRUPT_PAGE_IMAGE_SH, parse_corruption
from ansible.module_utils.processes import (
    is_alive,
    process_state,
    start_detached,
    terminate,
    wait_until,
)

NS_LAST_PID = Path("/proc/sys/kernel/ns_last_pid")


def occupy(module: AnsibleModule, pid: int) -> int:
    if process_state(pid) is not None:  # a zombie holds its PID too
        module.fail_json(msg=f"PID {pid} is already in use on this host; nothing injected")
    for _ in range(20):
        NS_LAST_PID.write_text(str(pid - 1))
        # the next fork takes pid; the holder outlives this module (new session)
        holder = start_detached(["sleep", "3600"])
        if holder == pid:
            return pid
        terminate(holder)  # another process took it first: try again
        time.sleep(0.01)
    module.fail_json(msg=f"could not occupy PID {pid}")
    raise AssertionError("unreachable")


def corrupt(module: AnsibleModule, folder: Path) -> dict[str, object]:
    """Flip a byte of the folder's largest page image (the same script the fused critical
    path runs on the destination)."""
    rc, out, err = module.run_command(["sh", "-c", CORRUPT_PAGE_IMAGE_SH, "corrupt", str(folder)])
    if rc != 0:
        module.fail_json(msg=err.strip() or f"corrupting a page image in {folder} failed (rc={rc})")
    return parse_corruption(out)


# fault=workload_dies: the room left above the workload's current address space - enough
# for the traceback and its log, not for another block (the lab's mb_size is 16 MB or more).
HEADROOM_BYTES = 8 * 1024 * 1024


def workload_dies(module: AnsibleModule, pid: int, timeout_s: float) -> dict[str, object]:
    """Cap `pid`'s address space just above its size; wait until it dies of it."""
    try:
        with open(f"/proc/{pid}/status", encoding="utf-8") as status:
            vm_kb = next(int(line.split()[1]) for line in status if line.startswith("VmSize:"))
    except (OSError, StopIteration, ValueError) as exc:
        module.fail_json(msg=f"fault=workload_dies: cannot read the size of process {pid}: {exc}")
    limit = vm_kb * 1024 + HEADROOM_BYTES
    try:
        resource.prlimit(pid, resource.RLIMIT_AS, (limit, limit))
    except OSError as exc:
        module.fail_json(msg=f"fault=workload_dies: prlimit of process {pid} failed: {exc}")
    if not wait_until(lambda: not is_alive(pid), timeout_s, 0.05):
        module.fail_json(
            msg=f"fault=workload_dies: the workload (pid {pid}) still runs {timeout_s:g} s after "
            f"its address space was capped at {limit // 1024} kB: it allocates no more memory "
            "(use the memory workload)",
            pid=pid,
        )
    return {"pid": pid, "rlimit_as_bytes": limit}


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "fault": {
                "type": "str",
                "default": "pid_busy",
                "choices": ["pid_busy", "corrupt_image", "workload_dies"],
            },
            "timeout": {"type": "float", "default": 30},
            "state": {"type": "str", "default": "present", "choices": ["present", "cleared"]},
            "pid": {"type": "int"},
            "holder_pid": {"type": "int"},
            "path": {"type": "path"},
        },
        required_if=[
            ("fault", "corrupt_image", ("path",)),
            ("state", "cleared", ("holder_pid",)),
        ],
    )
    p = module.params
    if p["fault"] == "workload_dies":
        if p["pid"] is None:
            module.fail_json(msg="fault=workload_dies needs pid")
        module.exit_json(
            changed=True, fault=p["fault"], **workload_dies(module, p["pid"], p["timeout"])
        )
    if p["fault"] == "corrupt_image":
        module.exit_json(changed=True, fault=p["fault"], corrupted=corrupt(module, Path(p["path"])))
    if p["state"] == "present":
        if p["pid"] is None:
            module.fail_json(msg="fault=pid_busy needs pid")
        holder = occupy(module, p["pid"])
        module.exit_json(changed=True, holder_pid=holder, fault=p["fault"])
    if not is_alive(p["holder_pid"]):
        module.exit_json(changed=False, holder_pid=p["holder_pid"])
    if not terminate(p["holder_pid"]):
        module.fail_json(
            msg=f"the holder {p['holder_pid']} did not end", holder_pid=p["holder_pid"]
        )
    module.exit_json(changed=True, holder_pid=p["holder_pid"])


if __name__ == "__main__":
    main()
