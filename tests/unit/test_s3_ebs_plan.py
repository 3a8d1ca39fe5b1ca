"""transfer=s3 and transfer=ebs without the lab.

- tools/s3_transfer.py: part planning against S3's limits, the key layout, and every command
  against moto in-process (`mock_aws`): the parts it counts are the object's real part count,
  a download restores contents, modes, mtimes and symlinks, delete aborts unfinished
  multipart uploads; and for real, as a process of the node's /usr/bin/python3 against a
  moto server thread, an upload cut midway whose leftovers the backend removes.
- The S3 backend's argv and stdin: the credentials travel on stdin only.
- The EBS device lookup by volume id (udev's link, the NVMe serial in sysfs, a virtio serial,
  the lab's loop device), the EBS backend's send and receive around a mount, and the EC2
  call sequence of module_utils/ebs_attach.py against moto in-process.
- The preflight's rules for s3 and ebs, the pair's key prefix and paths, the test session's
  guard against the cloud metadata address.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
import transfer_backends
from ebs_attach import AttachError, Ec2Volumes, LabVolumes, free_device_name
from experiment_plan import plan_experiment, plan_settings
from migration_layout import node_paths, s3_key_prefix, transfer_link
from moto import mock_aws
from transfer_backends import (
    EbsBackend,
    S3Backend,
    TransferError,
    TransferRequest,
    TransferResult,
    aws_environment,
    cloud_transfer_errors,
    combine_sides,
    device_number,
    find_volume_device,
    masked,
    missing_paths,
    mounted_source,
    request_from_options,
    s3_tool_argv,
    transfer_receive,
    transfer_send,
    volume_serial,
    wait_for_volume_device,
)
from workload_registry import load_registry

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tools"))
import s3_transfer  # noqa: E402

MIB = 1024 * 1024
BUCKET = "criu-test"
REGION = "us-east-1"
PREFIX = "criu-migration/e1-abc/source"


# -- the S3 tool's pure parts -----------------------------------------------------------------


def test_part_size_keeps_within_s3s_limits() -> None:
    assert s3_transfer.part_size_for(100 * MIB, 8 * MIB) == 8 * MIB
    # below S3's 5 MiB minimum part: raised to it
    assert s3_transfer.part_size_for(100 * MIB, 1 * MIB) == 5 * MIB
    # 10,000 parts at most: 100 GiB in 8 MiB parts would be 12,800, so the part doubles
    assert s3_transfer.part_size_for(100 * 1024 * MIB, 8 * MIB) == 16 * MIB
    # and never beyond 5 GiB
    assert s3_transfer.part_size_for(10**15, 8 * MIB) == 5 * 1024 * MIB


def test_planned_parts() -> None:
    part = 8 * MIB
    assert s3_transfer.planned_parts(0, part) == 1
    assert s3_transfer.planned_parts(part - 1, part) == 1  # one PutObject below the threshold
    assert s3_transfer.planned_parts(part, part) == 1  # multipart, one part
    assert s3_transfer.planned_parts(part + 1, part) == 2
    assert s3_transfer.planned_parts(100 * 1024 * MIB, part) == 6400  # 16 MiB parts


def test_key_layout_keeps_absolute_paths() -> None:
    path = "/var/lib/criu-migration/images/e1-abc/1/pages-1.img"
    key = s3_transfer.object_key(PREFIX + "/", path)
    assert (
        key
        == "criu-migration/e1-abc/source/files/var/lib/criu-migration/images/e1-abc/1/pages-1.img"
    )
    assert s3_transfer.path_of_key(PREFIX, key) == path
    assert s3_transfer.manifest_key(PREFIX, "predump-2") == f"{PREFIX}/manifests/predump-2.json"
    with pytest.raises(ValueError, match="not an absolute path"):
        s3_transfer.object_key(PREFIX, "relative/x")
    with pytest.raises(ValueError, match="is not under"):
        s3_transfer.path_of_key(PREFIX, "elsewhere/files/x")


def test_the_pairs_prefix_and_the_transfer_options() -> None:
    settings = {
        "transfer": "s3",
        "s3_bucket": BUCKET,
        "s3_prefix": "criu-migration/",
        "s3_endpoint_url": "",
        "s3_part_size_mb": 16,
        "s3_max_concurrency": 4,
    }
    assert s3_key_prefix(settings, "e1-abc", "source") == PREFIX
    link = transfer_link(
        {"source": "source", "destination_link_address": "10.0.0.2"}, settings, "e1-abc"
    )
    assert (link["s3_bucket"], link["s3_prefix"]) == (BUCKET, PREFIX)
    assert (link["s3_part_size_mb"], link["s3_max_concurrency"]) == (16, 4)
    assert link["s3_endpoint_url"] is None and link["ebs_volume_id"] is None
    # numbers are never null: an unknown one is left to the argument spec's default
    assert "ebs_timeout_s" not in transfer_link({}, {"transfer": "rsync"})


def test_ebs_images_go_on_the_volume() -> None:
    settings = {
        "transfer": "ebs",
        "checkpoint_strategy": "full",
        "ebs_mount_path": "/mnt/criu-ebs/",
    }
    paths = node_paths("/var/lib/criu-migration", "e1", "src", settings)
    assert paths["images_base"] == "/mnt/criu-ebs/criu-migration/images/e1/src"
    assert paths["final_images_dir"] == "/mnt/criu-ebs/criu-migration/images/e1/src/1"
    assert paths["checkpoint_dir"] == "/var/lib/criu-migration/images/e1"  # logs stay local
    link = transfer_link(
        {**paths, "ebs_volume_id": "vol-0123456789abcdef0"}, {**settings, "ebs_timeout_s": 9.0}
    )
    assert link["ebs_dir"] == paths["images_base"] and link["ebs_timeout_s"] == 9.0
    assert link["ebs_volume_id"] == "vol-0123456789abcdef0"


def make_tree(root: Path) -> Path:
    """A small images folder and working directory, with a symlink and odd modes."""
    images = root / "images" / "1"
    work = root / "work"
    (images).mkdir(parents=True)
    (work / "sub").mkdir(parents=True)
    (images / "pages-1.img").write_bytes(os.urandom(11 * MIB + 123))
    (images / "core-1.img").write_bytes(b"core" * 100)
    (work / "progress.log").write_text('{"seq": 1}\n')
    (work / "sub" / "private").write_text("x")
    os.chmod(work / "sub" / "private", 0o600)
    os.symlink("progress.log", work / "latest")
    os.utime(work / "progress.log", (1_700_000_000, 1_700_000_000))
    return root


def snapshot(root: Path) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for path in sorted(root.rglob("*")):
        st = os.lstat(path)
        rel = str(path.relative_to(root))
        if path.is_symlink():
            found[rel] = ("link", os.readlink(path))
        elif path.is_file():
            found[rel] = ("file", path.read_bytes(), st.st_mode & 0o7777, int(st.st_mtime))
        else:
            found[rel] = ("dir", st.st_mode & 0o7777)
    return found


def test_scan_lists_folders_files_and_links(tmp_path: Path) -> None:
    make_tree(tmp_path)
    entries = s3_transfer.scan([str(tmp_path / "images" / "1"), str(tmp_path / "work")])
    assert {Path(f["path"]).name for f in entries["files"]} == {
        "pages-1.img", "core-1.img", "progress.log", "private",
    }  # fmt: skip
    assert entries["links"] == [
        {"path": str(tmp_path / "work" / "latest"), "target": "progress.log"}
    ]
    assert [Path(d["path"]).name for d in entries["dirs"]] == ["1", "work", "sub"]
    with pytest.raises(s3_transfer.ToolError, match="does not exist"):
        s3_transfer.scan([str(tmp_path / "missing")])


def test_masked_hides_credential_values() -> None:
    env = {"AWS_SECRET_ACCESS_KEY": "s3cr3t-value", "AWS_DEFAULT_REGION": "us-east-1"}
    assert masked("denied for s3cr3t-value in us-east-1", env) == "denied for ******** in us-east-1"
    assert s3_transfer.masked("key s3cr3t-value", env) == "key ********"


# -- the S3 tool against moto in-process -------------------------------------------------------


@pytest.fixture
def s3() -> Iterator[Any]:
    with mock_aws():
        client = boto3.client("s3", region_name=REGION)
        client.create_bucket(Bucket=BUCKET)
        yield client


def tool(
    command: str, *args: str, capsys: Any, stdin: str | None = None, monkeypatch: Any = None
) -> tuple[int, dict[str, Any]]:
    if stdin is not None:
        monkeypatch.setattr(sys, "stdin", __import__("io").StringIO(stdin))
    rc = s3_transfer.main(
        [command, "--bucket", BUCKET, "--prefix", PREFIX, "--region", REGION, *args]
    )
    out = capsys.readouterr().out.strip().splitlines()
    return rc, json.loads(out[-1])


def test_upload_and_download_restore_every_file_at_its_path(
    s3: Any, tmp_path: Path, capsys: Any
) -> None:
    make_tree(tmp_path / "src")
    paths = [str(tmp_path / "src" / "images" / "1"), str(tmp_path / "src" / "work")]
    before = snapshot(tmp_path / "src")
    rc, reply = tool(
        "upload", "--part-size-mb", "5", "--max-concurrency", "4", *paths, capsys=capsys
    )
    assert rc == 0, reply
    upload = reply["upload"]
    assert upload["objects"] == 4 and upload["links"] == 1
    assert upload["bytes"] == sum(
        os.path.getsize(p)
        for p in Path(tmp_path / "src").rglob("*")
        if p.is_file() and not p.is_symlink()
    )
    # 11 MiB in 5 MiB parts: 3 UploadPart + 3 single PutObject; what was sent is the plan
    assert upload["parts"] == upload["planned_parts"] == 6
    assert upload["multipart_uploads"] == 1
    big = s3_transfer.object_key(PREFIX, paths[0] + "/pages-1.img")
    assert s3.head_object(Bucket=BUCKET, Key=big, PartNumber=1)["PartsCount"] == 3
    keys = sorted(o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET)["Contents"])
    assert keys[-1] == f"{PREFIX}/manifests/final.json"
    assert all(k.startswith(f"{PREFIX}/files{tmp_path}/src/") for k in keys[:-1])

    # the destination: the same paths, gone here first
    shutil.rmtree(tmp_path / "src")
    rc, reply = tool("download", *paths, capsys=capsys)
    assert rc == 0, reply
    assert reply["download"]["objects"] == 4 and reply["download"]["bytes"] == upload["bytes"]
    assert snapshot(tmp_path / "src") == before


def test_a_download_refuses_another_stages_paths(s3: Any, tmp_path: Path, capsys: Any) -> None:
    make_tree(tmp_path)
    rc, _ = tool("upload", "--stage", "predump-1", str(tmp_path / "images" / "1"), capsys=capsys)
    assert rc == 0
    rc, reply = tool("download", "--stage", "predump-1", str(tmp_path / "work"), capsys=capsys)
    assert rc == 1 and "the predump-1 manifest holds" in reply["error"]
    rc, reply = tool("download", "--stage", "final", str(tmp_path / "work"), capsys=capsys)
    assert rc == 1 and "reading the final manifest" in reply["error"]


def test_delete_aborts_unfinished_uploads_and_deletes_the_objects(s3: Any, capsys: Any) -> None:
    s3.put_object(Bucket=BUCKET, Key=f"{PREFIX}/files/a", Body=b"a")
    s3.put_object(Bucket=BUCKET, Key="criu-migration/other-run/source/files/a", Body=b"a")
    upload_id = s3.create_multipart_upload(Bucket=BUCKET, Key=f"{PREFIX}/files/big")["UploadId"]
    s3.upload_part(
        Bucket=BUCKET,
        Key=f"{PREFIX}/files/big",
        UploadId=upload_id,
        PartNumber=1,
        Body=b"x" * (5 * MIB),
    )
    rc, reply = tool("delete", capsys=capsys)
    assert rc == 0
    assert reply["delete"]["objects_deleted"] == 1 and reply["delete"]["uploads_aborted"] == 1
    assert not s3.list_multipart_uploads(Bucket=BUCKET).get("Uploads")
    left = [o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET)["Contents"]]
    assert left == ["criu-migration/other-run/source/files/a"]  # another run's objects stay


def test_check_writes_reads_and_deletes_a_test_object(s3: Any, capsys: Any) -> None:
    rc, reply = tool("check", "--host", "source", capsys=capsys)
    assert rc == 0 and reply["check"]["key"].startswith(f"{PREFIX}/checks/source-")
    assert "Contents" not in s3.list_objects_v2(Bucket=BUCKET)


def test_check_names_a_missing_bucket(s3: Any, capsys: Any) -> None:
    rc = s3_transfer.main(
        ["check", "--bucket", "no-such-bucket", "--prefix", PREFIX, "--region", REGION]
    )
    reply = json.loads(capsys.readouterr().out)
    assert rc == 1 and reply["error"] == "checking s3://no-such-bucket: the bucket does not exist"


def test_check_without_credentials_says_so_and_asks_no_metadata_service(
    tmp_path: Path, capsys: Any, monkeypatch: pytest.MonkeyPatch, metadata_guard: Any
) -> None:
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    assert os.environ["AWS_EC2_METADATA_DISABLED"] == "true"  # tests/conftest.py
    rc = s3_transfer.main(
        ["check", "--bucket", BUCKET, "--prefix", PREFIX, "--endpoint-url", "http://127.0.0.1:9"]
    )
    reply = json.loads(capsys.readouterr().out)
    assert rc == 1 and "no AWS credentials on this host" in reply["error"]
    assert metadata_guard.attempts == []


def test_env_stdin_sets_the_credentials_and_every_message_masks_them(
    capsys: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = "lab-secret-" + "x" * 20
    stdin = json.dumps(
        {"env": {"AWS_ACCESS_KEY_ID": "LABKEY0123", "AWS_SECRET_ACCESS_KEY": secret}}
    )
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY", raising=False)
    monkeypatch.setattr(
        s3_transfer,
        "check",
        lambda args: (_ for _ in ()).throw(
            RuntimeError(f"boom {os.environ['AWS_SECRET_ACCESS_KEY']}")
        ),
    )
    monkeypatch.setitem(s3_transfer.COMMANDS, "check", s3_transfer.check)
    rc, reply = tool(
        "check", "--env-stdin", capsys=capsys, stdin=stdin + "\n", monkeypatch=monkeypatch
    )
    assert rc == 1 and reply["error"] == "RuntimeError: boom ********"
    assert os.environ["AWS_SECRET_ACCESS_KEY"] == secret


# -- the S3 backend --------------------------------------------------------------------------


def s3_request(**overrides: Any) -> TransferRequest:
    options = {
        "method": "s3",
        "destination": "10.0.0.2",
        "s3_bucket": BUCKET,
        "s3_prefix": PREFIX,
        "s3_endpoint_url": "http://10.77.0.1:5000",
    }
    aws = {
        "region": REGION,
        "environment": {"AWS_EC2_METADATA_DISABLED": "true"},
        "credentials": {
            "AWS_ACCESS_KEY_ID": "LABKEY0123",
            "AWS_SECRET_ACCESS_KEY": "lab-secret-value",
        },
        "tools_dir": "/opt/criu-migration/tools",
    }
    return request_from_options(options, overrides.pop("paths", ["/i/1", "/w"]), aws, **overrides)


def test_aws_environment_of_a_module() -> None:
    assert aws_environment(None) == {}
    assert aws_environment({"region": "", "environment": {"X": ""}, "credentials": {}}) == {}
    env = s3_request().env
    assert env == {
        "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_ACCESS_KEY_ID": "LABKEY0123",
        "AWS_SECRET_ACCESS_KEY": "lab-secret-value",
        "AWS_DEFAULT_REGION": REGION,
    }
    assert "lab-secret-value" not in repr(s3_request())  # the request never prints it


def test_the_s3_tool_argv_carries_no_credential() -> None:
    request = s3_request(stage="predump-3")
    argv = s3_tool_argv(request, "download", *request.paths)
    assert argv[:4] == [
        "/usr/bin/python3",
        "/opt/criu-migration/tools/s3_transfer.py",
        "download",
        "--env-stdin",
    ]
    assert argv[argv.index("--stage") + 1] == "predump-3"
    assert argv[argv.index("--endpoint-url") + 1] == "http://10.77.0.1:5000"
    assert argv[argv.index("--region") + 1] == REGION
    assert argv[-2:] == ["/i/1", "/w"]
    assert not any("secret" in part or "LABKEY" in part for part in argv)
    with pytest.raises(ValueError, match="needs the bucket"):
        s3_tool_argv(request_from_options({"method": "s3"}, ["/x"], {"tools_dir": "/t"}), "upload")


class ToolRunner:
    """Answers the S3 tool's calls like the tool would, recording argv and stdin."""

    def __init__(self, replies: list[tuple[int, dict[str, Any]]]) -> None:
        self.replies = list(replies)
        self.calls: list[tuple[list[str], bytes | None]] = []

    def __call__(self, argv: list[str], stdin: bytes | None = None) -> tuple[int, str, str]:
        self.calls.append((argv, stdin))
        rc, reply = self.replies.pop(0)
        return rc, json.dumps(reply) + "\n", ""


