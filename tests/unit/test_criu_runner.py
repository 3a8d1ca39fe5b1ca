"""module_utils/criu_runner.py: one CRIU call, timed, its stats decoded, its failure explained.

CRIU is a script that sleeps, hangs, fails or writes the stats images a real dump and restore
wrote (tests/fixtures/criu_stats/full-dump/), as FAKE_CRIU_MODE says.
"""

from __future__ import annotations

import platform
import shutil
import time
from pathlib import Path
from typing import Any

import criu_runner
import pytest
from criu_cli import build_criu_argv
from criu_runner import CRIU_DIRS, CriuCall, CriuRunner, find_criu, read_stats
from fakes import CRIU_RLIMIT, CRIU_STATS, install_fake_criu

FAKE_CRIU = """\
    # FAKE_CRIU_MODE: ok | sleep:SECONDS | hang | fail | fail-output | fail-silent
    #                 | fail-with-stats | no-stats
    stats = Path({stats!r})
    if os.environ.get("FAKE_PREFIX"):
        print("prefix", os.environ["FAKE_PREFIX"])
    if args[:1] == ["--version"]:
        print("Version: 4.2.1")
        sys.exit(0)
    if mode.startswith("sleep:"):
        time.sleep(float(mode.split(":")[1]))
    if mode == "hang":
        hang()
    log = Path(opt("--log-file")) if opt("--log-file") else None
    work = Path(opt("--work-dir") or opt("--images-dir") or ".")
    if mode == "fail":
        log.write_text(
            rlimit
            + "(00.010220) Error (criu/files-reg.c:1710): Can't lookup mount=22\\n"
            "(00.010500) Error (criu/cr-dump.c:2111): Dumping FAILED.\\n"
        )
        print("Error (criu/cr-dump.c:2111): Dumping FAILED.")
        sys.exit(1)
    if mode == "fail-output":  # nothing in the log, CRIU's complaint on stderr
        print("Warn: something\\nError (criu/crtools.c:230): unknown option --frobnicate", file=sys.stderr)
        sys.exit(1)
    if mode == "fail-silent":
        print("one\\ntwo\\nthree\\nfour")
        sys.exit(3)
    if mode != "no-stats" and work.is_dir():
        if args[0] in ("dump", "pre-dump"):
            shutil.copy(stats / "stats-dump", work / "stats-dump")
        if args[0] == "restore":
            shutil.copy(stats / "stats-restore", work / "stats-restore")
    if mode == "fail-with-stats":
        sys.exit(1)
    sys.exit(0)
    """


