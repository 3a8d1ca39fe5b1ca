"""trigger=notice and the trigger=ready conditions for real: migrate.yml in the lab, the
cloud's interruption notice served by scripts/fake_metadata.py.

Each test starts its own fake metadata service (a detached process, module_utils/processes.py,
stopped by its PID) on the lab bridge's control-side address - 10.77.0.1 in the namespaces
lab, 10.79.0.1 in the guest lab - on a free port, and points `notice_endpoint` at it; nothing
here contacts a real metadata service. The notice is issued through the fake's admin
endpoint while the memory workload runs: a moment after the run's task that waits for it
(or the pre-dumps) started, as ansible-runner reports it.

Sizes are small (the memory workload 32 MB every 0.5 s): one lab migration takes ~25 s.
The measured times are printed (`pytest -s`).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from conftest import LAB, REPO, VENV_BIN, PlaybookRun
from processes import start_detached, terminate  # module_utils/ (tests/conftest.py)

pytestmark = pytest.mark.lab

MEMORY = {"workload": "memory", "mb_size": 32, "interval": 0.5, "max_memory": 256}
FAKE = REPO / "scripts" / "fake_metadata.py"
WAIT_TASK = "Wait for the spot notice"
PREDUMP_TASK = "Pre-dumps, each sent to the destination"
NOTICE_DELAY_S = 2.0  # the workload runs this long on the source after the wait starts


def _say(message: str) -> None:
    print(f"[notice] {message}", flush=True)


def epoch(stamp: str) -> float:
    return datetime.fromisoformat(stamp).timestamp()


class FakeService:
    """scripts/fake_metadata.py serving one provider, as a detached process."""

    def __init__(self, provider: str, bind: str, folder: Path, *extra: str) -> None:
        self.provider = provider
        ready = folder / f"fake-{provider}.url"
        self.log = folder / f"fake-{provider}.log"
        self.pid = start_detached(
            [sys.executable, FAKE, "serve", "--provider", provider, "--bind", bind,
             "--port", "0", "--ready-file", ready, *extra],
            cwd=REPO,
            output=self.log,
        )  # fmt: skip
        deadline = time.monotonic() + 10
        while not ready.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert ready.exists(), self.log.read_text() if self.log.exists() else "no log"
        self.url = ready.read_text().strip()
        self.issued: list[dict[str, Any]] = []

    def admin(self, path: str, data: dict[str, Any] | None = None) -> Any:
        sys.path.insert(0, str(REPO / "scripts"))
        from fake_metadata import admin

        return admin(self.url, path, data)

    def notice(self, **spec: Any) -> dict[str, Any]:
        issued = self.admin("/_admin/notice", spec)
        self.issued.append(issued)
        return issued

    def state(self) -> dict[str, Any]:
        return self.admin("/_admin/state")

    def stop(self) -> None:
        assert terminate(self.pid, grace_s=5), f"fake metadata service {self.pid} still runs"


@pytest.fixture
def fake_service(tmp_path: Path) -> Iterator[Callable[..., FakeService]]:
    """Start fake metadata services for a test; each is stopped by its PID afterwards."""
    started: list[FakeService] = []

    def start(provider: str, bind: str = LAB.address("bridge"), *extra: str) -> FakeService:
        service = FakeService(provider, bind, tmp_path, *extra)
        started.append(service)
        return service

    yield start
    for service in started:
        service.stop()


def run_migrate(
    tmp_path: Path,
    extravars: dict[str, Any],
    on_task_start: dict[str, Callable[[], None]] | None = None,
    inventory: str | None = None,
) -> PlaybookRun:
    """migrate.yml through ansible-runner (as conftest.run_playbook), calling
    on_task_start[<name prefix>] in a thread when a task of that name starts."""
    import ansible_runner

    results_root = tmp_path / "results"
    private = tmp_path / "runner"
    private.mkdir(parents=True, exist_ok=True)
    fired: set[str] = set()
    threads: list[threading.Thread] = []

    def handler(event: dict[str, Any]) -> bool:
        if event.get("event") == "runner_on_start":
            task = str(event.get("event_data", {}).get("task", ""))
            for prefix, action in (on_task_start or {}).items():
                if task.startswith(prefix) and prefix not in fired:
                    fired.add(prefix)
                    thread = threading.Thread(target=action, daemon=True)
                    thread.start()
                    threads.append(thread)
        return True

    kwargs: dict[str, Any] = {"inventory": inventory} if inventory else {}
    STARTED_RUNS.append((results_root, inventory))
    t0 = time.monotonic()
    runner = ansible_runner.run(
        private_data_dir=str(private),
        project_dir=str(REPO),
        playbook="migrate.yml",
        extravars={"results_root": str(results_root), **extravars},
        envvars={
            "ANSIBLE_CONFIG": str(REPO / "ansible.cfg"),
            "ANSIBLE_CALLBACK_PLUGINS": str(REPO / "callback_plugins"),
            "ANSIBLE_SSH_CONTROL_PATH_DIR": str(REPO / ".ansible" / "cp"),
            "PATH": f"{VENV_BIN}:{os.environ.get('PATH', '')}",
            "ANSIBLE_NOCOLOR": "1",
        },
        event_handler=handler,
        quiet=True,
        **kwargs,
    )
    for thread in threads:
        thread.join(timeout=30)
    _say(f"migrate.yml {extravars} took {time.monotonic() - t0:.1f} s")
    stdout = runner.stdout.read() if runner.stdout else ""
    run = PlaybookRun(
        rc=runner.rc,
        status=runner.status,
        stdout=stdout,
        events=list(runner.events),
        results_root=results_root if results_root.exists() else None,
    )
    assert set(on_task_start or {}) <= fired, (
        f"tasks never started: {set(on_task_start or {}) - fired}"
    )
    return run


# The runs this module started: (results root, inventory), for leave_no_workload_behind.
STARTED_RUNS: list[tuple[Path, str | None]] = []


@pytest.fixture(autouse=True)
def _leave_no_workload_behind() -> Iterator[None]:
    yield
    while STARTED_RUNS:
        leave_no_workload_behind(*STARTED_RUNS.pop())


def leave_no_workload_behind(results_root: Path, inventory: str | None) -> None:
    """A failed run leaves the workload running on the source, by design (the workload is
    never lost), and so does a test stopped midway (its timeout); the labs are shared, so
    the test ends the workload it started - by its PID, when that PID still runs this
    experiment's script - and removes the experiment's folders on both hosts."""
    if not results_root.exists():
        return
    for folder in sorted(results_root.iterdir()):
        journal_path = folder / "journal.json"
        metrics_path = folder / "metrics.json"
        if not journal_path.exists():
            continue
        if metrics_path.exists() and json.loads(metrics_path.read_text()).get("status") == "ok":
            continue
        journal = json.loads(journal_path.read_text())
        experiment, pid = journal.get("experiment"), journal.get("pid")
        if not experiment:
            continue
        script = (
            (
                f"grep -qa -- '{experiment}' /proc/{pid}/cmdline 2>/dev/null && kill {pid}; "
                if pid
                else ""
            )
            + f"rm -rf /var/lib/criu-migration/work/{experiment} /var/lib/criu-migration/images/{experiment}"
        )
        subprocess.run(
            [str(VENV_BIN / "ansible"), "source,destination", *(["-i", inventory] if inventory else []),
             "-m", "shell", "-a", script, "-o"],
            cwd=REPO, env={**os.environ, "ANSIBLE_CONFIG": str(REPO / "ansible.cfg")},
            capture_output=True, text=True, stdin=subprocess.DEVNULL, check=False,
        )  # fmt: skip


def notice_vars(service: FakeService, **extra: Any) -> dict[str, Any]:
    return {
        **MEMORY,
        "trigger": "notice",
        "notice_provider": service.provider,
        "notice_endpoint": service.url,
        "notice_poll_s": 0.5,
        "notice_timeout_s": 120,
        **extra,
    }


def later(seconds: float, action: Callable[[], Any]) -> Callable[[], None]:
    def run() -> None:
        time.sleep(seconds)
        action()

    return run


def assert_migrated_on_the_notice(
    run: PlaybookRun, service: FakeService, poll_s: float = 0.5
) -> dict[str, Any]:
    """The run migrated for real, its deadline clock started at the notice's issue, and the
    notice's figures are in metrics.json."""
    assert run.rc == 0, run.stdout[-6000:]
    metrics = run.metrics()
    assert metrics["status"] == "ok"
    assert metrics["verification"]["restored_running"] is True, metrics["verification"]
    assert metrics["verification"]["state_continuous"] is True, metrics["verification"]
    issued = service.issued[-1]
    trigger = metrics["trigger"]
    assert trigger["kind"] == "notice" and trigger["provider"] == service.provider
    assert trigger["endpoint"] == service.url
    notice_at, seen_at = epoch(trigger["notice_at"]), epoch(trigger["notice_seen_at"])
    if service.provider == "gcp":
        # GCP gives no issue time: the time it was seen, flagged
        assert trigger["notice_at_estimated"] is True and notice_at == seen_at
    else:
        # AWS and Azure stamp whole seconds, and the fake issued it at one
        assert notice_at == issued["issued_at"], (trigger, issued)
    assert seen_at >= issued["publish_at"] - 0.01
    # seen within about one poll (GCP holds its request open: at once); the slack is for a
    # lab whose 2 cores other runs share
    assert 0 <= seen_at - issued["publish_at"] <= poll_s + 3.0, (trigger, issued)
    assert metrics["experiment"]["notice_at"] == trigger["notice_at"]
    assert metrics["experiment"]["notice_seen_at"] == trigger["notice_seen_at"]
    assert metrics["detection_delay_s"] == pytest.approx(seen_at - notice_at, abs=0.002)
    # the deadline clock runs from the notice's issue to the restored workload
    clock = metrics["deadline_clock"]
    assert clock["start"] == "spot notice"
    assert epoch(clock["started_at"]) == pytest.approx(notice_at, abs=0.002)
    assert metrics["migration_s"] == pytest.approx(
        epoch(clock["stopped_at"]) - notice_at, abs=0.005
    )
    assert metrics["migration_s"] >= metrics["downtime_s"]
    deadlines = metrics["deadlines"]
    assert {"aws_120s", "gcp_30s", "azure_30s", "notice"} <= set(deadlines)
    for verdict in deadlines.values():
        assert verdict["slack_s"] == pytest.approx(
            verdict["deadline_s"] - metrics["migration_s"], abs=0.002
        )
    assert sum(metrics["deadline_phases_s"].values()) == pytest.approx(
        metrics["migration_s"], abs=0.1
    )
    # the workload ran on the source until the notice: the dump came after it was seen
    dump_at = epoch(metrics["phases"]["final_dump"]["started_at"])
    assert dump_at > seen_at
    # the watcher polled the fake from the source, never anything else
    polls = [r for r in service.state()["requests"] if not r["path"].startswith("/_admin")]
    assert polls and {r["client"] for r in polls} == {LAB.address("source")}, polls[:3]
    assert "Notice -> migration done (deadline clock): " in run.stdout
    _say(
        f"{service.provider}: detection {metrics['detection_delay_s']:.3f} s, notice -> "
        f"restored {metrics['migration_s']:.2f} s (downtime {metrics['downtime_s']:.2f} s), "
        f"slack aws {deadlines['aws_120s']['slack_s']:.1f} s / gcp {deadlines['gcp_30s']['slack_s']:.1f} s"
    )
    return metrics


