"""Read a process tree's state from /proc and format it as a text snapshot.

Plain, stdlib-only functions shared by the `workload_status` and `strace_capture` modules:
the tree (pids via /proc/<pid>/task/*/children), memory and thread counts from
/proc/<pid>/status, open fds with their targets and offsets, sockets matched by inode
against /proc/<pid>/net/{tcp,tcp6,udp,udp6,unix} (the process's own network namespace),
and who traces each thread (TracerPid). A process may exit while it is being read: every
reader treats a vanished /proc entry as "gone", never as an error. Liveness, the state
letter, the command line and the start time of a process are `processes`' (one definition
for the suite).
"""

from __future__ import annotations

import os
import shlex
import socket
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from ansible.module_utils.processes import ENDED_STATES, PROC, cmdline, is_alive

TCP_STATES = {
    "01": "ESTABLISHED",
    "02": "SYN_SENT",
    "03": "SYN_RECV",
    "04": "FIN_WAIT1",
    "05": "FIN_WAIT2",
    "06": "TIME_WAIT",
    "07": "CLOSE",
    "08": "CLOSE_WAIT",
    "09": "LAST_ACK",
    "0A": "LISTEN",
    "0B": "CLOSING",
    "0C": "NEW_SYN_RECV",
}
UNIX_TYPES = {"0001": "stream", "0002": "dgram", "0005": "seqpacket"}
UNIX_STATES = {"01": "UNCONNECTED", "02": "CONNECTING", "03": "CONNECTED", "04": "DISCONNECTING"}


# --------------------------------------------------------------------------- records


@dataclass(frozen=True)
class SocketInfo:
    inode: int
    protocol: str  # tcp, tcp6, udp, udp6, unix
    local: str
    remote: str
    state: str

    def describe(self) -> str:
        if self.protocol == "unix":
            return f"unix {self.state} {self.local}".rstrip()
        return f"{self.protocol} {self.local} -> {self.remote} {self.state}"


@dataclass(frozen=True)
class FdInfo:
    fd: int
    target: str  # readlink of /proc/<pid>/fd/<fd>
    pos: int | None
    flags: int | None  # octal flags from fdinfo
    socket: SocketInfo | None = None

    @property
    def kind(self) -> str:
        if self.target.startswith("socket:"):
            return "socket"
        if self.target.startswith("pipe:"):
            return "pipe"
        if self.target.startswith("anon_inode:"):
            return "anon_inode"
        if self.target.startswith("/"):
            return "file"
        return "other"

    @property
    def access(self) -> str:
        if self.flags is None:
            return "?"
        mode = {0: "r", 1: "w", 2: "rw"}.get(self.flags & 0o3, "?")
        return mode + ("a" if self.flags & 0o2000 else "")  # O_APPEND

    @property
    def inode(self) -> int | None:
        if self.target.startswith(("socket:[", "pipe:[")) and self.target.endswith("]"):
            return int(self.target[self.target.index("[") + 1 : -1])
        return None


@dataclass(frozen=True)
class ProcessInfo:
    pid: int
    ppid: int
    name: str
    state: str
    cmdline: list[str]
    cwd: str | None
    exe: str | None
    rss_kb: int
    vmsize_kb: int
    vmhwm_kb: int
    threads: int
    tracer_pid: int
    fds: list[FdInfo] = field(default_factory=list)

    @property
    def sockets(self) -> list[SocketInfo]:
        return [fd.socket for fd in self.fds if fd.socket is not None]


@dataclass(frozen=True)
class TreeSnapshot:
    root: int
    taken: float  # epoch seconds
    hostname: str
    processes: list[ProcessInfo]  # root first, then descendants breadth-first

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.processes]

    def summary(self) -> dict[str, object]:
        return {
            "root_pid": self.root,
            "pids": self.pids,
            "processes": len(self.processes),
            "rss_kb": sum(p.rss_kb for p in self.processes),
            "vmsize_kb": sum(p.vmsize_kb for p in self.processes),
            "threads": sum(p.threads for p in self.processes),
            "fds": sum(len(p.fds) for p in self.processes),
            "sockets": len({s.inode for p in self.processes for s in p.sockets}),
            "taken": self.taken,
            "taken_iso": iso_utc(self.taken),
        }


