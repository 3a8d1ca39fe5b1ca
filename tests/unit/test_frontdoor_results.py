"""runs.csv and summary.csv arithmetic on metrics.json files recorded in the lab
(tests/fixtures/frontdoor/), and the t-distribution behind the confidence intervals."""

from __future__ import annotations

import json
import math
import shutil
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from frontdoor.results import (  # noqa: E402
    FIGURE_NAMES,
    read_csv,
    run_row,
    summarize,
)
from frontdoor.stats import describe, t_cdf, t_quantile  # noqa: E402
from frontdoor.sweep import (  # noqa: E402
    RunRecord,
    SweepRecord,
    grid,
    parse_sweep,
    rows_of_folder,
    schedule,
    write_tables,
)

FIXTURES = REPO / "tests" / "fixtures" / "frontdoor"
RESULTS = FIXTURES / "results"


def metrics(name: str) -> dict:
    return json.loads((RESULTS / name / "metrics.json").read_text())


def journal(name: str) -> dict:
    return json.loads((RESULTS / name / "journal.json").read_text())


# -- Student's t -----------------------------------------------------------------------------

# t_{0.975, df}: the classic table
T_TABLE = {
    1: 12.7062,
    2: 4.3027,
    3: 3.1824,
    4: 2.7764,
    5: 2.5706,
    9: 2.2622,
    10: 2.2281,
    30: 2.0423,
    120: 1.9799,
}


@pytest.mark.parametrize(("df", "value"), sorted(T_TABLE.items()))
def test_t_quantile_matches_the_table(df: int, value: float) -> None:
    assert t_quantile(0.975, df) == pytest.approx(value, abs=5e-5)
    assert t_cdf(t_quantile(0.975, df), df) == pytest.approx(0.975, abs=1e-9)
    assert t_quantile(0.025, df) == pytest.approx(-value, abs=5e-5)


def test_describe() -> None:
    figures = describe([2.0, 4.0, 4.0, 4.0, 5.0, 5.0, 7.0, 9.0])
    assert figures.n == 8 and figures.mean == 5.0
    assert figures.stdev == pytest.approx(math.sqrt(32 / 7))
    half = t_quantile(0.975, 7) * math.sqrt(32 / 7) / math.sqrt(8)
    assert (figures.ci_low, figures.ci_high) == pytest.approx((5.0 - half, 5.0 + half))
    one = describe([3.0, None])
    assert (one.n, one.mean, one.stdev, one.ci_low) == (1, 3.0, None, None)
    assert describe([]).mean is None


# -- rows ------------------------------------------------------------------------------------


def test_a_row_carries_every_phase_figure_of_a_recorded_run() -> None:
    row = run_row(metrics("memory_32mb"), journal("memory_32mb"), "memory_32mb")
    assert row["status"] == "ok"
    assert row["final_dump_s"] == 0.169241
    assert row["transfer_s"] == 1.00523
    assert row["restore_s"] == 0.180542
    assert row["downtime_s"] == 1.356588
    assert row["migration_s"] == 1.35659
    assert row["orchestration_gap_s"] == 0.001575
    assert row["memory_mb"] == pytest.approx(34686 * 4096 / 1e6)  # pages CRIU scanned
    assert row["rss_mb"] == pytest.approx(144536 * 1024 / 1e6)
    assert row["dump_mb"] == pytest.approx(141.733888)
    assert row["predump_s"] is None and row["predump_count"] is None  # a full dump
    assert row["met_gcp_30s"] is True and row["slack_aws_120s"] == pytest.approx(118.643)
    assert row["config_checkpoint_strategy"] == "full" and row["config_transfer"] == "rsync"
    assert row["config_mb_size"] == 32
    assert row["workload_location"] == "finished"


def test_a_failed_run_misses_every_deadline_and_says_where_the_workload_is() -> None:
    name = "memory_16mb_restore_pid_busy_failed"
    row = run_row(metrics(name), journal(name), name)
    assert row["status"] == "failed"
    assert row["failure_phase"] == "restore"
    assert "Can't fork for" in row["failure"]
    assert row["downtime_s"] is None
    assert row["restore_s"] == 0.025971  # the restore that failed, as recorded
    # its metrics.json reads the clock of the failed restore; a failed run never restored
    assert metrics(name)["deadlines"]["gcp_30s"]["met"] is True
    assert row["met_gcp_30s"] is False and row["slack_gcp_30s"] is None
    assert row["workload_location"] == "source"


# -- a folder of results folders -------------------------------------------------------------


