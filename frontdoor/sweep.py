"""Sweeps: the grid of points, the order of the runs, the sweep folder and its record.

`--sweep mb_size=16,32 --sweep transfer_compress=none,zstd --repeat 3` makes a grid of
four points, each run three times. The runs are interleaved, repetition by repetition
(every point once, then every point again), so a slow drift of the machine spreads over
all points instead of biasing the last ones.

The sweep folder (`<results root>/sweep_<UTC timestamp>/`):

    sweep.json     the command, the grid, and every run: point, repetition, status, folder
    runs.csv       one row per run (every phase figure, deadline verdicts, status)
    summary.csv    one row per point (n, mean, stdev, 95 % CI, deadline hit rates)
    report.html    the report (plots embedded), plots/*.png beside it
    runs/          each run's own results folder
    logs/          each run's Ansible output

sweep.json, runs.csv and summary.csv are rewritten after every run, so a sweep stopped by
Ctrl-C (after the current run) or killed keeps what was done.
"""

from __future__ import annotations

import datetime as dt
import itertools
import json
from collections.abc import Collection, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from frontdoor.configfile import ConfigError
from frontdoor.results import (
    load_run,
    point_label,
    run_columns,
    run_config,
    run_row,
    summarize,
    varying_keys,
    write_csv,
)

SWEEP_RECORD = "sweep.json"


def parse_sweep(spec: str, allowed: Collection[str]) -> tuple[str, list[Any]]:
    """`key=v1,v2,...` -> (key, [values read as YAML]); the key a setting or parameter."""
    import yaml

    key, sep, raw = spec.partition("=")
    key = key.strip().lstrip("-").replace("-", "_")
    if not sep or not key:
        raise ConfigError(f"--sweep {spec!r}: expected KEY=V1,V2,...")
    if key not in allowed:
        import difflib

        close = difflib.get_close_matches(key, sorted(allowed), n=3, cutoff=0.75)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise ConfigError(
            f"--sweep {spec!r}: {key!r} is not a setting or a workload parameter{hint}"
        )
    values: list[Any] = []
    for text in raw.split(","):
        if not text.strip():
            raise ConfigError(f"--sweep {spec!r}: an empty value")
        try:
            values.append(yaml.safe_load(text.strip()))
        except yaml.YAMLError:
            values.append(text.strip())
    if len(set(map(str, values))) != len(values):
        raise ConfigError(f"--sweep {spec!r}: a value is given twice")
    return key, values


def grid(sweeps: Sequence[tuple[str, Sequence[Any]]]) -> list[dict[str, Any]]:
    """Every combination of the sweeps' values, the first sweep varying slowest."""
    keys = [key for key, _ in sweeps]
    if len(set(keys)) != len(keys):
        raise ConfigError(f"--sweep names {', '.join(k for k in keys if keys.count(k) > 1)} twice")
    return [
        dict(zip(keys, combo, strict=True)) for combo in itertools.product(*(v for _, v in sweeps))
    ]


def schedule(points: int, repeat: int) -> list[tuple[int, int]]:
    """(point index, repetition) of every run, interleaved: repetition 1 of every point, then
    repetition 2, ..."""
    return [(point, rep) for rep in range(1, repeat + 1) for point in range(points)]


def utc_stamp(now: dt.datetime | None = None) -> str:
    return (now or dt.datetime.now(dt.UTC)).strftime("%Y%m%d_%H%M%S")


def sweep_folder(results_root: Path, name: str | None) -> Path:
    """A new sweep folder under `results_root` (`sweep_<UTC>`, `-2` when taken)."""
    base = results_root / (name or f"sweep_{utc_stamp()}")
    folder, n = base, 1
    while folder.exists():
        n += 1
        folder = base.with_name(f"{base.name}-{n}")
    return folder


# -- progress --------------------------------------------------------------------------------


def progress_bar(done: int, total: int, width: int = 20) -> str:
    filled = round(width * done / total) if total else width
    return "[" + "#" * filled + "-" * (width - filled) + "]"


def eta_s(durations: Sequence[float], remaining: int) -> float | None:
    """Time left: the mean duration of the runs so far times the runs left (None before the
    first run ends)."""
    if not durations:
        return None
    return sum(durations) / len(durations) * remaining


