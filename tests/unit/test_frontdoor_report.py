"""The report: PNG plots produced from recorded metrics.json files, and a report.html that
opens without a server (plots embedded, no script, no external file)."""

from __future__ import annotations

import base64
import re
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from frontdoor.report import (  # noqa: E402
    PNG_MAGIC,
    make_plots,
    plot_phases,
    write_report,
)
from frontdoor.results import group_points  # noqa: E402
from frontdoor.sweep import rows_of_folder  # noqa: E402

RESULTS = REPO / "tests" / "fixtures" / "frontdoor" / "results"


def is_png(path: Path) -> bool:
    return path.is_file() and path.stat().st_size > 0 and path.read_bytes()[:8] == PNG_MAGIC


def test_plots_are_pngs(tmp_path: Path) -> None:
    collected = rows_of_folder(RESULTS)
    points = group_points(collected.rows, collected.point_keys)
    plots = make_plots(points, tmp_path)
    assert [p.name for p in plots] == ["phases.png", "downtime_vs_memory.png", "runs.png"]
    for plot in plots:
        assert is_png(plot), plot


def test_no_restored_run_no_phase_plot(tmp_path: Path) -> None:
    collected = rows_of_folder(RESULTS / "memory_16mb_restore_pid_busy_failed")
    points = group_points(collected.rows, collected.point_keys)
    assert plot_phases(points, tmp_path / "phases.png") is None


def test_report_html_is_self_contained(tmp_path: Path) -> None:
    result = write_report(RESULTS, tmp_path)
    html = result["report"].read_text()
    assert html.startswith("<!DOCTYPE html>")
    images = re.findall(r'<img alt="([^"]+)" src="data:image/png;base64,([^"]+)">', html)
    assert [name for name, _ in images] == ["phases", "downtime_vs_memory", "runs"]
    for _, data in images:
        assert base64.b64decode(data)[:8] == PNG_MAGIC
    assert "<script" not in html and "http://" not in html and "https://" not in html
    assert "<link" not in html
    # the parts: verdicts, summary, runs, environment
    for heading in ("Deadline verdicts", "Summary per point", "Runs", "Environment"):
        assert f"<h2>{heading}</h2>" in html
    assert "GCP 30 s" in html and "AWS 120 s" in html
    assert "6.18.44-fc-v1272" in html  # the hosts' kernel, from metrics.json
    assert "Can&#x27;t fork for" in html  # the failed run's reason
    assert "workload: source" in html  # where its workload ended up
    # links to each run's folder, relative to the report
    assert re.search(r'href="[^"]*memory_32mb/"', html)
    assert (tmp_path / "runs.csv").exists() and (tmp_path / "summary.csv").exists()
    assert all(is_png(p) for p in result["plots"])


def test_report_command_writes_into_the_folder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from frontdoor import cli

    assert cli.main(["report", str(RESULTS), "-o", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert "4 runs, 3 points" in out
    assert (tmp_path / "out" / "report.html").exists()
    assert cli.main(["report", str(tmp_path / "empty-or-missing")]) == 2
