"""module_utils/transfer_backends.py: the rsync backend's argv, its stats parsing on real
`rsync --stats` output (tests/fixtures/rsync/, recorded by its record.sh with rsync 3.5.0),
and `RsyncBackend.send` with a fake runner.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from experiment_plan import COMPRESSIONS, plan_experiment
from transfer_backends import (
    BACKENDS,
    RsyncBackend,
    TransferError,
    TransferRequest,
    TransferResult,
    backend_for,
    parse_rsync_stats,
    rsync_argv,
    ssh_command,
)
from workload_registry import load_registry

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "rsync"
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


def test_rsync_argv_as_root_in_the_lab() -> None:
    assert rsync_argv(lab_request()) == [
        "rsync",
        "--archive",
        "--relative",
        "--whole-file",
        "--sparse",
        "--numeric-ids",
        "--stats",
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
    # through must change what rsync is asked to do, not be dropped silently.
    plain = rsync_argv(lab_request(compress="none"))
    compressed = rsync_argv(lab_request(compress=compress, compress_level=3))
    assert compressed != plain or not preflight_accepts(transfer_compress=compress)


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


def test_verify_is_applied_when_the_preflight_accepts_it() -> None:
    # transfer_verify=true: "Checksum the image files on the source and compare them on the
    # destination" (group_vars/all.yml). Accepted, it must make the backend do more.
    plain, verified = FakeRunner(0, FIRST_COPY), FakeRunner(0, FIRST_COPY)
    RsyncBackend().send(lab_request(verify=False), plain)
    RsyncBackend().send(lab_request(verify=True), verified)
    assert (verified.calls != plain.calls) or not preflight_accepts(transfer_verify="true")


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
