"""callback_plugins/migration_metrics.py driven directly, with small stand-ins for Ansible's
host, task and result objects and a fake clock, writing into a tmp results folder.

The results and `migration_metrics` payloads have the shapes the suite's modules return
(migration_experiment, criu, workload_process, checkpoint_transfer, workload_verify).
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

CALLBACK = Path(__file__).resolve().parents[2] / "callback_plugins" / "migration_metrics.py"
T0 = 1795669666.380  # 2026-11-26T05:07:46.380Z
IMAGES = "/var/lib/criu-migration/images/memory_20261126_050746"
WORK = "/var/lib/criu-migration/work/memory_20261126_050746"


def load_callback_module() -> ModuleType:
    # Loaded from its file: its module name clashes with module_utils' old migration_metrics.
    spec = importlib.util.spec_from_file_location("callback_migration_metrics", CALLBACK)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


CB = load_callback_module()


class FakeClock:
    """Stands in for the callback's `time` module: a wall clock and a monotonic clock."""

    def __init__(self) -> None:
        self.wall = T0
        self.mono = 1000.0

    def advance(self, seconds: float) -> None:
        self.wall += seconds
        self.mono += seconds

    def time(self) -> float:
        return self.wall

    def monotonic(self) -> float:
        return self.mono


class FakeDisplay:
    def __init__(self) -> None:
        self.shown: list[str] = []
        self.warnings: list[str] = []

    def display(self, msg: str, *args: Any, **kwargs: Any) -> None:
        self.shown.append(msg)

    def warning(self, msg: str, *args: Any, **kwargs: Any) -> None:
        self.warnings.append(msg)


class Host:
    def __init__(self, name: str) -> None:
        self.name = name

    def get_name(self) -> str:
        return self.name


class Role:
    def __init__(self, name: str) -> None:
        self.name = name

    def get_name(self) -> str:
        return self.name


class Task:
    _count = 0

    def __init__(self, name: str, role: str | None = None, action: str = "command") -> None:
        Task._count += 1
        self._uuid = f"task-{Task._count}"
        self.name = name
        self.action = action
        self._role = Role(role) if role else None

    def get_name(self) -> str:
        return self.name


class Result:
    def __init__(self, host: Host, task: Task, result: dict[str, Any]) -> None:
        self.host = host
        self.task = task
        self.result = result


LOCALHOST, SOURCE, DESTINATION = Host("localhost"), Host("source"), Host("destination")


def experiment_payload(
    tmp_path: Path, pairs: int = 1, settings: dict[str, Any] | None = None
) -> dict[str, Any]:
    """library/migration_experiment.py's result, with its results folders created."""
    announced = []
    for index in range(1, pairs + 1):
        suffix = "" if pairs == 1 else f"-{index}"
        folder = "memory_20261126_050746" + (f"_source{suffix}" if pairs > 1 else "")
        results_dir = tmp_path / folder
        for side in ("source", "dest"):
            (results_dir / side).mkdir(parents=True)
        announced.append(
            {
                "source": f"source{suffix}",
                "destination": f"destination{suffix}",
                "source_address": f"10.77.0.{9 + 2 * index}",
                "destination_address": f"10.77.0.{10 + 2 * index}",
                "results_dir": str(results_dir),
                "working_dir": WORK,
                "checkpoint_dir": IMAGES,
            }
        )
    return {
        "changed": True,
        "migration_experiment": {
            "id": "memory_20261126_050746",
            "name": "default-experiment",
            "started_at_epoch": T0,
            "workload": {"type": "memory", "params": {"mb_size": 64}},
            "strategy": {"mode": "full", "lazy_pages": False, "page_server": False},
            "transfer": {"method": "rsync"},
            "deadline_s": None,
            "inventory": "inventories/lab/hosts.yml",
            "pairs": announced,
            "control": {"host": "vm"},
            # the preflight's validated settings (library/migration_experiment.py passes them on)
            "settings": {"checkpoint_strategy": "full", "save_metrics": True, **(settings or {})},
        },
    }


