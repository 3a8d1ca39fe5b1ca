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
    # each pre-dump's own transfer (stage predump-<n>), sent while the workload ran
    sent = {
        t.get("stage"): t
        for t in pair.phases.get("transfer", [])
        if str(t.get("stage", "")).startswith("predump-")
    }
    iterations = []
    for index, data in enumerate(pair.phases.get("predump", []), start=1):
        stats = data.get("stats", {})
        number = data.get("index", index)
        iteration = {
            "index": number,
            "duration_s": data.get("duration_s", 0.0),
            "pages_written": stats.get("pages_written", 0),
            "pages_skipped": stats.get("pages_skipped_parent", 0),
            "bytes": stats.get("bytes_written", 0),
            "frozen_s": stats.get("frozen_s"),
            "stats": stats,
        }
        transfer = sent.get(f"predump-{number}")
        if transfer:
            iteration["transfer"] = {
                key: transfer.get(key)
                for key in ("method", "duration_s", "bytes", "files", "throughput_mb_s")
            }
        if data.get("started_at"):
            iteration["started_at"] = iso_utc(data["started_at"])
        if data.get("decision"):
            iteration["decision"] = data["decision"]  # the stop rule's figures after it
        iterations.append(iteration)
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
    # A two-sided or verified transfer reports twice: its send, then the receive's record of
    # the whole transfer (send + receive + check). The last record of a stage is the whole;
    # the paths each made exist on the destination are united.
    by_stage: dict[str, dict[str, Any]] = {}
    for transfer in transfers:
        stage = transfer.get("stage", "final")
        paths = [*by_stage.get(stage, {}).get("dest_paths", []), *transfer.get("dest_paths", [])]
        by_stage[stage] = (
            {**transfer, "dest_paths": list(dict.fromkeys(paths))} if paths else transfer
        )
    main = by_stage.get("final", {})
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
    incremental = [t for stage, t in by_stage.items() if stage != "final"]
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


# Cross-checks of CRIU's own statistics against the suite's timings. CRIU measures inside the
# call, so none of its times may exceed the call (or its Ansible task) beyond clock jitter.
STATS_TOLERANCE_S = 0.05
# A restore call may spend this long beyond CRIU's restore_time (start-up, reading images)
# before the gap is reported: the larger of the two.
RESTORE_GAP_S = 1.0
RESTORE_GAP_FRACTION = 0.5
# How far page counts that must agree (dump vs page server, dump vs restore + lazy) may drift.
PAGE_COUNT_TOLERANCE = 0.005
# Slack when matching a CRIU call to its Ansible task by time (host vs control clocks).
TASK_MATCH_SLACK_S = 0.5


def _task_of(pair: PairRecord, phase: str, call: dict[str, Any]) -> TaskRecord | None:
    """The Ansible task that ran a CRIU call: same phase and host, its span holding the call's."""
    start, end, host = call.get("started_at"), call.get("finished_at"), call.get("host")
    if not start or not end:
        return None
    for task in pair.tasks:
        if task.phase == phase and task.host == host and task.status in ("ok", "failed"):
            task_end = task.start_epoch + task.duration_s
            if (
                task.start_epoch - TASK_MATCH_SLACK_S <= start
                and end <= task_end + TASK_MATCH_SLACK_S
            ):
                return task
    return None


