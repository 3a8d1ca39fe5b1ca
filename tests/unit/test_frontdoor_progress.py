"""Live progress from ansible-runner's events: the phase by role, the deadline clock, the
preflight's refusal; one redrawn line on a terminal, plain lines otherwise."""

from __future__ import annotations

import io
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from frontdoor.progress import Display, Tracker, deadline_words  # noqa: E402


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def event(
    kind: str, role: str = "", task: str = "", host: str = "", action: str = "", **res: Any
) -> dict[str, Any]:
    data: dict[str, Any] = {
        "role": role,
        "task": f"{role} : {task}" if role else task,
        "task_uuid": f"{role}/{task}",
        "host": host,
        "task_action": action,
    }
    if res:
        data["res"] = res
    return {"event": kind, "event_data": data}


def task(
    at: float,
    role: str,
    name: str,
    host: str = "source",
    action: str = "",
    ends: float | None = None,
    skipped: bool = False,
    **res: Any,
) -> list[tuple[float, dict[str, Any]]]:
    """A task's start and its result (`ends`: when, default at once)."""
    result = "runner_on_skipped" if skipped else "runner_on_ok"
    return [
        (at, event("runner_on_start", role, name, host, action)),
        (at if ends is None else ends, event(result, role, name, host, action, **res)),
    ]


FUSED_RUN = [
    *task(0.0, "preflight", "Validate the experiment", "localhost"),
    *task(0.2, "preflight", "Create the results folders", "localhost", "migration_experiment",
          migration_experiment={"pairs": [{"source": "source", "results_dir": "/r/memory_1"}]}),
    *task(1.0, "node_checks", "Check the ports", "destination", ends=1.5),
    *task(5.0, "workload_start", "Start the workload", ends=6.0),
    # Ansible starts a task before it skips it: no phase announced
    *task(8.0, "checkpoint_predump", "Pre-dumps", action="predump_loop", skipped=True),
    # the fused path's preparation (imported checkpoint roles) is the critical path
    *task(9.0, "checkpoint_restore", "Prepare the destination", "destination", ends=9.5),
    *task(10.0, "critical_path", "Final dump, transfer and restore in one call on the source",
          action="critical_path", ends=11.5),
    *task(12.0, "workload_verify", "Verify", ends=12.5),
]  # fmt: skip


def feed(tracker: Tracker, clock: Clock, events: list[tuple[float, dict[str, Any]]]) -> list[str]:
    lines: list[str] = []
    for at, item in events:
        clock.now = 100.0 + at
        lines += [text for _, text in tracker.feed(item)]
    return lines


def test_phases_and_the_deadline_clock_of_a_fused_run() -> None:
    clock = Clock()
    tracker = Tracker(clock=clock)
    lines = feed(tracker, clock, FUSED_RUN[:13])
    clock.now = 111.0
    lines += [text for _, text in tracker.poll()]
    assert tracker.phase == "critical_path" and tracker.deadline_started == 110.0
    assert "deadline clock 1.0 s (running)" in tracker.status()
    lines += feed(tracker, clock, FUSED_RUN[13:])
    lines += [text for _, text in tracker.poll()]
    assert lines == [
        "preflight (validation)",
        "node checks",
        "starting the workload",
        "critical path (dump -> transfer -> restore)",
        "deadline clock started (first checkpoint operation)",
        "deadline clock stopped: ~1.5 s as the control node saw it (GCP/Azure 30 s: ok, AWS 120 s: ok; metrics.json has the exact clock)",
        "verification",
    ]
    assert tracker.experiment == {"pairs": [{"source": "source", "results_dir": "/r/memory_1"}]}
    clock.now = 130.0
    assert tracker.status().startswith("00:30 verification: Verify [source]")
    assert "deadline clock 1.5 s (stopped)" in tracker.status()


def test_a_long_task_is_announced_after_it_settles() -> None:
    clock = Clock()
    tracker = Tracker(clock=clock)
    feed(
        tracker,
        clock,
        [
            (
                0.0,
                event(
                    "runner_on_start", "checkpoint_predump", "Pre-dumps", "source", "predump_loop"
                ),
            )
        ],
    )
    clock.now = 100.2
    assert tracker.poll() == []
    clock.now = 100.4
    assert tracker.poll() == [
        (100.0, "pre-dumps"),
        (100.0, "deadline clock started (first checkpoint operation)"),
    ]
    assert tracker.deadline_started == 100.0


def test_stepwise_phases_and_clock() -> None:
    clock = Clock()
    tracker = Tracker(clock=clock, fused=False)
    lines = feed(
        tracker,
        clock,
        [
            *task(1.0, "checkpoint_dump", "Final dump of the workload's process tree", action="criu", ends=1.4),
            *task(1.5, "checkpoint_transfer", "Send the images", ends=2.5),
            *task(2.6, "checkpoint_restore", "Restore the workload on the destination", action="criu", ends=3.0),
        ],
    )  # fmt: skip
    assert tracker.deadline_started == 101.0 and tracker.deadline_s() == 2.0
    assert lines[:2] == ["final dump", "deadline clock started (first checkpoint operation)"]
    assert lines[2:4] == ["transfer", "restore"]


def test_a_preflight_refusal_is_recognised() -> None:
    tracker = Tracker(clock=Clock())
    lines = tracker.feed(
        event("runner_on_failed", "preflight", "Refuse bad input", "localhost", "ansible.builtin.fail",
              msg="The preflight refused the experiment (nothing ran on any host):\n- mb_size=0 MB is below the minimum 1 MB")
    )  # fmt: skip
    assert tracker.preflight_refusal is not None and "mb_size=0" in tracker.preflight_refusal
    assert [text for _, text in lines] == [
        "FAILED: Refuse bad input on localhost: "
        "The preflight refused the experiment (nothing ran on any host):"
    ]


def test_deadline_words() -> None:
    assert deadline_words(12.0) == "GCP/Azure 30 s: ok, AWS 120 s: ok"
    assert deadline_words(45.0) == "GCP/Azure 30 s: MISSED, AWS 120 s: ok"


def test_plain_lines_when_not_a_terminal() -> None:
    clock = Clock()
    stream = io.StringIO()
    display = Display(Tracker(clock=clock), stream, tty=False, prefix=lambda: "run 1/4 ")
    for at, item in FUSED_RUN:
        clock.now = 100.0 + at
        display.event(item)
    lines = stream.getvalue().splitlines()
    assert "\r" not in stream.getvalue()
    assert lines[:3] == [
        "run 1/4 [    0.0s] preflight (validation)",
        "run 1/4 [    1.0s] node checks",
        "run 1/4 [    5.0s] starting the workload",
    ]
    assert (
        "run 1/4 [   11.5s] deadline clock stopped: ~1.5 s as the control node saw it (GCP/Azure 30 s: ok, AWS 120 s: ok; metrics.json has the exact clock)"
        in lines
    )
    assert not any("pre-dumps" in line for line in lines)


def test_one_redrawn_line_on_a_terminal() -> None:
    clock = Clock()
    stream = io.StringIO()
    display = Display(Tracker(clock=clock), stream, tty=True)
    for at, item in FUSED_RUN:
        clock.now = 100.0 + at
        display.event(item)
    text = stream.getvalue()
    assert text.count("\n") == 1  # only the deadline clock's verdict gets a line of its own
    assert text.count("\r") >= len(FUSED_RUN)
    assert text.rsplit("\r", 1)[-1].startswith("00:12 verification: Verify [source]")
