"""Live progress of a migrate.yml run, from ansible-runner's events.

`Tracker` reads the events (plain dicts: `event`, `event_data.role`, `.task`, `.host`,
`.task_action`, `.res`) and knows the phase running (by its role, as metrics.json counts
phases), the elapsed time and the deadline clock: started when the first checkpoint
operation starts (the pre-dump loop, the fused critical path, or the stepwise final
dump), stopped when the restore returns. It is the control node's view, to within a task
boundary; metrics.json has the exact clock.

`Display` shows it: on a terminal one line redrawn in place (twice a second, so the clocks
run between events); otherwise one plain line per phase, per deadline-clock event and per
failure.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TextIO

from metrics_report import CLOUD_DEADLINES_S, ROLE_PHASES

# Module names (the last part of task_action) whose task starts / ends the deadline clock.
CLOCK_START_ACTIONS = {"predump_loop", "critical_path"}
CLOCK_STOP_ACTIONS = {"critical_path"}
# Stepwise: the final dump's task (role checkpoint_dump) and the restore (checkpoint_restore).
STEPWISE_DUMP = ("checkpoint_dump", "Final dump")
STEPWISE_RESTORE = ("checkpoint_restore", "Restore the workload")
# critical_path=fused: the checkpoint roles' tasks run inside the critical_path role.
FUSED_ROLES = ("checkpoint_dump", "checkpoint_transfer", "checkpoint_restore")
# Seconds a started task must run without a skip before its phase is announced.
SETTLE_S = 0.3
PHASE_WORDS = {
    "preflight": "preflight (validation)",
    "node_checks": "node checks",
    "deploy": "deploying the workload",
    "workload_start": "starting the workload",
    "capture": "capturing the workload's output",
    "predump": "pre-dumps",
    "critical_path": "critical path (dump -> transfer -> restore)",
    "final_dump": "final dump",
    "transfer": "transfer",
    "restore": "restore",
    "trigger": "waiting for the moment to migrate (trigger)",
    "notice_ack": "acknowledging the notice",
    "verification": "verification",
    "rollback": "ROLLBACK",
    "finish": "finishing the workload",
    "collect": "collecting the results",
    "cleanup": "cleaning up",
}


def _action(data: Mapping[str, Any]) -> str:
    return str(data.get("task_action") or "").rsplit(".", 1)[-1]


def _task(data: Mapping[str, Any]) -> str:
    """The task's own name, without the `role : ` prefix."""
    return str(data.get("task") or "").split(" : ", 1)[-1]


def deadline_words(seconds: float) -> str:
    """`GCP/Azure 30 s: ok, AWS 120 s: ok` for a deadline clock reading."""
    shortest = min(CLOUD_DEADLINES_S.values())
    longest = max(CLOUD_DEADLINES_S.values())
    words = []
    for limit, name in ((shortest, "GCP/Azure"), (longest, "AWS")):
        words.append(f"{name} {limit:g} s: {'ok' if seconds <= limit else 'MISSED'}")
    return ", ".join(words)


# A line worth showing: (the monotonic time it happened, its text).
Line = tuple[float, str]


@dataclass
class _Started:
    """A task started on a host, not yet known to run (Ansible starts a task before it
    decides to skip it)."""

    uuid: str
    host: str
    role: str
    task: str
    action: str
    phase: str | None
    at: float


