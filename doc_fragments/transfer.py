"""Documentation of the options that say how a transfer reaches the destination.

Shared by every module that sends checkpoints (`checkpoint_transfer`, and through its
`transfer` dict `predump_loop` and `critical_path`); the argument spec they document is
`TRANSFER_OPTIONS` in module_utils/transfer_backends.py.
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
"""
