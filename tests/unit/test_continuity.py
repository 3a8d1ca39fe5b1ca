"""module_utils/continuity.py: did the workload continue across the migration, or restart?

The clean case is a real progress.log (tests/fixtures/continuity/, see its README): the
memory workload dumped in host `src-host` and restored in `dst-host` by CRIU 4.2.1. The
failure cases are that log, edited the way each failure would show in it. The fixture
predates `rss_anon_kb`; the memory workload's anonymous-memory rule is checked on a second
real recording (`RECORDED_ANON`, below).
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from continuity import Check, check_continuity, parse_progress

REPO = Path(__file__).resolve().parents[2]
FIXTURE = REPO / "tests" / "fixtures" / "continuity"
RECORDED = (FIXTURE / "memory-migration.progress.log").read_text()
# workloads/memory.yml's continuity rules
MEMORY_RULES = {
    "equal": ["blocks", "allocated_mb", "sample_checksum"],
    "close": {"rss_anon_kb": 0.02},
    "increasing": [],
}
# The rules the fixture's fields allow: it was recorded before the script logged rss_anon_kb.
FIXTURE_RULES = {**MEMORY_RULES, "close": {}}
# workloads/memory_standalone.py --mb-size 16 --interval 0.25 --max-memory 64, dumped by
# CRIU 4.2.1 (`criu dump`) in a UTS namespace named src-host, restored (`criu restore`) and
# renamed dst-host (`nsenter -u hostname`), on a machine of the project's kind (kernel
# 6.18.44): lines 1-6 before the dump, 7 the restored line, 13 written once the checkpoint
# flag was removed. Total RSS 79116 -> 76112 kB (file pages not faulted in yet), anonymous
# memory 72872 -> 72876 kB (one page).
RECORDED_ANON = """\
{"seq": 1, "ts": 1796543793.8300626, "host": "src-host", "blocks": 1, "allocated_mb": 16, "rss_kb": 29952, "rss_anon_kb": 23704, "sample_checksum": "6ca20eba"}
{"seq": 2, "ts": 1796543794.1080453, "host": "src-host", "blocks": 2, "allocated_mb": 32, "rss_kb": 46340, "rss_anon_kb": 40096, "sample_checksum": "1d81f061"}
{"seq": 3, "ts": 1796543794.3819218, "host": "src-host", "blocks": 3, "allocated_mb": 48, "rss_kb": 62728, "rss_anon_kb": 56484, "sample_checksum": "c0e02094"}
{"seq": 4, "ts": 1796543794.655333, "host": "src-host", "blocks": 4, "allocated_mb": 64, "rss_kb": 79116, "rss_anon_kb": 72872, "sample_checksum": "dcdede6d"}
{"seq": 5, "ts": 1796543794.9070063, "host": "src-host", "blocks": 4, "allocated_mb": 64, "rss_kb": 79116, "rss_anon_kb": 72872, "sample_checksum": "dcdede6d"}
{"seq": 6, "ts": 1796543795.1599112, "host": "src-host", "blocks": 4, "allocated_mb": 64, "rss_kb": 79116, "rss_anon_kb": 72872, "sample_checksum": "dcdede6d"}
{"seq": 7, "ts": 1796543795.5692556, "host": "dst-host", "event": "restored", "blocks": 4, "allocated_mb": 64, "rss_kb": 76112, "rss_anon_kb": 72876, "sample_checksum": "dcdede6d", "verify_s": 0.001}
{"seq": 8, "ts": 1796543795.570091, "host": "dst-host", "blocks": 4, "allocated_mb": 64, "rss_kb": 76916, "rss_anon_kb": 72876, "sample_checksum": "dcdede6d"}
{"seq": 9, "ts": 1796543795.8209677, "host": "dst-host", "blocks": 4, "allocated_mb": 64, "rss_kb": 76984, "rss_anon_kb": 72880, "sample_checksum": "dcdede6d"}
{"seq": 10, "ts": 1796543796.0717108, "host": "dst-host", "blocks": 4, "allocated_mb": 64, "rss_kb": 76984, "rss_anon_kb": 72880, "sample_checksum": "dcdede6d"}
{"seq": 11, "ts": 1796543796.322907, "host": "dst-host", "blocks": 4, "allocated_mb": 64, "rss_kb": 76984, "rss_anon_kb": 72880, "sample_checksum": "dcdede6d"}
{"seq": 12, "ts": 1796543796.5736632, "host": "dst-host", "blocks": 4, "allocated_mb": 64, "rss_kb": 76984, "rss_anon_kb": 72880, "sample_checksum": "dcdede6d"}
{"seq": 13, "ts": 1796543796.7776425, "host": "dst-host", "event": "finished"}
"""


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
    report = check_continuity(recorded_lines(), "dst-host", FIXTURE_RULES)
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
    ]
    assert report.checks[0].detail == "last on source 8, first on dst-host 9"
    assert report.checks[-1].detail == "sample_checksum: before='667f70c9' after='667f70c9'"


def test_as_dict_carries_ok_and_checks() -> None:
    data = check_continuity(recorded_lines(), "dst-host", FIXTURE_RULES).as_dict()
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
    report = check_continuity(lines, "dst-host", FIXTURE_RULES)
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
    report = check_continuity(lines, "dst-host", FIXTURE_RULES)
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
    report = check_continuity(lines, "dst-host", FIXTURE_RULES)
    assert report.seq_continuous is False
    assert report.state_continuous is True
    assert (
        report.checks[0].detail == "last on source 8, first on dst-host 9; gaps or restarts in seq"
    )


def test_seq_jump_at_the_boundary() -> None:
    lines = recorded_lines()
    for line in lines[8:]:
        line["seq"] += 1  # one line lost at the freeze: 8 -> 10
    report = check_continuity(lines, "dst-host", FIXTURE_RULES)
    assert report.seq_continuous is False
    assert report.checks[0] == Check(
        "seq", False, "last on source 8, first on dst-host 10; gaps or restarts in seq"
    )


def test_changed_checksum() -> None:
    lines = recorded_lines()
    lines[8]["sample_checksum"] = "deadbeef"
    report = check_continuity(lines, "dst-host", FIXTURE_RULES)
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


def test_value_going_down_breaks_an_increasing_rule() -> None:
    lines = recorded_lines()
    lines[8]["blocks"] = 7
    report = check_continuity(lines, "dst-host", {"increasing": ["blocks"]})
    assert report.state_continuous is False
    assert report.checks[-1] == Check("increasing:blocks", False, "blocks: before=8 after=7")


def test_field_missing_from_the_restored_line() -> None:
    lines = recorded_lines()
    del lines[8]["sample_checksum"]
    report = check_continuity(lines, "dst-host", FIXTURE_RULES)
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
    report = check_continuity(lines, "dst-host", FIXTURE_RULES, bad)
    assert report.unparsable_lines == 3
    assert report.as_dict()["unparsable_lines"] == 3
    assert report.ok is True


def test_no_destination_lines() -> None:
    lines = recorded_lines()[:8]
    report = check_continuity(lines, "dst-host", FIXTURE_RULES)
    assert report.seq_continuous is False
    assert report.state_continuous is False
    assert (report.source_lines, report.destination_lines) == (8, 0)
    assert report.app_downtime_s is None
    assert report.last_source_seq is None
    assert report.checks == [
        Check("destination_lines", False, "no line was written on dst-host after the restore")
    ]


def test_wrong_destination_name_finds_no_destination_lines() -> None:
    report = check_continuity(recorded_lines(), "destination", FIXTURE_RULES)
    assert report.ok is False
    assert (report.source_lines, report.destination_lines) == (14, 0)


def test_no_source_lines() -> None:
    lines = recorded_lines()[8:]
    report = check_continuity(lines, "dst-host", FIXTURE_RULES)
    assert report.ok is False
    assert report.checks == [Check("source_lines", False, "no line was written on the source")]


def test_empty_log() -> None:
    lines, bad = parse_progress("")
    assert (lines, bad) == ([], 0)
    report = check_continuity(lines, "dst-host", FIXTURE_RULES)
    assert report.ok is False
    assert report.checks[0].name == "source_lines"


def test_round_trip_of_the_recorded_lines() -> None:
    lines = recorded_lines()
    assert parse_progress(as_log(lines)) == (lines, 0)


# --- the memory workload's rules: anonymous memory and every page's checksum ----------------
def anon_lines() -> list[dict[str, Any]]:
    lines, bad = parse_progress(RECORDED_ANON)
    assert bad == 0
    return lines


def test_memory_rules_are_the_declaration() -> None:
    declared = yaml.safe_load((REPO / "workloads" / "memory.yml").read_text())["continuity"]
    assert declared == MEMORY_RULES
    assert "rss_kb" not in declared["close"]  # total RSS is logged for information only


def test_memory_rules_on_a_real_restore() -> None:
    report = check_continuity(anon_lines(), "dst-host", MEMORY_RULES)
    assert report.ok is True
    assert (report.last_source_seq, report.first_destination_seq) == (6, 7)
    assert [(c.name, c.ok) for c in report.checks] == [
        ("seq", True),
        ("restored_line", True),
        ("equal:blocks", True),
        ("equal:allocated_mb", True),
        ("equal:sample_checksum", True),
        ("close:rss_anon_kb", True),
    ]
    assert report.checks[-1].detail == (
        "rss_anon_kb: before=72872 after=72876 (relative difference 0.000, allowed 0.02)"
    )


def test_total_rss_drop_after_a_restore_passes() -> None:
    # The soft-dirty guest lab's 64 MB run: total RSS 83,144 -> 73,848 kB (-11 %: the restored
    # interpreter's file pages not faulted in yet), every anonymous page back.
    lines = anon_lines()
    lines[5]["rss_kb"], lines[6]["rss_kb"] = 83144, 73848
    report = check_continuity(lines, "dst-host", MEMORY_RULES)
    assert report.ok is True
    assert "close:rss_kb" not in [c.name for c in report.checks]
    # the rule it replaces failed that run
    old_rules = {**MEMORY_RULES, "close": {"rss_kb": 0.10}}
    failed = [c for c in check_continuity(lines, "dst-host", old_rules).checks if not c.ok]
    assert [c.name for c in failed] == ["close:rss_kb"]


def test_lost_anonymous_memory_fails() -> None:
    lines = anon_lines()
    lines[6]["rss_anon_kb"] = 72876 - 16384  # one 16 MB block's pages missing
    report = check_continuity(lines, "dst-host", MEMORY_RULES)
    assert report.ok is False
    assert [c for c in report.checks if not c.ok] == [
        Check(
            "close:rss_anon_kb",
            False,
            "rss_anon_kb: before=72872 after=56492 (relative difference 0.225, allowed 0.02)",
        )
    ]


@pytest.mark.parametrize(("after", "ok"), [(72872 * 0.981, True), (72872 * 0.979, False)])
def test_anonymous_memory_tolerance_edges(after: float, ok: bool) -> None:
    lines = anon_lines()
    lines[6]["rss_anon_kb"] = after
    report = check_continuity(lines, "dst-host", MEMORY_RULES)
    assert report.checks[-1].name == "close:rss_anon_kb"
    assert report.checks[-1].ok is ok
    assert report.state_continuous is ok


def test_a_lost_page_fails_the_checksum() -> None:
    # One page restored empty (block 3, page 100: its byte reads 0): 4 kB less anonymous memory
    # is within the tolerance, the CRC over every page's byte is not. 2e46acd0 is that CRC
    # (test_workload_scripts.py recomputes it with the script's own code).
    lines = anon_lines()
    lines[6]["rss_anon_kb"] = 72872 - 4
    lines[6]["sample_checksum"] = "2e46acd0"
    report = check_continuity(lines, "dst-host", MEMORY_RULES)
    assert report.ok is False
    assert [c for c in report.checks if not c.ok] == [
        Check("equal:sample_checksum", False, "sample_checksum: before='dcdede6d' after='2e46acd0'")
    ]


def test_anonymous_memory_missing_from_a_line_fails() -> None:
    # A line written by the script before rss_anon_kb existed, or a kernel without RssAnon
    # (the script logs null): the rule fails and says so.
    lines = anon_lines()
    lines[6]["rss_anon_kb"] = None
    report = check_continuity(lines, "dst-host", MEMORY_RULES)
    assert report.ok is False
    assert report.checks[-1] == Check(
        "close:rss_anon_kb", False, "rss_anon_kb missing (before=72872, after=None)"
    )
