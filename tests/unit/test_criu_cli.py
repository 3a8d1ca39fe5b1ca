"""module_utils/criu_cli.py: CRIU argv building and output parsing, on recorded CRIU output.

The fixtures in tests/fixtures/criu_cli/ were recorded on a machine of the project's kind
(Debian 12, kernel 6.18.44, CRIU 4.2.1 in /usr/local/sbin) with its record.sh; rc.json holds
each command's exit status.
"""

from __future__ import annotations

from pathlib import Path

import criu_cli
import pytest
from criu_cli import (
    build_criu_argv,
    first_error,
    log_tail,
    parse_check_output,
    parse_criu_version,
    parse_debian_version,
    version_at_least,
    version_string,
)
from fakes import recorded_criu

CRIU = "/usr/local/sbin/criu"
IMAGES = "/var/lib/criu-migration/images/memory_20261126_050746/2"


# Debian 12's packaged CRIU 3.17.1 on this kernel: the failure docs/lab.md reports for `criu check`
# ("vdso: Unexpected rt vDSO area bounds"), written in CRIU's log format (pr_err in criu/vdso.c
# with LOG_PREFIX "vdso: "), after the rlimit complaint CRIU prints on every run here. Not a
# recording: 3.17.1 is not installed on this machine.
DEBIAN_3_17_CHECK_FAILURE = (
    "Error (criu/util.c:1420): rlimit: Can't setup RLIMIT_NOFILE for self: Operation not permitted\n"
    "Error (criu/vdso.c:374): vdso: Unexpected rt vDSO area bounds\n"
)

# `criu --version` of a CRIU built from a git checkout prints a GitID line after the version.
GIT_BUILD_VERSION = "Version: 3.19\nGitID: v3.19-148-g9b8a0d1\n"


# -- build_criu_argv -----------------------------------------------------------------------


def test_dump_with_tcp_established_and_nftables_lock() -> None:
    opts = {
        "images_dir": IMAGES,
        "log_file": f"{IMAGES}/criu-dump.log",
        "pid": "20001",
        "tcp_established": True,
        "network_lock": "nftables",
    }
    assert build_criu_argv(CRIU, "dump", opts) == [
        CRIU,
        "dump",
        "--images-dir",
        IMAGES,
        "--log-file",
        f"{IMAGES}/criu-dump.log",
        "-v4",
        "--tree",
        "20001",
        "--tcp-established",
        "--network-lock",
        "nftables",
    ]


def test_pre_dump_with_track_mem_and_parent() -> None:
    opts = {
        "images_dir": "/imgs/2",
        "pid": 4242,
        "prev_images_dir": "../1",
        "track_mem": True,
        "log_level": 2,
        "leave_running": True,  # dump-only: pre-dump always leaves the tree running
        "tcp_established": True,  # dump / restore only
    }
    assert build_criu_argv(CRIU, "pre-dump", opts) == [
        CRIU,
        "pre-dump",
        "--images-dir",
        "/imgs/2",
        "-v2",
        "--tree",
        "4242",
        "--prev-images-dir",
        "../1",
        "--track-mem",
    ]


def test_dump_to_page_server_with_address_and_port() -> None:
    opts = {
        "images_dir": "/imgs/9",
        "work_dir": "/work/9",
        "pid": 77,
        "page_server": True,
        "address": "10.77.0.12",
        "port": "27000",
        "track_mem": True,
        "prev_images_dir": "../8",
    }
    assert build_criu_argv(CRIU, "dump", opts) == [
        CRIU,
        "dump",
        "--images-dir",
        "/imgs/9",
        "--work-dir",
        "/work/9",
        "-v4",
        "--tree",
        "77",
        "--prev-images-dir",
        "../8",
        "--track-mem",
        "--page-server",
        "--address",
        "10.77.0.12",
        "--port",
        "27000",
    ]


def test_dump_lazy_pages_serves_pages_on_the_network() -> None:
    opts = {
        "images_dir": "/imgs/1",
        "pid": 77,
        "lazy_pages": True,
        "address": "0.0.0.0",
        "port": 27001,
        "leave_running": True,
    }
    assert build_criu_argv(CRIU, "dump", opts)[-7:] == [
        "77",
        "--leave-running",
        "--lazy-pages",
        "--address",
        "0.0.0.0",
        "--port",
        "27001",
    ]