def fmt_duration(seconds: float | None) -> str:
    if seconds is None:
        return "--"
    seconds = round(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


# -- the sweep's record ----------------------------------------------------------------------


@dataclass
class RunRecord:
    index: int
    point: dict[str, Any]
    repetition: int
    status: str = "pending"  # ok | failed | exception | error | pending
    exit_code: int | None = None
    results_dirs: list[str] = field(default_factory=list)  # relative to the sweep folder
    log: str = ""
    started_at: str = ""
    duration_s: float | None = None
    message: str = ""


@dataclass
class SweepRecord:
    folder: str
    command: list[str]
    sweeps: dict[str, list[Any]]
    repeat: int
    base: dict[str, Any]
    inventory: str
    started_at: str
    status: str = "running"  # running | done | stopped
    finished_at: str = ""
    runs: list[RunRecord] = field(default_factory=list)

    def save(self) -> None:
        path = Path(self.folder) / SWEEP_RECORD
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=2, default=str))
        tmp.replace(path)

    @classmethod
    def load(cls, folder: Path) -> SweepRecord:
        data = json.loads((folder / SWEEP_RECORD).read_text())
        data["runs"] = [RunRecord(**run) for run in data.get("runs", [])]
        data["folder"] = str(folder)
        return cls(**data)


# -- rows of a folder ------------------------------------------------------------------------


@dataclass
class Collected:
    """The runs of a folder as rows, and the keys that make its points."""

    rows: list[dict[str, Any]]
    point_keys: list[str]
    sweep: SweepRecord | None = None


def rows_of_sweep(folder: Path) -> Collected:
    """A sweep folder's runs (from sweep.json and each run's metrics.json)."""
    record = SweepRecord.load(folder)
    point_keys = list(record.sweeps)
    rows: list[dict[str, Any]] = []
    for run in record.runs:
        if run.status == "pending":
            continue
        dirs = run.results_dirs or [""]
        for relative in dirs:
            metrics, journal = load_run(folder / relative) if relative else (None, None)
            row = run_row(metrics, journal, relative)
            if metrics is None:
                row["status"] = run.status
                row["failure"] = run.message or None
            row.update(
                {
                    "run": run.index,
                    "point": point_label(run.point),
                    "repetition": run.repetition,
                    **run.point,
                }
            )
            rows.append(row)
    return Collected(rows, point_keys, record)


def find_results_dirs(folder: Path, depth: int = 3) -> list[Path]:
    """Results folders (holding a metrics.json) at `folder` or up to `depth` levels below."""
    found: list[Path] = []
    level = [folder]
    for _ in range(depth + 1):
        following: list[Path] = []
        for path in level:
            if (path / "metrics.json").is_file():
                found.append(path)
            elif path.is_dir():
                following += sorted(p for p in path.iterdir() if p.is_dir())
        level = following
    return sorted(found, key=lambda p: (p.name, str(p)))


def rows_of_folder(folder: Path) -> Collected:
    """The runs of a sweep folder, one results folder, or a folder of results folders (the
    points: the configuration keys that differ between the runs)."""
    if (folder / SWEEP_RECORD).is_file():
        return rows_of_sweep(folder)
    dirs = find_results_dirs(folder)
    runs = [(path, *load_run(path)) for path in dirs]
    runs.sort(key=lambda run: str((run[1] or {}).get("experiment", {}).get("started_at") or ""))
    configs = [run_config(metrics) for _, metrics, _ in runs if metrics]
    keys = varying_keys(configs)
    rows: list[dict[str, Any]] = []
    for index, (path, metrics, journal) in enumerate(runs, start=1):
        config = run_config(metrics) if metrics else {}
        point = {key: config.get(key) for key in keys}
        relative = str(path.relative_to(folder)) if path != folder else "."
        row = run_row(metrics, journal, relative)
        row.update({"run": index, "point": point_label(point), **point})
        rows.append(row)
    repetitions: dict[str, int] = {}
    for row in rows:
        repetitions[row["point"]] = repetitions.get(row["point"], 0) + 1
        row["repetition"] = repetitions[row["point"]]
    return Collected(rows, keys)


def write_tables(folder: Path, collected: Collected) -> tuple[Path, Path]:
    """runs.csv and summary.csv into `folder`."""
    runs_csv, summary_csv = folder / "runs.csv", folder / "summary.csv"
    write_csv(runs_csv, run_columns(collected.rows, collected.point_keys), collected.rows)
    summary, columns = summarize(collected.rows, collected.point_keys)
    write_csv(summary_csv, columns, summary)
    return runs_csv, summary_csv


def base_values(values: Mapping[str, Any], sweeps: Mapping[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in values.items() if key not in sweeps}
