"""transfer=s3 and transfer=ebs in the local lab, through migrate.yml, against the lab's own
S3 and EC2: moto in server mode on the lab bridge, which playbooks/lab.yml starts (real HTTP
from the lab hosts and the control node; the hosts registered as instances, the pair's
volume a loop device that moves between the hosts' mount namespaces with the attachment).

- memory and redis migrate with s3 and with ebs (fused and stepwise each), their figures in
  metrics.json, the bucket emptied and the volume detached afterwards;
- an upload cut midway and an attach that presents no device are rolled back: the workload
  runs on the source again, nothing is left in the bucket, the volume rests detached;
- a missing bucket is refused by the node checks from both hosts before the workload
  starts; ebs across zones is refused by the preflight;
- no results folder or output holds the lab's credentials (conftest's assert_no_secrets).

Other engineers use the same lab: each test cleans only what its own experiment made.
"""

from __future__ import annotations

import json
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import boto3
import pytest
import yaml
from conftest import LAB, LAB_INVENTORY, assert_no_secrets, run_playbook
from helpers import (
    assert_continuous,
    assert_refused_before_any_host,
    assert_refused_before_the_workload,
    failed_run,
    remove_experiment,
    workload_processes,
)

pytestmark = pytest.mark.lab

SMALL = {
    "workload": "memory",
    "mb_size": 16,
    "interval": 0.5,
    "max_memory": 32,
    "post_restore_capture_s": 1,
}
SMALL_REDIS = {
    "workload": "redis",
    "num_keys": 5000,
    "value_size": 256,
    "post_restore_capture_s": 1,
}
STEPWISE = {"critical_path": "stepwise"}


# -- the lab's S3 and EC2, as the tests see them ------------------------------------------------


def lab_vars() -> dict[str, Any]:
    return yaml.safe_load(LAB_INVENTORY.read_text())["all"]["vars"]