def test_restore_detached_by_default_with_pidfile_and_lazy_pages() -> None:
    opts = {
        "images_dir": "/imgs/1",
        "pidfile": "/imgs/restored.pid",
        "lazy_pages": True,
        "pid": 5,  # ignored: restore takes the tree from the images
        "track_mem": True,  # ignored for restore
        "tcp_established": True,
        "network_lock": "nftables",
    }
    assert build_criu_argv(CRIU, "restore", opts) == [
        CRIU,
        "restore",
        "--images-dir",
        "/imgs/1",
        "-v4",
        "--lazy-pages",
        "--restore-detached",
        "--pidfile",
        "/imgs/restored.pid",
        "--tcp-established",
        "--network-lock",
        "nftables",
    ]


def test_restore_attached_when_restore_detached_is_false() -> None:
    argv = build_criu_argv(CRIU, "restore", {"images_dir": "/i", "restore_detached": False})
    assert argv == [CRIU, "restore", "--images-dir", "/i", "-v4"]


def test_page_server_daemon_with_pidfile_parent_and_lazy() -> None:
    opts = {
        "images_dir": "/imgs/2",
        "address": "10.77.0.12",
        "port": 27000,
        "prev_images_dir": "../1",
        "pidfile": "/imgs/page-server.pid",
        "lazy_pages": True,
        "pid": 99,  # not an option of page-server
        "shell_job": True,  # not an option of page-server
    }
    assert build_criu_argv(CRIU, "page-server", opts) == [
        CRIU,
        "page-server",
        "--images-dir",
        "/imgs/2",
        "-v4",
        "--prev-images-dir",
        "../1",
        "--lazy-pages",
        "--address",
        "10.77.0.12",
        "--port",
        "27000",
        "--daemon",
        "--pidfile",
        "/imgs/page-server.pid",
    ]


def test_page_server_in_the_foreground_when_daemon_is_false() -> None:
    argv = build_criu_argv(
        CRIU, "page-server", {"images_dir": "/i", "port": 27000, "daemon": False}
    )
    assert argv == [CRIU, "page-server", "--images-dir", "/i", "-v4", "--port", "27000"]


def test_lazy_pages_fetching_from_a_page_server() -> None:
    opts = {
        "images_dir": "/imgs/1",
        "page_server": True,
        "address": "10.77.0.11",
        "port": 27001,
        "pidfile": "/imgs/lazy.pid",
    }
    assert build_criu_argv(CRIU, "lazy-pages", opts) == [
        CRIU,
        "lazy-pages",
        "--images-dir",
        "/imgs/1",
        "-v4",
        "--page-server",
        "--address",
        "10.77.0.11",
        "--port",
        "27001",
        "--daemon",
        "--pidfile",
        "/imgs/lazy.pid",
    ]


def test_lazy_pages_from_local_images() -> None:
    argv = build_criu_argv(CRIU, "lazy-pages", {"images_dir": "/imgs/1", "address": "x", "port": 1})
    assert argv == [CRIU, "lazy-pages", "--images-dir", "/imgs/1", "-v4", "--daemon"]


def test_check_with_and_without_feature() -> None:
    assert build_criu_argv(CRIU, "check", {}) == [CRIU, "check"]
    assert build_criu_argv(CRIU, "check", {"feature": "mem_dirty_track", "images_dir": "/x"}) == [
        CRIU,
        "check",
        "--feature",
        "mem_dirty_track",
    ]


def test_process_options_and_extra_args_on_dump() -> None:
    opts = {
        "images_dir": "/i",
        "pid": 10,
        "shell_job": True,
        "ext_unix_sk": True,
        "file_locks": True,
        "link_remap": True,
        "manage_cgroups": "soft",
        "extra_args": ["--skip-in-flight", 3],
    }
    assert build_criu_argv(CRIU, "dump", opts)[7:] == [
        "--shell-job",
        "--ext-unix-sk",
        "--file-locks",
        "--link-remap",
        "--manage-cgroups=soft",
        "--skip-in-flight",
        "3",
    ]


