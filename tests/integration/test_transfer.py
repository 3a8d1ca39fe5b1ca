"""Transfer backends in the local lab, through migrate.yml (real CRIU, real SSH, real faults).

rsync with two ciphers, efs (the lab's shared directory), the zstd stream, verification -
a page image corrupted for real on the destination is caught before the restore - and a
transfer cut midway; each failure must leave the workload running on the source. Bad
setups (a shared path that is not mounted, or not shared; zstd missing on a host) are
refused before the workload starts. Other engineers use the same lab: every test cleans up
only what its own experiment made.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from conftest import LAB, on_host, run_playbook
from helpers import (
    IMAGES_ROOT,
    SMALL_MEMORY,
    assert_refused_before_the_workload,
    failed_run,
    remove_experiment,
    sent_bytes,
    workload_processes,
)

pytestmark = pytest.mark.lab

# The lab's /mnt/criu-shared is this control-side folder, bind-mounted into every host.
LAB_SHARED = LAB.dir / "shared"


def assert_migrated(metrics: dict[str, Any]) -> None:
    assert metrics["status"] == "ok", metrics.get("failure")
    verification = metrics["verification"]
    assert verification["restored_running"] is True
    assert verification["state_continuous"] is True
    assert verification["seq_continuous"] is True


def assert_transfer_figures(transfer: dict[str, Any]) -> None:
    assert transfer["duration_s"] > 0 and transfer["files"] > 0
    assert transfer["throughput_mb_s"] == pytest.approx(
        transfer["bytes"] / 1e6 / transfer["duration_s"], rel=1e-3
    )
    send = transfer["send"]
    assert send["bytes"] == transfer["bytes"] and send["files"] == transfer["files"]
    assert 0 < send["duration_s"] <= transfer["duration_s"]


def assert_back_on_source(run_metrics: dict[str, Any], results: Path) -> None:
    """The failed run's workload runs again on the source, and only there; then end it."""
    experiment_id = run_metrics["experiment"]["id"]
    try:
        journal = json.loads((results / "journal.json").read_text())
        assert journal["location"] == "source"
        steps = [step["step"] for step in journal["steps"]]
        if run_metrics["critical_path"]["path"] == "fused":
            # the dump left the tree stopped on the source (leave_stopped): resumed there
            assert "source_resumed (source)" in steps, steps
        else:  # the stepwise dump ended it there: restored from its images
            assert "rollback (source)" in steps, steps
        running = workload_processes("source", experiment_id)
        assert len(running) == 1
        assert str(run_metrics["workload"]["source_pid"]) in running[0]
        assert workload_processes("destination", experiment_id) == []
    finally:
        remove_experiment(experiment_id)


@pytest.mark.parametrize(
    ("cipher", "verify"),
    [("chacha20-poly1305@openssh.com", False), ("aes256-gcm@openssh.com", True)],
)
def test_rsync_migration(lab: Path, tmp_path: Path, cipher: str, verify: bool) -> None:
    run = run_playbook(
        tmp_path,
        "migrate.yml",
        {**SMALL_MEMORY, "transfer_cipher": cipher, "transfer_verify": verify, "keep_images": True},
    )
    assert run.rc == 0, run.stdout[-5000:]
    metrics = run.metrics()
    assert_migrated(metrics)
    transfer = metrics["phases"]["transfer"]
    assert transfer["method"] == "rsync"
    assert transfer["cipher"] == cipher
    assert_transfer_figures(transfer)
    results = run.only_results_dir()
    # exactly the image folder plus the working directory's files at the time of the dump
    assert transfer["bytes"] == sent_bytes(results)
    if verify:
        check = transfer["verify"]
        assert check["ok"] is True and check["mismatches"] == []
        assert check["algorithm"] == "sha256"
        assert check["files"] == transfer["files"] and check["bytes"] == transfer["bytes"]
        assert check["source_s"] > 0 and check["destination_s"] > 0
        assert transfer["duration_s"] == pytest.approx(
            transfer["send"]["duration_s"] + check["destination_s"], abs=1e-5
        )
    else:
        assert transfer["verify"] == "off"
        assert transfer["duration_s"] == transfer["send"]["duration_s"]
    for host in ("source", "destination"):
        on_host(host, f"rm -rf {IMAGES_ROOT}/{metrics['experiment']['id']}")


