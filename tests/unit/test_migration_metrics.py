"""metrics.json and the end-of-run summary (module_utils/metrics_report.py, formerly
module_utils/migration_metrics.py) against the metrics.json schema (README, metrics.json).

The pair is filled the way callback_plugins/migration_metrics.py fills it: one TaskRecord per
task (phase from its role) and the `migration_metrics` data each module returned, with the
CRIU figures decoded from a real stats image (tests/fixtures/criu_stats/full-dump).
"""

from __future__ import annotations

from typing import Any

import criu_stats
import pytest
from expected import METRICS_TOP_KEYS
from fakes import CRIU_STATS
from metrics_report import (
    CLOUD_DEADLINES_S,
    ROLE_PHASES,
    PairRecord,
    TaskRecord,
    build_metrics,
    deadline_verdicts,
    iso_utc,
    migration_window,
    summary_text,
    task_phase_totals,
    throughput_mb_s,
)

DUMP_STATS = criu_stats.summarize_stats_image(str(CRIU_STATS / "stats-dump"))["dump"]
RESTORE_STATS = criu_stats.summarize_stats_image(str(CRIU_STATS / "stats-restore"))["restore"]

T0 = 1795669666.380  # 2026-11-26T05:07:46.380Z: the experiment starts
DUMP_AT = T0 + 7.433  # the final dump starts
RESTORED_AT = DUMP_AT + 2.3  # the restore call returned
FINISHED = T0 + 14.159
IMAGES = "/var/lib/criu-migration/images/memory_20261126_050746"
WORK = "/var/lib/criu-migration/work/memory_20261126_050746"
RESULTS = "/work/main/results/memory_20261126_050746"


def experiment(**overrides: Any) -> dict[str, Any]:
    """What the migration_experiment module announces (library/migration_experiment.py)."""
    data: dict[str, Any] = {
        "id": "memory_20261126_050746",
        "name": "default-experiment",
        "started_at_epoch": T0,
        "workload": {
            "type": "memory",
            "params": {"mb_size": 64, "interval": 1.0, "max_memory": 512},
        },
        "strategy": {
            "mode": "full",
            "lazy_pages": False,
            "page_server": False,
            "predump_iterations": 8,
            "predump_interval": 10.0,
            "predump_mode": "fixed",
            "lazy_pages_mode": "images",
        },
        "transfer": {"method": "rsync", "cipher": "aes128-gcm@openssh.com"},
        "deadline_s": None,
        "inventory": "/work/main/inventories/lab/hosts.yml",
        "control": {"host": "vm", "git_revision": "cfc2481", "python": "3.11.7"},
    }
    data.update(overrides)
    return data


def task(host: str, name: str, role: str | None, start: float, duration: float) -> TaskRecord:
    return TaskRecord(
        host=host,
        task=name,
        role=role,
        phase=ROLE_PHASES.get(role or ""),
        start_epoch=start,
        duration_s=duration,
        status="ok",
    )


def environment(host: str) -> dict[str, Any]:
    return {
        "kernel": "6.18.44-fc-v595",
        "criu": "4.2.1",
        "criu_bin": "/usr/local/sbin/criu",
        "criu_check": "Looks good.",
        "features": {"mem_dirty_track": False, "uffd-noncoop": True},
        "hostname": host,
        "machine": "x86_64",
    }


