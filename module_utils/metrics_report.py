"""Build `metrics.json` and the end-of-run summary from what the metrics callback recorded.

The callback (callback_plugins/migration_metrics.py) only collects events; every number in
`metrics.json` is computed here, in plain functions that the unit tests exercise.
Times are seconds, sizes bytes, rates MB/s (10^6 bytes per second).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import asdict, dataclass, field
from typing import Any

# Spot termination notices (seconds): AWS gives 120 s, GCP Spot and Azure Spot 30 s.
CLOUD_DEADLINES_S = {"aws_120s": 120.0, "gcp_30s": 30.0, "azure_30s": 30.0}

# Which phase a role's tasks belong to (STYLE.md: phases come from what a task is).
ROLE_PHASES = {
    "preflight": "preflight",
    "criu": "node_checks",
    "workload_deps": "node_checks",
    "node_checks": "node_checks",
    "workload_deploy": "deploy",
    "workload_start": "workload_start",
    "checkpoint_predump": "predump",
    "checkpoint_dump": "final_dump",
    "checkpoint_transfer": "transfer",
    "checkpoint_restore": "restore",
    "workload_capture": "capture",
    "workload_verify": "verification",
    "migration_rollback": "rollback",
    "results_collect": "collect",
    "workload_finish": "finish",
    "migration_cleanup": "cleanup",
}

MB = 1_000_000.0


def iso_utc(epoch: float | None) -> str | None:
    if epoch is None:
        return None
    return (
        dt.datetime.fromtimestamp(epoch, tz=dt.UTC)
        .isoformat(timespec="milliseconds")
        .replace("+00:00", "Z")
    )


def throughput_mb_s(size_bytes: float, seconds: float) -> float:
    return round(size_bytes / MB / seconds, 3) if seconds > 0 else 0.0


@dataclass
class TaskRecord:
    host: str
    task: str
    role: str | None
    phase: str | None
    start_epoch: float
    duration_s: float
    status: str  # ok | failed | skipped | unreachable

    def as_json(self) -> dict[str, Any]:
        record = asdict(self)
        record["start"] = iso_utc(record.pop("start_epoch"))
        record["duration_s"] = round(self.duration_s, 6)
        return record


@dataclass
class PairRecord:
    """Everything recorded for one source/destination pair."""

    source: str
    destination: str
    results_dir: str
    tasks: list[TaskRecord] = field(default_factory=list)
    phases: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    failure: dict[str, Any] | None = None
    exception: bool = False

    def add(self, phase: str, data: dict[str, Any], host: str) -> None:
        self.phases.setdefault(phase, []).append({"host": host, **data})

    def first(self, phase: str) -> dict[str, Any]:
        return (self.phases.get(phase) or [{}])[0]

    def last(self, phase: str) -> dict[str, Any]:
        return (self.phases.get(phase) or [{}])[-1]

    @property
    def status(self) -> str:
        if self.exception:
            return "exception"
        return "failed" if self.failure else "ok"


def deadline_verdicts(
    migration_s: float | None, user_deadline_s: float | None = None
) -> dict[str, Any]:
    """Whether a migration that took `migration_s` fits each termination notice."""
    deadlines = dict(CLOUD_DEADLINES_S)
    if user_deadline_s:
        deadlines[f"user_{user_deadline_s:g}s"] = float(user_deadline_s)
    verdicts: dict[str, Any] = {}
    for name, limit in deadlines.items():
        if migration_s is None:
            verdicts[name] = {"deadline_s": limit, "met": False, "slack_s": None}
        else:
            verdicts[name] = {
                "deadline_s": limit,
                "met": migration_s <= limit,
                "slack_s": round(limit - migration_s, 3),
            }
    return verdicts


def _predump_section(pair: PairRecord) -> dict[str, Any]:
    iterations = []
    for index, data in enumerate(pair.phases.get("predump", []), start=1):
        stats = data.get("stats", {})
        iterations.append(
            {
                "index": data.get("index", index),
                "duration_s": data.get("duration_s", 0.0),
                "pages_written": stats.get("pages_written", 0),
                "pages_skipped": stats.get("pages_skipped_parent", 0),
                "bytes": stats.get("bytes_written", 0),
                "frozen_s": stats.get("frozen_s"),
                "stats": stats,
            }
        )
    total = round(sum(item["duration_s"] for item in iterations), 6)
    section: dict[str, Any] = {
        "iterations": iterations,
        "total_s": total,
        "average_s": round(total / len(iterations), 6) if iterations else 0.0,
    }
    stop = pair.last("predump_stop")
    if stop:
        section["stop"] = {key: value for key, value in stop.items() if key != "host"}
    return section


def _final_dump_section(pair: PairRecord) -> dict[str, Any]:
    dump = pair.last("final_dump")
    stats = dump.get("stats", {})
    return {
        "duration_s": dump.get("duration_s", 0.0),
        "frozen_s": stats.get("frozen_s", 0.0),
        "pages_written": stats.get("pages_written", 0),
        "bytes": stats.get("bytes_written", 0),
        "started_at": iso_utc(dump.get("started_at")),
        "stats": stats,
    }


def _transfer_section(pair: PairRecord, method: str) -> dict[str, Any]:
    transfers = pair.phases.get("transfer", [])
    final = [t for t in transfers if t.get("stage", "final") == "final"]
    main = final[-1] if final else {}
    section = {
        "method": main.get("method", method),
        "duration_s": main.get("duration_s", 0.0),
        "bytes": main.get("bytes", 0),
        "files": main.get("files", 0),
        "throughput_mb_s": throughput_mb_s(main.get("bytes", 0), main.get("duration_s", 0.0)),
    }
    for key, value in main.items():
        if key not in section and key not in ("host", "stage"):
            section[key] = value
    incremental = [t for t in transfers if t.get("stage", "final") != "final"]
    if incremental:
        section["predump_transfers"] = [
            {key: value for key, value in t.items() if key != "host"} for t in incremental
        ]
    return section


def _restore_section(pair: PairRecord) -> dict[str, Any]:
    restore = pair.last("restore")
    section = {
        "duration_s": restore.get("duration_s", 0.0),
        "finished_at": iso_utc(restore.get("finished_at")),
        "pid": restore.get("pid"),
        "stats": restore.get("stats", {}),
    }
    for extra in ("lazy_pages", "page_server"):
        if pair.phases.get(extra):
            section[extra] = {k: v for k, v in pair.last(extra).items() if k != "host"}
    return section


def migration_window(
    pair: PairRecord, notice_at: float | None = None
) -> tuple[float | None, float | None]:
    """(start, end) of the deadline clock, epoch seconds.

    Start: the notice's arrival when a spot notice triggered the migration, else the start
    of the first checkpoint operation (first pre-dump, or the dump). End: the restored
    workload runs on the destination (the restore call returned).
    """
    starts = [
        d.get("started_at")
        for d in pair.phases.get("predump", []) + pair.phases.get("final_dump", [])
    ]
    starts = [s for s in starts if s]
    start = notice_at if notice_at else (min(starts) if starts else None)
    end = pair.last("restore").get("finished_at")
    return start, end


def clock_offsets(pair: PairRecord) -> dict[str, Any]:
    """Each host's clock offset from the control node, and destination minus source.

    A host read its clock somewhere between the control node's start and end stamps of
    the task, so offset = host_time - midpoint, give or take half the round trip.
    """
    offsets: dict[str, Any] = {}
    for role, host in (("source", pair.source), ("destination", pair.destination)):
        reads = [
            d
            for d in pair.phases.get("clock", [])
            if d.get("host") == host and "control_start" in d
        ]
        if not reads:
            continue
        read = reads[-1]
        midpoint = (read["control_start"] + read["control_end"]) / 2
        offsets[role] = {
            "offset_s": round(read["host_time"] - midpoint, 6),
            "uncertainty_s": round((read["control_end"] - read["control_start"]) / 2, 6),
            "ntp_synchronized": read.get("ntp_synchronized"),
        }
    if "source" in offsets and "destination" in offsets:
        offsets["destination_minus_source_s"] = round(
            offsets["destination"]["offset_s"] - offsets["source"]["offset_s"], 6
        )
        offsets["uncertainty_s"] = round(
            offsets["destination"]["uncertainty_s"] + offsets["source"]["uncertainty_s"], 6
        )
    return offsets


def app_downtime_estimates(pair: PairRecord, verification: dict[str, Any]) -> dict[str, Any]:
    """App-perceived downtime from progress.log and, independently, from strace.

    Both compare a timestamp taken on the source before the freeze with one taken on the
    destination after the restore, so both depend on the two clocks agreeing.
    """
    windows = {d.get("window"): d for d in pair.phases.get("capture", [])}
    pre, post = windows.get("pre_dump", {}), windows.get("post_restore", {})
    strace_s = None
    if pre.get("last_write_ts") and post.get("first_write_ts"):
        strace_s = round(post["first_write_ts"] - pre["last_write_ts"], 6)
    return {
        "progress_log_s": verification.get("app_downtime_s"),
        "progress_log_method": "largest gap between consecutive progress.log timestamps, from the "
        "last line written on the source to the first units of work on the destination",
        "strace_s": strace_s,
        "strace_method": "first write captured after the restore minus the last write captured "
        "before the dump (an upper bound: it includes the tracer's detach and re-attach)",
        "clocks": "source timestamps on the source's clock, destination timestamps on the "
        "destination's; see clock_offsets",
    }


def task_phase_totals(tasks: list[TaskRecord]) -> dict[str, float]:
    """Wall time per phase, from its first task's start to its last task's end."""
    spans: dict[str, tuple[float, float]] = {}
    for task in tasks:
        if not task.phase:
            continue
        end = task.start_epoch + task.duration_s
        lo, hi = spans.get(task.phase, (task.start_epoch, end))
        spans[task.phase] = (min(lo, task.start_epoch), max(hi, end))
    return {phase: round(hi - lo, 6) for phase, (lo, hi) in spans.items()}


def build_metrics(
    experiment: dict[str, Any], pair: PairRecord, started_at: float, finished_at: float
) -> dict[str, Any]:
    """The `metrics.json` document of one pair (schema in SPEC.md)."""
    strategy = experiment.get("strategy", {})
    dump = pair.last("final_dump")
    restore = pair.last("restore")
    downtime = None
    if dump.get("started_at") and restore.get("finished_at"):
        downtime = round(restore["finished_at"] - dump["started_at"], 6)
    notice_at = experiment.get("notice_at")
    window_start, window_end = migration_window(pair, notice_at)
    migration_s = round(window_end - window_start, 6) if window_start and window_end else None
    verification = {k: v for k, v in pair.last("verification").items() if k != "host"}
    app_downtime = verification.pop("app_downtime_s", None)
    environment = {
        role: {k: v for k, v in data.items() if k != "host"}
        for role, host in (("source", pair.source), ("destination", pair.destination))
        for data in pair.phases.get("environment", [])
        if data.get("host") == host
    }
    environment["control"] = experiment.get("control", {})
    start = pair.last("workload_start")
    metrics: dict[str, Any] = {
        "status": pair.status,
        "experiment": {
            "name": experiment.get("name"),
            "id": experiment.get("id"),
            "started_at": iso_utc(started_at),
            "finished_at": iso_utc(finished_at),
            "duration_s": round(finished_at - started_at, 3),
            "results_dir": pair.results_dir,
            "inventory": experiment.get("inventory"),
        },
        "hosts": {"source": pair.source, "destination": pair.destination},
        "workload": {
            "type": experiment.get("workload", {}).get("type"),
            "params": experiment.get("workload", {}).get("params", {}),
            "source_pid": start.get("pid"),
        },
        "strategy": {
            "mode": strategy.get("mode"),
            "lazy_pages": bool(strategy.get("lazy_pages")),
            "page_server": bool(strategy.get("page_server")),
            **{k: v for k, v in strategy.items() if k not in ("mode", "lazy_pages", "page_server")},
        },
        "phases": {
            "predump": _predump_section(pair),
            "final_dump": _final_dump_section(pair),
            "transfer": _transfer_section(pair, experiment.get("transfer", {}).get("method", "")),
            "restore": _restore_section(pair),
        },
        "downtime_s": downtime,
        "app_downtime_s": app_downtime,
        "migration_s": migration_s,
        "deadline_clock": {
            "start": "spot notice" if notice_at else "first checkpoint operation",
            "started_at": iso_utc(window_start),
            "stopped_at": iso_utc(window_end),
        },
        "app_downtime": app_downtime_estimates(pair, {"app_downtime_s": app_downtime}),
        "clock_offsets": clock_offsets(pair),
        "deadlines": deadline_verdicts(migration_s, experiment.get("deadline_s")),
        "verification": verification,
        "environment": environment,
        "phase_totals_s": task_phase_totals(pair.tasks),
        "tasks": [task.as_json() for task in pair.tasks],
    }
    for phase, key in (
        ("capture", "capture"),
        ("status", "status_snapshots"),
        ("rollback", "rollback"),
        ("warnings", "warnings"),
    ):
        if pair.phases.get(phase):
            metrics[key] = [dict(d) for d in pair.phases[phase]]
    if pair.failure:
        metrics["failure"] = pair.failure
    return metrics


def _fmt_s(value: Any) -> str:
    return f"{value:.2f}s" if isinstance(value, int | float) else "n/a"


def summary_text(metrics: dict[str, Any]) -> str:
    """The seed's end-of-run summary block, plus downtime and deadline verdicts."""
    rule = "=" * 60
    phases = metrics["phases"]
    lines = [
        rule,
        f"CRIU Experiment Metrics: {metrics['experiment']['name']}",
        f"Workload Type: {metrics['workload']['type']}",
        f"Hosts: {metrics['hosts']['source']} -> {metrics['hosts']['destination']}",
        f"Status: {metrics['status']}",
        rule,
    ]
    predump = phases["predump"]
    if predump["iterations"]:
        lines += [
            f"Pre-dump Iterations: {len(predump['iterations'])}",
            f"  Total time: {_fmt_s(predump['total_s'])}",
            f"  Average time: {_fmt_s(predump['average_s'])}",
        ]
        lines += [
            f"  Iteration {it['index']}: {_fmt_s(it['duration_s'])} ({it['pages_written']} pages written)"
            for it in predump["iterations"]
        ]
    dump = phases["final_dump"]
    lines += [
        "Final Dump:",
        f"  Duration: {_fmt_s(dump['duration_s'])} (frozen {_fmt_s(dump['frozen_s'])}, "
        f"{dump['pages_written']} pages, {dump['bytes'] / MB:.2f} MB)",
    ]
    transfer = phases["transfer"]
    lines += [
        "Transfer:",
        f"  Method: {transfer['method']}",
        f"  Duration: {_fmt_s(transfer['duration_s'])}",
        f"  Size: {transfer['bytes'] / MB:.2f} MB",
        f"  Throughput: {transfer['throughput_mb_s']:.2f} MB/s",
        "Restore:",
        f"  Duration: {_fmt_s(phases['restore']['duration_s'] if phases['restore']['finished_at'] else None)}",
        f"Downtime (dump start -> restored): {_fmt_s(metrics['downtime_s'])}",
        f"App-perceived downtime (progress.log gap): {_fmt_s(metrics['app_downtime_s'])}"
        f" (strace: {_fmt_s(metrics['app_downtime']['strace_s'])})",
        f"Migration time (deadline clock): {_fmt_s(metrics['migration_s'])}",
    ]
    for name, verdict in metrics["deadlines"].items():
        met = "n/a" if verdict["slack_s"] is None else ("met" if verdict["met"] else "MISSED")
        slack = "" if verdict["slack_s"] is None else f" (slack {verdict['slack_s']:.2f}s)"
        lines.append(f"  Deadline {name}: {met}{slack}")
    verification = metrics.get("verification") or {}
    if verification:
        lines.append(
            f"Verification: restored_running={verification.get('restored_running')} "
            f"state_continuous={verification.get('state_continuous')}"
        )
    if metrics.get("failure"):
        failure = metrics["failure"]
        lines.append(
            f"FAILED in {failure.get('phase')}: {failure.get('task')} on {failure.get('host')}"
        )
        lines.append(f"  {str(failure.get('msg', ''))[:300]}")
    lines += [
        f"Total Experiment Duration: {_fmt_s(metrics['experiment']['duration_s'])}",
        f"Results: {metrics['experiment']['results_dir']}",
        rule,
    ]
    return "\n".join(lines)
