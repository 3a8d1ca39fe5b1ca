"""One run's outcome and a sweep's bookkeeping, with ansible-runner replaced by a fake that
replays a run's events and leaves a recorded results folder behind: exit codes 0 / 1 / 2,
where the workload is after a failure, a failed run recorded while the sweep goes on, and
Ctrl-C stopping after the current run with what is done written."""

from __future__ import annotations

import io
import json
import shutil
import sys
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from frontdoor import cli, launch  # noqa: E402
from frontdoor.configfile import InventoryChoice  # noqa: E402
from frontdoor.progress import Display  # noqa: E402
from frontdoor.results import read_csv  # noqa: E402

RESULTS = REPO / "tests" / "fixtures" / "frontdoor" / "results"


class FakeRunner:
    """ansible_runner.run: replays the events of a run that leaves `fixture`'s results."""

    def __init__(self, fixtures: list[str]) -> None:
        self.fixtures = list(fixtures)
        self.calls: list[dict[str, Any]] = []
        self.after_call: Any = None

    def run(self, **kwargs: Any) -> Any:
        self.calls.append(kwargs)
        fixture = self.fixtures.pop(0)
        handler = kwargs["event_handler"]
        root = Path(kwargs["extravars"].get("results_root") or kwargs["private_data_dir"])
        if fixture == "refused":
            handler(_event("runner_on_failed", "preflight", "Refuse bad input", "localhost",
                           msg="The preflight refused the experiment (nothing ran on any host):\n- x"))  # fmt: skip
            return types.SimpleNamespace(rc=2, status="failed", stdout=io.StringIO("refused"))
        folder = root / f"memory_{len(self.calls):03d}"
        handler(_event("runner_on_ok", "preflight", "Create the results folders", "localhost",
                       migration_experiment={"pairs": [{"source": "source", "results_dir": str(folder)}]}))  # fmt: skip
        metrics = json.loads((RESULTS / fixture / "metrics.json").read_text())
        final = folder if metrics["status"] == "ok" else folder.with_name(folder.name + "_failed")
        final.mkdir(parents=True)
        shutil.copy(RESULTS / fixture / "metrics.json", final)
        shutil.copy(RESULTS / fixture / "journal.json", final)
        if self.after_call:
            self.after_call()
        rc = 0 if metrics["status"] == "ok" else 2
        return types.SimpleNamespace(
            rc=rc, status="successful" if rc == 0 else "failed", stdout=io.StringIO("PLAY RECAP")
        )


def _event(kind: str, role: str, task: str, host: str, **res: Any) -> dict[str, Any]:
    return {
        "event": kind,
        "event_data": {"role": role, "task": task, "host": host, "task_uuid": task, "res": res},
    }


@pytest.fixture
def fake_runner(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeRunner]:
    runner = FakeRunner([])
    module = types.ModuleType("ansible_runner")
    module.run = runner.run  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "ansible_runner", module)
    yield runner


def quiet_display(tracker: Any) -> Display:
    return Display(tracker, io.StringIO(), tty=False)


def run_once(fixture: str, fake: FakeRunner, tmp_path: Path) -> launch.Outcome:
    fake.fixtures = [fixture]
    with launch.Interrupts(lambda text: None) as interrupts:
        return launch.run_migration(
            {"results_root": str(tmp_path)},
            InventoryChoice(None, "default"),
            quiet_display,
            interrupts,
        )


def test_an_ok_run_exits_0_with_its_summary(fake_runner: FakeRunner, tmp_path: Path) -> None:
    outcome = run_once("memory_32mb", fake_runner, tmp_path)
    assert (outcome.exit_code, outcome.status) == (0, "ok")
    assert outcome.results_dirs == [tmp_path / "memory_001"]
    assert "CRIU Experiment Metrics: default-experiment" in outcome.summaries[0]
    # the playbook ran through ansible-runner with the suite's config and callback
    call = fake_runner.calls[0]
    assert call["playbook"] == "migrate.yml" and call["project_dir"] == str(REPO)
    assert call["envvars"]["ANSIBLE_CONFIG"] == str(REPO / "ansible.cfg")
    assert call["envvars"]["ANSIBLE_CALLBACK_PLUGINS"] == str(REPO / "callback_plugins")
    assert "inventory" not in call  # the default inventory: the lab


def test_a_failed_run_exits_1_saying_where_the_workload_runs(
    fake_runner: FakeRunner, tmp_path: Path
) -> None:
    outcome = run_once("memory_16mb_restore_pid_busy_failed", fake_runner, tmp_path)
    assert (outcome.exit_code, outcome.status) == (1, "failed")
    assert outcome.results_dirs == [tmp_path / "memory_001_failed"]
    assert "failed in restore on source" in outcome.message
    assert "the workload runs on the source (source, pid " in outcome.message


