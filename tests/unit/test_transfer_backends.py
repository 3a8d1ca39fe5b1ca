"""module_utils/transfer_backends.py: the rsync backend's argv, its stats parsing on real
`rsync --stats` output (tests/fixtures/rsync/, recorded by its record.sh with rsync 3.5.0),
and `RsyncBackend.send` with a fake runner; the zstd pipeline's construction and a real run
of it between local folders; the efs backend with real local rsync; checksum manifests;
send/receive orchestration and the module's receive side (tests/fixtures/transfer/ holds
real tar and rsync output, recorded by its record.sh).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from experiment_plan import COMPRESSIONS, plan_experiment
from fakes import run_ansible_module
from transfer_backends import (
    BACKENDS,
    INTERRUPT_BWLIMIT_KIB,
    VERIFY_NOT_APPLICABLE_EFS,
    VERIFY_PAGES_STREAMED,
    EfsBackend,
    Pipeline,
    RsyncBackend,
    TransferError,
    TransferRequest,
    TransferResult,
    ZstdSshBackend,
    backend_for,
    checksum_manifest,
    child_pids,
    combine_sides,
    compare_manifest,
    compression_figures,
    efs_layout,
    local_rsync_argv,
    manifest_of_files,
    parse_rsync_stats,
    parse_tar_totals,
    regular_files,
    rsync_argv,
    run_and_cut,
    run_pipeline,
    ssh_command,
    tools_for,
    transfer_receive,
    transfer_send,
    zstd_pipeline,
)
from workload_registry import load_registry

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "rsync"
TRANSFER_FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "transfer"
WORKLOADS = Path(__file__).resolve().parents[2] / "workloads"
FIRST_COPY = (FIXTURES / "first-copy.txt").read_text()
NO_CHANGE = (FIXTURES / "no-change.txt").read_text()
SSH_REFUSED = (FIXTURES / "ssh-refused.txt").read_text()
RCS = dict(line.split() for line in (FIXTURES / "rc.txt").read_text().splitlines())

IMAGES = "/var/lib/criu-migration/images/memory_20261126_050746/1"
WORK = "/var/lib/criu-migration/work/memory_20261126_050746"


def lab_request(**overrides: object) -> TransferRequest:
    fields: dict[str, object] = {
        "paths": [IMAGES, WORK],
        "destination": "10.77.0.12",
        "ssh_key": "/work/main/.lab/ssh/id_ed25519",
        "known_hosts": "/work/main/.lab/ssh/known_hosts",
        "cipher": "aes128-gcm@openssh.com",
    }
    fields.update(overrides)
    return TransferRequest(**fields)  # type: ignore[arg-type]


# -- argv ---------------------------------------------------------------------------------------


def test_ssh_command_pins_the_key_and_the_host_key() -> None:
    assert ssh_command(lab_request()) == [
        "ssh",
        "-o",
        "BatchMode=yes",
        "-o",
        "Compression=no",
        "-p",
        "22",
        "-i",
        "/work/main/.lab/ssh/id_ed25519",
        "-o",
        "IdentitiesOnly=yes",
        "-o",
        "UserKnownHostsFile=/work/main/.lab/ssh/known_hosts",
        "-o",
        "StrictHostKeyChecking=yes",
        "-c",
        "aes128-gcm@openssh.com",
    ]


def test_ssh_command_bare() -> None:
    request = TransferRequest(paths=["/a"], destination="d", ssh_port=2222)
    assert ssh_command(request) == [
        "ssh",
        "-o",
        "BatchMode=yes",
        "-o",
        "Compression=no",
        "-p",
        "2222",
    ]


# How every rsync copies images and working directories: absolute paths kept, no delta
# search, holes kept, numeric ids, and the --stats the figures are read from.
RSYNC_FLAGS = ["--archive", "--relative", "--whole-file", "--sparse", "--numeric-ids", "--stats"]


def test_rsync_argv_as_root_in_the_lab() -> None:
    assert rsync_argv(lab_request()) == [
        "rsync",
        *RSYNC_FLAGS,
        "--rsh",
        "ssh -o BatchMode=yes -o Compression=no -p 22 -i /work/main/.lab/ssh/id_ed25519 "
        "-o IdentitiesOnly=yes -o UserKnownHostsFile=/work/main/.lab/ssh/known_hosts "
        "-o StrictHostKeyChecking=yes -c aes128-gcm@openssh.com",
        IMAGES,
        WORK,
        "root@10.77.0.12:/",
    ]


def test_rsync_argv_non_root_user_runs_rsync_under_sudo() -> None:
    argv = rsync_argv(lab_request(user="ubuntu", destination="172.31.5.20"), rsync="/usr/bin/rsync")
    assert argv[0] == "/usr/bin/rsync"
    assert argv[-5:] == ["--rsync-path", "sudo rsync", IMAGES, WORK, "ubuntu@172.31.5.20:/"]


def test_rsync_argv_root_needs_no_sudo() -> None:
    assert "--rsync-path" not in rsync_argv(lab_request())


@pytest.mark.parametrize(
    "path",
    ["var/lib/criu-migration/images/1", "./images", "/var/lib/my images/1", "/tmp/a\tb", ""],
)
def test_rsync_argv_refuses_relative_paths_and_spaces(path: str) -> None:
    with pytest.raises(ValueError) as excinfo:
        rsync_argv(lab_request(paths=[IMAGES, path]))
    assert str(excinfo.value) == f"transfer path {path!r} must be absolute and without spaces"


def test_rsync_argv_needs_a_destination() -> None:
    with pytest.raises(ValueError) as excinfo:
        rsync_argv(lab_request(destination=""))
    assert str(excinfo.value) == "rsync needs the destination's address"


def preflight_accepts(**variables: object) -> bool:
    registry = load_registry(WORKLOADS)
    groups = {"source": ["source"], "destination": ["destination"]}
    return not plan_experiment(variables, registry, groups, lambda host, name: None).errors


def test_no_compression_is_the_plain_argv() -> None:
    assert rsync_argv(lab_request(compress="none")) == rsync_argv(lab_request())
    assert preflight_accepts(transfer_compress="none")


@pytest.mark.parametrize("compress", [c for c in COMPRESSIONS if c != "none"])
def test_every_compression_the_preflight_accepts_is_applied(compress: str) -> None:
    # transfer_compress is "stream compression" (group_vars/all.yml): one the preflight lets
    # through must change what runs (another backend), not be dropped silently.
    assert preflight_accepts(transfer_compress=compress)
    backend = backend_for("rsync", compress)
    assert not isinstance(backend, RsyncBackend)
    assert compress in " ".join(zstd_pipeline(lab_request(compress=compress)).describe().split())


# -- stats ----------------------------------------------------------------------------------


def test_parse_stats_of_a_first_copy() -> None:
    assert RCS["first-copy"] == "0"
    assert parse_rsync_stats(FIRST_COPY) == {
        "files": 3,
        "bytes": 1338663,  # 4,096 + 100,000 + 1,234,567
        "wire_bytes": 1339299,
        "total_size": 1338663,
    }


def test_parse_stats_when_nothing_changed() -> None:
    assert RCS["no-change"] == "0"
    assert parse_rsync_stats(NO_CHANGE) == {
        "files": 0,
        "bytes": 0,
        "wire_bytes": 178,
        "total_size": 1338663,
    }


def test_parse_stats_without_stats() -> None:
    assert parse_rsync_stats(SSH_REFUSED) == {}
    assert parse_rsync_stats("") == {}


# -- send -----------------------------------------------------------------------------------


class FakeRunner:
    def __init__(self, rc: int, out: str, err: str = "") -> None:
        self.calls: list[list[str]] = []
        self.reply = (rc, out, err)

    def __call__(self, argv: list[str]) -> tuple[int, str, str]:
        self.calls.append(list(argv))
        return self.reply


def test_send_success() -> None:
    runner = FakeRunner(0, FIRST_COPY)
    request = lab_request()
    result = RsyncBackend().send(request, runner)
    assert runner.calls == [rsync_argv(request)]
    assert isinstance(result, TransferResult)
    assert result.method == "rsync"
    assert (result.bytes, result.files, result.wire_bytes) == (1338663, 3, 1339299)
    assert result.dest_paths == [IMAGES, WORK]
    assert result.duration_s >= 0.0
    data = result.as_dict()
    assert {k: data[k] for k in ("method", "bytes", "files", "wire_bytes", "dest_paths")} == {
        "method": "rsync",
        "bytes": 1338663,
        "files": 3,
        "wire_bytes": 1339299,
        "dest_paths": [IMAGES, WORK],
    }
    assert data["cipher"] == "aes128-gcm@openssh.com"
    assert data["total_size"] == 1338663


def test_send_failure_raises_transfer_error() -> None:
    assert RCS["ssh-refused"] == "255"
    runner = FakeRunner(255, "", SSH_REFUSED)
    request = lab_request()
    with pytest.raises(TransferError) as excinfo:
        RsyncBackend().send(request, runner)
    error = excinfo.value
    assert str(error) == (
        "rsync to 10.77.0.12 failed (rc=255): ssh: connect to host 127.0.0.1 port 1: Connection "
        "refused\nrsync: connection unexpectedly closed (0 bytes received so far) [sender]\n"
        "rsync error: unexplained error (code 255) at io.c(285) [sender=3.5.0]"
    )
    assert error.argv == rsync_argv(request)
    assert error.output == SSH_REFUSED


def test_verify_is_applied_when_the_preflight_accepts_it(tmp_path: Path) -> None:
    # transfer_verify=true: "Checksum the image files on the source and compare them on the
    # destination" (group_vars/all.yml). Accepted, it must make the transfer do more.
    assert preflight_accepts(transfer_verify="true")
    images = make_images(tmp_path)
    plain = transfer_send(lab_request(paths=[images]), FakeRunner(0, FIRST_COPY))
    verified = transfer_send(lab_request(paths=[images], verify=True), FakeRunner(0, FIRST_COPY))
    assert plain.manifest is None and not plain.receive_needed
    assert verified.manifest and verified.receive_needed


def test_result_as_dict_throughput() -> None:
    result = TransferResult("rsync", 1.076072, 141659526, 16, wire_bytes=None)
    data = result.as_dict()
    assert data["throughput_mb_s"] == 131.645
    assert "wire_bytes" not in data
    assert TransferResult("rsync", 0.0, 10, 1).as_dict()["throughput_mb_s"] == 0.0


def test_backend_for() -> None:
    assert isinstance(backend_for("rsync"), RsyncBackend)
    assert set(BACKENDS) >= {"rsync"}
    with pytest.raises(ValueError) as excinfo:
        backend_for("carrier-pigeon")
    assert str(excinfo.value).startswith(
        "transfer method 'carrier-pigeon' is not implemented; available: "
    )
    assert "rsync" in str(excinfo.value)


def test_backend_for_compression_and_efs() -> None:
    assert isinstance(backend_for("rsync", "zstd"), ZstdSshBackend)
    assert isinstance(backend_for("rsync", "none"), RsyncBackend)
    assert isinstance(backend_for("efs"), EfsBackend)
    assert EfsBackend.two_sided and not RsyncBackend.two_sided and not ZstdSshBackend.two_sided
    with pytest.raises(ValueError, match="transfer=efs cannot compress with zstd"):
        backend_for("efs", "zstd")
    assert backend_for("s3").name == "s3" and backend_for("ebs").name == "ebs"
    with pytest.raises(ValueError, match="transfer=s3 cannot compress with zstd"):
        backend_for("s3", "zstd")


# -- helpers for real files ------------------------------------------------------------------


def make_images(root: Path, pages: bytes = b"", name: str = "1") -> str:
    """A small images folder like CRIU's: a page image and two small images."""
    images = root / "images" / name
    images.mkdir(parents=True)
    (images / "pages-1.img").write_bytes(pages or os.urandom(300_000))
    (images / "pagemap-1.img").write_bytes(os.urandom(4096))
    (images / "core-1.img").write_bytes(b"core")
    return str(images)