def full_dump_pair() -> PairRecord:
    pair = PairRecord("source", "destination", RESULTS)
    pair.tasks = [
        task("localhost", "Validate the experiment", "preflight", T0 + 0.1, 0.2),
        task("source", "Probe CRIU", "criu", T0 + 1.0, 0.9),
        task("destination", "Probe CRIU", "criu", T0 + 1.1, 1.0),
        task("source", "Start the workload", "workload_start", DUMP_AT - 2.0, 1.5),
        task("source", "Final dump", "checkpoint_dump", DUMP_AT - 0.1, 0.62746),
        task("source", "Transfer", "checkpoint_transfer", DUMP_AT + 0.6, 1.2),
        task("destination", "Restore", "checkpoint_restore", DUMP_AT + 1.8, 0.55),
        task("destination", "Verify", "workload_verify", RESTORED_AT + 0.1, 0.4),
        task("source", "debug", None, RESTORED_AT + 1.0, 0.01),
    ]
    pair.add("environment", environment("source"), "source")
    pair.add("environment", environment("destination"), "destination")
    pair.add(
        "workload_start",
        {"pid": 17121, "ready_s": 0.41, "started_at": DUMP_AT - 1.9, "argv": ["python3"]},
        "source",
    )
    pair.add(
        "final_dump",
        {
            "duration_s": 0.52746,
            "started_at": DUMP_AT,
            "finished_at": DUMP_AT + 0.52746,
            "log_file": f"{IMAGES}/1/criu-dump.log",
            "images_dir": f"{IMAGES}/1",
            "stats": DUMP_STATS,
        },
        "source",
    )
    pair.add(
        "transfer",
        {
            "method": "rsync",
            "duration_s": 1.076072,
            "bytes": 141659526,
            "files": 16,
            "throughput_mb_s": 131.645,
            "dest_paths": [f"{IMAGES}/1", WORK],
            "wire_bytes": 141695510,
            "cipher": "aes128-gcm@openssh.com",
            "total_size": 141659526,
            "stage": "final",
        },
        "source",
    )
    pair.add(
        "restore",
        {
            "duration_s": 0.531,
            "started_at": RESTORED_AT - 0.531,
            "finished_at": RESTORED_AT,
            "log_file": f"{IMAGES}/1/criu-restore.log",
            "images_dir": f"{IMAGES}/1",
            "stats": RESTORE_STATS,
            "pid": 17121,
        },
        "destination",
    )
    pair.add(
        "verification",
        {
            "restored_running": True,
            "state_continuous": True,
            "seq_continuous": True,
            "app_downtime_s": 6.091225,
            "details": "pid 17121 runs on destination, seq 8 -> 9, 6 checks passed",
        },
        "destination",
    )
    return pair


def predump_pair(durations: tuple[float, ...] = (1.2, 0.8, 0.7)) -> PairRecord:
    pair = full_dump_pair()
    start = DUMP_AT - 30.0
    for index, duration in enumerate(durations, start=1):
        pair.add(
            "predump",
            {
                "duration_s": duration,
                "started_at": start + 10.0 * (index - 1),
                "images_dir": f"{IMAGES}/{index}",
                "stats": {
                    "pages_written": 17062 if index == 1 else 1582,
                    "pages_skipped_parent": 0 if index == 1 else 15480,
                    "bytes_written": (17062 if index == 1 else 1582) * 4096,
                    "frozen_s": 0.066,
                },
            },
            "source",
        )
    return pair


def metrics_of(pair: PairRecord, **overrides: Any) -> dict[str, Any]:
    return build_metrics(experiment(**overrides), pair, T0, FINISHED)


# -- schema and numbers --------------------------------------------------------------------


def test_every_schema_key_is_present() -> None:
    metrics = metrics_of(full_dump_pair())
    assert set(metrics) >= METRICS_TOP_KEYS
    assert set(metrics["experiment"]) >= {"name", "started_at", "finished_at"}
    assert set(metrics["workload"]) >= {"type", "params", "source_pid"}
    assert set(metrics["strategy"]) >= {"mode", "lazy_pages", "page_server"}
    # a full dump: no pre-dump ran, so there is no predump phase
    assert set(metrics["phases"]) == {"final_dump", "transfer", "restore"}
    with_predumps = metrics_of(predump_pair())["phases"]
    assert set(with_predumps) == {"predump", "final_dump", "transfer", "restore"}
    assert set(with_predumps["predump"]) >= {"iterations", "total_s", "average_s"}
    assert set(metrics["phases"]["final_dump"]) >= {
        "duration_s",
        "frozen_s",
        "pages_written",
        "bytes",
    }
    assert set(metrics["phases"]["transfer"]) >= {
        "method",
        "duration_s",
        "bytes",
        "throughput_mb_s",
    }
    assert set(metrics["phases"]["restore"]) >= {"duration_s"}
    assert set(metrics["deadlines"]) == {"aws_120s", "gcp_30s", "azure_30s"}
    for verdict in metrics["deadlines"].values():
        assert set(verdict) >= {"met", "slack_s"}
    assert set(metrics["verification"]) >= {"restored_running", "state_continuous", "details"}
    assert set(metrics["environment"]) >= {"source", "destination"}
    for record in metrics["tasks"]:
        assert set(record) >= {"host", "task", "role", "start", "duration_s"}


