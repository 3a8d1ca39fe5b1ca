"""The report of a sweep or results folder: runs.csv, summary.csv, PNG plots, report.html.

- `phases.png`: the phases of each point stacked (mean of its ok runs: pre-dumps, final
  dump, transfer, restore, orchestration gap; their sum is the deadline clock), the 95 %
  CI of the deadline clock on top, and the termination notices as horizontal lines (GCP /
  Azure 30 s, AWS 120 s). When every bar is far below 30 s a second panel zooms in.
- `downtime_vs_memory.png`: the downtime against the workload's memory at the freeze (the
  pages CRIU scanned in the final dump) per strategy / transfer, with 95 % CI bars.
- `runs.png`: every run's deadline clock per point (a failed run as a red cross).
- `report.html`: one self-contained file (the plots embedded as base64 PNG, no script, no
  external file): deadline verdicts, the summary table, every run, the environment.
"""

from __future__ import annotations

import base64
import datetime as dt
import html
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from frontdoor.results import (
    CLOUD_DEADLINES,
    STACKED_PHASES,
    Point,
    deadline_names,
    group_points,
    summarize,
    variant_label,
)
from frontdoor.stats import describe
from frontdoor.sweep import Collected, rows_of_folder, write_tables

# The termination notices drawn on the plots: (seconds, label).
NOTICE_LINES = ((30.0, "GCP / Azure Spot 30 s"), (120.0, "AWS Spot 120 s"))
PHASE_LABELS = {
    "predump_s": "pre-dumps",
    "final_dump_s": "final dump",
    "transfer_s": "transfer",
    "restore_s": "restore",
    "orchestration_gap_s": "orchestration gap",
}
PHASE_COLOURS = {
    "predump_s": "#9ecae1",
    "final_dump_s": "#3182bd",
    "transfer_s": "#fd8d3c",
    "restore_s": "#31a354",
    "orchestration_gap_s": "#bdbdbd",
}
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# Below this share of the 30 s line, a second, zoomed panel is drawn.
ZOOM_BELOW = 0.4


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _mean(rows: Sequence[Mapping[str, Any]], key: str) -> float | None:
    return describe(row.get(key) for row in rows).mean


def _tick(label: str, width: int = 20) -> str:
    """A point's label for an axis: one `key=value` per line, a long one as `key=` over
    its value, each line shortened to `width`."""
    lines = []
    for part in label.split(", "):
        lines += part.replace("=", "=\n", 1).split("\n") if len(part) > width else [part]
    return "\n".join(line if len(line) <= width else line[: width - 1] + "…" for line in lines)