def test_s3_send_and_receive_make_one_record(tmp_path: Path) -> None:
    make_tree(tmp_path)
    paths = [str(tmp_path / "images" / "1"), str(tmp_path / "work")]
    upload = {"duration_s": 0.5, "bytes": 1000, "objects": 4, "mb_s": 0.002, "parts": 6}
    download = {"duration_s": 0.25, "bytes": 1000, "objects": 4, "mb_s": 0.004}
    run = ToolRunner([(0, {"ok": True, "upload": upload}), (0, {"ok": True, "download": download})])
    request = s3_request(paths=paths)
    outcome = transfer_send(request, run)
    assert outcome.receive_needed
    sent = outcome.record("final")
    record, problems = transfer_receive(request, run, sent, None)
    assert problems == []
    assert record["method"] == "s3" and record["bytes"] == 1000 and record["files"] == 4
    assert record["s3"]["upload"] == upload and record["s3"]["download"] == download
    assert record["s3"]["bucket"] == BUCKET and record["s3"]["prefix"] == PREFIX + "/"
    assert record["duration_s"] == pytest.approx(
        record["send"]["duration_s"] + record["receive"]["duration_s"], abs=1e-5
    )
    assert record["dest_paths"] == paths
    for argv, stdin in run.calls:  # the credentials only ever on stdin
        assert b"lab-secret-value" in (stdin or b"")
        assert "lab-secret-value" not in " ".join(argv)


