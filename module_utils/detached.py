"""Run a module's work so that the death of the control node cannot cut it short.

Ansible runs a module (pipelining) as a child of the SSH session that the control node
opened. When the control node dies - `kill -9`, Ctrl-C, a crash, its network gone - that
session ends: the module's stdout is a closed pipe (its first write kills it with SIGPIPE),
and an sshd, a pty or a logind session may send it SIGHUP. A migration's critical path
must not stop half way (a frozen workload, a half-sent checkpoint), so `run_detached` runs
the work in a child of its own: a new session (no controlling terminal, no SIGHUP from
the session's end), SIGHUP, SIGINT and SIGPIPE ignored, stdio on /dev/null. The module
waits for it and returns its result; if the module is killed meanwhile the child goes
on, finishes the work and leaves its result in `result_file` (and whatever journal the
work keeps), where a recovery reads it.

Not an escape from everything: a host whose logind kills a session's processes at logout
(`KillUserProcesses=yes`) kills the child too - it stays in the session's cgroup.
Standard library only (this file runs on the nodes).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ansible.module_utils.processes import write_atomic

# Signals the detached work ignores: the session's end (SIGHUP), a Ctrl-C that reaches the
# node (SIGINT) and writes to a closed pipe (SIGPIPE, then EPIPE).
IGNORED_SIGNALS = (signal.SIGHUP, signal.SIGINT, signal.SIGPIPE)


def read_result(result_file: str | Path) -> dict[str, Any] | None:
    """The result a detached work left, or None (not finished, or unreadable)."""
    try:
        result = json.loads(Path(result_file).read_text())
    except (OSError, ValueError):
        return None
    return result if isinstance(result, dict) else None


def run_detached(work: Callable[[], dict[str, Any]], result_file: str | Path) -> dict[str, Any]:
    """Run `work()` in a detached child (see the module's docstring); its result.

    The child writes the result (a JSON-serialisable dict) to `result_file` before it
    exits; an exception in `work` becomes {"failed": True, "msg": ...}. Returns what the
    child left, or a failure that says it left nothing (it was killed).
    """
    result_file = Path(result_file)
    result_file.parent.mkdir(parents=True, exist_ok=True)
    result_file.unlink(missing_ok=True)
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the forked child
        try:
            os.setsid()
            for number in IGNORED_SIGNALS:
                signal.signal(number, signal.SIG_IGN)
            devnull = os.open(os.devnull, os.O_RDWR)
            for fd in (0, 1, 2):
                os.dup2(devnull, fd)
            try:
                result = work()
            except BaseException as exc:
                result = {"failed": True, "msg": f"{type(exc).__name__}: {exc}"}
            write_atomic(result_file, json.dumps(result, default=str))
        finally:
            os._exit(0)
    status = None
    while status is None:
        try:
            _, raw = os.waitpid(pid, 0)
            status = os.waitstatus_to_exitcode(raw)
        except InterruptedError:  # pragma: no cover - PEP 475 retries for us
            continue
        except ChildProcessError:
            break
    result = read_result(result_file)
    if result is None:
        with contextlib.suppress(OSError):
            result_file.unlink()
        return {
            "failed": True,
            "msg": f"the detached work (pid {pid}) ended without a result (status {status})",
        }
    return result
