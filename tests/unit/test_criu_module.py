"""library/criu.py run the way Ansible runs it: `main()` with the module's arguments, its JSON
on stdout and SystemExit.

CRIU itself is replaced by a small script that replays what CRIU 4.2.1 printed on this
project's machines (tests/fixtures/criu_cli/) and writes the stats images a real dump and
restore wrote (tests/fixtures/criu_stats/full-dump/), so these tests need no CRIU and no root.
CRIU's background processes (page server, lazy pages, post-copy dump) are criu_daemon's:
tests/unit/test_criu_daemon.py.
"""

from __future__ import annotations

import functools
import os
import platform
import re
import time
from pathlib import Path
from typing import Any

import criu
import pytest
from criu_cli import build_criu_argv
from fakes import (
    CRIU_CLI,
    CRIU_STATS,
    assert_refused_before_criu,
    criu_calls,
    install_fake_criu,
    run_ansible_module,
)

FAKE_CRIU = """\
    # Replays recorded CRIU output.
    # FAKE_CRIU_MODE: ok | fail | no-stats | hang | restore-gone.
    cli = Path({cli!r})
    stats = Path({stats!r})
    if args == ["--version"]:
        sys.stdout.write((cli / "version.txt").read_text())
        sys.exit(0)
    if args[0] == "check":
        name = "check" if len(args) == 1 else "check-tls" if args[1] == "--tls" else "check-feature-" + args[2]
        rcs = json.loads((cli / "rc.json").read_text())
        sys.stdout.write((cli / (name + ".txt")).read_text())
        sys.exit(rcs[name]["rc"])
    work = Path(opt("--work-dir") or opt("--images-dir"))
    log = Path(opt("--log-file"))
    if mode == "hang":
        hang()
    if mode == "fail":
        fail_to_dump(log)
    log.write_text("(00.000000) Version: 4.2.1 (gitid 0)\\n" + rlimit + "(00.020000) finished successfully\\n")
    if mode != "no-stats" and args[0] in ("dump", "pre-dump"):
        shutil.copy(stats / "stats-dump", work / "stats-dump")
    if mode != "no-stats" and args[0] == "restore":
        shutil.copy(stats / "stats-restore", work / "stats-restore")
    if opt("--pidfile"):
        # restore-gone: the restored tree is not running any more (the fake's own pid)
        pid = os.getpid() if mode == "restore-gone" else os.getppid()
        Path(opt("--pidfile")).write_text(str(pid))
    sys.exit(0)
    """