def test_points_of_a_folder_are_the_settings_that_differ() -> None:
    collected = rows_of_folder(RESULTS)
    assert collected.point_keys == ["mb_size", "max_memory", "critical_path"]
    points = [row["point"] for row in collected.rows]
    assert points == [
        "mb_size=16, max_memory=64, critical_path=fused",
        "mb_size=32, max_memory=128, critical_path=fused",
        "mb_size=32, max_memory=128, critical_path=stepwise",
        "mb_size=16, max_memory=64, critical_path=fused",
    ]
    assert [row["repetition"] for row in collected.rows] == [1, 1, 1, 2]


def test_summary_arithmetic_over_recorded_runs() -> None:
    collected = rows_of_folder(RESULTS)
    # one point for all four runs: three ok, one failed
    summary, columns = summarize(collected.rows, [])
    (point,) = summary
    assert (point["n"], point["ok"], point["failed"]) == (4, 3, 1)
    downtimes = [0.753762, 1.356588, 3.369314]
    mean = sum(downtimes) / 3
    stdev = math.sqrt(sum((d - mean) ** 2 for d in downtimes) / 2)
    half = 4.302652729911275 * stdev / math.sqrt(3)
    assert point["downtime_s_n"] == 3
    assert point["downtime_s_mean"] == pytest.approx(mean)
    assert point["downtime_s_stdev"] == pytest.approx(stdev)
    assert point["downtime_s_ci95_low"] == pytest.approx(mean - half)
    assert point["downtime_s_ci95_high"] == pytest.approx(mean + half)
    restores = [0.080354, 0.180542, 0.179469]
    assert point["restore_s_mean"] == pytest.approx(sum(restores) / 3)
    # the failed run counts in the hit rate, not in the figures
    assert point["gcp_30s_met"] == 3 and point["gcp_30s_hit_rate"] == 0.75
    assert point["aws_120s_hit_rate"] == 0.75
    assert point["gcp_30s_min_slack_s"] == pytest.approx(30 - 3.369314, abs=1e-3)
    for name in FIGURE_NAMES:
        assert f"{name}_ci95_high" in columns
    # per point: a point of one ok run has a mean and no interval
    by_point = {p["point"]: p for p in summarize(collected.rows, collected.point_keys)[0]}
    first = by_point["mb_size=16, max_memory=64, critical_path=fused"]
    assert (first["n"], first["ok"], first["downtime_s_mean"]) == (2, 1, 0.753762)
    assert first["downtime_s_stdev"] is None and first["downtime_s_ci95_low"] is None
    assert first["gcp_30s_hit_rate"] == 0.5


def test_runs_and_summary_csv_round_trip(tmp_path: Path) -> None:
    collected = rows_of_folder(RESULTS)
    runs_csv, summary_csv = write_tables(tmp_path, collected)
    runs = read_csv(runs_csv)
    assert len(runs) == 4
    assert (
        runs[0]["run"] == "1" and runs[0]["status"] == "ok" and runs[0]["downtime_s"] == "0.753762"
    )
    assert (
        runs[3]["status"] == "failed"
        and runs[3]["downtime_s"] == ""
        and runs[3]["met_gcp_30s"] == "false"
    )
    assert runs[3]["workload_location"] == "source"
    summary = read_csv(summary_csv)
    assert [row["point"] for row in summary] == [
        "mb_size=16, max_memory=64, critical_path=fused",
        "mb_size=32, max_memory=128, critical_path=fused",
        "mb_size=32, max_memory=128, critical_path=stepwise",
    ]
    assert summary[0]["n"] == "2" and summary[0]["failed"] == "1"
    assert summary[0]["gcp_30s_hit_rate"] == "0.5"
    assert float(summary[2]["downtime_s_mean"]) == pytest.approx(3.369314)


# -- sweeps ----------------------------------------------------------------------------------


def test_sweep_grid_and_interleaved_order() -> None:
    allowed = {"mb_size", "transfer_compress"}
    sweeps = [
        parse_sweep("mb-size=16,32", allowed),
        parse_sweep("transfer_compress=none,zstd", allowed),
    ]
    assert sweeps == [("mb_size", [16, 32]), ("transfer_compress", ["none", "zstd"])]
    assert grid(sweeps) == [
        {"mb_size": 16, "transfer_compress": "none"},
        {"mb_size": 16, "transfer_compress": "zstd"},
        {"mb_size": 32, "transfer_compress": "none"},
        {"mb_size": 32, "transfer_compress": "zstd"},
    ]
    assert schedule(2, 3) == [(0, 1), (1, 1), (0, 2), (1, 2), (0, 3), (1, 3)]