def make_work(root: Path) -> str:
    work = root / "work"
    work.mkdir(parents=True)
    (work / "progress.log").write_text('{"seq": 1}\n{"seq": 2}\n')
    (work / "checkpoint_ready").write_text("ready:16001")
    return str(work)


def tree(path: str) -> dict[str, bytes]:
    base = Path(path)
    return {
        str(p.relative_to(base)): p.read_bytes() for p in sorted(base.rglob("*")) if p.is_file()
    }


# -- rsync tuning and the interrupt fault ------------------------------------------------------


def test_rsync_argv_has_no_inplace_compression_or_checksum_search() -> None:
    argv = rsync_argv(lab_request())
    assert "--sparse" in argv and "--whole-file" in argv
    for flag in ("--inplace", "-z", "--compress", "--checksum", "--partial"):
        assert flag not in argv


def test_rsync_argv_bwlimit_only_for_the_interrupt_fault() -> None:
    assert not any(a.startswith("--bwlimit") for a in rsync_argv(lab_request()))
    argv = rsync_argv(lab_request(), bwlimit_kib=INTERRUPT_BWLIMIT_KIB)
    assert f"--bwlimit={INTERRUPT_BWLIMIT_KIB}" in argv
    assert argv[-3:] == [IMAGES, WORK, "root@10.77.0.12:/"]