def test_process_options_are_not_given_to_daemons() -> None:
    opts = {"images_dir": "/i", "shell_job": True, "tcp_established": True, "daemon": False}
    assert build_criu_argv(CRIU, "lazy-pages", opts) == [
        CRIU,
        "lazy-pages",
        "--images-dir",
        "/i",
        "-v4",
    ]


@pytest.mark.parametrize("action", ["dump", "pre-dump"])
@pytest.mark.parametrize("pid", [None, 0, ""])
def test_dump_without_pid_is_refused(action: str, pid: object) -> None:
    with pytest.raises(ValueError, match=f"criu {action} needs the pid of the process tree"):
        build_criu_argv(CRIU, action, {"images_dir": "/i", "pid": pid})


@pytest.mark.parametrize("action", ["dump", "pre-dump", "restore", "page-server", "lazy-pages"])
def test_every_action_but_check_needs_images_dir(action: str) -> None:
    with pytest.raises(ValueError, match=f"criu {action} needs images_dir"):
        build_criu_argv(CRIU, action, {"pid": 1, "images_dir": ""})


def test_unknown_action_is_refused_with_the_valid_ones() -> None:
    with pytest.raises(ValueError) as excinfo:
        build_criu_argv(CRIU, "migrate", {"images_dir": "/i", "pid": 1})
    assert str(excinfo.value) == (
        "unknown CRIU action 'migrate'; valid: check, dump, pre-dump, restore, page-server, lazy-pages"
    )


# -- versions ------------------------------------------------------------------------------


def test_parse_version_of_this_machines_criu() -> None:
    rc, output = recorded_criu("version")
    assert rc == 0
    assert output == "Version: 4.2.1\n"
    assert parse_criu_version(output) == (4, 2, 1)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Version: 3.17.1\n", (3, 17, 1)),  # Debian 12's package
        (GIT_BUILD_VERSION, (3, 19, 0)),
        ("Version:4.0\n", (4, 0, 0)),
        ("warning: something\nVersion: 4.1.1\n", (4, 1, 1)),
        ("criu: command not found\n", None),
        ("", None),
        (None, None),
    ],
)
def test_parse_criu_version(text: str | None, expected: tuple[int, int, int] | None) -> None:
    assert parse_criu_version(text) == expected  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "3.17.1-2+deb12u2",
            (3, 17, 1),
        ),  # this machine's apt candidate (apt-cache-policy-criu.txt)
        ("4.2.1-1", (4, 2, 1)),
        ("1:4.2-1ubuntu1", (4, 2, 0)),  # with an epoch
        ("  3.16.1-2 \n", (3, 16, 1)),
        ("(none)", None),
        ("", None),
    ],
)
def test_parse_debian_version(text: str, expected: tuple[int, int, int] | None) -> None:
    assert parse_debian_version(text) == expected


@pytest.mark.parametrize(
    ("version", "minimum", "expected"),
    [
        ((4, 2, 1), "4.2", True),
        ((4, 2, 0), "4.2", True),
        ((4, 2, 0), "4.2.1", False),
        ((4, 1, 1), "4.2", False),
        ((3, 17, 1), "4.2", False),
        ((5, 0, 0), "4.2.1", True),
        ((4, 10, 0), "4.9", True),  # numeric, not lexical
        ((4, 2, 1), "4", True),
        (None, "4.2", False),
    ],
)
def test_version_at_least(
    version: tuple[int, int, int] | None, minimum: str, expected: bool
) -> None:
    assert version_at_least(version, minimum) is expected


def test_version_string() -> None:
    assert version_string((4, 2, 1)) == "4.2.1"
    assert version_string(None) == ""


# -- criu check ----------------------------------------------------------------------------


def test_check_on_this_machine_looks_good() -> None:
    rc, output = recorded_criu("check")
    assert (rc, output) == (0, "Looks good.\n")
    result = parse_check_output(rc, output)
    assert result.ok is True
    assert result.summary == "Looks good."
    assert result.errors == []
    assert result.warnings == []


def test_check_feature_mem_dirty_track_fails_on_this_kernel() -> None:
    rc, output = recorded_criu("check-feature-mem_dirty_track")
    assert rc == 1
    result = parse_check_output(rc, output)
    assert result.ok is False
    warning = "Warn  (criu/cr-check.c:824): Dirty tracking is OFF. Memory snapshot will not work."
    assert result.warnings == [warning]
    assert result.errors == []
    assert result.summary == warning