# --------------------------------------------------------------------------- readers


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8", errors="backslashreplace") as handle:
            return handle.read()
    except (FileNotFoundError, ProcessLookupError, NotADirectoryError):
        return None


def _readlink(path: str) -> str | None:
    try:
        return os.readlink(path)
    except (FileNotFoundError, ProcessLookupError, NotADirectoryError, PermissionError):
        return None


def parse_status(text: str) -> dict[str, str]:
    """/proc/<pid>/status as a dict of its `Key:\\tvalue` lines."""
    fields: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            fields[key] = value.strip()
    return fields


def read_status(pid: int, tid: int | None = None, proc: str = PROC) -> dict[str, str] | None:
    path = f"{proc}/{pid}/task/{tid}/status" if tid is not None else f"{proc}/{pid}/status"
    text = _read(path)
    return parse_status(text) if text is not None else None


def _kb(value: str | None) -> int:
    return int(value.split()[0]) if value else 0


def thread_ids(pid: int, proc: str = PROC) -> list[int]:
    try:
        return sorted(int(t) for t in os.listdir(f"{proc}/{pid}/task"))
    except (FileNotFoundError, ProcessLookupError):
        return []


def child_pids(pid: int, proc: str = PROC) -> list[int]:
    """Children of every thread of `pid` (needs CONFIG_PROC_CHILDREN)."""
    children: list[int] = []
    for tid in thread_ids(pid, proc):
        text = _read(f"{proc}/{pid}/task/{tid}/children")
        if text:
            children += [int(c) for c in text.split()]
    return sorted(set(children))


def process_tree(root: int, proc: str = PROC) -> list[int]:
    """`root` and its descendants, breadth-first; [] when `root` is gone or a zombie."""
    if not is_alive(root, proc):
        return []
    tree = [root]
    seen = {root}
    for pid in tree:
        for child in child_pids(pid, proc):
            if child not in seen:
                seen.add(child)
                tree.append(child)
    return tree


def non_root_processes(root: int, proc: str = PROC) -> list[dict[str, object]]:
    """The processes of `root`'s tree whose real, effective or saved user is not root: pid,
    name (comm) and uids. criu dump cannot read their rlimits without CAP_SYS_RESOURCE."""
    found = []
    for pid in process_tree(root, proc):
        status = read_status(pid, proc=proc) or {}
        uids = [int(uid) for uid in (status.get("Uid") or "0").split()[:3]]
        if any(uids):
            found.append({"pid": pid, "name": status.get("Name", ""), "uids": uids})
    return found


def tracer_of(pid: int, tid: int | None = None, proc: str = PROC) -> int | None:
    """TracerPid of a process (or one of its threads); None when it is gone."""
    status = read_status(pid, tid, proc)
    if status is None:
        return None
    return int(status.get("TracerPid", "0") or 0)


def tracers(pids: Iterable[int], proc: str = PROC) -> dict[int, int]:
    """TracerPid of every live thread of `pids`, keyed by thread id.

    Zombie threads are left out: they cannot be traced (PTRACE_SEIZE fails with EPERM).
    """
    found: dict[int, int] = {}
    for pid in pids:
        for tid in thread_ids(pid, proc):
            status = read_status(pid, tid, proc)
            if status is None or status.get("State", "?")[:1] in ENDED_STATES:
                continue
            found[tid] = int(status.get("TracerPid", "0") or 0)
    return found


def read_comm(pid: int, proc: str = PROC) -> str:
    return (_read(f"{proc}/{pid}/comm") or "").strip()


def read_fds(pid: int, proc: str = PROC) -> list[FdInfo]:
    try:
        names = os.listdir(f"{proc}/{pid}/fd")
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return []
    fds: list[FdInfo] = []
    for name in sorted(names, key=int):
        target = _readlink(f"{proc}/{pid}/fd/{name}")
        if target is None:
            continue  # closed while listing
        info = parse_status(_read(f"{proc}/{pid}/fdinfo/{name}") or "")
        pos = int(info["pos"]) if "pos" in info else None
        flags = int(info["flags"], 8) if "flags" in info else None
        fds.append(FdInfo(int(name), target, pos, flags))
    return fds


