#!/usr/bin/python
"""Ansible module: the S3 bucket and the EBS volume around a transfer, on a node."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: transfer_storage
short_description: Check the bucket, remove a run's objects, mount or unmount the EBS volume
description:
  - The node-side housekeeping of C(transfer=s3) and C(transfer=ebs), around the transfer
    itself (which is M(checkpoint_transfer) / M(critical_path)).
  - C(action=s3_check) - from this host, with its credentials - C(HeadBucket), then write,
    read back and delete a small object under the pair's prefix; fails saying what is
    missing (credentials, the endpoint, the bucket, the right to write). The node checks run
    it on both hosts before the workload starts.
  - C(action=s3_delete) - abort the pair's unfinished multipart uploads and delete its
    objects (after a run, unless C(keep_images)).
  - C(action=ebs_mount) - find the attached volume's device by its volume id (never by the
    device name given to the attach), make its filesystem when it has none and
    I(make_filesystem) (the source, once), mount it at I(transfer.ebs_mount_path).
  - C(action=ebs_unmount) - remove I(remove) first (this run's images on the volume, unless
    C(keep_images)), then flush and unmount the volume; nothing to do when it is not mounted.
  - C(action=record) - nothing but the record of I(attachment) (what the control node's
    M(ebs_attachment) did - the metrics callback files only pair hosts' results).
  - S3 actions run the standalone C(s3_transfer.py) in I(aws.tools_dir) with the node's
    C(/usr/bin/python3) (Debian's python3-boto3), the AWS environment on its stdin.
options:
  action:
    description: What to do.
    type: str
    choices: [s3_check, s3_delete, ebs_mount, ebs_unmount, record]
    required: true
  make_filesystem:
    description: C(ebs_mount) - make an ext4 filesystem when the volume has none.
    type: bool
    default: false
  remove:
    description: C(ebs_unmount) - paths on the volume removed before the unmount.
    type: list
    elements: path
    default: []
  step:
    description: What this call is for, in the metrics (C(prepare), C(cleanup), C(rollback)).
    type: str
    default: ""
  attachment:
    description: The result of the control node's M(ebs_attachment) that came before this
      call (its steps, duration, holder), recorded with it.
    type: dict
extends_documentation_fragment: [transfer, aws_api]
attributes:
  check_mode:
    support: partial
    details: C(s3_check) runs; the other actions report what they would do.
notes:
  - The EBS actions need C(blkid), C(mount), C(umount) (and C(mkfs.ext4) on the source).
author: CRIU migration suite
"""

EXAMPLES = r"""
- name: Can this host use the bucket
  transfer_storage:
    action: s3_check
    transfer: "{{ migration_pair.transfer }}"
    aws: {region: us-east-1, tools_dir: /opt/criu-migration/tools}

- name: Mount the pair's volume on the source (its filesystem made once)
  transfer_storage:
    action: ebs_mount
    make_filesystem: true
    transfer: {method: ebs, ebs_volume_id: vol-0123456789abcdef0, ebs_mount_path: /mnt/criu-ebs}
"""

RETURN = r"""
check:
  description: C(s3_check) - the test object's key and the check's duration.
  returned: action=s3_check
  type: dict
delete:
  description: C(s3_delete) - the prefix, objects deleted, multipart uploads aborted.
  returned: action=s3_delete
  type: dict
  sample: {prefix: criu-migration/e1/source/, objects_deleted: 17, uploads_aborted: 0}
ebs:
  description: C(ebs_mount) - device, device_wait_s, mkfs_s (when made), mount_s;
    C(ebs_unmount) - removed, remove_s, sync_s, umount_s.
  returned: action=ebs_mount or action=ebs_unmount
  type: dict
migration_metrics:
  description: Phase C(transfer_storage) (not for C(s3_check)).
  returned: success
  type: dict
"""

import platform
import shutil
import time
from pathlib import Path
from typing import Any

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.transfer_backends import (
    AWS_OPTIONS,
    TRANSFER_OPTIONS,
    TransferError,
    is_under,
    mount_volume,
    request_from_options,
    run_s3_tool,
    s3_location,
    unmount_volume,
)


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "action": {
                "type": "str",
                "required": True,
                "choices": ["s3_check", "s3_delete", "ebs_mount", "ebs_unmount", "record"],
            },
            "transfer": {"type": "dict", "required": True, "options": TRANSFER_OPTIONS},
            "aws": {"type": "dict", "options": AWS_OPTIONS},
            "make_filesystem": {"type": "bool", "default": False},
            "remove": {"type": "list", "elements": "path", "default": []},
            "step": {"type": "str", "default": ""},
            "attachment": {"type": "dict"},
        },
        supports_check_mode=True,
    )
    p = module.params
    action = p["action"]
    host = platform.node()
    request = request_from_options(p["transfer"], ["/"], p["aws"], stage="check")

    def run(argv: list[str], stdin: bytes | None = None) -> tuple[int, str, str]:
        if stdin is None:
            return module.run_command(argv)
        return module.run_command(argv, data=stdin, binary_data=True)

    if module.check_mode and action != "s3_check":
        module.exit_json(changed=True, msg=f"check mode: {action} not run")
    t0 = time.monotonic()
    result: dict[str, Any] = {"changed": action != "s3_check"}
    data: dict[str, Any] = {
        "backend": "ebs" if action == "record" else action.split("_")[0],
        "step": p["step"] or action,
    }
    if p["attachment"]:
        attachment = p["attachment"]
        data["attachment"] = {
            key: attachment.get(key) for key in ("steps", "duration_s", "holder", "implementation")
        }
    try:
        if action in ("s3_check", "s3_delete"):
            command = "check" if action == "s3_check" else "delete"
            extra = ("--host", host) if command == "check" else ()
            rc, reply, why, _argv = run_s3_tool(request, run, command, *extra)
            if why:
                module.fail_json(
                    msg=f"{host} cannot use {s3_location(request)} (transfer=s3): {why}",
                    rc=rc,
                )
            result[command] = reply.get(command) or {}
            data.update(result[command])
        elif action == "record":
            result["changed"] = False
        elif action == "ebs_mount":
            figures = mount_volume(
                request.ebs_volume_id,
                request.ebs_mount_path,
                request.ebs_timeout_s,
                run,
                make_filesystem=p["make_filesystem"],
            )
            result["changed"] = not figures.get("mounted_already")
            result["ebs"] = figures
            data.update(figures)
        else:
            removed = []
            t_remove = time.monotonic()
            for path in p["remove"]:
                if not is_under(path, request.ebs_mount_path) or path == request.ebs_mount_path:
                    module.fail_json(msg=f"{path} is not under {request.ebs_mount_path}")
                if Path(path).exists():
                    shutil.rmtree(path)
                    removed.append(path)
            figures = unmount_volume(request.ebs_mount_path, run)
            figures.update(removed=removed, remove_s=round(time.monotonic() - t_remove, 6))
            result["ebs"] = figures
            data.update(volume_id=request.ebs_volume_id, **figures)
    except (TransferError, ValueError, OSError) as exc:
        module.fail_json(msg=f"{action} on {host}: {exc}")
    data["duration_s"] = round(time.monotonic() - t0, 6)
    data["host"] = host
    if action != "s3_check":
        result["migration_metrics"] = {"phase": "transfer_storage", "data": data}
    module.exit_json(**result)


if __name__ == "__main__":
    main()