@pytest.mark.parametrize("feature", ["uffd-noncoop", "network_lock_nftables"])
def test_check_feature_present_on_this_kernel(feature: str) -> None:
    rc, output = recorded_criu(f"check-feature-{feature}")
    assert (rc, output) == (0, f"{feature} is supported\n")
    result = parse_check_output(rc, output)
    # A feature check never says "Looks good": the module decides features on rc alone.
    assert result.ok is False
    assert result.summary == f"{feature} is supported"


def test_check_unknown_feature_is_an_error() -> None:
    rc, output = recorded_criu("check-feature-unknown")
    assert rc == 1
    result = parse_check_output(rc, output)
    assert result.ok is False
    assert result.errors == ["Error (criu/cr-check.c:1901): Unknown feature nosuchfeature"]
    assert result.summary == "Error (criu/cr-check.c:1901): Unknown feature nosuchfeature"


def test_check_all_with_missing_features_is_not_ok() -> None:
    rc, output = recorded_criu("check-all")
    assert rc == 1
    result = parse_check_output(rc, output)
    # "Looks good but some kernel features are missing" with rc=1 is not good.
    assert result.ok is False
    assert result.errors == []
    assert result.warnings == [
        "Warn  (criu/cr-check.c:824): Dirty tracking is OFF. Memory snapshot will not work."
    ]


def test_check_looks_good_after_the_harmless_rlimit_error() -> None:
    # docs/lab.md: printed on every run on hosts without CAP_SYS_RESOURCE, and harmless.
    output = (
        "Error (criu/util.c:1534): rlimit: Can't setup RLIMIT_NOFILE for self: "
        "Operation not permitted\nWarn  (criu/cr-check.c:1200): some warning\nLooks good.\n"
    )
    result = parse_check_output(0, output)
    assert result.ok is True
    assert result.errors == []
    assert result.warnings == ["Warn  (criu/cr-check.c:1200): some warning"]
    assert result.summary == "Looks good. (1 warnings)"


def test_check_debian_3_17_vdso_failure() -> None:
    result = parse_check_output(1, DEBIAN_3_17_CHECK_FAILURE)
    assert result.ok is False
    assert result.errors == ["Error (criu/vdso.c:374): vdso: Unexpected rt vDSO area bounds"]
    assert result.summary == "Error (criu/vdso.c:374): vdso: Unexpected rt vDSO area bounds"


def test_check_rc_zero_without_looks_good_is_not_ok() -> None:
    result = parse_check_output(0, "")
    assert result.ok is False
    assert result.summary == "criu check exited 0 without output"


def test_check_nonzero_rc_with_looks_good_is_not_ok() -> None:
    result = parse_check_output(1, "Looks good.\n")
    assert result.ok is False
    assert result.summary == "Looks good."


# -- logs ----------------------------------------------------------------------------------

DUMP_LOG = """\
(00.000000) Version: 4.2.1 (gitid 0)
(00.000012) Running on vm Linux 6.18.44-fc-v595 #1 SMP x86_64
(00.000301) Error (criu/util.c:1534): rlimit: Can't setup RLIMIT_NOFILE for self: Operation not permitted
(00.002100) Dumping processes (pid: 20001 comm: python3)
(00.010220) Error (criu/files-reg.c:1710): Can't lookup mount=22 for fd=3 path=/dev/pts/0
(00.010231) Error (criu/cr-dump.c:1670): Dump files (pid: 20001) failed with -1
(00.010400) Unfreezing tasks into 1
(00.010500) Error (criu/cr-dump.c:2111): Dumping FAILED.
"""


def test_first_error_skips_the_harmless_rlimit_line() -> None:
    assert first_error(DUMP_LOG) == (
        "(00.010220) Error (criu/files-reg.c:1710): Can't lookup mount=22 for fd=3 path=/dev/pts/0"
    )


def test_first_error_without_error_lines() -> None:
    assert first_error("(00.0001) Dumping finished successfully\n") == ""
    assert first_error("") == ""
    assert first_error(None) == ""  # type: ignore[arg-type]


