"""Processes the suite starts, watches and stops on a node: one definition of each.

- Liveness: a process is alive while it exists and is neither a zombie (`Z`) nor dead
  (`X`); a zombie is a process that has ended, whatever still holds its PID.
- Starting: `start_detached` runs a command outside the caller's session, with its stdio
  on /dev/null (or stdout and stderr in a file), no inherited descriptors (CRIU refuses
  stray ones) and a working directory of its own. With `exit_file`, a small monitor
  (double fork, reparented to init) waits for the command and records its exit status
  there, so whoever comes later - another module call, a recovery - can tell how it ended.
- Files: `ProcessFiles` names a background process's pidfile and the files beside it
  (`.rc` exit status, `.out` output, `.json` what the starter wants its stopper to know).
- Stopping: `terminate` sends SIGTERM, then SIGKILL after a grace period, to a process or
  its whole process group, and never to the caller itself.

Standard library only: this file runs on the nodes.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PROC = "/proc"
# States of a process that has ended (zombie: not yet reaped; dead: being removed).
ENDED_STATES = ("Z", "X")
POLL_S = 0.02


def process_state(pid: int, proc: str = PROC) -> str | None:
    """The kernel's one-letter state of `pid` (R, S, D, T, t, Z, X, I), or None when gone."""
    try:
        with open(f"{proc}/{pid}/stat", encoding="utf-8", errors="replace") as handle:
            stat = handle.read()
    except (FileNotFoundError, ProcessLookupError, NotADirectoryError):
        return None
    # "pid (comm) state ...": comm may hold spaces and parentheses, so split after the last ')'
    fields = stat.rsplit(")", 1)
    return fields[1].split()[0] if len(fields) == 2 and fields[1].split() else None


def is_alive(pid: int, proc: str = PROC) -> bool:
    """True while `pid` exists and has not ended (zombies and dead tasks count as ended)."""
    if pid <= 0:
        return False
    return process_state(pid, proc) not in (None, *ENDED_STATES)


def cmdline(pid: int, proc: str = PROC) -> list[str]:
    """The command line of `pid` ([] when gone or a kernel thread)."""
    try:
        with open(f"{proc}/{pid}/cmdline", "rb") as handle:
            raw = handle.read()
    except (FileNotFoundError, ProcessLookupError, NotADirectoryError):
        return []
    return [part.decode("utf-8", "backslashreplace") for part in raw.split(b"\0") if part]


def start_ticks(pid: int, proc: str = PROC) -> int | None:
    """Start time in clock ticks since boot (field 22 of stat): tells PID reuse apart."""
    try:
        with open(f"{proc}/{pid}/stat", encoding="utf-8", errors="replace") as handle:
            text = handle.read()
    except (FileNotFoundError, ProcessLookupError, NotADirectoryError):
        return None
    return int(text[text.rindex(")") + 2 :].split()[19])


def reap(pid: int) -> int | None:
    """Collect our own child `pid` if it ended; its exit status (negative: signal), else None.

    A child that ended stays a zombie until its parent waits for it; for a process that is
    not our child this does nothing.
    """
    try:
        waited, status = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return None
    return os.waitstatus_to_exitcode(status) if waited == pid else None


def wait_until(done: Callable[[], bool], timeout_s: float, interval_s: float = POLL_S) -> bool:
    """Poll `done` until it is true or `timeout_s` passed; whether it became true."""
    deadline = time.monotonic() + max(0.0, timeout_s)
    while True:
        if done():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval_s)


def wait_gone(pids: Sequence[int], timeout_s: float) -> list[int]:
    """Wait until every PID has ended; the ones still alive after `timeout_s`."""
    wait_until(lambda: not any(is_alive(pid) for pid in pids), timeout_s)
    return [pid for pid in pids if is_alive(pid)]