def test_zstd_stream_migration(lab: Path, tmp_path: Path) -> None:
    run = run_playbook(
        tmp_path,
        "migrate.yml",
        {**SMALL_MEMORY, "transfer_compress": "zstd", "transfer_compress_level": 3},
    )
    assert run.rc == 0, run.stdout[-5000:]
    metrics = run.metrics()
    assert_migrated(metrics)
    transfer = metrics["phases"]["transfer"]
    assert transfer["method"] == "ssh-zstd"
    assert_transfer_figures(transfer)
    compression = transfer["compression"]
    assert compression["algorithm"] == "zstd" and compression["level"] == 3
    # the memory workload's pages hold one written byte each: they compress very well
    assert compression["raw_bytes"] >= transfer["bytes"] > compression["compressed_bytes"] > 0
    assert compression["ratio"] == pytest.approx(
        compression["raw_bytes"] / compression["compressed_bytes"], rel=1e-3
    )
    assert compression["ratio"] > 5
    assert compression["raw_mb_s"] > compression["compressed_mb_s"] > 0
    assert compression["compress_cpu_s"] > 0
    assert transfer["wire_bytes"] == compression["compressed_bytes"]
    assert "| zstd --threads=0 -3 " in transfer["pipeline"]


def test_efs_migration_restores_from_the_shared_directory(lab: Path, tmp_path: Path) -> None:
    run = run_playbook(
        tmp_path, "migrate.yml", {**SMALL_MEMORY, "transfer": "efs", "transfer_verify": True}
    )
    experiment_id = None
    try:
        assert run.rc == 0, run.stdout[-5000:]
        metrics = run.metrics()
        experiment_id = metrics["experiment"]["id"]
        assert_migrated(metrics)
        transfer = metrics["phases"]["transfer"]
        assert transfer["method"] == "efs"
        images = f"/mnt/criu-shared/criu-migration/images/{experiment_id}/source/1"
        # the dump wrote straight into the shared directory; nothing of it was copied
        journal = json.loads((run.only_results_dir() / "journal.json").read_text())
        assert journal["images"]["source"] == [images]
        assert transfer["shared_bytes"] >= metrics["phases"]["final_dump"]["bytes"] > 0
        assert transfer["shared_files"] > 5
        assert transfer["staged"] == [f"/var/lib/criu-migration/work/{experiment_id}"]
        # only the working directory went through the share: staged, then copied back out
        assert transfer["bytes"] < 100_000
        assert transfer["send"]["bytes"] == transfer["receive"]["bytes"] == transfer["bytes"]
        assert transfer["duration_s"] == pytest.approx(
            transfer["send"]["duration_s"] + transfer["receive"]["duration_s"], abs=1e-5
        )
        assert transfer["verify"].startswith("not applicable: transfer=efs")
        # the restore read the images where the dump put them: its stats-restore is beside
        # the dump's stats-dump on the share, collected from there into the results
        results = run.only_results_dir()
        assert (results / "dest" / "1" / "stats-restore").exists()
        assert (results / "source" / "1" / "stats-dump").exists()
        assert not list((results / "dest" / "1").glob("pages-*.img"))  # keep_images=false
        assert metrics["phases"]["restore"]["stats"]["pages_restored"] > 0
        # after a successful run the images leave the share too (keep_images=false)
        assert not (LAB_SHARED / images.removeprefix("/mnt/criu-shared/")).exists()
    finally:
        if experiment_id:
            shutil.rmtree(
                LAB_SHARED / "criu-migration" / "images" / experiment_id, ignore_errors=True
            )


# Both critical paths must roll back alike: fused (one module call on the source, the
# default) and stepwise (one task per phase).
PATHS = ["fused", "stepwise"]