def plot_phases(points: Sequence[Point], path: Path) -> Path | None:
    """Stacked phases per point with the notices as lines; None when no run restored."""
    shown = [p for p in points if p.ok_rows]
    if not shown:
        return None
    plt = _pyplot()
    means = {key: [(_mean(p.ok_rows, key) or 0.0) for p in shown] for key in STACKED_PHASES}
    totals = [sum(means[key][i] for key in STACKED_PHASES) for i in range(len(shown))]
    clock = [describe(row.get("migration_s") for row in p.ok_rows) for p in shown]
    top = max([t for t in totals] + [c.ci_high for c in clock if c.ci_high is not None] + [0.0])
    zoom = top < ZOOM_BELOW * NOTICE_LINES[0][0]
    width = max(6.0, 1.0 + 0.9 * len(shown))
    fig, axes = plt.subplots(
        1, 2 if zoom else 1, figsize=(width * (1.6 if zoom else 1.0), 4.8), squeeze=False
    )
    positions = list(range(len(shown)))
    for index, ax in enumerate(axes[0]):
        bottom = [0.0] * len(shown)
        for key in STACKED_PHASES:
            if not any(means[key]):
                continue
            ax.bar(
                positions,
                means[key],
                bottom=bottom,
                label=PHASE_LABELS[key],
                color=PHASE_COLOURS[key],
            )
            bottom = [b + v for b, v in zip(bottom, means[key], strict=True)]
        with_ci = [i for i, c in enumerate(clock) if c.ci_low is not None and c.mean is not None]
        if with_ci:
            ax.errorbar(
                [positions[i] for i in with_ci],
                [clock[i].mean for i in with_ci],
                yerr=[
                    [clock[i].mean - clock[i].ci_low for i in with_ci],
                    [clock[i].ci_high - clock[i].mean for i in with_ci],
                ],
                fmt="none",
                ecolor="black",
                capsize=4,
            )
        full_scale = index == 0
        if full_scale:
            for seconds, label in NOTICE_LINES:
                ax.axhline(seconds, color="#d62728", linestyle="--", linewidth=1.2)
                ax.text(
                    -0.55, seconds, f" {label}", va="bottom", ha="left", color="#d62728",
                    fontsize=8,
                )  # fmt: skip
            ax.set_ylim(0, max(130.0, top * 1.1))
            ax.set_title("against the termination notices")
        else:
            ax.set_ylim(0, top * 1.25 if top > 0 else 1.0)
            ax.set_title("zoomed (the notices are off scale)")
        for x, total in enumerate(totals):
            ax.text(x, total, f"{total:.2f} s", ha="center", va="bottom", fontsize=8)
        ax.set_ylabel("seconds")
        ax.set_xticks(positions, [_tick(p.label) for p in shown], fontsize=8)
        ax.set_xlim(-0.6, len(shown) - 0.4)
    axes[0][0].legend(fontsize=8, loc="upper right")
    fig.suptitle(
        "Migration phases per point (mean of the ok runs; error bar: 95 % CI of the deadline clock)",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_downtime_vs_memory(points: Sequence[Point], path: Path) -> Path | None:
    """Downtime against memory per strategy / transfer, with CI bars; None without data."""
    series: dict[str, list[tuple[float, Any]]] = {}
    for point in points:
        memory = _mean(point.ok_rows, "memory_mb") or _mean(point.ok_rows, "dump_mb")
        downtime = describe(row.get("downtime_s") for row in point.ok_rows)
        if memory is None or downtime.mean is None:
            continue
        variants = {
            variant_label(
                {k[len("config_") :]: v for k, v in row.items() if k.startswith("config_")}
            )
            for row in point.ok_rows
        }
        series.setdefault(" / ".join(sorted(variants)), []).append((memory, downtime))
    if not series:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7.0, 4.8))
    top = 0.0
    for label, figures in sorted(series.items()):
        figures.sort(key=lambda item: item[0])
        xs = [x for x, _ in figures]
        ys = [d.mean for _, d in figures]
        low = [(d.mean - d.ci_low) if d.ci_low is not None else 0.0 for _, d in figures]
        high = [(d.ci_high - d.mean) if d.ci_high is not None else 0.0 for _, d in figures]
        top = max(top, *(y + h for y, h in zip(ys, high, strict=True)))
        ax.errorbar(xs, ys, yerr=[low, high], marker="o", capsize=4, label=label)
    for seconds, label in NOTICE_LINES:
        if top > 0.5 * seconds:
            ax.axhline(seconds, color="#d62728", linestyle="--", linewidth=1.2)
            ax.text(0, seconds, f" {label}", va="bottom", color="#d62728", fontsize=8)
    ax.set_xlabel("workload memory at the freeze (pages CRIU scanned, MB)")
    ax.set_ylabel("downtime, s (mean, 95 % CI)")
    ax.set_ylim(bottom=0)
    widest = max(x for figures in series.values() for x, _ in figures)
    ax.set_xlim(left=0, right=widest * 1.1 if widest > 0 else 1.0)
    ax.grid(alpha=0.3)
    ax.legend(title="strategy · transfer", fontsize=8)
    ax.set_title("Downtime against memory size")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_runs(points: Sequence[Point], path: Path) -> Path | None:
    """Every run's deadline clock per point; failed runs as red crosses on the axis."""
    if not any(point.rows for point in points):
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(max(6.0, 1.0 + 0.9 * len(points)), 4.2))
    top = 0.0
    for x, point in enumerate(points):
        values = [row.get("migration_s") for row in point.ok_rows]
        values = [v for v in values if v is not None]
        offsets = [x + (i - (len(values) - 1) / 2) * 0.06 for i in range(len(values))]
        ax.plot(offsets, values, "o", color="#3182bd", alpha=0.8)
        top = max([top, *values])
        failed = len(point.rows) - len(point.ok_rows)
        if failed:
            ax.plot([x] * failed, [0.0] * failed, "x", color="#d62728", markersize=9, clip_on=False)
    for seconds, label in NOTICE_LINES:
        if top > 0.5 * seconds:
            ax.axhline(seconds, color="#d62728", linestyle="--", linewidth=1.2)
            ax.text(-0.55, seconds, f" {label}", va="bottom", color="#d62728", fontsize=8)
    ax.set_xticks(range(len(points)), [_tick(p.label) for p in points], fontsize=8)
    ax.set_xlim(-0.6, len(points) - 0.4)
    ax.set_ylabel("deadline clock, s (x: failed run)")
    ax.set_ylim(bottom=0, top=max(top * 1.2, 1.0))
    ax.grid(axis="y", alpha=0.3)
    ax.set_title("Every run")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def make_plots(points: Sequence[Point], folder: Path) -> list[Path]:
    """The report's PNG files in `folder` (created), those that had data."""
    folder.mkdir(parents=True, exist_ok=True)
    made = [
        plot_phases(points, folder / "phases.png"),
        plot_downtime_vs_memory(points, folder / "downtime_vs_memory.png"),
        plot_runs(points, folder / "runs.png"),
    ]
    return [path for path in made if path is not None]