def _group_alive(pgid: int, proc: str = PROC) -> bool:
    """Whether a live process (not a zombie) is in process group `pgid`."""
    try:
        entries = os.listdir(proc)
    except OSError:
        return False
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"{proc}/{entry}/stat", encoding="utf-8", errors="replace") as handle:
                stat = handle.read()
        except (FileNotFoundError, ProcessLookupError, NotADirectoryError):
            continue
        # after "pid (comm)": state ppid pgrp ...
        fields = stat.rsplit(")", 1)[-1].split()
        if len(fields) > 2 and fields[2] == str(pgid) and fields[0] not in ENDED_STATES:
            return True
    return False


def terminate(pid: int, group: bool = False, grace_s: float = 5.0) -> bool:
    """SIGTERM to `pid` (or its process group), SIGKILL after `grace_s`; whether it ended.

    With `group`, it ended when no live process is left in the group (a member that
    outlives the leader gets the SIGKILL too). Our own child is reaped. Never signals the
    caller itself or the caller's own process group, whatever a pidfile says.
    """
    if pid <= 1 or pid == os.getpid() or (group and pid == os.getpgrp()):
        return not is_alive(pid)
    kill = os.killpg if group else os.kill

    def ended() -> bool:
        gone = reap(pid) is not None or not is_alive(pid)
        return gone and not (group and _group_alive(pid))

    try:
        kill(pid, signal.SIGTERM)
    except (ProcessLookupError, PermissionError):
        return ended()
    if not wait_until(ended, grace_s):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            kill(pid, signal.SIGKILL)
        wait_until(ended, grace_s)
    return ended()


def write_atomic(path: str | Path, text: str) -> None:
    """Replace `path` with `text` in one step (a reader never sees half a file)."""
    tmp = f"{path}.tmp{os.getpid()}"  # one per writer: two writers never share it
    try:
        with open(tmp, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def read_exit(exit_file: str | Path) -> tuple[int, float] | None:
    """(exit status, epoch seconds when it ended) from a monitor's exit file, or None."""
    try:
        with open(exit_file, encoding="utf-8") as handle:
            code, ended = handle.read().split()
    except (OSError, ValueError):
        return None
    return int(code), float(ended)


# A clean environment for a detached command (callers add their own variables): the SSH
# session's variables must not leak into it.
BASE_ENV = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "LANG": "C.UTF-8",
    "HOME": "/root",
}


def start_detached(
    argv: Sequence[str],
    *,
    cwd: str | Path = "/",
    env: Mapping[str, str] | None = None,
    output: str | Path | None = None,
    exit_file: str | Path | None = None,
) -> int:
    """Start `argv` in a new session, detached from the caller; its PID.

    stdin is /dev/null; stdout and stderr go to `output` (appended) or /dev/null; no
    descriptor above 2 is inherited; `env` replaces the environment (None: the caller's).
    Without `exit_file` the command is the caller's child until the caller exits (then
    init's); `reap` collects its status meanwhile. With `exit_file`, a monitor process
    outside the caller's session waits for the command and writes "<status> <epoch>" there.
    Either way the command leads its own process group (its PID is the group's id) and
    runs in `cwd`; relative paths are the caller's. OSError: the command could not start.
    """
    argv = [str(arg) for arg in argv]
    if not argv:
        raise ValueError("start_detached needs a command")
    env_dict = None if env is None else {str(k): str(v) for k, v in env.items()}
    if exit_file is None:
        proc = _popen_apart(argv, cwd, env_dict, output)
        # The caller tracks the PID and reaps it (`reap`): marking the Popen object done keeps
        # subprocess from collecting the child's status behind the caller's back.
        proc.returncode = 0
        return proc.pid
    # the monitor works in /: relative paths are the caller's, made absolute here
    return _start_monitored(
        argv,
        os.path.abspath(cwd),
        env_dict,
        None if output is None else os.path.abspath(output),
        os.path.abspath(exit_file),
    )