class Run:
    """Feeds the callback a play the way the strategy would."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.clock = FakeClock()
        monkeypatch.setattr(CB, "time", self.clock)
        self.cb = CB.CallbackModule()
        self.display = FakeDisplay()
        self.cb._display = self.display

    def ok(self, host: Host, task: Task, result: dict[str, Any], took: float = 0.5) -> None:
        self.cb.v2_runner_on_start(host, task)
        self.clock.advance(took)
        self.cb.v2_runner_on_ok(Result(host, task, result))

    def failed(
        self,
        host: Host,
        task: Task,
        result: dict[str, Any],
        took: float = 0.5,
        ignore: bool = False,
    ) -> None:
        self.cb.v2_runner_on_start(host, task)
        self.clock.advance(took)
        self.cb.v2_runner_on_failed(Result(host, task, result), ignore_errors=ignore)

    def start_experiment(
        self, tmp_path: Path, pairs: int = 1, settings: dict[str, Any] | None = None
    ) -> None:
        self.ok(
            LOCALHOST,
            Task("Create the results folders", "preflight"),
            experiment_payload(tmp_path, pairs, settings),
            0.1,
        )

    def stats(self) -> None:
        self.clock.advance(1.0)
        self.cb.v2_playbook_on_stats(object())


def metrics(phase: str, **data: Any) -> dict[str, Any]:
    return {"changed": True, "migration_metrics": {"phase": phase, "data": data}}


def journal(folder: Path) -> dict[str, Any]:
    return json.loads((folder / "journal.json").read_text())


def migrate_until_dump(run: Run) -> None:
    run.ok(
        SOURCE,
        Task("Probe CRIU", "criu"),
        metrics("environment", kernel="6.18.44-fc-v595", criu="4.2.1"),
        0.9,
    )
    run.ok(
        DESTINATION,
        Task("Probe CRIU", "criu"),
        metrics("environment", kernel="6.18.44-fc-v595", criu="4.2.1"),
        0.8,
    )
    run.ok(
        SOURCE,
        Task("Start the workload", "workload_start"),
        metrics("workload_start", pid=17121, started_at=T0 + 2.0),
        1.5,
    )
    dump_at = run.clock.wall
    run.ok(
        SOURCE,
        Task("Final dump", "checkpoint_dump"),
        metrics(
            "final_dump",
            duration_s=0.52,
            started_at=dump_at,
            finished_at=dump_at + 0.52,
            images_dir=f"{IMAGES}/1",
            stats={"frozen_s": 0.51, "pages_written": 34582, "bytes_written": 141647872},
        ),
        0.6,
    )
    run.ok(
        SOURCE,
        Task("Transfer", "checkpoint_transfer"),
        metrics(
            "transfer",
            method="rsync",
            duration_s=1.0,
            bytes=141659526,
            files=16,
            dest_paths=[f"{IMAGES}/1", WORK],
            stage="final",
        ),
        1.1,
    )


def restore_result(finished_at: float) -> dict[str, Any]:
    return metrics(
        "restore",
        duration_s=0.5,
        started_at=finished_at - 0.5,
        finished_at=finished_at,
        images_dir=f"{IMAGES}/1",
        pid=17121,
        stats={"restore_s": 0.01},
    )


# -- a clean run ------------------------------------------------------------------------------


def test_clean_run_writes_metrics_and_journal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = Run(monkeypatch)
    run.start_experiment(tmp_path)
    folder = tmp_path / "memory_20261126_050746"
    created = journal(folder)
    assert created["location"] == "not started"
    assert created["workload"] == "memory"
    assert (created["working_dir"], created["checkpoint_dir"]) == (WORK, IMAGES)
    assert [s["step"] for s in created["steps"]] == ["experiment created"]

    migrate_until_dump(run)
    assert journal(folder)["location"] == "checkpointed (not running)"
    assert journal(folder)["pid"] == 17121
    run.ok(
        DESTINATION,
        Task("Restore", "checkpoint_restore"),
        restore_result(run.clock.wall + 0.5),
        0.5,
    )
    assert journal(folder)["location"] == "destination"
    run.ok(
        DESTINATION,
        Task("Verify", "workload_verify"),
        metrics(
            "verification",
            restored_running=True,
            state_continuous=True,
            app_downtime_s=1.9,
            details="ok",
        ),
        0.3,
    )
    run.stats()

    assert sorted(p.name for p in tmp_path.iterdir()) == ["memory_20261126_050746"]
    data = json.loads((folder / "metrics.json").read_text())
    assert data["status"] == "ok"
    assert data["experiment"]["started_at"] == "2026-11-26T05:07:46.380Z"
    assert data["workload"]["source_pid"] == 17121
    assert data["phases"]["final_dump"]["pages_written"] == 34582
    assert data["phases"]["transfer"]["bytes"] == 141659526
    assert data["phases"]["restore"]["pid"] == 17121
    # from the dump's start to the restore's end: dump task 0.6 + transfer task 1.1 + 0.5
    assert data["downtime_s"] == 2.2
    assert data["app_downtime_s"] == 1.9
    assert data["environment"]["source"] == {"kernel": "6.18.44-fc-v595", "criu": "4.2.1"}
    assert [
        (t["host"], t["task"], t["phase"], t["duration_s"], t["status"]) for t in data["tasks"]
    ] == [
        ("source", "Probe CRIU", "node_checks", 0.9, "ok"),
        ("destination", "Probe CRIU", "node_checks", 0.8, "ok"),
        ("source", "Start the workload", "workload_start", 1.5, "ok"),
        ("source", "Final dump", "final_dump", 0.6, "ok"),
        ("source", "Transfer", "transfer", 1.1, "ok"),
        ("destination", "Restore", "restore", 0.5, "ok"),
        ("destination", "Verify", "verification", 0.3, "ok"),
    ]
    assert data["tasks"][0]["start"] == "2026-11-26T05:07:46.480Z"

    final = journal(folder)
    assert final["status"] == "ok"
    assert final["location"] == "destination"
    assert final["images"] == {"source": [f"{IMAGES}/1"], "destination": [f"{IMAGES}/1", WORK]}
    assert [s["step"] for s in final["steps"]] == [
        "experiment created",
        "workload_start (source)",
        "final_dump (checkpointed (not running))",
        "transfer (checkpointed (not running))",
        "restore (destination)",
        "experiment ok",
    ]
    assert [s["host"] for s in final["steps"]] == [
        "localhost",
        "source",
        "source",
        "source",
        "destination",
        "localhost",
    ]
    assert len(run.display.shown) == 1
    assert "CRIU Experiment Metrics: default-experiment" in run.display.shown[0]
    assert f"Results: {folder}" in run.display.shown[0]


def test_no_experiment_no_metrics(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run = Run(monkeypatch)
    run.ok(SOURCE, Task("ping"), {"ping": "pong"})
    run.stats()
    assert run.cb.experiment is None
    assert list(tmp_path.iterdir()) == []
    assert run.display.shown == []


def test_delegated_result_goes_to_the_delegate(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = Run(monkeypatch)
    run.start_experiment(tmp_path)
    migrate_until_dump(run)
    # a task of host `source` delegated to the destination: callbacks see its address only
    result = restore_result(run.clock.wall + 0.4)
    result["_ansible_delegated_vars"] = {
        "ansible_host": "10.77.0.12",
        "ansible_port": 22,
        "ansible_user": "root",
    }
    run.ok(SOURCE, Task("Restore on the peer", "checkpoint_restore"), result, 0.4)
    pair = run.cb.pairs["source"]
    assert pair.phases["restore"][0]["host"] == "destination"
    assert pair.tasks[-1].host == "destination"
    assert pair.tasks[-1].duration_s == pytest.approx(0.4)
    assert journal(tmp_path / "memory_20261126_050746")["location"] == "destination"


def test_delegated_to_localhost_is_not_a_pair_host(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = Run(monkeypatch)
    run.start_experiment(tmp_path)
    result = metrics("warnings", msg="x")
    result["_ansible_delegated_vars"] = {"ansible_host": "127.0.0.1", "ansible_connection": "local"}
    run.ok(SOURCE, Task("Fetch on the control node", "results_collect"), result)
    pair = run.cb.pairs["source"]
    assert pair.tasks == []
    assert pair.phases == {}


def test_loop_results_carry_per_item_metrics(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = Run(monkeypatch)
    run.start_experiment(tmp_path)
    items = [
        {
            "item": i,
            **metrics(
                "predump",
                index=i,
                duration_s=0.2 * i,
                started_at=T0 + 10 * i,
                images_dir=f"{IMAGES}/{i}",
            ),
        }
        for i in (1, 2, 3)
    ]
    run.ok(
        SOURCE,
        Task("Pre-dump", "checkpoint_predump"),
        {"changed": True, "results": items, "msg": "All items completed"},
    )
    pair = run.cb.pairs["source"]
    assert [d["index"] for d in pair.phases["predump"]] == [1, 2, 3]
    assert [d["host"] for d in pair.phases["predump"]] == ["source"] * 3
    assert len(pair.tasks) == 1  # one task, however many items
    assert pair.tasks[0].phase == "predump"
    images = [f"{IMAGES}/1", f"{IMAGES}/2", f"{IMAGES}/3"]
    assert run.cb.journals["source"]["images"]["source"] == images
    # pre-dumps do not move the workload: the file follows at the journal's next write
    run.stats()
    assert journal(tmp_path / "memory_20261126_050746")["images"]["source"] == images


def test_experiment_announced_inside_a_loop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = Run(monkeypatch)
    payload = experiment_payload(tmp_path)
    run.ok(LOCALHOST, Task("Announce", "preflight"), {"results": [payload], "changed": True})
    assert run.cb.experiment is not None
    assert set(run.cb.pairs) == {"source"}


# -- failures -----------------------------------------------------------------------------------


def test_failed_phase_renames_the_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run = Run(monkeypatch)
    run.start_experiment(tmp_path)
    migrate_until_dump(run)
    failure = {
        "failed": True,
        "msg": "criu restore failed on destination (rc=1): (00.01) Error (criu/cr-restore.c:1480): "
        "Can't fork for 17121: File exists; log: /x/criu-restore.log",
        "rc": 1,
        "cmd": ["/usr/local/sbin/criu", "restore"],
        "log_file": "/x/criu-restore.log",
        "log_tail": "Error (criu/cr-restore.c:1480): Can't fork for 17121: File exists",
        **restore_result(run.clock.wall),  # a failed task's metrics are kept, not journaled
    }
    run.failed(DESTINATION, Task("Restore", "checkpoint_restore"), failure)
    run.ok(SOURCE, Task("Collect", "results_collect"), {"changed": False})
    run.stats()

    original = tmp_path / "memory_20261126_050746"
    renamed = tmp_path / "memory_20261126_050746_failed"
    assert not original.exists()
    assert sorted(p.name for p in renamed.iterdir()) == [
        "dest",
        "journal.json",
        "metrics.json",
        "source",
    ]
    data = json.loads((renamed / "metrics.json").read_text())
    assert data["status"] == "failed"
    assert data["experiment"]["results_dir"] == str(renamed)
    assert data["failure"] == {
        "phase": "restore",
        "role": "checkpoint_restore",
        "task": "Restore",
        "host": "destination",
        "msg": failure["msg"],
        "log_file": "/x/criu-restore.log",
        "log_tail": "Error (criu/cr-restore.c:1480): Can't fork for 17121: File exists",
        "cmd": ["/usr/local/sbin/criu", "restore"],
        "rc": 1,
    }
    assert [t["status"] for t in data["tasks"]][-2:] == ["failed", "ok"]
    final = journal(renamed)
    assert final["status"] == "failed"
    assert final["location"] == "checkpointed (not running)"  # the restore did not happen
    assert [s["step"] for s in final["steps"]][-3:] == [
        "final_dump (checkpointed (not running))",
        "transfer (checkpointed (not running))",
        "experiment failed",
    ]
    assert "FAILED in restore: Restore on destination" in run.display.shown[0]


def test_only_the_first_failure_is_kept(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run = Run(monkeypatch)
    run.start_experiment(tmp_path)
    run.failed(SOURCE, Task("Final dump", "checkpoint_dump"), {"failed": True, "msg": "first"})
    run.failed(SOURCE, Task("Roll back", "migration_rollback"), {"failed": True, "msg": "second"})
    assert run.cb.pairs["source"].failure["msg"] == "first"
    assert run.cb.pairs["source"].failure["phase"] == "final_dump"


def test_failed_loop_reports_the_failed_item(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = Run(monkeypatch)
    run.start_experiment(tmp_path)
    payload = {
        "failed": True,
        "msg": "One or more items failed",
        "results": [
            {"item": 1, "failed": False, **metrics("predump", index=1, duration_s=0.2)},
            {
                "item": 2,
                "failed": True,
                "msg": "criu pre-dump failed on source (rc=1): BUG at criu/mem.c",
                "rc": 1,
            },
        ],
    }
    run.failed(SOURCE, Task("Pre-dump", "checkpoint_predump"), payload)
    failure = run.cb.pairs["source"].failure
    assert failure["msg"] == "criu pre-dump failed on source (rc=1): BUG at criu/mem.c"
    assert failure["rc"] == 1
    assert failure["phase"] == "predump"


def test_ignored_error_is_not_a_failure(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run = Run(monkeypatch)
    run.start_experiment(tmp_path)
    run.failed(
        SOURCE,
        Task("Stop a stale page server", "checkpoint_dump"),
        {"failed": True, "msg": "x"},
        ignore=True,
    )
    run.stats()
    pair = run.cb.pairs["source"]
    assert pair.failure is None
    assert pair.tasks[0].status == "ignored"
    assert (tmp_path / "memory_20261126_050746" / "metrics.json").exists()


def test_module_crash_is_an_exception(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run = Run(monkeypatch)
    run.start_experiment(tmp_path)
    crash = {
        "failed": True,
        "msg": "MODULE FAILURE: No start of json char found\nSee stdout/stderr for the exact error",
        "exception": "Traceback (most recent call last):\n  File \"criu.py\", line 1\nKeyError: 'images_dir'\n",
        "module_stderr": "Traceback (most recent call last):\n  File \"criu.py\", line 1\nKeyError: 'images_dir'\n",
        "module_stdout": "",
        "rc": 1,
    }
    run.failed(SOURCE, Task("Final dump", "checkpoint_dump"), crash)
    run.stats()
    folder = tmp_path / "memory_20261126_050746_exception"
    data = json.loads((folder / "metrics.json").read_text())
    assert data["status"] == "exception"
    assert data["failure"]["phase"] == "final_dump"
    assert journal(folder)["status"] == "exception"
    assert not (tmp_path / "memory_20261126_050746").exists()


def test_unreachable_host_is_an_exception(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run = Run(monkeypatch)
    run.start_experiment(tmp_path)
    run.cb.v2_runner_on_start(DESTINATION, task := Task("Restore", "checkpoint_restore"))
    run.cb.v2_runner_on_unreachable(
        Result(
            DESTINATION, task, {"unreachable": True, "msg": "Failed to connect to the host via ssh"}
        )
    )
    pair = run.cb.pairs["source"]
    assert pair.status == "exception"
    assert pair.failure == {
        "phase": "restore",
        "task": "Restore",
        "host": "destination",
        "msg": "Failed to connect to the host via ssh",
    }
    assert pair.tasks[0].status == "unreachable"


def test_skipped_task_is_not_timed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run = Run(monkeypatch)
    run.start_experiment(tmp_path)
    skipped = Task("Pre-dump", "checkpoint_predump")
    run.cb.v2_runner_on_start(SOURCE, skipped)
    run.cb.v2_runner_on_skipped(Result(SOURCE, skipped, {"skipped": True}))
    assert run.cb.starts == {}
    assert run.cb.pairs["source"].tasks == []


def test_one_failed_pair_of_two(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run = Run(monkeypatch)
    run.start_experiment(tmp_path, pairs=2)
    run.ok(Host("source-1"), Task("Start", "workload_start"), metrics("workload_start", pid=16001))
    run.ok(Host("source-2"), Task("Start", "workload_start"), metrics("workload_start", pid=16002))
    run.failed(
        Host("destination-2"), Task("Restore", "checkpoint_restore"), {"failed": True, "msg": "no"}
    )
    run.stats()
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "memory_20261126_050746_source-1",
        "memory_20261126_050746_source-2_failed",
    ]
    one = json.loads((tmp_path / "memory_20261126_050746_source-1" / "metrics.json").read_text())
    two = json.loads(
        (tmp_path / "memory_20261126_050746_source-2_failed" / "metrics.json").read_text()
    )
    assert (one["status"], one["workload"]["source_pid"]) == ("ok", 16001)
    assert (two["status"], two["workload"]["source_pid"]) == ("failed", 16002)
    assert two["hosts"] == {"source": "source-2", "destination": "destination-2"}
    assert len(run.display.shown) == 2


# -- phases that did not run ------------------------------------------------------------------


def test_a_run_that_failed_before_the_dump_has_no_dump_phase(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = Run(monkeypatch)
    run.start_experiment(tmp_path)
    run.ok(SOURCE, Task("Start", "workload_start"), metrics("workload_start", pid=17121))
    run.failed(SOURCE, Task("Final dump", "checkpoint_dump"), {"failed": True, "msg": "rc=1"})
    run.stats()
    data = json.loads((tmp_path / "memory_20261126_050746_failed" / "metrics.json").read_text())
    assert data["phases"] == {}  # no predump (full), no dump, transfer or restore recorded
    lines = run.display.shown[0].splitlines()
    assert lines[lines.index("Final Dump:") + 1] == "  Duration: n/a"
    assert lines[lines.index("Transfer:") + 2] == "  Duration: n/a"
    assert lines[lines.index("Restore:") + 1] == "  Duration: n/a"
    assert not any(line.startswith("Pre-dump") for line in lines)


# -- save_metrics ---------------------------------------------------------------------------------


def test_save_metrics_false_writes_no_metrics_json(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = Run(monkeypatch)
    run.start_experiment(tmp_path, settings={"save_metrics": False})
    migrate_until_dump(run)
    run.ok(DESTINATION, Task("Restore", "checkpoint_restore"), restore_result(run.clock.wall))
    run.stats()
    folder = tmp_path / "memory_20261126_050746"
    assert sorted(p.name for p in folder.iterdir()) == ["dest", "journal.json", "source"]
    assert journal(folder)["status"] == "ok"
    # the summary is still shown, and says why there is no metrics.json
    [summary] = run.display.shown
    lines = summary.splitlines()
    assert "CRIU Experiment Metrics: default-experiment" in lines
    assert "  Duration: 0.52s (frozen 0.51s, 34582 pages, 141.65 MB)" in lines
    assert lines[-3:] == [
        f"Results: {folder}",
        "metrics.json was not written (save_metrics=false)",
        "=" * 60,
    ]


def test_save_metrics_false_still_marks_a_failed_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = Run(monkeypatch)
    run.start_experiment(tmp_path, settings={"save_metrics": False})
    migrate_until_dump(run)
    run.failed(DESTINATION, Task("Restore", "checkpoint_restore"), {"failed": True, "msg": "no"})
    run.stats()
    assert [p.name for p in tmp_path.iterdir()] == ["memory_20261126_050746_failed"]
    folder = tmp_path / "memory_20261126_050746_failed"
    assert not (folder / "metrics.json").exists()
    assert journal(folder)["status"] == "failed"
    assert "FAILED in restore: Restore on destination" in run.display.shown[0]
    assert "metrics.json was not written (save_metrics=false)" in run.display.shown[0]


@pytest.mark.parametrize(
    ("settings", "written"),
    [
        ({"save_metrics": True}, True),
        ({}, True),  # an experiment from before the setting was carried: the seed's default
        ({"save_metrics": "false"}, False),
        ({"save_metrics": "yes"}, True),
    ],
)
def test_save_metrics_setting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, settings: dict[str, Any], written: bool
) -> None:
    run = Run(monkeypatch)
    payload = experiment_payload(tmp_path)
    payload["migration_experiment"]["settings"] = settings
    run.ok(LOCALHOST, Task("Create the results folders", "preflight"), payload, 0.1)
    run.stats()
    assert (tmp_path / "memory_20261126_050746" / "metrics.json").exists() is written
    assert ("save_metrics=false" in run.display.shown[0]) is not written
