"""Build `metrics.json` and the end-of-run summary from what the metrics callback recorded.

The callback (callback_plugins/migration_metrics.py) only collects events; every number in
`metrics.json` is computed here, in plain functions that the unit tests exercise.
Times are seconds, sizes bytes, rates MB/s (10^6 bytes per second).

Nothing is made up: a phase of which nothing was recorded (no pre-dump in a full dump, no
dump in a run that failed before it) is absent from `phases`, and a figure of a present
phase that was not measured is null; the summary shows either as `n/a`, never as 0.00s.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

# Spot termination notices (seconds): AWS gives 120 s, GCP Spot and Azure Spot 30 s.
CLOUD_DEADLINES_S = {"aws_120s": 120.0, "gcp_30s": 30.0, "azure_30s": 30.0}

# Which phase a role's tasks belong to: a task's phase comes from the role it belongs to,
# never from its name.
ROLE_PHASES = {
    "preflight": "preflight",
    "criu": "node_checks",
    "workload_deps": "node_checks",
    "node_checks": "node_checks",
    "workload_deploy": "deploy",
    "workload_start": "workload_start",
    "migration_trigger": "trigger",
    "notice_ack": "notice_ack",
    "checkpoint_predump": "predump",
    "checkpoint_dump": "final_dump",
    "checkpoint_transfer": "transfer",
    "checkpoint_restore": "restore",
    "critical_path": "critical_path",
    "workload_capture": "capture",
    "workload_verify": "verification",
    "migration_rollback": "rollback",
    "results_collect": "collect",
    "workload_finish": "finish",
    "migration_cleanup": "cleanup",
    "lab_link": "link",
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


def _predump_section(pair: PairRecord) -> dict[str, Any] | None:
    """The pre-dumps; None when none was recorded (a full dump, or a run that failed first)."""
    if not pair.phases.get("predump"):
        return None
    # each pre-dump's own transfer (stage predump-<n>), sent while the workload ran
    sent = {
        t.get("stage"): t
        for t in pair.phases.get("transfer", [])
        if str(t.get("stage", "")).startswith("predump-")
    }
    iterations = []
    for index, data in enumerate(pair.phases["predump"], start=1):
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
        "average_s": round(total / len(iterations), 6),
    }
    stop = pair.last("predump_stop")
    if stop:
        section["stop"] = {key: value for key, value in stop.items() if key != "host"}
    return section


def _final_dump_section(pair: PairRecord) -> dict[str, Any] | None:
    """The final dump; None when no dump was recorded (the run failed before it, or in it).

    CRIU's figures come from its stats-dump: null where it wrote none (a post-copy dump
    that still serves its pages, a lost stats image).
    """
    if not pair.phases.get("final_dump"):
        return None
    dump = pair.last("final_dump")
    stats = dump.get("stats") or {}
    return {
        "duration_s": dump.get("duration_s"),
        "frozen_s": stats.get("frozen_s"),
        "pages_written": stats.get("pages_written"),
        "bytes": stats.get("bytes_written"),
        "started_at": iso_utc(dump.get("started_at")),
        "stats": stats,
        "cmd": dump.get("cmd"),  # CRIU's argv, as run
    }


def _transfer_section(pair: PairRecord, method: str) -> dict[str, Any] | None:
    """The final transfer, with the pre-dumps' transfers beside it; None when none was recorded.

    When only pre-dumps' transfers were recorded (the run stopped before the final one), the
    final transfer's figures are null.
    """
    transfers = pair.phases.get("transfer", [])
    if not transfers:
        return None
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
    main = by_stage.get("final")
    section: dict[str, Any]
    if main is None:
        section = dict.fromkeys(("method", "duration_s", "bytes", "files", "throughput_mb_s"))
    else:
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


def _restore_section(pair: PairRecord) -> dict[str, Any] | None:
    """The restore, with the page server's and the lazy-pages daemon's figures.

    None when neither the restore nor a daemon was recorded; when only a daemon was (the
    restore failed, or the dump did), the restore's own figures are null.
    """
    daemons = [extra for extra in ("page_server", "lazy_pages") if pair.phases.get(extra)]
    if not pair.phases.get("restore") and not daemons:
        return None
    restore = pair.last("restore")
    section = {
        "duration_s": restore.get("duration_s"),
        "finished_at": iso_utc(restore.get("finished_at")),
        "pid": restore.get("pid"),
        "stats": restore.get("stats", {}),
        # whose clock finished_at is on: the destination's (stepwise), or the source's when
        # the fused critical path timed the restore from there
        "clock": restore.get("clock") or ("destination" if restore else None),
        "cmd": restore.get("cmd"),  # CRIU's argv, as run
    }
    for extra in daemons:
        section[extra] = {k: v for k, v in pair.last(extra).items() if k != "host"}
    return section


def phase_sections(pair: PairRecord, transfer_method: str = "") -> dict[str, Any]:
    """`metrics.json`'s `phases`: only those of which something was recorded."""
    sections = {
        "predump": _predump_section(pair),
        "final_dump": _final_dump_section(pair),
        "transfer": _transfer_section(pair, transfer_method),
        "restore": _restore_section(pair),
    }
    return {name: section for name, section in sections.items() if section is not None}


