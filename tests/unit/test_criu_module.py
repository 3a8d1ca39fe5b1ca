"""library/criu.py run the way Ansible runs it: `main()` with the module's arguments, its JSON
on stdout and SystemExit.

CRIU itself is replaced by a small script that replays what CRIU 4.2.1 printed on this
project's machines (tests/fixtures/criu_cli/) and writes the stats images a real dump and
restore wrote (tests/fixtures/criu_stats/full-dump/), so these tests need no CRIU and no root.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import criu
import pytest
from ansible.module_utils.testing import patch_module_args

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"

FAKE_CRIU = textwrap.dedent(
    """\
    #!{python}
    # Replays recorded CRIU output. FAKE_CRIU_MODE: ok | fail | no-stats | lazy-tee.
    import json, os, shutil, sys, time
    from pathlib import Path

    cli = Path({cli!r})
    stats = Path({stats!r})
    args = sys.argv[1:]
    Path(os.environ["FAKE_CRIU_CALLS"]).open("a").write(json.dumps(args) + "\\n")
    mode = os.environ.get("FAKE_CRIU_MODE", "ok")


    def opt(name):
        return args[args.index(name) + 1] if name in args else None


    if args == ["--version"]:
        sys.stdout.write((cli / "version.txt").read_text())
        sys.exit(0)
    if args[0] == "check":
        name = "check" if len(args) == 1 else "check-feature-" + args[2]
        rcs = json.loads((cli / "rc.json").read_text())
        sys.stdout.write((cli / (name + ".txt")).read_text())
        sys.exit(rcs[name]["rc"])
    work = Path(opt("--work-dir") or opt("--images-dir"))
    log = Path(opt("--log-file"))
    rlimit = "(00.000301) Error (criu/util.c:1534): rlimit: Can't setup RLIMIT_NOFILE for self: Operation not permitted\\n"
    if mode == "fail":
        log.write_text(
            "(00.000000) Version: 4.2.1 (gitid 0)\\n" + rlimit
            + "(00.010220) Error (criu/files-reg.c:1710): Can't lookup mount=22 for fd=3 path=/dev/pts/0\\n"
            + "(00.010500) Error (criu/cr-dump.c:2111): Dumping FAILED.\\n"
        )
        print("Error (criu/cr-dump.c:2111): Dumping FAILED.")
        sys.exit(1)
    if args[0] == "dump" and "--lazy-pages" in args:
        # network post-copy: serve until the test says the destination fetched everything
        log.write_text(rlimit + "(00.079777) Starting lazy pages server\\n")
        served = work / "served"
        for _ in range(500):
            if served.exists():
                break
            time.sleep(0.02)
        with log.open("a") as out:
            if mode == "lazy-tee":
                out.write("(00.237586) Error (criu/page-pipe.c:418): page-pipe: tee: 65536: Operation not permitted\\n")
                out.write("(00.237863) Error (criu/cr-dump.c:1975): Dumping FAILED.\\n")
                sys.exit(1)
            out.write("(02.500000) Writing stats\\n(02.500100) Dumping finished successfully\\n")
        shutil.copy(stats / "stats-dump", work / "stats-dump")
        sys.exit(0)
    log.write_text("(00.000000) Version: 4.2.1 (gitid 0)\\n" + rlimit + "(00.020000) finished successfully\\n")
    if mode != "no-stats" and args[0] in ("dump", "pre-dump"):
        shutil.copy(stats / "stats-dump", work / "stats-dump")
    if mode != "no-stats" and args[0] == "restore":
        shutil.copy(stats / "stats-restore", work / "stats-restore")
    if opt("--pidfile"):
        Path(opt("--pidfile")).write_text(str(os.getppid()))
    sys.exit(0)
    """
)


@pytest.fixture
def fake_criu(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "bin" / "criu"
    path.parent.mkdir()
    path.write_text(
        FAKE_CRIU.format(
            python=sys.executable,
            cli=str(FIXTURES / "criu_cli"),
            stats=str(FIXTURES / "criu_stats" / "full-dump"),
        )
    )
    path.chmod(0o755)
    monkeypatch.setenv("FAKE_CRIU_CALLS", str(tmp_path / "calls.jsonl"))
    return path


def criu_calls(tmp_path: Path) -> list[list[str]]:
    calls = tmp_path / "calls.jsonl"
    if not calls.exists():
        return []
    return [json.loads(line) for line in calls.read_text().splitlines()]


def run_module(
    args: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> tuple[int, dict[str, Any]]:
    capsys.readouterr()
    with patch_module_args(args), pytest.raises(SystemExit) as excinfo:
        criu.main()
    out = capsys.readouterr().out
    return int(excinfo.value.code or 0), json.loads(out)


# -- argument validation ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            {"action": "dump", "images_dir": "/i"},
            "action is dump but all of the following are missing: pid",
        ),
        (
            {"action": "pre-dump", "pid": 5},
            "action is pre-dump but all of the following are missing: images_dir",
        ),
        (
            {"action": "restore"},
            "action is restore but all of the following are missing: images_dir",
        ),
        (
            {"action": "page-server"},
            "action is page-server but all of the following are missing: images_dir",
        ),
        (
            {"action": "dump", "pid": 5, "images_dir": "/i", "page_server": True},
            "page_server is True but all of the following are missing: address, port",
        ),
        (
            {"action": "dump", "pid": 5, "images_dir": "/i", "network_lock": "ufw"},
            "value of network_lock must be one of: iptables, nftables, skip, got: ufw",
        ),
        (
            {"action": "migrate"},
            "value of action must be one of: check, dump, pre-dump, restore, page-server, lazy-pages, got: migrate",
        ),
        (
            {"action": "dump", "pid": 5, "images_dir": "/i", "log_level": 9},
            "value of log_level must be one of: 0, 1, 2, 3, 4, got: 9",
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
    rc, result = run_module({"criu_bin": str(fake_criu), **args}, capsys)
    assert rc == 1
    assert result["failed"] is True
    assert result["msg"] == message
    assert criu_calls(tmp_path) == []


# -- check mode -------------------------------------------------------------------------------


def test_dump_in_check_mode_reports_the_argv_and_runs_nothing(
    fake_criu: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    images = tmp_path / "images" / "1"
    rc, result = run_module(
        {
            "action": "dump",
            "pid": 20001,
            "images_dir": str(images),
            "criu_bin": str(fake_criu),
            "tcp_established": True,
            "network_lock": "nftables",
            "_ansible_check_mode": True,
        },
        capsys,
    )
    assert rc == 0
    assert result["changed"] is True
    assert result["msg"] == "check mode: CRIU was not run"
    assert result["cmd"] == [
        str(fake_criu),
        "dump",
        "--images-dir",
        str(images),
        "--log-file",
        str(images / "criu-dump.log"),
        "-v4",
        "--tree",
        "20001",
        "--tcp-established",
        "--network-lock",
        "nftables",
    ]
    assert "rc" not in result and "migration_metrics" not in result
    assert criu_calls(tmp_path) == []
    assert not images.exists()


def test_restore_in_check_mode_is_skipped_too(
    fake_criu: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rc, result = run_module(
        {
            "action": "restore",
            "images_dir": str(tmp_path / "i"),
            "pidfile": str(tmp_path / "restored.pid"),
            "criu_bin": str(fake_criu),
            "_ansible_check_mode": True,
        },
        capsys,
    )
    assert rc == 0
    assert result["changed"] is True
    assert result["cmd"][-3:] == ["--restore-detached", "--pidfile", str(tmp_path / "restored.pid")]
    assert criu_calls(tmp_path) == []


# -- check ------------------------------------------------------------------------------------


def test_check_replays_this_machines_criu(
    fake_criu: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rc, result = run_module(
        {
            "action": "check",
            "criu_bin": str(fake_criu),
            "features": ["mem_dirty_track", "uffd-noncoop", "network_lock_nftables"],
            "_ansible_check_mode": True,  # check only reads: it runs in check mode
        },
        capsys,
    )
    assert rc == 0
    assert result["changed"] is False
    assert result["version"] == "4.2.1"
    assert result["version_output"] == "Version: 4.2.1"
    assert result["check"] == {
        "ok": True,
        "summary": "Looks good.",
        "errors": [],
        "warnings": [],
        "output": "Looks good.",
    }
    assert result["features"] == {
        "mem_dirty_track": False,
        "uffd-noncoop": True,
        "network_lock_nftables": True,
    }
    assert result["kernel"] == platform.release()
    assert result["migration_metrics"]["phase"] == "environment"
    assert result["migration_metrics"]["data"]["criu"] == "4.2.1"
    assert result["migration_metrics"]["data"]["criu_check"] == "Looks good."
    assert criu_calls(tmp_path) == [
        ["--version"],
        ["check"],
        ["check", "--feature", "mem_dirty_track"],
        ["check", "--feature", "uffd-noncoop"],
        ["check", "--feature", "network_lock_nftables"],
    ]


# -- running CRIU -----------------------------------------------------------------------------


def test_dump_returns_criu_stats_and_metrics(
    fake_criu: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    images = tmp_path / "images" / "1"
    rc, result = run_module(
        {"action": "dump", "pid": 20001, "images_dir": str(images), "criu_bin": str(fake_criu)},
        capsys,
    )
    assert rc == 0
    assert result["changed"] is True
    assert result["rc"] == 0
    assert result["log_file"] == str(images / "criu-dump.log")
    assert result["finished_at"] >= result["started_at"]
    assert result["duration_s"] >= 0
    # decoded from the recorded stats-dump (criu_stats)
    assert result["stats"]["frozen_s"] == 0.013432
    assert result["stats"]["pages_written"] == 2750
    assert result["stats"]["bytes_written"] == 11264000
    assert result["migration_metrics"]["phase"] == "final_dump"
    data = result["migration_metrics"]["data"]
    assert data["images_dir"] == str(images)
    assert data["log_file"] == str(images / "criu-dump.log")
    assert data["stats"] == result["stats"]
    assert (data["duration_s"], data["started_at"], data["finished_at"]) == (
        result["duration_s"],
        result["started_at"],
        result["finished_at"],
    )
    assert criu_calls(tmp_path) == [result["cmd"][1:]]


def test_pre_dump_metrics_phase(
    fake_criu: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    images = tmp_path / "images" / "2"
    rc, result = run_module(
        {
            "action": "pre-dump",
            "pid": 20001,
            "images_dir": str(images),
            "work_dir": str(tmp_path / "work"),
            "prev_images_dir": "../1",
            "track_mem": True,
            "criu_bin": str(fake_criu),
        },
        capsys,
    )
    assert rc == 0
    assert result["migration_metrics"]["phase"] == "predump"
    assert result["log_file"] == str(tmp_path / "work" / "criu-pre-dump.log")
    assert result["stats"]["pages_written"] == 2750
    assert result["cmd"][-4:] == ["20001", "--prev-images-dir", "../1", "--track-mem"]


def test_a_previous_calls_stats_are_never_reported(
    fake_criu: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    images = tmp_path / "images" / "1"
    images.mkdir(parents=True)
    (images / "stats-dump").write_bytes(
        (FIXTURES / "criu_stats" / "full-dump" / "stats-dump").read_bytes()
    )
    monkeypatch.setenv("FAKE_CRIU_MODE", "no-stats")
    rc, result = run_module(
        {"action": "dump", "pid": 20001, "images_dir": str(images), "criu_bin": str(fake_criu)},
        capsys,
    )
    assert rc == 0
    assert "stats" not in result
    assert result["migration_metrics"]["data"]["stats"] == {}
    assert not (images / "stats-dump").exists()


def test_failed_dump_names_the_first_real_error_and_the_log(
    fake_criu: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("FAKE_CRIU_MODE", "fail")
    images = tmp_path / "images" / "1"
    rc, result = run_module(
        {"action": "dump", "pid": 20001, "images_dir": str(images), "criu_bin": str(fake_criu)},
        capsys,
    )
    log = images / "criu-dump.log"
    assert rc == 1
    assert result["failed"] is True
    assert result["msg"] == (
        f"criu dump failed on {platform.node()} (rc=1): (00.010220) Error (criu/files-reg.c:1710): "
        f"Can't lookup mount=22 for fd=3 path=/dev/pts/0; log: {log}"
    )
    assert result["rc"] == 1
    assert result["log_file"] == str(log)
    assert (
        result["log_tail"].splitlines()[-1]
        == "(00.010500) Error (criu/cr-dump.c:2111): Dumping FAILED."
    )
    assert result["output"] == "Error (criu/cr-dump.c:2111): Dumping FAILED."
    assert result["cmd"][1] == "dump"


def test_restore_reads_the_restored_pid(
    fake_criu: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    images = tmp_path / "images" / "1"
    pidfile = tmp_path / "restored.pid"
    pidfile.write_text("1")  # a stale pidfile from an earlier run is removed first
    rc, result = run_module(
        {
            "action": "restore",
            "images_dir": str(images),
            "pidfile": str(pidfile),
            "criu_bin": str(fake_criu),
            "metrics_phase": "rollback",
        },
        capsys,
    )
    assert rc == 0
    # the fake writes its parent's pid: this test process, which is running
    assert result["pid"] == os.getpid()
    assert result["stats"]["pages_restored"] == 2750
    assert result["stats"]["restore_s"] == 0.014574
    assert result["migration_metrics"]["phase"] == "rollback"
    assert result["migration_metrics"]["data"]["pid"] == os.getpid()
    assert result["log_file"] == str(images / "criu-restore.log")


# -- daemons ----------------------------------------------------------------------------------


def test_stop_without_pidfile_fails(
    fake_criu: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    rc, result = run_module(
        {
            "action": "page-server",
            "images_dir": str(tmp_path),
            "state": "stopped",
            "criu_bin": str(fake_criu),
        },
        capsys,
    )
    assert rc == 1
    assert result["msg"] == "criu page-server state=stopped needs pidfile"


def test_stop_when_the_pidfile_is_gone(
    fake_criu: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    pidfile = tmp_path / "ps.pid"
    rc, result = run_module(
        {
            "action": "page-server",
            "images_dir": str(tmp_path),
            "state": "stopped",
            "pidfile": str(pidfile),
            "criu_bin": str(fake_criu),
        },
        capsys,
    )
    assert rc == 0
    assert result["changed"] is False
    assert result["msg"] == f"no pidfile {pidfile}: nothing to stop"


def test_stop_a_running_daemon(
    fake_criu: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    daemon = subprocess.Popen(["sleep", "30"])
    pidfile = tmp_path / "lazy.pid"
    pidfile.write_text(f"{daemon.pid}\n")
    try:
        rc, result = run_module(
            {
                "action": "lazy-pages",
                "images_dir": str(tmp_path),
                "state": "stopped",
                "pidfile": str(pidfile),
                "criu_bin": str(fake_criu),
            },
            capsys,
        )
        assert daemon.wait(timeout=5) == -15  # SIGTERM
    finally:
        daemon.kill()
        daemon.wait()
    assert rc == 0
    assert result["changed"] is True
    assert result["pid"] == daemon.pid
    assert result["msg"] == f"stopped criu lazy-pages {daemon.pid}"
    assert not pidfile.exists()


def test_stop_a_daemon_that_already_exited(
    fake_criu: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    gone = subprocess.Popen(["true"])
    gone.wait()
    pidfile = tmp_path / "ps.pid"
    pidfile.write_text(str(gone.pid))
    rc, result = run_module(
        {
            "action": "page-server",
            "images_dir": str(tmp_path),
            "state": "stopped",
            "pidfile": str(pidfile),
            "criu_bin": str(fake_criu),
        },
        capsys,
    )
    assert rc == 0
    assert result["changed"] is False
    assert result["msg"] == f"criu page-server {gone.pid} is not running"


# -- daemons: what they did, from their logs (tests/fixtures/criu_logs/) -----------------------

LOGS = FIXTURES / "criu_logs"


def daemon_files(
    tmp_path: Path, action: str, log_name: str, pid: int, port: int = 27000
) -> tuple[Path, Path, Path]:
    """A daemon's pidfile, meta sidecar and log, as `state=started` leaves them."""
    images = tmp_path / "images" / "1"
    images.mkdir(parents=True, exist_ok=True)
    log = tmp_path / f"criu-{action}.log"
    log.write_text((LOGS / log_name).read_text())
    pidfile = tmp_path / f"criu-{action}.pid"
    pidfile.write_text(f"{pid}\n")
    meta = {
        "action": action,
        "pid": pid,
        "started_at": 1795670768.70,
        "log_file": str(log),
        "images_dir": str(images),
        "work_dir": str(images),
        "port": port,
    }
    Path(f"{pidfile}.json").write_text(json.dumps(meta))
    return pidfile, log, images