def lab_client(service: str) -> Any:
    top = lab_vars()
    credentials = json.loads(Path(top["lab_aws_credentials_file"]).read_text())
    return boto3.client(
        service,
        endpoint_url=top["lab_aws_endpoint_url"],
        region_name="us-east-1",
        aws_access_key_id=credentials["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=credentials["AWS_SECRET_ACCESS_KEY"],
    )


def objects_of(experiment_id: str) -> tuple[list[str], list[str]]:
    """(objects, unfinished multipart uploads) of an experiment in the lab's bucket."""
    s3, bucket, prefix = (
        lab_client("s3"),
        lab_vars()["lab_s3_bucket"],
        f"criu-migration/{experiment_id}/",
    )
    objects = [
        o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", [])
    ]
    uploads = [
        u["Key"]
        for u in s3.list_multipart_uploads(Bucket=bucket, Prefix=prefix).get("Uploads") or []
    ]
    return objects, uploads


def lab_volume() -> dict[str, Any]:
    hosts = yaml.safe_load(LAB_INVENTORY.read_text())["all"]["children"]["lab"]["children"]
    volume_id = hosts["source"]["hosts"]["source"]["ebs_volume_id"]
    return lab_client("ec2").describe_volumes(VolumeIds=[volume_id])["Volumes"][0]


def remove_from_volume(experiment_id: str) -> None:
    """A failed run leaves its images on the (detached) volume: remove them there, through a
    loop device of the volume's backing file mounted here for the moment."""
    volume = lab_volume()
    if volume["State"] != "available":
        return
    backing = Path(lab_vars()["lab_ebs_backing_dir"]) / f"{volume['VolumeId']}.img"
    device = subprocess.run(
        ["losetup", "--find", "--show", str(backing)], capture_output=True, text=True, check=True
    ).stdout.strip()
    try:
        with tempfile.TemporaryDirectory() as mount_point:
            subprocess.run(["mount", device, mount_point], check=True)
            try:
                subprocess.run(
                    ["rm", "-rf", f"{mount_point}/criu-migration/images/{experiment_id}"],
                    check=True,
                )
            finally:
                subprocess.run(["umount", mount_point], check=True)
    finally:
        subprocess.run(["losetup", "--detach", device], check=False)


def migrate(tmp_path: Path, variables: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    run = run_playbook(tmp_path, "migrate.yml", variables)
    assert_no_secrets(run.results_root, texts=[run.stdout], inventory=LAB_INVENTORY)
    return run, (run.metrics() if run.results_root else {})


def assert_back_on_source(metrics: dict[str, Any], results: Path) -> None:
    experiment_id = metrics["experiment"]["id"]
    journal = json.loads((results / "journal.json").read_text())
    assert journal["location"] == "source"
    if metrics["critical_path"]["path"] == "fused":  # left stopped by the dump: resumed
        assert "source_resumed (source)" in [step["step"] for step in journal["steps"]]
    else:  # the stepwise dump ended it: restored from its images
        assert (results / "source" / "criu-rollback-restore.log").exists()
    running = workload_processes("source", experiment_id)
    assert len(running) == 1 and str(metrics["workload"]["source_pid"]) in running[0]
    assert workload_processes("destination", experiment_id) == []


# -- s3 --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("variables", "path"),
    [({**SMALL, "transfer_verify": True}, "fused"), ({**SMALL_REDIS, **STEPWISE}, "stepwise")],
    ids=["memory-fused-verify", "redis-stepwise"],
)
def test_s3_migration(lab: Path, tmp_path: Path, variables: dict[str, Any], path: str) -> None:
    run, metrics = migrate(tmp_path, {**variables, "transfer": "s3"})
    experiment_id = metrics.get("experiment", {}).get("id")
    try:
        assert run.rc == 0, run.stdout[-5000:]
        assert metrics["status"] == "ok"
        assert_continuous(metrics["verification"])
        assert metrics["critical_path"]["path"] == path
        transfer = metrics["phases"]["transfer"]
        assert transfer["method"] == "s3"
        s3 = transfer["s3"]
        assert s3["bucket"] == lab_vars()["lab_s3_bucket"]
        assert s3["prefix"] == f"criu-migration/{experiment_id}/source/"
        assert s3["endpoint_url"] == lab_vars()["lab_aws_endpoint_url"]
        assert (s3["part_size_mb"], s3["max_concurrency"]) == (8, 10)  # AWS's defaults
        upload, download = s3["upload"], s3["download"]
        # every byte of the images and the working directory went up and came back down
        assert upload["bytes"] == download["bytes"] == transfer["bytes"] > 1_000_000
        assert upload["objects"] == download["objects"] == transfer["files"]
        assert upload["parts"] == upload["planned_parts"] >= upload["objects"]
        assert upload["mb_s"] > 0 and download["mb_s"] > 0
        # each side as the module saw it (the tool's start included), and the whole
        assert transfer["send"]["duration_s"] >= upload["duration_s"] > 0
        assert transfer["receive"]["duration_s"] >= download["duration_s"] > 0
        check = transfer["verify"]
        extra = check["destination_s"] if isinstance(check, dict) else 0.0
        assert transfer["duration_s"] == pytest.approx(
            transfer["send"]["duration_s"] + transfer["receive"]["duration_s"] + extra, abs=1e-5
        )
        if variables.get("transfer_verify"):
            assert check["ok"] is True and check["files"] == transfer["files"]
        # the bucket holds nothing of the run any more (keep_images=false)
        assert objects_of(experiment_id) == ([], [])
        cleanup = [r for r in metrics["transfer_storage"] if r["step"] == "cleanup"]
        assert cleanup[0]["objects_deleted"] == transfer["files"] + 1  # + the stage's manifest
    finally:
        if experiment_id and run.rc != 0:
            remove_experiment(experiment_id)


def test_an_upload_cut_midway_is_rolled_back(lab: Path, tmp_path: Path) -> None:
    run, metrics = migrate(
        tmp_path, {**SMALL, "transfer": "s3", "inject_fault": "transfer_interrupt"}
    )
    experiment_id = metrics["experiment"]["id"]
    try:
        results, metrics = failed_run(run)
        failure = metrics["failure"]
        assert failure["phase"] == "transfer"
        assert "inject_fault=transfer_interrupt: the uploader was killed after" in failure["msg"]
        assert "with parts in flight; removed the partial upload under s3://" in failure["msg"]
        assert_back_on_source(metrics, results)
        assert objects_of(experiment_id) == ([], [])
    finally:
        remove_experiment(experiment_id)


def test_a_missing_bucket_is_refused_by_both_hosts_before_the_workload(
    lab: Path, tmp_path: Path
) -> None:
    run, metrics = migrate(tmp_path, {**SMALL, "transfer": "s3", "s3_bucket": "no-such-bucket"})
    assert run.rc != 0
    assert_refused_before_the_workload(metrics)
    for host in ("source", "destination"):
        assert (
            f"{host} cannot use s3://no-such-bucket/criu-migration/{metrics['experiment']['id']}"
            f"/source/ (transfer=s3): checking s3://no-such-bucket at "
            f"{lab_vars()['lab_aws_endpoint_url']}: the bucket does not exist"
        ) in metrics["failure"]["msg"]


# -- ebs -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("variables", "path"),
    [({**SMALL, "transfer_verify": True}, "fused"), ({**SMALL_REDIS, **STEPWISE}, "stepwise")],
    ids=["memory-fused-verify", "redis-stepwise"],
)
def test_ebs_migration(lab: Path, tmp_path: Path, variables: dict[str, Any], path: str) -> None:
    run, metrics = migrate(tmp_path, {**variables, "transfer": "ebs"})
    experiment_id = metrics.get("experiment", {}).get("id")
    try:
        assert run.rc == 0, run.stdout[-5000:]
        assert metrics["critical_path"]["path"] == path
        assert_continuous(metrics["verification"])
        transfer = metrics["phases"]["transfer"]
        assert transfer["method"] == "ebs"
        volume = lab_volume()
        images = f"/mnt/criu-ebs/criu-migration/images/{experiment_id}/source/1"
        # the dump wrote onto the volume; only the working directory was staged on it
        assert images in transfer["dest_paths"]
        assert transfer["shared_bytes"] >= metrics["phases"]["final_dump"]["bytes"] > 0
        assert transfer["staged"] == [f"/var/lib/criu-migration/work/{experiment_id}"]
        ebs = transfer["ebs"]
        assert ebs["volume_id"] == volume["VolumeId"]
        assert ebs["source"]["mounted"] is True and ebs["source"]["umount_s"] > 0
        assert ebs["destination"]["device"].startswith("/dev/loop")
        assert ebs["destination"]["mount_s"] > 0
        # detach from the source, then attach to the destination, each call and each wait
        # timed - by the source inside the fused call, by the control node stepwise
        hosts = yaml.safe_load(LAB_INVENTORY.read_text())["all"]["children"]["lab"]["children"]
        ids = {
            side: hosts[side]["hosts"][side]["instance_id"] for side in ("source", "destination")
        }
        handover = transfer["handover"]
        mover = "source (the source)" if path == "fused" else "the control node"
        assert mover in handover["what"]
        assert [(s["step"], s["instance_id"]) for s in handover["steps"]] == [
            ("detach", ids["source"]),
            ("attach", ids["destination"]),
        ]
        for step in handover["steps"]:
            assert step["api_s"] > 0 and step["wait_s"] >= 0
        assert transfer["duration_s"] == pytest.approx(
            transfer["send"]["duration_s"]
            + handover["duration_s"]
            + transfer["receive"]["duration_s"]
            + (transfer["verify"]["destination_s"] if isinstance(transfer["verify"], dict) else 0),
            abs=1e-5,
        )
        if variables.get("transfer_verify"):
            assert transfer["verify"]["ok"] is True
        # around the transfer: attached and mounted on the source before the dump, unmounted
        # where it was and detached after the run
        storage = {r["step"]: r for r in metrics["transfer_storage"]}
        prepare = storage["attach to and mount on the source before the dump"]
        assert prepare["host"] == "source" and prepare["mount_s"] > 0
        assert prepare["attachment"]["steps"][-1]["instance_id"] == ids["source"]
        detached = storage["detach after the run"]["attachment"]["steps"][0]
        assert (detached["step"], detached["instance_id"]) == ("detach", ids["destination"])
        assert volume["State"] == "available"  # a known state: detached
        # the restore's own figures came from the volume on the destination
        assert (run.only_results_dir() / "dest" / "1" / "stats-restore").exists()
    finally:
        if experiment_id and run.rc != 0:
            remove_experiment(experiment_id)
            remove_from_volume(experiment_id)


