"""processes: liveness, detached starts, stopping and pid files, with real processes."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import processes
import pytest
from processes import (
    ProcessFiles,
    cmdline,
    is_alive,
    process_state,
    read_exit,
    reap,
    start_detached,
    start_ticks,
    terminate,
    wait_gone,
    wait_until,
    write_atomic,
)

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")

MODULE_UTILS = str(Path(processes.__file__).resolve().parent)
PY = sys.executable


def wait_for(done: object, timeout_s: float = 5.0) -> None:
    assert callable(done)
    assert wait_until(done, timeout_s, interval_s=0.005), "timed out"


def fds_of(pid: int) -> set[int]:
    return {int(fd) for fd in os.listdir(f"/proc/{pid}/fd")}


def targets_above_stdio(pid: int) -> set[str]:
    """What the process's descriptors above 2 are (one that closes meanwhile is skipped)."""
    targets = set()
    for fd in fds_of(pid) - {0, 1, 2}:
        with contextlib.suppress(OSError):
            targets.add(os.readlink(f"/proc/{pid}/fd/{fd}"))
    return targets


def parent_of(pid: int) -> int:
    with open(f"/proc/{pid}/stat", encoding="utf-8") as handle:
        return int(handle.read().rsplit(")", 1)[1].split()[1])


class Started:
    """Processes a test started, killed (and reaped) at its end whatever happened; only
    while their PID is still theirs (same start time)."""

    def __init__(self) -> None:
        self.ticks: dict[int, int | None] = {}

    def add(self, pid: int) -> int:
        self.ticks[pid] = start_ticks(pid)
        return pid

    def cleanup(self) -> None:
        for pid, ticks in self.ticks.items():
            if is_alive(pid) and start_ticks(pid) == ticks:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    if os.getpgid(pid) == pid:
                        os.killpg(pid, signal.SIGKILL)
                    os.kill(pid, signal.SIGKILL)
            reap(pid)


@pytest.fixture
def started() -> Iterator[Started]:
    tracked = Started()
    yield tracked
    tracked.cleanup()