def test_full_dump_metrics() -> None:
    metrics = metrics_of(full_dump_pair())
    assert metrics["status"] == "ok"
    assert "failure" not in metrics
    assert metrics["experiment"] == {
        "name": "default-experiment",
        "id": "memory_20261126_050746",
        "started_at": "2026-11-26T05:07:46.380Z",
        "finished_at": "2026-11-26T05:08:00.539Z",
        "duration_s": 14.159,
        "results_dir": RESULTS,
        "inventory": "/work/main/inventories/lab/hosts.yml",
    }
    assert metrics["hosts"] == {"source": "source", "destination": "destination"}
    assert metrics["workload"] == {
        "type": "memory",
        "params": {"mb_size": 64, "interval": 1.0, "max_memory": 512},
        "source_pid": 17121,
    }
    assert metrics["strategy"] == experiment()["strategy"]  # as the experiment announced it
    assert "predump" not in metrics["phases"]  # checkpoint_strategy=full: no pre-dump ran


def test_final_dump_section_from_the_decoded_stats_image() -> None:
    dump = metrics_of(full_dump_pair())["phases"]["final_dump"]
    # CRIU 4.2.1's stats-dump of the fixture: frozen_time 13432 us, 2750 pages of 4 KiB
    assert dump["duration_s"] == 0.52746
    assert dump["frozen_s"] == 0.013432
    assert dump["pages_written"] == 2750
    assert dump["bytes"] == 11264000
    assert dump["started_at"] == "2026-11-26T05:07:53.813Z"
    assert dump["stats"]["memdump_s"] == 0.007282


def test_transfer_and_restore_sections() -> None:
    phases = metrics_of(full_dump_pair())["phases"]
    assert phases["transfer"] == {
        "method": "rsync",
        "duration_s": 1.076072,
        "bytes": 141659526,
        "files": 16,
        "throughput_mb_s": 131.645,  # 141.659526 MB / 1.076072 s
        "dest_paths": [f"{IMAGES}/1", WORK],
        "wire_bytes": 141695510,
        "cipher": "aes128-gcm@openssh.com",
        "total_size": 141659526,
    }
    restore = phases["restore"]
    assert restore["duration_s"] == 0.531
    assert restore["finished_at"] == "2026-11-26T05:07:56.113Z"
    assert restore["pid"] == 17121
    assert restore["stats"]["pages_restored"] == 2750
    assert restore["stats"]["restore_s"] == 0.014574


def test_downtime_runs_from_the_final_dump_to_the_restore() -> None:
    metrics = metrics_of(full_dump_pair())
    assert metrics["downtime_s"] == 2.3  # restore.finished_at - final_dump.started_at
    assert metrics["app_downtime_s"] == 6.091225  # from the verification, not the tasks
    assert "app_downtime_s" not in metrics["verification"]
    assert metrics["verification"] == {
        "restored_running": True,
        "state_continuous": True,
        "seq_continuous": True,
        "details": "pid 17121 runs on destination, seq 8 -> 9, 6 checks passed",
    }