def test_aws_notice_triggers_the_migration(lab: Path, tmp_path: Path, fake_service: Any) -> None:
    # tokens live 2 s at most: the watcher's session token expires while it waits, and it
    # must get a new one (IMDSv2's 401) to see the notice
    service = fake_service("aws", LAB.address("bridge"), "--token-ttl-cap", "2")
    run = run_migrate(
        tmp_path,
        notice_vars(service),
        {WAIT_TASK: later(NOTICE_DELAY_S + 1.5, lambda: service.notice(in_s=0))},
    )
    metrics = assert_migrated_on_the_notice(run, service)
    trigger = metrics["trigger"]
    assert trigger["action"] == "terminate"
    assert trigger["notice_at_from"] == "the action time minus 120 s"
    assert metrics["deadlines"]["notice"]["deadline_s"] == 120.0
    assert trigger["tokens"] >= 2  # a fresh token after the first expired
    state = service.state()
    assert any(r["status"] == 401 for r in state["requests"]), "no token expired"
    untokened = [
        r
        for r in state["requests"]
        if r["path"].startswith("/latest/meta-data/")
        and not any(k.lower() == "x-aws-ec2-metadata-token" for k in r["headers"])
    ]
    assert not untokened, untokened[:3]
    # the node checks probed the service before the workload started
    assert trigger["probe"]["answer"].endswith("HTTP 404 Not Found: 'Not Found'")


