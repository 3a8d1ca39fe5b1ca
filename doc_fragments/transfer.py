"""Documentation of the options that say how a transfer reaches the destination.

Shared by every module that sends checkpoints (`checkpoint_transfer`, and through its
`transfer` dict `predump_loop` and `critical_path`); the argument spec they document is
`TRANSFER_OPTIONS` in module_utils/transfer_backends.py.
`doc_fragments/aws_api.py` documents `AWS_OPTIONS` beside it.
"""

from __future__ import annotations


class ModuleDocFragment:
    DOCUMENTATION = r"""
options:
  transfer:
    description:
      - How the transfer reaches the destination - the same options for every module that
        sends checkpoints (C(checkpoint_transfer), C(predump_loop), C(critical_path)); the
        experiment's pair carries them as C(migration_pair.transfer).
    type: dict
    suboptions:
      method:
        description: The transfer (the experiment's C(transfer) setting).
        type: str
        choices: [rsync, efs, s3, ebs]
        default: rsync
      destination:
        description: The destination's address as the source reaches it (rsync).
        type: str
      destination_user:
        description: SSH user on the destination (not root - rsync and tar run under sudo there).
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
        description: Stream compression (C(zstd) replaces rsync by a compressed tar stream).
        type: str
        choices: [none, zstd]
        default: none
      compress_level:
        description: zstd level, 1 (fastest) to 19.
        type: int
        default: 3
      efs_path:
        description: The shared filesystem's mount path, the same on both hosts (efs).
        type: path
      efs_dir:
        description: This experiment's folder on the shared filesystem (efs); staged paths go
          under C(<efs_dir>/files).
        type: path
      s3_bucket:
        description: The bucket (s3; the experiment's C(s3_bucket)).
        type: str
      s3_prefix:
        description: This pair's key prefix, C(<s3_prefix>/<experiment id>/<source host>) (s3);
          files go under C(<prefix>/files/<absolute path>), each stage's manifest under
          C(<prefix>/manifests/<stage>.json).
        type: str
      s3_endpoint_url:
        description: An S3-compatible endpoint (s3; empty - AWS's own).
        type: str
      s3_part_size_mb:
        description: Multipart part size and single-request threshold, MiB (s3).
        type: int
        default: 8
      s3_max_concurrency:
        description: Concurrent requests per side (s3).
        type: int
        default: 10
      ebs_volume_id:
        description: The pair's EBS volume (ebs).
        type: str
      ebs_mount_path:
        description: Where the volume is mounted on the host that holds it (ebs).
        type: path
      ebs_dir:
        description: This experiment's folder on the volume (ebs); staged paths go under
          C(<ebs_dir>/files).
        type: path
      ebs_timeout_s:
        description: How long the volume's device may take to appear after the attach (ebs).
        type: float
        default: 300.0
"""
