"""Parse strace's output of write syscalls into a readable, timestamped log.

The suite runs strace as

    strace -f -ttt -xx -y -s 65536 -e trace=write,writev,pwrite64,pwritev,pwritev2 \
        -o RAW -p PID [-p PID ...]

and this module turns RAW into lines of text per (pid, fd) plus statistics. It is plain,
stdlib-only Python so that Ansible modules (on the nodes) and the controller share it.

What it understands:

- the line prefix: `PID ` (``-f`` with ``-o FILE``) or `[pid PID] ` (``-f`` to stderr) or
  none (a single tracee), then an optional ``-ttt`` timestamp (seconds since the epoch);
- string literals with ``-xx`` (every byte as ``\\xNN``), ``-x`` or strace's default
  escaping (``\\n \\t \\" \\\\`` and octal), and the ``...`` strace appends to a string
  longer than ``-s``;
- ``-y`` fd decorations (``1</dev/null>``), ``write``/``pwrite64`` and the iovec arrays of
  ``writev``/``pwritev``/``pwritev2``;
- ``<unfinished ...>`` / ``<... write resumed>`` pairs, ``<detached ...>``, results such as
  ``= -1 EPIPE (Broken pipe)`` and ``= ?``, signals (``--- SIGPIPE {...} ---``) and process
  ends (``+++ exited with 0 +++``, ``+++ killed by SIGKILL +++``).

Lines are split per (pid, fd) on ``\\n``, ``\\r\\n`` and a lone ``\\r`` (progress bars); each
log line carries the timestamp of the write that ended it (strace stamps a syscall when it
is entered). The pid is the one strace prints: for a thread other than a process's main
thread that is the thread id.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

WRITE_SYSCALLS = ("write", "writev", "pwrite64", "pwritev", "pwritev2")
VECTOR_SYSCALLS = frozenset({"writev", "pwritev", "pwritev2"})

# The strace command line the suite uses, minus the output file and the pids.
DEFAULT_STRING_LIMIT = 65536


def strace_argv(
    strace_bin: str,
    raw_path: str,
    pids: Sequence[int],
    string_limit: int = DEFAULT_STRING_LIMIT,
    syscalls: Sequence[str] = WRITE_SYSCALLS,
    decode_fds: bool = True,
    trace_paths: Sequence[str] = (),
) -> list[str]:
    """The argv that attaches strace to `pids` (their threads, and later children: -f).

    `trace_paths` (strace -P) keeps only writes to fds that point to one of those paths.
    """
    argv = [strace_bin, "-f", "-ttt", "-xx"]
    if decode_fds:
        argv.append("-y")
    argv += ["-s", str(string_limit), "-e", "trace=" + ",".join(syscalls)]
    for path in trace_paths:
        argv += ["-P", path]
    argv += ["-o", raw_path]
    for pid in pids:
        argv += ["-p", str(pid)]
    return argv


# --------------------------------------------------------------------------- records


@dataclass(frozen=True)
class WriteCall:
    """One write-family syscall that returned (or whose result strace could not see)."""

    pid: int
    ts: float | None
    syscall: str
    fd: int | None
    fd_path: str | None
    data: bytes  # the bytes that reached the fd, as far as strace showed them
    requested: int | None  # count argument (sum of iov_len for vectors)
    result: int | None  # bytes written; None when strace printed `= ?`
    error: str | None = None  # errno name, e.g. "EPIPE"
    # (offset in data, bytes written there that strace did not show: longer than -s)
    gaps: tuple[tuple[int, int], ...] = ()
    resumed: bool = False  # printed as an <unfinished ...> / <... resumed> pair

    @property
    def truncated_bytes(self) -> int:
        return sum(missing for _, missing in self.gaps)

    @property
    def written(self) -> int:
        return self.result if self.result is not None and self.result > 0 else 0


@dataclass(frozen=True)
class InterruptedCall:
    """A syscall that strace saw enter but never return (tracee killed, trace ended)."""

    pid: int
    ts: float | None
    syscall: str
    fd: int | None
    requested: int | None
    reason: str  # "detached", "killed", "exited", "end of trace"


@dataclass(frozen=True)
class ProcessEnd:
    pid: int
    ts: float | None
    exit_code: int | None  # for "exited with N"
    signal: str | None  # for "killed by SIGX"
    core_dumped: bool
    text: str  # what strace printed between the +++ marks


@dataclass(frozen=True)
class SignalDelivery:
    pid: int
    ts: float | None
    signal: str


@dataclass
class StraceTrace:
    """Everything parsed from one raw strace file, in file order."""

    writes: list[WriteCall] = field(default_factory=list)
    interrupted: list[InterruptedCall] = field(default_factory=list)
    ends: list[ProcessEnd] = field(default_factory=list)
    signals: list[SignalDelivery] = field(default_factory=list)
    unparsed: list[str] = field(default_factory=list)
    other_syscalls: int = 0  # traced syscalls that are not writes (kept out of the log)


@dataclass(frozen=True)
class LogLine:
    ts: float | None
    pid: int
    fd: int
    text: str
    complete: bool  # False: no line end before the capture ended


@dataclass(frozen=True)
class StreamStats:
    pid: int
    fd: int
    paths: tuple[str, ...]
    writes: int
    bytes: int
    lines: int

    def as_dict(self) -> dict[str, object]:
        return {
            "pid": self.pid,
            "fd": self.fd,
            "paths": list(self.paths),
            "writes": self.writes,
            "bytes": self.bytes,
            "lines": self.lines,
        }


@dataclass(frozen=True)
class CaptureStats:
    writes: int
    bytes: int  # bytes the syscalls reported written
    bytes_captured: int  # bytes whose content strace printed
    lines: int
    incomplete_lines: int
    failed_writes: int
    errors: dict[str, int]
    truncated_writes: int
    truncated_bytes: int
    unknown_result_writes: int
    unfinished_never_resumed: int
    resumed_writes: int
    pids: list[int]
    streams: list[StreamStats]
    first_ts: float | None
    last_ts: float | None
    exited: dict[int, int]
    killed: dict[int, str]
    signals: dict[str, int]
    unparsed_lines: int

    def as_dict(self) -> dict[str, object]:
        return {
            "writes": self.writes,
            "bytes": self.bytes,
            "bytes_captured": self.bytes_captured,
            "lines": self.lines,
            "incomplete_lines": self.incomplete_lines,
            "failed_writes": self.failed_writes,
            "errors": dict(self.errors),
            "truncated_writes": self.truncated_writes,
            "truncated_bytes": self.truncated_bytes,
            "unknown_result_writes": self.unknown_result_writes,
            "unfinished_never_resumed": self.unfinished_never_resumed,
            "resumed_writes": self.resumed_writes,
            "pids": list(self.pids),
            "streams": [s.as_dict() for s in self.streams],
            "first_ts": self.first_ts,
            "last_ts": self.last_ts,
            "first_iso": iso_utc(self.first_ts) if self.first_ts is not None else None,
            "last_iso": iso_utc(self.last_ts) if self.last_ts is not None else None,
            # JSON object keys are strings
            "exited": {str(pid): code for pid, code in sorted(self.exited.items())},
            "killed": {str(pid): sig for pid, sig in sorted(self.killed.items())},
            "signals": dict(self.signals),
            "unparsed_lines": self.unparsed_lines,
        }


# --------------------------------------------------------------------------- strings

_SIMPLE_ESCAPES = {
    "n": 0x0A,
    "t": 0x09,
    "r": 0x0D,
    "v": 0x0B,
    "f": 0x0C,
    "a": 0x07,
    "b": 0x08,
    "e": 0x1B,
    '"': 0x22,
    "'": 0x27,
    "\\": 0x5C,
    "?": 0x3F,
}
_ONLY_HEX_RE = re.compile(r"(?:\\x[0-9a-fA-F]{2})*")
_ESCAPE_RE = re.compile(r"\\(x[0-9a-fA-F]{1,2}|[0-7]{1,3}|.)", re.DOTALL)
# a string literal: quote, body with backslash escapes, quote, and strace's `...` mark
_LITERAL_RE = re.compile(r'"([^"\\]*(?:\\.[^"\\]*)*)"(\.\.\.)?', re.DOTALL)


def _literal_bytes(text: str) -> bytes:
    # the raw file is read as latin-1; anything beyond it is kept as UTF-8
    try:
        return text.encode("latin-1")
    except UnicodeEncodeError:
        return text.encode("utf-8")


def decode_c_string(body: str) -> bytes:
    """Bytes of a strace string literal's body (between the quotes).

    Characters outside escapes are taken as single bytes (the raw file is read as
    latin-1, so any byte strace wrote unescaped comes back unchanged).
    """
    if _ONLY_HEX_RE.fullmatch(body):  # -xx: every byte is \xNN
        return bytes.fromhex(body.replace("\\x", ""))
    out = bytearray()
    start = 0
    for match in _ESCAPE_RE.finditer(body):
        out += _literal_bytes(body[start : match.start()])
        code = match.group(1)
        if code[0] == "x" and len(code) > 1:
            out.append(int(code[1:], 16))
        elif code[0] in "01234567":
            out.append(int(code, 8) & 0xFF)
        elif code in _SIMPLE_ESCAPES:
            out.append(_SIMPLE_ESCAPES[code])
        else:  # unknown escape: keep it as written
            out += _literal_bytes("\\" + code)
        start = match.end()
    out += _literal_bytes(body[start:])
    return bytes(out)


@dataclass(frozen=True)
class _Literal:
    data: bytes
    truncated: bool  # strace printed `...` after the closing quote
    key: str  # the `name=` before it, e.g. "iov_base", "" for a plain argument


@dataclass(frozen=True)
class _Args:
    top: list[str]  # top-level arguments as text (string literals replaced by "")
    literals: list[_Literal]
    closed: bool  # the closing parenthesis was seen
    rest: str  # text after the closing parenthesis


def _scan_args(text: str) -> _Args:
    """Split `fd, "str"..., [{...}], n) = ret` into arguments, literals and the rest."""
    top: list[str] = []
    literals: list[_Literal] = []
    current: list[str] = []
    depth = 0
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if ch == '"':
            match = _LITERAL_RE.match(text, i)
            body, truncated, end = (
                (match.group(1), bool(match.group(2)), match.end())
                if match
                else (text[i + 1 :], False, n)  # unterminated: take the rest
            )
            key_match = _KEY_RE.search("".join(current[-16:]))
            literals.append(
                _Literal(decode_c_string(body), truncated, key_match.group(1) if key_match else "")
            )
            current.append('""...' if truncated else '""')
            i = end
            continue
        if ch == "<" and depth == 0 and _INT_RE.match("".join(current).strip()):
            # -y decoration after an fd number; strace escapes '<' and '>' inside it, so
            # the first '>' closes it
            j = text.find(">", i)
            j = n - 1 if j < 0 else j
            current.append(text[i : j + 1])
            i = j + 1
            continue
        if ch in "[{(":
            depth += 1
        elif ch in "]}":
            depth -= 1
        elif ch == ")":
            if depth == 0:
                top.append("".join(current).strip())
                return _Args(top, literals, True, text[i + 1 :])
            depth -= 1
        elif ch == "," and depth == 0:
            top.append("".join(current).strip())
            current = []
            i += 1
            continue
        current.append(ch)
        i += 1
    if current and "".join(current).strip():
        top.append("".join(current).strip())
    return _Args(top, literals, False, "")


_INT_RE = re.compile(r"^-?\d+$")
_KEY_RE = re.compile(r"(\w+)=\s*$")
_FD_RE = re.compile(r"^(-?\d+)(?:<(.*)>)?$", re.DOTALL)
_RESULT_RE = re.compile(r"^\s*=\s*(-?\d+|0x[0-9a-fA-F]+|\?)(?:\s+([A-Z][A-Z0-9_]*))?")


def _parse_fd(arg: str) -> tuple[int | None, str | None]:
    match = _FD_RE.match(arg)
    if not match:
        return None, None
    path = match.group(2)
    decoded = decode_c_string(path).decode("utf-8", "backslashreplace") if path else None
    return int(match.group(1)), decoded


def _requested(syscall: str, args: _Args) -> int | None:
    if syscall in VECTOR_SYSCALLS:
        lengths = re.findall(r"iov_len=(\d+)", args.top[1]) if len(args.top) > 1 else []
        return sum(int(x) for x in lengths) if lengths else None
    if len(args.top) > 2 and _INT_RE.match(args.top[2]):
        return int(args.top[2])
    return None


_IOV_RE = re.compile(r"iov_base=([^,{}]*), iov_len=(\d+)")


def _segments(syscall: str, args: _Args, requested: int | None) -> list[tuple[bytes, int]]:
    """(shown bytes, length the program passed) per buffer, in order."""
    if syscall not in VECTOR_SYSCALLS:
        shown = args.literals[0].data if args.literals else b""
        return [(shown, requested if requested is not None else len(shown))]
    bases = iter(lit for lit in args.literals if lit.key == "iov_base")
    segments: list[tuple[bytes, int]] = []
    for base, length in _IOV_RE.findall(args.top[1] if len(args.top) > 1 else ""):
        literal = next(bases, None) if base.startswith('""') else None
        segments.append((literal.data if literal else b"", int(length)))
    return segments


def _cut(segments: Sequence[tuple[bytes, int]], result: int) -> tuple[bytes, list[tuple[int, int]]]:
    """The first `result` bytes of the buffers, with gaps where strace showed less."""
    data = bytearray()
    gaps: list[tuple[int, int]] = []
    remaining = result
    for shown, length in segments:
        if remaining <= 0:
            break
        take = min(length, remaining)
        captured = shown[:take]
        data += captured
        if take > len(captured):
            gaps.append((len(data), take - len(captured)))
        remaining -= take
    if remaining > 0:  # more written than the buffers strace listed (array cut short)
        gaps.append((len(data), remaining))
    return bytes(data), gaps


def build_write(
    pid: int, ts: float | None, syscall: str, arg_text: str, resumed: bool = False
) -> WriteCall | None:
    """A WriteCall from `fd, "data", n) = ret ...` (the text after `syscall(`)."""
    args = _scan_args(arg_text)
    if not args.closed or not args.top:
        return None
    fd, fd_path = _parse_fd(args.top[0])
    requested = _requested(syscall, args)
    match = _RESULT_RE.match(args.rest)
    if match is None:
        return None
    if match.group(1) == "?":  # the tracee went away inside the syscall
        return WriteCall(pid, ts, syscall, fd, fd_path, b"", requested, None, resumed=resumed)
    value = int(match.group(1), 0)
    if value < 0:
        error = match.group(2) or f"errno{value}"
        return WriteCall(pid, ts, syscall, fd, fd_path, b"", requested, -1, error, resumed=resumed)
    data, gaps = _cut(_segments(syscall, args, requested), value)
    return WriteCall(
        pid, ts, syscall, fd, fd_path, data, requested, value, None, tuple(gaps), resumed
    )


# --------------------------------------------------------------------------- lines

_PREFIX_RE = re.compile(r"(?:\[pid\s+(\d+)\]\s+|(\d+)\s+)?(?:(\d+\.\d+)\s+)?")
_UNFINISHED = "<unfinished ...>"
_DETACHED = "<detached ...>"
_CALL_HEAD_RE = re.compile(r"(\w+)\(")
_RESUMED_RE = re.compile(r"^<\.\.\. (\w+) resumed>\s?(.*)$", re.DOTALL)
_SYSCALL_RE = re.compile(r"^(\w+)\((.*)$", re.DOTALL)
_END_RE = re.compile(r"^\+\+\+ (.*) \+\+\+$")
_EXITED_RE = re.compile(r"^exited with (-?\d+)$")
_KILLED_RE = re.compile(r"^killed by (SIG\w+|\d+)( \(core dumped\))?$")
_SIGNAL_RE = re.compile(r"^--- (?:stopped by )?(SIG\w+|\d+)\b.*---$")


@dataclass
class _Pending:
    ts: float | None
    syscall: str
    head: str


def _interrupted(pid: int, pending: _Pending, reason: str) -> InterruptedCall:
    args = _scan_args(pending.head + ")")
    fd = _parse_fd(args.top[0])[0] if args.top else None
    return InterruptedCall(
        pid, pending.ts, pending.syscall, fd, _requested(pending.syscall, args), reason
    )


def _cut_marker(body: str) -> tuple[str, str, str] | None:
    """(marker, syscall, argument text so far) for a line ending in <unfinished ...>."""
    for marker in (_UNFINISHED, _DETACHED):
        if body.endswith(marker):
            head = _CALL_HEAD_RE.match(body)
            if head:
                return marker, head.group(1), body[head.end() : -len(marker)].rstrip()
    return None


def parse_strace(text: str, default_pid: int = 0) -> StraceTrace:
    """Parse raw strace output (`-o` file contents). `default_pid`: for unprefixed lines."""
    trace = StraceTrace()
    pending: dict[int, _Pending] = {}
    # only "\n" ends a line: str.splitlines() would also split on bytes like 0x85 or 0x1c
    for raw_line in text.split("\n"):
        line = raw_line.rstrip("\r")
        if not line.strip():
            continue
        match = _PREFIX_RE.match(line)
        assert match is not None  # every group is optional
        pid = int(match.group(1) or match.group(2) or default_pid)
        ts = float(match.group(3)) if match.group(3) else None
        body = line[match.end() :].strip()
        cut = _cut_marker(body)

        if m := _END_RE.match(body):
            what = m.group(1)
            if pid in pending:
                reason = "killed" if what.startswith("killed") else "exited"
                trace.interrupted.append(_interrupted(pid, pending.pop(pid), reason))
            exited = _EXITED_RE.match(what)
            killed = _KILLED_RE.match(what)
            trace.ends.append(
                ProcessEnd(
                    pid,
                    ts,
                    int(exited.group(1)) if exited else None,
                    killed.group(1) if killed else None,
                    bool(killed and killed.group(2)),
                    what,
                )
            )
            continue
        if m := _SIGNAL_RE.match(body):
            trace.signals.append(SignalDelivery(pid, ts, m.group(1)))
            continue
        if m := _RESUMED_RE.match(body):
            started = pending.pop(pid, None)
            if started is None or m.group(1) != started.syscall:
                trace.unparsed.append(raw_line)
                continue
            if started.syscall in WRITE_SYSCALLS:
                call = build_write(
                    pid, started.ts, started.syscall, started.head + m.group(2), resumed=True
                )
                if call is None:
                    trace.unparsed.append(raw_line)
                else:
                    trace.writes.append(call)
            else:
                trace.other_syscalls += 1
            continue
        if cut is not None and cut[0] == _UNFINISHED:
            if pid in pending:  # strace never does this; keep the older one visible
                trace.interrupted.append(_interrupted(pid, pending.pop(pid), "end of trace"))
            pending[pid] = _Pending(ts, cut[1], cut[2])
            continue
        if cut is not None and cut[0] == _DETACHED:
            trace.interrupted.append(_interrupted(pid, _Pending(ts, cut[1], cut[2]), "detached"))
            continue
        if m := _SYSCALL_RE.match(body):
            syscall = m.group(1)
            if syscall not in WRITE_SYSCALLS:
                trace.other_syscalls += 1
                continue
            call = build_write(pid, ts, syscall, m.group(2))
            if call is None:
                trace.unparsed.append(raw_line)
            else:
                trace.writes.append(call)
            continue
        trace.unparsed.append(raw_line)
    for pid, started in pending.items():
        trace.interrupted.append(_interrupted(pid, started, "end of trace"))
    return trace


def read_raw(path: str) -> str:
    """A raw strace file as text, every byte kept (latin-1 maps bytes 1:1)."""
    with open(path, "rb") as handle:
        return handle.read().decode("latin-1")


# --------------------------------------------------------------------------- assembly

_CONTROL_RE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


def _escape_control(match: re.Match[str]) -> str:
    return f"\\x{ord(match.group()):02x}"


def render_text(data: bytes) -> str:
    """Readable text of one line: UTF-8, other bytes and control characters as \\xNN."""
    return _CONTROL_RE.sub(_escape_control, data.decode("utf-8", errors="backslashreplace"))


def truncation_marker(missing: int) -> bytes:
    return f"[... {missing} bytes not captured ...]".encode()


_LINE_END_RE = re.compile(rb"\r\n|\n|\r")


@dataclass
class _Stream:
    """Bytes of one (pid, fd) since its last line end."""

    chunks: list[bytes] = field(default_factory=list)
    ts: float | None = None
    cr_pending: bool = False  # ended in \r: a line end, unless \n follows in the next write

    def feed(self, data: bytes) -> list[bytes]:
        """Append `data`; the lines it completes (without their line ends)."""
        lines: list[bytes] = []
        if self.cr_pending and data:
            self.cr_pending = False
            lines.append(b"".join(self.chunks))
            self.chunks = []
            if data.startswith(b"\n"):
                data = data[1:]
        start = 0
        for match in _LINE_END_RE.finditer(data):
            self.chunks.append(data[start : match.start()])
            start = match.end()
            if match.group() == b"\r" and start == len(data):
                self.cr_pending = True
                break
            lines.append(b"".join(self.chunks))
            self.chunks = []
        if start < len(data):
            self.chunks.append(data[start:])
        return lines


def assemble_lines(writes: Iterable[WriteCall]) -> list[LogLine]:
    """Lines of text per (pid, fd), each stamped with the write that ended it, time-ordered.

    Bytes strace did not show (strings longer than -s) appear as a marker in the text.
    """
    streams: dict[tuple[int, int], _Stream] = {}
    lines: list[LogLine] = []
    for call in writes:
        if call.fd is None or call.written == 0:
            continue
        stream = streams.setdefault((call.pid, call.fd), _Stream())
        stream.ts = call.ts
        pieces: list[bytes] = []
        start = 0
        for offset, missing in call.gaps:
            pieces += [call.data[start:offset], truncation_marker(missing)]
            start = offset
        pieces.append(call.data[start:])
        for piece in pieces:
            for chunk in stream.feed(piece):
                lines.append(LogLine(call.ts, call.pid, call.fd, render_text(chunk), True))
    for (pid, fd), stream in streams.items():
        tail = b"".join(stream.chunks)
        if tail or stream.cr_pending:
            lines.append(LogLine(stream.ts, pid, fd, render_text(tail), stream.cr_pending))
    order = {id(line): n for n, line in enumerate(lines)}
    return sorted(lines, key=lambda ln: (ln.ts is None, ln.ts or 0.0, order[id(ln)]))


# --------------------------------------------------------------------------- stats


@dataclass
class _StreamTally:
    paths: list[str] = field(default_factory=list)
    writes: int = 0
    bytes: int = 0
    lines: int = 0


def compute_stats(trace: StraceTrace, lines: Sequence[LogLine]) -> CaptureStats:
    errors: dict[str, int] = {}
    signals: dict[str, int] = {}
    streams: dict[tuple[int, int], _StreamTally] = {}
    pids: set[int] = set()
    stamps: list[float] = []
    for call in trace.writes:
        pids.add(call.pid)
        if call.ts is not None:
            stamps.append(call.ts)
        if call.error:
            errors[call.error] = errors.get(call.error, 0) + 1
        if call.fd is None:
            continue
        tally = streams.setdefault((call.pid, call.fd), _StreamTally())
        tally.writes += 1
        tally.bytes += call.written
        if call.fd_path is not None and call.fd_path not in tally.paths:
            tally.paths.append(call.fd_path)
    for line in lines:
        if (line.pid, line.fd) in streams:
            streams[(line.pid, line.fd)].lines += 1
    for delivery in trace.signals:
        pids.add(delivery.pid)
        signals[delivery.signal] = signals.get(delivery.signal, 0) + 1
    for end in trace.ends:
        pids.add(end.pid)
    for call in trace.interrupted:
        pids.add(call.pid)
    stream_stats = [
        StreamStats(pid, fd, tuple(t.paths), t.writes, t.bytes, t.lines)
        for (pid, fd), t in sorted(streams.items())
    ]
    return CaptureStats(
        writes=len(trace.writes),
        bytes=sum(c.written for c in trace.writes),
        bytes_captured=sum(c.written - c.truncated_bytes for c in trace.writes),
        lines=len(lines),
        incomplete_lines=sum(1 for ln in lines if not ln.complete),
        failed_writes=sum(1 for c in trace.writes if c.error),
        errors=errors,
        truncated_writes=sum(1 for c in trace.writes if c.truncated_bytes),
        truncated_bytes=sum(c.truncated_bytes for c in trace.writes),
        unknown_result_writes=sum(1 for c in trace.writes if c.result is None and not c.error),
        unfinished_never_resumed=len(trace.interrupted),
        resumed_writes=sum(1 for c in trace.writes if c.resumed),
        pids=sorted(pids),
        streams=stream_stats,
        first_ts=min(stamps) if stamps else None,
        last_ts=max(stamps) if stamps else None,
        exited={e.pid: e.exit_code for e in trace.ends if e.exit_code is not None},
        killed={e.pid: e.signal for e in trace.ends if e.signal is not None},
        signals=signals,
        unparsed_lines=len(trace.unparsed),
    )


# --------------------------------------------------------------------------- output


def iso_utc(ts: float) -> str:
    """`2026-11-26T10:00:01.123456Z` for an epoch timestamp."""
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _stamp(ts: float | None) -> str:
    return iso_utc(ts) if ts is not None else "-" * 27


def format_line(line: LogLine) -> str:
    mark = "|" if line.complete else "~"
    return f"{_stamp(line.ts)} pid={line.pid} fd={line.fd} {mark} {line.text}".rstrip()


def _event_lines(trace: StraceTrace) -> list[tuple[float | None, str]]:
    events: list[tuple[float | None, str]] = []
    for end in trace.ends:
        events.append((end.ts, f"{_stamp(end.ts)} pid={end.pid} +++ {end.text} +++"))
    for call in trace.interrupted:
        size = f"{call.requested} bytes" if call.requested is not None else "data"
        events.append(
            (
                call.ts,
                f"{_stamp(call.ts)} pid={call.pid} fd={call.fd} ? {call.syscall} of {size} "
                f"never returned ({call.reason})",
            )
        )
    for write in trace.writes:
        where = f"{_stamp(write.ts)} pid={write.pid} fd={write.fd}"
        if write.error:
            events.append((write.ts, f"{where} ! {write.syscall} failed: {write.error}"))
        elif write.result is None:
            size = f"{write.requested} bytes" if write.requested is not None else "data"
            events.append(
                (write.ts, f"{where} ? {write.syscall} of {size}: result unknown (process ended)")
            )
    return events


def format_log(
    trace: StraceTrace,
    lines: Sequence[LogLine],
    stats: CaptureStats,
    header: Sequence[str] = (),
) -> str:
    """The readable log: `#` header, then text lines and process events in time order."""
    out = [f"# {h}" for h in header]
    out.append(
        f"# {stats.lines} lines, {stats.bytes} bytes in {stats.writes} writes from "
        f"{len(stats.pids)} pids"
    )
    out.append(
        "# format: <UTC time of the write that ended the line> pid=<pid> fd=<fd> | <text>;"
        " '~' instead of '|': no line end before the capture ended;"
    )
    out.append(
        "#   '+++' process ended, '?' write whose result strace did not see, '!' write failed"
    )
    for stream in stats.streams:
        if stream.paths:
            out.append(f"# pid={stream.pid} fd={stream.fd} -> {', '.join(stream.paths)}")
    timed: list[tuple[float | None, int, str]] = [
        (ln.ts, n, format_line(ln)) for n, ln in enumerate(lines)
    ]
    offset = len(timed)
    timed += [(ts, offset + n, text) for n, (ts, text) in enumerate(_event_lines(trace))]
    timed.sort(key=lambda item: (item[0] is None, item[0] or 0.0, item[1]))
    out += [text for _, _, text in timed]
    return "\n".join(out) + "\n"


def summarize(text: str, default_pid: int = 0) -> tuple[StraceTrace, list[LogLine], CaptureStats]:
    """Parse, assemble and count in one call."""
    trace = parse_strace(text, default_pid)
    lines = assemble_lines(trace.writes)
    return trace, lines, compute_stats(trace, lines)


# --------------------------------------------------------------------------- stderr

_ATTACHED_RE = re.compile(r"Process (\d+) attached(?: with (\d+) threads)?")
_DETACHED_MSG_RE = re.compile(r"Process (\d+) detached")


@dataclass(frozen=True)
class StraceMessages:
    attached: dict[int, int]  # pid -> threads (1 when strace did not say)
    detached: list[int]
    other: list[str]  # errors and warnings, e.g. "attach: ptrace(PTRACE_SEIZE, 1): ..."


def parse_strace_stderr(text: str) -> StraceMessages:
    """strace's own messages (its stderr): which pids it attached to and detached from."""
    attached: dict[int, int] = {}
    detached: list[int] = []
    other: list[str] = []
    for line in text.splitlines():
        line = line.strip()
        if not line:
            continue
        if m := _ATTACHED_RE.search(line):
            attached[int(m.group(1))] = int(m.group(2) or 1)
        elif m := _DETACHED_MSG_RE.search(line):
            detached.append(int(m.group(1)))
        else:
            other.append(line)
    return StraceMessages(attached, detached, other)
