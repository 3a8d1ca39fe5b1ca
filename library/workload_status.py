#!/usr/bin/python
"""Ansible module: snapshot a workload's process tree from /proc into a text file."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: workload_status
short_description: Write a snapshot of a workload's process tree (memory, threads, fds, sockets)
description:
  - Reads C(/proc) for the process I(pid) and every live descendant (found through
    C(/proc/<pid>/task/*/children)) and writes a human-readable snapshot to I(dest) -
    the process tree with pid, ppid, state and command line, VmRSS/VmSize/VmHWM and the
    thread count from C(/proc/<pid>/status), the cwd, every open fd with its target
    (file with offset and access mode, pipe, socket) and the TCP, UDP and unix sockets the
    fds point to, matched by inode in C(/proc/<pid>/net/*).
  - The suite takes one before the first checkpoint (C(workload_status_pre_dump.txt)) and
    one after the restore (C(workload_status_post_restore.txt)), so that the two can be
    compared.
  - Reading C(/proc) does not stop or trace the process; a process that exits during the
    snapshot is left out.
options:
  pid:
    description:
      - The root of the process tree.
    type: int
    required: true
  dest:
    description:
      - The text file to write. Its folder is created.
    type: path
    required: true
  title:
    description:
      - A title for the snapshot's first line, e.g. C(pre_dump).
    type: str
    default: ""
  allow_missing:
    description:
      - When I(pid) is not running, write a snapshot that says so and succeed with empty
        figures instead of failing (useful when collecting logs after a failed run).
    type: bool
    default: false
attributes:
  check_mode:
    support: full
    details:
      - In check mode the tree is read and summarised but I(dest) is not written.
  diff_mode:
    support: none
notes:
  - Needs read access to the target's C(/proc) entries (root, or the same user).
  - Socket details come from the network namespace of each process, so a restored process
    in another namespace is described from its own point of view.
seealso:
  - module: strace_capture
  - name: proc(5)
    description: The files this module reads.
    link: https://man7.org/linux/man-pages/man5/proc.5.html
author:
  - CRIU migration suite
"""

EXAMPLES = r"""
- name: Record the workload's state before the first checkpoint
  workload_status:
    pid: "{{ workload_pid }}"
    title: pre_dump
    dest: "{{ capture_dir }}/workload_status_pre_dump.txt"
  register: status_pre_dump

- name: Record the restored workload, even when the restore failed
  workload_status:
    pid: "{{ workload_pid }}"
    title: post_restore
    dest: "{{ capture_dir }}/workload_status_post_restore.txt"
    allow_missing: true
"""

RETURN = r"""
dest:
  description: The snapshot file.
  returned: always
  type: str
  sample: /var/lib/criu-migration/capture/workload_status_pre_dump.txt
running:
  description: Whether I(pid) was running.
  returned: always
  type: bool
  sample: true
root_pid:
  description: The pid asked for.
  returned: always
  type: int
  sample: 4242
pids:
  description: The processes in the snapshot, root first, then descendants breadth-first.
  returned: always
  type: list
  elements: int
  sample: [4242, 4250]
processes:
  description: Number of processes in the snapshot.
  returned: always
  type: int
  sample: 2
rss_kb:
  description: Sum of VmRSS over the tree, in kB (pages shared between processes count twice).
  returned: always
  type: int
  sample: 268812
vmsize_kb:
  description: Sum of VmSize over the tree, in kB.
  returned: always
  type: int
  sample: 412300
threads:
  description: Sum of the thread counts over the tree.
  returned: always
  type: int
  sample: 5
fds:
  description: Open file descriptors over the tree (an fd inherited by a child counts once per process).
  returned: always
  type: int
  sample: 14
sockets:
  description: Distinct sockets (by inode) the tree holds.
  returned: always
  type: int
  sample: 2
taken:
  description: When the snapshot was taken (seconds since the epoch, node clock).
  returned: always
  type: float
  sample: 1795669123.633453
taken_iso:
  description: I(taken) in UTC, ISO 8601.
  returned: always
  type: str
  sample: "2026-11-26T04:58:43.633453Z"
migration_metrics:
  description: What the suite's metrics callback records for this call.
  returned: when a window ended (strace_capture) / always (workload_status)
  type: dict
  sample: {phase: status, data: {window: pre_dump, rss_kb: 70000, threads: 1, fds: 5}}
"""

import os
import socket

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.private_files import private_umask
from ansible.module_utils.proc_status import format_snapshot, snapshot_tree


class WorkloadStatus:
    """Take one snapshot and write it."""

    def __init__(self, params: dict, check_mode: bool = False) -> None:
        self.pid: int = params["pid"]
        self.dest: str = params["dest"]
        self.title: str = params.get("title") or ""
        self.allow_missing: bool = bool(params.get("allow_missing"))
        self.check_mode = check_mode

    def run(self) -> dict[str, object]:
        snapshot = snapshot_tree(self.pid)
        running = bool(snapshot.processes)
        if not running and not self.allow_missing:
            raise LookupError(f"process {self.pid} is not running on {socket.gethostname()}")
        if not self.check_mode:
            os.makedirs(os.path.dirname(self.dest) or ".", exist_ok=True)
            tmp = f"{self.dest}.tmp{os.getpid()}"
            with open(tmp, "w", encoding="utf-8") as handle:
                handle.write(format_snapshot(snapshot, self.title))
            os.replace(tmp, self.dest)
        return {"changed": True, "dest": self.dest, "running": running, **snapshot.summary()}


def main() -> None:
    private_umask()  # the experiment's files: 0600 / 0700 (module_utils/private_files.py)
    module = AnsibleModule(
        argument_spec={
            "pid": {"type": "int", "required": True},
            "dest": {"type": "path", "required": True},
            "title": {"type": "str", "default": ""},
            "allow_missing": {"type": "bool", "default": False},
        },
        supports_check_mode=True,
    )
    try:
        result = WorkloadStatus(module.params, module.check_mode).run()
    except LookupError as exc:
        module.fail_json(msg=str(exc), dest=module.params["dest"], pid=module.params["pid"])
    except OSError as exc:
        module.fail_json(
            msg=f"cannot write {module.params['dest']} on {socket.gethostname()}: {exc}",
            dest=module.params["dest"],
        )
    result["migration_metrics"] = {
        "phase": "status",
        "data": {
            "window": module.params["title"],
            **{
                key: result.get(key)
                for key in ("running", "pids", "rss_kb", "vmsize_kb", "threads", "fds", "sockets")
            },
        },
    }
    module.exit_json(**result)


if __name__ == "__main__":
    main()
