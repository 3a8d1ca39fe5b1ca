"""migrate.yml end to end in the local lab, through ansible-runner (real CRIU, real SSH)."""

from __future__ import annotations

import json
from collections import defaultdict
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest
from conftest import on_host, run_playbook
from expected import METRICS_TOP_KEYS
from helpers import (
    assert_continuous,
    assert_progress_continues,
    assert_refused_before_any_host,
    assert_refused_before_the_workload,
    end_workload,
    epoch,
    failed_run,
    progress,
    sent_bytes,
    workload_processes,
)

pytestmark = pytest.mark.lab

# Larger than helpers.SMALL_MEMORY's, with the seed's observation window after the restore.
SMALL_MEMORY = {"workload": "memory", "mb_size": 32, "interval": 0.5, "max_memory": 256}

# The task phases (roles) every successful migration runs, in the order they start, with
# its critical path's in the middle: one call of the critical_path role (fused, the
# default) or a dump, a transfer and a restore task (stepwise).
PHASES_BEFORE = ("node_checks", "deploy", "workload_start")
CRITICAL_PATH_PHASES = {
    "fused": ("critical_path",),
    "stepwise": ("final_dump", "transfer", "restore"),
}
PHASES_AFTER = ("verification", "finish", "collect", "cleanup")
# metrics.json's ISO stamps carry milliseconds: comparisons between stamps allow this much.
STAMP_SLACK_S = 0.002
# Each host's clock read is one Ansible task over SSH; its offset is known to half the
# task's round trip. Measured in this lab (12 runs, others' experiments running beside):
# 0.20-0.47 s per host (0.43-0.93 s for the pair), 0.60 s per host while the guest image
# was being built on the same 2 cores; the offsets themselves stayed within 0.09 s.
# Beyond this bound the offset says nothing about the clocks.
CLOCK_READ_UNCERTAINTY_MAX_S = 1.0


def assert_clock_offsets_come_from_both_reads(metrics: dict[str, Any]) -> None:
    """Both lab hosts read this machine's one clock: each host's offset is within its own
    uncertainty, that uncertainty is half its clock-read task and small, and the pair's
    figures are built from the two hosts' reads."""
    offsets = metrics["clock_offsets"]
    reads: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for task in metrics["tasks"]:
        if task["role"] == "node_checks" and "clock" in task["task"].lower():
            reads[task["host"]].append(task)
    for role in ("source", "destination"):
        host = metrics["hosts"][role]
        assert reads[host], f"no clock-read task on {host}: {metrics['tasks']}"
        own = offsets[role]
        # the control node stamped the read's task; the host read its clock inside it
        assert own["uncertainty_s"] == pytest.approx(reads[host][-1]["duration_s"] / 2, abs=0.005)
        assert 0 < own["uncertainty_s"] < CLOCK_READ_UNCERTAINTY_MAX_S, offsets
        assert abs(own["offset_s"]) <= own["uncertainty_s"], offsets
    assert offsets["destination_host"] == metrics["hosts"]["destination"]
    assert offsets["destination_minus_source_s"] == pytest.approx(
        offsets["destination"]["offset_s"] - offsets["source"]["offset_s"], abs=2e-6
    )
    assert offsets["uncertainty_s"] == pytest.approx(
        offsets["destination"]["uncertainty_s"] + offsets["source"]["uncertainty_s"], abs=2e-6
    )
    assert abs(offsets["destination_minus_source_s"]) <= offsets["uncertainty_s"], offsets


def assert_task_timings_consistent(metrics: dict[str, Any]) -> None:
    """Per-task timings that hang together: inside the experiment, one task at a time per
    host, phase totals that are their tasks' spans, every phase of a migration present and
    in order, and the critical path's own figures inside the tasks that ran it."""
    started, finished = (epoch(metrics["experiment"][k]) for k in ("started_at", "finished_at"))
    spans: dict[str, list[float]] = {}
    busy: dict[tuple[str, str], float] = defaultdict(float)
    by_host: dict[str, list[tuple[float, float, str]]] = defaultdict(list)
    for task in metrics["tasks"]:
        start = epoch(task["start"])
        end = start + task["duration_s"]
        assert task["duration_s"] > 0, task
        assert started - STAMP_SLACK_S <= start and end <= finished + STAMP_SLACK_S, (
            f"{task} is outside the experiment {metrics['experiment']}"
        )
        by_host[task["host"]].append((start, end, task["task"]))
        if task["phase"]:
            lo, hi = spans.setdefault(task["phase"], [start, end])
            spans[task["phase"]] = [min(lo, start), max(hi, end)]
            busy[(task["phase"], task["host"])] += task["duration_s"]
    for host, runs in by_host.items():
        runs.sort()
        for (_, end, name), (start, _, following) in pairwise(runs):
            assert start >= end - STAMP_SLACK_S, (
                f"{host}: '{following}' began before '{name}' ended"
            )

    totals = metrics["phase_totals_s"]
    assert set(totals) == set(spans)
    for phase, (lo, hi) in spans.items():
        assert totals[phase] == pytest.approx(hi - lo, abs=STAMP_SLACK_S), phase
    for (phase, host), seconds in busy.items():  # a host's tasks of a phase fit in its span
        assert seconds <= totals[phase] + STAMP_SLACK_S, (phase, host, seconds, totals[phase])

    path = metrics["critical_path"]["path"]
    order = [*PHASES_BEFORE, *CRITICAL_PATH_PHASES[path], *PHASES_AFTER]
    assert set(order) | {"capture", "restore"} <= set(spans), sorted(spans)
    assert sorted(order, key=lambda phase: spans[phase][0]) == order, spans
    # the critical path's own measures fit inside the Ansible tasks that ran it
    if path == "fused":
        assert 0 < metrics["downtime_s"] <= totals["critical_path"], (
            metrics["critical_path"],
            totals,
        )
    else:
        for phase in CRITICAL_PATH_PHASES["stepwise"]:
            assert 0 < metrics["phases"][phase]["duration_s"] <= totals[phase] + STAMP_SLACK_S