def on_source_clock(record: dict[str, Any], key: str, offsets: dict[str, Any]) -> float | None:
    """A record's epoch stamp on the source's clock: a stamp the destination took is
    corrected by the measured destination-minus-source offset (the fused path stamps every
    critical-path step on the source: `clock: source`)."""
    value = record.get(key)
    if value is None:
        return None
    if record.get("clock") == "source" or record.get("host") != offsets.get("destination_host"):
        return float(value)
    return float(value) - float(offsets.get("destination_minus_source_s") or 0.0)


def migration_window(
    pair: PairRecord, notice_at: float | None = None, offsets: dict[str, Any] | None = None
) -> tuple[float | None, float | None]:
    """(start, end) of the deadline clock, epoch seconds on the source's clock.

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
    # a restore that failed (the fused call records it) restored nothing: the clock runs on
    restores = [r for r in pair.phases.get("restore", []) if not r.get("failed")]
    end = on_source_clock(restores[-1], "finished_at", offsets or {}) if restores else None
    return start, end


def critical_path_figures(pair: PairRecord, offsets: dict[str, Any]) -> dict[str, Any]:
    """Downtime on one clock, and how much of it is orchestration rather than the phases.

    fused: the critical_path module timed dump start -> restore done on the source's
    monotonic clock. stepwise: the dump's start on the source's clock to the restore's end
    on the destination's, corrected by the measured clock offset (its uncertainty beside
    it). orchestration_gap_s: downtime minus the sum of the final dump, the final transfer
    and the restore - the time between them (Ansible's task boundaries when stepwise).
    """
    dump, restore = pair.last("final_dump"), pair.last("restore")
    transfer = next(
        (
            t
            for t in reversed(pair.phases.get("transfer", []))
            if t.get("stage", "final") == "final"
        ),
        {},
    )
    durations = [r.get("duration_s") for r in (dump, transfer, restore) if r]
    phases_s = round(sum(float(d) for d in durations if d is not None), 6) if durations else None
    fused = pair.last("critical_path")
    figures: dict[str, Any] = {"path": "fused" if fused else "stepwise", "phases_s": phases_s}
    if fused:
        downtime = fused.get("downtime_s")
        figures.update(clock=fused.get("clock"), uncertainty_s=0.0, steps=fused.get("steps"))
    else:
        end = on_source_clock(restore, "finished_at", offsets)
        start = dump.get("started_at")
        downtime = round(end - float(start), 6) if end is not None and start else None
        # the same test as on_source_clock's: a restore timed on the source is not corrected
        on_destination = restore.get("clock") != "source" and restore.get("host") == offsets.get(
            "destination_host"
        )
        measured = offsets.get("destination_minus_source_s") is not None
        if on_destination and measured:
            figures.update(
                clock="the source's (the restore's end corrected by the measured clock offset)",
                uncertainty_s=offsets.get("uncertainty_s"),
                offset_applied_s=offsets.get("destination_minus_source_s"),
            )
        elif on_destination:
            # no offset was measured: nothing was corrected, and the error is unknown
            figures.update(
                clock="two clocks (the restore's end on the destination's, not corrected: "
                "no clock offset was measured)",
                uncertainty_s=None,
                offset_applied_s=0.0,
            )
        else:
            figures.update(clock="the source's", uncertainty_s=0.0, offset_applied_s=0.0)
    figures["downtime_s"] = downtime
    figures["orchestration_gap_s"] = (
        round(downtime - phases_s, 6) if downtime is not None and phases_s is not None else None
    )
    return figures


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
    offsets["destination_host"] = pair.destination
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
    """The Ansible task that ran a CRIU call: same phase and host, its span holding the
    call's (within the clocks' slack), and of those the one overlapping the call most - a
    short task just before it (a role's argument validation) holds no part of it."""
    start, end, host = call.get("started_at"), call.get("finished_at"), call.get("host")
    if not start or not end:
        return None
    best, best_overlap = None, 0.0
    for task in pair.tasks:
        if task.phase != phase or task.host != host or task.status not in ("ok", "failed"):
            continue
        task_end = task.start_epoch + task.duration_s
        holds = (
            task.start_epoch - TASK_MATCH_SLACK_S <= start and end <= task_end + TASK_MATCH_SLACK_S
        )
        overlap = min(end, task_end) - max(start, task.start_epoch)
        if holds and overlap > best_overlap:
            best, best_overlap = task, overlap
    return best


@dataclass(frozen=True)
class CriuCall:
    """One CRIU call (or daemon) whose figures are cross-checked."""

    kind: str  # dump | restore | page_server | lazy_pages: which checks apply
    what: str  # how the messages name it: "pre-dump 2", "final dump", "rollback restore"
    phase: str  # the phase its warnings are filed under
    record: dict[str, Any]  # what the callback recorded for it

    @property
    def stats(self) -> dict[str, Any]:
        """CRIU's stats image of the call, decoded; empty when CRIU wrote none."""
        return self.record.get("stats") or {}


def criu_calls(pair: PairRecord) -> list[CriuCall]:
    """Every CRIU call and daemon recorded for the pair, in the order their checks report."""
    calls = [
        CriuCall("dump", f"pre-dump {index}", "predump", record)
        for index, record in enumerate(pair.phases.get("predump", []), start=1)
    ]
    if pair.phases.get("final_dump"):
        calls.append(CriuCall("dump", "final dump", "final_dump", pair.last("final_dump")))
    for what, phase in (("restore", "restore"), ("rollback restore", "rollback")):
        # a post-copy dump that gave up unfroze the tasks: no CRIU restore ran
        if pair.phases.get(phase) and not pair.last(phase).get("resumed_on_source"):
            calls.append(CriuCall("restore", what, phase, pair.last(phase)))
    for daemon in ("page_server", "lazy_pages"):
        if pair.phases.get(daemon):
            calls.append(CriuCall(daemon, daemon.replace("_", " "), daemon, pair.last(daemon)))
    return calls


def _warning(check: str, call: CriuCall, message: str, **figures: Any) -> dict[str, Any]:
    return {
        "check": check,
        "phase": call.phase,
        "host": call.record.get("host"),
        "message": message,
    } | figures


def _far(a: float, b: float) -> bool:
    """Whether two page or byte counts that must agree differ beyond PAGE_COUNT_TOLERANCE."""
    return abs(a - b) > PAGE_COUNT_TOLERANCE * max(a, b, 1)


def _dump_task(pair: PairRecord, call: CriuCall) -> TaskRecord | None:
    """The Ansible task of a dump that has its stats image.

    None for a post-copy dump (its task returns while the dump still serves pages) and for
    a dump without stats (only check_stats_missing applies to it).
    """
    if not call.stats or call.record.get("lazy_network"):
        return None
    return _task_of(pair, call.phase, call.record)


def _final_dump_stats(pair: PairRecord) -> dict[str, Any]:
    return pair.last("final_dump").get("stats") or {}


def check_stats_missing(pair: PairRecord, call: CriuCall) -> list[dict[str, Any]]:
    """A dump or restore without its stats image: only the suite's timings remain."""
    if call.stats:
        return []
    message = (
        f"CRIU wrote no stats-{call.kind} for the {call.what}: only the suite's timings remain"
    )
    return [_warning("stats_missing", call, message)]


def check_frozen_vs_call(pair: PairRecord, call: CriuCall) -> list[dict[str, Any]]:
    """CRIU's frozen time longer than the dump call itself."""
    frozen = call.stats.get("frozen_s")
    # A post-copy dump keeps its tasks frozen until the destination fetched the last page.
    limit = call.record.get("served_s" if call.record.get("lazy_network") else "duration_s")
    if frozen is None or limit is None or frozen <= limit + STATS_TOLERANCE_S:
        return []
    message = (
        f"CRIU's frozen time for the {call.what} ({frozen:.3f}s) is longer than the CRIU "
        f"call itself ({limit:.3f}s)"
    )
    return [_warning("frozen_vs_call", call, message, frozen_s=frozen, call_s=limit)]


def check_frozen_vs_task(pair: PairRecord, call: CriuCall) -> list[dict[str, Any]]:
    """CRIU's frozen time longer than the Ansible task that ran the dump."""
    task, frozen = _dump_task(pair, call), call.stats.get("frozen_s")
    if task is None or frozen is None:
        return []
    task_s = round(task.duration_s, 6)
    if frozen <= task_s + STATS_TOLERANCE_S:
        return []
    message = (
        f"CRIU's frozen time for the {call.what} ({frozen:.3f}s) is longer than its "
        f"task '{task.task}' ({task_s:.3f}s)"
    )
    return [_warning("frozen_vs_task", call, message, frozen_s=frozen, task_s=task_s)]


def check_call_vs_task(pair: PairRecord, call: CriuCall) -> list[dict[str, Any]]:
    """A dump call longer than the Ansible task around it: the clocks disagree."""
    task, duration = _dump_task(pair, call), call.record.get("duration_s")
    if task is None or duration is None:
        return []
    task_s = round(task.duration_s, 6)
    if duration <= task_s + STATS_TOLERANCE_S:
        return []
    message = (
        f"the {call.what}'s CRIU call ({duration:.3f}s) took longer than its task "
        f"'{task.task}' ({task_s:.3f}s): are the clocks right?"
    )
    return [_warning("call_vs_task", call, message, call_s=duration, task_s=task_s)]


def check_pages_written_vs_scanned(pair: PairRecord, call: CriuCall) -> list[dict[str, Any]]:
    """More pages written than scanned in one dump."""
    scanned, written = call.stats.get("pages_scanned"), call.stats.get("pages_written")
    if scanned is None or written is None or written <= scanned:
        return []
    message = f"CRIU wrote more pages ({written}) than it scanned ({scanned}) in the {call.what}"
    return [_warning("pages_written_vs_scanned", call, message)]


def check_restore_longer_than_call(pair: PairRecord, call: CriuCall) -> list[dict[str, Any]]:
    """CRIU's restore_time longer than the restore call itself."""
    restore_s, duration = call.stats.get("restore_s"), call.record.get("duration_s")
    if restore_s is None or duration is None or restore_s <= duration + STATS_TOLERANCE_S:
        return []
    message = (
        f"CRIU's restore time ({restore_s:.3f}s) is longer than the {call.what} call "
        f"({duration:.3f}s)"
    )
    return [_warning("restore_vs_call", call, message, restore_s=restore_s, call_s=duration)]


def check_restore_far_shorter_than_call(pair: PairRecord, call: CriuCall) -> list[dict[str, Any]]:
    """A restore call that spent far longer than CRIU's restore_time (RESTORE_GAP_*)."""
    restore_s, duration = call.stats.get("restore_s"), call.record.get("duration_s")
    if restore_s is None or duration is None:
        return []
    if duration - restore_s <= max(RESTORE_GAP_S, RESTORE_GAP_FRACTION * duration):
        return []
    message = (
        f"the {call.what} call took {duration:.3f}s but CRIU's restore time is "
        f"{restore_s:.3f}s: {duration - restore_s:.3f}s went elsewhere (start-up, "
        "image reads, a slow page source)"
    )
    return [_warning("restore_vs_call", call, message, restore_s=restore_s, call_s=duration)]


def check_page_server_incomplete(pair: PairRecord, call: CriuCall) -> list[dict[str, Any]]:
    """A page server that did not see the dump's session through."""
    server = call.record
    if server.get("finished") and server.get("session_complete"):
        return []
    message = "the page server did not see the dump's session through" + (
        f": {server['error']}" if server.get("error") else ""
    )
    return [_warning("page_server_incomplete", call, message)]


def check_page_server_bytes(pair: PairRecord, call: CriuCall) -> list[dict[str, Any]]:
    """The page server received other than the bytes of pages the dump wrote."""
    received = call.record.get("bytes_received")
    written = _final_dump_stats(pair).get("bytes_written")
    if received is None or written is None or not _far(received, written):
        return []
    message = (
        f"the page server received {received} bytes of pages, the dump reports {written} written"
    )
    return [
        _warning(
            "page_server_bytes",
            call,
            message,
            bytes_received=received,
            bytes_written=written,
        )
    ]


def check_lazy_pages_incomplete(pair: PairRecord, call: CriuCall) -> list[dict[str, Any]]:
    """A lazy-pages daemon that stopped before it served every page."""
    lazy = call.record
    if lazy.get("finished") and lazy.get("complete"):
        return []
    message = (
        f"the lazy-pages daemon served {lazy.get('pages_lazy_served')} of "
        f"{lazy.get('pages_lazy_total')} pages"
        + (f": {lazy['error']}" if lazy.get("error") else "")
    )
    return [_warning("lazy_pages_incomplete", call, message)]


def check_lazy_pages_count(pair: PairRecord, call: CriuCall) -> list[dict[str, Any]]:
    """Pages restored plus pages served lazily differing from the pages dumped."""
    if pair.phases.get("predump"):
        return []  # the restore also reads the pre-dumps' pages: no single dump to match
    restored = (pair.last("restore").get("stats") or {}).get("pages_restored")
    served = call.record.get("pages_lazy_served")
    dump_stats = _final_dump_stats(pair)
    dumped = dump_stats.get("pages_written", 0) + dump_stats.get("pages_lazy", 0)
    if restored is None or served is None or dumped <= 0 or not _far(restored + served, dumped):
        return []
    message = f"{restored} pages restored + {served} served lazily != {dumped} pages dumped"
    return [
        _warning(
            "lazy_pages_count",
            call,
            message,
            pages_restored=restored,
            pages_lazy_served=served,
            pages_dumped=dumped,
        )
    ]


CriuStatsCheck = Callable[[PairRecord, CriuCall], list[dict[str, Any]]]

# The cross-checks run on each kind of call, in the order their warnings are listed.
CRIU_STATS_CHECKS: dict[str, tuple[CriuStatsCheck, ...]] = {
    "dump": (
        check_stats_missing,
        check_frozen_vs_call,
        check_frozen_vs_task,
        check_call_vs_task,
        check_pages_written_vs_scanned,
    ),
    "restore": (
        check_stats_missing,
        check_restore_longer_than_call,
        check_restore_far_shorter_than_call,
    ),
    "page_server": (check_page_server_incomplete, check_page_server_bytes),
    "lazy_pages": (check_lazy_pages_incomplete, check_lazy_pages_count),
}


def criu_stats_warnings(pair: PairRecord) -> list[dict[str, Any]]:
    """Where CRIU's own statistics and the suite's timings (or each other) disagree.

    Every CRIU call and daemon recorded (criu_calls) goes through the checks of its kind
    (CRIU_STATS_CHECKS); the warnings come call by call, in the order of the checks.
    """
    return [
        warning
        for call in criu_calls(pair)
        for check in CRIU_STATS_CHECKS[call.kind]
        for warning in check(pair, call)
    ]


def build_metrics(
    experiment: dict[str, Any], pair: PairRecord, started_at: float, finished_at: float
) -> dict[str, Any]:
    """The `metrics.json` document of one pair (its schema: README, section metrics.json)."""
    strategy = experiment.get("strategy", {})
    offsets = clock_offsets(pair)
    critical_path = critical_path_figures(pair, offsets)
    downtime = critical_path["downtime_s"]
    # a spot notice that triggered the migration (trigger=notice) starts the deadline clock
    notice_at = pair.last("notice").get("notice_at") or experiment.get("notice_at")
    window_start, window_end = migration_window(pair, notice_at, offsets)
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
    # the lab link's shaping (lab_link_profile; library/lab_link.py): the profile in force,
    # what of it was applied and how, and what its removal after the run found
    if pair.phases.get("link"):
        environment["link"] = {k: v for k, v in pair.last("link").items() if k != "host"}
        if pair.phases.get("link_removed"):
            removed = pair.last("link_removed")
            environment["link"]["removed"] = {k: v for k, v in removed.items() if k != "host"}
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
        "phases": phase_sections(pair, experiment.get("transfer", {}).get("method", "")),
        "downtime_s": downtime,
        "orchestration_gap_s": critical_path["orchestration_gap_s"],
        "critical_path": critical_path,
        "app_downtime_s": app_downtime,
        "migration_s": migration_s,
        "deadline_clock": {
            "start": "spot notice" if notice_at else "first checkpoint operation",
            "started_at": iso_utc(window_start),
            "stopped_at": iso_utc(window_end),
        },
        "app_downtime": app_downtime_estimates(pair, {"app_downtime_s": app_downtime}),
        "clock_offsets": offsets,
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
        # transfer=s3 / ebs around the transfer: the volume's attach, mounts, unmounts and
        # detach (each call and wait timed), the bucket's cleanup
        ("transfer_storage", "transfer_storage"),
        ("warnings", "warnings"),
    ):
        if pair.phases.get(phase):
            metrics[key] = [dict(d) for d in pair.phases[phase]]
    cross_checks = criu_stats_warnings(pair)
    if cross_checks:
        metrics["warnings"] = metrics.get("warnings", []) + cross_checks
    if pair.failure:
        metrics["failure"] = pair.failure
    died = pair.phases.get("workload_died")
    if died:  # the workload's own words for its death (workload_error.log)
        metrics["workload_error"] = {
            key: died[-1].get(key) for key in ("host", "pid", "error_log", "error_tail")
        }
    add_trigger_figures(metrics, experiment, pair, window_start)
    return metrics