def test_log_tail_keeps_the_last_lines() -> None:
    assert log_tail(DUMP_LOG, 2) == (
        "(00.010400) Unfreezing tasks into 1\n(00.010500) Error (criu/cr-dump.c:2111): Dumping FAILED."
    )
    assert log_tail(DUMP_LOG) == DUMP_LOG.rstrip("\n")  # fewer than 25 lines: all of them
    assert log_tail("", 5) == ""


def test_feature_names_match_criu_check() -> None:
    # The names `criu check --feature` accepts (see the recorded check-feature-*.txt).
    assert criu_cli.FEATURE_SOFT_DIRTY == "mem_dirty_track"
    assert criu_cli.FEATURE_UFFD_NONCOOP == "uffd-noncoop"
    assert criu_cli.FEATURE_NFT_LOCK == "network_lock_nftables"
    assert criu_cli.FEATURE_UFFD == "uffd"


# -- the daemons' logs (tests/fixtures/criu_logs/, recorded with CRIU 4.2.1) ----------------

LOGS = Path(__file__).resolve().parent.parent / "fixtures" / "criu_logs"


def log(name: str) -> str:
    return (LOGS / name).read_text()


def test_log_timestamps_and_error_message() -> None:
    text = "(00.000149) Version: 4.2.1 (gitid 0)\nno stamp here\n(12.500000) done\n"
    assert criu_cli.log_timestamps(text) == [0.000149, 12.5]
    assert criu_cli.log_timestamps("") == []
    assert (
        criu_cli.error_message(
            "(00.237586) Error (criu/page-pipe.c:418): page-pipe: tee: 65536: Operation not permitted"
        )
        == "page-pipe: tee: 65536: Operation not permitted"
    )
    assert (
        criu_cli.error_message("Error (criu/cr-dump.c:2111): Dumping FAILED.") == "Dumping FAILED."
    )
    assert criu_cli.error_message("") == ""


def test_lazy_pages_log_of_a_restore_from_local_images() -> None:
    summary = criu_cli.summarize_lazy_pages_log(log("lazy-images/lazy-pages.log"))
    assert summary == {
        "tasks": [16558],
        "pages_lazy_total": 2441,
        "pages_lazy_served": 2441,
        "complete": True,
        "serving_s": 0.012916,
        "lifetime_s": 0.168884,
        "error": "",
    }


def test_lazy_pages_plus_restored_pages_are_the_pages_dumped() -> None:
    import criu_stats

    dump = criu_stats.summarize_stats_image(str(LOGS / "lazy-images" / "stats-dump"))["dump"]
    restore = criu_stats.summarize_stats_image(str(LOGS / "lazy-images" / "stats-restore"))
    lazy = criu_cli.summarize_lazy_pages_log(log("lazy-images/lazy-pages.log"))
    assert dump["pages_written"] == 2750 and dump["pages_lazy"] == 0
    assert restore["restore"]["pages_restored"] == 309
    assert restore["restore"]["pages_restored"] + lazy["pages_lazy_served"] == dump["pages_written"]


def test_lazy_pages_log_of_a_failed_network_fetch() -> None:
    summary = criu_cli.summarize_lazy_pages_log(log("lazy-network/lazy-pages.log"))
    assert summary["tasks"] == [17057]
    assert summary["pages_lazy_total"] == 2440
    assert summary["pages_lazy_served"] == 0
    assert summary["complete"] is False
    assert summary["serving_s"] is None
    assert summary["error"] == "page-xfer: Remote side closed connection"


def test_lazy_pages_log_empty() -> None:
    assert criu_cli.summarize_lazy_pages_log("") == {
        "tasks": [],
        "pages_lazy_total": 0,
        "pages_lazy_served": 0,
        "complete": False,
        "serving_s": None,
        "lifetime_s": None,
        "error": "",
    }


def test_lazy_pages_log_with_one_task_short_is_incomplete() -> None:
    text = (
        "(00.100000) uffd: Received PID: 7, uffd: 12\n"
        "(00.100100) uffd: 7-12: Found 10 pages to be handled by UFFD\n"
        "(00.100200) uffd: Received PID: 8, uffd: 13\n"
        "(00.100300) uffd: 8-13: Found 5 pages to be handled by UFFD\n"
        "(00.300000) uffd: 7-12: UFFD transferred pages: (10/10)\n"
        "(00.400000) uffd: 8-13: UFFD transferred pages: (3/5)\n"
    )
    summary = criu_cli.summarize_lazy_pages_log(text)
    assert summary["tasks"] == [7, 8]
    assert (summary["pages_lazy_total"], summary["pages_lazy_served"]) == (15, 13)
    assert summary["complete"] is False
    assert summary["serving_s"] == 0.3