def test_a_failed_upload_removes_what_it_left(tmp_path: Path) -> None:
    make_tree(tmp_path)
    run = ToolRunner([
        (1, {"ok": False, "error": "uploading to s3://x: access denied (lab-secret-value)"}),
        (0, {"ok": True, "delete": {"objects_deleted": 3, "uploads_aborted": 1}}),
    ])  # fmt: skip
    with pytest.raises(TransferError) as failed:
        S3Backend().send(s3_request(paths=[str(tmp_path / "work")]), run)
    message = str(failed.value)
    assert "access denied (********)" in message and "lab-secret-value" not in message
    assert "1 unfinished multipart uploads aborted, 3 objects deleted" in message
    assert run.calls[1][0][2] == "delete"


@pytest.fixture
def moto_server() -> Iterator[str]:
    """A real S3 endpoint on loopback (moto's server in a thread of this process)."""
    from moto.server import ThreadedMotoServer

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    url = f"http://127.0.0.1:{port}"
    boto3.client(
        "s3", endpoint_url=url, region_name=REGION, aws_access_key_id="a", aws_secret_access_key="b"
    ).create_bucket(Bucket=BUCKET)
    yield url
    server.stop()


def subprocess_runner(argv: list[str], stdin: bytes | None = None) -> tuple[int, str, str]:
    proc = subprocess.run(argv, input=stdin, capture_output=True, check=False)
    return proc.returncode, proc.stdout.decode(), proc.stderr.decode()