def criu_stats_warnings(pair: PairRecord) -> list[dict[str, Any]]:
    """Where CRIU's own statistics and the suite's timings (or each other) disagree.

    Checked for every CRIU call recorded: a dump or restore without a stats image; CRIU's
    frozen time longer than the dump call or its Ansible task; more pages written than
    scanned; restore_time longer than the restore call, or far shorter; the page server
    receiving other than what the dump wrote; the pages restored plus those served lazily
    differing from the pages dumped; a daemon that did not finish its work.
    """
    warnings: list[dict[str, Any]] = []

    def warn(check: str, call: dict[str, Any], phase: str, message: str, **figures: Any) -> None:
        warnings.append(
            {"check": check, "phase": phase, "host": call.get("host"), "message": message} | figures
        )

    def far(a: float, b: float) -> bool:
        return abs(a - b) > PAGE_COUNT_TOLERANCE * max(a, b, 1)

    predumps = pair.phases.get("predump", [])
    dumps = [(f"pre-dump {i}", "predump", call) for i, call in enumerate(predumps, 1)]
    if pair.phases.get("final_dump"):
        dumps.append(("final dump", "final_dump", pair.last("final_dump")))
    for what, phase, call in dumps:
        stats, duration = call.get("stats") or {}, call.get("duration_s")
        if not stats:
            message = f"CRIU wrote no stats-dump for the {what}: only the suite's timings remain"
            warn("stats_missing", call, phase, message)
            continue
        frozen = stats.get("frozen_s")
        # A post-copy dump keeps its tasks frozen until the destination fetched the last page.
        limit = call.get("served_s") if call.get("lazy_network") else duration
        if frozen is not None and limit is not None and frozen > limit + STATS_TOLERANCE_S:
            message = (
                f"CRIU's frozen time for the {what} ({frozen:.3f}s) is longer than the CRIU "
                f"call itself ({limit:.3f}s)"
            )
            warn("frozen_vs_call", call, phase, message, frozen_s=frozen, call_s=limit)
        task = None if call.get("lazy_network") else _task_of(pair, phase, call)
        if task is not None:
            task_s = round(task.duration_s, 6)
            if frozen is not None and frozen > task_s + STATS_TOLERANCE_S:
                message = (
                    f"CRIU's frozen time for the {what} ({frozen:.3f}s) is longer than its "
                    f"task '{task.task}' ({task_s:.3f}s)"
                )
                warn("frozen_vs_task", call, phase, message, frozen_s=frozen, task_s=task_s)
            if duration is not None and duration > task_s + STATS_TOLERANCE_S:
                message = (
                    f"the {what}'s CRIU call ({duration:.3f}s) took longer than its task "
                    f"'{task.task}' ({task_s:.3f}s): are the clocks right?"
                )
                warn("call_vs_task", call, phase, message, call_s=duration, task_s=task_s)
        scanned, written = stats.get("pages_scanned"), stats.get("pages_written")
        if scanned is not None and written is not None and written > scanned:
            message = f"CRIU wrote more pages ({written}) than it scanned ({scanned}) in the {what}"
            warn("pages_written_vs_scanned", call, phase, message)

    for what, phase in (("restore", "restore"), ("rollback restore", "rollback")):
        if not pair.phases.get(phase):
            continue
        call = pair.last(phase)
        if call.get("resumed_on_source"):
            continue  # a post-copy dump that gave up unfroze the tasks: no CRIU restore ran
        stats, duration = call.get("stats") or {}, call.get("duration_s")
        restore_s = stats.get("restore_s")
        if not stats:
            message = f"CRIU wrote no stats-restore for the {what}: only the suite's timings remain"
            warn("stats_missing", call, phase, message)
        elif restore_s is None or duration is None:
            continue
        elif restore_s > duration + STATS_TOLERANCE_S:
            message = (
                f"CRIU's restore time ({restore_s:.3f}s) is longer than the {what} call "
                f"({duration:.3f}s)"
            )
            warn("restore_vs_call", call, phase, message, restore_s=restore_s, call_s=duration)
        elif duration - restore_s > max(RESTORE_GAP_S, RESTORE_GAP_FRACTION * duration):
            message = (
                f"the {what} call took {duration:.3f}s but CRIU's restore time is "
                f"{restore_s:.3f}s: {duration - restore_s:.3f}s went elsewhere (start-up, "
                "image reads, a slow page source)"
            )
            warn("restore_vs_call", call, phase, message, restore_s=restore_s, call_s=duration)

    dump_stats = pair.last("final_dump").get("stats") or {}
    if pair.phases.get("page_server"):
        server = pair.last("page_server")
        if not (server.get("finished") and server.get("session_complete")):
            message = "the page server did not see the dump's session through" + (
                f": {server['error']}" if server.get("error") else ""
            )
            warn("page_server_incomplete", server, "page_server", message)
        received, written = server.get("bytes_received"), dump_stats.get("bytes_written")
        if received is not None and written is not None and far(received, written):
            message = (
                f"the page server received {received} bytes of pages, the dump reports "
                f"{written} written"
            )
            warn(
                "page_server_bytes",
                server,
                "page_server",
                message,
                bytes_received=received,
                bytes_written=written,
            )
    if pair.phases.get("lazy_pages"):
        lazy = pair.last("lazy_pages")
        served = lazy.get("pages_lazy_served")
        if not (lazy.get("finished") and lazy.get("complete")):
            message = (
                f"the lazy-pages daemon served {served} of {lazy.get('pages_lazy_total')} pages"
                + (f": {lazy['error']}" if lazy.get("error") else "")
            )
            warn("lazy_pages_incomplete", lazy, "lazy_pages", message)
        restored = (pair.last("restore").get("stats") or {}).get("pages_restored")
        dumped = dump_stats.get("pages_written", 0) + dump_stats.get("pages_lazy", 0)
        # After pre-dumps the restore also reads the parents' pages: no single dump to match.
        comparable = restored is not None and served is not None and dumped > 0
        if comparable and not pair.phases.get("predump") and far(restored + served, dumped):
            message = f"{restored} pages restored + {served} served lazily != {dumped} pages dumped"
            warn(
                "lazy_pages_count",
                lazy,
                "lazy_pages",
                message,
                pages_restored=restored,
                pages_lazy_served=served,
                pages_dumped=dumped,
            )
    return warnings


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
    cross_checks = criu_stats_warnings(pair)
    if cross_checks:
        metrics["warnings"] = metrics.get("warnings", []) + cross_checks
    if pair.failure:
        metrics["failure"] = pair.failure
    return metrics