# --------------------------------------------------------------------------- sockets


def _ipv4(hex_addr: str) -> str:
    return socket.inet_ntop(socket.AF_INET, struct.pack("<I", int(hex_addr, 16)))


def _ipv6(hex_addr: str) -> str:
    words = [int(hex_addr[i : i + 8], 16) for i in range(0, 32, 8)]
    return socket.inet_ntop(socket.AF_INET6, struct.pack("<4I", *words))


def format_address(hex_endpoint: str) -> str:
    """`0100007F:1F90` -> `127.0.0.1:8080`; IPv6 as `[::1]:8080`."""
    addr, _, port = hex_endpoint.partition(":")
    port_number = int(port, 16)
    if len(addr) == 8:
        return f"{_ipv4(addr)}:{port_number}"
    return f"[{_ipv6(addr)}]:{port_number}"


def parse_inet_table(text: str, protocol: str) -> dict[int, SocketInfo]:
    """/proc/net/{tcp,tcp6,udp,udp6} rows keyed by inode."""
    sockets: dict[int, SocketInfo] = {}
    for line in text.splitlines()[1:]:
        cols = line.split()
        if len(cols) < 10:
            continue
        inode = int(cols[9])
        state = TCP_STATES.get(cols[3].upper(), cols[3])
        if protocol.startswith("udp"):
            state = "ESTABLISHED" if cols[3] == "01" else "UNCONN"
        sockets[inode] = SocketInfo(
            inode, protocol, format_address(cols[1]), format_address(cols[2]), state
        )
    return sockets


def parse_unix_table(text: str) -> dict[int, SocketInfo]:
    """/proc/net/unix rows keyed by inode; the path, when bound, is the local address."""
    sockets: dict[int, SocketInfo] = {}
    for line in text.splitlines()[1:]:
        cols = line.split(maxsplit=7)
        if len(cols) < 7:
            continue
        inode = int(cols[6])
        kind = UNIX_TYPES.get(cols[4], cols[4])
        state = f"{kind} {UNIX_STATES.get(cols[5], cols[5])}"
        path = cols[7].strip() if len(cols) > 7 else ""
        sockets[inode] = SocketInfo(inode, "unix", path, "", state)
    return sockets


def read_sockets(pid: int, proc: str = PROC) -> dict[int, SocketInfo]:
    """Every socket of the network namespace `pid` lives in, keyed by inode."""
    sockets: dict[int, SocketInfo] = {}
    for protocol in ("tcp", "tcp6", "udp", "udp6"):
        text = _read(f"{proc}/{pid}/net/{protocol}")
        if text:
            sockets.update(parse_inet_table(text, protocol))
    text = _read(f"{proc}/{pid}/net/unix")
    if text:
        sockets.update(parse_unix_table(text))
    return sockets


# --------------------------------------------------------------------------- snapshot


def read_process(pid: int, proc: str = PROC) -> ProcessInfo | None:
    """One process's state; None when it is gone."""
    status = read_status(pid, proc=proc)
    if status is None:
        return None
    sockets = read_sockets(pid, proc)
    fds = []
    for fd in read_fds(pid, proc):
        inode = fd.inode
        if fd.kind == "socket" and inode is not None and inode in sockets:
            fd = FdInfo(fd.fd, fd.target, fd.pos, fd.flags, sockets[inode])
        fds.append(fd)
    return ProcessInfo(
        pid=pid,
        ppid=int(status.get("PPid", "0") or 0),
        name=status.get("Name", ""),
        state=status.get("State", "?"),
        cmdline=cmdline(pid, proc),
        cwd=_readlink(f"{proc}/{pid}/cwd"),
        exe=_readlink(f"{proc}/{pid}/exe"),
        rss_kb=_kb(status.get("VmRSS")),
        vmsize_kb=_kb(status.get("VmSize")),
        vmhwm_kb=_kb(status.get("VmHWM")),
        threads=int(status.get("Threads", "1") or 1),
        tracer_pid=int(status.get("TracerPid", "0") or 0),
        fds=fds,
    )


