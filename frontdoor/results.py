"""Runs as table rows, and points summarized: runs.csv and summary.csv.

A run is one results folder (metrics.json, journal.json). `run_row` flattens every phase
figure of its metrics.json into one row; `summarize` groups the rows by point and gives
n, mean, sample stdev and the 95 % confidence interval (Student's t) of the downtime, the
deadline clock and each phase, and each deadline's hit rate.

Figures are taken over the runs whose status is `ok`; a hit rate over every run of the
point (a failed migration misses every deadline: it never restored). A figure not measured
is an empty cell, never 0.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from frontdoor.stats import describe

MB = 1_000_000.0
# The clouds' termination notices, in the order the report shows them (metrics_report's).
CLOUD_DEADLINES = ("aws_120s", "gcp_30s", "azure_30s")

# (column, meaning) of the figures taken from metrics.json; summary.csv describes each.
FIGURES: tuple[tuple[str, str], ...] = (
    ("downtime_s", "downtime: dump start -> restored process runs, s"),
    ("migration_s", "deadline clock: first checkpoint operation -> restored, s"),
    ("app_downtime_s", "largest progress.log gap across the migration, s"),
    ("predump_s", "all pre-dumps, s"),
    ("final_dump_s", "final dump, s"),
    ("frozen_s", "frozen during the final dump (CRIU stats), s"),
    ("transfer_s", "final transfer, s"),
    ("restore_s", "restore, s"),
    ("orchestration_gap_s", "downtime minus the three phases, s"),
    ("memory_mb", "workload memory at the freeze (pages CRIU scanned in the final dump), MB"),
    ("rss_mb", "workload RSS when its output capture ended (before a trigger's wait), MB"),
    ("dump_mb", "final dump's page images, MB"),
    ("transfer_mb", "final transfer, MB"),
    ("transfer_mb_s", "final transfer, MB/s"),
    ("experiment_s", "whole run, s"),
)
FIGURE_NAMES = tuple(name for name, _ in FIGURES)
# The phases stacked in the report's bar chart, in order (their sum is the deadline clock).
STACKED_PHASES = ("predump_s", "final_dump_s", "transfer_s", "restore_s", "orchestration_gap_s")
# What the strategy/transfer of a run is made of (the lines of the memory-size plot).
VARIANT_KEYS = ("checkpoint_strategy", "transfer", "critical_path", "lazy_pages", "page_server")


def _get(data: Any, *path: str) -> Any:
    for key in path:
        if not isinstance(data, Mapping):
            return None
        data = data.get(key)
    return data


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _mb(size_bytes: Any) -> float | None:
    value = _number(size_bytes)
    return None if value is None else value / MB


PAGE = 4096


def rss_mb(metrics: Mapping[str, Any]) -> float | None:
    """The workload tree's RSS in the status snapshot of the pre_dump window (taken when the
    output capture ends: before a trigger's wait, when there is one)."""
    for snapshot in metrics.get("status_snapshots") or []:
        if snapshot.get("window") == "pre_dump" and _number(snapshot.get("rss_kb")) is not None:
            return float(snapshot["rss_kb"]) * 1024 / MB
    return None


def memory_mb(metrics: Mapping[str, Any]) -> float | None:
    """The workload's memory at the freeze: the pages CRIU scanned in the final dump (every
    private page, written or not: with pre-dumps too), else the RSS snapshot."""
    scanned = _number(_get(metrics, "phases", "final_dump", "stats", "pages_scanned"))
    if scanned:
        return scanned * PAGE / MB
    return rss_mb(metrics)