@pytest.mark.skipif(not Path("/usr/bin/python3").exists(), reason="no /usr/bin/python3")
def test_an_upload_cut_midway_leaves_nothing_in_the_bucket(
    moto_server: str, tmp_path: Path
) -> None:
    """The node's interpreter runs the tool for real; the uploader is killed with parts in
    flight (inject_fault=transfer_interrupt) and the backend removes the partial upload."""
    probe = subprocess.run(
        ["/usr/bin/python3", "-c", "import boto3"], capture_output=True, check=False
    )
    if probe.returncode != 0:
        pytest.fail("/usr/bin/python3 lacks python3-boto3: make setup installs it")
    tools = tmp_path / "tools"
    tools.mkdir()
    shutil.copy(REPO / "tools" / "s3_transfer.py", tools)
    images = tmp_path / "images" / "1"
    images.mkdir(parents=True)
    (images / "pages-1.img").write_bytes(os.urandom(16 * MIB))
    (images / "core-1.img").write_bytes(b"c" * 1000)
    request = request_from_options(
        {"method": "s3", "s3_bucket": BUCKET, "s3_prefix": PREFIX, "s3_endpoint_url": moto_server,
         "s3_part_size_mb": 5, "s3_max_concurrency": 2},
        [str(images)],
        {"region": REGION, "credentials": {"AWS_ACCESS_KEY_ID": "a", "AWS_SECRET_ACCESS_KEY": "b"},
         "environment": {"AWS_EC2_METADATA_DISABLED": "true"}, "tools_dir": str(tools)},
        fault="interrupt",
    )  # fmt: skip
    with pytest.raises(TransferError) as failed:
        S3Backend().send(request, subprocess_runner)
    message = str(failed.value)
    assert f"(rc=-{signal.SIGKILL})" in message
    assert f"killed after {(16 * MIB + 1000) // 2} of {16 * MIB + 1000} bytes" in message
    assert "unfinished multipart uploads aborted" in message
    s3 = boto3.client(
        "s3",
        endpoint_url=moto_server,
        region_name=REGION,
        aws_access_key_id="a",
        aws_secret_access_key="b",
    )
    assert "Contents" not in s3.list_objects_v2(Bucket=BUCKET, Prefix=PREFIX)
    assert not s3.list_multipart_uploads(Bucket=BUCKET).get("Uploads")

    # and without the fault the same files go up and come back
    request.fault = "none"
    result = S3Backend().send(request, subprocess_runner)
    assert result.bytes == 16 * MIB + 1000 and result.extra["s3"]["upload"]["parts"] == 5
    shutil.rmtree(images)
    received = S3Backend().receive(request, subprocess_runner)
    assert received is not None and received.bytes == result.bytes
    assert (images / "pages-1.img").stat().st_size == 16 * MIB


# -- ebs: the device of a volume, found by its id ----------------------------------------------

VOLUME = "vol-0123456789abcdef0"


def fake_host(root: Path) -> tuple[str, str]:
    dev, sys_root = root / "dev", root / "sys"
    (dev / "disk" / "by-id").mkdir(parents=True)
    for name in ("nvme0n1", "nvme1n1", "vdb", "loop3"):
        (sys_root / "block" / name / "device").mkdir(parents=True)
        (dev / name).touch()
    (sys_root / "block" / "nvme0n1" / "device" / "serial").write_text("vol0aaaaaaaaaaaaaaaa  \n")
    return str(dev), str(sys_root)