def test_rsync_send_with_the_interrupt_fault_is_cut(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[list[str], float]] = []

    def fake_cut(argv: list[str], after_s: float) -> tuple[int, str, str]:
        calls.append((argv, after_s))
        return 255, "", "rsync: connection unexpectedly closed\n[inject_fault=transfer_interrupt]"

    import transfer_backends

    monkeypatch.setattr(transfer_backends, "run_and_cut", fake_cut)
    runner = FakeRunner(0, FIRST_COPY)
    with pytest.raises(TransferError, match=r"rsync to 10\.77\.0\.12 failed \(rc=255\)"):
        RsyncBackend().send(lab_request(fault="interrupt"), runner)
    assert runner.calls == []  # the plain runner is not used
    assert calls[0][0] == rsync_argv(lab_request(), bwlimit_kib=INTERRUPT_BWLIMIT_KIB)


def test_run_and_cut_kills_the_spawned_child() -> None:
    # dash forks `sleep` (a command follows it), like rsync forks ssh; killing the child
    # makes the parent go on to `exit 3`.
    t0 = time.monotonic()
    rc, _out, err = run_and_cut(["sh", "-c", "sleep 30; exit 3"], 0.3)
    assert time.monotonic() - t0 < 10
    assert rc == 3
    assert "SSH connection killed after 0.3 s" in err


def test_run_and_cut_leaves_a_quick_command_alone() -> None:
    assert run_and_cut(["sh", "-c", "echo hi; exit 0"], 5.0) == (0, "hi\n", "")


def test_child_pids() -> None:
    with subprocess.Popen(["sh", "-c", "sleep 5; true"]) as proc:
        deadline = time.monotonic() + 5
        while not child_pids(proc.pid) and time.monotonic() < deadline:
            time.sleep(0.02)
        children = child_pids(proc.pid)
        assert len(children) == 1
        assert Path(f"/proc/{children[0]}/comm").read_text().strip() == "sleep"
        proc.kill()


# -- the zstd pipeline --------------------------------------------------------------------------


def test_zstd_pipeline_as_root() -> None:
    pipeline = zstd_pipeline(lab_request(compress="zstd", compress_level=5))
    ssh = ssh_command(lab_request())
    assert pipeline.pump_at == 2
    assert pipeline.stages == [
        [
            "tar",
            "--create",
            "--sparse",
            "--numeric-owner",
            "--totals",
            "--file=-",
            "--directory=/",
            IMAGES.lstrip("/"),
            WORK.lstrip("/"),
        ],
        ["zstd", "--threads=0", "-5", "--quiet", "--stdout"],
        [
            *ssh,
            "root@10.77.0.12",
            "zstd --decompress --quiet --stdout | tar --extract --numeric-owner --file=- --directory=/",
        ],
    ]
    assert pipeline.describe().startswith("tar --create ")
    assert " | zstd --threads=0 -5 --quiet --stdout | (count) | ssh " in pipeline.describe()