def test_deadlines_of_a_full_dump() -> None:
    metrics = metrics_of(full_dump_pair())
    assert metrics["migration_s"] == 2.3
    assert metrics["deadline_clock"] == {
        "start": "first checkpoint operation",
        "started_at": "2026-11-26T05:07:53.813Z",
        "stopped_at": "2026-11-26T05:07:56.113Z",
    }
    assert metrics["deadlines"] == {
        "aws_120s": {"deadline_s": 120.0, "met": True, "slack_s": 117.7},
        "gcp_30s": {"deadline_s": 30.0, "met": True, "slack_s": 27.7},
        "azure_30s": {"deadline_s": 30.0, "met": True, "slack_s": 27.7},
    }


def test_environment_per_host_and_control() -> None:
    environment_section = metrics_of(full_dump_pair())["environment"]
    assert environment_section["source"] == environment("source")
    assert environment_section["destination"] == environment("destination")
    assert environment_section["control"] == {
        "host": "vm",
        "git_revision": "cfc2481",
        "python": "3.11.7",
    }


def test_tasks_and_phase_totals() -> None:
    metrics = metrics_of(full_dump_pair())
    assert metrics["tasks"][4] == {
        "host": "source",
        "task": "Final dump",
        "role": "checkpoint_dump",
        "phase": "final_dump",
        "duration_s": 0.62746,
        "status": "ok",
        "start": "2026-11-26T05:07:53.713Z",
    }
    assert len(metrics["tasks"]) == 9
    assert metrics["phase_totals_s"] == {
        "preflight": 0.2,
        "node_checks": 1.1,  # source's 1.0-1.9 and destination's 1.1-2.1: one span
        "workload_start": 1.5,
        "final_dump": 0.62746,
        "transfer": 1.2,
        "restore": 0.55,
        "verification": 0.4,
    }


# -- pre-dumps ------------------------------------------------------------------------------


def test_predump_iterations_total_and_average() -> None:
    metrics = metrics_of(predump_pair(), strategy={"mode": "predump"})
    predump = metrics["phases"]["predump"]
    assert predump["total_s"] == 2.7
    assert predump["average_s"] == 0.9
    assert [it["index"] for it in predump["iterations"]] == [1, 2, 3]
    assert [it["duration_s"] for it in predump["iterations"]] == [1.2, 0.8, 0.7]
    assert [it["pages_written"] for it in predump["iterations"]] == [17062, 1582, 1582]
    assert [it["pages_skipped"] for it in predump["iterations"]] == [0, 15480, 15480]
    assert [it["bytes"] for it in predump["iterations"]] == [69885952, 6479872, 6479872]
    assert predump["iterations"][0]["frozen_s"] == 0.066
    assert metrics["strategy"]["mode"] == "predump"


def test_predump_starts_the_deadline_clock() -> None:
    metrics = metrics_of(predump_pair())
    # the first pre-dump started 30 s before the final dump; restored 2.3 s after it
    assert metrics["migration_s"] == 32.3
    assert metrics["downtime_s"] == 2.3
    assert metrics["deadline_clock"]["started_at"] == "2026-11-26T05:07:23.813Z"
    assert metrics["deadlines"]["aws_120s"] == {"deadline_s": 120.0, "met": True, "slack_s": 87.7}
    assert metrics["deadlines"]["gcp_30s"] == {"deadline_s": 30.0, "met": False, "slack_s": -2.3}


def test_predump_stop_decision_is_recorded() -> None:
    pair = predump_pair()
    pair.add("predump_stop", {"reason": "dirty set stopped shrinking", "iterations": 3}, "source")
    predump = metrics_of(pair)["phases"]["predump"]
    assert predump["stop"] == {"reason": "dirty set stopped shrinking", "iterations": 3}


def test_explicit_predump_index_wins() -> None:
    pair = PairRecord("s", "d", "/r")
    pair.add("predump", {"index": 4, "duration_s": 0.5}, "s")
    iterations = build_metrics(experiment(), pair, T0, FINISHED)["phases"]["predump"]["iterations"]
    assert iterations == [
        {
            "index": 4,
            "duration_s": 0.5,
            "pages_written": 0,
            "pages_skipped": 0,
            "bytes": 0,
            "frozen_s": None,
            "stats": {},
        }
    ]