def test_gcp_notice_triggers_the_migration(lab: Path, tmp_path: Path, fake_service: Any) -> None:
    service = fake_service("gcp")
    run = run_migrate(
        tmp_path,
        notice_vars(service),
        {WAIT_TASK: later(NOTICE_DELAY_S, lambda: service.notice(in_s=0))},
    )
    metrics = assert_migrated_on_the_notice(run, service)
    assert metrics["trigger"]["action"] == "preempted"
    assert metrics["detection_delay_s"] == 0  # flagged: no issue time
    assert metrics["deadlines"]["notice"]["deadline_s"] == 30.0
    waits = [r for r in service.state()["requests"] if "wait_for_change=true" in r["path"]]
    assert waits and all(r["headers"].get("Metadata-Flavor") == "Google" for r in waits)


def test_azure_notice_triggers_the_migration_and_is_acknowledged(
    lab: Path, tmp_path: Path, fake_service: Any
) -> None:
    service = fake_service("azure")
    run = run_migrate(
        tmp_path,
        notice_vars(service),
        {WAIT_TASK: later(NOTICE_DELAY_S, lambda: service.notice(in_s=0))},
    )
    metrics = assert_migrated_on_the_notice(run, service)
    trigger = metrics["trigger"]
    assert trigger["action"] == "Preempt" and trigger["event_id"]
    assert trigger["notice_at_from"] == "NotBefore minus the Preempt notice's 30 s"
    assert metrics["deadlines"]["notice"]["deadline_s"] == 30.0
    # acknowledged only after the restore: the source may go now
    state = service.state()
    assert [a["event_ids"] for a in state["acks"]] == [[trigger["event_id"]]]
    assert trigger["acknowledged"]["acknowledged"] is True
    assert state["acks"][0]["at"] > epoch(metrics["deadline_clock"]["stopped_at"])


