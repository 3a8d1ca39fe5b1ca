"""What the integration tests share beyond conftest.py's fixtures: the small migration they run
most, reading and cleaning a lab host, and the checks every migration of theirs makes.

Not a test module: the tests import it by name (`from helpers import ...`), as pytest puts
tests/integration/ on sys.path for them. conftest.py has pytest rewrite its asserts as it
does a test's, so a failing check shows its values.
"""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

from conftest import MIGRATION_ROOT, REPO, PlaybookRun, on_host

# A memory workload small enough for a quick migration, with a short look after the restore.
SMALL_MEMORY = {
    "workload": "memory",
    "mb_size": 32,
    "interval": 0.5,
    "max_memory": 64,
    "post_restore_capture_s": 2,
}
# Where the suite keeps an experiment's working directory and images on a lab host.
WORK_ROOT = f"{MIGRATION_ROOT}/work"
IMAGES_ROOT = f"{MIGRATION_ROOT}/images"
ANSIBLE_INVENTORY = str(Path(sys.executable).parent / "ansible-inventory")


def epoch(stamp: str) -> float:
    """A metrics.json ISO stamp (UTC, `Z`) as seconds since the epoch."""
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


# -- lab hosts ----------------------------------------------------------------------------------


def host_output(host: str, command: str) -> str:
    """What a shell command printed on a lab host (it must succeed)."""
    proc = on_host(host, command)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout.split("(stdout)", 1)[-1].strip()


def workload_processes(host: str, experiment_id: str) -> list[str]:
    """The experiment's workload processes on a lab host (`pgrep -af` lines)."""
    lines = host_output(host, f"pgrep -af 'standalone.py --working-dir .*/{experiment_id}' || true")
    return [line for line in lines.split("\\n") if "standalone.py" in line and "pgrep" not in line]


def end_workload(experiment_id: str, *hosts: str) -> None:
    """Let the experiment's workload finish on `hosts` (its checkpoint_flag removed), as a
    failed run leaves it running where it is."""
    for host in hosts:
        on_host(host, f"rm -f {WORK_ROOT}/{experiment_id}/checkpoint_flag")


def remove_experiment(experiment_id: str) -> None:
    """End the experiment's workload on the source and remove what it left on both hosts
    (failed runs keep their working directory and images)."""
    work, images = f"{WORK_ROOT}/{experiment_id}", f"{IMAGES_ROOT}/{experiment_id}"
    on_host(
        "source",
        f"rm -f {work}/checkpoint_flag; for i in $(seq 50); do "
        f"pgrep -f '[s]tandalone.py --working-dir {work}' >/dev/null || break; sleep 0.2; done; "
        f"rm -rf {work} {images}",
    )
    on_host("destination", f"rm -rf {work} {images}")


def run_ansible_inventory(
    source: Path, env: dict[str, str], *, cwd: Path = REPO
) -> subprocess.CompletedProcess[str]:
    """`ansible-inventory -i SOURCE --list` (the caller reads its status and output)."""
    return subprocess.run(
        [ANSIBLE_INVENTORY, "-i", str(source), "--list"],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


# -- a run's results ----------------------------------------------------------------------------


def failed_run(run: PlaybookRun) -> tuple[Path, dict[str, Any]]:
    """The results folder and metrics.json of a run that failed: its folder marked _failed."""
    assert run.rc != 0
    results = run.only_results_dir()
    assert results.name.endswith("_failed")
    return results, run.metrics()


def progress(results: Path, side: str = "dest") -> list[dict[str, Any]]:
    """The workload's progress.log lines, as collected from `side` (dest or source)."""
    text = (results / side / "progress.log").read_text()
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def sent_bytes(results: Path) -> int:
    """What a final rsync transfer sends: the image folder plus the working directory's files
    at the time of the dump (checkpoint_flag is empty)."""
    source = results / "source"
    images = sum(f.stat().st_size for f in (source / "1").iterdir() if f.is_file())
    work = sum((source / name).stat().st_size for name in ("progress.log", "checkpoint_ready"))
    return images + work


# -- checks -------------------------------------------------------------------------------------


def assert_continuous(verification: dict[str, Any]) -> None:
    """metrics.json's verification of a migration that worked: the restored workload runs on
    the destination only, its progress lines and its state go on from the source's."""
    assert verification["restored_running"] is True
    assert verification["running_on_source"] is False
    assert verification["seq_continuous"] is True
    assert verification["state_continuous"] is True
    assert verification["first_destination_seq"] == verification["last_source_seq"] + 1


def assert_progress_continues(lines: list[dict[str, Any]]) -> None:
    """progress.log across the migration: one unbroken run of seq, the restore marked, the
    workload finished (checkpoint_flag removed at the end)."""
    assert any(line.get("event") == "restored" for line in lines)
    assert lines[-1].get("event") == "finished"
    assert [line["seq"] for line in lines] == list(
        range(lines[0]["seq"], lines[0]["seq"] + len(lines))
    )


def assert_refused_before_any_host(run: PlaybookRun, messages: list[str] | tuple[str, ...]) -> None:
    """The preflight refused the input, saying each of `messages`: no task on a lab host, no
    results folder."""
    assert run.rc != 0
    for text in messages:
        assert text in run.stdout, run.stdout[-3000:]
    assert "nothing ran on any host" in run.stdout
    assert run.hosts_touched() <= {"localhost"}
    assert run.results_root is None or not any(run.results_root.iterdir())


def assert_refused_before_the_workload(metrics: dict[str, Any]) -> None:
    """The node checks failed the run: the workload never started."""
    assert metrics["failure"]["phase"] == "node_checks"
    assert metrics["workload"]["source_pid"] is None
    assert not any(task["phase"] == "workload_start" for task in metrics["tasks"])
