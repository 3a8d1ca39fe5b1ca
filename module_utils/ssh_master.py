"""An SSH master connection from the source to the destination, opened before the freeze.

The fused critical path runs every destination-side step of a migration (the transfer's
ssh, the restore, reading back the restore's figures) as channels of one master
connection, so none of them pays for a new SSH handshake on the critical path (a new
connection costs 50-100 ms in the namespaces lab, 0.7 s on an emulated guest; a channel of
an open master 5-15 ms). It uses the transfer's own trust (key, pinned known_hosts, port,
cipher: `transfer_backends.ssh_command`). Standard library only (this file runs on the nodes).
"""

from __future__ import annotations

import contextlib
import os
import shlex
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

from ansible.module_utils.processes import is_alive, reap, start_detached, terminate, wait_until
from ansible.module_utils.transfer_backends import TransferRequest, ssh_command

# A destination that stops answering (its link down, the host gone) ends the master - and
# with it every channel (the transfer, the restore) - after this many seconds of silence,
# instead of TCP's retransmission timeout (~15 min): the critical path then resumes the
# workload on the source. Long enough for a busy link, whose keepalive replies still come.
ALIVE_INTERVAL_S = 3
ALIVE_COUNT = 3
# A channel whose master is gone falls back to a connection of its own: to a destination
# that does not answer, it gives up after this many seconds (not TCP's ~2 min of SYNs).
CONNECT_TIMEOUT_S = 5


class SshMasterError(RuntimeError):
    """The master connection could not be opened."""


class SshMaster:
    """`ssh -M` to the destination; `run` executes commands as channels of it."""

    def __init__(self, request: TransferRequest, control_dir: str | None = None) -> None:
        self.request = request
        # a short path: a unix socket's path must stay under 108 bytes
        self.control_dir = control_dir or tempfile.mkdtemp(prefix="criu-cp-")
        self.control_path = os.path.join(self.control_dir, "master")
        self.target = f"{request.user}@{request.destination}"
        self.pid: int | None = None
        # root runs the destination's commands; another login (cloud images) goes through sudo
        self.sudo = [] if request.user == "root" else ["sudo", "-n"]

    @property
    def options(self) -> list[str]:
        """`-o` options that make any ssh of the transfer a channel of this master."""
        return [
            f"ControlPath={self.control_path}",
            "ControlMaster=no",
            f"ConnectTimeout={CONNECT_TIMEOUT_S}",
        ]

    def _ssh(self, *extra: str) -> list[str]:
        return [
            *ssh_command(self.request),
            "-o",
            f"ControlPath={self.control_path}",
            "-o",
            f"ConnectTimeout={CONNECT_TIMEOUT_S}",
            *extra,
        ]

    def open(self, timeout_s: float = 30.0) -> None:
        """Start the master and wait until it accepts channels."""
        argv = self._ssh(
            "-o",
            "ControlMaster=yes",
            "-o",
            "ControlPersist=no",
            "-o",
            f"ServerAliveInterval={ALIVE_INTERVAL_S}",
            "-o",
            f"ServerAliveCountMax={ALIVE_COUNT}",
            "-N",
            self.target,
        )
        log = Path(self.control_dir) / "master.log"
        self.pid = start_detached(argv, output=log)
        if not wait_until(lambda: self.check() or not self._master_alive(), timeout_s, 0.01):
            self.close()
            raise SshMasterError(
                f"ssh to {self.target} did not open a master connection within {timeout_s:g} s"
            )
        if not self.check():
            reason = log.read_text(errors="replace").strip() if log.exists() else ""
            self.close()
            raise SshMasterError(
                f"ssh to {self.target} refused the master connection: {reason or 'no reason given'}"
            )

    def _master_alive(self) -> bool:
        if self.pid is None:
            return False
        reap(self.pid)
        return is_alive(self.pid)

    def check(self) -> bool:
        proc = subprocess.run(
            self._ssh("-O", "check", self.target),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            check=False,
        )
        return proc.returncode == 0

    def argv(self, remote: Sequence[str], sudo: bool = True) -> list[str]:
        """The ssh argv that runs `remote` on the destination over the master."""
        command = [*(self.sudo if sudo else []), *remote]
        return [*self._ssh("-o", "ControlMaster=no"), self.target, "--", shlex.join(command)]

    def run(
        self,
        remote: Sequence[str],
        timeout_s: float = 600.0,
        stdin: bytes | None = None,
    ) -> tuple[int, str, str]:
        """Run `remote` on the destination: (exit status, stdout, stderr); -1 on a timeout."""
        try:
            proc = subprocess.run(
                self.argv(remote),
                input=stdin if stdin is not None else b"",
                capture_output=True,
                timeout=timeout_s,
                check=False,
            )
        except subprocess.TimeoutExpired:
            return -1, "", f"{shlex.join(remote)} did not finish within {timeout_s:g} s"
        return (
            proc.returncode,
            proc.stdout.decode(errors="replace"),
            proc.stderr.decode(errors="replace"),
        )

    def read_bytes(self, path: str, timeout_s: float = 60.0) -> bytes | None:
        """A file on the destination, or None when it cannot be read."""
        try:
            proc = subprocess.run(
                self.argv(["cat", path]),
                stdin=subprocess.DEVNULL,
                capture_output=True,
                timeout=timeout_s,
                check=False,
            )
        except subprocess.TimeoutExpired:
            return None
        return proc.stdout if proc.returncode == 0 else None

    def runner(self, remote_timeout_s: float = 600.0):
        """A transfer_backends Runner that runs each argv on the destination (`stdin` goes to
        the remote program's standard input, through the encrypted channel)."""

        def run(argv: list[str], stdin: bytes | None = None) -> tuple[int, str, str]:
            return self.run(argv, remote_timeout_s, stdin)

        return run

    def close(self) -> None:
        """Stop the master (and forget its socket folder)."""
        if self.pid is not None:
            subprocess.run(
                self._ssh("-O", "exit", self.target),
                stdin=subprocess.DEVNULL,
                capture_output=True,
                check=False,
            )
            if not wait_until(lambda: not self._master_alive(), 2.0):
                terminate(self.pid)
            self.pid = None
        for name in ("master", "master.log"):
            Path(self.control_dir, name).unlink(missing_ok=True)
        with contextlib.suppress(OSError):  # not empty: something else is in it
            os.rmdir(self.control_dir)