@pytest.fixture
def fake_criu(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    return install_fake_criu(tmp_path, monkeypatch, FAKE_CRIU, stats=str(CRIU_STATS))


@pytest.fixture
def runner(fake_criu: Path) -> CriuRunner:
    return CriuRunner(str(fake_criu), host="src-node")


def dump_opts(tmp_path: Path, **extra: Any) -> dict[str, Any]:
    images = tmp_path / "images" / "1"
    return {
        "pid": 20001,
        "images_dir": str(images),
        "log_file": str(tmp_path / "logs" / "dump.log"),
        **extra,
    }


# -- running and timing -----------------------------------------------------------------------


def test_a_dump_is_run_timed_and_its_stats_decoded(
    runner: CriuRunner, fake_criu: Path, tmp_path: Path
) -> None:
    opts = dump_opts(tmp_path)
    before = time.time()
    call = runner.run("dump", opts, 30)
    after = time.time()
    assert call.ok and call.rc == 0 and not call.timed_out
    assert call.action == "dump"
    assert call.argv == build_criu_argv(str(fake_criu), "dump", opts) == runner.argv("dump", opts)
    assert call.log_file == opts["log_file"]
    assert before <= call.started_at <= call.finished_at <= after
    assert call.monotonic_start <= call.monotonic_end
    assert call.duration_s == round(call.monotonic_end - call.monotonic_start, 6)
    # the folders CRIU writes to were made first
    assert Path(opts["images_dir"]).is_dir() and Path(opts["log_file"]).parent.is_dir()
    assert call.stats["pages_written"] == 2750
    assert call.stats["frozen_s"] == 0.013432
    metrics = call.metrics(images_dir=opts["images_dir"], pid=7)
    assert metrics == {
        "duration_s": call.duration_s,
        "started_at": call.started_at,
        "finished_at": call.finished_at,
        "log_file": opts["log_file"],
        "stats": call.stats,
        "images_dir": opts["images_dir"],
        "pid": 7,
    }


@pytest.mark.env(FAKE_CRIU_MODE="sleep:0.3")
def test_the_duration_is_the_calls_own(runner: CriuRunner, tmp_path: Path) -> None:
    t0 = time.monotonic()
    call = runner.run("pre-dump", dump_opts(tmp_path), 30)
    elapsed = time.monotonic() - t0
    assert call.ok
    assert 0.3 <= call.duration_s <= elapsed
    assert call.finished_at - call.started_at >= 0.29  # the wall clock agrees


@pytest.mark.env(FAKE_CRIU_MODE="hang")
def test_a_call_past_its_timeout_is_killed(runner: CriuRunner, tmp_path: Path) -> None:
    opts = dump_opts(tmp_path)
    t0 = time.monotonic()
    call = runner.run("dump", opts, 0.5)
    assert time.monotonic() - t0 < 5  # not the fake's 30 s
    assert call.timed_out is True
    assert call.ok is False and call.rc == -1
    assert 0.5 <= call.duration_s < 5
    assert call.output == "(00.000100) freezing tasks\n"  # printed before the kill
    assert call.stats == {}
    assert call.reason() == "did not finish in time"
    assert runner.failure(call) == (
        f"criu dump failed on src-node (rc=-1): did not finish in time; log: {opts['log_file']}"
    )


# -- stats ------------------------------------------------------------------------------------


def test_a_restore_reads_stats_restore(runner: CriuRunner, tmp_path: Path) -> None:
    call = runner.run("restore", {"images_dir": str(tmp_path / "i")}, 30)
    assert call.ok
    assert call.stats["pages_restored"] == 2750
    assert call.stats["restore_s"] == 0.014574
    assert call.log_file == ""  # none asked for


@pytest.mark.env(FAKE_CRIU_MODE="no-stats")
def test_a_previous_calls_stats_and_pidfile_are_removed_first(
    runner: CriuRunner, tmp_path: Path
) -> None:
    images = tmp_path / "i"
    images.mkdir()
    shutil.copy(CRIU_STATS / "stats-restore", images / "stats-restore")
    pidfile = tmp_path / "restored.pid"
    pidfile.write_text("1")
    call = runner.run("restore", {"images_dir": str(images), "pidfile": str(pidfile)}, 30)
    assert call.ok
    assert call.stats == {}
    assert not (images / "stats-restore").exists()
    assert not pidfile.exists()


def test_a_work_dir_holds_the_stats(runner: CriuRunner, tmp_path: Path) -> None:
    work = tmp_path / "work"
    call = runner.run("dump", dump_opts(tmp_path, work_dir=str(work)), 30)
    assert call.ok and work.is_dir()
    assert (work / "stats-dump").is_file()
    assert call.stats["pages_written"] == 2750


@pytest.mark.env(FAKE_CRIU_MODE="fail-with-stats")
def test_a_failed_calls_stats_are_not_reported(runner: CriuRunner, tmp_path: Path) -> None:
    call = runner.run("dump", dump_opts(tmp_path), 30)
    assert not call.ok and call.rc == 1
    assert call.stats == {}


def test_read_stats(tmp_path: Path) -> None:
    assert read_stats("dump", tmp_path) == {}  # no image
    shutil.copy(CRIU_STATS / "stats-dump", tmp_path / "stats-dump")
    assert read_stats("dump", tmp_path)["pages_written"] == 2750
    assert read_stats("pre-dump", tmp_path)["pages_written"] == 2750
    assert read_stats("restore", tmp_path) == {}
    assert read_stats("page-server", tmp_path) == {}  # CRIU writes none


# -- via: the command runs elsewhere (e.g. over ssh) ---------------------------------------


def test_a_prefixed_call_prepares_and_reads_nothing_here(
    runner: CriuRunner, fake_criu: Path, tmp_path: Path
) -> None:
    opts = dump_opts(tmp_path)
    call = runner.run("dump", opts, 30, via=lambda argv: ["env", "FAKE_PREFIX=remote", *argv])
    assert call.ok
    assert call.argv == runner.argv("dump", opts)  # as CRIU sees it, without the wrapper
    assert call.output == "prefix remote\n"
    assert not Path(opts["images_dir"]).exists()  # the folders are the other side's
    assert call.stats == {}


# -- why it failed ----------------------------------------------------------------------------


@pytest.mark.env(FAKE_CRIU_MODE="fail")
def test_the_reason_is_the_logs_first_real_error(runner: CriuRunner, tmp_path: Path) -> None:
    opts = dump_opts(tmp_path)
    call = runner.run("dump", opts, 30)
    assert not call.ok and call.rc == 1
    # the harmless rlimit line comes first and is skipped
    assert call.reason() == "(00.010220) Error (criu/files-reg.c:1710): Can't lookup mount=22"
    assert call.output == "Error (criu/cr-dump.c:2111): Dumping FAILED.\n"
    assert runner.failure(call) == (
        "criu dump failed on src-node (rc=1): (00.010220) Error (criu/files-reg.c:1710): "
        f"Can't lookup mount=22; log: {opts['log_file']}"
    )
    # a log text the caller already read is used as given
    assert call.reason("Error (x.c:1): given") == "Error (x.c:1): given"
    assert call.log_text().startswith(CRIU_RLIMIT)


def test_the_reason_falls_back_to_the_output(
    runner: CriuRunner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_CRIU_MODE", "fail-output")
    call = runner.run("dump", dump_opts(tmp_path), 30)
    assert call.log_text() == ""  # no log written
    assert call.reason() == "Error (criu/crtools.c:230): unknown option --frobnicate"

    monkeypatch.setenv("FAKE_CRIU_MODE", "fail-silent")
    call = runner.run("dump", dump_opts(tmp_path), 30)
    assert call.rc == 3
    assert call.reason() == "two\nthree\nfour"  # no error line: the output's last lines
    silent = CriuCall(action="restore", argv=[], log_file="/nonexistent/log", rc=2)
    assert runner.failure(silent) == (
        "criu restore failed on src-node (rc=2): no error line; log: /nonexistent/log"
    )


def test_a_call_that_never_ran() -> None:
    call = CriuCall(action="dump", argv=["criu", "dump"], log_file="")
    assert call.ok is False  # rc -1 until it ran
    assert call.duration_s == 0
    assert call.stats == {} and call.metrics()["stats"] == {}


# -- plain output, the binary, the host -------------------------------------------------------


def test_output(runner: CriuRunner, monkeypatch: pytest.MonkeyPatch) -> None:
    assert runner.output(["--version"], 10) == (0, "Version: 4.2.1\n")
    monkeypatch.setenv("FAKE_CRIU_MODE", "hang")
    t0 = time.monotonic()
    assert runner.output(["check"], 0.3) == (-1, "criu check did not finish within 0.3 s")
    assert time.monotonic() - t0 < 5


def test_find_criu() -> None:
    asked: list[tuple[str, bool, list[str]]] = []

    def get_bin_path(name: str, required: bool = False, opt_dirs: Any = None) -> str:
        asked.append((name, required, list(opt_dirs or [])))
        return "/usr/sbin/criu"

    assert find_criu(get_bin_path, "/opt/criu/criu") == "/opt/criu/criu"
    assert asked == []
    assert find_criu(get_bin_path) == "/usr/sbin/criu"
    assert asked == [("criu", True, list(CRIU_DIRS))]
    assert "/usr/local/sbin" in CRIU_DIRS and "/usr/sbin" in CRIU_DIRS


def test_the_host_defaults_to_this_one() -> None:
    assert CriuRunner("/bin/criu").host == platform.node()
    assert CriuRunner("/bin/criu", host="dst").host == "dst"
    assert criu_runner.PHASE == {"dump": "final_dump", "pre-dump": "predump", "restore": "restore"}