def snapshot_tree(root: int, proc: str = PROC, now: float | None = None) -> TreeSnapshot:
    """The process tree under `root` as it is now (processes that vanish are left out)."""
    processes = [p for p in (read_process(pid, proc) for pid in process_tree(root, proc)) if p]
    return TreeSnapshot(
        root=root,
        taken=now if now is not None else datetime.now(UTC).timestamp(),
        hostname=socket.gethostname(),
        processes=processes,
    )


# --------------------------------------------------------------------------- text


def iso_utc(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _tree_lines(snapshot: TreeSnapshot) -> list[str]:
    by_parent: dict[int, list[ProcessInfo]] = {}
    pids = set(snapshot.pids)
    for process in snapshot.processes:
        parent = process.ppid if process.ppid in pids and process.pid != snapshot.root else 0
        by_parent.setdefault(parent, []).append(process)
    lines: list[str] = []

    def walk(parent: int, depth: int) -> None:
        for process in by_parent.get(parent, []):
            indent = "  " * depth + ("`- " if depth else "")
            lines.append(
                f"  {indent}{process.pid} ({process.name}) ppid={process.ppid} "
                f"state={process.state.split()[0]} threads={process.threads} "
                f"rss={process.rss_kb} kB"
            )
            walk(process.pid, depth + 1)

    walk(0, 0)
    return lines


def format_cmdline(argv: Sequence[str]) -> str:
    """Shell-quoted, on one line (newlines in arguments shown as \\n)."""
    if not argv:
        return "-"
    return shlex.join(argv).replace("\r", "\\r").replace("\n", "\\n")


def _fd_line(fd: FdInfo) -> str:
    pos = f" pos={fd.pos}" if fd.pos is not None and fd.kind == "file" else ""
    sock = f"  [{fd.socket.describe()}]" if fd.socket else ""
    return f"    {fd.fd:>4} {fd.access:<3} {fd.target}{pos}{sock}"


def format_snapshot(snapshot: TreeSnapshot, title: str = "") -> str:
    """The human-readable snapshot written to workload_status_<window>.txt."""
    summary = snapshot.summary()
    heading = f"workload status{': ' + title if title else ''}"
    out = [
        f"# {heading}",
        f"# taken {iso_utc(snapshot.taken)} on {snapshot.hostname}, root pid {snapshot.root}",
        f"# {summary['processes']} processes, {summary['threads']} threads, "
        f"rss {summary['rss_kb']} kB, vmsize {summary['vmsize_kb']} kB, "
        f"{summary['fds']} fds, {summary['sockets']} sockets",
        "",
    ]
    if not snapshot.processes:
        out.append(f"process {snapshot.root} is not running")
        return "\n".join(out) + "\n"
    out.append("process tree")
    out += _tree_lines(snapshot)
    for process in snapshot.processes:
        out += [
            "",
            f"process {process.pid} ({process.name})",
            f"  cmdline: {format_cmdline(process.cmdline)}",
            f"  exe:     {process.exe or '-'}",
            f"  cwd:     {process.cwd or '-'}",
            f"  state:   {process.state}   ppid: {process.ppid}   "
            f"traced by: {process.tracer_pid or '-'}",
            f"  memory:  VmRSS {process.rss_kb} kB   VmSize {process.vmsize_kb} kB   "
            f"VmHWM {process.vmhwm_kb} kB",
            f"  threads: {process.threads}",
            f"  fds ({len(process.fds)}):",
        ]
        out += [_fd_line(fd) for fd in process.fds]
        sockets = process.sockets
        out.append(f"  sockets ({len(sockets)}):")
        out += [f"    inode {s.inode}: {s.describe()}" for s in sockets]
    return "\n".join(out) + "\n"


def describe_tracers(pids: Sequence[int], proc: str = PROC) -> list[str]:
    """`tid 123 traced by 456 (strace)` for every traced thread of `pids`."""
    return [
        f"tid {tid} traced by {tracer} ({read_comm(tracer, proc) or 'gone'})"
        for tid, tracer in sorted(tracers(pids, proc).items())
        if tracer
    ]