def run_config(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """What was run: the workload, its parameters and the strategy / transfer settings."""
    strategy = metrics.get("strategy") or {}
    transfer = _get(metrics, "phases", "transfer") or {}
    method = transfer.get("method")
    if isinstance(transfer.get("compression"), Mapping):
        method = f"{method}+{transfer['compression'].get('algorithm', 'compressed')}"
    config: dict[str, Any] = {"workload": _get(metrics, "workload", "type")}
    config.update(_get(metrics, "workload", "params") or {})
    config["checkpoint_strategy"] = strategy.get("mode")
    for key, value in strategy.items():
        if key == "mode":
            continue
        if not key.startswith("predump_") or strategy.get("mode") == "predump":
            config[key] = value
    if not strategy.get("lazy_pages"):
        config.pop("lazy_pages_mode", None)
    config["transfer"] = method
    return config


def deadline_names(rows: Iterable[Mapping[str, Any]]) -> list[str]:
    """The deadlines judged in these rows: the clouds', then any deadline_s of the user's."""
    names = list(CLOUD_DEADLINES)
    for row in rows:
        for key in row:
            if key.startswith("met_") and key[4:] not in names:
                names.append(key[4:])
    return names


def run_row(
    metrics: Mapping[str, Any] | None,
    journal: Mapping[str, Any] | None = None,
    results_dir: str = "",
) -> dict[str, Any]:
    """One run's figures (every phase), status and where the workload ended up."""
    row: dict[str, Any] = {"results_dir": results_dir}
    if metrics is None:
        row["status"] = "no metrics.json"
        row["workload_location"] = (journal or {}).get("location")
        return row
    phases = metrics.get("phases") or {}
    predump = phases.get("predump") or {}
    dump = phases.get("final_dump") or {}
    transfer = phases.get("transfer") or {}
    restore = phases.get("restore") or {}
    restored = bool(restore.get("finished_at"))
    row.update(
        {
            "status": metrics.get("status"),
            "started_at": _get(metrics, "experiment", "started_at"),
            **{f"config_{key}": value for key, value in run_config(metrics).items()},
            "predump_count": len(predump.get("iterations") or []) if predump else None,
            "predump_s": _number(predump.get("total_s")) if predump.get("iterations") else None,
            "final_dump_s": _number(dump.get("duration_s")),
            "frozen_s": _number(dump.get("frozen_s")),
            "dump_pages": dump.get("pages_written")
            if _number(dump.get("pages_written")) is not None
            else None,
            "dump_mb": _mb(dump.get("bytes")),
            "transfer_s": _number(transfer.get("duration_s")),
            "transfer_mb": _mb(transfer.get("bytes")),
            "transfer_mb_s": _number(transfer.get("throughput_mb_s")),
            "restore_s": _number(restore.get("duration_s")) if restored else None,
            "downtime_s": _number(metrics.get("downtime_s")),
            "orchestration_gap_s": _number(metrics.get("orchestration_gap_s")),
            "app_downtime_s": _number(metrics.get("app_downtime_s")),
            "migration_s": _number(metrics.get("migration_s")),
            "memory_mb": memory_mb(metrics),
            "rss_mb": rss_mb(metrics),
            "experiment_s": _number(_get(metrics, "experiment", "duration_s")),
        }
    )
    # A run that failed missed every deadline, whatever its clock read: the workload did
    # not come up on the destination.
    ok = metrics.get("status") == "ok"
    for name, verdict in (metrics.get("deadlines") or {}).items():
        row[f"met_{name}"] = bool(verdict.get("met")) and ok
        row[f"slack_{name}"] = _number(verdict.get("slack_s")) if ok else None
    row["_environment"] = environment_of(metrics)
    failure = metrics.get("failure") or {}
    row["failure_phase"] = failure.get("phase")
    row["failure"] = str(failure.get("msg") or "")[:500] or None
    row["workload_location"] = (journal or {}).get("location")
    return row


def environment_of(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """Where a run ran: each host's kernel and CRIU, the control node's revision and tools,
    the inventory (for the report; not a CSV column)."""
    environment = metrics.get("environment") or {}
    found: dict[str, Any] = {"inventory": _get(metrics, "experiment", "inventory")}
    for side in ("source", "destination"):
        host = environment.get(side) or {}
        found[f"{side} host"] = _get(metrics, "hosts", side)
        found[f"{side} kernel"] = host.get("kernel")
        found[f"{side} CRIU"] = host.get("criu")
    control = environment.get("control") or {}
    for key in ("host", "git_revision", "python", "ansible"):
        found[f"control {key.replace('_', ' ')}"] = control.get(key)
    return found


def load_run(results_dir: Path) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """metrics.json and journal.json of a results folder (None where absent or unreadable)."""

    def read(name: str) -> dict[str, Any] | None:
        try:
            return json.loads((results_dir / name).read_text())
        except (OSError, ValueError):
            return None

    return read("metrics.json"), read("journal.json")


def variant_label(config: Mapping[str, Any]) -> str:
    """A run's strategy / transfer in a few words: `full · rsync`, `predump · rsync+zstd ·
    lazy pages`."""
    parts = [str(config.get("checkpoint_strategy") or "?"), str(config.get("transfer") or "?")]
    if config.get("critical_path") and config.get("critical_path") != "fused":
        parts.append(str(config["critical_path"]))
    if config.get("lazy_pages") in (True, "true", "True"):
        parts.append(f"lazy pages ({config.get('lazy_pages_mode') or 'images'})")
    if config.get("page_server") in (True, "true", "True"):
        parts.append("page server")
    return " · ".join(parts)


def varying_keys(configs: Sequence[Mapping[str, Any]]) -> list[str]:
    """The configuration keys whose values differ between runs (what makes their points)."""
    keys: list[str] = []
    for config in configs:
        for key in config:
            if key not in keys:
                keys.append(key)
    return [key for key in keys if len({json.dumps(c.get(key), default=str) for c in configs}) > 1]


def point_label(point: Mapping[str, Any]) -> str:
    if not point:
        return "all runs"
    return ", ".join(f"{key}={_cell(value)}" for key, value in point.items())


# -- CSV -------------------------------------------------------------------------------------


def _cell(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:.6g}" if abs(value) < 1e-3 and value != 0 else round(value, 6)
    if isinstance(value, dict | list):
        return json.dumps(value)
    return value


RUN_LEADING = ("run", "point", "repetition")
RUN_TRAILING = (
    "status",
    "predump_count",
    "predump_s",
    "final_dump_s",
    "frozen_s",
    "dump_pages",
    "dump_mb",
    "transfer_s",
    "transfer_mb",
    "transfer_mb_s",
    "restore_s",
    "orchestration_gap_s",
    "downtime_s",
    "app_downtime_s",
    "migration_s",
    "memory_mb",
    "rss_mb",
    "experiment_s",
)
RUN_LAST = ("failure_phase", "failure", "workload_location", "started_at", "results_dir")


def run_columns(rows: Sequence[Mapping[str, Any]], point_keys: Sequence[str]) -> list[str]:
    """runs.csv's columns: the run, its point's keys, the figures, each deadline's verdict
    and slack, the configuration it ran, the failure and where the workload ended up."""
    deadlines = deadline_names(rows)
    config_keys: list[str] = []
    for row in rows:
        for key in row:
            if key.startswith("config_") and key not in config_keys:
                config_keys.append(key)
    columns = [*RUN_LEADING, *point_keys, *RUN_TRAILING]
    columns += [f"met_{name}" for name in deadlines] + [f"slack_{name}" for name in deadlines]
    columns += config_keys + list(RUN_LAST)
    return list(dict.fromkeys(columns))


def write_csv(path: Path, columns: Sequence[str], rows: Iterable[Mapping[str, Any]]) -> None:
    """A CSV with a header; written to a temporary file and renamed (never half a file)."""
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", newline="") as stream:
        writer = csv.DictWriter(stream, fieldnames=list(columns), extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({column: _cell(row.get(column)) for column in columns})
    tmp.replace(path)


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as stream:
        return list(csv.DictReader(stream))


# -- summary -------------------------------------------------------------------------------


@dataclass
class Point:
    """The runs of one point, in the order they ran."""

    label: str
    values: dict[str, Any]
    rows: list[dict[str, Any]] = field(default_factory=list)

    @property
    def ok_rows(self) -> list[dict[str, Any]]:
        return [row for row in self.rows if row.get("status") == "ok"]


def group_points(rows: Iterable[dict[str, Any]], point_keys: Sequence[str]) -> list[Point]:
    """Rows grouped by their values of `point_keys`, points in order of first appearance."""
    points: dict[str, Point] = {}
    for row in rows:
        values = {key: row.get(key) for key in point_keys}
        label = point_label(values)
        points.setdefault(label, Point(label, values)).rows.append(row)
    return list(points.values())


def summarize_point(point: Point, deadlines: Sequence[str]) -> dict[str, Any]:
    """n, the ok / failed counts, each figure's mean, stdev and 95 % CI, and each deadline's
    hit rate (met / every run of the point)."""
    ok = point.ok_rows
    summary: dict[str, Any] = {"point": point.label, **point.values}
    summary.update({"n": len(point.rows), "ok": len(ok), "failed": len(point.rows) - len(ok)})
    for name in FIGURE_NAMES:
        figures = describe(row.get(name) for row in ok)
        summary[f"{name}_n"] = figures.n
        summary[f"{name}_mean"] = figures.mean
        summary[f"{name}_stdev"] = figures.stdev
        summary[f"{name}_ci95_low"] = figures.ci_low
        summary[f"{name}_ci95_high"] = figures.ci_high
    for name in deadlines:
        met = sum(1 for row in point.rows if row.get(f"met_{name}") in (True, "true"))
        summary[f"{name}_met"] = met
        summary[f"{name}_hit_rate"] = met / len(point.rows) if point.rows else None
        slacks = [row.get(f"slack_{name}") for row in ok if row.get(f"slack_{name}") is not None]
        summary[f"{name}_min_slack_s"] = min(slacks) if slacks else None
    variants = {variant_label(_config_of(row)) for row in point.rows if row.get("status")}
    summary["variant"] = " / ".join(sorted(variants))
    return summary


def _config_of(row: Mapping[str, Any]) -> dict[str, Any]:
    return {key[len("config_") :]: value for key, value in row.items() if key.startswith("config_")}


def summary_columns(point_keys: Sequence[str], deadlines: Sequence[str]) -> list[str]:
    columns = ["point", *point_keys, "variant", "n", "ok", "failed"]
    for name in FIGURE_NAMES:
        columns += [f"{name}_{part}" for part in ("n", "mean", "stdev", "ci95_low", "ci95_high")]
    for name in deadlines:
        columns += [f"{name}_met", f"{name}_hit_rate", f"{name}_min_slack_s"]
    return list(dict.fromkeys(columns))


def summarize(
    rows: Sequence[dict[str, Any]], point_keys: Sequence[str]
) -> tuple[list[dict[str, Any]], list[str]]:
    """summary.csv's rows (one per point) and its columns."""
    deadlines = deadline_names(rows)
    points = group_points(rows, point_keys)
    return [summarize_point(point, deadlines) for point in points], summary_columns(
        point_keys, deadlines
    )
