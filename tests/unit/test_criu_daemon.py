"""library/criu_daemon.py run the way Ansible runs it: `main()` with the module's arguments,
its JSON on stdout and SystemExit.

CRIU is replaced by a script that behaves like CRIU's background processes: `page-server` and
`lazy-pages` with `--daemon` fork a real daemon (own session, stdio on /dev/null) that writes
the pidfile and a log recorded on this project's machines (tests/fixtures/criu_logs/) and
stays until the test says it is done; `dump --lazy-pages` serves until the test says every
page was fetched, with a helper process in its process group as CRIU has. Every process the
fake starts is killed when its test ends.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import platform
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import criu_daemon
import pytest
from criu_cli import build_criu_argv
from fakes import (
    CRIU_STATS,
    FIXTURES,
    assert_refused_before_criu,
    criu_calls,
    install_fake_criu,
    run_ansible_module,
)
from processes import ProcessFiles, cmdline, is_alive, read_exit, start_detached, wait_until

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")

LOGS = FIXTURES / "criu_logs"

FAKE_CRIU = """\
    # CRIU's background processes, faked. FAKE_CRIU_MODE: ok | fail | dead-daemon | lazy-tee.
    # FAKE_DAEMON_LOG: the recorded log a page-server / lazy-pages daemon writes.
    stats = Path({stats!r})


    def started(pid):
        with open(os.environ["FAKE_CRIU_PIDS"], "a") as out:
            out.write(f"{{pid}}\\n")


    images = Path(opt("--images-dir"))
    log = Path(opt("--log-file"))
    if mode == "fail":
        fail_to_dump(log)
    if args[0] in ("page-server", "lazy-pages"):
        assert "--daemon" in args, args
        pidfile = Path(opt("--pidfile"))
        if mode == "dead-daemon":
            pidfile.write_text(str(os.getpid()))  # gone by the time it is read
            sys.exit(0)
        if os.fork() == 0:
            # the daemon: its own session, stdio on /dev/null, pidfile written atomically
            os.setsid()
            null = os.open(os.devnull, os.O_RDWR)
            for fd in (0, 1, 2):
                os.dup2(null, fd)
            started(os.getpid())
            log.write_text(Path(os.environ["FAKE_DAEMON_LOG"]).read_text())
            Path(f"{{pidfile}}.tmp").write_text(f"{{os.getpid()}}\\n")
            os.replace(f"{{pidfile}}.tmp", pidfile)
            wait_for((images / "done").exists, 30)
            os._exit(0)
        wait_for(pidfile.exists, 5)  # criu --daemon returns once the daemon runs
        sys.exit(0)
    if args[0] == "dump" and "--lazy-pages" in args:
        started(os.getpid())
        # network post-copy: a helper in the dump's process group, as CRIU has; then serve
        # until the test says the destination fetched everything
        helper = subprocess.Popen(
            [sys.executable, "-c", "import time; time.sleep(30)", str(images)]
        )
        started(helper.pid)
        (images / "helper.pid").write_text(str(helper.pid))
        log.write_text(rlimit + "(00.079777) Starting lazy pages server\\n")
        wait_for((images / "served").exists)
        helper.kill()
        helper.wait()
        with log.open("a") as out:
            if mode == "lazy-tee":
                out.write("(00.237586) Error (criu/page-pipe.c:418): page-pipe: tee: 65536: Operation not permitted\\n")
                out.write("(00.237863) Error (criu/cr-dump.c:1975): Dumping FAILED.\\n")
                print("Error (criu/cr-dump.c:1975): Dumping FAILED.")
                sys.exit(1)
            out.write("(02.500000) Writing stats\\n(02.500100) Dumping finished successfully\\n")
        shutil.copy(stats / "stats-dump", images / "stats-dump")
        sys.exit(0)
    print("unexpected call", args)
    sys.exit(2)
    """


@pytest.fixture
def fake_criu(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    path = install_fake_criu(tmp_path, monkeypatch, FAKE_CRIU, stats=str(CRIU_STATS))
    pids = tmp_path / "fake-pids"
    monkeypatch.setenv("FAKE_CRIU_PIDS", str(pids))
    yield path
    # whatever the fake started and a test left running (each runs with tmp_path in argv)
    for line in pids.read_text().split() if pids.exists() else []:
        pid = int(line)
        if is_alive(pid) and any(str(tmp_path) in arg for arg in cmdline(pid)):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


@pytest.fixture
def sleeper(tmp_path: Path) -> Iterator[Callable[[float], tuple[int, Path]]]:
    """Start `sleep SECONDS` outside this test's process tree: its PID and its exit file.

    Its monitor records how it ended (-15: SIGTERM) - something a pidfile's reader cannot
    learn from a process that is not its child.
    """
    started: list[int] = []

    def start(seconds: float) -> tuple[int, Path]:
        exit_file = tmp_path / f"sleeper-{len(started)}.exit"
        pid = start_detached(["sleep", str(seconds)], exit_file=exit_file)
        started.append(pid)
        return pid, exit_file

    yield start
    for pid in started:
        if is_alive(pid) and cmdline(pid)[:1] == ["sleep"]:
            os.kill(pid, signal.SIGKILL)


def exit_status(exit_file: Path) -> int:
    assert wait_until(lambda: read_exit(exit_file) is not None, 5)
    ended = read_exit(exit_file)
    assert ended is not None
    return ended[0]


run_module = functools.partial(run_ansible_module, criu_daemon)


def companions(pidfile: Path) -> dict[str, bool]:
    """Which of the pidfile and the files beside it (ProcessFiles) exist."""
    files = ProcessFiles.at(pidfile)
    return {
        "pid": files.pidfile.exists(),
        "rc": files.exit_file.exists(),
        "json": files.meta_file.exists(),
        "out": files.output.exists(),
    }


def start_args(
    daemon: str, images: Path, pidfile: Path, fake_criu: Path, **extra: Any
) -> dict[str, Any]:
    """criu_daemon's arguments to start the `daemon` on `images` with the fake criu."""
    return {
        "daemon": daemon,
        "images_dir": str(images),
        "pidfile": str(pidfile),
        "criu_bin": str(fake_criu),
        **extra,
    }


