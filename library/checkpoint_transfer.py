#!/usr/bin/python
"""Ansible module: move checkpoint images and the working directory to the destination."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: checkpoint_transfer
short_description: Transfer checkpoint images and the working directory source -> destination
description:
  - Makes I(paths) (absolute - the checkpoint's image folder and the workload's working
    directory) exist at the same paths on the destination, through one of the backends in
    C(module_utils/transfer_backends.py). Runs twice for two-sided backends and for
    verification - C(side=send) on the source, then C(side=receive) on the destination
    (delegated) before the restore.
  - C(rsync) goes directly from source to destination over SSH with the given key, pinned
    known_hosts and cipher - C(--whole-file) (no delta search), C(--relative), no C(-z).
  - C(rsync) with I(compress=zstd) streams C(tar | zstd -T0 -<level>) over the same SSH
    link to C(zstd -d | tar -x) on the destination (no rsync); the compressed bytes are
    counted as they pass.
  - C(efs) - the dump wrote the images onto a filesystem both hosts mount (I(efs_path)), so
    they are restored from there without a copy. Paths not on it (the working directory)
    are staged in I(efs_dir) by the send and copied to their own paths by the receive.
  - C(s3) - the send uploads every file to I(s3_bucket) under I(s3_prefix) (multipart,
    I(s3_max_concurrency) concurrent requests), the receive on the destination downloads them
    to the same paths; both run the standalone C(s3_transfer.py) in I(aws.tools_dir) with the
    node's C(/usr/bin/python3) (Debian's python3-boto3). A failed upload removes what it left
    in the bucket (unfinished multipart uploads aborted, objects deleted).
  - C(ebs) - the dump wrote the images onto the pair's volume, mounted at I(ebs_mount_path);
    the send stages the other paths on it, flushes and unmounts it; the control node then
    moves the volume (M(ebs_attachment)) and the receive finds its device by volume id,
    mounts it and copies the staged paths out. The move's figures come in as I(handover).
  - I(verify=true) - a sha256 manifest of the sent files is made on the source during the
    send (right after the dump - CRIU writes the images itself) and compared on the
    destination by the receive, which fails, naming the file, on any difference.
    Not applicable to C(efs) (the destination reads the very files the dump wrote) nor to
    page images streamed to C(criu page-server) (no source copy); the result says so.
  - Returns duration, payload bytes, files and MB/s (and each side's own figures) for the
    metrics callback. Never idempotent - it always copies - so it reports C(changed).
options:
  side:
    description: C(send) (on the source) or C(receive) (on the destination, after C(send)).
    type: str
    choices: [send, receive]
    default: send
  paths:
    description: Absolute paths on the source to send.
    type: list
    elements: path
    required: true
  verify:
    description: Checksum the sent files on the source and compare them on the destination.
    type: bool
    default: false
  page_server:
    description: The dump streamed its page images to C(criu page-server) (they are not
      on the source, so verification cannot cover them).
    type: bool
    default: false
  manifest:
    description: The source's checksum manifest (C(side=receive); the send returns it).
    type: dict
  sent:
    description: The send's C(migration_metrics.data) (C(side=receive)), combined with the
      receive's figures into one record per transfer.
    type: dict
  fault:
    description: C(interrupt) kills the transfer's SSH connection midway, for real
      (C(inject_fault=transfer_interrupt); rsync is throttled first so "midway" holds).
    type: str
    choices: [none, interrupt]
    default: none
  stage:
    description: Which transfer this is (C(final), C(predump-N)), for the metrics.
    type: str
    default: final
  handover:
    description: What happened between the send and the receive on neither host, with its
      C(duration_s) (C(side=receive), C(ebs) - the control node's detach and attach of the
      volume); it joins the transfer's record and duration.
    type: dict
extends_documentation_fragment: [transfer, aws_api]
attributes:
  check_mode:
    support: partial
    details: Reports the plan without sending anything.
notes:
  - Needs C(rsync) on both hosts (C(rsync), C(efs)) or C(tar) and C(zstd) on both hosts
    (C(compress=zstd)), C(/usr/bin/python3) with python3-boto3 (C(s3)), C(mount), C(blkid) and
    C(rsync) (C(ebs)); the node checks refuse a host without them before the workload starts.
  - A failed send leaves partial files on the destination; the run's rescue restores the
    workload on the source from its intact images.
  - The suite's docs/transfer.md has the backends' tuning measurements and the EFS mount
    options that matter.
author: CRIU migration suite
"""

