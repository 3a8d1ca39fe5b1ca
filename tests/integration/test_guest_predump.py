"""checkpoint_strategy=predump for real: migrate.yml between the two QEMU guests of the soft-dirty lab.

This machine's kernel has no soft-dirty tracking, so `criu pre-dump` runs in two QEMU
guests booted from Debian 12's stock kernel (`make lab-up LAB_FLAVOUR=guest`). The
session fixture `guest_lab` (tests/integration/conftest.py, shared with the other guest
tests) builds the guest image when it is not cached (`make guest-image`, 1-2 minutes
cold), brings the guests up and, when it brought them up, takes them down at the end and
checks that nothing is left behind (no QEMU process, tap, bridge or overlay). KEEP_LAB=1
leaves them up.

Sizes are small and iterations short (3 x 1 s): the guests are emulated, so every
Ansible task costs seconds. The measured times are printed (`pytest -s`).
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import GUEST_LAB_DIR, REPO, ansible_playbook, run_playbook

pytestmark = [pytest.mark.guest]

# 64 MB: the restored workload's anonymous memory and page checksums are compared, so a
# small heap passes too (its total RSS lacks not yet touched file pages, which is harmless).
MEMORY = {"workload": "memory", "mb_size": 32, "interval": 0.5, "max_memory": 64}


def _say(message: str) -> None:
    print(f"[guest lab] {message}", flush=True)


def migrate(tmp_path: Path, inventory: Path, **extravars: Any) -> dict[str, Any]:
    t0 = time.monotonic()
    run = run_playbook(tmp_path, "migrate.yml", {**MEMORY, **extravars}, inventory=str(inventory))
    _say(f"migrate.yml {extravars} took {time.monotonic() - t0:.1f} s")
    assert run.rc == 0, run.stdout[-6000:]
    results = run.only_results_dir()
    metrics = run.metrics()
    metrics["_results_dir"] = str(results)
    predump = metrics["phases"]["predump"]
    _say(
        "pre-dumps: "
        + "; ".join(
            f"#{it['index']} {it['duration_s']:.2f} s {it['pages_written']} pages written "
            f"{it['pages_skipped']} skipped, sent in {it['transfer']['duration_s']:.2f} s"
            for it in predump["iterations"]
        )
        + f"; stop: {predump.get('stop', {}).get('reason')}; final dump "
        f"{metrics['phases']['final_dump']['pages_written']} pages "
        f"(frozen {metrics['phases']['final_dump']['frozen_s']:.2f} s); "
        f"downtime {metrics['downtime_s']:.2f} s"
    )
    return metrics


def assert_restored_and_continuous(metrics: dict[str, Any]) -> None:
    assert metrics["status"] == "ok"
    verification = metrics["verification"]
    assert verification["restored_running"] is True, verification
    assert verification["state_continuous"] is True, verification
    assert metrics["downtime_s"] > 0


def test_guests_run_a_soft_dirty_kernel_and_the_suites_criu(guest_lab: Path) -> None:
    proc = subprocess.run(
        [str(REPO / ".venv/bin/ansible"), "all", "-i", str(guest_lab), "-o", "-m", "command",
         "-a", "/usr/local/sbin/criu check --feature mem_dirty_track"],
        cwd=REPO, capture_output=True, text=True, stdin=subprocess.DEVNULL,
        env={**os.environ, "ANSIBLE_CONFIG": str(REPO / "ansible.cfg")},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.count("mem_dirty_track is supported") == 2, proc.stdout


def test_fixed_predump_migration_between_the_guests(guest_lab: Path, tmp_path: Path) -> None:
    metrics = migrate(
        tmp_path, guest_lab, checkpoint_strategy="predump", predump_iterations=3, predump_interval=1
    )
    assert_restored_and_continuous(metrics)
    assert metrics["strategy"]["mode"] == "predump"
    assert metrics["environment"]["source"]["kernel"].startswith("6.1.")
    assert metrics["environment"]["source"]["criu"] == "4.2.1"

    predump = metrics["phases"]["predump"]
    iterations = predump["iterations"]
    assert [it["index"] for it in iterations] == [1, 2, 3]
    assert predump["stop"]["reason"] == "iterations"
    first, *later = iterations
    assert first["pages_written"] > 15_000  # 64 MB of workload memory
    for it in later:
        # truly incremental: only what the workload dirtied since the previous pre-dump
        assert it["pages_written"] < first["pages_written"] / 10, iterations
        assert it["pages_skipped"] > first["pages_written"] / 2, iterations
    # each pre-dump was sent while the workload ran, as its own stage
    for it in iterations:
        assert it["transfer"]["bytes"] > 0 and it["transfer"]["duration_s"] > 0
    stages = [t["stage"] for t in metrics["phases"]["transfer"]["predump_transfers"]]
    assert stages == ["predump-1", "predump-2", "predump-3"]
    starts = [it["started_at"] for it in iterations]
    assert starts == sorted(starts)

    # only the final delta is on the critical path
    final = metrics["phases"]["final_dump"]
    assert 0 < final["pages_written"] < first["pages_written"] / 10
    assert metrics["phases"]["transfer"]["bytes"] < first["transfer"]["bytes"] / 10

    # results: every checkpoint folder, the pre-dumps' logs in order
    source = Path(metrics["_results_dir"]) / "source"
    for folder in ("1", "2", "3", "4"):
        assert (source / folder / "stats-dump").is_file(), folder
    log = (source / "criu-pre-dump.log").read_text()
    headers = [log.index(f"===== criu pre-dump {n} ") for n in (1, 2, 3)]
    assert headers == sorted(headers)
    dest = Path(metrics["_results_dir"]) / "dest"
    assert (dest / "criu-restore.log").is_file()
    for folder in ("1", "2", "3", "4"):  # the restore read the whole chain on the destination
        assert (dest / folder).is_dir(), folder


def test_adaptive_predump_stops_when_memory_is_in_sync(guest_lab: Path, tmp_path: Path) -> None:
    metrics = migrate(
        tmp_path,
        guest_lab,
        checkpoint_strategy="predump",
        predump_mode="adaptive",
        predump_iterations=6,
        predump_interval=1,
    )
    assert_restored_and_continuous(metrics)
    predump = metrics["phases"]["predump"]
    stop = predump["stop"]
    # the memory workload stops growing at max_memory: the second pre-dump finds almost
    # everything unchanged, far before the cap of 6
    assert stop["mode"] == "adaptive"
    assert stop["reason"] in ("skip_goal", "small_dump", "not_shrinking"), stop
    assert stop["count"] == len(predump["iterations"]) < 6
    assert stop["detail"]
    assert predump["iterations"][-1]["decision"]["stop"] is True
    assert all(not it["decision"]["stop"] for it in predump["iterations"][:-1])
    # the final dump builds on the last pre-dump; its folder keeps the N+1 = 7 layout
    source = Path(metrics["_results_dir"]) / "source"
    assert (source / "7" / "stats-dump").is_file()
    assert not (source / str(stop["count"] + 1)).exists()
    # the stop rule's settings are in metrics.json beside the reason
    assert stop["policy"]["skip_goal_pct"] == 70.0


def test_guest_lab_up_again_changes_nothing(guest_lab: Path) -> None:
    proc = ansible_playbook(
        "playbooks/lab.yml", "-e", "lab_flavour=guest", "-e", "lab_state=present"
    )
    assert "created: none" in proc.stdout, proc.stdout[-2000:]
    state = json.loads((GUEST_LAB_DIR / "state.json").read_text())
    assert sorted(state["hosts"]) == ["destination", "source"]