def test_memory_migration_end_to_end(lab: Path, tmp_path: Path) -> None:
    run = run_playbook(tmp_path, "migrate.yml", {**SMALL_MEMORY, "keep_images": True})
    assert run.rc == 0, run.stdout[-5000:]
    results = run.only_results_dir()
    assert not results.name.endswith(("_failed", "_exception"))
    metrics = run.metrics()
    assert set(metrics) >= METRICS_TOP_KEYS
    assert metrics["status"] == "ok"
    assert metrics["workload"]["type"] == "memory"
    assert metrics["workload"]["params"] == {"mb_size": 32, "interval": 0.5, "max_memory": 256}
    assert metrics["strategy"]["mode"] == "full"

    # The summary block was printed by the callback, also under ansible-runner.
    assert "CRIU Experiment Metrics: default-experiment" in run.stdout
    assert "Total Experiment Duration:" in run.stdout

    phases = metrics["phases"]
    dump, transfer, restore = phases["final_dump"], phases["transfer"], phases["restore"]
    assert dump["duration_s"] > 0 and transfer["duration_s"] > 0 and restore["duration_s"] > 0
    # frozen_s and the page count come from CRIU's own stats-dump image.
    import criu_stats

    stats = criu_stats.summarize_stats_image(str(results / "source" / "1" / "stats-dump"))["dump"]
    assert dump["frozen_s"] == pytest.approx(stats["frozen_s"])
    assert dump["pages_written"] == stats["pages_written"] > 0
    assert 0 < dump["frozen_s"] <= dump["duration_s"]
    restore_stats = criu_stats.summarize_stats_image(str(results / "dest" / "1" / "stats-restore"))[
        "restore"
    ]
    assert restore["stats"]["pages_restored"] == restore_stats["pages_restored"] > 0

    # Transfer bytes: exactly the image folder plus the working directory that were sent.
    assert transfer["method"] == "rsync"
    assert transfer["bytes"] == sent_bytes(results)
    assert transfer["throughput_mb_s"] == pytest.approx(
        transfer["bytes"] / 1e6 / transfer["duration_s"], rel=1e-3
    )

    # Downtime spans dump start to restored process; the deadline verdicts follow from it.
    assert metrics["downtime_s"] >= dump["duration_s"] + restore["duration_s"]
    assert metrics["deadlines"]["aws_120s"]["met"] is True
    assert metrics["deadlines"]["gcp_30s"]["slack_s"] == pytest.approx(
        30 - metrics["migration_s"], abs=1e-3
    )
    # The two app-perceived measures agree with the phase timings (one clock in the lab):
    # the workload's last line precedes the end of the dump and its first line on the
    # destination follows the restore; strace's window closes before the dump and opens
    # after the restore, so it bounds the downtime from above.
    assert metrics["app_downtime_s"] >= metrics["downtime_s"] - dump["duration_s"]
    assert metrics["app_downtime"]["strace_s"] >= metrics["downtime_s"]
    assert_clock_offsets_come_from_both_reads(metrics)

    verification = metrics["verification"]
    assert_continuous(verification)
    assert verification["same_pid"] is True
    assert {c["name"] for c in verification["checks"]} >= {
        "seq",
        "equal:sample_checksum",
        "close:rss_anon_kb",
    }

    # progress.log on the destination continues the source's lines, on the destination host.
    lines = progress(results)
    hosts = [line["host"] for line in lines]
    assert hosts[0] == "source" and "destination" in hosts
    assert_progress_continues(lines)

    # The results layout (README: Running experiments), with real content in the capture files.
    for path in (
        "source/criu-dump.log",
        "source/workload_status_pre_dump.txt",
        "source/workload_stdout_pre_dump.log",
        "source/workload_stdout_pre_dump.log.raw",
        "source/workload_stdout_pre_dump.log.info",
        "dest/criu-restore.log",
        "dest/workload_status_post_restore.txt",
        "dest/workload_stdout_post_restore.log",
        "dest/workload_stdout_post_restore.log.raw",
        "dest/workload_stdout_post_restore.log.info",
        "metrics.json",
        "journal.json",
    ):
        assert (results / path).stat().st_size > 0, path
    assert any((results / "source" / "1").glob("pages-*.img"))  # keep_images=true
    assert "fd=3" in (results / "dest" / "workload_stdout_post_restore.log").read_text()

    # Per-task timings with phases from roles: every phase of a migration, consistent timings.
    assert metrics["critical_path"]["path"] == "fused"  # group_vars/all.yml's default
    assert_task_timings_consistent(metrics)
    assert {task["host"] for task in metrics["tasks"]} >= {"source", "destination"}
    assert metrics["environment"]["source"]["criu"] == "4.2.1"
    assert metrics["environment"]["destination"]["kernel"]

    journal = json.loads((results / "journal.json").read_text())
    assert journal["location"] == "finished"
    steps = [step["step"] for step in journal["steps"]]
    order = [
        "workload_start (source)",
        "final_dump (checkpointed (not running))",
        "restore (destination)",
    ]
    assert [steps.index(step) for step in order] == sorted(steps.index(step) for step in order)
    assert steps[-2:] == ["finish (finished)", "experiment ok"]

    # The workload ended on the destination and runs nowhere; images left the hosts.
    experiment_id = metrics["experiment"]["id"]
    assert workload_processes("source", experiment_id) == []
    assert workload_processes("destination", experiment_id) == []


