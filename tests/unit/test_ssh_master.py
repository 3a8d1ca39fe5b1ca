"""module_utils/ssh_master.py, and what the fused critical path runs over it on the destination.

`ssh` is a stand-in on PATH (fakes.FAKE_SSH) that emulates OpenSSH's connection sharing:
`-o ControlMaster=yes ... -N` is the master (it writes its PID at ControlPath and runs until
`-O exit` or a signal), `-O check` / `-O exit` talk to it, and a channel (`ssh ... host --
<command>`) runs <command> with `sh -c` here - only while a master is up, as a channel of it
would. So the remote argv's quoting goes through a real shell, as it does on the destination.

The checksum comparison (`sha256sum_check_input` / `sha256sum_problems`) runs the real
`sha256sum --check --quiet --strict`, and the corrupt_image fault the real POSIX shell script
(`faults.CORRUPT_PAGE_IMAGE_SH`), on files in a temporary folder.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path

import pytest
from fakes import install_fake_ssh, master_pids
from faults import CORRUPT_PAGE_IMAGE_SH, parse_corruption
from processes import is_alive
from ssh_master import SshMaster, SshMasterError
from transfer_backends import (
    TransferRequest,
    checksum_manifest,
    request_from_options,
    rsync_argv,
    sha256sum_check_input,
    sha256sum_problems,
    ssh_command,
)


@pytest.fixture
def fake_ssh(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    temp = tmp_path / "tmp"
    temp.mkdir()
    files = {"log": tmp_path / "ssh.jsonl", "masters": tmp_path / "masters", "temp": temp}
    install_fake_ssh(
        monkeypatch, tmp_path / "bin", log=files["log"], masters=files["masters"], temp=temp
    )
    return files


def request(user: str = "root", **extra: object) -> TransferRequest:
    return TransferRequest(
        paths=["/var/lib/criu-migration/images/e1/1"],
        destination="dest.example",
        user=user,
        ssh_key="/keys/id_ed25519",
        known_hosts="/keys/known_hosts",
        cipher="aes128-gcm@openssh.com",
        **extra,  # type: ignore[arg-type]
    )


def ssh_calls(files: dict[str, Path]) -> list[list[str]]:
    return [json.loads(line) for line in files["log"].read_text().splitlines()]


@pytest.fixture
def master(fake_ssh: dict[str, Path]):
    opened = SshMaster(request())
    opened.open(timeout_s=10)
    yield opened
    opened.close()


# -- argv ---------------------------------------------------------------------------------------


def test_argv_is_a_channel_of_the_master_with_the_transfers_trust(fake_ssh: dict) -> None:
    master = SshMaster(request())
    remote = ["criu", "restore", "--images-dir", "/i/1"]
    argv = master.argv(remote)
    base = ssh_command(request())
    assert argv[: len(base)] == base  # key, pinned known_hosts, port, cipher
    assert argv[len(base) :] == [
        "-o",
        f"ControlPath={master.control_path}",
        "-o",
        "ConnectTimeout=5",  # a dead master's channel gives up its own connection soon
        "-o",
        "ControlMaster=no",
        "root@dest.example",
        "--",
        "criu restore --images-dir /i/1",
    ]
    assert Path(master.control_path).parent == Path(master.control_dir)
    assert master.control_dir.startswith(str(fake_ssh["temp"]))
    master.close()  # never opened: only its folder goes
    assert not Path(master.control_dir).exists()


def test_root_runs_commands_itself_another_login_through_sudo(fake_ssh: dict) -> None:
    remote = ["criu", "restore", "--images-dir", "/a b"]
    root = SshMaster(request("root"))
    assert root.sudo == []
    assert root.argv(remote)[-1] == "criu restore --images-dir '/a b'"
    cloud = SshMaster(request("ubuntu"))
    assert cloud.sudo == ["sudo", "-n"]
    assert cloud.argv(remote)[-3:] == [
        "ubuntu@dest.example",
        "--",
        "sudo -n criu restore --images-dir '/a b'",
    ]
    assert cloud.argv(remote, sudo=False)[-1] == "criu restore --images-dir '/a b'"
    for made in (root, cloud):
        made.close()


def test_options_make_the_transfers_ssh_a_channel_of_the_master(fake_ssh: dict) -> None:
    master = SshMaster(request())
    assert master.options == [
        f"ControlPath={master.control_path}",
        "ControlMaster=no",
        "ConnectTimeout=5",
    ]
    shared = request(ssh_options=master.options)
    argv = ssh_command(shared)
    assert argv[-6:-2] == ["-o", f"ControlPath={master.control_path}", "-o", "ControlMaster=no"]
    rsh = rsync_argv(shared)[rsync_argv(shared).index("--rsh") + 1]
    assert f"-o ControlPath={master.control_path} -o ControlMaster=no" in rsh
    master.close()


# -- running over the master ------------------------------------------------------------------


def test_a_remote_argv_reaches_the_shell_intact(master: SshMaster) -> None:
    words = ["two words", "it's", 'say "hi"', "$HOME", "back\\slash", "x;y", "*", "", "a\nb"]
    rc, out, err = master.run(["printf", "%s|", *words])
    assert (rc, err) == (0, "")
    assert out == "|".join(words) + "|"


def test_run_passes_stdin_and_returns_status_output_and_errors(master: SshMaster) -> None:
    assert master.run(["cat"], stdin=b"manifest\nlines\n") == (0, "manifest\nlines\n", "")
    assert master.run(["sh", "-c", "echo out; echo err >&2; exit 3"]) == (3, "out\n", "err\n")
    assert master.runner(10)(["echo", "from", "a runner"]) == (0, "from a runner\n", "")


def test_run_gives_up_after_its_timeout(master: SshMaster) -> None:
    rc, out, err = master.run(["sleep", "2"], timeout_s=0.2)
    assert (rc, out) == (-1, "")
    assert err == "sleep 2 did not finish within 0.2 s"


def test_read_bytes_of_a_file_there(master: SshMaster, tmp_path: Path) -> None:
    there = tmp_path / "restored pid"
    there.write_bytes(b"16021\n")
    assert master.read_bytes(str(there)) == b"16021\n"
    assert master.read_bytes(str(tmp_path / "absent")) is None


def test_every_command_is_a_channel_of_the_one_master(
    master: SshMaster, fake_ssh: dict[str, Path]
) -> None:
    master.run(["true"])
    calls = ssh_calls(fake_ssh)
    opening = [c for c in calls if "ControlMaster=yes" in c]
    assert len(opening) == 1
    assert opening[0][-2:] == ["-N", "root@dest.example"]
    assert "ControlPersist=no" in opening[0]
    # a destination that stops answering ends the master (and its channels) within seconds
    assert "ServerAliveInterval=3" in opening[0] and "ServerAliveCountMax=3" in opening[0]
    channels = [c for c in calls if "--" in c]
    assert channels and all(f"ControlPath={master.control_path}" in c for c in channels)
    assert all("ControlMaster=no" in c for c in channels)


# -- opening and closing ------------------------------------------------------------------------


def test_open_then_close_stops_the_master(fake_ssh: dict[str, Path]) -> None:
    master = SshMaster(request())
    master.open(timeout_s=10)
    [pid] = master_pids(fake_ssh["masters"])
    assert master.pid == pid and is_alive(pid)
    assert master.check()
    control_dir = Path(master.control_dir)
    assert Path(master.control_path).exists()
    master.close()
    assert master.pid is None
    assert not is_alive(pid)
    assert not control_dir.exists()
    assert ssh_calls(fake_ssh)[-1][-3:-1] == ["-O", "exit"]
    master.close()  # twice: nothing left to do


def test_open_fails_with_the_reason_when_the_master_dies_at_once(
    fake_ssh: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_SSH_REFUSE", "1")
    master = SshMaster(request())
    with pytest.raises(SshMasterError) as failed:
        master.open(timeout_s=10)
    message = str(failed.value)
    assert message.startswith("ssh to root@dest.example refused the master connection: ")
    assert "Permission denied (publickey)." in message
    assert master.pid is None
    assert not Path(master.control_dir).exists()
    assert list(fake_ssh["temp"].iterdir()) == []


def test_open_gives_up_on_a_master_that_never_answers(
    fake_ssh: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_SSH_SILENT", "1")
    master = SshMaster(request())
    with pytest.raises(SshMasterError, match=r"did not open a master connection within 0\.3 s"):
        master.open(timeout_s=0.3)
    [pid] = master_pids(fake_ssh["masters"])
    assert not is_alive(pid)  # stopped, not left behind
    assert master.pid is None
    assert not Path(master.control_dir).exists()


# -- sha256sum --check on the destination -------------------------------------------------------


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def check_there(manifest: dict) -> tuple[int, str]:
    """The check the fused path runs on the destination, here: rc and stdout + stderr."""
    proc = subprocess.run(
        ["sha256sum", "--check", "--quiet", "--strict"],
        input=sha256sum_check_input(manifest).encode(),
        capture_output=True,
        check=False,
    )
    return proc.returncode, (proc.stdout + proc.stderr).decode()


def test_sha256sum_check_input_is_one_line_per_file(tmp_path: Path) -> None:
    (tmp_path / "b").write_bytes(b"bee")
    (tmp_path / "a").write_bytes(b"ay")
    manifest = checksum_manifest([str(tmp_path)])
    assert sha256sum_check_input(manifest) == (
        f"{sha256(b'ay')}  {tmp_path}/a\n{sha256(b'bee')}  {tmp_path}/b\n"
    )


def test_sha256sum_problems_of_a_real_check(tmp_path: Path) -> None:
    files = {
        "changed": b"before",
        "missing": b"gone",
        "same file": b"same",
        "new\nline": b"newline, same",
        "other\nline": b"newline, changed",
        "back\\slash": b"backslash, changed",
        "gone\nwith a newline": b"missing",
    }
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    manifest = checksum_manifest([str(tmp_path)])
    assert len(manifest) == len(files)
    assert check_there(manifest) == (0, "")  # escaped names read back as they are
    assert sha256sum_problems(0, "", manifest) == []
    (tmp_path / "changed").write_bytes(b"after")
    (tmp_path / "missing").unlink()
    (tmp_path / "other\nline").write_bytes(b"flipped")
    (tmp_path / "back\\slash").write_bytes(b"flipped")
    (tmp_path / "gone\nwith a newline").unlink()
    rc, output = check_there(manifest)
    assert rc == 1
    assert sha256sum_problems(rc, output, manifest) == [
        f"{tmp_path}/back\\slash: sha256 differs from the source's {sha256(b'backslash, changed')}",
        f"{tmp_path}/changed: sha256 differs from the source's {sha256(b'before')}",
        f"{tmp_path}/gone\nwith a newline: missing on the destination",
        f"{tmp_path}/missing: missing on the destination",
        f"{tmp_path}/other\nline: sha256 differs from the source's {sha256(b'newline, changed')}",
    ]


def test_sha256sum_problems_when_it_names_no_file() -> None:
    manifest = {"/i/1/pages-1.img": {"size": 1, "sha256": "ab"}}
    warnings = "sha256sum: WARNING: 1 line is improperly formatted\n"
    assert sha256sum_problems(1, warnings, manifest) == [
        "sha256sum --check exited 1 checking 1 files"
    ]
    assert sha256sum_problems(127, "sh: 1: sha256sum: not found\n", manifest) == [
        "sh: 1: sha256sum: not found"
    ]
    assert sha256sum_problems(-1, "", manifest) == ["sha256sum --check exited -1 checking 1 files"]


def test_request_from_options_fills_the_defaults() -> None:
    made = request_from_options(
        {"destination": "10.77.0.12", "ssh_port": None, "destination_user": None},
        ["/i/1", "/w"],
        verify=True,
        ssh_options=["ControlPath=/tmp/x/master"],
    )
    assert made.paths == ["/i/1", "/w"]
    assert (made.method, made.user, made.ssh_port, made.compress, made.compress_level) == (
        "rsync",
        "root",
        22,
        "none",
        3,
    )
    assert (made.ssh_key, made.known_hosts, made.cipher, made.efs_path) == ("", "", "", "")
    assert made.verify is True and made.ssh_options == ["ControlPath=/tmp/x/master"]
    given = request_from_options(
        {"method": "efs", "destination_user": "ubuntu", "ssh_port": 2222, "efs_path": "/mnt/efs"},
        [],
    )
    assert (given.method, given.user, given.ssh_port, given.efs_path) == (
        "efs",
        "ubuntu",
        2222,
        "/mnt/efs",
    )


# -- the corrupt_image fault's script -----------------------------------------------------------


def corrupt(folder: Path) -> subprocess.CompletedProcess[str]:
    """As the module runs it: `sh -c SCRIPT corrupt FOLDER`."""
    return subprocess.run(
        ["sh", "-c", CORRUPT_PAGE_IMAGE_SH, "corrupt", str(folder)],
        capture_output=True,
        text=True,
        check=False,
    )


def test_corrupt_flips_the_middle_byte_of_the_largest_page_image(tmp_path: Path) -> None:
    images = tmp_path / "images dir"
    images.mkdir()
    pattern = bytes(i % 251 for i in range(5001))
    (images / "pages-1.img").write_bytes(b"\1" * 100)
    (images / "pages-2.img").write_bytes(pattern)
    (images / "pages-3.img").write_bytes(b"\2" * 3000)
    (images / "core-1.img").write_bytes(b"\3" * 9000)  # larger, but not a page image
    done = corrupt(images)
    assert done.returncode == 0, done.stderr
    target = images / "pages-2.img"
    offset = 5001 // 2
    old = pattern[offset]
    assert parse_corruption(done.stdout) == {
        "file": str(target),
        "offset": offset,
        "old": old,
        "new": old ^ 255,
    }
    after = target.read_bytes()
    assert len(after) == len(pattern)
    assert after[offset] == old ^ 255
    assert after[:offset] == pattern[:offset] and after[offset + 1 :] == pattern[offset + 1 :]
    assert (images / "pages-1.img").read_bytes() == b"\1" * 100
    assert (images / "core-1.img").read_bytes() == b"\3" * 9000


@pytest.mark.parametrize("byte", [0, 10, 37, 92, 255])
def test_corrupt_flips_any_byte_value(tmp_path: Path, byte: int) -> None:
    # NUL, newline, '%' and '\\' pass through the script's printf untouched
    (tmp_path / "pages-1.img").write_bytes(bytes([7, byte, 7]))
    assert corrupt(tmp_path).returncode == 0
    assert (tmp_path / "pages-1.img").read_bytes() == bytes([7, byte ^ 255, 7])


def test_corrupt_without_a_page_image_fails_naming_the_folder(tmp_path: Path) -> None:
    (tmp_path / "core-1.img").write_bytes(b"core")
    done = corrupt(tmp_path)
    assert done.returncode == 1
    assert done.stderr.strip() == f"no page image (pages-*.img) in {tmp_path} to corrupt"
    assert done.stdout == ""
    (tmp_path / "pages-1.img").write_bytes(b"")  # only an empty one: nothing to flip
    assert corrupt(tmp_path).returncode == 1
    assert corrupt(tmp_path / "absent").returncode == 1


def test_parse_corruption() -> None:
    assert parse_corruption("/i/1/pages-2.img 2500 65 190\n") == {
        "file": "/i/1/pages-2.img",
        "offset": 2500,
        "old": 65,
        "new": 190,
    }
    assert parse_corruption("something else\n") == {"output": "something else"}
    assert parse_corruption("") == {"output": ""}
    assert parse_corruption("/i/1/pages-2.img 2500 x 190") == {
        "output": "/i/1/pages-2.img 2500 x 190"
    }
    assert parse_corruption("/images dir/pages-2.img 7 0 255") == {
        "file": "/images dir/pages-2.img",
        "offset": 7,
        "old": 0,
        "new": 255,
    }
