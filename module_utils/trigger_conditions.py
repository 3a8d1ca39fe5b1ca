"""The conditions of `trigger=ready` (module_utils/migration_trigger.py): how long the
workload runs after it is ready, how many progress lines it writes, how much anonymous
memory it reaches before the checkpoint starts. 0 turns a condition off.

Pure functions over readings the source takes (library/workload_conditions.py); standard
library only.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

# The trigger=ready conditions (settings), in the order they are reported.
CONDITIONS = ("migrate_after_s", "migrate_after_lines", "migrate_at_rss_mb")


# -- the trigger=ready conditions ----------------------------------------------------------


@dataclass(frozen=True)
class Conditions:
    """The trigger=ready conditions (0: off)."""

    after_s: float = 0.0
    after_lines: int = 0
    at_rss_mb: int = 0

    @property
    def active(self) -> bool:
        return bool(self.after_s or self.after_lines or self.at_rss_mb)

    def as_settings(self) -> dict[str, float | int]:
        return dict(zip(CONDITIONS, (self.after_s, self.after_lines, self.at_rss_mb), strict=True))


@dataclass(frozen=True)
class Reading:
    """The workload at one moment on the source."""

    at: float  # epoch seconds (the source's clock)
    after_ready_s: float  # seconds since checkpoint_ready was written
    lines: int  # progress.log lines
    rss_anon_kb: int  # RssAnon summed over the process tree


def reached(conditions: Conditions, reading: Reading) -> dict[str, tuple[float, float]]:
    """(wanted, reached) of every active condition that holds in `reading`."""
    pairs = (
        ("migrate_after_s", conditions.after_s, reading.after_ready_s),
        ("migrate_after_lines", conditions.after_lines, reading.lines),
        ("migrate_at_rss_mb", conditions.at_rss_mb, round(reading.rss_anon_kb / 1024, 3)),
    )
    return {name: (wanted, value) for name, wanted, value in pairs if wanted and value >= wanted}


def track(
    conditions: Conditions, reading: Reading, held: dict[str, dict[str, Any]]
) -> dict[str, dict[str, Any]]:
    """Record in `held` when each condition first held (a condition that held stays held:
    the workload's lines and elapsed time only grow, and its memory is read as reached)."""
    for name, (wanted, value) in reached(conditions, reading).items():
        held.setdefault(name, {"wanted": wanted, "reached": value, "at": reading.at})
    return held


def all_held(conditions: Conditions, held: Mapping[str, Any]) -> bool:
    return all(name in held for name, value in conditions.as_settings().items() if value)


def waiting_for(conditions: Conditions, reading: Reading, held: Mapping[str, Any]) -> list[str]:
    """The conditions that have not held yet, each with where the workload stands."""
    now = {
        "migrate_after_s": f"{reading.after_ready_s:.1f} s",
        "migrate_after_lines": f"{reading.lines} lines",
        "migrate_at_rss_mb": f"{reading.rss_anon_kb / 1024:.1f} MB",
    }
    return [
        f"{name}={value} (now {now[name]})"
        for name, value in conditions.as_settings().items()
        if value and name not in held
    ]
