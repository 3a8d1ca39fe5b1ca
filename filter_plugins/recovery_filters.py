"""Jinja filters for the lock and the recovery: thin wrappers over module_utils/recovery_plan.py."""

from __future__ import annotations

import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "module_utils"))

from recovery_plan import (
    journal_path,
    lock_refusals,
    marked_results_dir,
    parse_critical_path_journal,
)


def migration_lock_refusals(probes: list[list[Any]], experiment: str) -> list[str]:
    """[[host, experiment_lock result], ...] -> a refusal for each host another experiment
    holds, naming it and how to recover it."""
    pairs: list[tuple[str, Mapping[str, Any] | None]] = [
        (str(host), probe if isinstance(probe, Mapping) else None) for host, probe in probes
    ]
    return lock_refusals(pairs, experiment)


class FilterModule:
    def filters(self) -> dict[str, Any]:
        return {
            "migration_lock_refusals": migration_lock_refusals,
            "critical_path_journal_state": parse_critical_path_journal,
            "results_journal_path": journal_path,
            "results_dir_marked": marked_results_dir,
        }