def test_a_preflight_refusal_exits_2(fake_runner: FakeRunner, tmp_path: Path) -> None:
    outcome = run_once("refused", fake_runner, tmp_path)
    assert (outcome.exit_code, outcome.status) == (2, "refused")
    assert "The preflight refused the experiment" in outcome.message


def test_where_the_workload_is() -> None:
    journal = {"location": "checkpointed (not running)", "source": "s", "destination": "d"}
    assert "playbooks/recover.yml" in launch.where_the_workload_is(journal, None)
    assert launch.where_the_workload_is({"location": "not started"}, None) == (
        "the workload was never started"
    )
    assert "unknown" in launch.where_the_workload_is(None, None)


# -- sweeps ----------------------------------------------------------------------------------


@pytest.fixture
def sweep_env(
    fake_runner: FakeRunner, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> FakeRunner:
    """cli.main with the inventory and the validation stubbed (no Ansible, no host)."""
    view = launch.InventoryView([], {"source": ["source"], "destination": ["destination"]}, {}, {})
    monkeypatch.setattr(cli, "load_inventory", lambda choice: view)

    def validate(view: Any, extravars: dict[str, Any], registry: Any, defaults: Any) -> Any:
        return types.SimpleNamespace(
            errors=[],
            settings={"workload": "memory", "critical_path": "fused"},
            workload_params={"mb_size": extravars.get("mb_size", 64), "interval": 1.0, "max_memory": 512},
            flags={"fused": True},
            pairs=[{"source": "source", "destination": "destination"}],
        )  # fmt: skip

    monkeypatch.setattr(cli, "validate", validate)
    return fake_runner


def test_a_sweep_records_a_failed_run_and_goes_on(
    sweep_env: FakeRunner, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sweep_env.fixtures = ["memory_16mb", "memory_32mb", "memory_16mb_restore_pid_busy_failed", "memory_32mb"]  # fmt: skip
    code = cli.main(
        ["--sweep", "mb_size=16,32", "--repeat", "2", "--results-root", str(tmp_path), "--sweep-name", "s"]
    )  # fmt: skip
    assert code == 1  # one run failed
    folder = tmp_path / "s"
    record = json.loads((folder / "sweep.json").read_text())
    assert record["status"] == "done" and record["sweeps"] == {"mb_size": [16, 32]}
    assert [(r["point"], r["repetition"], r["status"]) for r in record["runs"]] == [
        ({"mb_size": 16}, 1, "ok"),
        ({"mb_size": 32}, 1, "ok"),
        ({"mb_size": 16}, 2, "failed"),
        ({"mb_size": 32}, 2, "ok"),
    ]
    # each run its own folder under runs/, its own log
    assert record["runs"][2]["results_dirs"] == ["runs/memory_003_failed"]
    assert (folder / "logs" / "run-003.log").read_text() == "PLAY RECAP"
    assert [call["extravars"]["mb_size"] for call in sweep_env.calls] == [16, 32, 16, 32]
    runs = read_csv(folder / "runs.csv")
    assert [row["status"] for row in runs] == ["ok", "ok", "failed", "ok"]
    summary = read_csv(folder / "summary.csv")
    assert [(row["point"], row["n"], row["ok"]) for row in summary] == [
        ("mb_size=16", "2", "1"),
        ("mb_size=32", "2", "2"),
    ]
    assert (folder / "report.html").exists() and (folder / "plots" / "phases.png").exists()
    out = capsys.readouterr().out
    assert "run 1/4 [--------------------] ETA --: mb_size=16, repetition 1" in out
    assert "run 2/4 [#####---------------] ETA " in out
    assert "run 3/4 FAILED: failed in restore on source" in out
    assert f"report:  {folder / 'report.html'}" in out


def test_ctrl_c_stops_after_the_current_run_with_what_is_done_written(
    sweep_env: FakeRunner, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sweep_env.fixtures = ["memory_16mb", "memory_32mb"]

    def press_ctrl_c() -> None:
        import os
        import signal

        sweep_env.after_call = None
        os.kill(os.getpid(), signal.SIGINT)  # during the first run

    sweep_env.after_call = press_ctrl_c
    code = cli.main(
        ["--sweep", "mb_size=16,32", "--repeat", "2", "--results-root", str(tmp_path), "--sweep-name", "s"]
    )  # fmt: skip
    assert code == 130
    folder = tmp_path / "s"
    record = json.loads((folder / "sweep.json").read_text())
    assert record["status"] == "stopped"
    assert [r["status"] for r in record["runs"]] == ["ok"]  # the current run finished
    assert len(read_csv(folder / "runs.csv")) == 1
    assert (folder / "report.html").exists()
    assert "stopping after the current run" in capsys.readouterr().err
