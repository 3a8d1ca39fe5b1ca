"""The workload's process tree on the source around the final dump: kept, resumed or ended.

The fused critical path dumps with CRIU's `--leave-stopped`: the dumped tree stays on the
source, stopped (SIGSTOP), until the destination confirms the restore; only then is it
killed. When the transfer or the restore fails - or the destination becomes unreachable,
even after a page-server dump whose pages exist only there - the tree is resumed where it
is, with its memory, its files and its TCP connections, instead of being restored from
images. CRIU leaves two things behind after a successful `--tcp-established` dump (it
undoes them only for a dump that fails or for `--leave-running`, `cr_dump_finish` in
criu/cr-dump.c):

- each established TCP socket of the tree stays in repair mode (`TCP_REPAIR`): a resumed
  process would find its connection dead (redis-py reconnects; others fail). `repair_off`
  takes each socket's descriptor from the stopped process (`pidfd_getfd(2)`, Linux 5.6)
  and turns repair mode off, as CRIU's own `tcp_unlock_one` does;
- the network lock: an nftables table `inet CRIU-<run id>` (the run id of the dump, first
  line of its log, cut to the table name's length) that drops the dumped connections'
  packets. `remove_lock` deletes it. A dump killed half way (CRIU itself killed) leaves
  it too, while the kernel lets the tree run on as soon as its tracer is gone.

`memory_bytes` reads the tree's resident anonymous and shared memory, the estimate of the
final dump's page images. Standard library only (this file runs on the nodes).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import re
import signal
import socket
from collections.abc import Callable, Sequence
from typing import Any

from ansible.module_utils.processes import PROC, process_state, wait_gone

# setsockopt(IPPROTO_TCP, TCP_REPAIR) (linux/tcp.h)
TCP_REPAIR = 19
# The same numbers on every architecture (syscalls added after the tables were unified).
SYS_PIDFD_OPEN = 434
SYS_PIDFD_GETFD = 438
# CRIU's nftables network lock: `table inet CRIU-<run id>`; the run id is in its log.
LOCK_TABLE_PREFIX = "CRIU-"
_RUN_ID_RE = re.compile(r"CRIU run id = (\S+)")
_TABLE_RE = re.compile(r"^table\s+inet\s+(\S+)", re.MULTILINE)
# Stopped (SIGSTOP, the state --leave-stopped leaves) and stopped by a tracer.
STOPPED_STATES = ("T", "t")

Runner = Callable[[list[str]], tuple[int, str, str]]


def tree_pids(root: int, proc: str = PROC) -> list[int]:
    """The processes of the tree rooted at `root` (root first), from each thread's
    `children` list; [] when `root` is gone."""
    if process_state(root, proc) is None:
        return []
    found = [root]
    index = 0
    while index < len(found):
        pid = found[index]
        index += 1
        try:
            threads = os.listdir(f"{proc}/{pid}/task")
        except OSError:
            continue
        for tid in threads:
            try:
                with open(f"{proc}/{pid}/task/{tid}/children", encoding="ascii") as handle:
                    children = [int(child) for child in handle.read().split()]
            except (OSError, ValueError):
                continue
            found += [child for child in children if child not in found]
    return found


def tree_states(pids: Sequence[int], proc: str = PROC) -> dict[int, str | None]:
    """Each process's one-letter state (None: gone)."""
    return {pid: process_state(pid, proc) for pid in pids}


def is_stopped(states: dict[int, str | None]) -> bool:
    """Whether any process of the tree is stopped (a --leave-stopped dump's state)."""
    return any(state in STOPPED_STATES for state in states.values())


def memory_bytes(pids: Sequence[int], proc: str = PROC) -> int:
    """The tree's resident anonymous and shared memory (RssAnon + RssShmem of each process):
    what a dump writes as page images, give or take a few pages."""
    total_kb = 0
    for pid in pids:
        try:
            with open(f"{proc}/{pid}/status", encoding="utf-8", errors="replace") as handle:
                for line in handle:
                    name, _, value = line.partition(":")
                    if name in ("RssAnon", "RssShmem"):
                        total_kb += int(value.split()[0])
        except (OSError, ValueError, IndexError):
            continue
    return total_kb * 1024


def dump_run_id(log_text: str) -> str | None:
    """The run id a CRIU log starts with ("CRIU run id = ..."), which names its network lock."""
    match = _RUN_ID_RE.search(log_text or "")
    return match.group(1) if match else None


def lock_tables(nft_tables: str, run_id: str | None = None) -> list[str]:
    """CRIU's network-lock tables in `nft list tables` output: the one of `run_id` (its name
    is the run id cut short), or every CRIU table when `run_id` is None."""
    names = [name for name in _TABLE_RE.findall(nft_tables or "") if name.startswith("CRIU-")]
    if run_id is None:
        return names
    return [name for name in names if run_id.startswith(name[len(LOCK_TABLE_PREFIX) :])]