def test_zstd_pipeline_non_root_extracts_with_sudo() -> None:
    pipeline = zstd_pipeline(lab_request(compress="zstd", user="ubuntu"))
    assert pipeline.stages[-1][-2:] == [
        "ubuntu@10.77.0.12",
        "zstd --decompress --quiet --stdout | sudo tar --extract --numeric-owner --file=- --directory=/",
    ]


@pytest.mark.parametrize("level", [0, 20])
def test_zstd_pipeline_refuses_levels_out_of_range(level: int) -> None:
    with pytest.raises(ValueError, match=f"zstd level {level} is outside 1..19"):
        zstd_pipeline(lab_request(compress="zstd", compress_level=level))


def test_zstd_pipeline_needs_absolute_paths_and_a_destination() -> None:
    with pytest.raises(ValueError, match="must be absolute"):
        zstd_pipeline(lab_request(paths=["relative/images"]))
    with pytest.raises(ValueError, match="needs the destination's address"):
        zstd_pipeline(lab_request(destination=""))


def local_zstd_pipeline(
    src_root: Path, dest: Path, relative: list[str], level: int = 3
) -> Pipeline:
    """The backend's pipeline with the ssh stage replaced by the remote commands, run here."""
    return Pipeline(
        stages=[
            [
                "tar",
                "--create",
                "--numeric-owner",
                "--totals",
                "--file=-",
                f"--directory={src_root}",
                *relative,
            ],
            ["zstd", "--threads=0", f"-{level}", "--quiet", "--stdout"],
            ["zstd", "--decompress", "--quiet", "--stdout"],
            ["tar", "--extract", "--numeric-owner", "--file=-", f"--directory={dest}"],
        ],
        pump_at=2,
    )


def test_run_pipeline_moves_the_files_and_counts_compressed_bytes(tmp_path: Path) -> None:
    src = tmp_path / "src"
    zeros = bytes(2_000_000)  # compresses well, like mostly-empty pages
    make_images(src, pages=zeros)
    make_work(src)
    dest = tmp_path / "dest"
    dest.mkdir()
    outcome = run_pipeline(local_zstd_pipeline(src, dest, ["images/1", "work"]))
    assert outcome.ok, outcome.stderr
    assert tree(str(dest)) == tree(str(src))
    raw = parse_tar_totals(outcome.stderr[0])
    assert raw is not None and raw > 2_000_000
    assert 0 < outcome.pumped_bytes < raw / 10  # what went through the pump is compressed
    assert len(outcome.cpu_s) == 4 and all(value >= 0 for value in outcome.cpu_s)
    assert not outcome.cut


def test_run_pipeline_cut_midway_fails(tmp_path: Path) -> None:
    src = tmp_path / "src"
    make_images(src, pages=os.urandom(3_000_000))  # incompressible: the stream is long
    dest = tmp_path / "dest"
    dest.mkdir()
    outcome = run_pipeline(local_zstd_pipeline(src, dest, ["images/1"]), cut_after_bytes=65536)
    assert outcome.cut and not outcome.ok
    assert 65536 <= outcome.pumped_bytes < 3_000_000
    pages = dest / "images" / "1" / "pages-1.img"
    assert not pages.exists() or pages.stat().st_size < 3_000_000


def test_run_pipeline_reports_a_failing_stage(tmp_path: Path) -> None:
    pipeline = Pipeline(
        stages=[["tar", "--create", "--file=-", str(tmp_path / "missing")], ["cat"], ["cat"]],
        pump_at=2,
    )
    outcome = run_pipeline(pipeline)
    assert not outcome.ok
    assert outcome.returncodes[0] != 0
    assert "missing" in outcome.stderr[0]


def test_parse_tar_totals_on_recorded_output() -> None:
    recorded = (TRANSFER_FIXTURES / "tar-totals.txt").read_text()
    stream = int((TRANSFER_FIXTURES / "tar-stream-bytes.txt").read_text())
    assert parse_tar_totals(recorded) == stream == 1351680
    assert parse_tar_totals("") is None


def test_compression_figures() -> None:
    figures = compression_figures(544_368_640, 2_093_872, 2.0, 0.31, 3)
    assert figures == {
        "algorithm": "zstd",
        "level": 3,
        "raw_bytes": 544368640,
        "compressed_bytes": 2093872,
        "ratio": 259.982,  # 544,368,640 / 2,093,872
        "duration_s": 2.0,
        "raw_mb_s": 272.184,
        "compressed_mb_s": 1.047,
        "compress_cpu_s": 0.31,
    }
    assert compression_figures(0, 0, 0.0, 0.0, 1)["ratio"] is None


