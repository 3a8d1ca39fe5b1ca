"""CRIU's own statistics cross-checked against the suite's timings and against each other
(module_utils/metrics_report.py criu_stats_warnings), and how the disagreements reach
metrics.json (`warnings`) and the printed summary.

Figures come from real recordings: tests/fixtures/criu_stats/ (a full dump, a dump to a page
server) and tests/fixtures/criu_logs/ (a lazy restore from images and its daemon's log).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import criu_cli
import criu_stats
import pytest
from metrics_report import (
    CRIU_STATS_CHECKS,
    ROLE_PHASES,
    CriuCall,
    CriuStatsCheck,
    PairRecord,
    TaskRecord,
    build_metrics,
    check_call_vs_task,
    check_frozen_vs_call,
    check_frozen_vs_task,
    check_lazy_pages_count,
    check_lazy_pages_incomplete,
    check_page_server_bytes,
    check_page_server_incomplete,
    check_pages_written_vs_scanned,
    check_restore_far_shorter_than_call,
    check_restore_longer_than_call,
    check_stats_missing,
    criu_calls,
    criu_stats_warnings,
    summary_text,
)

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
FULL = FIXTURES / "criu_stats" / "full-dump"
LAZY = FIXTURES / "criu_logs" / "lazy-images"
PS = FIXTURES / "criu_logs" / "page-server"
T0 = 1795669666.0


def stats(path: Path, kind: str) -> dict[str, Any]:
    return criu_stats.summarize_stats_image(str(path))[kind]


def task(host: str, role: str, start: float, duration: float, name: str = "t") -> TaskRecord:
    return TaskRecord(host, name, role, ROLE_PHASES[role], start, duration, "ok")


def pair_of(
    dump_stats: dict[str, Any] | None = None,
    restore_stats: dict[str, Any] | None = None,
    dump_s: float = 0.5,
    restore_s: float = 0.4,
) -> PairRecord:
    """A full dump and a restore as the callback records them, each inside its task."""
    pair = PairRecord("source", "destination", "/r")
    dump_at, restore_at = T0 + 10.0, T0 + 12.0
    pair.tasks = [
        task("source", "checkpoint_dump", dump_at - 0.1, dump_s + 0.2, "Final dump"),
        task("destination", "checkpoint_restore", restore_at - 0.1, restore_s + 0.2, "Restore"),
    ]
    pair.add(
        "final_dump",
        {
            "duration_s": dump_s,
            "started_at": dump_at,
            "finished_at": dump_at + dump_s,
            "stats": stats(FULL / "stats-dump", "dump") if dump_stats is None else dump_stats,
        },
        "source",
    )
    pair.add(
        "restore",
        {
            "duration_s": restore_s,
            "started_at": restore_at,
            "finished_at": restore_at + restore_s,
            "stats": stats(FULL / "stats-restore", "restore")
            if restore_stats is None
            else restore_stats,
        },
        "destination",
    )
    return pair


def checks(pair: PairRecord) -> list[str]:
    return [warning["check"] for warning in criu_stats_warnings(pair)]


def test_a_consistent_full_dump_has_no_warnings() -> None:
    assert criu_stats_warnings(pair_of()) == []
    assert "warnings" not in build_metrics({}, pair_of(), T0, T0 + 20)


def test_frozen_longer_than_the_dump_call() -> None:
    dump = {**stats(FULL / "stats-dump", "dump"), "frozen_s": 0.9}
    warnings = criu_stats_warnings(pair_of(dump_stats=dump, dump_s=0.5))
    assert warnings[0] == {
        "check": "frozen_vs_call",
        "phase": "final_dump",
        "host": "source",
        "message": "CRIU's frozen time for the final dump (0.900s) is longer than the CRIU call "
        "itself (0.500s)",
        "frozen_s": 0.9,
        "call_s": 0.5,
    }
    # the Ansible task (0.7 s) is shorter than CRIU's frozen time too
    assert [w["check"] for w in warnings] == ["frozen_vs_call", "frozen_vs_task"]


def test_a_call_longer_than_its_task_means_clock_trouble() -> None:
    pair = pair_of()
    pair.tasks[0].duration_s = 0.3  # the task "took" less than the CRIU call inside it
    pair.tasks[0].start_epoch = T0 + 10.0
    pair.phases["final_dump"][0]["finished_at"] = T0 + 10.3  # still inside the task span
    assert checks(pair) == ["call_vs_task"]
    assert "are the clocks right?" in criu_stats_warnings(pair)[0]["message"]


def test_the_role_argument_check_before_the_dump_is_not_its_task() -> None:
    # each role starts with a short "Validating arguments" task of its phase: within the
    # clocks' slack of the dump's start, but holding none of it
    dump = {**stats(FULL / "stats-dump", "dump"), "frozen_s": 0.15}
    pair = pair_of(dump_stats=dump, dump_s=0.2)
    validation = task("source", "checkpoint_dump", T0 + 9.95, 0.036, "Validating arguments")
    pair.tasks.insert(0, validation)
    assert criu_stats_warnings(pair) == []


def test_a_call_outside_every_task_is_not_matched() -> None:
    pair = pair_of()
    pair.tasks = []
    assert criu_stats_warnings(pair) == []


def test_more_pages_written_than_scanned() -> None:
    dump = {**stats(FULL / "stats-dump", "dump"), "pages_scanned": 10}
    assert checks(pair_of(dump_stats=dump)) == ["pages_written_vs_scanned"]


def test_missing_stats_images() -> None:
    warnings = criu_stats_warnings(pair_of(dump_stats={}, restore_stats={}))
    assert [(w["check"], w["phase"]) for w in warnings] == [
        ("stats_missing", "final_dump"),
        ("stats_missing", "restore"),
    ]
    assert warnings[0]["message"] == (
        "CRIU wrote no stats-dump for the final dump: only the suite's timings remain"
    )


def test_restore_time_longer_than_the_restore_call() -> None:
    restore = {**stats(FULL / "stats-restore", "restore"), "restore_s": 0.6}
    warnings = criu_stats_warnings(pair_of(restore_stats=restore, restore_s=0.4))
    assert [w["check"] for w in warnings] == ["restore_vs_call"]
    assert warnings[0]["message"] == (
        "CRIU's restore time (0.600s) is longer than the restore call (0.400s)"
    )


@pytest.mark.parametrize(
    ("call_s", "restore_s", "warned"),
    [
        (0.531, 0.014574, False),  # 0.5 s of start-up: below the 1 s floor
        (1.9, 1.0, False),  # 0.9 s: below 1 s
        (3.0, 1.4, True),  # 1.6 s > max(1 s, 1.5 s)
        (10.0, 6.0, False),  # 4 s < 5 s (half the call)
        (10.0, 4.0, True),
    ],
)
def test_restore_call_far_longer_than_crius_restore_time(
    call_s: float, restore_s: float, warned: bool
) -> None:
    restore = {**stats(FULL / "stats-restore", "restore"), "restore_s": restore_s}
    assert checks(pair_of(restore_stats=restore, restore_s=call_s)) == (
        ["restore_vs_call"] if warned else []
    )


def test_predump_iterations_are_checked_too() -> None:
    pair = pair_of()
    pair.add("predump", {"duration_s": 0.1, "stats": {"frozen_s": 0.5}}, "source")
    pair.add("predump", {"duration_s": 0.1, "stats": {}}, "source")
    warnings = criu_stats_warnings(pair)
    assert [(w["check"], w["phase"]) for w in warnings] == [
        ("frozen_vs_call", "predump"),
        ("stats_missing", "predump"),
    ]
    assert "pre-dump 1" in warnings[0]["message"] and "pre-dump 2" in warnings[1]["message"]


def test_rollback_restore_is_checked() -> None:
    pair = pair_of()
    pair.add("rollback", {"duration_s": 0.2, "stats": {"restore_s": 0.5}}, "source")
    assert checks(pair) == ["restore_vs_call"]
    assert criu_stats_warnings(pair)[0]["phase"] == "rollback"


def test_a_post_copy_dump_that_resumed_the_source_is_no_restore() -> None:
    pair = pair_of()
    pair.add("rollback", {"pid": 16021, "resumed_on_source": True}, "source")
    assert checks(pair) == []


# -- the page server's side ---------------------------------------------------------------------


def page_server_pair(**server: Any) -> PairRecord:
    pair = pair_of(dump_stats=stats(PS / "stats-dump", "dump"))
    summary = criu_cli.summarize_page_server_log((PS / "page-server.log").read_text())
    received = int((PS / "pages-bytes.txt").read_text())
    pair.add(
        "page_server",
        {
            "finished": True,
            **summary,
            "bytes_received": received,
            "pages_received": received // 4096,
            **server,
        },
        "destination",
    )
    return pair


def test_the_page_server_received_what_the_dump_wrote() -> None:
    assert criu_stats_warnings(page_server_pair()) == []


def test_the_page_server_received_less() -> None:
    warnings = criu_stats_warnings(page_server_pair(bytes_received=4096))
    assert [w["check"] for w in warnings] == ["page_server_bytes"]
    assert warnings[0]["message"] == (
        "the page server received 4096 bytes of pages, the dump reports 11264000 written"
    )
    assert warnings[0]["host"] == "destination"


def test_a_page_server_session_cut_short() -> None:
    pair = page_server_pair(
        session_complete=False, error="page-xfer: Remote side closed connection"
    )
    assert criu_stats_warnings(pair)[0]["message"] == (
        "the page server did not see the dump's session through: page-xfer: Remote side closed "
        "connection"
    )


# -- lazy pages -----------------------------------------------------------------------------------


def lazy_pair(**lazy: Any) -> PairRecord:
    pair = pair_of(
        dump_stats=stats(LAZY / "stats-dump", "dump"),
        restore_stats=stats(LAZY / "stats-restore", "restore"),
        restore_s=0.05,
    )
    summary = criu_cli.summarize_lazy_pages_log((LAZY / "lazy-pages.log").read_text())
    pair.add("lazy_pages", {"finished": True, **summary, **lazy}, "destination")
    return pair


def test_pages_restored_plus_served_lazily_are_the_pages_dumped() -> None:
    assert criu_stats_warnings(lazy_pair()) == []


def test_lazy_pages_that_do_not_add_up() -> None:
    warnings = criu_stats_warnings(lazy_pair(pages_lazy_served=2000, pages_lazy_total=2000))
    assert [w["check"] for w in warnings] == ["lazy_pages_count"]
    assert warnings[0]["message"] == "309 pages restored + 2000 served lazily != 2750 pages dumped"


def test_a_lazy_daemon_stopped_before_it_served_everything() -> None:
    pair = lazy_pair(finished=False, complete=False, pages_lazy_served=2440, error="")
    # one page short: within PAGE_COUNT_TOLERANCE of the count, but the daemon says so itself
    assert checks(pair) == ["lazy_pages_incomplete"]
    assert criu_stats_warnings(pair)[0]["message"] == (
        "the lazy-pages daemon served 2440 of 2441 pages"
    )


def test_lazy_counts_are_not_compared_after_pre_dumps() -> None:
    pair = lazy_pair(pages_lazy_served=10)
    pair.add("predump", {"duration_s": 0.2, "stats": {"frozen_s": 0.01}}, "source")
    assert checks(pair) == []


def test_a_network_post_copy_dump_is_frozen_until_served() -> None:
    dump = {**stats(LAZY / "stats-dump", "dump"), "frozen_s": 2.0, "pages_lazy": 0}
    pair = pair_of(dump_stats=dump, dump_s=0.2)
    pair.phases["final_dump"][0].update(lazy_network=True, served_s=2.5)
    assert checks(pair) == []
    pair.phases["final_dump"][0]["served_s"] = 1.0
    assert checks(pair) == ["frozen_vs_call"]


# -- one function per check ----------------------------------------------------------------------


def frozen_longer_than_the_task_only() -> PairRecord:
    """Frozen 0.58 s: within the 0.54 s call (+ tolerance), beyond its 0.5 s task."""
    pair = pair_of(dump_stats={**stats(FULL / "stats-dump", "dump"), "frozen_s": 0.58}, dump_s=0.54)
    pair.tasks[0].duration_s = 0.5
    return pair


def frozen_longer_than_the_call_only() -> PairRecord:
    """Frozen 0.9 s: beyond the 0.5 s call, within its 1 s task."""
    pair = pair_of(dump_stats={**stats(FULL / "stats-dump", "dump"), "frozen_s": 0.9}, dump_s=0.5)
    pair.tasks[0].duration_s = 1.0
    return pair


def call_longer_than_its_task() -> PairRecord:
    pair = pair_of()
    pair.tasks[0].duration_s = 0.3
    pair.tasks[0].start_epoch = T0 + 10.0
    pair.phases["final_dump"][0]["finished_at"] = T0 + 10.3
    return pair


def restore_with(restore_s: float, call_s: float) -> PairRecord:
    restore = {**stats(FULL / "stats-restore", "restore"), "restore_s": restore_s}
    return pair_of(restore_stats=restore, restore_s=call_s)


# (the check, a pair on which exactly it warns, the call it warns about, a pair where it is quiet)
PER_CHECK: list[tuple[CriuStatsCheck, Any, str, Any]] = [
    (check_stats_missing, lambda: pair_of(dump_stats={}), "final_dump", pair_of),
    (check_frozen_vs_call, frozen_longer_than_the_call_only, "final_dump", pair_of),
    (check_frozen_vs_task, frozen_longer_than_the_task_only, "final_dump", pair_of),
    (check_call_vs_task, call_longer_than_its_task, "final_dump", pair_of),
    (
        check_pages_written_vs_scanned,
        lambda: pair_of(dump_stats={**stats(FULL / "stats-dump", "dump"), "pages_scanned": 10}),
        "final_dump",
        pair_of,
    ),
    (check_restore_longer_than_call, lambda: restore_with(0.6, 0.4), "restore", pair_of),
    (check_restore_far_shorter_than_call, lambda: restore_with(1.4, 3.0), "restore", pair_of),
    (
        check_page_server_incomplete,
        lambda: page_server_pair(session_complete=False),
        "page_server",
        page_server_pair,
    ),
    (
        check_page_server_bytes,
        lambda: page_server_pair(bytes_received=4096),
        "page_server",
        page_server_pair,
    ),
    (
        check_lazy_pages_incomplete,
        lambda: lazy_pair(finished=False, complete=False, pages_lazy_served=2440, error=""),
        "lazy_pages",
        lazy_pair,
    ),
    (
        check_lazy_pages_count,
        lambda: lazy_pair(pages_lazy_served=2000, pages_lazy_total=2000),
        "lazy_pages",
        lazy_pair,
    ),
]
CHECK_NAMES = {
    check_stats_missing: "stats_missing",
    check_frozen_vs_call: "frozen_vs_call",
    check_frozen_vs_task: "frozen_vs_task",
    check_call_vs_task: "call_vs_task",
    check_pages_written_vs_scanned: "pages_written_vs_scanned",
    check_restore_longer_than_call: "restore_vs_call",
    check_restore_far_shorter_than_call: "restore_vs_call",
    check_page_server_incomplete: "page_server_incomplete",
    check_page_server_bytes: "page_server_bytes",
    check_lazy_pages_incomplete: "lazy_pages_incomplete",
    check_lazy_pages_count: "lazy_pages_count",
}


def call_in(pair: PairRecord, phase: str) -> CriuCall:
    [call] = [call for call in criu_calls(pair) if call.phase == phase]
    return call


@pytest.mark.parametrize(
    ("check", "warns", "phase", "quiet"), PER_CHECK, ids=[c.__name__ for c, *_ in PER_CHECK]
)
def test_each_check_on_its_own(check: CriuStatsCheck, warns: Any, phase: str, quiet: Any) -> None:
    pair = warns()
    [warning] = check(pair, call_in(pair, phase))
    assert warning["check"] == CHECK_NAMES[check]
    assert warning["phase"] == phase
    assert criu_stats_warnings(pair) == [warning]  # the only one the whole run reports
    calm = quiet()
    assert check(calm, call_in(calm, phase)) == []


def test_every_check_runs_on_its_kind_of_call() -> None:
    assert set(CRIU_STATS_CHECKS) == {"dump", "restore", "page_server", "lazy_pages"}
    listed = {check for checks in CRIU_STATS_CHECKS.values() for check in checks}
    assert listed == set(CHECK_NAMES)
    assert {check for check, *_ in PER_CHECK} == set(CHECK_NAMES)


def test_the_calls_checked_in_order() -> None:
    pair = page_server_pair()
    pair.add("predump", {"duration_s": 0.1, "stats": {}}, "source")
    pair.add("lazy_pages", {"finished": True, "complete": True}, "destination")
    pair.add("rollback", {"duration_s": 0.2, "stats": {"restore_s": 0.1}}, "source")
    assert [(c.kind, c.what, c.phase, c.record["host"]) for c in criu_calls(pair)] == [
        ("dump", "pre-dump 1", "predump", "source"),
        ("dump", "final dump", "final_dump", "source"),
        ("restore", "restore", "restore", "destination"),
        ("restore", "rollback restore", "rollback", "source"),
        ("page_server", "page server", "page_server", "destination"),
        ("lazy_pages", "lazy pages", "lazy_pages", "destination"),
    ]


def test_the_frozen_time_only_beyond_the_task() -> None:
    warnings = criu_stats_warnings(frozen_longer_than_the_task_only())
    assert warnings == [
        {
            "check": "frozen_vs_task",
            "phase": "final_dump",
            "host": "source",
            "message": "CRIU's frozen time for the final dump (0.580s) is longer than its task "
            "'Final dump' (0.500s)",
            "frozen_s": 0.58,
            "task_s": 0.5,
        }
    ]


def test_a_dump_without_stats_gets_only_stats_missing() -> None:
    pair = call_longer_than_its_task()
    pair.phases["final_dump"][0]["stats"] = {}
    assert checks(pair) == ["stats_missing"]  # no call_vs_task without the stats image


# -- metrics.json and the summary -----------------------------------------------------------------


def test_warnings_reach_metrics_json_and_the_summary() -> None:
    pair = page_server_pair(bytes_received=4096, pages_received=1)
    pair.add("warnings", {"message": "a module's own warning"}, "source")
    metrics = build_metrics({"name": "x"}, pair, T0, T0 + 20)
    assert [w.get("check") for w in metrics["warnings"]] == [None, "page_server_bytes"]
    assert metrics["phases"]["restore"]["page_server"]["pages_received"] == 1
    lines = summary_text(metrics).splitlines()
    assert "Warnings (2):" in lines
    assert "  - a module's own warning" in lines
    assert (
        "  - the page server received 4096 bytes of pages, the dump reports 11264000 written"
        in lines
    )
    assert "  Page server: 1 pages received (0.00 MB) in a 0.28s session" in lines


def test_the_summary_shows_the_lazy_pages() -> None:
    lines = summary_text(build_metrics({"name": "x"}, lazy_pair(), T0, T0 + 20)).splitlines()
    assert "  Lazy pages: 2441 of 2441 served in 0.01s after the restore" in lines
    assert not any(line.startswith("Warnings") for line in lines)