def test_restore_failure_rolls_back_to_source(lab: Path, tmp_path: Path) -> None:
    run = run_playbook(
        tmp_path, "migrate.yml", {**SMALL_MEMORY, "inject_fault": "restore_pid_busy"}
    )
    results, metrics = failed_run(run)
    assert metrics["status"] == "failed"
    assert metrics["failure"]["phase"] == "restore"
    assert "File exists" in metrics["failure"]["msg"]
    assert "File exists" in (results / "dest" / "criu-restore.log").read_text()
    journal = json.loads((results / "journal.json").read_text())
    assert journal["location"] == "source"
    # the fused path's dump left the tree stopped on the source: it was resumed, not restored
    assert "source_resumed (source)" in [step["step"] for step in journal["steps"]]
    assert not (results / "source" / "criu-rollback-restore.log").exists()
    assert journal["status"] == "failed"

    # The workload runs again on the source, and only there.
    experiment_id = metrics["experiment"]["id"]
    pid = metrics["workload"]["source_pid"]
    try:
        running_on_source = workload_processes("source", experiment_id)
        assert len(running_on_source) == 1
        assert str(pid) in running_on_source[0]
        assert workload_processes("destination", experiment_id) == []

        # A crash right after a dump: the workload runs nowhere. The journal lets
        # playbooks/recover.yml find that out and bring it back from the checkpoint. (The
        # failed run removed its own checkpoint, as the workload ran on: a new one.)
        images = journal["images"]["source"][-1]
        dumped = on_host(
            "source",
            f"mkdir -p {images} && "
            f"/usr/local/sbin/criu dump -t {pid} -D {images} -o {images}/../crash-dump.log",
        )
        assert dumped.returncode == 0, dumped.stdout
        assert workload_processes("source", experiment_id) == []
        recovery = run_playbook(
            tmp_path / "recover",
            "playbooks/recover.yml",
            {"journal": str(results / "journal.json")},
        )
        assert recovery.rc == 0, recovery.stdout[-3000:]
        assert f"was restored on the source source from {images}" in recovery.stdout
        running_again = workload_processes("source", experiment_id)
        assert len(running_again) == 1 and str(pid) in running_again[0]
        assert workload_processes("destination", experiment_id) == []
        recovered = json.loads((results / "journal.json").read_text())
        assert recovered["location"] == "source" and recovered["recovered_at"]
    finally:
        end_workload(experiment_id, "source")


@pytest.mark.parametrize(
    ("extravars", "expected"),
    [
        ({"workload": "nope"}, ["workload='nope' is unknown", "memory", "redis", "video"]),
        (
            {"checkpoint_strategy": "lazy"},
            ["checkpoint_strategy='lazy' is not one of: predump, full"],
        ),
        ({"transfer": "ftp"}, ["transfer='ftp' is not one of: rsync, efs, s3, ebs"]),
        ({"mb_size": 0}, ["mb_size=0 MB is below the minimum 1 MB"]),
        ({"mb_size": "lots"}, ["mb_size='lots' is not an integer"]),
        ({"predump_interval": -1}, ["predump_interval=-1.0 s is below the minimum 0.0 s"]),
    ],
)
def test_bad_input_is_refused_before_any_host(
    lab: Path, tmp_path: Path, extravars: dict[str, object], expected: list[str]
) -> None:
    run = run_playbook(tmp_path, "migrate.yml", {"workload": "memory", **extravars})
    assert_refused_before_any_host(run, expected)


def test_predump_is_refused_on_a_kernel_without_soft_dirty(lab: Path, tmp_path: Path) -> None:
    run = run_playbook(tmp_path, "migrate.yml", {**SMALL_MEMORY, "checkpoint_strategy": "predump"})
    assert run.rc != 0
    assert "checkpoint_strategy=predump needs soft-dirty memory tracking" in run.stdout
    assert "mem_dirty_track" in run.stdout
    assert_refused_before_the_workload(run.metrics())