def _popen_apart(
    argv: list[str], cwd: str | Path, env: dict[str, str] | None, output: str | Path | None
) -> subprocess.Popen[bytes]:
    """`argv` in a session and process group of its own, stdin /dev/null, stdout and
    stderr appended to `output` (or /dev/null), no descriptor above 2 inherited."""
    with contextlib.ExitStack() as stack:
        out = stack.enter_context(open(output, "ab")) if output is not None else subprocess.DEVNULL
        return subprocess.Popen(
            argv,
            cwd=str(cwd),
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT if output is not None else subprocess.DEVNULL,
            close_fds=True,  # CRIU refuses stray inherited descriptors
            start_new_session=True,
        )


def _start_monitored(
    argv: list[str],
    cwd: str | Path,
    env: dict[str, str] | None,
    output: str | Path | None,
    exit_file: str | Path,
) -> int:
    """Double fork: a monitor in its own session starts `argv`, reports its PID through a
    pipe, waits for it and writes its exit status to `exit_file`."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(exit_file)
    read_end, write_end = os.pipe()
    first = os.fork()
    if first == 0:  # pragma: no cover - runs in the forked children
        try:
            os.close(read_end)
            os.setsid()
            if os.fork() != 0:
                os._exit(0)
            os.chdir("/")
            devnull = os.open(os.devnull, os.O_RDWR)
            for fd in (0, 1, 2):
                os.dup2(devnull, fd)
            os.closerange(3, write_end)
            os.closerange(write_end + 1, os.sysconf("SC_OPEN_MAX"))
            try:
                # its own session and group: terminate(pid, group=True) reaches the command
                # and its children, not the monitor that records its status
                child = _popen_apart(argv, cwd, env, output)
            except (OSError, ValueError) as exc:  # e.g. no such program, a NUL in argv
                os.write(write_end, f"error: {exc}".encode())
                os._exit(1)
            os.write(write_end, str(child.pid).encode())
            os.close(write_end)
            status = child.wait()
            write_atomic(exit_file, f"{status} {time.time():.6f}\n")
        finally:
            os._exit(0)
    os.close(write_end)
    os.waitpid(first, 0)
    chunks = []
    while chunk := os.read(read_end, 4096):
        chunks.append(chunk)
    os.close(read_end)
    answer = b"".join(chunks).decode("utf-8", "replace")
    if not answer.isdigit():
        raise OSError(answer or f"the monitor exited without starting {argv[0]}")
    return int(answer)


@dataclass(frozen=True)
class ProcessFiles:
    """A background process's pidfile and the files beside it."""

    pidfile: Path

    @classmethod
    def at(cls, pidfile: str | Path) -> ProcessFiles:
        return cls(Path(pidfile))

    @property
    def exit_file(self) -> Path:
        return self.pidfile.with_name(self.pidfile.name + ".rc")

    @property
    def output(self) -> Path:
        return self.pidfile.with_name(self.pidfile.name + ".out")

    @property
    def meta_file(self) -> Path:
        return self.pidfile.with_name(self.pidfile.name + ".json")

    def write_pid(self, pid: int) -> None:
        self.pidfile.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(self.pidfile, f"{pid}\n")

    def read_pid(self) -> int | None:
        try:
            return int(self.pidfile.read_text().strip())
        except (OSError, ValueError):
            return None

    def read_exit(self) -> tuple[int, float] | None:
        return read_exit(self.exit_file)

    def write_meta(self, meta: Mapping[str, Any]) -> None:
        write_atomic(self.meta_file, json.dumps(dict(meta)))

    def read_meta(self) -> dict[str, Any]:
        try:
            meta = json.loads(self.meta_file.read_text())
        except (OSError, ValueError):
            return {}
        return meta if isinstance(meta, dict) else {}

    def clear(self, keep_output: bool = True) -> None:
        """Remove the pidfile and its companions (the output, unless empty, stays)."""
        for path in (self.pidfile, self.exit_file, self.meta_file):
            path.unlink(missing_ok=True)
        out = self.output
        if not keep_output or (out.is_file() and out.stat().st_size == 0):
            out.unlink(missing_ok=True)
