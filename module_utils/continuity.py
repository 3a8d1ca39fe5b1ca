"""Did the workload continue, not restart? Checks over its `progress.log` (JSON lines).

The protocol (docs/architecture.md): every line has `seq`, `ts`, `host`; after a restore the
workload appends a line with `"event": "restored"` holding the values its continuity rules
compare, computed afresh from the restored state. Standard library only.
"""

from __future__ import annotations

import itertools
import json
import math
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class Check:
    name: str
    ok: bool
    detail: str


@dataclass
class ContinuityReport:
    seq_continuous: bool = False
    state_continuous: bool = False
    last_source_seq: int | None = None
    first_destination_seq: int | None = None
    source_lines: int = 0
    destination_lines: int = 0
    unparsable_lines: int = 0
    app_downtime_s: float | None = None
    boundary_gap_s: float | None = None
    typical_interval_s: float | None = None
    checks: list[Check] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.seq_continuous and self.state_continuous

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["ok"] = self.ok
        return data


def parse_progress(text: str) -> tuple[list[dict[str, Any]], int]:
    """Progress lines as dicts, and how many lines could not be parsed."""
    lines: list[dict[str, Any]] = []
    bad = 0
    for raw in text.splitlines():
        if not raw.strip():
            continue
        try:
            line = json.loads(raw)
        except ValueError:
            bad += 1
            continue
        if isinstance(line, dict) and all(key in line for key in ("seq", "ts", "host")):
            lines.append(line)
        else:
            bad += 1
    return lines, bad


def _median(values: list[float]) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def _compare(rule: str, name: str, before: Any, after: Any, tolerance: float = 0.0) -> Check:
    if before is None or after is None:
        return Check(
            f"{rule}:{name}", False, f"{name} missing (before={before!r}, after={after!r})"
        )
    if rule == "equal":
        return Check(f"equal:{name}", before == after, f"{name}: before={before!r} after={after!r}")
    if rule == "close":
        scale = max(abs(float(before)), abs(float(after)), 1e-12)
        diff = abs(float(after) - float(before)) / scale
        return Check(
            f"close:{name}",
            diff <= tolerance,
            f"{name}: before={before} after={after} (relative difference {diff:.3f}, allowed {tolerance})",
        )
    if rule == "increasing":
        return Check(
            f"increasing:{name}",
            float(after) >= float(before),
            f"{name}: before={before} after={after}",
        )
    raise ValueError(f"unknown continuity rule {rule!r}")


def check_continuity(
    lines: list[dict[str, Any]], destination_host: str, rules: dict[str, Any], unparsable: int = 0
) -> ContinuityReport:
    """Compare the last line written before the freeze with the destination's restored line."""
    report = ContinuityReport(unparsable_lines=unparsable)
    first_dest = next(
        (i for i, line in enumerate(lines) if line.get("host") == destination_host), None
    )
    source_part = lines if first_dest is None else lines[:first_dest]
    dest_part = [] if first_dest is None else lines[first_dest:]
    report.source_lines, report.destination_lines = len(source_part), len(dest_part)
    if not source_part:
        report.checks.append(Check("source_lines", False, "no line was written on the source"))
        return report
    if not dest_part:
        report.checks.append(
            Check(
                "destination_lines",
                False,
                f"no line was written on {destination_host} after the restore",
            )
        )
        return report
    last_source = source_part[-1]
    restored = next((line for line in dest_part if line.get("event") == "restored"), None)
    report.last_source_seq = int(last_source["seq"])
    report.first_destination_seq = int(dest_part[0]["seq"])
    # seq continues by exactly one across the migration and then keeps counting by one.
    seqs = [int(line["seq"]) for line in lines]
    steps_ok = all(b == a + 1 for a, b in itertools.pairwise(seqs))
    boundary_ok = report.first_destination_seq == report.last_source_seq + 1
    report.seq_continuous = steps_ok and boundary_ok
    report.checks.append(
        Check(
            "seq",
            report.seq_continuous,
            f"last on source {report.last_source_seq}, first on {destination_host} "
            f"{report.first_destination_seq}" + ("" if steps_ok else "; gaps or restarts in seq"),
        )
    )
    if restored is None:
        report.checks.append(Check("restored_line", False, "the workload wrote no 'restored' line"))
    else:
        report.checks.append(Check("restored_line", True, f"restored line seq {restored['seq']}"))
        for name in rules.get("equal") or []:
            report.checks.append(_compare("equal", name, last_source.get(name), restored.get(name)))
        for name, tolerance in (rules.get("close") or {}).items():
            report.checks.append(
                _compare("close", name, last_source.get(name), restored.get(name), float(tolerance))
            )
        for name in rules.get("increasing") or []:
            report.checks.append(
                _compare("increasing", name, last_source.get(name), restored.get(name))
            )
    report.state_continuous = all(check.ok for check in report.checks if check.name != "seq")
    # App-perceived downtime: the largest gap between consecutive timestamps from the last
    # line before the freeze to the first unit of work after the restore.
    window = [last_source, *dest_part[:3]]
    gaps = [float(b["ts"]) - float(a["ts"]) for a, b in itertools.pairwise(window)]
    if gaps:
        report.app_downtime_s = round(max(gaps), 6)
        report.boundary_gap_s = round(gaps[0], 6)
    normal = [
        float(b["ts"]) - float(a["ts"])
        for a, b in itertools.pairwise(source_part)
        if not math.isnan(float(a["ts"]))
    ]
    median = _median(normal[-20:])
    report.typical_interval_s = round(median, 6) if median is not None else None
    return report