@pytest.fixture
def zombie() -> Iterator[int]:
    """A child of this process that exited and is not reaped yet."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        os._exit(5)
    wait_for(lambda: process_state(pid) == "Z")
    yield pid
    reap(pid)


@pytest.fixture
def leaky_fd(tmp_path: Path) -> Iterator[int]:
    """A descriptor without close-on-exec, which a careless start would hand down."""
    fd = os.open(tmp_path / "leak", os.O_WRONLY | os.O_CREAT, 0o600)
    os.set_inheritable(fd, True)
    yield fd
    os.close(fd)


# --------------------------------------------------------------------------- liveness


def test_liveness_of_a_running_a_zombie_and_a_gone_process(zombie: int, started: Started) -> None:
    sleeper = subprocess.Popen(["sleep", "30"])
    started.add(sleeper.pid)
    assert is_alive(sleeper.pid)
    assert process_state(sleeper.pid) in ("R", "S")
    # the kernel sets the new command line a moment after the exec that Popen waited for
    wait_for(lambda: cmdline(sleeper.pid) != [])
    assert cmdline(sleeper.pid) == ["sleep", "30"]
    ticks = start_ticks(sleeper.pid)
    assert ticks is not None and ticks >= start_ticks(os.getpid())  # type: ignore[operator]

    # a zombie exists (it holds its PID) but has ended
    assert process_state(zombie) == "Z"
    assert not is_alive(zombie)
    assert cmdline(zombie) == []

    sleeper.kill()
    sleeper.wait()
    assert not is_alive(sleeper.pid)
    assert process_state(sleeper.pid) is None
    assert cmdline(sleeper.pid) == [] and start_ticks(sleeper.pid) is None
    assert not is_alive(0) and not is_alive(-1)


def test_reap_gives_the_exit_status_of_our_own_child(zombie: int) -> None:
    assert reap(zombie) == 5
    assert process_state(zombie) is None  # collected: gone
    assert reap(zombie) is None  # nothing left to collect
    assert reap(1) is None  # not our child


def test_reap_reports_a_signal_as_a_negative_status(started: Started) -> None:
    pid = start_detached(["sleep", "30"])
    started.add(pid)
    assert reap(pid) is None  # still running
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: not is_alive(pid))
    assert reap(pid) == -signal.SIGKILL


def test_proc_readers_parse_a_comm_with_spaces_and_parentheses(tmp_path: Path) -> None:
    entry = tmp_path / "4242"
    entry.mkdir()
    rest = " ".join(["1", "4242", "4242"] + ["0"] * 15 + ["987654"] + ["0"] * 10)
    (entry / "stat").write_text(f"4242 (a b) (c)) S {rest}\n")
    (entry / "cmdline").write_bytes(b"python3\0-c\0print(1)\0")
    proc = str(tmp_path)
    assert process_state(4242, proc) == "S" and is_alive(4242, proc)
    assert start_ticks(4242, proc) == 987654
    assert cmdline(4242, proc) == ["python3", "-c", "print(1)"]
    (entry / "stat").write_text(f"4242 (a b) (c)) Z {rest}\n")
    assert not is_alive(4242, proc)
    (entry / "stat").write_text(f"4242 (x) X {rest}\n")
    assert not is_alive(4242, proc)
    assert process_state(4243, proc) is None and cmdline(4243, proc) == []


def test_wait_until_and_wait_gone(started: Started) -> None:
    assert wait_until(lambda: True, 0)
    began = time.monotonic()
    assert not wait_until(lambda: False, 0.05, interval_s=0.01)
    assert 0.05 <= time.monotonic() - began < 1
    short = started.add(start_detached(["true"]))
    long = started.add(start_detached(["sleep", "30"]))
    began = time.monotonic()
    assert wait_gone([short, long], 0.3) == [long]  # the short one ended (a zombie: gone)
    assert time.monotonic() - began >= 0.3
    assert wait_gone([short], 0) == []


# --------------------------------------------------------------------------- starting


def test_start_detached_runs_apart_with_clean_stdio_cwd_and_env(
    tmp_path: Path, leaky_fd: int, started: Started
) -> None:
    pid = start_detached(
        ["sleep", "30"], cwd=tmp_path, env={"ONLY": "this", "PATH": "/usr/bin:/bin"}
    )
    started.add(pid)
    assert parent_of(pid) == os.getpid()  # our child until we exit (reap collects it)
    assert os.getsid(pid) == pid and os.getpgid(pid) == pid  # its own session and group
    # leaky_fd was not handed down (sleep itself may hold a file of its own for a moment
    # while it starts - the locale archive - so the check names the leaky file)
    leak = os.readlink(f"/proc/self/fd/{leaky_fd}")
    assert leak not in targets_above_stdio(pid)
    assert {0, 1, 2} <= fds_of(pid)
    assert {os.readlink(f"/proc/{pid}/fd/{fd}") for fd in (0, 1, 2)} == {os.devnull}
    assert os.readlink(f"/proc/{pid}/cwd") == str(tmp_path)
    environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    assert sorted(e for e in environ if e) == [b"ONLY=this", b"PATH=/usr/bin:/bin"]
    assert terminate(pid)


def test_start_detached_appends_stdout_and_stderr_to_output(
    tmp_path: Path, started: Started
) -> None:
    out = tmp_path / "cmd.out"
    out.write_text("before\n")
    code = "import os, sys; print('out', flush=True); print('err', file=sys.stderr); sys.exit(7)"
    pid = start_detached([PY, "-c", code], output=out)
    started.add(pid)
    wait_for(lambda: not is_alive(pid))
    assert reap(pid) == 7
    assert out.read_text().splitlines() == ["before", "out", "err"]


def test_start_detached_fails_for_a_missing_program(tmp_path: Path) -> None:
    with pytest.raises(OSError):
        start_detached([str(tmp_path / "no-such-program")])
    with pytest.raises(OSError, match="no-such-program"):
        start_detached([str(tmp_path / "no-such-program")], exit_file=tmp_path / "rc")
    assert read_exit(tmp_path / "rc") is None
    with pytest.raises(ValueError):
        start_detached([])


def test_an_exit_file_records_the_real_status(
    tmp_path: Path, started: Started, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # relative paths are the caller's, not the monitor's (/)
    (tmp_path / "work").mkdir()
    (tmp_path / "rc").write_text("0 1.0\n")  # a stale record
    code = "import os, sys; print('hello', os.getcwd(), flush=True); sys.exit(7)"
    before = time.time()
    pid = started.add(start_detached([PY, "-c", code], output="out", exit_file="rc", cwd="work"))
    assert reap(pid) is None  # not our child: the monitor collects it
    wait_for(lambda: read_exit(tmp_path / "rc") is not None)
    status, ended = read_exit(tmp_path / "rc")  # type: ignore[misc]
    assert status == 7
    assert before < ended <= time.time()
    assert (tmp_path / "out").read_text() == f"hello {tmp_path / 'work'}\n"
    assert sorted(os.listdir(tmp_path)) == ["out", "rc", "work"]  # no temporary file left


def test_a_monitored_command_inherits_nothing(
    tmp_path: Path, leaky_fd: int, started: Started
) -> None:
    pid = started.add(start_detached(["sleep", "30"], exit_file=tmp_path / "rc"))
    assert read_exit(tmp_path / "rc") is None  # running: nothing recorded yet
    wait_for(lambda: cmdline(pid) != [])  # set a moment after the exec
    assert cmdline(pid) == ["sleep", "30"]  # the PID is the command's, not the monitor's
    monitor = parent_of(pid)
    assert monitor not in (os.getpid(), 1)
    assert cmdline(monitor)[0] == cmdline(os.getpid())[0]  # a fork of this interpreter
    leak = os.readlink(f"/proc/self/fd/{leaky_fd}")
    for holder in (pid, monitor):
        # neither leaky_fd nor the report pipe is inherited (sleep may hold its locale
        # archive open for a moment while it starts: fds are compared by what they are)
        held = targets_above_stdio(holder)
        assert leak not in held and not any(target.startswith("pipe:") for target in held)
        assert {0, 1, 2} <= fds_of(holder)
        assert os.getsid(holder) != os.getsid(0)
    assert os.readlink(f"/proc/{monitor}/cwd") == "/"
    assert os.getpgid(pid) == pid and os.getsid(pid) == pid  # apart from its monitor too


def test_an_exit_file_records_a_signal(tmp_path: Path, started: Started) -> None:
    pid = start_detached(["sleep", "30"], exit_file=tmp_path / "rc")
    started.add(pid)
    assert terminate(pid, group=True, grace_s=2)
    wait_for(lambda: read_exit(tmp_path / "rc") is not None)
    assert read_exit(tmp_path / "rc")[0] == -signal.SIGTERM  # type: ignore[index]


def test_cwd_defaults_to_root(started: Started) -> None:
    pid = start_detached(["sleep", "30"])
    started.add(pid)
    assert os.readlink(f"/proc/{pid}/cwd") == "/"


# --------------------------------------------------------------------------- stopping


def test_terminate_a_process(started: Started) -> None:
    pid = start_detached(["sleep", "30"])
    started.add(pid)
    began = time.monotonic()
    assert terminate(pid)
    assert time.monotonic() - began < 2  # SIGTERM was enough: no grace period waited
    assert process_state(pid) is None  # ended and reaped (our child)
    assert terminate(pid)  # already gone: nothing to do


def test_terminate_kills_what_ignores_sigterm(tmp_path: Path, started: Started) -> None:
    ready = tmp_path / "ready"
    code = (
        "import signal, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
        "open(sys.argv[1], 'w').close(); time.sleep(30)"
    )
    pid = start_detached([PY, "-c", code, str(ready)])
    started.add(pid)
    wait_for(ready.exists)
    began = time.monotonic()
    assert terminate(pid, grace_s=0.2)
    assert time.monotonic() - began >= 0.2
    assert not is_alive(pid)


def test_terminate_a_process_group(tmp_path: Path, started: Started) -> None:
    """The leader ends on SIGTERM, a member ignores it: the member gets the SIGKILL too."""
    member_code = (
        "import signal, sys, time\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "open(sys.argv[1] + '.ready', 'w').close()\n"
        "time.sleep(30)\n"
    )
    leader_code = (
        "import os, subprocess, sys, time\n"
        "member = subprocess.Popen([sys.executable, '-c', sys.argv[1], sys.argv[2]])\n"
        "open(sys.argv[2] + '.tmp', 'w').write(str(member.pid))\n"
        "os.replace(sys.argv[2] + '.tmp', sys.argv[2])\n"
        "time.sleep(30)\n"
    )
    member_file = tmp_path / "member"
    pid = started.add(start_detached([PY, "-c", leader_code, member_code, str(member_file)]))
    wait_for(lambda: member_file.exists() and Path(f"{member_file}.ready").exists())
    member = int(member_file.read_text())
    started.add(member)
    assert os.getpgid(member) == pid
    assert not terminate(member, group=True, grace_s=0.1)  # no such group: still runs
    assert is_alive(member)
    assert terminate(pid, group=True, grace_s=0.3)
    assert not is_alive(pid) and not is_alive(member)


def test_terminate_never_signals_the_caller(tmp_path: Path) -> None:
    """Run in a process of its own (its own group): a broken refusal kills only that one."""
    # the checks run in a forked process that is not its group's leader, so that
    # refusing os.getpid() and refusing os.getpgrp() are told apart
    code = (
        "import os, sys; sys.path.insert(0, sys.argv[1]); import processes\n"
        "r, w = os.pipe()\n"
        "pid = os.fork()\n"
        "if pid == 0:\n"
        "    res = (processes.terminate(os.getpid(), grace_s=0.1),\n"
        "           processes.terminate(os.getpgrp(), group=True, grace_s=0.1),\n"
        "           processes.terminate(0, group=True, grace_s=0.1))\n"
        "    os.write(w, ' '.join(map(str, res)).encode())\n"
        "    os._exit(0)\n"
        "os.close(w)\n"
        "answer = os.read(r, 100).decode()\n"
        "print(answer, os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))\n"
    )
    done = subprocess.run(
        [PY, "-c", code, MODULE_UTILS],
        capture_output=True,
        text=True,
        timeout=10,
        start_new_session=True,
        check=False,
    )
    assert done.returncode == 0, done  # not killed by its own terminate
    assert done.stdout.split() == ["False", "False", "True", "0"]


# --------------------------------------------------------------------------- files


def test_write_atomic_and_read_exit(tmp_path: Path) -> None:
    path = tmp_path / "state"
    write_atomic(path, "one\n")
    write_atomic(path, "two\n")
    assert path.read_text() == "two\n"
    assert os.listdir(tmp_path) == ["state"]
    with pytest.raises(OSError):
        write_atomic(tmp_path / "missing" / "state", "x")
    assert read_exit(tmp_path / "nothing") is None
    (tmp_path / "bad").write_text("not a record\n")
    assert read_exit(tmp_path / "bad") is None
    (tmp_path / "rc").write_text("-9 1764150000.5\n")
    assert read_exit(tmp_path / "rc") == (-9, 1764150000.5)


def test_process_files_round_trip(tmp_path: Path) -> None:
    files = ProcessFiles.at(tmp_path / "run" / "dump.pid")
    assert files.exit_file == tmp_path / "run" / "dump.pid.rc"
    assert files.output == tmp_path / "run" / "dump.pid.out"
    assert files.meta_file == tmp_path / "run" / "dump.pid.json"
    assert files.read_pid() is None and files.read_exit() is None and files.read_meta() == {}

    files.write_pid(4242)  # creates the folder
    assert files.pidfile.read_text() == "4242\n" and files.read_pid() == 4242
    files.write_meta({"group": True, "argv": ["criu", "dump"]})
    assert files.read_meta() == {"group": True, "argv": ["criu", "dump"]}
    write_atomic(files.exit_file, "0 1.25\n")
    assert files.read_exit() == (0, 1.25)

    files.pidfile.write_text("garbage")
    files.meta_file.write_text("[1, 2]")
    assert files.read_pid() is None and files.read_meta() == {}

    files.output.write_text("")  # an empty output goes with the rest
    files.clear()
    assert os.listdir(files.pidfile.parent) == []

    files.write_pid(1)
    files.output.write_text("what it said\n")  # kept by default
    files.clear()
    assert os.listdir(files.pidfile.parent) == ["dump.pid.out"]
    files.clear(keep_output=False)
    assert os.listdir(files.pidfile.parent) == []


def test_process_files_track_a_detached_command(tmp_path: Path) -> None:
    files = ProcessFiles.at(tmp_path / "job.pid")
    pid = start_detached(
        [PY, "-c", "import sys; print('done'); sys.exit(3)"],  # ends by itself
        output=files.output,
        exit_file=files.exit_file,
    )
    files.write_pid(pid)
    assert files.read_pid() == pid
    wait_for(lambda: files.read_exit() is not None)
    assert files.read_exit()[0] == 3  # type: ignore[index]
    assert files.output.read_text() == "done\n"
    files.clear()
    assert sorted(os.listdir(tmp_path)) == ["job.pid.out"]