def test_page_server_start_leaves_what_stopping_it_needs(
    fake_criu: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    images, pidfile = tmp_path / "images" / "1", tmp_path / "criu-page-server.pid"
    log = tmp_path / "criu-page-server.log"
    rc, result = run_module(
        {
            "action": "page-server",
            "images_dir": str(images),
            "address": "10.77.0.12",
            "port": 27000,
            "log_file": str(log),
            "pidfile": str(pidfile),
            "criu_bin": str(fake_criu),
        },
        capsys,
    )
    assert rc == 0
    assert result["pid"] == os.getpid()  # the fake writes its parent's pid
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
    assert meta["action"] == "page-server"
    assert meta["pid"] == os.getpid()
    assert meta["log_file"] == str(log)
    assert meta["images_dir"] == str(images)
    assert (meta["address"], meta["port"]) == ("10.77.0.12", 27000)
    assert meta["started_at"] == result["started_at"]


def test_stop_a_page_server_that_ended_by_itself_reports_its_session(
    fake_criu: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    server = subprocess.Popen(["sleep", "0.3"])
    pidfile, log, images = daemon_files(
        tmp_path, "page-server", "page-server/page-server.log", server.pid
    )
    (images / "pages-1.img").write_bytes(b"\0" * 3 * 4096)
    (images / "pagemap-77.img").write_bytes(b"\0" * 100)
    try:
        rc, result = run_module(
            {
                "action": "page-server",
                "images_dir": str(images),
                "state": "stopped",
                "pidfile": str(pidfile),
                "wait_s": 10,
                "require_finished": True,
                "criu_bin": str(fake_criu),
            },
            capsys,
        )
    finally:
        server.kill()
        server.wait()
    assert rc == 0, result
    assert result["finished"] is True and result["terminated"] is False
    assert result["changed"] is False
    assert 0 < result["waited_s"] < 10
    assert result["msg"].startswith(f"criu page-server {server.pid} ended by itself after")
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
    assert not pidfile.exists() and not Path(f"{pidfile}.json").exists()


def test_a_lazy_pages_daemon_still_serving_fails_when_it_must_have_finished(
    fake_criu: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    daemon = subprocess.Popen(["sleep", "30"])
    pidfile, log, images = daemon_files(
        tmp_path, "lazy-pages", "lazy-network/lazy-pages.log", daemon.pid
    )
    try:
        rc, result = run_module(
            {
                "action": "lazy-pages",
                "images_dir": str(images),
                "state": "stopped",
                "pidfile": str(pidfile),
                "wait_s": 0.2,
                "require_finished": True,
                "criu_bin": str(fake_criu),
            },
            capsys,
        )
        assert daemon.wait(timeout=5) == -15  # stopped with SIGTERM
    finally:
        daemon.kill()
        daemon.wait()
    assert rc == 1
    assert result["msg"] == (
        f"criu lazy-pages on {platform.node()} was still serving after 0.2 s and was stopped "
        f"having served 0 of 2440 lazy pages: page-xfer: Remote side closed connection; log: {log}"
    )
    assert result["terminated"] is True
    assert result["migration_metrics"]["phase"] == "lazy_pages"
    assert result["migration_metrics"]["data"]["complete"] is False


def test_a_lazy_pages_daemon_that_served_every_page(
    fake_criu: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    daemon = subprocess.Popen(["sleep", "0.2"])
    pidfile, _, images = daemon_files(
        tmp_path, "lazy-pages", "lazy-images/lazy-pages.log", daemon.pid
    )
    try:
        rc, result = run_module(
            {
                "action": "lazy-pages",
                "images_dir": str(images),
                "state": "stopped",
                "pidfile": str(pidfile),
                "wait_s": 10,
                "require_finished": True,
                "criu_bin": str(fake_criu),
            },
            capsys,
        )
    finally:
        daemon.kill()
        daemon.wait()
    assert rc == 0, result
    data = result["migration_metrics"]["data"]
    assert result["migration_metrics"]["phase"] == "lazy_pages"
    assert (data["pages_lazy_total"], data["pages_lazy_served"]) == (2441, 2441)
    assert data["complete"] is True and data["finished"] is True
    assert data["serving_s"] == 0.012916


def test_stop_without_meta_still_requires_the_end(
    fake_criu: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    daemon = subprocess.Popen(["sleep", "30"])
    pidfile = tmp_path / "ps.pid"
    pidfile.write_text(str(daemon.pid))
    try:
        rc, result = run_module(
            {
                "action": "page-server",
                "images_dir": str(tmp_path),
                "state": "stopped",
                "pidfile": str(pidfile),
                "require_finished": True,
                "criu_bin": str(fake_criu),
            },
            capsys,
        )
    finally:
        daemon.kill()
        daemon.wait()
    assert rc == 1
    assert result["msg"] == (
        f"criu page-server {daemon.pid} on {platform.node()} was still running after 0.0 s "
        "and was stopped"
    )


def test_state_stopped_is_only_for_background_processes(
    fake_criu: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rc, result = run_module(
        {
            "action": "restore",
            "images_dir": str(tmp_path),
            "state": "stopped",
            "pidfile": str(tmp_path / "p"),
            "criu_bin": str(fake_criu),
        },
        capsys,
    )
    assert rc == 1
    assert result["msg"] == (
        "state=stopped is for page-server, lazy-pages and a dump with lazy_pages=true, not criu restore"
    )


# -- network post-copy: the dump serves in the background -------------------------------------


def dead_pid() -> int:
    gone = subprocess.Popen(["true"])
    gone.wait()
    return gone.pid


def lazy_dump_args(tmp_path: Path, fake_criu: Path, **extra: Any) -> dict[str, Any]:
    return {
        "action": "dump",
        "pid": dead_pid(),
        "images_dir": str(tmp_path / "images" / "1"),
        "lazy_pages": True,
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
    assert started["serving"] is True
    assert started["cmd"][-5:] == ["--lazy-pages", "--address", "10.77.0.11", "--port", "27001"]
    assert Path(f"/proc/{started['pid']}").exists()  # still serving
    data = started["migration_metrics"]["data"]
    assert started["migration_metrics"]["phase"] == "final_dump"
    assert data["lazy_network"] is True and data["stats"] == {}
    assert data["duration_s"] == started["duration_s"]

    (images / "served").write_text("")  # the destination fetched every page
    rc, stopped = run_module(
        {
            **lazy_dump_args(tmp_path, fake_criu),
            "state": "stopped",
            "wait_s": 10,
            "require_finished": True,
        },
        capsys,
    )
    assert rc == 0, stopped
    assert stopped["finished"] is True
    assert stopped["summary"]["rc"] == 0 and stopped["summary"]["finished"] is True
    assert stopped["stats"]["pages_written"] == 2750
    final = stopped["migration_metrics"]
    assert final["phase"] == "final_dump"
    assert final["data"]["started_at"] == started["started_at"]
    assert final["data"]["duration_s"] == started["duration_s"]
    assert final["data"]["finished_at"] == started["finished_at"]
    assert final["data"]["served_s"] > 0
    assert final["data"]["stats"]["frozen_s"] == 0.013432
    assert not pidfile.exists()


def test_a_lazy_dump_that_cannot_serve_names_crius_reason(
    fake_criu: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("FAKE_CRIU_MODE", "lazy-tee")
    rc, started = run_module(lazy_dump_args(tmp_path, fake_criu), capsys)
    assert rc == 0, started
    (tmp_path / "images" / "1" / "served").write_text("")  # the first page is asked for
    rc, stopped = run_module(
        {
            **lazy_dump_args(tmp_path, fake_criu),
            "state": "stopped",
            "wait_s": 10,
            "require_finished": True,
        },
        capsys,
    )
    assert rc == 1
    assert stopped["msg"] == (
        f"criu dump --lazy-pages on {platform.node()} did not finish serving its pages (rc=1): "
        f"page-pipe: tee: 65536: Operation not permitted; log: {tmp_path / 'criu-dump.log'}"
    )
    assert stopped["migration_metrics"]["data"]["stats"] == {}
    assert "resumed_pid" not in stopped


def test_a_lazy_dump_that_gave_up_leaves_the_workload_running_on_the_source(
    fake_criu: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("FAKE_CRIU_MODE", "lazy-tee")
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
    metrics = stopped["migration_metrics"]
    assert metrics["phase"] == "rollback"  # the journal then says: runs on the source
    assert metrics["data"]["resumed_on_source"] is True
    assert metrics["data"]["pid"] == workload.pid
    assert "page-pipe: tee: 65536: Operation not permitted" in metrics["data"]["reason"]
    assert metrics["data"]["dump"]["rc"] == 1


def test_a_lazy_dump_failing_before_it_serves(
    fake_criu: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("FAKE_CRIU_MODE", "fail")
    rc, result = run_module(lazy_dump_args(tmp_path, fake_criu), capsys)
    assert rc == 1
    assert "Can't lookup mount=22" in result["msg"]
    assert result["msg"].startswith(f"criu dump failed on {platform.node()} (rc=1)")
    assert not (tmp_path / "criu-dump-lazy.pid").exists()


def test_a_lazy_dump_needs_a_pidfile(
    fake_criu: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = lazy_dump_args(tmp_path, fake_criu)
    del args["pidfile"]
    rc, result = run_module(args, capsys)
    assert rc == 1
    assert result["msg"] == "criu dump with lazy_pages=true needs pidfile"


# -- the network post-copy probe ---------------------------------------------------------------


def test_probe_names_the_dumps_failure_and_caches_the_verdict(
    fake_criu: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("FAKE_CRIU_MODE", "fail")
    args = {
        "action": "check",
        "probe": "lazy_pages_network",
        "probe_cache_dir": str(tmp_path / "cache"),
        "criu_bin": str(fake_criu),
        "timeout": 10,
    }
    rc, result = run_module(args, capsys)
    assert rc == 0, result
    probe = result["probe"]
    assert probe["ok"] is False
    assert probe["side"] == "dump"
    assert probe["reason"] == (
        "criu dump --lazy-pages (serving pages) failed: "
        "Can't lookup mount=22 for fd=3 path=/dev/pts/0"
    )
    assert probe["cached"] is False
    assert probe["kernel"] == platform.release()
    calls = criu_calls(tmp_path)
    assert len(calls) == 1 and calls[0][0] == "dump"
    assert calls[0][-5:-1] == ["--lazy-pages", "--address", "127.0.0.1", "--port"]

    rc, again = run_module(args, capsys)
    assert rc == 0
    assert again["probe"]["cached"] is True
    assert again["probe"]["reason"] == probe["reason"]
    assert len(criu_calls(tmp_path)) == 1  # the cached verdict ran nothing