def test_the_volume_serial_is_its_id_without_the_dash() -> None:
    assert volume_serial(VOLUME) == "vol0123456789abcdef0"
    with pytest.raises(ValueError, match="is not an EBS volume id"):
        volume_serial("/dev/xvdf")


def test_device_by_udevs_nvme_link(tmp_path: Path) -> None:
    dev, sys_root = fake_host(tmp_path)
    os.symlink(
        "../../nvme1n1", f"{dev}/disk/by-id/nvme-Amazon_Elastic_Block_Store_vol0123456789abcdef0"
    )
    assert find_volume_device(VOLUME, subprocess_runner, dev, sys_root) == f"{dev}/nvme1n1"


def test_device_by_the_nvme_serial_in_sysfs(tmp_path: Path) -> None:
    dev, sys_root = fake_host(tmp_path)
    # NVMe pads its serial with spaces; without udev there is no by-id link
    Path(sys_root, "block", "nvme1n1", "device", "serial").write_text("vol0123456789abcdef0    \n")
    assert find_volume_device(VOLUME, subprocess_runner, dev, sys_root) == f"{dev}/nvme1n1"


def test_device_by_a_virtio_serial(tmp_path: Path) -> None:
    dev, sys_root = fake_host(tmp_path)
    Path(sys_root, "block", "vdb", "serial").write_text(VOLUME)
    assert find_volume_device(VOLUME, subprocess_runner, dev, sys_root) == f"{dev}/vdb"


def test_device_in_the_lab_by_its_loop_backing_file(tmp_path: Path) -> None:
    dev, sys_root = fake_host(tmp_path)
    Path(sys_root, "block", "loop3", "loop").mkdir()
    Path(sys_root, "block", "loop3", "loop", "backing_file").write_text(
        f"/work/.lab/ebs/{VOLUME}.img\n"
    )
    assert find_volume_device(VOLUME, subprocess_runner, dev, sys_root) == f"{dev}/loop3"


def test_no_device_is_guessed(tmp_path: Path) -> None:
    dev, sys_root = fake_host(tmp_path)
    Path(dev, "xvdf").touch()  # what AttachVolume's device name would suggest
    assert find_volume_device(VOLUME, subprocess_runner, dev, sys_root) is None
    with pytest.raises(TransferError, match=f"no block device of EBS volume {VOLUME} appeared"):
        wait_for_volume_device(
            VOLUME, 0.05, lambda v: find_volume_device(v, subprocess_runner, dev, sys_root), 0.01
        )


def test_waiting_for_the_device_times_the_wait(tmp_path: Path) -> None:
    shows_up_at = time.monotonic() + 0.1
    device = str(tmp_path / "nvme1n1")
    Path(device).touch()
    found, waited = wait_for_volume_device(
        VOLUME, 5, lambda v: device if time.monotonic() >= shows_up_at else None, 0.01
    )
    assert found == device and 0.08 <= waited < 2


def test_mounted_source_reads_mountinfo(tmp_path: Path) -> None:
    info = tmp_path / "mountinfo"
    info.write_text(
        "22 1 252:0 / / rw - ext4 /dev/vda rw\n"
        "95 22 7:3 / /mnt/criu-ebs rw,relatime - ext4 /dev/loop3 rw\n"
    )
    assert mounted_source("/mnt/criu-ebs/", subprocess_runner, str(info)) == "7:3"
    assert mounted_source("/mnt/other", subprocess_runner, str(info)) is None


def test_device_number_and_missing_paths_ask_the_host(tmp_path: Path) -> None:
    assert device_number("/dev/null", subprocess_runner) == "1:3"
    with pytest.raises(TransferError, match="cannot stat"):
        device_number(str(tmp_path / "none"), subprocess_runner)
    (tmp_path / "here").touch()
    paths = [str(tmp_path / "here"), str(tmp_path / "gone"), str(tmp_path / "a b")]
    assert missing_paths(paths, subprocess_runner) == paths[1:]
    assert missing_paths([], subprocess_runner) == []


# -- ebs: the backend around the mount ------------------------------------------------------