def test_zstd_backend_send_reports_compression(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import transfer_backends

    src = tmp_path / "src"
    images = make_images(src, pages=bytes(1_000_000))
    work = make_work(src)
    dest = tmp_path / "dest"
    dest.mkdir()

    def local(request: TransferRequest) -> Pipeline:
        relative = [str(Path(p).relative_to(src)) for p in request.paths]
        return local_zstd_pipeline(src, dest, relative, request.compress_level)

    monkeypatch.setattr(transfer_backends, "zstd_pipeline", local)
    request = lab_request(paths=[images, work], compress="zstd", compress_level=3)
    result = ZstdSshBackend().send(request, FakeRunner(0, ""))
    payload = sum(len(b) for b in tree(str(src)).values())
    assert (result.method, result.bytes, result.files) == ("ssh-zstd", payload, 5)
    compression = result.extra["compression"]
    assert compression["raw_bytes"] >= payload
    assert compression["compressed_bytes"] == result.wire_bytes > 0
    assert compression["ratio"] > 10
    assert compression["raw_mb_s"] > compression["compressed_mb_s"] > 0
    assert tree(str(dest / "images")) == tree(str(src / "images"))


def test_zstd_backend_send_failure(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import transfer_backends

    images = make_images(tmp_path / "src")

    def broken(request: TransferRequest) -> Pipeline:
        return Pipeline(
            stages=[
                ["tar", "--create", "--file=-", images],
                ["cat"],
                ["sh", "-c", "cat >/dev/null; echo 'Connection closed' >&2; exit 255"],
            ],
            pump_at=2,
        )

    monkeypatch.setattr(transfer_backends, "zstd_pipeline", broken)
    with pytest.raises(TransferError) as excinfo:
        ZstdSshBackend().send(lab_request(paths=[images], compress="zstd"), FakeRunner(0, ""))
    assert (
        "zstd stream to 10.77.0.12 failed: ssh (zstd -d | tar -x on the destination) rc=255: Connection closed"
        in str(excinfo.value)
    )


# -- efs ------------------------------------------------------------------------------------------


def efs_request(share: Path, images: str, work: str, **overrides: Any) -> TransferRequest:
    fields: dict[str, Any] = {
        "paths": [images, work],
        "method": "efs",
        "efs_path": str(share),
        "efs_dir": str(share / "criu-migration" / "images" / "e1" / "source"),
    }
    fields.update(overrides)
    return TransferRequest(**fields)


def test_efs_layout(tmp_path: Path) -> None:
    share = tmp_path / "share"
    images = str(share / "criu-migration/images/e1/source/1")
    request = efs_request(share, images, "/var/lib/criu-migration/work/e1")
    assert efs_layout(request) == (
        [images],
        ["/var/lib/criu-migration/work/e1"],
        str(share / "criu-migration/images/e1/source/files"),
    )
    with pytest.raises(ValueError, match="is not under efs_path"):
        efs_layout(efs_request(share, images, "/w", efs_dir="/elsewhere/e1"))
    with pytest.raises(ValueError, match="needs the mount path"):
        efs_layout(efs_request(share, images, "/w", efs_path=""))


def test_local_rsync_argv() -> None:
    assert local_rsync_argv(["/var/lib/w"], "/mnt/s/files/") == [
        "rsync",
        *RSYNC_FLAGS,
        "/var/lib/w",
        "/mnt/s/files/",
    ]


def real_run(argv: list[str]) -> tuple[int, str, str]:
    proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    return proc.returncode, proc.stdout, proc.stderr


def test_efs_send_stages_the_working_dir_and_receive_puts_it_back(tmp_path: Path) -> None:
    share = tmp_path / "share"
    efs_dir = share / "criu-migration" / "images" / "e1" / "source"
    images = make_images(
        efs_dir.parent.parent.parent.parent / "criu-migration" / "images" / "e1" / "source",
        name="1",
    )
    work = make_work(tmp_path / "local")
    before = tree(work)
    request = efs_request(share, images, work)
    sent = EfsBackend().send(request, real_run)
    assert sent.method == "efs"
    assert sent.dest_paths == [images]
    assert sent.extra["staged"] == [work]
    assert sent.extra["shared_files"] == 3
    assert sent.extra["shared_bytes"] == sum(len(b) for b in tree(images).values())
    assert (sent.bytes, sent.files) == (sum(len(b) for b in before.values()), 2)
    staged = Path(f"{efs_dir}/files{work}")
    assert tree(str(staged)) == before
    # "the destination": the same path, emptied, then filled from the share
    shutil.rmtree(work)
    received = EfsBackend().receive(request, real_run)
    assert received is not None
    assert tree(work) == before
    assert received.dest_paths == [work]
    assert (received.bytes, received.files) == (sent.bytes, 2)


def test_efs_send_refuses_images_off_the_share(tmp_path: Path) -> None:
    share = tmp_path / "share"
    share.mkdir()
    images = make_images(tmp_path / "local")
    with pytest.raises(TransferError, match="is on the shared filesystem"):
        EfsBackend().send(efs_request(share, images, make_work(tmp_path / "w")), real_run)


def test_efs_stage_stats_on_recorded_output() -> None:
    recorded = (TRANSFER_FIXTURES / "efs-stage.txt").read_text()
    assert parse_rsync_stats(recorded)["files"] == 3
    assert parse_rsync_stats(recorded)["bytes"] == 1338663


def test_efs_receive_failure(tmp_path: Path) -> None:
    share = tmp_path / "share"
    images = str(share / "criu-migration/images/e1/source/1")
    request = efs_request(share, images, "/var/lib/criu-migration/work/e1")
    runner = FakeRunner(23, "", "rsync: change_dir failed: No such file or directory (2)")
    with pytest.raises(
        TransferError, match=r"copying /var/lib/criu-migration/work/e1 from .* failed \(rc=23\)"
    ):
        EfsBackend().receive(request, runner)
    assert runner.calls == [
        local_rsync_argv(
            [f"{share}/criu-migration/images/e1/source/files/./var/lib/criu-migration/work/e1"], "/"
        )
    ]


# -- checksum manifests -----------------------------------------------------------------------


def test_checksum_manifest(tmp_path: Path) -> None:
    images = make_images(tmp_path)
    (Path(images) / "link.img").symlink_to("pages-1.img")
    manifest = checksum_manifest([images])
    assert sorted(manifest) == sorted(
        str(Path(images) / n) for n in ("core-1.img", "pagemap-1.img", "pages-1.img")
    )
    pages = Path(images) / "pages-1.img"
    assert manifest[str(pages)] == {
        "size": 300_000,
        "sha256": hashlib.sha256(pages.read_bytes()).hexdigest(),
    }
    assert regular_files([str(pages)]) == [str(pages)]
    assert manifest_of_files(manifest) == manifest
    assert compare_manifest(manifest, manifest) == []


def test_compare_manifest_names_each_bad_file(tmp_path: Path) -> None:
    images = make_images(tmp_path)
    manifest = checksum_manifest([images])
    pages, core, pagemap = (
        str(Path(images) / n) for n in ("pages-1.img", "core-1.img", "pagemap-1.img")
    )
    with open(pages, "r+b") as handle:  # one flipped byte
        handle.seek(150_000)
        byte = handle.read(1)[0]
        handle.seek(150_000)
        handle.write(bytes([byte ^ 0xFF]))
    Path(core).write_bytes(b"core, longer")
    os.unlink(pagemap)
    problems = compare_manifest(manifest, manifest_of_files(manifest))
    assert problems == [
        f"{core}: size 12 != 4 on the source",
        f"{pagemap}: missing on the destination",
        f"{pages}: sha256 {hashlib.sha256(Path(pages).read_bytes()).hexdigest()} != "
        f"{manifest[pages]['sha256']} on the source",
    ]


# -- send / receive orchestration ---------------------------------------------------------------


def test_transfer_send_and_receive_with_verify(tmp_path: Path) -> None:
    images, work = make_images(tmp_path), make_work(tmp_path)
    request = lab_request(paths=[images, work], verify=True)
    outcome = transfer_send(request, FakeRunner(0, FIRST_COPY))
    assert outcome.receive_needed
    assert outcome.manifest == checksum_manifest([images, work])
    sent = outcome.record("final")
    assert sent["stage"] == "final" and sent["method"] == "rsync"
    verify = sent["verify"]
    assert verify["algorithm"] == "sha256" and verify["files"] == 5
    assert verify["source_when"] == "right after the dump, while the files were sent"
    assert sent["send"]["bytes"] == 1338663
    # the "destination" has the same files: the comparison passes
    record, problems = transfer_receive(request, FakeRunner(0, ""), sent, outcome.manifest)
    assert problems == []
    assert record["verify"]["ok"] is True and record["verify"]["mismatches"] == []
    assert record["duration_s"] == pytest.approx(
        sent["send"]["duration_s"] + record["verify"]["destination_s"], abs=1e-5
    )
    assert "receive" not in record  # rsync is one-sided
    # one flipped byte in the page image: named, and the record says so
    pages = Path(images) / "pages-1.img"
    data = bytearray(pages.read_bytes())
    data[1000] ^= 0xFF
    pages.write_bytes(bytes(data))
    record, problems = transfer_receive(request, FakeRunner(0, ""), sent, outcome.manifest)
    assert len(problems) == 1 and problems[0].startswith(f"{pages}: sha256 ")
    assert record["verify"]["ok"] is False


def test_transfer_send_without_verify_needs_no_receive(tmp_path: Path) -> None:
    outcome = transfer_send(lab_request(paths=[make_images(tmp_path)]), FakeRunner(0, FIRST_COPY))
    assert outcome.manifest is None and not outcome.receive_needed
    assert outcome.record("final")["verify"] == "off"


def test_verify_with_a_page_server_says_what_it_cannot_cover(tmp_path: Path) -> None:
    request = lab_request(paths=[make_images(tmp_path)], verify=True, page_server=True)
    sent = transfer_send(request, FakeRunner(0, FIRST_COPY)).record("final")
    assert sent["verify"]["page_images"] == VERIFY_PAGES_STREAMED


def test_verify_does_not_apply_to_efs(tmp_path: Path) -> None:
    share = tmp_path / "share"
    efs_dir = share / "criu-migration" / "images" / "e1" / "source"
    images = make_images(efs_dir)
    work = make_work(tmp_path / "local")
    request = efs_request(share, images, work, verify=True)
    outcome = transfer_send(request, real_run)
    assert outcome.manifest is None and outcome.receive_needed  # two-sided, not for verify
    sent = outcome.record("final")
    assert sent["verify"] == VERIFY_NOT_APPLICABLE_EFS
    assert sent["verify"].startswith("not applicable: ")
    record, problems = transfer_receive(request, real_run, sent, None)
    assert problems == []
    assert record["verify"] == VERIFY_NOT_APPLICABLE_EFS
    assert set(record) >= {"send", "receive", "shared_bytes", "duration_s", "throughput_mb_s"}
    assert record["duration_s"] == pytest.approx(
        record["send"]["duration_s"] + record["receive"]["duration_s"], abs=1e-5
    )
    assert record["dest_paths"] == [work]


def test_combine_sides() -> None:
    sent = {
        "method": "efs",
        "stage": "predump-2",
        "duration_s": 0.2,
        "bytes": 1000,
        "files": 2,
        "throughput_mb_s": 0.005,
        "dest_paths": ["/mnt/s/e1/2"],
        "shared_bytes": 5_000_000,
        "verify": "off",
        "send": {"duration_s": 0.2, "bytes": 1000, "files": 2, "throughput_mb_s": 0.005},
    }
    received = {
        "duration_s": 0.3,
        "bytes": 1000,
        "files": 2,
        "throughput_mb_s": 0.003,
        "dest_paths": ["/w"],
    }
    record = combine_sides(sent, received, "off")
    assert record == {
        "method": "efs",
        "stage": "predump-2",
        "duration_s": 0.5,
        "bytes": 1000,
        "files": 2,
        "throughput_mb_s": 0.002,
        "dest_paths": ["/w"],
        "shared_bytes": 5_000_000,
        "send": {"duration_s": 0.2, "bytes": 1000, "files": 2, "throughput_mb_s": 0.005},
        "receive": {"duration_s": 0.3, "bytes": 1000, "files": 2, "throughput_mb_s": 0.003},
        "verify": "off",
    }


# -- the module's receive side (no network needed) ---------------------------------------------


def run_module(
    args: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> tuple[int, dict[str, Any]]:
    import checkpoint_transfer

    return run_ansible_module(checkpoint_transfer, args, capsys)


def test_module_receive_compares_and_fails_naming_the_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    images, work = make_images(tmp_path), make_work(tmp_path)
    request = lab_request(paths=[images, work], verify=True)
    outcome = transfer_send(request, FakeRunner(0, FIRST_COPY))
    args = {
        "side": "receive",
        "transfer": {"method": "rsync"},
        "paths": [images, work],
        "verify": True,
        "manifest": outcome.manifest,
        "sent": outcome.record("final"),
    }
    rc, result = run_module(args, capsys)
    assert rc == 0, result
    assert result["changed"] is True and result["verify"]["ok"] is True
    assert result["migration_metrics"]["phase"] == "transfer"
    assert result["migration_metrics"]["data"]["stage"] == "final"

    pages = Path(images) / "pages-1.img"
    with pages.open("r+b") as handle:
        handle.seek(12345)
        handle.write(b"\x00\x01")
    rc, result = run_module(args, capsys)
    assert rc == 1
    assert result["failed"] is True
    assert "checksum mismatch on " in result["msg"]
    assert f"{pages}: sha256 " in result["msg"]
    assert "the restore is not attempted" in result["msg"]
    assert result["mismatches"][0].startswith(str(pages))
    assert result["migration_metrics"]["data"]["verify"]["ok"] is False


def test_module_send_refuses_missing_paths(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rc, result = run_module(
        {"paths": [str(tmp_path / "nope")], "transfer": {"destination": "10.77.0.12"}}, capsys
    )
    assert rc == 1
    assert result["msg"].startswith("nothing to send on ")
    assert str(tmp_path / "nope") in result["msg"]


def test_module_efs_needs_its_paths(capsys: pytest.CaptureFixture[str]) -> None:
    rc, result = run_module({"transfer": {"method": "efs"}, "paths": ["/x"]}, capsys)
    assert rc == 1
    assert result["msg"] == "transfer.method=efs needs transfer.efs_path and transfer.efs_dir"


def test_module_rsync_needs_a_destination(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rc, result = run_module({"transfer": {"method": "rsync"}, "paths": [str(tmp_path)]}, capsys)
    assert rc == 1
    assert result["msg"].startswith("transfer.method=rsync needs transfer.destination")


def test_every_sending_module_takes_the_same_transfer_options() -> None:
    import checkpoint_transfer
    import predump_loop
    from transfer_backends import TRANSFER_OPTIONS, request_from_options

    for module in (checkpoint_transfer, predump_loop):
        assert "TRANSFER_OPTIONS" in vars(module), module.__name__
    # every option reaches the request; unset ones take the spec's default
    request = request_from_options({"destination": "d", "ssh_port": None}, ["/a"])
    assert request.method == TRANSFER_OPTIONS["method"]["default"] == "rsync"
    assert request.ssh_port == 22 and request.user == "root" and request.compress == "none"


def test_each_backend_names_the_tools_it_runs_on_each_side() -> None:
    assert tools_for("rsync", "none", "source") == ["rsync", "ssh"]
    assert tools_for("rsync", "none", "destination") == ["rsync"]
    assert tools_for("rsync", "zstd", "source") == ["tar", "zstd", "ssh"]
    assert tools_for("rsync", "zstd", "destination") == ["tar", "zstd"]
    assert tools_for("efs", "none", "destination") == ["rsync"]
    assert tools_for("s3", "none", "source") == ["python3"]  # + tools/s3_transfer.py, boto3
    assert tools_for("ebs", "none", "destination") == ["rsync", "blkid", "mount", "sync", "umount"]
    assert "mkfs.ext4" in tools_for("ebs", "none", "source")  # the source makes the filesystem
    assert tools_for("s3", "zstd", "source") == []  # refused by the preflight


# -- the preflight's transfer rules ------------------------------------------------------------


def plan_errors(
    variables: dict[str, Any], host_vars: dict[str, dict[str, Any]] | None = None
) -> list[str]:
    registry = load_registry(WORKLOADS)
    groups = {"source": ["source"], "destination": ["destination"]}
    host_vars = host_vars if host_vars is not None else {}
    return plan_experiment(
        {"workload": "memory", **variables},
        registry,
        groups,
        lambda host, name: host_vars.get(host, {}).get(name),
    ).errors


LAB_EFS = {
    "source": {"efs_mount_path": "/mnt/criu-shared"},
    "destination": {"efs_mount_path": "/mnt/criu-shared"},
}


def test_preflight_accepts_efs_zstd_and_verify() -> None:
    assert plan_errors({"transfer": "efs"}, LAB_EFS) == []
    assert plan_errors({"transfer": "efs", "transfer_verify": True}, LAB_EFS) == []
    assert plan_errors({"transfer_compress": "zstd", "transfer_compress_level": 6}) == []
    assert plan_errors({"transfer_verify": True, "inject_fault": "corrupt_image"}) == []
    assert plan_errors({"inject_fault": "transfer_interrupt"}) == []


def test_preflight_no_longer_refuses_s3_and_ebs_as_not_available() -> None:
    for transfer in ("s3", "ebs"):
        assert not any("not available yet" in e for e in plan_errors({"transfer": transfer}))


def test_preflight_efs_needs_the_same_mount_path_on_both_hosts() -> None:
    assert plan_errors({"transfer": "efs"}, {}) == [
        f"transfer=efs needs efs_mount_path (where the shared filesystem is mounted) for {host}; "
        "the lab sets /mnt/criu-shared, Terraform's inventories set it with create_efs=true"
        for host in ("source", "destination")
    ]
    errors = plan_errors(
        {"transfer": "efs"},
        {"source": {"efs_mount_path": "/mnt/efs"}, "destination": {"efs_mount_path": "/mnt/other"}},
    )
    assert errors == [
        "transfer=efs: efs_mount_path differs between source (/mnt/efs) and destination "
        "(/mnt/other); the restore reads the images at the path the dump wrote them"
    ]
    errors = plan_errors(
        {"transfer": "efs"},
        {"source": {"efs_mount_path": "mnt/efs"}, "destination": {"efs_mount_path": "mnt/efs"}},
    )
    assert errors[0] == "efs_mount_path='mnt/efs' of source is not an absolute path"


@pytest.mark.parametrize(
    ("variables", "expected"),
    [
        (
            {"transfer_compress": "zstd"},
            "transfer_compress=zstd compresses the SSH stream of transfer=rsync",
        ),
        (
            {"page_server": True},
            "page_server=true streams the pages to the destination; with transfer=efs",
        ),
        (
            {"inject_fault": "corrupt_image"},
            "inject_fault=corrupt_image needs a transfer that copies (rsync): with transfer=efs the image it would alter is the only copy",
        ),
        (
            {"inject_fault": "transfer_interrupt"},
            "inject_fault=transfer_interrupt needs a transfer that copies (rsync): with transfer=efs there is no stream to cut",
        ),
    ],
)
def test_preflight_efs_refuses_what_it_cannot_do(variables: dict[str, Any], expected: str) -> None:
    errors = plan_errors({"transfer": "efs", **variables}, LAB_EFS)
    assert len(errors) == 1 and errors[0].startswith(expected), errors


def test_preflight_corrupt_image_with_a_page_server() -> None:
    assert plan_errors({"inject_fault": "corrupt_image", "page_server": True}) == [
        "inject_fault=corrupt_image with page_server=true would alter the only copy of the "
        "page images (the page server wrote them on the destination)"
    ]


# -- metrics.json: one record per transfer ------------------------------------------------------


def test_metrics_keep_the_whole_transfer_per_stage(tmp_path: Path) -> None:
    from metrics_report import PairRecord, _transfer_section

    share = tmp_path / "share"
    efs_dir = share / "criu-migration" / "images" / "e1" / "source"
    images, work = make_images(efs_dir), make_work(tmp_path / "local")
    pair = PairRecord("source", "destination", str(tmp_path / "results"))
    for stage in ("predump-1", "final"):  # the shape pre-dump transfers will have
        request = efs_request(share, images, work, stage=stage)
        sent = transfer_send(request, real_run).record(stage)
        pair.add("transfer", sent, "source")
        whole, _problems = transfer_receive(request, real_run, sent, None)
        pair.add("transfer", {**whole, "stage": stage}, "destination")
    section = _transfer_section(pair, "efs")
    assert section["method"] == "efs"
    assert section["dest_paths"] == [images, work]  # the send's, then the receive's
    assert section["duration_s"] == pytest.approx(
        section["send"]["duration_s"] + section["receive"]["duration_s"], abs=1e-5
    )
    assert section["throughput_mb_s"] == pytest.approx(
        section["bytes"] / 1e6 / section["duration_s"], rel=1e-3
    )
    [predump] = section["predump_transfers"]
    assert predump["stage"] == "predump-1"
    assert set(predump) >= {"method", "duration_s", "bytes", "files", "send", "receive"}