def test_page_server_log_and_the_pages_it_received() -> None:
    import criu_stats

    summary = criu_cli.summarize_page_server_log(log("page-server/page-server.log"))
    assert summary == {
        "connected": True,
        "session_complete": True,
        "session_s": 0.280565,
        "lifetime_s": 0.398133,
        "error": "",
    }
    dump = criu_stats.summarize_stats_image(str(LOGS / "page-server" / "stats-dump"))["dump"]
    assert int(log("page-server/pages-bytes.txt")) == dump["bytes_written"] == 11264000
    # the page server writes no stats: the dump's stay on the source (criu_stats README)
    assert "Disconnect from the page server" in log("page-server/dump.log.trimmed")


def test_page_server_log_without_a_session() -> None:
    text = "(00.000100) Version: 4.2.1 (gitid 0)\n(00.043829) Running status-ready scripts\n"
    assert criu_cli.summarize_page_server_log(text) == {
        "connected": False,
        "session_complete": False,
        "session_s": None,
        "lifetime_s": 0.043829,
        "error": "",
    }


def test_lazy_dump_log_failing_on_this_kernel() -> None:
    assert criu_cli.summarize_lazy_dump_log(log("lazy-network/dump.log.trimmed")) == {
        "serving": True,
        "serving_at_s": 0.079777,
        "finished": False,
        "finished_at_s": None,
        "failed": True,
        "error": "page-pipe: tee: 65536: Operation not permitted",
    }


def test_lazy_dump_log_serving_then_finished() -> None:
    text = (
        "(00.040000) Error (criu/util.c:1534): rlimit: Can't setup RLIMIT_NOFILE for self: "
        "Operation not permitted\n"
        "(00.079777) Starting lazy pages server\n"
        "(00.079781) Starting page server on port 27001\n"
    )
    serving = criu_cli.summarize_lazy_dump_log(text)
    assert serving["serving"] and not serving["finished"] and not serving["failed"]
    done = criu_cli.summarize_lazy_dump_log(
        text + "(02.500000) Writing stats\n(02.500100) Dumping finished successfully\n"
    )
    assert done["finished"] and done["finished_at_s"] == 2.5001 and not done["failed"]


def test_probe_verdict_on_this_kernel_blames_the_dump() -> None:
    logs = {
        "dump": log("lazy-network/dump.log.trimmed"),
        "lazy-pages": log("lazy-network/lazy-pages.log"),
        "restore": log("lazy-network/restore.log.tail"),
    }
    assert criu_cli.lazy_network_probe_verdict(logs, restored_ok=False) == {
        "ok": False,
        "side": "dump",
        "reason": "criu dump --lazy-pages (serving pages) failed: "
        "page-pipe: tee: 65536: Operation not permitted",
    }


def test_probe_verdict_sides() -> None:
    fetch = "(00.1) Error (criu/uffd.c:1): uffd: cannot register\n"
    restore = "(00.2) Error (criu/cr-restore.c:1): Restoring FAILED.\n"
    rlimit = "(00.0) Error (criu/util.c:1534): rlimit: Can't setup RLIMIT_NOFILE for self\n"
    verdict = criu_cli.lazy_network_probe_verdict
    assert verdict({"dump": rlimit, "lazy-pages": fetch, "restore": restore}, False) == {
        "ok": False,
        "side": "lazy-pages",
        "reason": "criu lazy-pages --page-server (fetching pages) failed: uffd: cannot register",
    }
    assert verdict({"dump": rlimit, "restore": restore}, False)["side"] == "restore"
    assert verdict({"dump": rlimit}, False) == {
        "ok": False,
        "side": "",
        "reason": "the restored probe process did not read its memory back (no CRIU error logged)",
    }
    # errors logged on the way do not matter once the memory came back intact
    assert verdict({"lazy-pages": fetch}, True) == {"ok": True, "side": "", "reason": ""}
