"""run_experiment.py end to end in the local lab: one migration as the seed's README runs it
(the system python3, which re-runs itself under .venv), and a 2-point x 2-repetition sweep
that writes runs.csv, summary.csv, the plots and report.html."""

from __future__ import annotations

import base64
import csv
import json
import re
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.lab

REPO = Path(__file__).resolve().parents[2]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# Small and quick: the observation window off, blocks every 0.5 s.
QUICK = ["--post-restore-capture-s", "0", "--plain"]


def system_python() -> str:
    return "/usr/bin/python3" if Path("/usr/bin/python3").exists() else "python3"


def run_experiment(*args: str, timeout: int = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [system_python(), str(REPO / "run_experiment.py"), *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=timeout,
        check=False,
    )


def test_the_seeds_command_migrates_in_the_lab(lab: Path, tmp_path: Path) -> None:
    proc = run_experiment(
        "--workload", "memory", "--mb-size", "64", "--results-root", str(tmp_path), *QUICK
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    out = proc.stdout
    # plain progress lines (not a terminal), in the order of the phases
    phases = [
        "preflight (validation)",
        "node checks",
        "starting the workload",
        "critical path (dump -> transfer -> restore)",
        "deadline clock started (first checkpoint operation)",
        "deadline clock stopped:",
        "verification",
    ]
    positions = [out.find(f"] {phase}") for phase in phases]
    assert all(p >= 0 for p in positions) and positions == sorted(positions), out[:3000]
    assert "\r" not in out
    # then the summary of the run's metrics.json
    assert "CRIU Experiment Metrics: default-experiment" in out
    assert "Status: ok" in out
    (folder,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics["status"] == "ok"
    assert metrics["workload"]["params"]["mb_size"] == 64
    assert f"Results: {folder}" in out


def test_a_two_point_sweep_with_two_repetitions(lab: Path, tmp_path: Path) -> None:
    proc = run_experiment(
        "--workload", "memory", "--interval", "0.5", "--max-memory", "64",
        "--sweep", "mb_size=16,32", "--repeat", "2",
        "--results-root", str(tmp_path), "--sweep-name", "sweep", *QUICK,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    folder = tmp_path / "sweep"
    record = json.loads((folder / "sweep.json").read_text())
    assert record["status"] == "done"
    assert [(r["point"]["mb_size"], r["repetition"], r["status"]) for r in record["runs"]] == [
        (16, 1, "ok"),
        (32, 1, "ok"),
        (16, 2, "ok"),
        (32, 2, "ok"),
    ]
    # one results folder per run, under the sweep folder
    for run in record["runs"]:
        (relative,) = run["results_dirs"]
        metrics = json.loads((folder / relative / "metrics.json").read_text())
        assert metrics["workload"]["params"]["mb_size"] == run["point"]["mb_size"]
    # the progress bar with its ETA, once the first run has a duration
    assert re.search(r"run 3/4 \[#{10}-{10}\] ETA \d+m\d\ds: mb_size=16, repetition 2", proc.stdout)

    runs = (folder / "runs.csv").read_text().splitlines()
    assert len(runs) == 5 and runs[0].startswith("run,point,repetition,mb_size,status,")
    summary = (folder / "summary.csv").read_text().splitlines()
    assert len(summary) == 3
    header = summary[0].split(",")
    for column in ("n", "downtime_s_mean", "downtime_s_stdev", "downtime_s_ci95_low",
                   "downtime_s_ci95_high", "transfer_s_mean", "gcp_30s_hit_rate",
                   "aws_120s_hit_rate"):  # fmt: skip
        assert column in header
    for line in summary[1:]:
        row = dict(zip(header, next(csv.reader([line])), strict=True))
        assert row["n"] == "2" and row["ok"] == "2"
        assert float(row["downtime_s_ci95_low"]) <= float(row["downtime_s_mean"])
        assert float(row["downtime_s_mean"]) <= float(row["downtime_s_ci95_high"])
        assert row["gcp_30s_hit_rate"] == "1.0"

    plots = sorted((folder / "plots").glob("*.png"))
    assert [p.name for p in plots] == ["downtime_vs_memory.png", "phases.png", "runs.png"]
    for plot in plots:
        assert plot.read_bytes()[:8] == PNG_MAGIC and plot.stat().st_size > 0
    html = (folder / "report.html").read_text()
    images = re.findall(r'src="data:image/png;base64,([^"]+)"', html)
    assert len(images) == 3
    assert all(base64.b64decode(image)[:8] == PNG_MAGIC for image in images)
    assert "mb_size=16" in html and "mb_size=32" in html

    # the report command rebuilds the same from the folder
    again = run_experiment("report", str(folder))
    assert again.returncode == 0, again.stderr
    assert "4 runs, 2 points" in again.stdout
