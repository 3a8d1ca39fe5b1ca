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
    # Replays recorded CRIU output. FAKE_CRIU_MODE: ok | fail | no-stats.
    import json, os, shutil, sys
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