def remove_lock(run: Runner, run_id: str | None) -> dict[str, Any]:
    """Delete the network-lock table of the dump `run_id` on this host; what was done.
    Without a run id nothing is removed: another run's lock is not this one's to take."""
    if not run_id:
        return {"removed": [], "error": "the dump's run id is unknown: no network lock removed"}
    rc, out, err = run(["nft", "list", "tables"])
    if rc != 0:
        return {"removed": [], "error": f"nft list tables failed: {(err or out).strip()}"}
    removed, errors = [], []
    for table in lock_tables(out, run_id):
        rc, out_del, err_del = run(["nft", "delete", "table", "inet", table])
        if rc == 0:
            removed.append(table)
        else:
            errors.append(f"nft delete table inet {table}: {(err_del or out_del).strip()}")
    return {"removed": removed, "error": "; ".join(errors)}


def _syscall(number: int, *args: int) -> int:
    libc = ctypes.CDLL(None, use_errno=True)
    result = int(libc.syscall(number, *args))
    if result < 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))
    return result


def _socket_inodes(pid: int, proc: str) -> dict[int, str]:
    """The process's descriptors that are sockets: fd -> "socket:[inode]"."""
    found: dict[int, str] = {}
    with contextlib.suppress(OSError):
        for fd in os.listdir(f"{proc}/{pid}/fd"):
            with contextlib.suppress(OSError, ValueError):
                target = os.readlink(f"{proc}/{pid}/fd/{fd}")
                if target.startswith("socket:"):
                    found[int(fd)] = target
    return found


def repair_off(pids: Sequence[int], proc: str = PROC) -> dict[str, Any]:
    """Turn TCP repair mode off on every TCP socket of `pids` that a dump left in it.

    Returns the sockets turned off ({pid, fd, socket}) and an error (e.g. a kernel without
    pidfd_getfd) - the tree is resumed either way, its connections then lost.
    """
    turned: list[dict[str, Any]] = []
    errors: list[str] = []
    for pid in pids:
        sockets = _socket_inodes(pid, proc)
        if not sockets:
            continue
        try:
            pidfd = _syscall(SYS_PIDFD_OPEN, pid, 0)
        except OSError as exc:
            if exc.errno != errno.ESRCH:
                errors.append(f"pidfd_open({pid}): {exc.strerror}")
            continue
        try:
            for fd, name in sockets.items():
                try:
                    local = _syscall(SYS_PIDFD_GETFD, pidfd, fd, 0)
                except OSError as exc:
                    errors.append(f"pidfd_getfd({pid}, {fd}): {exc.strerror}")
                    continue
                sock = socket.socket(fileno=local)
                try:
                    tcp = sock.type == socket.SOCK_STREAM and sock.family in (
                        socket.AF_INET,
                        socket.AF_INET6,
                    )
                    if tcp and sock.getsockopt(socket.IPPROTO_TCP, TCP_REPAIR) == 1:
                        sock.setsockopt(socket.IPPROTO_TCP, TCP_REPAIR, 0)
                        turned.append({"pid": pid, "fd": fd, "socket": name})
                except OSError as exc:
                    errors.append(f"TCP_REPAIR of {pid} fd {fd}: {exc.strerror}")
                finally:
                    sock.close()  # our duplicate only; the process keeps its own descriptor
        finally:
            os.close(pidfd)
    return {"sockets": turned, "error": "; ".join(errors)}


def resume(root: int, run: Runner, run_id: str | None, proc: str = PROC) -> dict[str, Any]:
    """Let the tree run on where it is: repair mode off, the network lock removed, SIGCONT.

    Safe on a tree that already runs (a dump killed half way: the kernel resumed it when
    CRIU died). Returns what was done; `resumed` is true when every process of the tree
    runs afterwards.
    """
    pids = tree_pids(root, proc)
    if not pids:
        return {"pids": [], "resumed": False, "error": f"process {root} is gone"}
    repaired = repair_off(pids, proc)
    lock = remove_lock(run, run_id)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)
    states = tree_states(pids, proc)
    return {
        "pids": pids,
        "resumed": all(state not in (None, *STOPPED_STATES) for state in states.values()),
        "states": states,
        "sockets_repaired": repaired["sockets"],
        "lock_removed": lock["removed"],
        "error": "; ".join(e for e in (repaired["error"], lock["error"]) if e),
    }


def kill(
    root: int, run: Runner, run_id: str | None, proc: str = PROC, timeout_s: float = 10.0
) -> dict[str, Any]:
    """End the source's copy once the destination runs the workload: SIGKILL to every
    process of the tree (stopped or not), then the network lock removed (its sockets are
    closed by then). `gone` is true when no process of the tree is left."""
    pids = tree_pids(root, proc)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    left = wait_gone(pids, timeout_s)
    lock = remove_lock(run, run_id)
    return {
        "pids": pids,
        "gone": not left,
        "left": left,
        "lock_removed": lock["removed"],
        "error": lock["error"],
    }
