"""metrics.json and the summary of a notice-triggered run (module_utils/metrics_report.py):
the deadline clock from the notice's issue, the detection delay on its own, the notice's own
deadline beside the clouds', what a missed deadline would need, and the trigger=ready
conditions; the pair is filled as the metrics callback fills it.
"""

from __future__ import annotations

from typing import Any

import pytest
from metrics_report import PairRecord, TaskRecord, build_metrics, shrink_to_meet, summary_text
from spot_notice import Answer, parse_aws_instance_action, parse_azure_events

T0 = 1795669666.0  # 2026-11-26T05:07:46Z: the experiment starts
NOTICE_AT = T0 + 10.0  # the provider issued the notice (2026-11-26T05:07:56Z)
SEEN_AT = NOTICE_AT + 0.4  # the watcher saw it
DUMP_AT = SEEN_AT + 1.1  # the final dump starts
RESTORED_AT = DUMP_AT + 2.0  # the restore returned (fused: the source's clock)
FINISHED = T0 + 30.0


def experiment(**settings: Any) -> dict[str, Any]:
    return {
        "id": "memory_20261126_050746-abc123",
        "name": "default-experiment",
        "started_at_epoch": T0,
        "workload": {"type": "memory", "params": {"mb_size": 32}},
        "strategy": {"mode": "full", "critical_path": "fused"},
        "transfer": {"method": "rsync"},
        "deadline_s": None,
        "settings": {"trigger": "notice", "notice_provider": "aws", **settings},
        "inventory": "inventories/lab/hosts.yml",
        "control": {},
    }


def aws_notice(notice_at: float = NOTICE_AT, seen_at: float = SEEN_AT) -> dict[str, Any]:
    """What notice_watch returns as phase `notice` for an AWS terminate notice."""
    from spot_notice import format_aws_time

    body = f'{{"action": "terminate", "time": "{format_aws_time(notice_at + 120)}"}}'
    notice = parse_aws_instance_action(Answer(200, "OK", {}, body.encode()), seen_at)
    watch = {
        "provider": "aws",
        "endpoint": "http://10.77.0.1:18169",
        "poll_s": 1.0,
        "polls": 9,
        "watch_started_at": T0 + 3.0,
        "errors": [
            {
                "kind": "garbage",
                "message": "spot/instance-action is not JSON",
                "count": 2,
                "first_at": T0 + 4.0,
                "last_at": T0 + 5.0,
            }
        ],
        "last_answer": "GET /latest/meta-data/spot/instance-action: HTTP 200 OK",
        "tokens": 2,
    }
    return {**notice.record(), "watch": watch, "seen_during": "the wait"}


def notice_pair(notice: dict[str, Any], downtime: float = 2.0) -> PairRecord:
    pair = PairRecord("source", "destination", "/tmp/results/memory_x")
    pair.tasks = [
        TaskRecord(
            "source", "Wait for the spot notice", "migration_trigger", "trigger", T0 + 3, 7.5, "ok"
        )
    ]
    pair.add(
        "notice_probe", {"answer": "GET ...: HTTP 404 Not Found", "pending_notice": None}, "source"
    )
    pair.add("notice", notice, "source")
    pair.add("final_dump", {"duration_s": 0.3, "started_at": DUMP_AT, "stats": {}}, "source")
    pair.add(
        "transfer",
        {"method": "rsync", "duration_s": downtime - 0.8, "bytes": 10, "stage": "final"},
        "source",
    )
    pair.add(
        "restore",
        {"duration_s": 0.4, "finished_at": DUMP_AT + downtime, "clock": "source"},
        "destination",
    )
    pair.add("critical_path", {"downtime_s": downtime, "clock": "source", "steps": {}}, "source")
    return pair


def test_the_deadline_clock_starts_when_the_provider_issued_the_notice() -> None:
    metrics = build_metrics(experiment(), notice_pair(aws_notice()), T0, FINISHED)
    assert metrics["deadline_clock"]["start"] == "spot notice"
    assert metrics["deadline_clock"]["started_at"] == "2026-11-26T05:07:56.000Z"
    assert metrics["migration_s"] == pytest.approx(RESTORED_AT - NOTICE_AT)  # 3.5 s
    assert metrics["experiment"]["notice_at"] == "2026-11-26T05:07:56.000Z"
    assert metrics["experiment"]["notice_seen_at"] == "2026-11-26T05:07:56.400Z"
    assert metrics["detection_delay_s"] == pytest.approx(0.4)
    trigger = metrics["trigger"]
    assert trigger["kind"] == "notice" and trigger["provider"] == "aws"
    assert trigger["action"] == "terminate"
    assert trigger["notice_at_from"] == "the action time minus 120 s"
    assert trigger["deadline_at"] == "2026-11-26T05:09:56.000Z"
    assert trigger["polls"] == 9 and trigger["tokens"] == 2
    assert trigger["errors"][0]["first_at"] == "2026-11-26T05:07:50.000Z"
    assert trigger["probe"] == {"answer": "GET ...: HTTP 404 Not Found", "pending": False}


