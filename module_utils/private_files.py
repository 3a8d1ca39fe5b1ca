"""The modes of an experiment's files on its nodes: folders 0700, files 0600.

Checkpoint images hold the workload's whole memory (its keys and passwords), and the
working directory, CRIU's logs and the capture files what it wrote and read. So every node
module that writes into an experiment's folders (`checkpoint_dir`, `working_dir`, the images
on the shared filesystem, the TLS material) calls `private_umask()` before anything else:
what the module creates, and what the programs it starts create (CRIU, rsync, strace, the
workload itself), is then readable by root only. A command the module runs on the
destination over SSH gets the same umask through `umasked(argv)` (sshd's sessions start
with 022). The transfers keep the modes (rsync --archive, tar as root), and the results
bundle stores every member as 0600 / 0700, whatever its mode on the host.

Standard library only (this file runs on the nodes).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

PRIVATE_UMASK = 0o077
DIR_MODE = 0o700
FILE_MODE = 0o600


def private_umask() -> int:
    """Make this process (and everything it starts) create 0700 folders and 0600 files;
    the previous umask."""
    return os.umask(PRIVATE_UMASK)


def umasked(argv: Sequence[str]) -> list[str]:
    """`argv` run under the private umask by a POSIX shell (for commands sent over SSH)."""
    return ["sh", "-c", f'umask {PRIVATE_UMASK:03o} && exec "$@"', "sh", *[str(a) for a in argv]]