EXAMPLES = r"""
- name: Send the final checkpoint and the working directory
  checkpoint_transfer:
    paths:
      - /var/lib/criu-migration/images/e1/1
      - /var/lib/criu-migration/work/e1
    transfer:
      method: rsync
      destination: 10.77.0.12
      ssh_key: /work/main/.lab/id_ed25519
      known_hosts: /work/main/.lab/known_hosts
      cipher: aes128-gcm@openssh.com
    verify: true
  register: sent

- name: Compare checksums on the destination before the restore
  checkpoint_transfer:
    side: receive
    paths: "{{ sent.dest_paths }}"
    transfer: {method: rsync}
    verify: true
    manifest: "{{ sent.manifest }}"
    sent: "{{ sent.migration_metrics.data }}"
  delegate_to: destination
  when: sent.receive_needed

- name: transfer=efs - images already on the shared filesystem; stage the working directory
  checkpoint_transfer:
    paths:
      - /mnt/efs/criu-migration/images/e1/source/1
      - /var/lib/criu-migration/work/e1
    transfer:
      method: efs
      efs_path: /mnt/efs
      efs_dir: /mnt/efs/criu-migration/images/e1/source
"""

RETURN = r"""
method:
  description: The backend that ran (C(rsync), C(ssh-zstd), C(efs), C(s3), C(ebs)).
  returned: always
  type: str
  sample: rsync
duration_s:
  description: Seconds the transfer took (send, plus receive and the destination's checksum
    comparison after C(side=receive)).
  returned: success
  type: float
  sample: 0.84
bytes:
  description: Payload bytes transferred (file contents; for efs only the staged paths).
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
  description: Bytes the sender put on the wire (rsync's "Total bytes sent"; the compressed
    stream for zstd).
  returned: rsync, zstd
  type: int
  sample: 268500000
send:
  description: The source side's own duration, bytes, files and MB/s.
  returned: success
  type: dict
  sample: {duration_s: 0.84, bytes: 268435456, files: 14, throughput_mb_s: 319.6}
receive:
  description: The destination side's own figures (two-sided backends, after C(side=receive)).
  returned: efs, s3, ebs
  type: dict
  sample: {duration_s: 0.05, bytes: 5213, files: 2, throughput_mb_s: 0.104}
s3:
  description: The bucket, the pair's prefix, the endpoint, part size and concurrency, and the
    tool's own figures each way - C(upload) (duration, bytes, objects, MB/s, parts,
    multipart uploads) and after C(side=receive) C(download) (duration, bytes, objects, MB/s,
    GET requests).
  returned: s3
  type: dict
  sample: {bucket: criu-lab, prefix: criu-migration/e1/source/, upload: {duration_s: 0.9,
           bytes: 69885952, objects: 14, mb_s: 77.6, parts: 16}}
ebs:
  description: The volume, its mount path and each step's time on each host - C(source)
    (stage_s, sync_s, umount_s) and after C(side=receive) C(destination) (device,
    device_wait_s, mount_s, copy_s).
  returned: ebs
  type: dict
  sample: {volume_id: vol-0123456789abcdef0, source: {umount_s: 0.02},
           destination: {device: /dev/nvme1n1, mount_s: 0.03}}
handover:
  description: The I(handover) given to C(side=receive), as it joined the record.
  returned: ebs
  type: dict
compression:
  description: zstd figures - raw and compressed bytes, ratio, time, MB/s before and after
    compression, zstd's CPU seconds.
  returned: compress=zstd
  type: dict
  sample: {algorithm: zstd, level: 3, raw_bytes: 544368640, compressed_bytes: 2093872,
           ratio: 259.98, duration_s: 1.1, raw_mb_s: 494.9, compressed_mb_s: 1.9,
           compress_cpu_s: 0.31}
verify:
  description: C(off); C(not applicable - <why>); or the check - algorithm, files, bytes,
    source_s, source_when, and after C(side=receive) destination_s, ok, mismatches.
  returned: success
  type: raw
  sample: {algorithm: sha256, files: 14, bytes: 268435456, source_s: 0.23, ok: true}
manifest:
  description: The source's checksums, {path -> {size, sha256}} (when verification applies).
  returned: side=send and verify
  type: dict
receive_needed:
  description: Whether C(side=receive) must run on the destination before the restore.
  returned: side=send
  type: bool
  sample: false
dest_paths:
  description: Paths this call made exist on the destination.
  returned: success
  type: list
  elements: str
mismatches:
  description: Files that differ on the destination (the module then fails).
  returned: failure of the comparison
  type: list
  elements: str
migration_metrics:
  description: What the metrics callback records (phase C(transfer), one record per call;
    the receive's record is the combined one).
  returned: success
  type: dict
  sample: {phase: transfer, data: {method: rsync, stage: final, duration_s: 0.84, bytes: 268435456}}
"""

import platform
from pathlib import Path
from typing import Any

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.private_files import private_umask
from ansible.module_utils.transfer_backends import (
    AWS_OPTIONS,
    TRANSFER_OPTIONS,
    TransferError,
    TransferRequest,
    backend_for,
    request_from_options,
    transfer_receive,
    transfer_send,
)