def stop_args(daemon: str, pidfile: Path, **extra: Any) -> dict[str, Any]:
    """criu_daemon's arguments to stop the `daemon` of `pidfile`."""
    return {"daemon": daemon, "state": "stopped", "pidfile": str(pidfile), **extra}


NONE_LEFT = {"pid": False, "rc": False, "json": False, "out": False}


def dead_pid() -> int:
    gone = subprocess.Popen(["true"])
    gone.wait()
    return gone.pid


# -- argument validation ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ({"daemon": "page-server", "state": "stopped"}, "missing required arguments: pidfile"),
        ({"daemon": "page-server"}, "criu_daemon page-server needs images_dir"),
        ({"daemon": "lazy-pages"}, "criu_daemon lazy-pages needs images_dir"),
        ({"daemon": "lazy-dump", "images_dir": "/i"}, "criu_daemon lazy-dump needs pid"),
        (
            {"daemon": "dump", "images_dir": "/i"},
            "value of daemon must be one of: page-server, lazy-pages, lazy-dump, got: dump",
        ),
        (
            {"daemon": "page-server", "images_dir": "/i", "state": "restarted"},
            "value of state must be one of: started, stopped, got: restarted",
        ),
        (
            {"daemon": "lazy-dump", "pid": 5, "images_dir": "/i", "network_lock": "ufw"},
            "value of network_lock must be one of: iptables, nftables, skip, got: ufw",
        ),
    ],
)
def test_bad_arguments_are_refused(
    args: dict[str, Any],
    message: str,
    fake_criu: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    args = {"criu_bin": str(fake_criu), **args}
    if "pidfile" not in message:
        args["pidfile"] = str(tmp_path / "d.pid")
    rc, result = run_module(args, capsys)
    assert_refused_before_criu(rc, result, message, tmp_path)
    assert not (tmp_path / "d.pid").exists()


# -- check mode -------------------------------------------------------------------------------


def test_start_in_check_mode_reports_the_argv_and_starts_nothing(
    fake_criu: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    images, pidfile = tmp_path / "images" / "1", tmp_path / "lazy.pid"
    rc, result = run_module(
        start_args(
            "lazy-pages",
            images,
            pidfile,
            fake_criu,
            page_server=True,
            address="10.77.0.11",
            port=27001,
            _ansible_check_mode=True,
        ),
        capsys,
    )
    assert rc == 0
    assert result["changed"] is True
    assert result["msg"] == "check mode: nothing was started"
    # the argv is the arguments (and the default log file) through build_criu_argv, whose
    # output tests/unit/test_criu_cli.py pins flag by flag
    assert result["cmd"] == build_criu_argv(
        str(fake_criu),
        "lazy-pages",
        {
            "images_dir": str(images),
            "log_file": str(images / "criu-lazy-pages.log"),
            "page_server": True,
            "address": "10.77.0.11",
            "port": 27001,
            "pidfile": str(pidfile),
        },
    )
    assert criu_calls(tmp_path) == []
    assert not images.exists() and not pidfile.exists()


def test_stop_in_check_mode_leaves_the_process_alone(
    fake_criu: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    sleeper: Callable[[float], tuple[int, Path]],
) -> None:
    pid, _ = sleeper(30)
    pidfile = tmp_path / "ps.pid"
    pidfile.write_text(f"{pid}\n")
    rc, result = run_module(
        stop_args("page-server", pidfile, criu_bin=str(fake_criu), _ansible_check_mode=True), capsys
    )
    assert rc == 0
    assert (result["changed"], result["pid"]) == (False, pid)
    assert result["msg"] == "check mode: nothing was stopped"
    assert is_alive(pid) and pidfile.exists()


# -- stopping, from the pidfile ---------------------------------------------------------------


def test_stop_when_the_pidfile_is_gone(
    fake_criu: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    pidfile = tmp_path / "ps.pid"
    rc, result = run_module(stop_args("page-server", pidfile, criu_bin=str(fake_criu)), capsys)
    assert rc == 0
    assert result["changed"] is False
    assert result["msg"] == f"no pidfile {pidfile}: nothing to stop"


def test_an_empty_pidfile_is_removed_with_its_companions(
    fake_criu: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    pidfile = tmp_path / "ps.pid"
    pidfile.write_text("")  # the daemon died before writing it
    Path(f"{pidfile}.json").write_text("{}")
    rc, result = run_module(stop_args("page-server", pidfile), capsys)
    assert rc == 0
    assert result["changed"] is False
    assert result["msg"] == f"empty pidfile {pidfile} removed"
    assert companions(pidfile) == NONE_LEFT


def test_stop_a_running_daemon(
    fake_criu: Path,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    sleeper: Callable[[float], tuple[int, Path]],
) -> None:
    pid, exit_file = sleeper(30)
    pidfile = tmp_path / "lazy.pid"
    pidfile.write_text(f"{pid}\n")
    rc, result = run_module(stop_args("lazy-pages", pidfile, criu_bin=str(fake_criu)), capsys)
    assert rc == 0
    assert exit_status(exit_file) == -15  # SIGTERM
    assert result["changed"] is True
    assert result["pid"] == pid
    assert result["terminated"] is True and result["finished"] is False
    assert result["msg"] == f"stopped criu lazy-pages {pid}"
    assert not pidfile.exists()
    assert "migration_metrics" not in result  # no meta: nothing known about it


def test_stop_a_daemon_that_already_exited(
    fake_criu: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    gone = dead_pid()
    pidfile = tmp_path / "ps.pid"
    pidfile.write_text(str(gone))
    rc, result = run_module(stop_args("page-server", pidfile, criu_bin=str(fake_criu)), capsys)
    assert rc == 0
    assert result["changed"] is False
    assert result["finished"] is True and result["terminated"] is False
    assert result["msg"] == f"criu page-server {gone} is not running"
    assert not pidfile.exists()


def test_stop_without_meta_still_requires_the_end(
    fake_criu: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    sleeper: Callable[[float], tuple[int, Path]],
) -> None:
    pid, exit_file = sleeper(30)
    pidfile = tmp_path / "ps.pid"
    pidfile.write_text(str(pid))
    rc, result = run_module(
        stop_args("page-server", pidfile, require_finished=True, criu_bin=str(fake_criu)), capsys
    )
    assert rc == 1
    assert result["msg"] == (
        f"criu page-server {pid} on {platform.node()} was still running after "
        f"{result['waited_s']:.1f} s and was stopped"
    )
    assert result["waited_s"] < 1
    assert exit_status(exit_file) == -15  # stopped first, failed then
    assert not pidfile.exists()


# -- page server and lazy pages: what they did, from their logs (tests/fixtures/criu_logs/) ---


def daemon_files(
    tmp_path: Path, daemon: str, log_name: str, pid: int, port: int = 27000
) -> tuple[Path, Path, Path]:
    """A daemon's pidfile, meta companion and log, as `state=started` leaves them."""
    images = tmp_path / "images" / "1"
    images.mkdir(parents=True, exist_ok=True)
    log = tmp_path / f"criu-{daemon}.log"
    log.write_text((LOGS / log_name).read_text())
    pidfile = tmp_path / f"criu-{daemon}.pid"
    pidfile.write_text(f"{pid}\n")
    meta = {
        "daemon": daemon,
        "pid": pid,
        "started_at": 1795670768.70,
        "log_file": str(log),
        "images_dir": str(images),
        "port": port,
    }
    Path(f"{pidfile}.json").write_text(json.dumps(meta))
    return pidfile, log, images


@pytest.mark.env(FAKE_DAEMON_LOG=str(LOGS / "page-server" / "page-server.log"))
def test_page_server_start_leaves_what_stopping_it_needs(
    fake_criu: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    images, pidfile = tmp_path / "images" / "1", tmp_path / "criu-page-server.pid"
    log = tmp_path / "criu-page-server.log"
    pidfile.write_text("1\n")  # a stale pidfile from an earlier run is removed first
    before = time.time()
    rc, result = run_module(
        start_args(
            "page-server",
            images,
            pidfile,
            fake_criu,
            address="10.77.0.12",
            port=27000,
            log_file=str(log),
            metrics_phase="page_server_final",
        ),
        capsys,
    )
    assert rc == 0, result
    assert result["changed"] is True
    pid = result["pid"]
    assert pid != os.getpid() and is_alive(pid)  # the daemon the fake forked
    assert pidfile.read_text().strip() == str(pid)
    assert result["log_file"] == str(log)
    assert result["duration_s"] >= 0
    assert result["cmd"][-6:] == [
        "10.77.0.12",
        "--port",
        "27000",
        "--daemon",
        "--pidfile",
        str(pidfile),
    ]
    assert "migration_metrics" not in result  # recorded when it is stopped
    meta = json.loads(Path(f"{pidfile}.json").read_text())
    assert meta["daemon"] == "page-server"
    assert meta["pid"] == pid
    assert meta["log_file"] == str(log)
    assert meta["images_dir"] == str(images)
    assert (meta["address"], meta["port"]) == ("10.77.0.12", 27000)
    assert before <= meta["started_at"] <= meta["serving_at"] <= time.time()
    assert meta["duration_s"] == result["duration_s"]
    assert meta["metrics_phase"] == "page_server_final"

    # the dump sent 3 pages and disconnected: the server ends by itself
    (images / "pages-1.img").write_bytes(b"\0" * 3 * 4096)
    (images / "done").write_text("")
    rc, stopped = run_module(
        stop_args("page-server", pidfile, wait_s=10, require_finished=True), capsys
    )
    assert rc == 0, stopped
    assert stopped["finished"] is True and stopped["changed"] is False
    assert stopped["summary"]["session_complete"] is True
    assert stopped["summary"]["pages_received"] == 3
    metrics = stopped["migration_metrics"]
    assert metrics["phase"] == "page_server_final"  # the start's metrics_phase
    assert metrics["data"]["started_at"] == meta["started_at"]
    assert metrics["data"]["images_dir"] == str(images)
    assert companions(pidfile) == NONE_LEFT


@pytest.mark.env(FAKE_DAEMON_LOG=str(LOGS / "lazy-network" / "lazy-pages.log"))
def test_a_lazy_pages_daemon_started_and_stopped(
    fake_criu: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    images, pidfile = tmp_path / "images" / "1", tmp_path / "criu-lazy-pages.pid"
    rc, started = run_module(
        start_args("lazy-pages", images, pidfile, fake_criu),
        capsys,
    )
    assert rc == 0, started
    assert started["log_file"] == str(images / "criu-lazy-pages.log")
    assert "--page-server" not in started["cmd"] and "--address" not in started["cmd"]
    rc, stopped = run_module(stop_args("lazy-pages", pidfile), capsys)
    assert rc == 0  # without require_finished
    assert stopped["terminated"] is True and stopped["changed"] is True
    assert not is_alive(started["pid"])
    assert stopped["summary"]["complete"] is False
    assert stopped["migration_metrics"]["phase"] == "lazy_pages"
    assert companions(pidfile) == NONE_LEFT


@pytest.mark.env(FAKE_CRIU_MODE="fail")
def test_a_daemon_that_fails_to_start_names_crius_reason(
    fake_criu: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    images, pidfile = tmp_path / "images" / "1", tmp_path / "ps.pid"
    rc, result = run_module(
        start_args("page-server", images, pidfile, fake_criu, address="10.77.0.12", port=27000),
        capsys,
    )
    log = images / "criu-page-server.log"
    assert rc == 1
    assert result["msg"] == (
        f"criu page-server failed on {platform.node()} (rc=1): (00.010220) Error "
        f"(criu/files-reg.c:1710): Can't lookup mount=22 for fd=3 path=/dev/pts/0; log: {log}"
    )
    assert result["daemon"] == "page-server"
    assert result["rc"] == 1 and result["log_file"] == str(log)
    assert result["output"] == "Error (criu/cr-dump.c:2111): Dumping FAILED."
    assert not Path(f"{pidfile}.json").exists()


@pytest.mark.env(FAKE_CRIU_MODE="dead-daemon")
def test_a_daemon_that_is_gone_once_started_fails(
    fake_criu: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    images, pidfile = tmp_path / "images" / "1", tmp_path / "ps.pid"
    rc, result = run_module(
        start_args("lazy-pages", images, pidfile, fake_criu),
        capsys,
    )
    assert rc == 1
    assert result["msg"] == (
        f"criu lazy-pages on {platform.node()} left no running process in {pidfile}; "
        f"log: {images / 'criu-lazy-pages.log'}"
    )
    assert not Path(f"{pidfile}.json").exists()


def test_stop_a_page_server_that_ended_by_itself_reports_its_session(
    fake_criu: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    sleeper: Callable[[float], tuple[int, Path]],
) -> None:
    pid, _ = sleeper(0.3)
    pidfile, log, images = daemon_files(tmp_path, "page-server", "page-server/page-server.log", pid)
    (images / "pages-1.img").write_bytes(b"\0" * 3 * 4096)
    (images / "pagemap-77.img").write_bytes(b"\0" * 100)
    rc, result = run_module(
        stop_args(
            "page-server", pidfile, wait_s=10, require_finished=True, criu_bin=str(fake_criu)
        ),
        capsys,
    )
    assert rc == 0, result
    assert result["finished"] is True and result["terminated"] is False
    assert result["changed"] is False
    assert 0 < result["waited_s"] < 10
    assert result["msg"].startswith(f"criu page-server {pid} ended by itself after")
    assert result["log_file"] == str(log)
    summary = result["summary"]
    assert summary["session_complete"] is True
    assert summary["session_s"] == 0.280565
    assert (summary["pages_received"], summary["bytes_received"]) == (3, 3 * 4096)
    metrics = result["migration_metrics"]
    assert metrics["phase"] == "page_server"
    assert metrics["data"]["started_at"] == 1795670768.70
    assert metrics["data"]["port"] == 27000
    assert metrics["data"]["pages_received"] == 3
    assert metrics["data"]["log_file"] == str(log)
    assert companions(pidfile) == NONE_LEFT


def test_a_page_server_that_missed_the_session_end_fails_when_required(
    fake_criu: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    pidfile, log, _ = daemon_files(
        tmp_path, "page-server", "page-server/page-server.log", dead_pid()
    )
    log.write_text(
        "\n".join(line for line in log.read_text().splitlines() if "Session over" not in line)
    )
    rc, result = run_module(stop_args("page-server", pidfile, require_finished=True), capsys)
    assert rc == 1
    assert result["msg"] == (
        f"criu page-server on {platform.node()} did not see the dump's session through "
        f"(no error logged); log: {log}"
    )
    assert result["migration_metrics"]["data"]["session_complete"] is False


def test_a_lazy_pages_daemon_still_serving_fails_when_it_must_have_finished(
    fake_criu: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    sleeper: Callable[[float], tuple[int, Path]],
) -> None:
    pid, exit_file = sleeper(30)
    pidfile, log, _ = daemon_files(tmp_path, "lazy-pages", "lazy-network/lazy-pages.log", pid)
    rc, result = run_module(
        stop_args(
            "lazy-pages", pidfile, wait_s=0.2, require_finished=True, criu_bin=str(fake_criu)
        ),
        capsys,
    )
    assert exit_status(exit_file) == -15  # stopped with SIGTERM
    assert rc == 1
    assert result["msg"] == (
        f"criu lazy-pages on {platform.node()} was still serving after "
        f"{result['waited_s']:.1f} s and was stopped having served 0 of 2440 lazy pages: "
        f"page-xfer: Remote side closed connection; log: {log}"
    )
    assert 0.2 <= result["waited_s"] < 2
    assert result["terminated"] is True
    assert result["migration_metrics"]["phase"] == "lazy_pages"
    assert result["migration_metrics"]["data"]["complete"] is False
    assert companions(pidfile) == NONE_LEFT  # cleaned before failing


def test_a_lazy_pages_daemon_that_served_every_page(
    fake_criu: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    sleeper: Callable[[float], tuple[int, Path]],
) -> None:
    pid, _ = sleeper(0.2)
    pidfile, _, _ = daemon_files(tmp_path, "lazy-pages", "lazy-images/lazy-pages.log", pid)
    rc, result = run_module(
        stop_args("lazy-pages", pidfile, wait_s=10, require_finished=True, criu_bin=str(fake_criu)),
        capsys,
    )
    assert rc == 0, result
    data = result["migration_metrics"]["data"]
    assert result["migration_metrics"]["phase"] == "lazy_pages"
    assert (data["pages_lazy_total"], data["pages_lazy_served"]) == (2441, 2441)
    assert data["complete"] is True and data["finished"] is True
    assert data["serving_s"] == 0.012916


# -- network post-copy: the dump serves in the background -------------------------------------


def lazy_dump_args(tmp_path: Path, fake_criu: Path, **extra: Any) -> dict[str, Any]:
    return {
        "daemon": "lazy-dump",
        "pid": dead_pid(),
        "images_dir": str(tmp_path / "images" / "1"),
        "address": "10.77.0.11",
        "port": 27001,
        "log_file": str(tmp_path / "criu-dump.log"),
        "pidfile": str(tmp_path / "criu-dump-lazy.pid"),
        "criu_bin": str(fake_criu),
        **extra,
    }


def test_a_lazy_dump_returns_once_it_serves_and_is_collected_when_done(
    fake_criu: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    images, pidfile = tmp_path / "images" / "1", tmp_path / "criu-dump-lazy.pid"
    rc, started = run_module(lazy_dump_args(tmp_path, fake_criu), capsys)
    assert rc == 0, started
    assert started["changed"] is True
    assert started["serving"] is True
    assert started["cmd"][-5:] == ["--lazy-pages", "--address", "10.77.0.11", "--port", "27001"]
    assert started["cmd"][1] == "dump"
    pid = started["pid"]
    assert is_alive(pid)  # still serving
    assert os.getpgid(pid) == pid  # its own process group (stopped as one)
    assert pidfile.read_text().strip() == str(pid)
    meta = json.loads(Path(f"{pidfile}.json").read_text())
    assert (meta["daemon"], meta["pid"]) == ("lazy-dump", pid)
    data = started["migration_metrics"]["data"]
    assert started["migration_metrics"]["phase"] == "final_dump"
    assert data["lazy_network"] is True and data["stats"] == {}
    assert data["duration_s"] == started["duration_s"]
    assert (data["pid"], data["address"], data["port"]) == (pid, "10.77.0.11", 27001)

    (images / "served").write_text("")  # the destination fetched every page
    rc, stopped = run_module(
        lazy_dump_args(tmp_path, fake_criu, state="stopped", wait_s=10, require_finished=True),
        capsys,
    )
    assert rc == 0, stopped
    assert stopped["finished"] is True
    assert stopped["summary"]["rc"] == 0 and stopped["summary"]["finished"] is True
    assert stopped["stats"]["pages_written"] == 2750
    final = stopped["migration_metrics"]
    assert final["phase"] == "final_dump"
    assert final["data"]["started_at"] == data["started_at"]
    assert final["data"]["duration_s"] == started["duration_s"]
    assert final["data"]["finished_at"] == data["finished_at"]
    assert final["data"]["served_s"] > 0
    assert final["data"]["stats"]["frozen_s"] == 0.013432
    # the completed record still says how CRIU was run (metrics.json final_dump.cmd)
    assert final["data"]["cmd"] == started["cmd"] and "--lazy-pages" in started["cmd"]
    assert "resumed_pid" not in stopped
    assert companions(pidfile) == NONE_LEFT  # CRIU printed nothing: its output goes too


def test_a_lazy_dump_stopped_while_serving_takes_its_process_group_along(
    fake_criu: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    images, pidfile = tmp_path / "images" / "1", tmp_path / "criu-dump-lazy.pid"
    rc, started = run_module(lazy_dump_args(tmp_path, fake_criu), capsys)
    assert rc == 0, started
    helper = int((images / "helper.pid").read_text())
    assert is_alive(helper) and os.getpgid(helper) == started["pid"]

    rc, stopped = run_module(lazy_dump_args(tmp_path, fake_criu, state="stopped"), capsys)
    assert rc == 0, stopped  # without require_finished: the always' stop
    assert stopped["terminated"] is True and stopped["changed"] is True
    assert stopped["msg"] == f"stopped criu lazy-dump {started['pid']}"
    assert not is_alive(started["pid"])
    assert not is_alive(helper)  # CRIU's child ends with it
    assert stopped["summary"]["rc"] == -15  # the monitor's record: SIGTERM
    assert stopped["stats"] == {}
    assert companions(pidfile) == NONE_LEFT


def test_a_lazy_dump_required_to_finish_fails_when_it_was_stopped(
    fake_criu: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rc, started = run_module(lazy_dump_args(tmp_path, fake_criu), capsys)
    assert rc == 0, started
    rc, stopped = run_module(
        lazy_dump_args(tmp_path, fake_criu, state="stopped", require_finished=True),
        capsys,
    )
    assert rc == 1
    assert stopped["msg"] == (
        f"criu dump --lazy-pages on {platform.node()} did not finish serving its pages "
        f"(rc=-15): no error logged; log: {tmp_path / 'criu-dump.log'}"
    )
    assert not is_alive(started["pid"])
    assert companions(tmp_path / "criu-dump-lazy.pid") == NONE_LEFT


@pytest.mark.env(FAKE_CRIU_MODE="lazy-tee")
def test_a_lazy_dump_that_cannot_serve_names_crius_reason(
    fake_criu: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pidfile = tmp_path / "criu-dump-lazy.pid"
    rc, started = run_module(lazy_dump_args(tmp_path, fake_criu), capsys)
    assert rc == 0, started
    (tmp_path / "images" / "1" / "served").write_text("")  # the first page is asked for
    rc, stopped = run_module(
        lazy_dump_args(tmp_path, fake_criu, state="stopped", wait_s=10, require_finished=True),
        capsys,
    )
    assert rc == 1
    assert stopped["msg"] == (
        f"criu dump --lazy-pages on {platform.node()} did not finish serving its pages (rc=1): "
        f"page-pipe: tee: 65536: Operation not permitted; log: {tmp_path / 'criu-dump.log'}"
    )
    assert stopped["finished"] is True  # it ended by itself, having failed
    assert stopped["migration_metrics"]["data"]["stats"] == {}
    assert "resumed_pid" not in stopped
    # what CRIU printed stays for the post-mortem; the rest is cleaned
    assert companions(pidfile) == {**NONE_LEFT, "out": True}
    assert "Dumping FAILED" in Path(f"{pidfile}.out").read_text()


@pytest.mark.env(FAKE_CRIU_MODE="lazy-tee")
def test_a_lazy_dump_that_gave_up_leaves_the_workload_running_on_the_source(
    fake_criu: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    workload = subprocess.Popen(["sleep", "30"])  # CRIU unfroze it when the transfer failed
    try:
        args = lazy_dump_args(tmp_path, fake_criu, pid=workload.pid)
        rc, _ = run_module(args, capsys)
        assert rc == 0
        (tmp_path / "images" / "1" / "served").write_text("")
        rc, stopped = run_module({**args, "state": "stopped", "wait_s": 10}, capsys)
    finally:
        workload.kill()
        workload.wait()
    assert rc == 0  # without require_finished: the rollback's and the always' stop
    assert stopped["resumed_pid"] == workload.pid
    assert stopped["summary"]["rc"] == 1
    metrics = stopped["migration_metrics"]
    assert metrics["phase"] == "rollback"  # the journal then says: runs on the source
    assert metrics["data"]["resumed_on_source"] is True
    assert metrics["data"]["pid"] == workload.pid
    assert "page-pipe: tee: 65536: Operation not permitted" in metrics["data"]["reason"]
    assert metrics["data"]["dump"]["rc"] == 1
    assert metrics["data"]["dump"]["lazy_network"] is True


@pytest.mark.env(FAKE_CRIU_MODE="fail")
def test_a_lazy_dump_failing_before_it_serves(
    fake_criu: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rc, result = run_module(lazy_dump_args(tmp_path, fake_criu), capsys)
    assert rc == 1
    assert "Can't lookup mount=22" in result["msg"]
    assert result["msg"].startswith(f"criu dump failed on {platform.node()} (rc=1)")
    assert result["daemon"] == "lazy-dump"
    assert result["output"] == "Error (criu/cr-dump.c:2111): Dumping FAILED."
    pidfile = tmp_path / "criu-dump-lazy.pid"
    assert companions(pidfile) == {**NONE_LEFT, "out": True}  # only what CRIU printed


def test_a_lazy_dump_needs_a_pidfile(
    fake_criu: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = lazy_dump_args(tmp_path, fake_criu)
    del args["pidfile"]
    rc, result = run_module(args, capsys)
    assert_refused_before_criu(rc, result, "missing required arguments: pidfile", tmp_path)


def test_a_lazy_dump_exit_status_recorded_a_moment_late_is_awaited(
    fake_criu: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """CRIU's monitor writes its exit status after reaping it: stop must not read too early."""
    pidfile, log, _ = daemon_files(tmp_path, "lazy-dump", "page-server/page-server.log", dead_pid())
    log.write_text(
        "(00.079777) Starting lazy pages server\n(02.500100) Dumping finished successfully\n"
    )
    files = ProcessFiles.at(pidfile)
    writer = threading.Timer(0.3, lambda: files.exit_file.write_text(f"0 {time.time()}\n"))
    writer.start()
    try:
        rc, result = run_module(stop_args("lazy-dump", pidfile, require_finished=True), capsys)
    finally:
        writer.join()
    assert rc == 0, result
    assert result["summary"]["rc"] == 0
    assert result["migration_metrics"]["phase"] == "final_dump"
    assert companions(pidfile) == NONE_LEFT