def test_an_attach_without_a_device_is_rolled_back(lab: Path, tmp_path: Path) -> None:
    """Stepwise, whose dump ends the source's copy: the rollback restores it from the images
    on the volume, which comes back to the source first (on the fused path the dump leaves
    the copy stopped and the rollback resumes it: test_transfer.py)."""
    run, metrics = migrate(
        tmp_path,
        {
            **SMALL,
            **STEPWISE,
            "transfer": "ebs",
            "inject_fault": "ebs_attach_fail",
            "ebs_timeout_s": 3,
        },
    )
    experiment_id = metrics["experiment"]["id"]
    try:
        results, metrics = failed_run(run)
        failure = metrics["failure"]
        assert failure["phase"] == "transfer"
        assert "no block device of EBS volume vol-" in failure["msg"]
        assert "appeared on destination within 3 s of its attach" in failure["msg"]
        assert_back_on_source(metrics, results)
        steps = {r["step"]: r for r in metrics["transfer_storage"]}
        back = steps["rollback - back to and mounted on the source"]
        assert [s["step"] for s in back["attachment"]["steps"]] == ["detach", "attach"]
        assert back["host"] == "source" and back["device"].startswith("/dev/loop")
        assert lab_volume()["State"] == "available"  # detached after the run, images kept
    finally:
        remove_experiment(experiment_id)
        remove_from_volume(experiment_id)


