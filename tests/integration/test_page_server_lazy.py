"""Page server, lazy pages and feature gating, end to end in the local lab through
ansible-runner (real CRIU, real SSH): pages streamed to `criu page-server` on the
destination, a lazy restore served from the transferred images, network post-copy refused
with the probe's reason on this kernel, and the rollback of a page-server run.

Other engineers run migrations in the same lab: the page-server tests use their own port.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import criu_stats
import pytest
from conftest import LAB, VENV_BIN, assert_no_secrets, run_playbook, suite_env
from helpers import (
    assert_continuous,
    assert_progress_continues,
    end_workload,
    failed_run,
    host_output,
    progress,
)

# More pages than helpers.SMALL_MEMORY's, for the page server and lazy pages to serve.
SMALL_MEMORY = {"workload": "memory", "mb_size": 48, "interval": 0.5, "max_memory": 256}
PAGE_SERVER_PORT = 27230


def criu_daemons(host: str, experiment_id: str) -> str:
    """CRIU processes of this experiment still running on a lab host ("" when none)."""
    out = host_output(host, f"pgrep -af 'criu .*{experiment_id}' | grep -v pgrep || true")
    return out.replace("\\n", "\n").strip()


def assert_continuous_migration(metrics: dict[str, Any], results: Path) -> None:
    assert metrics["status"] == "ok"
    assert_continuous(metrics["verification"])
    assert_progress_continues(progress(results))


@pytest.mark.lab
def test_page_server_migration(lab: Path, tmp_path: Path) -> None:
    run = run_playbook(
        tmp_path,
        "migrate.yml",
        {
            **SMALL_MEMORY,
            "page_server": True,
            "page_server_port": PAGE_SERVER_PORT,
            "keep_images": True,
        },
    )
    assert run.rc == 0, run.stdout[-5000:]
    results = run.only_results_dir()
    metrics = run.metrics()
    assert metrics["strategy"]["page_server"] is True
    assert_continuous_migration(metrics, results)

    # The pages went over TCP into the destination's images folder, never to the source's disk.
    assert not list((results / "source" / "1").glob("pages-*.img"))
    received = sum(f.stat().st_size for f in (results / "dest" / "1").glob("pages-*.img"))
    assert list((results / "dest" / "1").glob("pagemap-*.img"))
    dump = metrics["phases"]["final_dump"]
    stats = criu_stats.summarize_stats_image(str(results / "source" / "1" / "stats-dump"))["dump"]
    assert dump["pages_written"] == stats["pages_written"] > 48 * 256
    assert received == dump["bytes"] == stats["pages_written"] * 4096
    assert 0 < dump["frozen_s"] <= dump["duration_s"]

    # The page server's side: its log in dest/, its session complete, what it received.
    server = metrics["phases"]["restore"]["page_server"]
    assert server["finished"] is True and server["terminated"] is False
    assert server["session_complete"] is True and server["session_s"] > 0
    assert server["bytes_received"] == received
    assert server["port"] == PAGE_SERVER_PORT
    log = (results / "dest" / "criu-page-server.log").read_text()
    assert (
        f"Accepted connection from {LAB.address('source')}" in log
        and "page-xfer: Session over" in log
    )
    assert (
        "page-xfer: Disconnect from the page server"
        in (results / "source" / "criu-dump.log").read_text()
    )

    # Only the small image files and the working directory went through the transfer.
    transfer = metrics["phases"]["transfer"]
    assert 0 < transfer["bytes"] < received / 10
    # Restore and downtime as usual; CRIU's figures and the timings agree.
    assert metrics["phases"]["restore"]["stats"]["pages_restored"] == stats["pages_written"]
    assert metrics["downtime_s"] >= dump["duration_s"] + metrics["phases"]["restore"]["duration_s"]
    assert metrics.get("warnings", []) == []
    assert "  Page server: " in run.stdout

    experiment_id = metrics["experiment"]["id"]
    assert criu_daemons("destination", experiment_id) == ""
    assert host_output("destination", f"ss -H -l -t -n 'sport = :{PAGE_SERVER_PORT}'") == ""


@pytest.mark.lab
def test_lazy_pages_migration_from_images(lab: Path, tmp_path: Path) -> None:
    run = run_playbook(
        tmp_path, "migrate.yml", {**SMALL_MEMORY, "lazy_pages": True, "keep_images": True}
    )
    assert run.rc == 0, run.stdout[-5000:]
    results = run.only_results_dir()
    metrics = run.metrics()
    assert metrics["strategy"]["lazy_pages"] is True
    assert metrics["strategy"]["lazy_pages_mode"] == "images"
    # the restored workload's "restored" line recomputed its state from every page it holds
    assert_continuous_migration(metrics, results)

    restore = metrics["phases"]["restore"]
    lazy = restore["lazy_pages"]
    assert lazy["finished"] is True and lazy["complete"] is True and lazy["terminated"] is False
    assert lazy["pages_lazy_served"] == lazy["pages_lazy_total"] > 48 * 256
    # the restore itself brought back only what cannot be served lazily
    dumped = metrics["phases"]["final_dump"]["pages_written"]
    assert restore["stats"]["pages_restored"] < dumped / 10
    assert restore["stats"]["pages_restored"] + lazy["pages_lazy_served"] == dumped
    log = (results / "dest" / "criu-lazy-pages.log").read_text()
    assert (
        f"UFFD transferred pages: ({lazy['pages_lazy_served']}/{lazy['pages_lazy_total']})" in log
    )
    assert lazy["tasks"] == [restore["pid"]]  # the restored workload got its pages
    assert metrics.get("warnings", []) == []
    assert "  Lazy pages: " in run.stdout
    assert criu_daemons("destination", metrics["experiment"]["id"]) == ""


@pytest.mark.lab
def test_network_lazy_pages_are_refused_with_the_probes_reason(lab: Path, tmp_path: Path) -> None:
    run = run_playbook(
        tmp_path, "migrate.yml", {**SMALL_MEMORY, "lazy_pages": True, "lazy_pages_mode": "network"}
    )
    if run.rc == 0:  # a kernel feature this test needs to be missing is there
        pytest.skip("capability: this kernel can do network post-copy: nothing to refuse")
    metrics = run.metrics()
    failure = metrics["failure"]
    assert failure["phase"] == "node_checks"
    assert failure["host"] == "source"
    kernel = metrics["environment"]["source"]["kernel"]
    assert (
        "lazy_pages_mode=network needs network post-copy (criu dump --lazy-pages serving pages to "
        f"criu lazy-pages --page-server), which source (kernel {kernel}) lacks; the probe says: "
        "criu dump --lazy-pages (serving pages) failed: page-pipe: tee: 65536: Operation not "
        "permitted; use lazy_pages_mode=images"
    ) in failure["msg"]
    # refused before the workload started; the destination (which fetches) was not blamed
    assert metrics["workload"]["source_pid"] is None
    assert not any(task["phase"] in ("deploy", "workload_start") for task in metrics["tasks"])
    assert "destination (kernel" not in failure["msg"]


@pytest.mark.lab
def test_a_failed_restore_after_a_page_server_dump_rolls_back_to_the_source(
    lab: Path, tmp_path: Path
) -> None:
    run = run_playbook(
        tmp_path,
        "migrate.yml",
        {
            **SMALL_MEMORY,
            "page_server": True,
            "page_server_port": PAGE_SERVER_PORT,
            "inject_fault": "restore_pid_busy",
            # the rollback from images (CRIU kills the dumped tree): the pages come back from
            # the destination first. By default the dump leaves the tree stopped and it is
            # resumed instead (test_faults.py).
            "critical_path_leave_stopped": False,
        },
    )
    results, metrics = failed_run(run)
    experiment_id = metrics["experiment"]["id"]
    try:
        assert metrics["failure"]["phase"] == "restore"
        assert "File exists" in metrics["failure"]["msg"]
        # the source had no pages: they came back from the destination before the rollback
        assert "Fetch the pages the page server received back" in run.stdout
        assert (
            metrics["rollback"][0]["stats"]["pages_restored"]
            == metrics["phases"]["final_dump"]["pages_written"]
        )
        assert json.loads((results / "journal.json").read_text())["location"] == "source"
        running = host_output(
            "source", f"pgrep -af 'standalone.py --working-dir .*/{experiment_id}' || true"
        )
        assert str(metrics["workload"]["source_pid"]) in running
        assert criu_daemons("destination", experiment_id) == ""
    finally:
        end_workload(experiment_id, "source")


@pytest.mark.guest
def test_network_post_copy_on_the_soft_dirty_guests(guest_lab: Path, tmp_path: Path) -> None:
    """Where the probe passes (Debian 12's 6.1 kernel in the QEMU guests), network post-copy
    runs: the dump serves the pages from the source, the destination's lazy-pages daemon
    fetches every one of them, the source's dump finishes and the workload runs on.

    Over TLS (page_server_tls, the experiment's own CA): the dump serves with the source's
    certificate and checks the daemon's against the CA, the daemon checks that the source's
    certificate names the source; the TLS files are gone from both guests at the end and no
    key or certificate reaches the results. (One guest migration covers both: under TCG each
    takes minutes, and TLS only adds options to the same CRIU calls.)

    The session's guest lab (conftest.py's `guest_lab`) is brought up for this test when
    no other test did. Only the guests' kernel refusing network post-copy may skip it."""
    run = run_playbook(
        tmp_path,
        "migrate.yml",
        {
            "workload": "memory",
            "checkpoint_strategy": "full",
            "mb_size": 8,
            "interval": 0.5,
            "max_memory": 32,
            "lazy_pages": True,
            "lazy_pages_mode": "network",
            "page_server_tls": True,
        },
        inventory=str(guest_lab),
    )
    assert_no_secrets(run.results_root, texts=[run.stdout], inventory=guest_lab)
    metrics = json.loads((run.only_results_dir() / "metrics.json").read_text())
    failure = metrics.get("failure") or {}
    if "lazy_pages_mode=network needs network post-copy" in failure.get("msg", ""):
        # refused by node_checks' probe, before the workload started: a kernel capability
        assert failure["phase"] == "node_checks", failure
        pytest.skip(f"capability: the guests refuse network post-copy: {failure['msg'][:300]}")
    experiment_id = metrics["experiment"]["id"]
    try:
        assert run.rc == 0, run.stdout[-5000:]
        dump = metrics["phases"]["final_dump"]
        assert {"--lazy-pages", "--tls", "--tls-no-cn-verify"} <= set(dump["cmd"]), dump["cmd"]
        lazy = metrics["phases"]["restore"]["lazy_pages"]
        assert lazy["finished"] is True and lazy["complete"] is True, lazy
        assert lazy["pages_lazy_served"] == lazy["pages_lazy_total"] > 8 * 256
        assert lazy["port"] == 27001
        # the dump returned once it served (its duration), and finished once every page went
        assert dump["duration_s"] > 0 and dump["started_at"]
        assert "no stats-dump" not in json.dumps(metrics.get("warnings", []))
        assert "rollback" not in metrics
        verification = metrics["verification"]
        assert verification["restored_running"] is True
        assert verification["running_on_source"] is False
        assert verification["seq_continuous"] is True
        # anonymous memory and every page's checksum must come back while pages still stream in
        assert metrics["status"] == "ok", metrics.get("failure")
        for host in ("source", "destination"):
            left = subprocess.run(
                [str(VENV_BIN / "ansible"), "-i", str(guest_lab), host, "-m", "shell", "-a",
                 f"ls -d /var/lib/criu-migration/tls/{experiment_id} 2>/dev/null || true"],
                env=suite_env(), capture_output=True, text=True, check=False,
            ).stdout  # fmt: skip
            assert f"tls/{experiment_id}" not in left.split(">>", 1)[-1], (host, left)
    finally:
        subprocess.run(
            [
                str(VENV_BIN / "ansible"),
                "-i",
                str(guest_lab),
                "all",
                "-m",
                "shell",
                "-a",
                f"rm -f /var/lib/criu-migration/work/{experiment_id}/checkpoint_flag",
            ],
            env=suite_env(),
            capture_output=True,
            check=False,
        )