# -- HTML ------------------------------------------------------------------------------------

CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 1.6em; border-bottom: 1px solid #ccc; }
table { border-collapse: collapse; font-size: 0.85em; margin: 0.5em 0; }
th, td { border: 1px solid #ccc; padding: 3px 7px; text-align: right; vertical-align: top; }
th { background: #f3f3f3; } td.text, th.text { text-align: left; }
.ok { color: #1a7f37; } .missed, .failed, .exception, .error { color: #c62828; font-weight: bold; }
img { max-width: 100%; border: 1px solid #ddd; margin: 0.5em 0; }
code { background: #f3f3f3; padding: 0 3px; } .note { color: #555; font-size: 0.9em; }
"""


def _esc(value: Any) -> str:
    if isinstance(value, bool):
        value = "true" if value else "false"
    return html.escape("" if value is None else str(value))


def _s(value: Any, digits: int = 2) -> str:
    return f"{value:.{digits}f}" if isinstance(value, int | float) else "n/a"


def _mean_ci(summary: Mapping[str, Any], name: str) -> str:
    mean = summary.get(f"{name}_mean")
    if mean is None:
        return "n/a"
    low, high = summary.get(f"{name}_ci95_low"), summary.get(f"{name}_ci95_high")
    if low is None or high is None:
        return f"{mean:.2f}"
    return f"{mean:.2f} ± {(high - low) / 2:.2f}"


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]], text_columns: int = 1) -> str:
    head = "".join(
        f'<th class="text">{_esc(h)}</th>' if i < text_columns else f"<th>{_esc(h)}</th>"
        for i, h in enumerate(headers)
    )
    body = "".join(
        "<tr>"
        + "".join(
            f'<td class="text">{cell}</td>' if i < text_columns else f"<td>{cell}</td>"
            for i, cell in enumerate(row)
        )
        + "</tr>"
        for row in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def verdict_rows(summary: Sequence[Mapping[str, Any]], deadlines: Sequence[str]) -> list[list[str]]:
    """Per point and deadline: met in k of n runs, the worst slack, and a word."""
    rows = []
    for point in summary:
        cells = [_esc(point["point"])]
        for name in deadlines:
            met, n = point.get(f"{name}_met") or 0, point.get("n") or 0
            slack = point.get(f"{name}_min_slack_s")
            word = "fits" if n and met == n else ("misses" if met == 0 else "sometimes")
            css = "ok" if word == "fits" else "missed"
            slack_text = f", worst slack {slack:.1f} s" if isinstance(slack, int | float) else ""
            cells.append(f'<span class="{css}">{word}</span> ({met}/{n}{slack_text})')
        rows.append(cells)
    return rows


def _deadline_title(name: str) -> str:
    titles = {"aws_120s": "AWS 120 s", "gcp_30s": "GCP 30 s", "azure_30s": "Azure 30 s"}
    return titles.get(name, name.replace("user_", "own ").replace("s", " s", 1))


def render_html(
    title: str,
    collected: Collected,
    summary: Sequence[Mapping[str, Any]],
    plots: Sequence[Path],
    source: Path,
    generated_at: str | None = None,
    link_base: str = "",
) -> str:
    """The report page; `link_base`: the source folder relative to the page's (links to each
    run's results folder)."""
    rows = collected.rows
    deadlines = deadline_names(rows)
    generated_at = generated_at or dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    ok = sum(1 for row in rows if row.get("status") == "ok")
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{_esc(title)}</title><style>{CSS}</style></head><body>",
        f"<h1>{_esc(title)}</h1>",
        f'<p class="note">{len(rows)} runs ({ok} ok, {len(rows) - ok} failed) from '
        f"<code>{_esc(source)}</code>; generated {generated_at}. Figures: mean of the ok runs "
        "± the half-width of the 95 % confidence interval of the mean (Student's t); "
        "hit rates over every run (a failed migration misses every deadline).</p>",
    ]
    if collected.sweep is not None:
        sweep = collected.sweep
        parts.append(
            f"<p>Sweep over {_esc(', '.join(sweep.sweeps) or '(no key)')}, "
            f"{sweep.repeat} repetition(s), status <b>{_esc(sweep.status)}</b>: "
            f"<code>{_esc(' '.join(sweep.command))}</code></p>"
        )
    parts.append("<h2>Deadline verdicts</h2>")
    parts.append(
        '<p class="note">Whether the deadline clock (from the first checkpoint operation until '
        "the restored workload runs) fits each spot termination notice.</p>"
    )
    parts.append(
        _table(
            ["point", *(_deadline_title(name) for name in deadlines)],
            verdict_rows(summary, deadlines),
            text_columns=len(deadlines) + 1,
        )
    )
    parts.append("<h2>Plots</h2>")
    for plot in plots:
        data = base64.b64encode(plot.read_bytes()).decode("ascii")
        parts.append(f'<img alt="{_esc(plot.stem)}" src="data:image/png;base64,{data}">')
    if not plots:
        parts.append("<p>No run restored: nothing to plot.</p>")
    parts.append("<h2>Summary per point</h2>")
    headers = [
        "point",
        "strategy · transfer",
        "n",
        "ok",
        "memory MB",
        "downtime s",
        "deadline clock s",
        "app downtime s",
        "pre-dumps s",
        "final dump s",
        "transfer s",
        "restore s",
        "gap s",
        *(f"{_deadline_title(name)} hit rate" for name in deadlines),
    ]
    table_rows = []
    for point in summary:
        table_rows.append(
            [
                _esc(point["point"]),
                _esc(point.get("variant")),
                _esc(point["n"]),
                _esc(point["ok"]),
                _mean_ci(point, "memory_mb"),
                _mean_ci(point, "downtime_s"),
                _mean_ci(point, "migration_s"),
                _mean_ci(point, "app_downtime_s"),
                _mean_ci(point, "predump_s"),
                _mean_ci(point, "final_dump_s"),
                _mean_ci(point, "transfer_s"),
                _mean_ci(point, "restore_s"),
                _mean_ci(point, "orchestration_gap_s"),
                *(
                    f"{point.get(f'{name}_hit_rate', 0) * 100:.0f} %"
                    if point.get(f"{name}_hit_rate") is not None
                    else "n/a"
                    for name in deadlines
                ),
            ]
        )
    parts.append(_table(headers, table_rows, text_columns=2))
    parts.append("<h2>Runs</h2>")
    run_rows = []
    for row in rows:
        status = _esc(row.get("status"))
        folder = row.get("results_dir") or ""
        href = f"{link_base.rstrip('/')}/{folder}" if link_base and link_base != "." else folder
        link = f'<a href="{_esc(href)}/">{_esc(folder)}</a>' if folder else ""
        failure = row.get("failure")
        where = row.get("workload_location")
        note = _esc(f"{row.get('failure_phase') or ''}: {failure}" if failure else "")
        if failure and where:
            note += f" <i>(workload: {_esc(where)})</i>"
        run_rows.append(
            [
                _esc(row.get("run")),
                _esc(row.get("point")),
                _esc(row.get("repetition")),
                f'<span class="{status}">{status}</span>',
                _s(row.get("downtime_s")),
                _s(row.get("migration_s")),
                _s(row.get("memory_mb"), 1),
                link,
                note,
            ]
        )
    parts.append(
        _table(
            ["run", "point", "rep.", "status", "downtime s", "deadline clock s", "memory MB",
             "results folder", "failure"],
            run_rows,
            text_columns=2,
        )
    )  # fmt: skip
    parts.append("<h2>Environment</h2>")
    parts.append(_environment_table(rows))
    common = _common_config(rows)
    if common:
        parts.append("<h2>Settings common to every run</h2>")
        parts.append(
            _table(["setting", "value"], [[_esc(k), _esc(v)] for k, v in common.items()], 2)
        )
    parts.append("</body></html>")
    return "\n".join(parts)


def _environment_table(rows: Sequence[Mapping[str, Any]]) -> str:
    values: dict[str, list[str]] = {}
    for row in rows:
        for key, value in (row.get("_environment") or {}).items():
            if value is not None and str(value) not in values.setdefault(key, []):
                values[key].append(str(value))
    if not values:
        return "<p>No metrics.json with an environment.</p>"
    return _table(
        ["", "value(s) across the runs"],
        [[_esc(key), _esc(", ".join(found) or "n/a")] for key, found in values.items()],
        text_columns=2,
    )


def _common_config(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    configs = [
        {k[len("config_") :]: v for k, v in row.items() if k.startswith("config_")}
        for row in rows
        if any(k.startswith("config_") for k in row)
    ]
    if not configs:
        return {}
    first = configs[0]
    return {k: v for k, v in first.items() if all(c.get(k) == v for c in configs[1:])}


def write_report(source: Path, output: Path | None = None) -> dict[str, Any]:
    """runs.csv, summary.csv, plots/*.png and report.html for `source` (a sweep folder, a
    results folder or a folder of them), written into `output` (default: `source`)."""
    output = output or source
    output.mkdir(parents=True, exist_ok=True)
    collected = rows_of_folder(source)
    runs_csv, summary_csv = write_tables(output, collected)
    summary, _ = summarize(collected.rows, collected.point_keys)
    points = group_points(collected.rows, collected.point_keys)
    plots = make_plots(points, output / "plots")
    title = f"CRIU migration report: {source.resolve().name}"
    report = output / "report.html"
    link_base = os.path.relpath(source.resolve(), output.resolve())
    report.write_text(render_html(title, collected, summary, plots, source, link_base=link_base))
    return {
        "runs": len(collected.rows),
        "points": len(points),
        "runs_csv": runs_csv,
        "summary_csv": summary_csv,
        "plots": plots,
        "report": report,
        "deadlines": [name for name in CLOUD_DEADLINES],
    }