def test_predump_transfers_are_kept_beside_the_final_one() -> None:
    pair = predump_pair()
    pair.phases["transfer"].insert(
        0,
        {
            "host": "source",
            "method": "rsync",
            "duration_s": 0.5,
            "bytes": 69885952,
            "stage": "predump-1",
        },
    )
    transfer = metrics_of(pair)["phases"]["transfer"]
    assert transfer["bytes"] == 141659526  # the final one
    assert transfer["predump_transfers"] == [
        {"method": "rsync", "duration_s": 0.5, "bytes": 69885952, "stage": "predump-1"}
    ]


# -- deadlines ------------------------------------------------------------------------------


def forty_five_second_migration() -> PairRecord:
    pair = PairRecord("source", "destination", RESULTS)
    pair.add("predump", {"duration_s": 3.0, "started_at": T0 + 10.0}, "source")
    pair.add("final_dump", {"duration_s": 2.0, "started_at": T0 + 40.0}, "source")
    pair.add("restore", {"duration_s": 1.5, "finished_at": T0 + 55.0}, "destination")
    return pair


def test_a_45_second_migration_misses_gcp_and_azure_and_meets_aws() -> None:
    metrics = build_metrics(experiment(), forty_five_second_migration(), T0, T0 + 60.0)
    assert metrics["migration_s"] == 45.0
    assert metrics["downtime_s"] == 15.0
    assert metrics["deadlines"] == {
        "aws_120s": {"deadline_s": 120.0, "met": True, "slack_s": 75.0},
        "gcp_30s": {"deadline_s": 30.0, "met": False, "slack_s": -15.0},
        "azure_30s": {"deadline_s": 30.0, "met": False, "slack_s": -15.0},
    }


@pytest.mark.parametrize(
    ("deadline_s", "key", "verdict"),
    [
        (60, "user_60s", {"deadline_s": 60.0, "met": True, "slack_s": 15.0}),
        (40.5, "user_40.5s", {"deadline_s": 40.5, "met": False, "slack_s": -4.5}),
        (45.0, "user_45s", {"deadline_s": 45.0, "met": True, "slack_s": 0.0}),
    ],
)
def test_user_deadline(deadline_s: float, key: str, verdict: dict[str, Any]) -> None:
    metrics = build_metrics(
        experiment(deadline_s=deadline_s), forty_five_second_migration(), T0, T0 + 60.0
    )
    assert metrics["deadlines"][key] == verdict
    assert len(metrics["deadlines"]) == 4


def test_spot_notice_starts_the_deadline_clock() -> None:
    metrics = build_metrics(
        experiment(notice_at=T0 + 5.0), forty_five_second_migration(), T0, T0 + 60.0
    )
    assert metrics["migration_s"] == 50.0
    assert metrics["deadline_clock"]["start"] == "spot notice"
    assert metrics["deadlines"]["aws_120s"]["slack_s"] == 70.0


def test_no_restore_means_no_verdict() -> None:
    pair = forty_five_second_migration()
    del pair.phases["restore"]
    metrics = build_metrics(experiment(deadline_s=60), pair, T0, T0 + 60.0)
    assert metrics["migration_s"] is None
    assert metrics["downtime_s"] is None
    for name in ("aws_120s", "gcp_30s", "azure_30s", "user_60s"):
        assert metrics["deadlines"][name]["met"] is False
        assert metrics["deadlines"][name]["slack_s"] is None