def test_ebs_across_zones_is_refused(lab: Path, tmp_path: Path) -> None:
    inventory = yaml.safe_load(LAB_INVENTORY.read_text())
    hosts = inventory["all"]["children"]["lab"]["children"]
    hosts["destination"]["hosts"]["destination"]["availability_zone"] = "us-east-1b"
    cross_az = tmp_path / "cross_az.yml"
    cross_az.write_text(yaml.safe_dump(inventory))
    run = run_playbook(
        tmp_path, "migrate.yml", {**SMALL, "transfer": "ebs"}, inventory=str(cross_az)
    )
    assert_refused_before_any_host(
        run,
        [
            "transfer=ebs cannot move a volume from source (us-east-1a) to destination "
            "(us-east-1b): an EBS volume lives in one availability zone",
            "across zones use transfer=rsync, s3 or efs",
        ],
    )


def test_the_lab_serves_s3_and_ec2_on_its_bridge(lab: Path) -> None:
    top = lab_vars()
    assert top["lab_aws_endpoint_url"] == f"http://{LAB.address('bridge')}:5000"
    pid = int((LAB.dir / "aws" / "moto.pid").read_text())
    assert "moto_server" in Path(f"/proc/{pid}/cmdline").read_bytes().decode()
    assert Path(top["lab_aws_credentials_file"]).stat().st_mode & 0o777 == 0o600
    buckets = [b["Name"] for b in lab_client("s3").list_buckets()["Buckets"]]
    assert top["lab_s3_bucket"] in buckets
    assert lab_volume()["AvailabilityZone"] == "us-east-1a"