def test_the_verdicts_run_from_the_notice_with_its_own_deadline_beside() -> None:
    metrics = build_metrics(experiment(), notice_pair(aws_notice()), T0, FINISHED)
    deadlines = metrics["deadlines"]
    assert deadlines["aws_120s"] == {"deadline_s": 120.0, "met": True, "slack_s": 116.5}
    assert deadlines["gcp_30s"]["slack_s"] == 26.5
    assert deadlines["notice"] == {
        "deadline_s": 120.0,
        "met": True,
        "slack_s": 116.5,
        "provider": "aws",
        "deadline_at": "2026-11-26T05:09:56.000Z",
    }
    assert "deadline_shrink" not in metrics
    # what the clock's reading is made of: the detection, then up to the final dump, ...
    assert metrics["deadline_phases_s"] == pytest.approx(
        {"detection": 0.4, "before_final_dump": 1.1, "final_dump": 0.3, "transfer": 1.2,
         "restore": 0.4, "orchestration_gap": 0.1}
    )  # fmt: skip
    assert sum(metrics["deadline_phases_s"].values()) == pytest.approx(metrics["migration_s"])


def test_a_missed_deadline_names_the_phase_that_would_have_to_shrink() -> None:
    metrics = build_metrics(experiment(), notice_pair(aws_notice(), downtime=40.0), T0, FINISHED)
    assert metrics["migration_s"] == pytest.approx(41.5)
    shrink = metrics["deadline_shrink"]
    assert set(shrink) == {"gcp_30s", "azure_30s"}
    assert shrink["gcp_30s"] == {
        "missed_by_s": 11.5,
        "phase": "transfer",
        "phase_s": 39.2,
        "shrink_to_s": 27.7,
    }
    lines = summary_text(metrics).splitlines()
    assert "  Deadline gcp_30s: MISSED (slack -11.50s)" in lines
    assert (
        "    to meet it, the transfer (39.20s) would have to shrink by 11.50s (to 27.70s)" in lines
    )


def test_when_no_single_phase_would_do() -> None:
    assert shrink_to_meet({"transfer": 2.0, "restore": 1.0}, 2.5) == {
        "missed_by_s": 2.5,
        "phase": None,
        "longest": "transfer",
        "longest_s": 2.0,
    }
    assert shrink_to_meet({}, 1.0) == {"missed_by_s": 1.0, "phase": None}


def test_the_summary_of_a_notice_triggered_run() -> None:
    metrics = build_metrics(experiment(), notice_pair(aws_notice()), T0, FINISHED)
    lines = summary_text(metrics).splitlines()
    for line in [
        "Trigger: aws spot notice (terminate), issued 05:07:56.000Z (the action time minus "
        "120 s), seen 05:07:56.400Z during the wait",
        "  Detection delay: 0.40s (polled every 1.00s, 9 polls)",
        "  While watching (2x): spot/instance-action is not JSON",
        "Notice -> migration done (deadline clock): 3.50s",
        "  Clock: detection 0.40s, before final dump 1.10s, final dump 0.30s, transfer 1.20s, "
        "restore 0.40s, orchestration gap 0.10s",
        "  Deadline aws_120s: met (slack 116.50s)",
        "  Deadline gcp_30s: met (slack 26.50s)",
        "  Deadline azure_30s: met (slack 26.50s)",
        "  Deadline notice (aws, 120 s): met (slack 116.50s)",
    ]:
        assert line in lines, line
    assert not any(line.startswith("Migration time") for line in lines)


def test_a_notice_seen_after_its_deadline_says_so() -> None:
    notice = aws_notice(notice_at=NOTICE_AT - 125.0)  # the action time was 5 s before
    metrics = build_metrics(experiment(), notice_pair(notice), T0, FINISHED)
    assert metrics["trigger"]["deadline_passed"] is True
    assert metrics["deadlines"]["notice"]["met"] is False
    warning = metrics["warnings"][-1]
    assert (
        warning["check"] == "notice_deadline_passed" and "migrating at once" in warning["message"]
    )
    text = summary_text(metrics)
    assert "had passed 5.4 s before it was seen: migrating at once" in text


