"""What the suite's outputs hold, asserted alike by the unit tests (the modules' output) and the
integration tests (a real run's): one place for each such fact.

Not a test module: tests import it by name (`from expected import ...`), as pytest puts
tests/ on sys.path for tests/conftest.py.
"""

from __future__ import annotations

import json
from pathlib import Path

# The keys metrics.json has at least (the schema: README, metrics.json).
METRICS_TOP_KEYS = frozenset(
    {
        "status",
        "experiment",
        "workload",
        "strategy",
        "phases",
        "downtime_s",
        "app_downtime_s",
        "deadlines",
        "verification",
        "environment",
        "tasks",
    }
)

# The steps library/critical_path.py journals in a run that restored, in order.
CRITICAL_PATH_STEPS_DONE = [
    "prepared",
    "dump started",
    "dumped",
    "transferred",
    "restore started",
    "restored",
    "done",
]

# With dump.leave_stopped (the fused path's default, roles/critical_path): the source's copy,
# left stopped by the dump, ends once the destination runs the workload.
CRITICAL_PATH_STEPS_LEFT_STOPPED = [*CRITICAL_PATH_STEPS_DONE[:-1], "source ended", "done"]


def journal_steps(journal: Path) -> list[str]:
    """The steps of a critical-path journal (one JSON object a line), in order."""
    return [json.loads(line)["step"] for line in journal.read_text().splitlines()]
