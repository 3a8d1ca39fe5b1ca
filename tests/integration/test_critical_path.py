"""The critical path, fused and stepwise, in the local lab (real CRIU, real SSH).

fused (the default): the final dump, the transfer and the restore run as one module call on
the source (library/critical_path.py), every critical-path timestamp on the source's
monotonic clock. stepwise: one Ansible task per phase, its downtime corrected by the
measured clock offset. Both record the orchestration gap (downtime minus the phases); both
must refuse a destination that the source cannot reach over SSH before the workload starts,
and roll a failed restore back to the source. The fused path's other faults (a corrupt image,
a cut transfer) are in test_transfer.py, its PID collision in test_migrate.py; page server,
lazy pages and TCP (redis) run fused in their own tests, the default path.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import LAB, on_host, run_playbook
from expected import CRITICAL_PATH_STEPS_LEFT_STOPPED, journal_steps
from helpers import SMALL_MEMORY, WORK_ROOT, epoch, failed_run, remove_experiment

pytestmark = pytest.mark.lab

# phases of the three critical-path steps, as the metrics callback files their tasks
STEP_PHASES = {"final_dump", "transfer", "restore"}


@pytest.mark.parametrize("path", ["fused", "stepwise"])
def test_downtime_is_on_one_clock_and_the_gap_is_recorded(
    lab: Path, tmp_path: Path, path: str
) -> None:
    run = run_playbook(tmp_path, "migrate.yml", {**SMALL_MEMORY, "critical_path": path})
    assert run.rc == 0, run.stdout[-5000:]
    metrics = run.metrics()
    assert metrics["status"] == "ok", metrics.get("failure")
    assert metrics["verification"]["state_continuous"] is True
    assert metrics["strategy"]["critical_path"] == path
    critical = metrics["critical_path"]
    phases = metrics["phases"]
    steps_s = (
        phases["final_dump"]["duration_s"]
        + phases["transfer"]["duration_s"]
        + phases["restore"]["duration_s"]
    )
    assert critical["path"] == path
    assert critical["phases_s"] == pytest.approx(steps_s, abs=1e-5)
    downtime = metrics["downtime_s"]
    # on one clock, the downtime cannot be shorter than the phases it is made of
    assert downtime >= steps_s - 1e-3, critical
    assert metrics["orchestration_gap_s"] == pytest.approx(downtime - steps_s, abs=1e-5)
    assert critical["orchestration_gap_s"] == metrics["orchestration_gap_s"]
    assert metrics["migration_s"] == pytest.approx(downtime, abs=0.01)  # full: no pre-dumps
    tasks = metrics["tasks"]
    results = run.only_results_dir()
    if path == "fused":
        # one task did all three steps; its own clock says when each ran
        calls = [t for t in tasks if t["task"].endswith("in one call on the source")]
        assert len(calls) == 1 and calls[0]["phase"] == "critical_path"
        assert calls[0]["duration_s"] > downtime
        assert not any(t["phase"] in STEP_PHASES - {"restore"} for t in tasks)
        steps = critical["steps"]
        assert steps["dump"][0] == 0.0
        assert steps["dump"][1] <= steps["transfer"][0] <= steps["transfer"][1]
        assert steps["transfer"][1] <= steps["restore"][0] < steps["restore"][1]
        assert steps["restore"][1] == pytest.approx(downtime, abs=1e-5)
        assert "source" in critical["clock"] and critical["uncertainty_s"] == 0.0
        # the restore was timed on the source too: its record says so
        assert phases["restore"]["clock"] == "source"
        # the dump left the source's copy stopped (leave_stopped); it ended after the restore
        assert journal_steps(results / "source" / "critical-path.journal") == (
            CRITICAL_PATH_STEPS_LEFT_STOPPED
        )
    else:
        # a task per step, and Ansible's time between them in the gap
        assert {t["phase"] for t in tasks} >= STEP_PHASES
        assert "critical_path" not in {t["phase"] for t in tasks}
        assert metrics["orchestration_gap_s"] > 0
        offsets = metrics["clock_offsets"]
        assert critical["offset_applied_s"] == offsets["destination_minus_source_s"]
        assert critical["uncertainty_s"] == offsets["uncertainty_s"]
        # the restore's end on the destination's clock, moved onto the source's
        end = epoch(phases["restore"]["finished_at"]) - offsets["destination_minus_source_s"]
        assert downtime == pytest.approx(end - epoch(phases["final_dump"]["started_at"]), abs=2e-3)
        assert not (results / "source" / "critical-path.journal").exists()


def test_a_failed_restore_rolls_back_on_the_stepwise_path(lab: Path, tmp_path: Path) -> None:
    # the fused path's PID collision is test_migrate.py's rollback test (the default path)
    run = run_playbook(
        tmp_path,
        "migrate.yml",
        {**SMALL_MEMORY, "critical_path": "stepwise", "inject_fault": "restore_pid_busy"},
    )
    results, metrics = failed_run(run)
    assert metrics["failure"]["phase"] == "restore"
    assert "File exists" in metrics["failure"]["msg"]
    journal = json.loads((results / "journal.json").read_text())
    assert journal["location"] == "source"
    experiment_id = metrics["experiment"]["id"]
    work = f"{WORK_ROOT}/{experiment_id}"
    try:
        running = on_host("source", f"pgrep -f '[s]tandalone.py --working-dir {work}' || true")
        assert str(metrics["workload"]["source_pid"]) in running.stdout
        elsewhere = on_host(
            "destination", f"pgrep -f '[s]tandalone.py --working-dir {work}' || true"
        )
        assert str(metrics["workload"]["source_pid"]) not in elsewhere.stdout.split("(stdout)")[-1]
    finally:
        remove_experiment(experiment_id)


def test_a_destination_the_source_cannot_log_in_to_is_refused_before_the_start(
    lab: Path, tmp_path: Path
) -> None:
    empty_known_hosts = tmp_path / "known_hosts"
    empty_known_hosts.write_text("")
    run = run_playbook(
        tmp_path, "migrate.yml", {**SMALL_MEMORY, "migration_known_hosts": str(empty_known_hosts)}
    )
    assert run.rc != 0
    assert (
        "source cannot log in to destination over SSH with the transfer's key and pinned host "
        f"key (No ED25519 host key is known for {LAB.address('destination')}"
    ) in run.stdout
    assert "the transfer and the fused critical path need it" in run.stdout
    journal = json.loads((run.only_results_dir() / "journal.json").read_text())
    assert journal["pid"] is None and journal["location"] == "not started"