def test_deadline_verdicts_directly() -> None:
    assert CLOUD_DEADLINES_S == {"aws_120s": 120.0, "gcp_30s": 30.0, "azure_30s": 30.0}
    assert deadline_verdicts(30.0) == {
        "aws_120s": {"deadline_s": 120.0, "met": True, "slack_s": 90.0},
        "gcp_30s": {"deadline_s": 30.0, "met": True, "slack_s": 0.0},
        "azure_30s": {"deadline_s": 30.0, "met": True, "slack_s": 0.0},
    }
    assert deadline_verdicts(30.0001)["gcp_30s"] == {
        "deadline_s": 30.0,
        "met": False,
        "slack_s": -0.0,
    }
    assert deadline_verdicts(10.0, 0)["aws_120s"]["slack_s"] == 110.0
    assert len(deadline_verdicts(10.0, 0)) == 3  # deadline_s=0: no deadline of one's own


def test_migration_window_without_checkpoints() -> None:
    pair = PairRecord("s", "d", "/r")
    pair.add("restore", {"finished_at": 5.0}, "d")
    assert migration_window(pair) == (None, 5.0)
    assert migration_window(pair, notice_at=1.0) == (1.0, 5.0)


# -- status ----------------------------------------------------------------------------------


def test_failed_status_and_failure() -> None:
    pair = full_dump_pair()
    pair.failure = {
        "phase": "restore",
        "role": "checkpoint_restore",
        "task": "Restore",
        "host": "destination",
        "msg": "criu restore failed on destination (rc=1): Error (criu/cr-restore.c:1480): Can't fork for 17121: File exists",
    }
    metrics = metrics_of(pair)
    assert metrics["status"] == "failed"
    assert metrics["failure"] == pair.failure
    text = summary_text(metrics)
    assert "Status: failed" in text.splitlines()
    assert "FAILED in restore: Restore on destination" in text.splitlines()


def test_exception_status() -> None:
    pair = full_dump_pair()
    pair.failure = {"phase": "transfer", "task": "Transfer", "host": "source", "msg": "Traceback"}
    pair.exception = True
    assert metrics_of(pair)["status"] == "exception"
    bare = PairRecord("s", "d", "/r", exception=True)
    assert bare.status == "exception"


def test_extra_sections_only_when_recorded() -> None:
    metrics = metrics_of(full_dump_pair())
    assert "capture" not in metrics and "rollback" not in metrics and "warnings" not in metrics
    pair = full_dump_pair()
    pair.add("rollback", {"pid": 17121, "duration_s": 0.4}, "source")
    pair.add("lazy_pages", {"pid": 999, "port": 27001}, "destination")
    metrics = metrics_of(pair)
    assert metrics["rollback"] == [{"host": "source", "pid": 17121, "duration_s": 0.4}]
    assert metrics["phases"]["restore"]["lazy_pages"] == {"pid": 999, "port": 27001}


def test_empty_pair() -> None:
    metrics = build_metrics({}, PairRecord("s", "d", "/r"), T0, T0 + 1.0)
    assert metrics["status"] == "ok"
    assert metrics["phases"] == {}  # nothing ran: no phase, no made-up 0.0
    assert metrics["environment"] == {"control": {}}
    assert metrics["verification"] == {}


# -- phases that did not run --------------------------------------------------------------------


def failed_before_the_dump() -> PairRecord:
    """The workload started, then the dump task failed: no CRIU call was recorded."""
    pair = full_dump_pair()
    for phase in ("final_dump", "transfer", "restore", "verification"):
        del pair.phases[phase]
    pair.failure = {"phase": "final_dump", "task": "Final dump", "host": "source", "msg": "rc=1"}
    return pair


def test_a_pair_without_a_dump_has_no_final_dump() -> None:
    metrics = metrics_of(failed_before_the_dump())
    assert metrics["phases"] == {}
    assert metrics["downtime_s"] is None and metrics["migration_s"] is None
    lines = summary_text(metrics).splitlines()
    start = lines.index("Final Dump:")
    assert lines[start : start + 9] == [
        "Final Dump:",
        "  Duration: n/a",
        "Transfer:",
        "  Method: n/a",
        "  Duration: n/a",
        "  Size: n/a",
        "  Throughput: n/a",
        "Restore:",
        "  Duration: n/a",
    ]
    assert not any("0.00s" in line or "0.00 MB" in line for line in lines)
    assert "FAILED in final_dump: Final dump on source" in lines