@pytest.mark.parametrize("critical_path", PATHS)
def test_corrupted_image_is_caught_before_the_restore(
    lab: Path, tmp_path: Path, critical_path: str
) -> None:
    run = run_playbook(
        tmp_path,
        "migrate.yml",
        {
            **SMALL_MEMORY,
            "transfer_verify": True,
            "inject_fault": "corrupt_image",
            "critical_path": critical_path,
        },
    )
    results, metrics = failed_run(run)
    assert metrics["strategy"]["critical_path"] == critical_path
    experiment_id = metrics["experiment"]["id"]
    pages = f"/var/lib/criu-migration/images/{experiment_id}/1/pages-1.img"
    failure = metrics["failure"]
    assert failure["phase"] == "transfer"
    # stepwise: the receive task on the destination compared; fused: the source's call
    # compared over its SSH connection to the destination
    assert failure["host"] == ("destination" if critical_path == "stepwise" else "source")
    assert "checksum mismatch on " in failure["msg"] and "destination" in failure["msg"]
    assert f"{pages}: sha256 " in failure["msg"]
    check = metrics["phases"]["transfer"]["verify"]
    assert check["ok"] is False and check["mismatches"][0].startswith(f"{pages}: sha256 ")
    # the restore was never attempted on the destination
    assert not (results / "dest" / "criu-restore.log").exists()
    assert "restore" not in metrics["phases"]
    assert_back_on_source(metrics, results)


@pytest.mark.parametrize("critical_path", PATHS)
def test_transfer_cut_midway_rolls_back_to_the_source(
    lab: Path, tmp_path: Path, critical_path: str
) -> None:
    run = run_playbook(
        tmp_path,
        "migrate.yml",
        {**SMALL_MEMORY, "inject_fault": "transfer_interrupt", "critical_path": critical_path},
    )
    results, metrics = failed_run(run)
    failure = metrics["failure"]
    assert failure["phase"] == "transfer" and failure["host"] == "source"
    assert f"rsync to {LAB.address('destination')} failed" in failure["msg"]
    assert "SSH connection killed after 1 s" in failure["msg"]
    assert (results / "source" / "criu-dump.log").exists()  # logs collected
    assert_back_on_source(metrics, results)


@pytest.mark.parametrize(
    ("efs_mount_path", "expected"),
    [
        # exists on both hosts but is no mount point
        ("/opt", "efs_mount_path /opt is not a mount point on source (findmnt --mountpoint /opt"),
        # a mount point on both hosts, but each host's own tmpfs
        (
            "/var/lib/criu-migration",
            "transfer=efs: destination does not see at /var/lib/criu-migration the marker that "
            "source (its source) wrote there",
        ),
    ],
)
def test_efs_that_is_not_shared_is_refused_before_the_workload_starts(
    lab: Path, tmp_path: Path, efs_mount_path: str, expected: str
) -> None:
    run = run_playbook(
        tmp_path,
        "migrate.yml",
        {**SMALL_MEMORY, "transfer": "efs", "efs_mount_path": efs_mount_path},
    )
    assert run.rc != 0
    assert expected in run.stdout, run.stdout[-4000:]
    assert_refused_before_the_workload(run.metrics())
    marker = on_host("source", f"ls -a {efs_mount_path} | grep -c criu-migration-check || true")
    assert "(stdout) 0" in marker.stdout  # the marker does not stay behind


def test_missing_zstd_on_the_destination_is_refused(lab: Path, tmp_path: Path) -> None:
    # The lab's hosts share this machine's /usr: hide zstd in the destination's own mount
    # namespace only (a non-executable /dev/null over it), for the length of this test.
    hidden = on_host("destination", "mount --bind /dev/null /usr/bin/zstd && echo hidden")
    assert "hidden" in hidden.stdout, hidden.stdout + hidden.stderr
    try:
        run = run_playbook(tmp_path, "migrate.yml", {**SMALL_MEMORY, "transfer_compress": "zstd"})
    finally:
        on_host("destination", "umount /usr/bin/zstd")
    assert run.rc != 0
    assert (
        "zstd is not installed on destination (or not on its PATH), and transfer=rsync with "
        "transfer_compress=zstd runs it on the destination: apt-get install zstd"
    ) in run.stdout, run.stdout[-4000:]
    assert_refused_before_the_workload(run.metrics())
    # both hosts of the pair refuse: the source does not go on alone
    assert "source (kernel" in run.stdout and "destination (kernel" in run.stdout