class CheckpointTransfer:
    def __init__(self, module: AnsibleModule) -> None:
        self.module = module
        self.params = module.params
        self.host = platform.node()

    def request(self) -> TransferRequest:
        p = self.params
        return request_from_options(
            p["transfer"],
            p["paths"],
            p["aws"],
            verify=p["verify"],
            stage=p["stage"],
            page_server=p["page_server"],
            fault=p["fault"],
        )

    def run(self, argv: list[str], stdin: bytes | None = None) -> tuple[int, str, str]:
        if stdin is None:
            return self.module.run_command(argv)
        return self.module.run_command(argv, data=stdin, binary_data=True)

    def fail(self, msg: str, **extra: Any) -> None:
        self.module.fail_json(msg=msg, method=self.params["transfer"]["method"], **extra)

    def backend(self) -> Any:
        p = self.params
        link = p["transfer"]
        if link["method"] == "efs" and not (link["efs_path"] and link["efs_dir"]):
            self.fail("transfer.method=efs needs transfer.efs_path and transfer.efs_dir")
        try:
            backend = backend_for(link["method"], link["compress"])
        except ValueError as exc:
            self.fail(str(exc))
        # the receive runs tools only for two-sided backends (zstd's remote side is checked
        # by the node checks)
        if p["side"] == "send":
            tools = backend.source_tools
        else:
            tools = backend.destination_tools if backend.two_sided else ()
        for tool in tools:
            self.module.get_bin_path(tool, required=True)
        return backend

    def send(self) -> None:
        p = self.params
        if p["transfer"]["method"] == "rsync" and not p["transfer"]["destination"]:
            self.fail(
                "transfer.method=rsync needs transfer.destination (the destination's address)"
            )
        backend = self.backend()
        missing = [path for path in p["paths"] if not Path(path).exists()]
        if missing:
            self.fail(f"nothing to send on {self.host}: missing {', '.join(missing)}")
        if self.module.check_mode:
            self.module.exit_json(changed=True, method=backend.name, msg="check mode: nothing sent")
        try:
            outcome = transfer_send(self.request(), self.run, backend)
        except (TransferError, ValueError) as exc:
            self.fail(
                f"{p['transfer']['method']} transfer from {self.host} failed: {exc}",
                cmd=getattr(exc, "argv", []),
                output=getattr(exc, "output", "")[-3000:],
            )
        data = outcome.record(p["stage"])
        extra: dict[str, Any] = {"receive_needed": outcome.receive_needed}
        if outcome.manifest is not None:
            extra["manifest"] = outcome.manifest
        self.module.exit_json(
            changed=True, **data, **extra, migration_metrics={"phase": "transfer", "data": data}
        )

    def receive(self) -> None:
        p = self.params
        if not p["sent"]:
            self.fail("side=receive needs sent (the send's migration_metrics.data)")
        backend = self.backend()
        if self.module.check_mode:
            self.module.exit_json(
                changed=True, method=backend.name, msg="check mode: nothing received"
            )
        try:
            record, problems = transfer_receive(
                self.request(), self.run, p["sent"], p["manifest"], backend, p["handover"]
            )
        except (TransferError, ValueError) as exc:
            self.fail(
                f"{p['transfer']['method']} receive on {self.host} failed: {exc}",
                cmd=getattr(exc, "argv", []),
                output=getattr(exc, "output", "")[-3000:],
            )
        record["stage"] = p["stage"]
        metrics = {"phase": "transfer", "data": record}
        if problems:
            self.fail(
                f"checksum mismatch on {self.host} after the {record.get('method')} transfer, "
                f"so the restore is not attempted: {'; '.join(problems)}",
                mismatches=problems,
                verify=record["verify"],
                migration_metrics=metrics,
            )
        self.module.exit_json(changed=True, **record, migration_metrics=metrics)


def main() -> None:
    private_umask()  # the experiment's files: 0600 / 0700 (module_utils/private_files.py)
    module = AnsibleModule(
        argument_spec={
            "transfer": {"type": "dict", "required": True, "options": TRANSFER_OPTIONS},
            "side": {"type": "str", "default": "send", "choices": ["send", "receive"]},
            "paths": {"type": "list", "elements": "path", "required": True},
            "verify": {"type": "bool", "default": False},
            "page_server": {"type": "bool", "default": False},
            "manifest": {"type": "dict"},
            "sent": {"type": "dict"},
            "fault": {"type": "str", "default": "none", "choices": ["none", "interrupt"]},
            "stage": {"type": "str", "default": "final"},
            "handover": {"type": "dict"},
            "aws": {"type": "dict", "options": AWS_OPTIONS},
        },
        supports_check_mode=True,
    )
    transfer = CheckpointTransfer(module)
    if module.params["side"] == "send":
        transfer.send()
    else:
        transfer.receive()


if __name__ == "__main__":
    main()