def _fmt_s(value: Any) -> str:
    return f"{value:.2f}s" if isinstance(value, int | float) else "n/a"


def _fmt_mb(size_bytes: Any, missing: str = "n/a") -> str:
    return f"{size_bytes / MB:.2f} MB" if isinstance(size_bytes, int | float) else missing


def _fmt_rate(mb_s: Any) -> str:
    return f"{mb_s:.2f} MB/s" if isinstance(mb_s, int | float) else "n/a"


def _fmt_count(value: Any) -> str:
    return str(value) if isinstance(value, int | float) else "n/a"


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


def _predump_lines(metrics: dict[str, Any]) -> list[str]:
    """The pre-dumps; `n/a` when the strategy had some but none was recorded."""
    predump = metrics["phases"].get("predump")
    if not predump:
        mode = (metrics.get("strategy") or {}).get("mode")
        return ["Pre-dump Iterations: n/a"] if mode == "predump" else []
    lines = [
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
    return lines


def _phase_lines(phases: dict[str, Any]) -> list[str]:
    """Final dump, transfer and restore; `n/a` for a phase or a figure not recorded."""
    dump = phases.get("final_dump")
    lines = ["Final Dump:"]
    if dump:
        lines.append(
            f"  Duration: {_fmt_s(dump['duration_s'])} (frozen {_fmt_s(dump['frozen_s'])}, "
            f"{_fmt_count(dump['pages_written'])} pages, {_fmt_mb(dump['bytes'], 'n/a MB')})"
        )
    else:
        lines.append("  Duration: n/a")
    transfer = phases.get("transfer") or {}
    restore = phases.get("restore") or {}
    lines += [
        "Transfer:",
        f"  Method: {transfer.get('method') or 'n/a'}",
        f"  Duration: {_fmt_s(transfer.get('duration_s'))}",
        f"  Size: {_fmt_mb(transfer.get('bytes'))}",
        f"  Throughput: {_fmt_rate(transfer.get('throughput_mb_s'))}",
        "Restore:",
        f"  Duration: {_fmt_s(restore.get('duration_s') if restore.get('finished_at') else None)}",
    ]
    return lines + _daemon_lines(restore)


def _protection_lines(strategy: dict[str, Any]) -> list[str]:
    """How the workload's memory was protected: page traffic over TLS, and page images kept
    (keep_images: the results then hold the workload's whole memory)."""
    lines = []
    network_lazy = strategy.get("lazy_pages") and strategy.get("lazy_pages_mode") == "network"
    if strategy.get("page_server_tls") and (strategy.get("page_server") or network_lazy):
        lines.append("Page traffic: TLS (page_server_tls: the experiment's own CA)")
    if strategy.get("keep_images"):
        lines.append(
            "Page images: KEPT in these results and on both hosts (keep_images=true) - they "
            "hold the workload's whole memory; root only (0600), delete them when done"
        )
    return lines


def summary_text(metrics: dict[str, Any], metrics_written: bool = True) -> str:
    """The seed's end-of-run summary block, plus downtime and deadline verdicts.

    `metrics_written` false (save_metrics=false): the block says metrics.json was not written.
    """
    rule = "=" * 60
    lines = [
        rule,
        f"CRIU Experiment Metrics: {metrics['experiment']['name']}",
        f"Workload Type: {metrics['workload']['type']}",
        f"Hosts: {metrics['hosts']['source']} -> {metrics['hosts']['destination']}",
        f"Status: {metrics['status']}",
        rule,
    ]
    lines += _predump_lines(metrics)
    lines += _phase_lines(metrics["phases"])
    lines += [
        f"Downtime (dump start -> restored): {_fmt_s(metrics['downtime_s'])}"
        f" ({metrics['critical_path']['path']}; orchestration gap"
        f" {_fmt_s(metrics['orchestration_gap_s'])})",
        f"App-perceived downtime (progress.log gap): {_fmt_s(metrics['app_downtime_s'])}"
        f" (strace: {_fmt_s(metrics['app_downtime']['strace_s'])})",
    ]
    lines += trigger_lines(metrics)
    lines += deadline_lines(metrics)
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
    died = metrics.get("workload_error")
    if died:
        lines.append(
            f"Workload died on {died.get('host')} (pid {died.get('pid')}); "
            f"{died.get('error_log')} ends:"
        )
        lines += [f"  {line}" for line in str(died.get("error_tail") or "").splitlines()[-5:]]
    if metrics.get("warnings"):
        lines.append(f"Warnings ({len(metrics['warnings'])}):")
        lines += [f"  - {warning.get('message', warning)}" for warning in metrics["warnings"]]
    lines += _protection_lines(metrics.get("strategy") or {})
    lines += [
        f"Total Experiment Duration: {_fmt_s(metrics['experiment']['duration_s'])}",
        f"Results: {metrics['experiment']['results_dir']}",
    ]
    if not metrics_written:
        lines.append("metrics.json was not written (save_metrics=false)")
    lines.append(rule)
    return "\n".join(lines)


# -- when the migration started: the trigger, the spot notice, what a missed deadline needs --

# The trigger=ready conditions (module_utils/trigger_conditions.py CONDITIONS).
TRIGGER_CONDITIONS = ("migrate_after_s", "migrate_after_lines", "migrate_at_rss_mb")
# The deadline clock's reading, phase by phase: how the summary names each.
DEADLINE_PHASES = {
    "detection": "the notice's detection",
    "before_final_dump": "the time before the final dump",
    "final_dump": "the final dump",
    "transfer": "the transfer",
    "restore": "the restore",
    "orchestration_gap": "the orchestration between them",
}


def _stamps(record: dict[str, Any], *keys: str) -> dict[str, Any]:
    """`record` with its epoch stamps under `keys` as ISO strings."""
    return {key: iso_utc(value) if key in keys else value for key, value in record.items()}


def deadline_phases(
    pair: PairRecord,
    window_start: float | None,
    seen_at: float | None,
    downtime_parts: dict[str, Any],
) -> dict[str, float]:
    """What the deadline clock's reading is made of, in order: the notice's detection (its
    issue to its sighting), the time before the final dump (pre-dumps, Ansible's tasks),
    the final dump, the transfer, the restore and the orchestration between them."""
    phases: dict[str, float] = {}
    start = window_start
    if seen_at is not None and start is not None:
        phases["detection"] = seen_at - start
        start = seen_at
    dump_start = pair.last("final_dump").get("started_at")
    if start is not None and dump_start:
        phases["before_final_dump"] = float(dump_start) - start
    for key in ("final_dump", "transfer", "restore", "orchestration_gap"):
        value = downtime_parts.get(key)
        if isinstance(value, int | float):
            phases[key] = float(value)
    return {key: round(value, 6) for key, value in phases.items()}


def shrink_to_meet(phases_s: dict[str, float], missed_by_s: float) -> dict[str, Any]:
    """Which phase would have to shrink, and to what, for a missed deadline to be met: the
    longest one, when it alone is longer than what is missing."""
    if not phases_s:
        return {"missed_by_s": round(missed_by_s, 3), "phase": None}
    phase, value = max(phases_s.items(), key=lambda item: item[1])
    if value >= missed_by_s:
        return {
            "missed_by_s": round(missed_by_s, 3),
            "phase": phase,
            "phase_s": round(value, 3),
            "shrink_to_s": round(value - missed_by_s, 3),
        }
    return {
        "missed_by_s": round(missed_by_s, 3),
        "phase": None,
        "longest": phase,
        "longest_s": round(value, 3),
    }


def _notice_trigger(notice: dict[str, Any], pair: PairRecord) -> dict[str, Any]:
    """metrics.json's `trigger` of a notice-triggered run."""
    watch = dict(notice.get("watch") or {})
    errors = [_stamps(e, "first_at", "last_at") for e in watch.pop("errors", [])]
    trigger = {
        "kind": "notice",
        "provider": notice.get("provider"),
        "endpoint": watch.get("endpoint"),
        "notice_kind": notice.get("kind"),
        "action": notice.get("action"),
        "notice_at": iso_utc(notice.get("notice_at")),
        "notice_at_from": notice.get("notice_at_from"),
        "notice_at_estimated": bool(notice.get("notice_at_estimated")),
        "notice_seen_at": iso_utc(notice.get("seen_at")),
        "detection_delay_s": notice.get("detection_delay_s"),
        "notice_length_s": notice.get("notice_length_s"),
        "deadline_at": iso_utc(notice.get("deadline_at")),
        "deadline_passed": bool(notice.get("deadline_passed")),
        "seen_during": notice.get("seen_during"),
        "predumps_before": notice.get("predumps_before"),
        "polls": watch.get("polls"),
        "poll_s": watch.get("poll_s"),
        "watch_started_at": iso_utc(watch.get("watch_started_at")),
        "errors": errors,
        "last_answer": watch.get("last_answer"),
        "message": notice.get("message"),
        "raw": notice.get("raw"),
    }
    for key in ("tokens", "document_incarnation"):
        if watch.get(key) is not None:
            trigger[key] = watch[key]
    if notice.get("event_id"):
        trigger["event_id"] = notice["event_id"]
    ack = {k: v for k, v in pair.last("notice_ack").items() if k != "host"}
    if ack:
        trigger["acknowledged"] = _stamps(ack, "at")
    return trigger


def add_trigger_figures(
    metrics: dict[str, Any],
    experiment: dict[str, Any],
    pair: PairRecord,
    window_start: float | None,
) -> None:
    """The trigger's figures in `metrics`: `trigger` (what started the migration, and when),
    `experiment.notice_at` / `notice_seen_at` and `detection_delay_s` (when a notice came),
    the notice's own deadline beside the clouds' (`deadlines.notice`), the deadline clock's
    reading phase by phase (`deadline_phases_s`) and, for each missed deadline, the phase that
    would have to shrink to meet it (`deadline_shrink`)."""
    settings = experiment.get("settings") or {}
    notice = {k: v for k, v in pair.last("notice").items() if k != "host"}
    kind = "notice" if notice else str(settings.get("trigger") or "ready")
    trigger: dict[str, Any]
    if notice:
        trigger = _notice_trigger(notice, pair)
        metrics["experiment"]["notice_at"] = trigger["notice_at"]
        metrics["experiment"]["notice_seen_at"] = trigger["notice_seen_at"]
        metrics["detection_delay_s"] = notice.get("detection_delay_s")
        length = notice.get("notice_length_s")
        if notice.get("deadline_at") is not None and length is not None:
            # the notice's own deadline (its length from its issue), beside the clouds'
            migration_s = metrics["migration_s"]
            metrics["deadlines"]["notice"] = {
                "deadline_s": float(length),
                "met": migration_s is not None and migration_s <= float(length),
                "slack_s": None if migration_s is None else round(float(length) - migration_s, 3),
                "provider": notice.get("provider"),
                "deadline_at": trigger["deadline_at"],
            }
        if notice.get("deadline_passed"):
            metrics.setdefault("warnings", []).append(
                {
                    "check": "notice_deadline_passed",
                    "phase": "trigger",
                    "host": pair.source,
                    "message": notice.get("message"),
                }
            )
    elif kind == "notice":
        # the run ended before a notice came (a watch that timed out, an earlier failure)
        trigger = {
            "kind": "notice",
            "provider": settings.get("notice_provider"),
            "endpoint": settings.get("notice_endpoint"),
            "notice_at": None,
        }
    else:
        held = {k: v for k, v in pair.last("trigger").items() if k != "host"}
        trigger = {
            "kind": "ready",
            "conditions": {name: settings.get(name, 0) for name in TRIGGER_CONDITIONS},
            "held": {
                name: _stamps(value, "at") for name, value in (held.get("held") or {}).items()
            },
            "ready_at": iso_utc(held.get("ready_at")),
            "held_at": iso_utc(held.get("held_at")),
            "waited_s": held.get("waited_s"),
            "after_ready_s": held.get("after_ready_s"),
        }
    probe = {k: v for k, v in pair.last("notice_probe").items() if k != "host"}
    if probe:
        trigger["probe"] = {
            "answer": probe.get("answer"),
            "pending": bool(probe.get("pending_notice")),
        }
    metrics["trigger"] = trigger
    parts = {
        "final_dump": (metrics["phases"].get("final_dump") or {}).get("duration_s"),
        "transfer": (metrics["phases"].get("transfer") or {}).get("duration_s"),
        "restore": (metrics["phases"].get("restore") or {}).get("duration_s"),
        "orchestration_gap": metrics.get("orchestration_gap_s"),
    }
    phases_s = deadline_phases(pair, window_start, notice.get("seen_at"), parts)
    metrics["deadline_phases_s"] = phases_s
    shrink = {
        name: shrink_to_meet(phases_s, -verdict["slack_s"])
        for name, verdict in metrics["deadlines"].items()
        if verdict.get("slack_s") is not None and verdict["slack_s"] < 0
    }
    if shrink:
        metrics["deadline_shrink"] = shrink


def _clock(epoch_iso: Any) -> str:
    """An ISO stamp's time of day (the summary's width)."""
    return str(epoch_iso).split("T", 1)[-1] if epoch_iso else "n/a"


def trigger_lines(metrics: dict[str, Any]) -> list[str]:
    """The summary's lines of the trigger: the notice (issued, seen, detection delay) or
    the conditions that held; nothing for a run that migrated as soon as it was ready."""
    trigger = metrics.get("trigger") or {}
    if trigger.get("kind") == "ready":
        conditions = {k: v for k, v in (trigger.get("conditions") or {}).items() if v}
        if not conditions:
            return []
        held = trigger.get("held") or {}
        parts = [
            f"{name}={value} ("
            + (
                f"{held[name]['reached']:g} at {_clock(held[name]['at'])}"
                if name in held
                else "did not hold"
            )
            + ")"
            for name, value in conditions.items()
        ]
        return [
            f"Trigger: ready, then {', '.join(parts)}; waited {_fmt_s(trigger.get('waited_s'))}"
        ]
    if not trigger.get("notice_at"):
        return [
            f"Trigger: {trigger.get('provider')} spot notice at {trigger.get('endpoint')}: "
            "none came"
        ]
    lines = [
        f"Trigger: {trigger['provider']} spot notice ({trigger['action']}), issued "
        f"{_clock(trigger['notice_at'])} ({trigger['notice_at_from']}), seen "
        f"{_clock(trigger['notice_seen_at'])} during {trigger.get('seen_during') or 'the wait'}",
        f"  Detection delay: {_fmt_s(trigger['detection_delay_s'])}"
        + (" (GCP gives no issue time)" if trigger.get("notice_at_estimated") else "")
        + f" (polled every {_fmt_s(trigger.get('poll_s'))}, {trigger.get('polls')} polls)",
    ]
    for error in trigger.get("errors") or []:
        lines.append(f"  While watching ({error['count']}x): {str(error['message'])[:160]}")
    if trigger.get("deadline_passed"):
        lines.append(f"  {trigger.get('message')}")
    if trigger.get("acknowledged"):
        lines.append(
            f"  Acknowledged event {trigger['acknowledged'].get('event_id')} after the restore"
        )
    return lines


def deadline_lines(metrics: dict[str, Any]) -> list[str]:
    """The deadline clock's reading, each deadline's verdict and, for a missed one, the
    phase that would have to shrink to meet it."""
    notice = (metrics.get("trigger") or {}).get("notice_at")
    lines = [
        (
            "Notice -> migration done (deadline clock): "
            if notice
            else "Migration time (deadline clock): "
        )
        + _fmt_s(metrics["migration_s"])
    ]
    phases_s = metrics.get("deadline_phases_s") or {}
    if notice and phases_s:
        lines.append(
            "  Clock: "
            + ", ".join(
                f"{key.replace('_', ' ')} {_fmt_s(value)}" for key, value in phases_s.items()
            )
        )
    for name, verdict in metrics["deadlines"].items():
        met = "n/a" if verdict["slack_s"] is None else ("met" if verdict["met"] else "MISSED")
        slack = "" if verdict["slack_s"] is None else f" (slack {verdict['slack_s']:.2f}s)"
        label = name
        if name == "notice":
            label = f"notice ({verdict.get('provider')}, {verdict['deadline_s']:g} s)"
        lines.append(f"  Deadline {label}: {met}{slack}")
        shrink = (metrics.get("deadline_shrink") or {}).get(name)
        if shrink and shrink.get("phase"):
            lines.append(
                f"    to meet it, {_phase_label(metrics, shrink['phase'])} "
                f"({shrink['phase_s']:.2f}s) would have to shrink by {shrink['missed_by_s']:.2f}s "
                f"(to {shrink['shrink_to_s']:.2f}s)"
            )
        elif shrink and shrink.get("longest"):
            lines.append(
                f"    to meet it, no single phase would do: {shrink['missed_by_s']:.2f}s are "
                f"missing, the longest is {_phase_label(metrics, shrink['longest'])} "
                f"({shrink['longest_s']:.2f}s)"
            )
    return lines


def _phase_label(metrics: dict[str, Any], phase: str) -> str:
    if phase == "before_final_dump" and metrics["phases"].get("predump"):
        return "the pre-dumps before the final dump"
    return DEADLINE_PHASES.get(phase, phase)