def test_a_notice_past_its_deadline_migrates_at_once_after_garbage(
    lab: Path, tmp_path: Path, fake_service: Any
) -> None:
    # once the wait runs, the service answers garbage for a while (the watcher keeps polling
    # and reports it), then a notice whose action time passed 10 s ago
    service = fake_service("aws")

    def misbehave_then_notice() -> None:
        time.sleep(1.0)
        service.admin("/_admin/fault", {"fault": "garbage"})
        time.sleep(2.0)
        service.admin("/_admin/fault", {"fault": "none"})
        service.notice(in_s=0, issued_ago_s=130)

    run = run_migrate(tmp_path, notice_vars(service), {WAIT_TASK: misbehave_then_notice})
    metrics = assert_migrated_on_the_notice(run, service)
    trigger = metrics["trigger"]
    assert trigger["deadline_passed"] is True
    assert "had passed" in trigger["message"] and "migrating at once" in trigger["message"]
    assert metrics["deadlines"]["notice"]["met"] is False
    assert metrics["deadlines"]["aws_120s"]["met"] is False
    assert metrics["deadline_shrink"]["aws_120s"]["phase"] == "detection"
    assert any(w.get("check") == "notice_deadline_passed" for w in metrics["warnings"])
    garbage = [e for e in trigger["errors"] if e["kind"] == "garbage"]
    assert garbage and garbage[0]["count"] >= 2 and "<html>" in garbage[0]["message"]
    assert "migrating at once" in run.stdout
    # the final dump followed the notice at once: only the orchestration between the
    # watcher's return and the dump (a few tasks; seconds on a loaded 2-core lab)
    assert metrics["deadline_phases_s"]["before_final_dump"] < 20
    assert "predump" not in metrics["phases"]


def test_an_endpoint_that_does_not_answer_is_refused_before_the_workload_starts(
    lab: Path, tmp_path: Path
) -> None:
    import socket

    with socket.socket() as sock:  # a port on the bridge nothing listens on
        sock.bind((LAB.address("bridge"), 0))
        port = sock.getsockname()[1]
    run = run_migrate(
        tmp_path,
        {**MEMORY, "trigger": "notice", "notice_provider": "aws",
         "notice_endpoint": f"http://{LAB.address('bridge')}:{port}"},
    )  # fmt: skip
    assert run.rc != 0
    assert (
        f"the aws metadata service at http://{LAB.address('bridge')}:{port} does not answer"
        in run.stdout
    )
    metrics = run.metrics()
    assert metrics["failure"]["phase"] == "node_checks", metrics["failure"]
    assert "workload_start" not in {task["phase"] for task in metrics["tasks"]}


