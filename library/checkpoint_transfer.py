#!/usr/bin/python
"""Ansible module: move checkpoint images and the working directory to the destination."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: checkpoint_transfer
short_description: Transfer checkpoint images and the working directory source -> destination
description:
  - Runs on the source host and makes I(paths) (absolute: the checkpoint's image folder and
    the workload's working directory) exist at the same paths on the destination, through
    one of the backends in C(module_utils/transfer_backends.py).
  - C(rsync) goes directly from source to destination over SSH with the given key, pinned
    known_hosts and cipher; C(--whole-file) (no delta search), C(--sparse), C(--relative).
  - Returns duration, payload bytes, files and MB/s for the metrics callback.
options:
  method:
    description: The backend.
    type: str
    choices: [rsync, efs, s3, ebs]
    default: rsync
  paths:
    description: Absolute paths on the source to send.
    type: list
    elements: path
    required: true
  destination:
    description: The destination's address as the source reaches it.
    type: str
  destination_user:
    description: SSH user on the destination (not root - rsync runs under sudo there).
    type: str
    default: root
  ssh_key:
    description: Private key on the source that the destination accepts.
    type: path
  known_hosts:
    description: known_hosts file on the source holding the destination's pinned key.
    type: path
  ssh_port:
    description: The destination's SSH port.
    type: int
    default: 22
  cipher:
    description: SSH cipher (e.g. aes128-gcm@openssh.com).
    type: str
  compress:
    description: Stream compression.
    type: str
    choices: [none, zstd]
    default: none
  compress_level:
    description: Compression level.
    type: int
    default: 3
  verify:
    description: Compare checksums of the sent files on the destination.
    type: bool
    default: false
  efs_path:
    description: The shared filesystem's mount path (efs).
    type: path
  stage:
    description: Which transfer this is (C(final), C(predump-N)), for the metrics.
    type: str
    default: final
attributes:
  check_mode:
    support: partial
    details: Reports the plan without sending anything.
author: CRIU migration suite
"""

EXAMPLES = r"""
- name: Send the final checkpoint and the working directory
  checkpoint_transfer:
    method: rsync
    paths:
      - /var/lib/criu-migration/images/e1/1
      - /var/lib/criu-migration/work/e1
    destination: 10.77.0.12
    ssh_key: /work/main/.lab/id_ed25519
    known_hosts: /work/main/.lab/known_hosts
    cipher: aes128-gcm@openssh.com
"""

RETURN = r"""
method:
  description: The backend used.
  returned: always
  type: str
  sample: rsync
duration_s:
  description: Seconds the transfer took.
  returned: success
  type: float
  sample: 0.84
bytes:
  description: Payload bytes transferred (file contents).
  returned: success
  type: int
  sample: 268435456
files:
  description: Regular files transferred.
  returned: success
  type: int
  sample: 14
throughput_mb_s:
  description: bytes / duration in MB/s (10^6 bytes).
  returned: success
  type: float
  sample: 319.6
wire_bytes:
  description: Bytes the sender put on the wire (rsync's "Total bytes sent").
  returned: rsync
  type: int
  sample: 268500000
migration_metrics:
  description: What the metrics callback records.
  returned: success
  type: dict
  sample: {phase: transfer, data: {method: rsync, duration_s: 0.84, bytes: 268435456}}
"""

import platform
from pathlib import Path

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.transfer_backends import TransferError, TransferRequest, backend_for


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "method": {"type": "str", "default": "rsync", "choices": ["rsync", "efs", "s3", "ebs"]},
            "paths": {"type": "list", "elements": "path", "required": True},
            "destination": {"type": "str"},
            "destination_user": {"type": "str", "default": "root"},
            "ssh_key": {"type": "path"},
            "known_hosts": {"type": "path"},
            "ssh_port": {"type": "int", "default": 22},
            "cipher": {"type": "str"},
            "compress": {"type": "str", "default": "none", "choices": ["none", "zstd"]},
            "compress_level": {"type": "int", "default": 3},
            "verify": {"type": "bool", "default": False},
            "efs_path": {"type": "path"},
            "stage": {"type": "str", "default": "final"},
        },
        required_if=[("method", "rsync", ("destination",))],
        supports_check_mode=True,
    )
    p = module.params
    host = platform.node()
    missing = [path for path in p["paths"] if not Path(path).exists()]
    if missing:
        module.fail_json(msg=f"nothing to send on {host}: missing {', '.join(missing)}")
    request = TransferRequest(
        paths=p["paths"],
        destination=p["destination"] or "",
        user=p["destination_user"],
        ssh_key=p["ssh_key"] or "",
        known_hosts=p["known_hosts"] or "",
        ssh_port=p["ssh_port"],
        cipher=p["cipher"] or "",
        compress=p["compress"],
        compress_level=p["compress_level"],
        verify=p["verify"],
        stage=p["stage"],
        efs_path=p["efs_path"] or "",
    )
    try:
        backend = backend_for(p["method"])
    except ValueError as exc:
        module.fail_json(msg=str(exc))
    if module.check_mode:
        module.exit_json(changed=True, method=p["method"], msg="check mode: nothing sent")

    def run(argv: list[str]) -> tuple[int, str, str]:
        return module.run_command(argv)

    try:
        result = backend.send(request, run)
    except TransferError as exc:
        module.fail_json(
            msg=f"{p['method']} transfer from {host} failed: {exc}",
            cmd=exc.argv,
            output=exc.output[-3000:],
        )
    data = result.as_dict()
    data["stage"] = p["stage"]
    module.exit_json(changed=True, **data, migration_metrics={"phase": "transfer", "data": data})


if __name__ == "__main__":
    main()