def test_ebs_send_stages_then_unmounts_and_receive_mounts_then_copies(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    volume = tmp_path / "mnt" / "criu-ebs"
    ebs_dir = volume / "criu-migration" / "images" / "e1" / "source"
    images = ebs_dir / "1"
    images.mkdir(parents=True)
    (images / "pages-1.img").write_bytes(b"p" * 4096)
    work = tmp_path / "work" / "e1"
    work.mkdir(parents=True)
    (work / "progress.log").write_text("line\n")
    events: list[str] = []
    monkeypatch.setattr(transfer_backends, "mounted_source", lambda path, run: "7:3")
    monkeypatch.setattr(
        transfer_backends,
        "unmount_volume",
        lambda path, run: (
            events.append(f"umount {path}") or {"mounted": True, "sync_s": 0.01, "umount_s": 0.02}
        ),
    )
    request = request_from_options(
        {
            "method": "ebs",
            "ebs_volume_id": VOLUME,
            "ebs_mount_path": str(volume),
            "ebs_dir": str(ebs_dir),
        },
        [str(images), str(work)],
        verify=True,
    )

    def run(argv: list[str], stdin: bytes | None = None) -> tuple[int, str, str]:
        proc = subprocess.run(argv, capture_output=True, text=True, check=False)
        return proc.returncode, proc.stdout, proc.stderr

    outcome = transfer_send(request, run)
    sent = outcome.record("final")
    assert events == [f"umount {volume}"]  # after the checksums read the volume
    assert sent["staged"] == [str(work)] and sent["shared_files"] == 1
    assert sent["ebs"]["source"]["umount_s"] == 0.02
    assert sent["duration_s"] == pytest.approx(sent["ebs"]["source"]["stage_s"] + 0.03, abs=1e-5)
    assert (ebs_dir / "files" / str(work).lstrip("/") / "progress.log").read_text() == "line\n"

    # the destination: the working directory is not there yet
    shutil.rmtree(work)
    monkeypatch.setattr(
        transfer_backends,
        "mount_volume",
        lambda *a, **k: events.append("mount") or {"device": "/dev/loop3", "mount_s": 0.01},
    )
    handover = {"duration_s": 0.5, "steps": [{"step": "detach"}, {"step": "attach"}]}
    record, problems = transfer_receive(request, run, sent, outcome.manifest, handover=handover)
    assert problems == [] and record["verify"]["ok"] is True
    assert events[-1] == "mount" and (work / "progress.log").read_text() == "line\n"
    assert record["handover"] == handover
    assert record["ebs"]["destination"]["device"] == "/dev/loop3"
    assert record["ebs"]["source"]["umount_s"] == 0.02  # both sides in one record
    assert record["duration_s"] == pytest.approx(
        record["send"]["duration_s"]
        + 0.5
        + record["receive"]["duration_s"]
        + record["verify"]["destination_s"],
        abs=1e-5,
    )


def test_ebs_send_refuses_an_unmounted_volume(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(transfer_backends, "mounted_source", lambda path, run: None)
    request = request_from_options(
        {
            "method": "ebs",
            "ebs_volume_id": VOLUME,
            "ebs_mount_path": "/mnt/v",
            "ebs_dir": "/mnt/v/e",
        },
        ["/mnt/v/e/1", "/w"],
    )
    with pytest.raises(TransferError, match="nothing is mounted at /mnt/v"):
        EbsBackend().send(request, lambda argv, stdin=None: (0, "", ""))


def test_combine_sides_adds_the_handover() -> None:
    sent = TransferResult("ebs", 1.0, 10, 1).as_dict()
    record = combine_sides(
        sent, TransferResult("ebs", 2.0, 10, 1).as_dict(), "off", {"duration_s": 0.5}
    )
    assert record["duration_s"] == 3.5 and record["handover"] == {"duration_s": 0.5}


# -- ebs: the EC2 calls, against moto in-process -----------------------------------------------


@pytest.fixture
def ec2() -> Iterator[Any]:
    with mock_aws():
        yield boto3.client("ec2", region_name=REGION)


def instance(ec2: Any, zone: str = "us-east-1a") -> str:
    return ec2.run_instances(
        ImageId="ami-12c6146b", MinCount=1, MaxCount=1, Placement={"AvailabilityZone": zone}
    )["Instances"][0]["InstanceId"]


def calls_of(ec2: Any) -> list[str]:
    calls: list[str] = []
    ec2.meta.events.register("before-call.ec2.*", lambda model, **kw: calls.append(model.name))
    return calls


def test_the_move_is_detach_wait_attach_wait(ec2: Any) -> None:
    source, destination = instance(ec2), instance(ec2)
    volume = ec2.create_volume(AvailabilityZone="us-east-1a", Size=1)["VolumeId"]
    volumes = Ec2Volumes(ec2, poll_s=0.01)
    calls = calls_of(ec2)
    attach = volumes.attach(volume, source, 5)
    assert calls == ["DescribeVolumes", "DescribeInstances", "AttachVolume", "DescribeVolumes"]
    assert attach["device_name"] == "/dev/sdf" and attach["api_s"] >= 0 and attach["wait_s"] >= 0
    assert volumes.holder(volume) == source
    del calls[:]
    steps = volumes.move(volume, destination, 5)
    assert [s["step"] for s in steps] == ["detach", "attach"]
    assert steps[0]["instance_id"] == source and steps[1]["instance_id"] == destination
    assert calls == [
        "DescribeVolumes",  # who holds it
        "DescribeVolumes", "DetachVolume", "DescribeVolumes",  # detach, wait until available
        "DescribeVolumes", "DescribeInstances", "AttachVolume", "DescribeVolumes",
    ]  # fmt: skip
    assert volumes.holder(volume) == destination
    # already there: nothing to do
    assert volumes.attach(volume, destination, 5)["already"] is True
    assert volumes.detach(volume, 5)["instance_id"] == destination
    assert volumes.detach(volume, 5)["already"] is True


def test_the_attach_refuses_another_zone_and_a_held_volume(ec2: Any) -> None:
    near, far = instance(ec2), instance(ec2, "us-east-1b")
    volume = ec2.create_volume(AvailabilityZone="us-east-1a", Size=1)["VolumeId"]
    volumes = Ec2Volumes(ec2, poll_s=0.01)
    with pytest.raises(AttachError, match=r"is in us-east-1a, instance .* in us-east-1b"):
        volumes.attach(volume, far, 5)
    volumes.attach(volume, near, 5)
    other = instance(ec2)
    with pytest.raises(AttachError, match=f"is attached to {near}; detach it before"):
        volumes.attach(volume, other, 5)


def test_problems_before_the_run(ec2: Any) -> None:
    source, destination, far = instance(ec2), instance(ec2), instance(ec2, "us-east-1b")
    volume = ec2.create_volume(AvailabilityZone="us-east-1a", Size=1)["VolumeId"]
    volumes = Ec2Volumes(ec2, poll_s=0.01)
    assert volumes.problems(volume, {"source": source, "destination": destination}) == []
    volumes.attach(volume, source, 5)
    assert volumes.problems(volume, {"source": source, "destination": destination}) == []
    problems = volumes.problems(volume, {"source": destination, "destination": far})
    assert any("the destination's instance" in p and "us-east-1b" in p for p in problems)
    assert any(f"is attached to {source}, not to the source {destination}" in p for p in problems)
    assert volumes.problems("vol-00000000000000000", {"source": source}) != []


def test_free_device_name_skips_used_ones() -> None:
    used = {"BlockDeviceMappings": [{"DeviceName": "/dev/sdf"}, {"DeviceName": "/dev/xvdg"}]}
    assert free_device_name(used) == "/dev/sdh"


class FakeLosetup:
    def __init__(self) -> None:
        self.devices: dict[str, str] = {}
        self.argvs: list[list[str]] = []

    def __call__(self, argv: list[str]) -> subprocess.CompletedProcess[str]:
        self.argvs.append(argv)
        out = ""
        if "--find" in argv:
            device = f"/dev/loop{len(self.devices) + 7}"
            self.devices[device] = argv[-1]
            out = device + "\n"
        elif "--associated" in argv:
            out = "".join(f"{d}\n" for d, f in self.devices.items() if f == argv[-1])
        elif "--detach" in argv:
            self.devices.pop(argv[-1])
        return subprocess.CompletedProcess(argv, 0, out, "")


def test_the_labs_attach_presents_a_loop_device_and_removes_it(
    ec2: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import ebs_attach

    source, destination = instance(ec2), instance(ec2)
    volume = ec2.create_volume(AvailabilityZone="us-east-1a", Size=1)["VolumeId"]
    ebs_attach.make_backing_file(tmp_path / f"{volume}.img", 1 << 20)
    losetup = FakeLosetup()
    busy: set[str] = set()
    monkeypatch.setattr(ebs_attach, "device_busy", lambda device: device in busy)
    lab = LabVolumes(ec2, str(tmp_path), run=losetup, poll_s=0.01)
    step = lab.attach(volume, source, 5)
    assert step["block_device"] == "/dev/loop7" and losetup.devices == {
        "/dev/loop7": str(tmp_path / f"{volume}.img")
    }
    busy.add("/dev/loop7")  # still mounted on the source
    with pytest.raises(AttachError, match="is still mounted on its host"):
        lab.move(volume, destination, 5)
    assert lab.holder(volume) == source  # nothing changed
    busy.clear()
    steps = lab.move(volume, destination, 5)
    assert (
        steps[0]["block_devices_removed"] == ["/dev/loop7"]
        and steps[1]["block_device"] == "/dev/loop7"
    )
    # inject_fault=ebs_attach_fail: attached in the API, no device on the host
    faulty = LabVolumes(ec2, str(tmp_path), present_devices=False, run=losetup, poll_s=0.01)
    faulty.detach(volume, 5)
    step = faulty.attach(volume, source, 5)
    assert step["block_device"] is None and faulty.holder(volume) == source
    assert losetup.devices == {}


# -- the preflight --------------------------------------------------------------------------


def cloud_errors(
    settings: dict[str, Any], hostvars: dict[str, dict[str, Any]] | None = None
) -> list[str]:
    pairs = [{"source": "src", "destination": "dst"}]
    hostvars = hostvars if hostvars is not None else {
        "src": {"ebs_attacher": "lab", "ebs_volume_id": VOLUME, "instance_id": "i-1", "availability_zone": "z-a"},
        "dst": {"instance_id": "i-2", "availability_zone": "z-a"},
    }  # fmt: skip
    return cloud_transfer_errors(
        settings, pairs, lambda host, name: hostvars.get(host, {}).get(name)
    )


def test_preflight_ebs_runs_on_either_path_within_one_zone() -> None:
    assert cloud_errors({"transfer": "ebs", "critical_path": "stepwise"}) == []
    assert cloud_errors({"transfer": "ebs", "critical_path": "fused"}) == []
    cross = cloud_errors(
        {"transfer": "ebs", "critical_path": "stepwise"},
        {"src": {"ebs_attacher": "aws", "ebs_volume_id": VOLUME, "instance_id": "i-1",
                 "availability_zone": "ap-northeast-2a"},
         "dst": {"instance_id": "i-2", "availability_zone": "ap-northeast-2c"}},
    )  # fmt: skip
    assert cross == [
        "transfer=ebs cannot move a volume from src (ap-northeast-2a) to dst (ap-northeast-2c): "
        "an EBS volume lives in one availability zone and attaches only to instances there; "
        "across zones use transfer=rsync, s3 or efs (inventories/aws_same_az works with ebs)"
    ]


def test_preflight_ebs_needs_the_volume_the_instances_and_an_attacher() -> None:
    errors = cloud_errors(
        {"transfer": "ebs", "critical_path": "stepwise"}, {"src": {"ebs_attacher": "none"}}
    )
    assert any("cannot attach a volume to src (ebs_attacher='none'" in e for e in errors)
    assert any("needs ebs_volume_id (the pair's volume) on src" in e for e in errors)
    assert sum("needs instance_id of" in e for e in errors) == 2


def test_preflight_ebs_refuses_what_it_cannot_do() -> None:
    base = {"transfer": "ebs", "critical_path": "stepwise"}
    assert "page_server=true" in cloud_errors({**base, "page_server": True})[0]
    assert "transfer_compress=zstd" in cloud_errors({**base, "transfer_compress": "zstd"})[0]
    assert "no stream to cut" in cloud_errors({**base, "inject_fault": "transfer_interrupt"})[0]
    assert "the only copy" in cloud_errors({**base, "inject_fault": "corrupt_image"})[0]
    assert cloud_errors({**base, "inject_fault": "ebs_attach_fail"}) == []
    aws = {
        "src": {"ebs_attacher": "aws", "ebs_volume_id": VOLUME, "instance_id": "i-1"},
        "dst": {"instance_id": "i-2"},
    }
    assert (
        "EC2 presents the device itself"
        in cloud_errors({**base, "inject_fault": "ebs_attach_fail"}, aws)[0]
    )
    assert cloud_errors({"transfer": "rsync", "inject_fault": "ebs_attach_fail"}) == [
        "inject_fault=ebs_attach_fail needs transfer=ebs"
    ]


def test_preflight_s3_needs_a_valid_bucket() -> None:
    assert cloud_errors({"transfer": "s3", "s3_bucket": "criu-lab"}) == []
    assert cloud_errors({"transfer": "s3", "s3_bucket": ""})[0].startswith(
        "transfer=s3 needs a bucket"
    )
    assert (
        "is not a valid bucket name"
        in cloud_errors({"transfer": "s3", "s3_bucket": "Bad_Bucket"})[0]
    )
    assert (
        "one step"
        in cloud_errors({"transfer": "s3", "s3_bucket": "b-1", "inject_fault": "corrupt_image"})[0]
    )
    assert (
        cloud_errors({"transfer": "s3", "s3_bucket": "b-1", "inject_fault": "transfer_interrupt"})
        == []
    )


def test_the_bucket_default_comes_from_the_environment_through_ansible() -> None:
    # group_vars/all.yml: s3_bucket: "{{ lookup('ansible.builtin.env', 'AWS_S3_BUCKET') }}"
    # Ansible renders it; an empty result stays empty (the template is no fallback)
    defaults = {"s3_bucket": "{{ lookup('ansible.builtin.env', 'AWS_S3_BUCKET') }}"}
    settings, _errors = plan_settings({"s3_bucket": ""}, defaults)
    assert settings["s3_bucket"] == ""
    settings, _errors = plan_settings({"s3_bucket": "from-env"}, defaults)
    assert settings["s3_bucket"] == "from-env"


def test_the_whole_preflight_accepts_the_labs_s3_and_ebs() -> None:
    registry = load_registry(REPO / "workloads")
    hostvars = {
        "source": {"ansible_host": "10.77.0.11", "ebs_attacher": "lab", "ebs_volume_id": VOLUME,
                   "instance_id": "i-1", "availability_zone": "us-east-1a"},
        "destination": {"ansible_host": "10.77.0.12", "instance_id": "i-2",
                        "availability_zone": "us-east-1a"},
    }  # fmt: skip
    groups = {"source": ["source"], "destination": ["destination"]}

    def plan(variables: dict[str, Any]) -> Any:
        return plan_experiment(variables, registry, groups, lambda h, n: hostvars[h].get(n))

    assert (
        plan({"transfer": "s3", "s3_bucket": "criu-lab", "checkpoint_strategy": "full"}).errors
        == []
    )
    ebs = plan({"transfer": "ebs", "critical_path": "stepwise", "checkpoint_strategy": "full"})
    assert ebs.errors == []
    assert ebs.pairs[0]["ebs_volume_id"] == VOLUME
    assert (ebs.pairs[0]["source_instance_id"], ebs.pairs[0]["destination_instance_id"]) == (
        "i-1",
        "i-2",
    )


# -- the test session's guard -----------------------------------------------------------------


def test_no_test_may_connect_to_the_metadata_address(metadata_guard: Any) -> None:
    with pytest.raises(ConnectionRefusedError, match="cloud metadata address"):
        socket.create_connection(("169.254.169.254", 80), timeout=0.2)
    assert metadata_guard.attempts == ["('169.254.169.254', 80)"]
    metadata_guard.attempts.clear()  # this test's attempt was on purpose
    assert os.environ["AWS_EC2_METADATA_DISABLED"] == "true"


# -- pre-dumps with s3: each one uploaded and downloaded at once ------------------------------

FAKE_TOOL = """\
import json, sys
env = json.loads(sys.stdin.readline())["env"]
argv = sys.argv[1:]
with open(__file__ + ".calls", "a") as log:
    log.write(json.dumps({"argv": argv, "env": sorted(env)}) + "\\n")
stage = argv[argv.index("--stage") + 1]
figures = {"duration_s": 0.01, "bytes": 4096, "objects": 2, "mb_s": 0.4}
print(json.dumps({"ok": True, argv[0]: {**figures, "stage": stage}}))
"""


def test_each_pre_dump_goes_up_and_comes_down_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    import predump_loop
    from test_predump_loop import FAKE_CRIU, PAGES, install_fake_criu, run_module, set_pages

    criu = install_fake_criu(tmp_path, monkeypatch, FAKE_CRIU)
    set_pages(monkeypatch, PAGES)
    tools = tmp_path / "tools"
    tools.mkdir()
    (tools / "s3_transfer.py").write_text(FAKE_TOOL)
    remote: list[str] = []

    def on_the_destination(self: Any, request: TransferRequest) -> Any:
        remote.append(request.stage)  # the loop's SSH master stands in: run it here

        def run(argv: list[str], stdin: bytes | None = None) -> tuple[int, str, str]:
            proc = subprocess.run(argv, input=stdin, capture_output=True, check=False)
            return proc.returncode, proc.stdout.decode(), proc.stderr.decode()

        return run

    monkeypatch.setattr(predump_loop.PredumpLoop, "remote", on_the_destination)
    fakes = {"criu": criu, "base": tmp_path / "images"}
    rc, result = run_module(
        fakes,
        capsys,
        iterations=2,
        interval=0.0,
        transfer={"method": "s3", "destination": "10.79.0.22", "s3_bucket": BUCKET, "s3_prefix": PREFIX},
        aws={"region": REGION, "credentials": {"AWS_SECRET_ACCESS_KEY": "lab-secret-value"},
             "tools_dir": str(tools)},
    )  # fmt: skip
    assert rc == 0, result
    assert remote == ["predump-1", "predump-2"]
    calls = [json.loads(line) for line in (tools / "s3_transfer.py.calls").read_text().splitlines()]
    assert [(c["argv"][0], c["argv"][c["argv"].index("--stage") + 1]) for c in calls] == [
        ("upload", "predump-1"), ("download", "predump-1"),
        ("upload", "predump-2"), ("download", "predump-2"),
    ]  # fmt: skip
    assert all("AWS_SECRET_ACCESS_KEY" in c["env"] for c in calls)
    assert not any("lab-secret-value" in " ".join(c["argv"]) for c in calls)
    transfers = [
        item["migration_metrics"]["data"]
        for item in result["results"]
        if item["migration_metrics"]["phase"] == "transfer"
    ]
    assert [t["stage"] for t in transfers] == ["predump-1", "predump-2"]
    first = transfers[0]
    assert first["method"] == "s3" and first["receive"]["bytes"] == 4096
    assert (
        first["s3"]["upload"]["stage"] == "predump-1"
        and first["s3"]["download"]["stage"] == "predump-1"
    )
    assert first["dest_paths"] == [str(tmp_path / "images" / "1")]
    assert "lab-secret-value" not in json.dumps(result)