@pytest.fixture
def fake_criu(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    return install_fake_criu(
        tmp_path, monkeypatch, FAKE_CRIU, cli=str(CRIU_CLI), stats=str(CRIU_STATS)
    )


run_module = functools.partial(run_ansible_module, criu)


def dump_args(fake_criu: Path, images: Path, **extra: Any) -> dict[str, Any]:
    """criu's arguments to dump process 20001 into `images` with the fake criu."""
    return {
        "action": "dump",
        "pid": 20001,
        "images_dir": str(images),
        "criu_bin": str(fake_criu),
        **extra,
    }


def restore_args(fake_criu: Path, images: Path, **extra: Any) -> dict[str, Any]:
    """criu's arguments to restore from `images` with the fake criu."""
    return {"action": "restore", "images_dir": str(images), "criu_bin": str(fake_criu), **extra}


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
            {"action": "dump", "pid": 5, "images_dir": "/i", "page_server": True},
            "page_server is True but all of the following are missing: address, port",
        ),
        (
            {"action": "dump", "pid": 5, "images_dir": "/i", "network_lock": "ufw"},
            "value of network_lock must be one of: iptables, nftables, skip, got: ufw",
        ),
        (
            {"action": "migrate"},
            "value of action must be one of: check, dump, pre-dump, restore, got: migrate",
        ),
        # CRIU's background processes are criu_daemon's now
        (
            {"action": "page-server", "images_dir": "/i"},
            "value of action must be one of: check, dump, pre-dump, restore, got: page-server",
        ),
        (
            {"action": "lazy-pages", "images_dir": "/i"},
            "value of action must be one of: check, dump, pre-dump, restore, got: lazy-pages",
        ),
        (
            {"action": "check", "probe": "everything"},
            "value of probe must be one of: lazy_pages_network, got: everything",
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
    assert_refused_before_criu(rc, result, message, tmp_path)


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("state", "stopped"),
        ("wait_s", 10),
        ("require_finished", True),
        ("daemon", False),
        ("work_dir", "/w"),
        ("log_level", 2),
        ("leave_running", True),
        ("shell_job", True),
        ("ext_unix_sk", True),
        ("link_remap", True),
        ("manage_cgroups", "soft"),
        ("restore_detached", False),
    ],
)
def test_options_of_the_old_module_are_refused(
    option: str,
    value: Any,
    fake_criu: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    rc, result = run_module(
        dump_args(fake_criu, tmp_path / "i", **{option: value}),
        capsys,
    )
    assert rc == 1
    # "(criu)" under Ansible, "(basic.py)" here
    unsupported, supported = result["msg"].split(". Supported parameters include: ")
    assert re.fullmatch(rf"Unsupported parameters for \(\S+\) module: {option}", unsupported)
    assert option not in supported.rstrip(".").split(", ")
    assert "images_dir" in supported.rstrip(".").split(", ")
    assert criu_calls(tmp_path) == []


def test_a_post_copy_dump_is_criu_daemons(
    fake_criu: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # run here, `criu dump --lazy-pages` would serve pages in the foreground until every
    # page was fetched (or the timeout), holding the task and the workload frozen
    started = time.monotonic()
    rc, result = run_module(
        dump_args(fake_criu, tmp_path / "i", lazy_pages=True, address="10.77.0.11", port=27001),
        capsys,
    )
    assert_refused_before_criu(
        rc,
        result,
        "criu dump with lazy_pages=true is network post-copy: use criu_daemon daemon=lazy-dump",
        tmp_path,
    )
    assert time.monotonic() - started < 5


def test_a_dump_without_a_process_tree_fails_cleanly(
    fake_criu: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rc, result = run_module(
        {
            "action": "dump",
            "pid": 0,  # e.g. a workload pid that was never found
            "images_dir": str(tmp_path / "i"),
            "criu_bin": str(fake_criu),
        },
        capsys,
    )
    assert_refused_before_criu(rc, result, "criu dump needs the pid of the process tree", tmp_path)


# -- check mode -------------------------------------------------------------------------------


def test_dump_in_check_mode_reports_the_argv_and_runs_nothing(
    fake_criu: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    images = tmp_path / "images" / "1"
    args = dump_args(fake_criu, images, tcp_established=True, network_lock="nftables")
    rc, result = run_module({**args, "_ansible_check_mode": True}, capsys)
    assert rc == 0
    assert result["changed"] is True
    assert result["msg"] == "check mode: CRIU was not run"
    # the module's arguments and its default log file through build_criu_argv, whose argv
    # tests/unit/test_criu_cli.py pins flag by flag
    default_log = {"log_file": str(images / "criu-dump.log")}
    assert result["cmd"] == build_criu_argv(str(fake_criu), "dump", {**args, **default_log})
    assert "rc" not in result and "migration_metrics" not in result
    assert criu_calls(tmp_path) == []
    assert not images.exists()


def test_restore_in_check_mode_is_skipped_too(
    fake_criu: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rc, result = run_module(
        restore_args(
            fake_criu,
            tmp_path / "i",
            pidfile=str(tmp_path / "restored.pid"),
            _ansible_check_mode=True,
        ),
        capsys,
    )
    assert rc == 0
    assert result["changed"] is True
    # a restore always detaches CRIU from the restored tree
    assert result["cmd"][-3:] == ["--restore-detached", "--pidfile", str(tmp_path / "restored.pid")]
    assert criu_calls(tmp_path) == []


def test_a_lazy_restore_and_a_dump_to_a_page_server_in_check_mode(
    fake_criu: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rc, restore = run_module(
        restore_args(fake_criu, tmp_path / "i", lazy_pages=True, _ansible_check_mode=True),
        capsys,
    )
    assert rc == 0
    assert restore["cmd"][-2:] == ["--lazy-pages", "--restore-detached"]
    rc, dump = run_module(
        dump_args(
            fake_criu,
            tmp_path / "i",
            page_server=True,
            address="10.77.0.12",
            port=27000,
            file_locks=True,
            extra_args=["--skip-in-flight"],
            _ansible_check_mode=True,
        ),
        capsys,
    )
    assert rc == 0
    assert dump["cmd"][-8:] == [
        "20001",
        "--page-server",
        "--address",
        "10.77.0.12",
        "--port",
        "27000",
        "--file-locks",
        "--skip-in-flight",
    ]
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
    assert result["criu_bin"] == str(fake_criu)
    assert result["migration_metrics"]["phase"] == "environment"
    assert result["migration_metrics"]["data"]["criu"] == "4.2.1"
    assert result["migration_metrics"]["data"]["criu_check"] == "Looks good."
    assert result["migration_metrics"]["data"]["hostname"] == platform.node()
    assert result["tls"] == {"ok": True, "reason": ""}  # CRIU 4.2.1 here links GnuTLS
    assert criu_calls(tmp_path) == [
        ["--version"],
        ["check"],
        ["check", "--feature", "mem_dirty_track"],
        ["check", "--feature", "uffd-noncoop"],
        ["check", "--feature", "network_lock_nftables"],
        ["check", "--tls"],
    ]


# -- running CRIU -----------------------------------------------------------------------------


def test_dump_returns_criu_stats_and_metrics(
    fake_criu: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    images = tmp_path / "images" / "1"
    rc, result = run_module(
        dump_args(fake_criu, images),
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
    assert "pid" not in result
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
            "prev_images_dir": "../1",
            "track_mem": True,
            "criu_bin": str(fake_criu),
        },
        capsys,
    )
    assert rc == 0
    assert result["migration_metrics"]["phase"] == "predump"
    assert result["log_file"] == str(images / "criu-pre-dump.log")
    assert result["stats"]["pages_written"] == 2750
    assert result["cmd"][-4:] == ["20001", "--prev-images-dir", "../1", "--track-mem"]


def test_an_explicit_log_file_and_metrics_phase(
    fake_criu: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    log = tmp_path / "logs" / "dump.log"  # its folder is created
    rc, result = run_module(
        dump_args(fake_criu, tmp_path / "images", log_file=str(log), metrics_phase="checkpoint"),
        capsys,
    )
    assert rc == 0, result
    assert result["log_file"] == str(log) and log.is_file()
    assert result["migration_metrics"]["phase"] == "checkpoint"
    assert result["cmd"][4:6] == ["--log-file", str(log)]


def test_a_previous_calls_stats_are_never_reported(
    fake_criu: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    images = tmp_path / "images" / "1"
    images.mkdir(parents=True)
    (images / "stats-dump").write_bytes((CRIU_STATS / "stats-dump").read_bytes())
    monkeypatch.setenv("FAKE_CRIU_MODE", "no-stats")
    rc, result = run_module(
        dump_args(fake_criu, images),
        capsys,
    )
    assert rc == 0
    assert "stats" not in result  # returned only when CRIU wrote the stats image
    assert result["migration_metrics"]["data"]["stats"] == {}
    assert not (images / "stats-dump").exists()


@pytest.mark.env(FAKE_CRIU_MODE="fail")
def test_failed_dump_names_the_first_real_error_and_the_log(
    fake_criu: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    images = tmp_path / "images" / "1"
    rc, result = run_module(
        dump_args(fake_criu, images),
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
    assert result["duration_s"] >= 0
    assert "migration_metrics" not in result


@pytest.mark.env(FAKE_CRIU_MODE="hang")
def test_a_dump_past_its_timeout_is_killed_and_fails(
    fake_criu: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    images = tmp_path / "images" / "1"
    rc, result = run_module(
        dump_args(fake_criu, images, timeout=1),
        capsys,
    )
    assert rc == 1
    assert result["msg"] == (
        f"criu dump failed on {platform.node()} (rc=-1): did not finish in time; "
        f"log: {images / 'criu-dump.log'}"
    )
    assert 1 <= result["duration_s"] < 10
    assert result["output"] == "(00.000100) freezing tasks"  # what it printed before the kill


def test_restore_reads_the_restored_pid(
    fake_criu: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    images = tmp_path / "images" / "1"
    pidfile = tmp_path / "restored.pid"
    pidfile.write_text("1")  # a stale pidfile from an earlier run is removed first
    rc, result = run_module(
        restore_args(fake_criu, images, pidfile=str(pidfile), metrics_phase="rollback"),
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


def test_restore_metrics_phase_by_default(
    fake_criu: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rc, result = run_module(
        restore_args(fake_criu, tmp_path / "i"),
        capsys,
    )
    assert rc == 0
    assert result["migration_metrics"]["phase"] == "restore"
    assert "pid" not in result  # no pidfile asked for


@pytest.mark.env(FAKE_CRIU_MODE="restore-gone")
def test_a_restored_tree_that_is_not_running_fails(
    fake_criu: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    images, pidfile = tmp_path / "images" / "1", tmp_path / "restored.pid"
    rc, result = run_module(
        restore_args(fake_criu, images, pidfile=str(pidfile)),
        capsys,
    )
    pid = int(pidfile.read_text())
    assert rc == 1
    assert result["msg"] == (
        f"the restored process {pid} (from {pidfile}) is not running on {platform.node()}; "
        f"log: {images / 'criu-restore.log'}"
    )


# -- the network post-copy probe (module_utils/criu_probe.py: tests/unit/test_criu_probe.py) --


@pytest.mark.env(FAKE_CRIU_MODE="fail")
def test_probe_names_the_dumps_failure_and_caches_the_verdict(
    fake_criu: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = {
        "action": "check",
        "probe": "lazy_pages_network",
        "probe_cache_dir": str(tmp_path / "cache"),
        "criu_bin": str(fake_criu),
        "timeout": 10,
    }
    rc, result = run_module(args, capsys)
    assert rc == 0, result
    assert result["changed"] is False
    probe = result["probe"]
    assert probe["ok"] is False
    assert probe["side"] == "dump"
    assert probe["reason"] == (
        "criu dump --lazy-pages (serving pages) failed: "
        "Can't lookup mount=22 for fd=3 path=/dev/pts/0"
    )
    assert probe["cached"] is False
    assert probe["name"] == "lazy_pages_network"
    assert probe["kernel"] == platform.release()
    assert probe["criu_bin"] == str(fake_criu)
    calls = criu_calls(tmp_path)
    assert len(calls) == 1 and calls[0][0] == "dump"
    assert calls[0][-5:-1] == ["--lazy-pages", "--address", "127.0.0.1", "--port"]

    rc, again = run_module(args, capsys)
    assert rc == 0
    assert again["probe"]["cached"] is True
    assert again["probe"]["reason"] == probe["reason"]
    assert len(criu_calls(tmp_path)) == 1  # the cached verdict ran nothing