@dataclass
class Tracker:
    """What the run is doing, from its events.

    A started task counts once it has a result or ran `SETTLE_S` without being skipped:
    then its phase is announced (once per phase) and, for the first checkpoint operation,
    the deadline clock starts at the task's start. With `fused`, the checkpoint roles'
    tasks (the page server started and the destination prepared before the freeze, the
    daemons' ends) belong to the critical path.
    """

    clock: Callable[[], float] = time.monotonic
    fused: bool = True
    started: float | None = None
    phase: str = ""
    task: str = ""
    host: str = ""
    deadline_started: float | None = None
    deadline_stopped: float | None = None
    failures: list[str] = field(default_factory=list)
    experiment: dict[str, Any] | None = None
    preflight_refusal: str | None = None
    announced: list[str] = field(default_factory=list)
    pending: list[_Started] = field(default_factory=list)

    def elapsed(self, at: float | None = None) -> float:
        if self.started is None:
            return 0.0
        return (self.clock() if at is None else at) - self.started

    def deadline_s(self) -> float | None:
        if self.deadline_started is None:
            return None
        end = self.deadline_stopped if self.deadline_stopped is not None else self.clock()
        return end - self.deadline_started

    def _phase_of(self, role: str) -> str | None:
        if not role:
            return None  # a task of the playbook itself: the phase goes on
        if self.fused and role in FUSED_ROLES and self.phase != "rollback":
            return "critical_path"
        return ROLE_PHASES.get(role, role)

    @staticmethod
    def _starts_clock(started: _Started) -> bool:
        return started.action in CLOCK_START_ACTIONS or (
            started.role == STEPWISE_DUMP[0] and started.task.startswith(STEPWISE_DUMP[1])
        )

    def _confirm(self, started: _Started) -> list[Line]:
        lines: list[Line] = []
        if started.phase and started.phase not in self.announced:
            self.announced.append(started.phase)
            lines.append((started.at, PHASE_WORDS.get(started.phase, started.phase)))
        if self.deadline_started is None and self._starts_clock(started):
            self.deadline_started = started.at
            lines.append((started.at, "deadline clock started (first checkpoint operation)"))
        return lines

    def poll(self) -> list[Line]:
        """What became due by now: tasks that ran SETTLE_S without being skipped."""
        now = self.clock()
        due = [s for s in self.pending if now - s.at >= SETTLE_S]
        self.pending = [s for s in self.pending if now - s.at < SETTLE_S]
        return [line for started in due for line in self._confirm(started)]

    def _settle(self, uuid: str, host: str, skipped: bool) -> list[Line]:
        done = [s for s in self.pending if s.uuid == uuid and s.host == host]
        self.pending = [s for s in self.pending if s not in done]
        return [] if skipped else [line for started in done for line in self._confirm(started)]

    def feed(self, event: Mapping[str, Any]) -> list[Line]:
        """Take one event; returns the lines it is worth (a phase that runs, the deadline
        clock, failures)."""
        now = self.clock()
        if self.started is None:
            self.started = now
        kind = str(event.get("event") or "")
        data = event.get("event_data") or {}
        role = str(data.get("role") or "")
        uuid = str(data.get("task_uuid") or data.get("task") or "")
        host = str(data.get("host") or "")
        lines = self.poll()
        if kind == "runner_on_start":
            self.task, self.host = _task(data), host
            phase = self._phase_of(role)
            if phase is not None:
                self.phase = phase
            self.pending.append(_Started(uuid, host, role, self.task, _action(data), phase, now))
        elif kind == "runner_on_skipped":
            lines += self._settle(uuid, host, skipped=True)
        elif kind in ("runner_on_ok", "runner_on_failed", "runner_on_unreachable"):
            lines += self._settle(uuid, host, skipped=False)
            action, task = _action(data), _task(data)
            if (
                self.deadline_started is not None
                and self.deadline_stopped is None
                and (
                    action in CLOCK_STOP_ACTIONS
                    or (role == STEPWISE_RESTORE[0] and task.startswith(STEPWISE_RESTORE[1]))
                )
            ):
                self.deadline_stopped = now
                if kind == "runner_on_ok":
                    reading = self.deadline_s() or 0.0
                    lines.append(
                        (
                            now,
                            f"deadline clock stopped: ~{reading:.1f} s as the control node saw it "
                            f"({deadline_words(reading)}; metrics.json has the exact clock)",
                        )
                    )
        if kind == "runner_on_ok":
            result = data.get("res") or {}
            if isinstance(result, Mapping) and isinstance(
                result.get("migration_experiment"), Mapping
            ):
                self.experiment = dict(result["migration_experiment"])
        if kind in ("runner_on_failed", "runner_on_unreachable") and not data.get("ignore_errors"):
            result = data.get("res") or {}
            message = str(result.get("msg") or "") if isinstance(result, Mapping) else ""
            if role == "preflight":
                self.preflight_refusal = message
            first = message.splitlines()[0] if message else ""
            line = f"FAILED: {_task(data)} on {host}: {first}"
            self.failures.append(line)
            lines.append((now, line))
        return lines

    def status(self) -> str:
        """The one-line status: elapsed, phase, task and host, the deadline clock."""
        text = f"{_clock(self.elapsed())} {PHASE_WORDS.get(self.phase, self.phase) or 'starting'}"
        if self.task:
            text += f": {self.task}"
        if self.host:
            text += f" [{self.host}]"
        reading = self.deadline_s()
        if reading is not None:
            state = "stopped" if self.deadline_stopped is not None else "running"
            text += f" | deadline clock {reading:.1f} s ({state})"
        return text


def _clock(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes:02d}:{secs:02d}"


class Display:
    """Shows a Tracker: one redrawn line on a TTY, plain lines otherwise."""

    def __init__(
        self,
        tracker: Tracker,
        stream: TextIO | None = None,
        tty: bool | None = None,
        prefix: Callable[[], str] = lambda: "",
        verbose: bool = False,
    ) -> None:
        self.tracker = tracker
        self.stream = stream or sys.stdout
        self.tty = self.stream.isatty() if tty is None else tty
        self.prefix = prefix
        self.verbose = verbose
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._width = 0

    def _columns(self) -> int:
        import shutil

        return max(40, shutil.get_terminal_size((120, 20)).columns - 1)

    def _redraw(self) -> None:
        line = self.prefix() + self.tracker.status()
        line = line[: self._columns()]
        self.stream.write("\r" + line + " " * max(0, self._width - len(line)))
        self.stream.flush()
        self._width = len(line)

    def _clear(self) -> None:
        if self._width:
            self.stream.write("\r" + " " * self._width + "\r")
            self._width = 0

    def _tick(self) -> None:
        while not self._stop.wait(0.25 if not self.tty else 0.5):
            with self._lock:
                lines = self.tracker.poll()
            self._show(lines)
            if self.tty:
                with self._lock:
                    self._redraw()

    def start(self) -> None:
        if not self.verbose:
            self._thread = threading.Thread(target=self._tick, daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2)
        with self._lock:
            self._clear()
            self.stream.flush()

    def say(self, text: str) -> None:
        """A line of its own (above the redrawn line on a TTY)."""
        with self._lock:
            self._clear()
            self.stream.write(text + "\n")
            if self.tty and self._thread is not None:
                self._redraw()
            self.stream.flush()

    def event(self, event: Mapping[str, Any]) -> None:
        with self._lock:
            lines = self.tracker.feed(event)
        if self.verbose:
            text = str(event.get("stdout") or "")
            if text.strip():
                self.say(text.rstrip())
            return
        self._show(lines)
        if self.tty:
            with self._lock:
                self._redraw()

    def _show(self, lines: list[Line]) -> None:
        for at, line in lines:
            if self.tty:
                # on a terminal the line shows the phase; only verdicts get a line of their own
                if line.startswith(("FAILED", "deadline clock stopped")):
                    self.say(f"{self.prefix()}{_clock(self.tracker.elapsed(at))} {line}")
            else:
                self.say(f"{self.prefix()}[{self.tracker.elapsed(at):7.1f}s] {line}")
