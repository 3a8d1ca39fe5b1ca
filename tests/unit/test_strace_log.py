"""strace_log: parsing recorded strace output (tests/fixtures/strace/, see record_fixtures.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
import strace_log
from strace_log import (
    LogLine,
    assemble_lines,
    decode_c_string,
    format_log,
    parse_strace,
    parse_strace_stderr,
    read_raw,
    render_text,
    strace_argv,
    summarize,
)

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "strace"


def load(name: str) -> str:
    return read_raw(str(FIXTURES / f"{name}.raw"))


def texts(lines: list[LogLine], pid: int | None = None, fd: int | None = None) -> list[str]:
    return [
        ln.text for ln in lines if (pid is None or ln.pid == pid) and (fd is None or ln.fd == fd)
    ]


# --------------------------------------------------------------------------- strings


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (r"\x68\x69\x0a", b"hi\n"),  # -xx
        (r"\x00\x01\xff\xfe", b"\x00\x01\xff\xfe"),
        (r"plain \x1b[0m", b"plain \x1b[0m"),  # -x: only non-printable bytes escaped
        (r"tab\there\n", b"tab\there\n"),  # default escaping
        (r"\"quoted\" back\\slash", b'"quoted" back\\slash'),
        (r"\0\1\377\12", b"\x00\x01\xff\n"),  # octal, 1 to 3 digits
        (r"\r\v\f\a\b", b"\r\v\f\a\b"),
        (r"\q", b"\\q"),  # unknown escape kept as written
    ],
)
def test_decode_c_string(body: str, expected: bytes) -> None:
    assert decode_c_string(body) == expected


def test_render_text_makes_bytes_visible() -> None:
    assert render_text("café ✓".encode()) == "café ✓"
    assert render_text(b"a\x00b\x1b[1m\tc\xff") == "a\\x00b\\x1b[1m\tc\\xff"


def test_strace_argv_is_the_documented_command() -> None:
    assert strace_argv("/usr/bin/strace", "/tmp/w.log.raw", [10, 11]) == [
        "/usr/bin/strace",
        "-f",
        "-ttt",
        "-xx",
        "-y",
        "-s",
        "65536",
        "-e",
        "trace=write,writev,pwrite64,pwritev,pwritev2",
        "-o",
        "/tmp/w.log.raw",
        "-p",
        "10",
        "-p",
        "11",
    ]


# --------------------------------------------------------------------------- recorded


def test_text_and_binary_bytes() -> None:
    trace, lines, stats = summarize(load("text_binary"))
    pid = stats.pids[0]
    assert texts(lines, pid, 1) == [
        "hello world",
        "café ✓ utf-8",
        "bin:\\x00\\x01\\x7f\\xff\\xfe",
        'tab\there "quoted" back\\slash',
        "vec1 vec2",
        "vec3 continues after vec",  # writev's third buffer joined the next write
        "progress 10%",  # lone \r ends a line too
        "progress 50%",
        "progress 100%",
        "no newline at exit",
    ]
    assert lines[-1].text == "no newline at exit" and not lines[-1].complete
    assert texts(lines, pid, 2) == ["partial line", "got EPIPE"]
    assert texts(lines, pid, 3) == ["pwrite at 0"]
    # every byte survives in the parsed calls
    assert trace.writes[2].data == b"bin:\x00\x01\x7f\xff\xfe\n"
    assert [w.syscall for w in trace.writes].count("writev") == 1
    assert [w.syscall for w in trace.writes].count("pwrite64") == 1
    assert stats.errors == {"EPIPE": 1, "EBADF": 1}
    assert stats.failed_writes == 2
    assert stats.signals == {"SIGPIPE": 1}
    assert stats.exited == {pid: 0}
    assert stats.incomplete_lines == 1
    assert stats.unparsed_lines == 0
    assert stats.bytes == stats.bytes_captured == 196
    paths = {(s.fd, s.paths) for s in stats.streams}
    assert (1, ("/dev/null",)) in paths
    assert (3, ("/tmp/strace-fixture-pwrite.txt",)) in paths
    assert any(s.fd == 4 and s.paths[0].startswith("pipe:[") for s in stats.streams)


def test_log_format_lines() -> None:
    trace, lines, stats = summarize(load("text_binary"))
    log = format_log(trace, lines, stats, header=["capture test"]).splitlines()
    assert log[0] == "# capture test"
    pid = stats.pids[0]
    assert f"2026-11-26T04:58:04.890595Z pid={pid} fd=1 | hello world" in log
    assert f"2026-11-26T04:58:04.893535Z pid={pid} fd=1 ~ no newline at exit" in log
    assert f"2026-11-26T04:58:04.892342Z pid={pid} fd=4 ! write failed: EPIPE" in log
    assert log[-1] == f"2026-11-26T04:58:04.896618Z pid={pid} +++ exited with 0 +++"
    stamps = [ln.split()[0] for ln in log if not ln.startswith("#")]
    assert stamps == sorted(stamps)  # time order (same-width ISO stamps sort as text)


def test_two_threads_with_unfinished_resumed_pairs() -> None:
    raw = load("threads")
    assert "<unfinished ...>" in raw and "resumed>" in raw
    _trace, lines, stats = summarize(raw)
    main, first, second = stats.pids
    assert stats.resumed_writes == 80
    assert stats.unfinished_never_resumed == 0
    assert stats.unparsed_lines == 0
    for tid in (first, second):
        got = texts(lines, tid, 1)
        name = got[0].split()[1]
        # each thread's two writes per line are joined back, in order
        assert got == [f"thread {name} line {i}" for i in range(40)]
    assert {texts(lines, first)[0][:8], texts(lines, second)[0][:8]} == {"thread A", "thread B"}
    assert texts(lines, main) == ["main done"]
    assert stats.writes == 161 and stats.lines == 81
    assert [ln.ts for ln in lines] == sorted(ln.ts for ln in lines)


def test_child_processes() -> None:
    _trace, lines, stats = summarize(load("fork_child"))
    parent, forked, shell = stats.pids
    assert texts(lines, parent) == ["parent before fork", "parent done"]
    assert texts(lines, forked, 1) == ["child via fork"]
    assert texts(lines, forked, 2) == ["child stderr"]
    assert texts(lines, shell) == ["from sh"]
    assert stats.exited == {parent: 0, forked: 3, shell: 0}


def test_writes_longer_than_the_string_limit() -> None:
    # recorded with -s 32
    trace, lines, stats = summarize(load("truncated"))
    assert texts(lines) == [
        "short line",
        # the newline of the 101-byte write was in the part strace did not show
        "L" * 32
        + "[... 69 bytes not captured ...]"
        + "M" * 32
        + "[... 8 bytes not captured ...] end",
        "V" * 32 + "[... 8 bytes not captured ...]" + "W" * 10,
    ]
    assert stats.truncated_writes == 3
    assert stats.truncated_bytes == 69 + 8 + 8
    assert stats.bytes == 208
    assert stats.bytes_captured == 208 - 85
    writev = trace.writes[-1]
    assert writev.syscall == "writev" and writev.gaps == ((32, 8),)


def test_killed_tracees() -> None:
    trace, lines, stats = summarize(load("killed"))
    parent, child = stats.pids
    assert stats.killed == {parent: "SIGKILL", child: "SIGKILL"}
    # the child died inside a write to a full pipe: strace shows `= ?`
    assert stats.unknown_result_writes == 1
    blocked = [w for w in trace.writes if w.result is None]
    assert blocked[0].pid == child and blocked[0].requested == 100000 and blocked[0].resumed
    assert texts(lines, child) == ["child start"]
    assert texts(lines, parent) == ["parent kills child", "parent kills itself"]
    assert not lines[-1].complete
    log = format_log(trace, lines, stats)
    assert f"pid={child} fd=4 ? write of 100000 bytes: result unknown (process ended)" in log
    assert f"pid={child} +++ killed by SIGKILL +++" in log


def test_attach_and_detach_of_a_process_tree() -> None:
    _trace, lines, stats = summarize(load("attach_detach"))
    messages = parse_strace_stderr((FIXTURES / "attach_detach.stderr").read_text())
    parent = min(messages.attached)
    assert messages.attached[parent] == 2  # "attached with 2 threads"
    assert len(messages.attached) == 3  # parent, its child, the child forked while traced
    assert set(messages.detached) >= {parent}
    assert messages.other == []
    assert stats.unparsed_lines == 0

    by_pid = {pid: texts(lines, pid) for pid in stats.pids}
    parent_lines = by_pid[parent]
    first = int(parent_lines[0].split()[-1])
    assert parent_lines == [f"parent line {first + i}" for i in range(len(parent_lines))]
    thread = next(p for p, t in by_pid.items() if t and t[0].startswith("thread tick"))
    ticks = [int(t.split()[-1]) for t in by_pid[thread]]
    assert ticks == list(range(ticks[0], ticks[0] + len(ticks)))
    late = next(p for p, t in by_pid.items() if t == ["late child"])
    assert stats.exited[late] == 0
    child = next(p for p, t in by_pid.items() if t and t[0].startswith("child line"))
    assert {ln.fd for ln in lines if ln.pid == child} == {2}
    assert stats.exited[child] == 0
    assert stats.resumed_writes == 4


def test_detached_in_the_middle_of_a_write() -> None:
    trace, lines, stats = summarize(load("detached_blocked"))
    assert lines == []
    assert stats.unfinished_never_resumed == 1
    (call,) = trace.interrupted
    assert (call.fd, call.requested, call.reason) == (4, 1000, "detached")
    messages = parse_strace_stderr((FIXTURES / "detached_blocked.stderr").read_text())
    assert messages.attached == {call.pid: 1} and messages.detached == [call.pid]


# --------------------------------------------------------------------------- hand-written

SNIPPET_PAIRS = """\
300 1795669000.000100 write(1, "\\x61\\x62", 2 <unfinished ...>
301 1795669000.000200 write(1, "\\x7a\\x0a", 2) = 2
300 1795669000.000300 <... write resumed>) = 2
300 1795669000.000400 writev(2, [{iov_base="\\x6f\\x6e\\x65", iov_len=3}, {iov_base="\\x0a", iov_len=1}], 2 <unfinished ...>
301 1795669000.000500 +++ killed by SIGKILL +++
300 1795669000.000600 <... writev resumed>) = 4
300 1795669000.000700 write(1, "\\x63\\x0a", 2 <unfinished ...>
"""


def test_unfinished_pairs_and_a_write_that_never_returns() -> None:
    trace, lines, stats = summarize(SNIPPET_PAIRS)
    assert [(ln.pid, ln.fd, ln.text, ln.ts) for ln in lines] == [
        (300, 1, "ab", 1795669000.0001),  # no line end before the trace ended
        (301, 1, "z", 1795669000.0002),
        (300, 2, "one", 1795669000.0004),  # stamped at entry, as strace stamps syscalls
    ]
    assert lines[0].complete is False
    assert stats.resumed_writes == 2
    assert stats.unfinished_never_resumed == 1
    assert trace.interrupted[0].reason == "end of trace"
    assert stats.killed == {301: "SIGKILL"}


SNIPPET_VARIANTS = """\
[pid  42] 1795669000.100000 write(1, "default \\"escapes\\"\\n", 18) = 18
[pid  42] 1795669000.200000 pwritev(3</tmp/x\\x20y>, [{iov_base="ab", iov_len=2}, {iov_base=0x7ffc, iov_len=3}], 2, 0) = 5
[pid  42] 1795669000.300000 write(1, "partial", 7) = 3
[pid  42] 1795669000.400000 write(1, "\\n", 1) = -1 EAGAIN (Resource temporarily unavailable)
[pid  42] 1795669000.500000 write(1, "\\n", 1) = 1
[pid  42] 1795669000.600000 --- SIGPIPE {si_signo=SIGPIPE, si_code=SI_USER, si_pid=42, si_uid=0} ---
[pid  42] 1795669000.700000 read(0, "", 10) = 0
something strace never prints
"""


def test_prefix_variants_short_writes_and_unreadable_iovecs() -> None:
    trace, lines, stats = summarize(SNIPPET_VARIANTS)
    assert texts(lines, 42, 1) == ['default "escapes"', "par"]  # short write: 3 of 7 bytes
    pwritev = trace.writes[1]
    assert pwritev.fd_path == "/tmp/x y"
    assert pwritev.data == b"ab" and pwritev.gaps == ((2, 3),)  # base not readable
    assert stats.errors == {"EAGAIN": 1}
    assert stats.signals == {"SIGPIPE": 1}
    assert trace.other_syscalls == 1
    assert trace.unparsed == ["something strace never prints"]


def test_unprefixed_lines_use_the_default_pid() -> None:
    trace = parse_strace('write(1, "x\\n", 2) = 2\n', default_pid=7)
    assert trace.writes[0].pid == 7 and trace.writes[0].ts is None
    assert [ln.text for ln in assemble_lines(trace.writes)] == ["x"]


def test_stats_as_dict_is_json_friendly() -> None:
    import json

    _, _, stats = summarize(load("killed"))
    data = json.loads(json.dumps(stats.as_dict()))
    assert set(data["killed"].values()) == {"SIGKILL"}
    assert data["first_iso"].endswith("Z")
    assert strace_log.WRITE_SYSCALLS[0] == "write"


def test_only_newline_ends_a_raw_line() -> None:
    # bytes strace did not escape (no -x) come back through latin-1, 0x85 and 0x1c included
    raw = '1 1795669000.000001 write(1, "a\x85b\x1cc\\n", 6) = 6\n'
    trace = parse_strace(raw)
    assert trace.writes[0].data == b"a\x85b\x1cc\n"
    assert trace.unparsed == []