def test_azure_notice_and_its_acknowledgement() -> None:
    document = (
        '{"DocumentIncarnation": 2, "Events": [{"EventId": "E1", "EventType": "Preempt", '
        '"EventStatus": "Scheduled", "NotBefore": "Thu, 26 Nov 2026 05:08:26 GMT"}]}'
    )
    _, parsed = parse_azure_events(Answer(200, "OK", {}, document.encode()), SEEN_AT)
    assert parsed is not None and parsed.notice_at == NOTICE_AT
    pair = notice_pair({**parsed.record(), "watch": {"polls": 3, "poll_s": 1.0}})
    pair.add(
        "notice_ack", {"acknowledged": True, "event_id": "E1", "at": RESTORED_AT + 5}, "source"
    )
    metrics = build_metrics(experiment(notice_provider="azure"), pair, T0, FINISHED)
    assert metrics["deadlines"]["notice"]["deadline_s"] == 30.0
    assert metrics["trigger"]["event_id"] == "E1"
    assert metrics["trigger"]["acknowledged"]["at"] == "2026-11-26T05:08:04.500Z"
    assert "  Acknowledged event E1 after the restore" in summary_text(metrics).splitlines()


def test_gcp_notice_is_flagged_as_seen() -> None:
    from spot_notice import parse_gcp_preempted

    parsed = parse_gcp_preempted(Answer(200, "OK", {"Metadata-Flavor": "Google"}, b"TRUE"), SEEN_AT)
    assert parsed is not None
    metrics = build_metrics(
        experiment(notice_provider="gcp"), notice_pair(parsed.record()), T0, FINISHED
    )
    assert metrics["detection_delay_s"] == 0
    assert metrics["trigger"]["notice_at_estimated"] is True
    assert metrics["migration_s"] == pytest.approx(RESTORED_AT - SEEN_AT)
    assert "(GCP gives no issue time)" in summary_text(metrics)


def test_a_notice_run_without_a_notice() -> None:
    pair = PairRecord("source", "destination", "/tmp/results/memory_x_failed")
    pair.failure = {
        "phase": "trigger",
        "task": "Wait for the spot notice",
        "host": "source",
        "msg": "no aws notice",
    }
    metrics = build_metrics(experiment(notice_endpoint="http://10.77.0.1:1"), pair, T0, FINISHED)
    assert metrics["trigger"] == {
        "kind": "notice",
        "provider": "aws",
        "endpoint": "http://10.77.0.1:1",
        "notice_at": None,
    }
    assert "Trigger: aws spot notice at http://10.77.0.1:1: none came" in summary_text(metrics)
    assert "notice_at" not in metrics["experiment"]


def test_ready_with_conditions_records_what_held_and_when() -> None:
    pair = notice_pair(aws_notice())
    del pair.phases["notice"], pair.phases["notice_probe"]
    pair.add(
        "trigger",
        {
            "kind": "ready",
            "held": {
                "migrate_at_rss_mb": {"wanted": 64, "reached": 66.5, "at": T0 + 9.0},
                "migrate_after_lines": {"wanted": 10, "reached": 10, "at": T0 + 8.0},
            },
            "ready_at": T0 + 4.0,
            "held_at": T0 + 9.0,
            "waited_s": 3.5,
            "after_ready_s": 5.0,
        },
        "source",
    )
    settings = {
        "trigger": "ready",
        "migrate_after_s": 0,
        "migrate_after_lines": 10,
        "migrate_at_rss_mb": 64,
    }
    metrics = build_metrics({**experiment(), "settings": settings}, pair, T0, FINISHED)
    trigger = metrics["trigger"]
    assert trigger["kind"] == "ready"
    assert trigger["conditions"] == {
        "migrate_after_s": 0,
        "migrate_after_lines": 10,
        "migrate_at_rss_mb": 64,
    }
    assert trigger["held"]["migrate_at_rss_mb"] == {
        "wanted": 64,
        "reached": 66.5,
        "at": "2026-11-26T05:07:55.000Z",
    }
    assert trigger["held_at"] == "2026-11-26T05:07:55.000Z" and trigger["waited_s"] == 3.5
    assert metrics["deadline_clock"]["start"] == "first checkpoint operation"
    assert "notice_at" not in metrics["experiment"] and "detection_delay_s" not in metrics
    lines = summary_text(metrics).splitlines()
    assert (
        "Trigger: ready, then migrate_after_lines=10 (10 at 05:07:54.000Z), migrate_at_rss_mb=64 "
        "(66.5 at 05:07:55.000Z); waited 3.50s" in lines
    )
    assert "Migration time (deadline clock): 2.00s" in lines


def test_ready_without_conditions_adds_no_summary_line() -> None:
    pair = notice_pair(aws_notice())
    del pair.phases["notice"], pair.phases["notice_probe"]
    metrics = build_metrics({**experiment(), "settings": {"trigger": "ready"}}, pair, T0, FINISHED)
    assert metrics["trigger"]["kind"] == "ready" and metrics["trigger"]["held_at"] is None
    assert not any(line.startswith("Trigger:") for line in summary_text(metrics).splitlines())