def test_only_the_phases_that_ran_are_present() -> None:
    pair = full_dump_pair()
    del pair.phases["transfer"], pair.phases["restore"]  # the transfer failed: no record
    metrics = metrics_of(pair)
    assert set(metrics["phases"]) == {"final_dump"}
    lines = summary_text(metrics).splitlines()
    assert "  Duration: 0.53s (frozen 0.01s, 2750 pages, 11.26 MB)" in lines
    assert lines[lines.index("Transfer:") + 2] == "  Duration: n/a"
    assert lines[lines.index("Restore:") + 1] == "  Duration: n/a"


def test_full_strategy_has_no_predump_phase() -> None:
    metrics = metrics_of(full_dump_pair())
    assert "predump" not in metrics["phases"]
    assert not any(line.startswith("Pre-dump") for line in summary_text(metrics).splitlines())


def test_predump_strategy_without_a_recorded_predump_shows_na() -> None:
    pair = failed_before_the_dump()
    metrics = metrics_of(pair, strategy={"mode": "predump"})
    assert "predump" not in metrics["phases"]
    assert "Pre-dump Iterations: n/a" in summary_text(metrics).splitlines()


def test_a_dump_without_stats_has_null_figures_not_zeros() -> None:
    pair = full_dump_pair()
    pair.phases["final_dump"][0]["stats"] = {}
    dump = metrics_of(pair)["phases"]["final_dump"]
    assert dump["duration_s"] == 0.52746
    assert (dump["frozen_s"], dump["pages_written"], dump["bytes"]) == (None, None, None)
    lines = summary_text(metrics_of(pair)).splitlines()
    assert "  Duration: 0.53s (frozen n/a, n/a pages, n/a MB)" in lines


def test_only_predump_transfers_leave_the_final_transfer_null() -> None:
    pair = predump_pair()
    pair.phases["transfer"] = [
        {
            "host": "source",
            "method": "rsync",
            "duration_s": 0.5,
            "bytes": 4096,
            "stage": "predump-1",
        }
    ]
    del pair.phases["final_dump"], pair.phases["restore"]
    transfer = metrics_of(pair)["phases"]["transfer"]
    assert transfer == {
        "method": None,
        "duration_s": None,
        "bytes": None,
        "files": None,
        "throughput_mb_s": None,
        "predump_transfers": [
            {"method": "rsync", "duration_s": 0.5, "bytes": 4096, "stage": "predump-1"}
        ],
    }
    lines = summary_text(metrics_of(pair)).splitlines()
    assert "  Iteration 1: 1.20s (17062 pages written), sent in 0.50s" in lines
    assert lines[lines.index("Transfer:") + 1 :][:4] == [
        "  Method: n/a",
        "  Duration: n/a",
        "  Size: n/a",
        "  Throughput: n/a",
    ]


def test_a_failed_restore_keeps_the_page_servers_figures() -> None:
    pair = full_dump_pair()
    del pair.phases["restore"]  # a failed CRIU restore returns no figures
    pair.add("page_server", {"pages_received": 2750, "bytes_received": 11264000}, "destination")
    restore = metrics_of(pair)["phases"]["restore"]
    assert restore == {
        "duration_s": None,
        "finished_at": None,
        "pid": None,
        "stats": {},
        "clock": None,
        "cmd": None,
        "page_server": {"pages_received": 2750, "bytes_received": 11264000},
    }
    lines = summary_text(metrics_of(pair)).splitlines()
    assert lines[lines.index("Restore:") + 1] == "  Duration: n/a"
    assert "  Page server: 2750 pages received (11.26 MB) in a n/a session" in lines