def _fmt_s(value: Any) -> str:
    return f"{value:.2f}s" if isinstance(value, int | float) else "n/a"


def _daemon_lines(restore: dict[str, Any]) -> list[str]:
    """The page server's and the lazy-pages daemon's figures, when they ran."""
    lines = []
    server = restore.get("page_server")
    if server:
        lines.append(
            f"  Page server: {server.get('pages_received', 0)} pages received "
            f"({server.get('bytes_received', 0) / MB:.2f} MB) in a {_fmt_s(server.get('session_s'))} "
            "session"
        )
    lazy = restore.get("lazy_pages")
    if lazy:
        lines.append(
            f"  Lazy pages: {lazy.get('pages_lazy_served', 0)} of {lazy.get('pages_lazy_total', 0)} "
            f"served in {_fmt_s(lazy.get('serving_s'))} after the restore"
        )
    return lines


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
            + (f", sent in {_fmt_s(it['transfer']['duration_s'])}" if it.get("transfer") else "")
            for it in predump["iterations"]
        ]
        if predump.get("stop"):
            lines.append(
                f"  Stopped: {predump['stop'].get('reason')} ({predump['stop'].get('detail', '')})"
            )
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
    ]
    lines += _daemon_lines(phases["restore"])
    lines += [
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
    if metrics.get("warnings"):
        lines.append(f"Warnings ({len(metrics['warnings'])}):")
        lines += [f"  - {warning.get('message', warning)}" for warning in metrics["warnings"]]
    lines += [
        f"Total Experiment Duration: {_fmt_s(metrics['experiment']['duration_s'])}",
        f"Results: {metrics['experiment']['results_dir']}",
        rule,
    ]
    return "\n".join(lines)
