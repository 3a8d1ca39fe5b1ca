"""module_utils/continuity.py: did the workload continue across the migration, or restart?

The clean case is a real progress.log (tests/fixtures/continuity/, see its README): the
memory workload dumped in host `src-host` and restored in `dst-host` by CRIU 4.2.1. The
failure cases are that log, edited the way each failure would show in it.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
from continuity import Check, check_continuity, parse_progress

FIXTURE = Path(__file__).resolve().parent.parent / "fixtures" / "continuity"
RECORDED = (FIXTURE / "memory-migration.progress.log").read_text()
# workloads/memory.yml's continuity rules
MEMORY_RULES = {
    "equal": ["blocks", "allocated_mb", "sample_checksum"],
    "close": {"rss_kb": 0.10},
    "increasing": [],
}


def recorded_lines() -> list[dict[str, Any]]:
    lines, bad = parse_progress(RECORDED)
    assert bad == 0
    return copy.deepcopy(lines)


def as_log(lines: list[dict[str, Any]]) -> str:
    return "".join(json.dumps(line) + "\n" for line in lines)


def test_parse_the_recorded_log() -> None:
    lines, bad = parse_progress(RECORDED)
    assert bad == 0
    assert [line["seq"] for line in lines] == list(range(1, 15))
    assert [line["host"] for line in lines] == ["src-host"] * 8 + ["dst-host"] * 6
    assert lines[8]["event"] == "restored"
    assert lines[13] == {
        "seq": 14,
        "ts": 1795669674.527426,
        "host": "dst-host",
        "event": "finished",
    }


def test_clean_migration() -> None:
    report = check_continuity(recorded_lines(), "dst-host", MEMORY_RULES)
    assert report.seq_continuous is True
    assert report.state_continuous is True
    assert report.ok is True
    assert (report.last_source_seq, report.first_destination_seq) == (8, 9)
    assert (report.source_lines, report.destination_lines) == (8, 6)
    assert report.unparsable_lines == 0
    # the largest gap from the last line before the freeze (ts ...667.157803) to the first
    # units of work after the restore: the freeze itself, to the restored line (...673.249028)
    assert report.app_downtime_s == 6.091225
    assert report.boundary_gap_s == 6.091225
    # median of the 7 gaps between the source's lines
    assert report.typical_interval_s == 0.179734
    assert [(c.name, c.ok) for c in report.checks] == [
        ("seq", True),
        ("restored_line", True),
        ("equal:blocks", True),
        ("equal:allocated_mb", True),
        ("equal:sample_checksum", True),
        ("close:rss_kb", True),
    ]
    assert report.checks[0].detail == "last on source 8, first on dst-host 9"
    assert report.checks[-1].detail == (
        "rss_kb: before=1062028 after=1059512 (relative difference 0.002, allowed 0.1)"
    )


def test_as_dict_carries_ok_and_checks() -> None:
    data = check_continuity(recorded_lines(), "dst-host", MEMORY_RULES).as_dict()
    assert data["ok"] is True
    assert data["app_downtime_s"] == 6.091225
    assert data["checks"][1] == {
        "name": "restored_line",
        "ok": True,
        "detail": "restored line seq 9",
    }


def test_app_downtime_is_the_largest_gap_in_the_window() -> None:
    # restore noticed at once (1 s), then a slow first unit of work (3.5 s: e.g. lazy pages
    # faulted in); a later pause (10 s) is outside the window: last source line + 3 lines.
    lines = [
        {"seq": 1, "ts": 99.0, "host": "a", "n": 1},
        {"seq": 2, "ts": 100.0, "host": "a", "n": 2},
        {"seq": 3, "ts": 101.0, "host": "b", "event": "restored", "n": 2},
        {"seq": 4, "ts": 104.5, "host": "b", "n": 3},
        {"seq": 5, "ts": 105.0, "host": "b", "n": 4},
        {"seq": 6, "ts": 115.0, "host": "b", "n": 5},
    ]
    report = check_continuity(lines, "b", {"equal": ["n"]})
    assert report.ok is True
    assert report.app_downtime_s == 3.5
    assert report.boundary_gap_s == 1.0
    assert report.typical_interval_s == 1.0


@pytest.mark.parametrize("increasing", [[], ["blocks"]])
def test_increasing_rule(increasing: list[str]) -> None:
    rules = {"equal": [], "close": {}, "increasing": ["allocated_mb", *increasing]}
    report = check_continuity(recorded_lines(), "dst-host", rules)
    assert report.state_continuous is True
    assert [c.name for c in report.checks][2:] == [f"increasing:{n}" for n in rules["increasing"]]


def test_restart_on_the_destination() -> None:
    # The workload started afresh on the destination: a new process counts from 1 again and
    # has no previous host, so it writes no restored line.
    fresh = [
        {
            "seq": 1,
            "ts": 1795669680.1,
            "host": "dst-host",
            "blocks": 1,
            "allocated_mb": 128,
            "rss_kb": 144480,
            "sample_checksum": "8a41770c",
        },
        {
            "seq": 2,
            "ts": 1795669680.3,
            "host": "dst-host",
            "blocks": 2,
            "allocated_mb": 256,
            "rss_kb": 275560,
            "sample_checksum": "8b92f232",
        },
    ]
    lines = [*recorded_lines()[:8], *fresh]
    report = check_continuity(lines, "dst-host", MEMORY_RULES)
    assert report.seq_continuous is False
    assert report.state_continuous is False
    assert report.ok is False
    assert (report.last_source_seq, report.first_destination_seq) == (8, 1)
    assert report.checks == [
        Check("seq", False, "last on source 8, first on dst-host 1; gaps or restarts in seq"),
        Check("restored_line", False, "the workload wrote no 'restored' line"),
    ]


def test_missing_restored_line() -> None:
    lines = recorded_lines()
    del lines[8]
    for line in lines[8:]:
        line["seq"] -= 1
    report = check_continuity(lines, "dst-host", MEMORY_RULES)
    assert report.seq_continuous is True
    assert report.state_continuous is False
    assert report.ok is False
    assert report.checks[1] == Check(
        "restored_line", False, "the workload wrote no 'restored' line"
    )
    assert len(report.checks) == 2  # nothing to compare against


def test_a_gap_in_seq_on_the_destination() -> None:
    lines = recorded_lines()
    del lines[10]  # seq 11 lost
    report = check_continuity(lines, "dst-host", MEMORY_RULES)
    assert report.seq_continuous is False
    assert report.state_continuous is True
    assert (
        report.checks[0].detail == "last on source 8, first on dst-host 9; gaps or restarts in seq"
    )


def test_seq_jump_at_the_boundary() -> None:
    lines = recorded_lines()
    for line in lines[8:]:
        line["seq"] += 1  # one line lost at the freeze: 8 -> 10
    report = check_continuity(lines, "dst-host", MEMORY_RULES)
    assert report.seq_continuous is False
    assert report.checks[0] == Check(
        "seq", False, "last on source 8, first on dst-host 10; gaps or restarts in seq"
    )


def test_changed_checksum() -> None:
    lines = recorded_lines()
    lines[8]["sample_checksum"] = "deadbeef"
    report = check_continuity(lines, "dst-host", MEMORY_RULES)
    assert report.seq_continuous is True
    assert report.state_continuous is False
    failed = [c for c in report.checks if not c.ok]
    assert failed == [
        Check(
            "equal:sample_checksum",
            False,
            "sample_checksum: before='667f70c9' after='deadbeef'",
        )
    ]


def test_rss_beyond_tolerance() -> None:
    lines = recorded_lines()
    lines[8]["rss_kb"] = 1593042  # 1.5 x the last source line's 1062028
    report = check_continuity(lines, "dst-host", MEMORY_RULES)
    assert report.state_continuous is False
    failed = [c for c in report.checks if not c.ok]
    assert failed == [
        Check(
            "close:rss_kb",
            False,
            "rss_kb: before=1062028 after=1593042 (relative difference 0.333, allowed 0.1)",
        )
    ]


def test_rss_just_inside_tolerance() -> None:
    lines = recorded_lines()
    lines[8]["rss_kb"] = 1062028 * 0.91
    report = check_continuity(lines, "dst-host", MEMORY_RULES)
    assert report.state_continuous is True


def test_value_going_down_breaks_an_increasing_rule() -> None:
    lines = recorded_lines()
    lines[8]["blocks"] = 7
    report = check_continuity(lines, "dst-host", {"increasing": ["blocks"]})
    assert report.state_continuous is False
    assert report.checks[-1] == Check("increasing:blocks", False, "blocks: before=8 after=7")


def test_field_missing_from_the_restored_line() -> None:
    lines = recorded_lines()
    del lines[8]["sample_checksum"]
    report = check_continuity(lines, "dst-host", MEMORY_RULES)
    assert report.state_continuous is False
    assert (
        Check(
            "equal:sample_checksum",
            False,
            "sample_checksum missing (before='667f70c9', after=None)",
        )
        in report.checks
    )


def test_unparsable_lines_are_counted() -> None:
    text = RECORDED.replace(
        '{"seq": 10,', '{"seq": 10 TRUNCATED\n[1, 2]\n{"ts": 1.0, "host": "x"}\n\n{"seq": 10,', 1
    )
    lines, bad = parse_progress(text)
    assert bad == 3  # broken JSON, not an object, no seq; blank lines are not counted
    assert len(lines) == 14
    report = check_continuity(lines, "dst-host", MEMORY_RULES, bad)
    assert report.unparsable_lines == 3
    assert report.as_dict()["unparsable_lines"] == 3
    assert report.ok is True


def test_no_destination_lines() -> None:
    lines = recorded_lines()[:8]
    report = check_continuity(lines, "dst-host", MEMORY_RULES)
    assert report.seq_continuous is False
    assert report.state_continuous is False
    assert (report.source_lines, report.destination_lines) == (8, 0)
    assert report.app_downtime_s is None
    assert report.last_source_seq is None
    assert report.checks == [
        Check("destination_lines", False, "no line was written on dst-host after the restore")
    ]


def test_wrong_destination_name_finds_no_destination_lines() -> None:
    report = check_continuity(recorded_lines(), "destination", MEMORY_RULES)
    assert report.ok is False
    assert (report.source_lines, report.destination_lines) == (14, 0)


def test_no_source_lines() -> None:
    lines = recorded_lines()[8:]
    report = check_continuity(lines, "dst-host", MEMORY_RULES)
    assert report.ok is False
    assert report.checks == [Check("source_lines", False, "no line was written on the source")]


def test_empty_log() -> None:
    lines, bad = parse_progress("")
    assert (lines, bad) == ([], 0)
    report = check_continuity(lines, "dst-host", MEMORY_RULES)
    assert report.ok is False
    assert report.checks[0].name == "source_lines"


def test_round_trip_of_the_recorded_lines() -> None:
    lines = recorded_lines()
    assert parse_progress(as_log(lines)) == (lines, 0)