def test_migrate_at_a_chosen_size(lab: Path, tmp_path: Path) -> None:
    """trigger=ready with migrate_at_rss_mb and migrate_after_lines (issue 16, item 6)."""
    run = run_migrate(tmp_path, {**MEMORY, "migrate_at_rss_mb": 100, "migrate_after_lines": 4})
    assert run.rc == 0, run.stdout[-6000:]
    metrics = run.metrics()
    assert metrics["status"] == "ok"
    trigger = metrics["trigger"]
    assert trigger["kind"] == "ready"
    assert trigger["conditions"] == {
        "migrate_after_s": 0.0,
        "migrate_after_lines": 4,
        "migrate_at_rss_mb": 100,
    }
    held = trigger["held"]
    assert held["migrate_at_rss_mb"]["reached"] >= 100
    assert held["migrate_after_lines"]["reached"] >= 4
    held_at = epoch(trigger["held_at"])
    assert held_at == max(epoch(h["at"]) for h in held.values())
    # the checkpoint came after the conditions held, and it holds the memory they saw
    assert epoch(metrics["phases"]["final_dump"]["started_at"]) > held_at
    assert metrics["phases"]["final_dump"]["pages_written"] * 4096 >= 100 * 2**20
    assert metrics["deadline_clock"]["start"] == "first checkpoint operation"
    assert "Trigger: ready, then migrate_after_lines=4 (" in run.stdout
    _say(
        f"memory held {held['migrate_at_rss_mb']['reached']:.1f} MB after "
        f"{trigger['after_ready_s']:.2f} s; dumped {metrics['phases']['final_dump']['pages_written']} pages"
    )


@pytest.mark.guest
# ~3 minutes on an idle machine; the emulated guests crawl while other runs share the cores
@pytest.mark.timeout(1800)
def test_a_notice_during_pre_dumps_ends_them_by_the_remaining_time(
    guest_lab: Path, tmp_path: Path, fake_service: Any
) -> None:
    """The guest lab (soft-dirty): pre-dumps start at once, the notice comes while they run,
    and the adaptive rule stops them because the notice's remaining time would not pay for
    another pre-dump and the final phase."""
    service = fake_service("aws", "10.79.0.1")
    # issued 90 s before it appears: 30 s of the 120 s remain. Pre-dumps go on while another
    # one (1 s apart, a few seconds each on the emulated guests) and the final phase (its
    # cost and the 5 s reserve) still fit, then the rule stops them - after a few on an idle
    # machine, at once on a crowded one
    run = run_migrate(
        tmp_path,
        {
            "workload": "memory", "mb_size": 32, "interval": 0.5, "max_memory": 64,
            "checkpoint_strategy": "predump", "predump_mode": "adaptive",
            "predump_iterations": 30, "predump_interval": 1, "predump_min_pages": 0,
            "predump_skip_goal_pct": 100, "predump_max_growth_pct": 1000,
            "trigger": "notice", "notice_provider": "aws", "notice_endpoint": service.url,
            "notice_poll_s": 0.5, "notice_timeout_s": 300,
        },
        {PREDUMP_TASK: later(8.0, lambda: service.notice(in_s=0, issued_ago_s=90))},
        inventory=str(guest_lab),
    )  # fmt: skip
    assert run.rc == 0, run.stdout[-6000:]
    metrics = run.metrics()
    assert metrics["status"] == "ok" and metrics["verification"]["restored_running"] is True
    predump = metrics["phases"]["predump"]
    stop = predump["stop"]
    assert stop["reason"] == "deadline", stop
    figures = stop["figures"]
    assert figures["clock"] == "spot notice"
    assert figures["deadline_s"] == 120.0  # the notice's own length (predump_deadline_s 0)
    assert (
        figures["remaining_s"] < figures["next_iteration_estimate_s"] + figures["final_estimate_s"]
    )
    assert figures["elapsed_s"] >= 90  # on the notice's clock, from its issue
    assert stop["notice"]["provider"] == "aws"
    trigger = metrics["trigger"]
    assert trigger["seen_during"] == "the pre-dumps"
    assert epoch(trigger["notice_at"]) == service.issued[-1]["issued_at"]
    assert metrics["deadline_clock"]["start"] == "spot notice"
    assert 1 <= len(predump["iterations"]) < 30
    _say(
        f"guest: {len(predump['iterations'])} pre-dumps, stop {stop['reason']} "
        f"({stop['detail']}); notice -> restored {metrics['migration_s']:.1f} s"
    )
    json.dumps(metrics)  # the record is plain JSON