def test_summary_says_when_metrics_json_was_not_written() -> None:
    metrics = metrics_of(full_dump_pair())
    assert "save_metrics" not in summary_text(metrics)
    lines = summary_text(metrics, metrics_written=False).splitlines()
    assert lines[-3:] == [
        f"Results: {RESULTS}",
        "metrics.json was not written (save_metrics=false)",
        "=" * 60,
    ]
    assert lines[:-2] == summary_text(metrics).splitlines()[:-1]


# -- helpers ---------------------------------------------------------------------------------


def test_iso_utc_and_throughput() -> None:
    assert iso_utc(T0) == "2026-11-26T05:07:46.380Z"
    assert iso_utc(None) is None
    assert throughput_mb_s(141659526, 1.076072) == 131.645
    assert throughput_mb_s(1_000_000, 0) == 0.0


def test_task_phase_totals_ignore_tasks_without_phase() -> None:
    tasks = [
        task("s", "a", "checkpoint_dump", 100.0, 0.5),
        task("s", "b", "checkpoint_dump", 100.6, 0.2),
        task("s", "c", "unknown_role", 90.0, 50.0),
        task("s", "d", None, 90.0, 50.0),
    ]
    assert task_phase_totals(tasks) == {"final_dump": 0.8}


# -- the summary -----------------------------------------------------------------------------


def test_summary_has_the_seeds_lines() -> None:
    text = summary_text(metrics_of(predump_pair()))
    lines = text.splitlines()
    for line in [
        "CRIU Experiment Metrics: default-experiment",
        "Workload Type: memory",
        "Hosts: source -> destination",
        "Status: ok",
        "Pre-dump Iterations: 3",
        "  Total time: 2.70s",
        "  Average time: 0.90s",
        "  Iteration 1: 1.20s (17062 pages written)",
        "  Iteration 2: 0.80s (1582 pages written)",
        "  Iteration 3: 0.70s (1582 pages written)",
        "Final Dump:",
        "  Duration: 0.53s (frozen 0.01s, 2750 pages, 11.26 MB)",
        "Transfer:",
        "  Method: rsync",
        "  Duration: 1.08s",
        "  Size: 141.66 MB",
        "  Throughput: 131.65 MB/s",
        "Restore:",
        "  Duration: 0.53s",
        "Downtime (dump start -> restored): 2.30s (stepwise; orchestration gap 0.17s)",
        "Migration time (deadline clock): 32.30s",
        "  Deadline aws_120s: met (slack 87.70s)",
        "  Deadline gcp_30s: MISSED (slack -2.30s)",
        "  Deadline azure_30s: MISSED (slack -2.30s)",
        "Verification: restored_running=True state_continuous=True",
        "Total Experiment Duration: 14.16s",
        f"Results: {RESULTS}",
    ]:
        assert line in lines, line
    assert any(
        line.startswith("App-perceived downtime (progress.log gap): 6.09s") for line in lines
    )
    assert lines[0] == "=" * 60
    assert lines[-1] == "=" * 60


def test_summary_of_a_full_dump_has_no_predump_lines() -> None:
    text = summary_text(metrics_of(full_dump_pair()))
    assert "Pre-dump Iterations" not in text
    assert "FAILED" not in text


def test_summary_without_a_restore() -> None:
    pair = full_dump_pair()
    del pair.phases["restore"]
    del pair.phases["verification"]
    lines = summary_text(metrics_of(pair)).splitlines()
    assert "Downtime (dump start -> restored): n/a (stepwise; orchestration gap n/a)" in lines
    assert any(line.startswith("App-perceived downtime (progress.log gap): n/a") for line in lines)
    assert "  Deadline gcp_30s: n/a" in lines
    assert not any(line.startswith("Verification:") for line in lines)


def test_a_failed_restore_stops_no_deadline_clock() -> None:
    # the fused call records a restore that failed: it restored nothing, so no deadline
    # is met on its account
    pair = full_dump_pair()
    pair.phases["restore"][-1]["failed"] = True
    metrics = metrics_of(pair)
    assert metrics["migration_s"] is None
    assert all(verdict["met"] is False for verdict in metrics["deadlines"].values())