def test_a_sweep_folder_keeps_failed_and_unrun_runs(tmp_path: Path) -> None:
    """sweep.json names each run's folder; a failed run is a row with its status, a run not
    reached (Ctrl-C) is no row."""
    for name in ("memory_16mb", "memory_32mb", "memory_16mb_restore_pid_busy_failed"):
        shutil.copytree(RESULTS / name, tmp_path / "runs" / name)
    record = SweepRecord(
        folder=str(tmp_path),
        command=["run_experiment.py", "--sweep", "mb_size=16,32", "--repeat", "2"],
        sweeps={"mb_size": [16, 32]},
        repeat=2,
        base={},
        inventory="default",
        started_at="2026-12-06T09:00:00+00:00",
        status="stopped",
    )
    record.runs = [
        RunRecord(1, {"mb_size": 16}, 1, "ok", 0, ["runs/memory_16mb"]),
        RunRecord(2, {"mb_size": 32}, 1, "ok", 0, ["runs/memory_32mb"]),
        RunRecord(3, {"mb_size": 16}, 2, "failed", 1, ["runs/memory_16mb_restore_pid_busy_failed"]),
        RunRecord(
            4,
            {"mb_size": 32},
            2,
            "error",
            1,
            [],
            message="the playbook ended without an experiment",
        ),
        RunRecord(5, {"mb_size": 16}, 3),
    ]
    record.save()
    collected = rows_of_folder(tmp_path)
    assert collected.point_keys == ["mb_size"]
    assert [(row["run"], row["point"], row["status"]) for row in collected.rows] == [
        (1, "mb_size=16", "ok"),
        (2, "mb_size=32", "ok"),
        (3, "mb_size=16", "failed"),
        (4, "mb_size=32", "error"),
    ]
    assert collected.rows[3]["failure"] == "the playbook ended without an experiment"
    summary = {p["point"]: p for p in summarize(collected.rows, ["mb_size"])[0]}
    assert (summary["mb_size=16"]["n"], summary["mb_size=16"]["ok"]) == (2, 1)
    assert summary["mb_size=32"]["gcp_30s_hit_rate"] == 0.5
    runs_csv, _ = write_tables(tmp_path, collected)
    assert read_csv(runs_csv)[0]["mb_size"] == "16"


def test_a_recorded_sweep_summarized_by_hand(tmp_path: Path) -> None:
    """The 2-point x 2-repetition sweep recorded in the lab: every mean, stdev and 95 % CI of
    summary.csv recomputed here from the runs' own metrics.json."""
    sweep = FIXTURES / "sweep"
    record = json.loads((sweep / "sweep.json").read_text())
    by_point: dict[int, list[dict]] = {}
    for run in record["runs"]:
        (folder,) = run["results_dirs"]
        by_point.setdefault(run["point"]["mb_size"], []).append(
            json.loads((sweep / folder / "metrics.json").read_text())
        )
    shutil.copytree(sweep, tmp_path / "sweep")
    _, summary_csv = write_tables(tmp_path / "sweep", rows_of_folder(tmp_path / "sweep"))
    summary = {row["point"]: row for row in read_csv(summary_csv)}
    assert sorted(summary) == ["mb_size=16", "mb_size=32"]
    t = t_quantile(0.975, 1)
    for size, runs in by_point.items():
        row = summary[f"mb_size={size}"]
        assert (row["n"], row["ok"], row["failed"]) == ("2", "2", "0")
        for column, values in (
            ("downtime_s", [m["downtime_s"] for m in runs]),
            ("migration_s", [m["migration_s"] for m in runs]),
            ("transfer_s", [m["phases"]["transfer"]["duration_s"] for m in runs]),
            ("final_dump_s", [m["phases"]["final_dump"]["duration_s"] for m in runs]),
            ("restore_s", [m["phases"]["restore"]["duration_s"] for m in runs]),
        ):
            mean = sum(values) / 2
            stdev = abs(values[0] - values[1]) / math.sqrt(2)
            half = t * stdev / math.sqrt(2)
            assert float(row[f"{column}_mean"]) == pytest.approx(mean, abs=1e-6), column
            assert float(row[f"{column}_stdev"]) == pytest.approx(stdev, abs=1e-6), column
            assert float(row[f"{column}_ci95_low"]) == pytest.approx(mean - half, abs=1e-5)
            assert float(row[f"{column}_ci95_high"]) == pytest.approx(mean + half, abs=1e-5)
        met = sum(m["deadlines"]["gcp_30s"]["met"] for m in runs)
        assert float(row["gcp_30s_hit_rate"]) == met / 2
