"""library/critical_path.py run in-process the way Ansible runs it, with stand-ins for the tools.

Source and destination are this host (the destination's paths are the source's, as in a
migration): `criu` is a script that writes images and a stats image on a dump and a pidfile
on a restore; `ssh` emulates OpenSSH's connection sharing (fakes.FAKE_SSH: a master
that runs until `-O exit`, channels that run their command with `sh -c` only while it is
up); `rsync` only reports what it would send (the files are "there" already). Every tool
appends its argv to one events file, so the tests read what ran, and in which order.

Also here: how metrics_report turns the module's figures (and the stepwise path's) into the
downtime and the orchestration gap (critical_path_figures, migration_window, on_source_clock).
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import platform
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import critical_path
import pytest
from criu_stats import summarize_stats_image
from expected import CRITICAL_PATH_STEPS_DONE, journal_steps
from fakes import CRIU_STATS, install_fake_ssh, install_script, master_pids, run_ansible_module
from metrics_report import (
    PairRecord,
    build_metrics,
    clock_offsets,
    critical_path_figures,
    migration_window,
    on_source_clock,
)
from processes import ProcessFiles, is_alive

RESTORED_PID = 4242
# what the fake dump writes: page images of these sizes (pages-2 the largest), a core image
PAGE_IMAGES = {"pages-1.img": 4096, "pages-2.img": 3 * 4096, "pages-3.img": 2 * 4096}


def pattern(size: int) -> bytes:
    return bytes(i % 251 for i in range(size))


FAKE_CRIU = r"""#!@PYTHON@ -S
import json, os, shutil, sys, time

args = sys.argv[1:]
with open(os.environ["FAKE_EVENTS"], "a") as events:
    events.write(json.dumps({"criu": sys.argv}) + "\n")


def opt(name):
    return args[args.index(name) + 1] if name in args else None


action, images, log = args[0], opt("--images-dir"), opt("--log-file")
stats = os.environ["FAKE_CRIU_STATS"]
time.sleep(float(os.environ.get("FAKE_CRIU_SLEEP", "0.05")))
if os.environ.get("FAKE_CRIU_FAIL") == action:
    with open(log, "w") as out:
        out.write("(00.000301) Error (criu/util.c:1534): rlimit: Can't setup RLIMIT_NOFILE "
                  "for self: Operation not permitted\n")
        out.write("(00.010220) Error (" + os.environ["FAKE_CRIU_ERROR"] + "\n")
        out.write("(00.010500) Error (criu/cr-" + action + ".c:2111): " + action + " FAILED.\n")
    print(action + " failed, see the log", file=sys.stderr)
    sys.exit(1)
if action == "dump":
    for name, size in json.loads(os.environ["FAKE_PAGE_IMAGES"]).items():
        with open(os.path.join(images, name), "wb") as out:
            out.write(bytes(i % 251 for i in range(size)))
    with open(os.path.join(images, "core-1.img"), "wb") as out:
        out.write(b"core" * 16)
    shutil.copy(os.path.join(stats, "stats-dump"), os.path.join(images, "stats-dump"))
    with open(log, "w") as out:
        out.write("(00.020000) Dumping finished successfully\n")
elif action == "restore":
    with open(opt("--pidfile"), "w") as out:
        out.write("@PID@\n")
    target = os.path.join(images, "stats-restore")
    if os.environ.get("FAKE_CRIU_BAD_STATS"):
        with open(target, "wb") as out:
            out.write(b"not a stats image")
    else:
        shutil.copy(os.path.join(stats, "stats-restore"), target)
    with open(log, "w") as out:
        out.write("(00.030000) Restore finished successfully\n")
elif action == "lazy-pages":
    with open(opt("--pidfile"), "w") as out:
        out.write("5151\n")
sys.exit(0)
"""

# rsync stand-in: the destination is this host, so the files are there; it reports them.
FAKE_RSYNC = r"""#!@PYTHON@ -S
import json, os, sys

with open(os.environ["FAKE_EVENTS"], "a") as events:
    events.write(json.dumps({"rsync": sys.argv}) + "\n")
words, skip = [], False
for arg in sys.argv[1:]:
    if skip:
        skip = False
    elif arg in ("--rsh", "--rsync-path"):
        skip = True
    elif not arg.startswith("-"):
        words.append(arg)
size = files = 0
for source in words[:-1]:
    for folder, _dirs, names in os.walk(source):
        for name in names:
            size += os.path.getsize(os.path.join(folder, name))
            files += 1
print(f"Number of regular files transferred: {files}")
print(f"Total file size: {size:,} bytes")
print(f"Total transferred file size: {size:,} bytes")
print(f"Total bytes sent: {size + 100:,}")
"""


@dataclass
class Lab:
    base: Path
    temp: Path
    events: Path
    masters: Path
    src_criu: Path
    dest_criu: Path
    images: Path
    work: Path
    # a live stand-in for the workload: the module checks before the freeze that it runs
    workload_pid: int = 0

    @property
    def journal(self) -> Path:
        return self.base / "journal" / "critical-path.journal"

    def args(self, **overrides: Any) -> dict[str, Any]:
        logs = self.base / "logs"
        args: dict[str, Any] = {
            "criu_bin": str(self.src_criu),
            "dump": {
                "pid": self.workload_pid,
                "images_dir": str(self.images),
                "log_file": str(logs / "criu-dump.log"),
            },
            "paths": [str(self.images), str(self.work)],
            "transfer": {
                "method": "rsync",
                "destination": "dest.example",
                "ssh_key": str(self.base / "id_ed25519"),
                "known_hosts": str(self.base / "known_hosts"),
                "cipher": "aes128-gcm@openssh.com",
            },
            "restore": {
                "criu_bin": str(self.dest_criu),
                "images_dir": str(self.images),
                "log_file": str(logs / "criu-restore.log"),
                "pidfile": str(self.base / "restored.pid"),
            },
            "journal": str(self.journal),
            "timeout": 30,
        }
        args.update(overrides)
        return args


@pytest.fixture
def lab(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest) -> Lab:
    bin_dir, dest_sbin, temp = tmp_path / "bin", tmp_path / "dest-sbin", tmp_path / "tmp"
    for folder in (bin_dir, dest_sbin, temp):
        folder.mkdir()
    scripts = {
        bin_dir / "criu": FAKE_CRIU,
        dest_sbin / "criu": FAKE_CRIU,  # the destination's own binary (restore.criu_bin)
        bin_dir / "rsync": FAKE_RSYNC,
    }
    for path, text in scripts.items():
        install_script(path, text.replace("@PYTHON@", sys.executable).replace("@PID@", "4242"))
    events = tmp_path / "events.jsonl"
    install_fake_ssh(monkeypatch, bin_dir, log=events, masters=tmp_path / "masters", temp=temp)
    monkeypatch.setenv("FAKE_EVENTS", str(events))
    monkeypatch.setenv("FAKE_CRIU_STATS", str(CRIU_STATS))
    monkeypatch.setenv("FAKE_PAGE_IMAGES", json.dumps(PAGE_IMAGES))
    work = tmp_path / "work"
    (work / "sub").mkdir(parents=True)
    (work / "state.txt").write_text("counter=41\n")
    (work / "sub" / "b.txt").write_text("bee\n")
    images = tmp_path / "images" / "1"
    images.mkdir(parents=True)  # the dump's folder (the role makes it)
    stand_in = subprocess.Popen(["sleep", "600"], stdin=subprocess.DEVNULL)
    request.addfinalizer(lambda: (stand_in.kill(), stand_in.wait()))
    return Lab(
        workload_pid=stand_in.pid,
        base=tmp_path,
        temp=temp,
        events=events,
        masters=tmp_path / "masters",
        src_criu=bin_dir / "criu",
        dest_criu=dest_sbin / "criu",
        images=images,
        work=work,
    )


run_module = functools.partial(run_ansible_module, critical_path)


def events(lab: Lab) -> list[tuple[str, list[str]]]:
    if not lab.events.exists():
        return []
    found: list[tuple[str, list[str]]] = []
    for line in lab.events.read_text().splitlines():
        entry = json.loads(line)
        found.append(("ssh", entry) if isinstance(entry, list) else next(iter(entry.items())))
    return found


def story(lab: Lab) -> list[str]:
    """What ran, in order, in a few words (the master's polls left out)."""
    told = []
    for tool, argv in events(lab):
        if tool == "ssh" and "ControlMaster=yes" in argv:
            told.append("ssh master")
        elif tool == "ssh" and "-O" in argv:
            if argv[argv.index("-O") + 1] != "check":
                told.append(f"ssh -O {argv[argv.index('-O') + 1]}")
        elif tool == "ssh":
            command = shlex.split(" ".join(argv[argv.index("--") + 1 :]))
            if command[:2] == ["sh", "-c"] and command[2].startswith("umask "):
                command = command[4:]  # run under the private umask (private_files.umasked)
            told.append(f"ssh: {os.path.basename(command[0])}")
        elif tool == "criu":
            told.append(f"criu {argv[1]}")
        else:
            told.append(tool)
    return told


def criu_calls(lab: Lab) -> list[list[str]]:
    return [argv for tool, argv in events(lab) if tool == "criu"]


def records(result: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {
        item["migration_metrics"]["phase"]: item["migration_metrics"]["data"]
        for item in result["results"]
    }


def phases(result: dict[str, Any]) -> list[str]:
    return [item["migration_metrics"]["phase"] for item in result["results"]]


def assert_master_closed(lab: Lab) -> None:
    pids = master_pids(lab.masters)
    assert not [pid for pid in pids if is_alive(pid)], "a master ssh was left running"
    assert not list(lab.temp.glob("criu-cp-*")), "the master's control folder was left"


def assert_timeline(result: dict[str, Any]) -> None:
    """Steps in order, one after the other, on one clock starting at the dump's start."""
    steps = result["steps"]
    assert list(steps) == ["dump", "transfer", "restore"]
    assert steps["dump"][0] == 0.0
    order = [*steps["dump"], *steps["transfer"], *steps["restore"]]
    assert order == sorted(order)
    for start, end in steps.values():
        assert start < end
    downtime = result["downtime_s"]
    assert downtime == steps["restore"][1]
    data = result["migration_metrics"]["data"]
    assert result["migration_metrics"]["phase"] == "critical_path"
    assert data["downtime_s"] == downtime and data["steps"] == steps
    phases_s = sum(end - start for start, end in steps.values())
    assert data["phases_s"] == pytest.approx(phases_s, abs=1e-6)
    assert abs(data["orchestration_gap_s"] - (downtime - phases_s)) <= 1e-6
    assert data["orchestration_gap_s"] >= -1e-6  # the time between the steps
    assert "the source" in data["clock"]


# -- the plan; check mode --------------------------------------------------------------------


def test_check_mode_reports_the_plan_and_runs_nothing(
    lab: Lab, capsys: pytest.CaptureFixture[str]
) -> None:
    args = lab.args()
    args["dump"].update(
        track_mem=True,
        prev_images_dir="../0",
        page_server=True,
        address="10.77.0.12",
        port=27000,
        tcp_established=True,
        network_lock="skip",
        file_locks=True,
    )
    args["restore"].update(lazy_pages=True, tcp_established=True, network_lock="nftables")
    rc, result = run_module({**args, "_ansible_check_mode": True}, capsys)
    assert rc == 0, result
    assert result["changed"] is True
    images, logs = str(lab.images), lab.base / "logs"
    assert result["plan"] == {
        "dump": [
            str(lab.src_criu), "dump",
            "--images-dir", images, "--log-file", str(logs / "criu-dump.log"), "-v4",
            "--tree", str(lab.workload_pid), "--prev-images-dir", "../0", "--track-mem",
            "--page-server", "--address", "10.77.0.12", "--port", "27000",
            "--file-locks", "--tcp-established", "--network-lock", "skip",
        ],
        "restore": [
            str(lab.dest_criu), "restore",
            "--images-dir", images, "--log-file", str(logs / "criu-restore.log"), "-v4",
            "--lazy-pages", "--restore-detached", "--pidfile", str(lab.base / "restored.pid"),
            "--tcp-established", "--network-lock", "nftables",
        ],
    }  # fmt: skip
    # nothing ran: no CRIU, no ssh, not even the journal's folder
    assert events(lab) == []
    assert not (lab.base / "journal").exists()
    assert not (lab.base / "logs").exists()


def test_the_plan_of_a_network_post_copy_dump(lab: Lab) -> None:
    args = lab.args(criu_bin=None)
    args["dump"].update(lazy_pages=True, address="10.77.0.11", port=27001)
    del args["restore"]["criu_bin"]
    module = SimpleNamespace(
        params=args, get_bin_path=lambda name, required, opt_dirs: f"/usr/local/sbin/{name}"
    )
    plan = critical_path.CriticalPath(module).plan()  # type: ignore[arg-type]
    assert plan["dump"][:2] == ["/usr/local/sbin/criu", "dump"]
    assert plan["dump"][-5:] == ["--lazy-pages", "--address", "10.77.0.11", "--port", "27001"]
    # the destination's criu from its PATH when restore.criu_bin is not given
    assert plan["restore"][:2] == ["criu", "restore"]
    assert "--address" not in plan["restore"] and "--lazy-pages" not in plan["restore"]


def test_options_criu_cannot_take_fail_before_anything_runs(
    lab: Lab, capsys: pytest.CaptureFixture[str]
) -> None:
    args = lab.args()
    del args["dump"]["pid"]
    rc, result = run_module(args, capsys)
    assert rc == 1 and result["failed"] is True
    assert "criu dump needs the pid of the process tree" in result["msg"]
    assert events(lab) == []


def test_a_network_post_copy_dump_needs_its_pidfile(
    lab: Lab, capsys: pytest.CaptureFixture[str]
) -> None:
    args = lab.args()
    args["dump"]["lazy_pages"] = True
    rc, result = run_module(args, capsys)
    assert rc == 1
    assert result["msg"] == "a network post-copy dump (dump.lazy_pages) needs lazy_dump_pidfile"
    assert events(lab) == []


# -- a whole run ------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["rsync", "efs"])
def test_dump_transfer_restore_on_one_clock(
    lab: Lab, capsys: pytest.CaptureFixture[str], method: str
) -> None:
    args = lab.args()
    if method == "efs":  # the images on the shared filesystem; the working dir staged there
        efs = lab.base / "efs"
        lab.images = efs / "images" / "1"
        lab.images.mkdir(parents=True)
        args = lab.args()
        args["transfer"] = {"method": "efs", "efs_path": str(efs), "efs_dir": str(efs / "e1")}
    rc, result = run_module(args, capsys)
    assert rc == 0, result
    assert result["changed"] is True
    assert (result["dumped"], result["restored"]) == (True, True)
    assert_timeline(result)
    assert_master_closed(lab)

    # what ran, in order: the master before the freeze, its channels after, closed last
    middle = ["rsync"] if method == "rsync" else ["rsync", "ssh: rsync", "rsync"]
    assert story(lab) == [
        "ssh master",
        "ssh: mkdir",
        "ssh: df",  # the space check, before the freeze
        "criu dump",
        *middle,
        "ssh: criu",
        "criu restore",
        "ssh: cat",  # the restored PID
        "ssh: cat",  # stats-restore
        "ssh -O exit",
    ]
    dump_argv, restore_argv = criu_calls(lab)
    assert dump_argv == result["plan"]["dump"] and dump_argv[0] == str(lab.src_criu)
    # the restore ran with the destination's criu, its argv intact through ssh and sh
    assert restore_argv == result["plan"]["restore"] and restore_argv[0] == str(lab.dest_criu)
    control = next(a for tool, a in events(lab) if tool == "ssh" and "ControlMaster=yes" in a)
    control_path = next(o for o in control if o.startswith("ControlPath="))
    for tool, argv in events(lab):
        if tool == "ssh":
            assert control_path in argv
    if method == "rsync":  # the transfer's ssh is a channel of the master too
        [rsync] = [argv for tool, argv in events(lab) if tool == "rsync"]
        rsh = rsync[rsync.index("--rsh") + 1]
        assert f"-o {control_path} -o ControlMaster=no" in rsh
        assert "-c aes128-gcm@openssh.com" in rsh

    assert phases(result) == ["final_dump", "transfer", "restore"]
    steps, data = result["steps"], records(result)
    dump = data["final_dump"]
    assert dump["images_dir"] == str(lab.images) and dump["cmd"] == dump_argv
    assert dump["stats"] == summarize_stats_image(CRIU_STATS / "stats-dump")["dump"]
    assert dump["duration_s"] == pytest.approx(steps["dump"][1] - steps["dump"][0], abs=2e-6)
    assert dump["started_at"] <= dump["finished_at"]
    sent = data["transfer"]
    assert sent["method"] == method and sent["stage"] == "final"
    assert sent["verify"] == "off"
    assert sent["duration_s"] <= steps["transfer"][1] - steps["transfer"][0] + 1e-6
    assert sent["started_at"] >= dump["finished_at"]
    if method == "rsync":
        assert sent["dest_paths"] == sorted(args["paths"])
        assert sent["files"] == len(PAGE_IMAGES) + 4  # pages, core, stats-dump, 2 working files
    else:
        assert sent["receive"]["files"] >= 0 and sent["dest_paths"] == sorted(args["paths"])
    restored = data["restore"]
    assert (restored["clock"], restored["ran_on"]) == ("source", "destination")
    assert restored["pid"] == RESTORED_PID
    assert restored["cmd"] == restore_argv
    assert restored["stats"] == summarize_stats_image(CRIU_STATS / "stats-restore")["restore"]
    assert restored["duration_s"] == pytest.approx(
        steps["restore"][1] - steps["restore"][0], abs=2e-6
    )
    assert restored["started_at"] >= sent["started_at"]
    assert result["restore"] == restored

    assert journal_steps(lab.journal) == CRITICAL_PATH_STEPS_DONE
    journal = [json.loads(line) for line in Path(args["journal"]).read_text().splitlines()]
    assert journal[0]["plan"] == result["plan"]
    assert journal[-1]["downtime_s"] == result["downtime_s"]
    assert [j["monotonic"] for j in journal] == sorted(j["monotonic"] for j in journal)


def test_the_lazy_pages_daemon_starts_there_before_the_restore(
    lab: Lab, capsys: pytest.CaptureFixture[str]
) -> None:
    args = lab.args()
    args["restore"]["lazy_pages"] = True
    daemon_pidfile = lab.base / "lazy-pages.pid"
    args["lazy_pages_daemon"] = {
        "images_dir": str(lab.images),
        "log_file": str(lab.base / "logs" / "lazy-pages.log"),
        "pidfile": str(daemon_pidfile),
    }
    rc, result = run_module(args, capsys)
    assert rc == 0, result
    assert story(lab)[4:10] == [
        "rsync",
        "ssh: criu",
        "criu lazy-pages",
        "ssh: cat",
        "ssh: sh",
        "ssh: criu",
    ]
    assert "--lazy-pages" in criu_calls(lab)[-1]
    # what criu_daemon state=stopped reads, written there through the channel's stdin
    meta = ProcessFiles.at(daemon_pidfile).read_meta()
    assert (meta["daemon"], meta["pid"], meta["images_dir"]) == (
        "lazy-pages",
        5151,
        str(lab.images),
    )
    assert_timeline(result)
    assert_master_closed(lab)


@pytest.mark.env(FAKE_CRIU_BAD_STATS="1")
def test_a_bad_stats_image_does_not_hide_a_done_restore(
    lab: Lab, capsys: pytest.CaptureFixture[str]
) -> None:
    rc, result = run_module(lab.args(), capsys)
    assert rc == 0, result
    assert result["restored"] is True
    restored = records(result)["restore"]
    assert restored["stats"] == {} and restored["pid"] == RESTORED_PID
    assert restored["stats_error"]
    assert_master_closed(lab)


# -- failures ---------------------------------------------------------------------------------


@pytest.mark.env(
    FAKE_CRIU_FAIL="dump", FAKE_CRIU_ERROR="criu/files-reg.c:1710): Can't lookup mount=22"
)
def test_a_failed_dump_stops_before_the_transfer(
    lab: Lab, capsys: pytest.CaptureFixture[str]
) -> None:
    rc, result = run_module(lab.args(), capsys)
    assert rc == 1 and result["failed"] is True
    assert result["failed_phase"] == "final_dump"
    assert (result["dumped"], result["restored"]) == (False, False)
    assert result["downtime_s"] is None and result["restore"] == {}
    assert result["msg"].startswith("criu dump failed on ")
    assert (
        "(rc=1): (00.010220) Error (criu/files-reg.c:1710): Can't lookup mount=22"
        in (result["msg"])
    )
    # CRIU's log, and where the workload is: CRIU undid the dump, the tree runs on
    assert result["msg"].endswith(
        f"log: {lab.base / 'logs' / 'criu-dump.log'}; the workload runs again on the source "
        f"{platform.node()}, where it was"
    )
    assert phases(result) == ["final_dump"]
    assert records(result)["final_dump"]["failed"] is True
    assert list(result["steps"]) == ["dump"] and result["steps"]["dump"][0] == 0.0
    data = result["migration_metrics"]["data"]
    assert (data["dumped"], data["restored"], data["orchestration_gap_s"]) == (False, False, None)
    assert story(lab) == ["ssh master", "ssh: mkdir", "ssh: df", "criu dump", "ssh -O exit"]
    assert journal_steps(lab.journal) == ["prepared", "dump started", "dump failed", "stopped"]
    assert_master_closed(lab)


def test_a_failed_restore_says_why_from_the_destinations_log(
    lab: Lab, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_CRIU_FAIL", "restore")
    monkeypatch.setenv(
        "FAKE_CRIU_ERROR", "criu/cr-restore.c:1442): Can't fork for 4242: File exists"
    )
    args = lab.args()
    rc, result = run_module(args, capsys)
    assert rc == 1
    assert result["failed_phase"] == "restore"
    assert (result["dumped"], result["restored"]) == (True, False)
    restore_log = args["restore"]["log_file"]
    assert result["msg"] == (
        "criu restore failed on the destination (rc=1): (00.010220) Error "
        f"(criu/cr-restore.c:1442): Can't fork for 4242: File exists; log: {restore_log}"
    )
    assert phases(result) == ["final_dump", "transfer", "restore"]
    failed = records(result)["restore"]
    assert (failed["failed"], failed["rc"], failed["clock"]) == (True, 1, "source")
    assert "Can't fork for 4242: File exists" in failed["log_tail"]
    assert result["downtime_s"] is None and result["restore"] == {}
    assert list(result["steps"]) == ["dump", "transfer", "restore"]
    assert story(lab)[-3:] == ["criu restore", "ssh: cat", "ssh -O exit"]  # the log, read there
    assert journal_steps(lab.journal)[-3:] == ["restore started", "restore failed", "stopped"]
    assert_master_closed(lab)


@pytest.mark.env(FAKE_SSH_REFUSE="1")
def test_a_master_that_cannot_open_fails_before_the_freeze(
    lab: Lab, capsys: pytest.CaptureFixture[str]
) -> None:
    rc, result = run_module(lab.args(), capsys)
    assert rc == 1
    assert result["failed_phase"] == "critical_path"
    assert (result["dumped"], result["restored"]) == (False, False)
    assert "refused the master connection" in result["msg"]
    assert "Permission denied (publickey)." in result["msg"]
    assert result["msg"].endswith("(before the freeze: the workload runs on the source as before)")
    assert criu_calls(lab) == []  # the dump never ran
    assert result["results"] == [] and result["steps"] == {}
    assert journal_steps(lab.journal) == ["stopped"]
    assert_master_closed(lab)


def test_a_checksum_mismatch_stops_before_the_restore(
    lab: Lab, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    state, gone = lab.work / "state.txt", lab.work / "sub" / "b.txt"
    source_digest = hashlib.sha256(state.read_bytes()).hexdigest()
    # the destination's copy differs from the source's by the time it is checked
    monkeypatch.setenv("FAKE_DEST_TAMPER", f"echo 42 >> {state}; rm {gone}")
    rc, result = run_module(lab.args(verify=True), capsys)
    assert rc == 1
    assert result["failed_phase"] == "transfer"
    assert (result["dumped"], result["restored"]) == (True, False)
    problems = [
        f"{state}: sha256 differs from the source's {source_digest}",
        f"{gone}: missing on the destination",
    ]
    assert result["msg"] == (
        "checksum mismatch on the destination after the rsync transfer, so the restore is not "
        f"attempted: {'; '.join(problems)}"
    )
    verify = records(result)["transfer"]["verify"]
    assert (verify["ok"], verify["mismatches"]) == (False, problems)
    assert verify["files"] == len(PAGE_IMAGES) + 4
    assert phases(result) == ["final_dump", "transfer"]
    assert "criu restore" not in story(lab)
    assert story(lab)[4:] == ["rsync", "ssh: sha256sum", "ssh -O exit"]
    assert journal_steps(lab.journal)[-2:] == ["transfer verification failed", "stopped"]
    assert_master_closed(lab)


def test_verified_files_that_match_let_the_restore_run(
    lab: Lab, capsys: pytest.CaptureFixture[str]
) -> None:
    rc, result = run_module(lab.args(verify=True), capsys)
    assert rc == 0, result
    verify = records(result)["transfer"]["verify"]
    assert (verify["ok"], verify["mismatches"], verify["algorithm"]) == (True, [], "sha256")
    assert verify["destination_s"] >= 0
    assert_timeline(result)
    assert_master_closed(lab)


def test_corrupt_image_flips_a_byte_of_the_largest_page_image_there(
    lab: Lab, capsys: pytest.CaptureFixture[str]
) -> None:
    rc, result = run_module(lab.args(verify=True, fault="corrupt_image"), capsys)
    assert rc == 1
    largest = lab.images / "pages-2.img"
    size = PAGE_IMAGES["pages-2.img"]
    offset, original = size // 2, pattern(size)
    old = original[offset]
    assert phases(result) == ["final_dump", "fault", "transfer"]
    assert records(result)["fault"] == {
        "fault": "corrupt_image",
        "corrupted": {"file": str(largest), "offset": offset, "old": old, "new": old ^ 255},
    }
    flipped = largest.read_bytes()
    assert len(flipped) == size and flipped[offset] == old ^ 255
    assert flipped[:offset] + flipped[offset + 1 :] == original[:offset] + original[offset + 1 :]
    # the check on the destination sees it, and the restore is not attempted
    assert result["failed_phase"] == "transfer"
    digest = hashlib.sha256(original).hexdigest()
    assert result["msg"].endswith(f"{largest}: sha256 differs from the source's {digest}")
    assert story(lab)[4:] == ["rsync", "ssh: sh", "ssh: sha256sum", "ssh -O exit"]
    assert_master_closed(lab)


def test_an_unexpected_error_still_reports_the_dump(
    lab: Lab, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*_args: Any, **_kwargs: Any) -> Any:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(critical_path, "transfer_send", broken)
    rc, result = run_module(lab.args(), capsys)
    assert rc == 1
    assert result["failed_phase"] == "transfer"
    assert result["dumped"] is True and result["restored"] is False  # the rescue needs this
    assert result["msg"] == (
        "unexpected error during the transfer step: OSError: [Errno 28] No space left on device"
    )
    assert story(lab)[-2:] == ["criu dump", "ssh -O exit"]
    assert journal_steps(lab.journal)[-2:] == ["dumped", "stopped"]
    assert_master_closed(lab)


# -- metrics: downtime on one clock, and the orchestration gap ---------------------------------


def clocked_pair(restore: dict[str, Any], restore_host: str = "dst") -> PairRecord:
    """A stepwise run: dump at 1000.0 (source's clock), a pre-dump transfer and the final
    one, the restore on `restore_host`; the destination's clock 100 s ahead (+- 0.15 s)."""
    pair = PairRecord("src", "dst", "/results")
    pair.add("clock", {"host_time": 500.1, "control_start": 500.0, "control_end": 500.2}, "src")
    pair.add("clock", {"host_time": 700.05, "control_start": 600.0, "control_end": 600.1}, "dst")
    pair.add("final_dump", {"started_at": 1000.0, "duration_s": 0.5}, "src")
    pair.add("transfer", {"stage": "predump-1", "duration_s": 9.0}, "src")
    pair.add("transfer", {"stage": "final", "duration_s": 1.0}, "src")
    pair.add("restore", {"duration_s": 0.6, **restore}, restore_host)
    return pair


def test_stepwise_downtime_corrects_the_destinations_clock() -> None:
    pair = clocked_pair({"finished_at": 1102.5})
    offsets = clock_offsets(pair)
    assert offsets["destination_minus_source_s"] == pytest.approx(100.0, abs=1e-9)
    assert offsets["uncertainty_s"] == pytest.approx(0.15, abs=1e-9)
    figures = critical_path_figures(pair, offsets)
    assert figures["path"] == "stepwise"
    assert figures["downtime_s"] == pytest.approx(2.5, abs=1e-6)  # 1102.5 - 100 - 1000
    assert figures["phases_s"] == pytest.approx(2.1, abs=1e-6)  # the final transfer only
    assert figures["orchestration_gap_s"] == pytest.approx(0.4, abs=1e-6)
    assert figures["uncertainty_s"] == offsets["uncertainty_s"]
    assert figures["offset_applied_s"] == offsets["destination_minus_source_s"]
    assert "corrected by the measured clock offset" in figures["clock"]
    assert migration_window(pair, None, offsets) == (1000.0, pytest.approx(1002.5))
    assert migration_window(pair, 990.0, offsets) == (990.0, pytest.approx(1002.5))
    metrics = build_metrics({}, pair, 900.0, 1200.0)
    assert metrics["downtime_s"] == pytest.approx(2.5, abs=1e-6)
    assert metrics["orchestration_gap_s"] == figures["orchestration_gap_s"]
    assert metrics["migration_s"] == pytest.approx(2.5, abs=1e-6)
    assert metrics["deadline_clock"]["stopped_at"] == "1970-01-01T00:16:42.500Z"
    assert metrics["critical_path"] == figures


def test_stepwise_without_a_measured_offset_says_nothing_was_corrected() -> None:
    pair = clocked_pair({"finished_at": 1002.5})
    pair.phases.pop("clock")
    offsets = clock_offsets(pair)
    figures = critical_path_figures(pair, offsets)
    assert figures["downtime_s"] == pytest.approx(2.5, abs=1e-6)
    assert figures["offset_applied_s"] == 0.0
    assert figures["uncertainty_s"] is None  # two clocks, their difference unknown
    assert "not corrected" in figures["clock"]


def test_a_restore_timed_on_the_source_is_not_corrected() -> None:
    restore = {"finished_at": 1002.5, "clock": "source", "ran_on": "destination"}
    pair = clocked_pair(restore, restore_host="dst")
    offsets = clock_offsets(pair)
    assert on_source_clock(pair.last("restore"), "finished_at", offsets) == 1002.5
    assert migration_window(pair, None, offsets) == (1000.0, 1002.5)
    figures = critical_path_figures(pair, offsets)
    assert figures["downtime_s"] == pytest.approx(2.5, abs=1e-6)
    assert (figures["offset_applied_s"], figures["uncertainty_s"]) == (0.0, 0.0)
    assert figures["clock"] == "the source's"


def test_on_source_clock() -> None:
    offsets = {"destination_host": "dst", "destination_minus_source_s": 100.0}
    assert on_source_clock({"host": "dst", "finished_at": 150.0}, "finished_at", offsets) == 50.0
    assert on_source_clock({"host": "src", "finished_at": 150.0}, "finished_at", offsets) == 150.0
    timed_here = {"host": "dst", "clock": "source", "finished_at": 150.0}
    assert on_source_clock(timed_here, "finished_at", offsets) == 150.0
    assert on_source_clock({"host": "dst"}, "finished_at", offsets) is None
    # no offset measured: the stamp as it is
    assert on_source_clock({"host": "dst", "finished_at": 150.0}, "finished_at", {}) == 150.0


def test_fused_downtime_is_the_modules_own() -> None:
    pair = clocked_pair(
        {"finished_at": 1001.95, "clock": "source", "ran_on": "destination"}, restore_host="src"
    )
    steps = {"dump": [0.0, 0.5], "transfer": [0.55, 1.55], "restore": [1.6, 1.9]}
    pair.add(
        "critical_path",
        {
            "path": "fused",
            "clock": "monotonic clock of src (the source)",
            "downtime_s": 1.9,
            "steps": steps,
        },
        "src",
    )
    offsets = clock_offsets(pair)  # measured, and not used: one clock
    figures = critical_path_figures(pair, offsets)
    assert figures["path"] == "fused"
    assert figures["downtime_s"] == 1.9
    assert figures["uncertainty_s"] == 0.0
    assert figures["clock"] == "monotonic clock of src (the source)"
    assert figures["steps"] == steps
    assert figures["phases_s"] == pytest.approx(2.1, abs=1e-6)  # the records' durations
    assert figures["orchestration_gap_s"] == pytest.approx(1.9 - 2.1, abs=1e-6)
    assert "offset_applied_s" not in figures
    assert migration_window(pair, None, offsets) == (1000.0, 1001.95)
    metrics = build_metrics({}, pair, 900.0, 1200.0)
    assert metrics["downtime_s"] == 1.9
    assert metrics["migration_s"] == pytest.approx(1.95, abs=1e-6)


def test_a_failed_fused_call_has_no_downtime() -> None:
    pair = PairRecord("src", "dst", "/results")
    pair.add("final_dump", {"started_at": 1000.0, "duration_s": 0.5}, "src")
    pair.add("critical_path", {"path": "fused", "downtime_s": None, "steps": {}}, "src")
    figures = critical_path_figures(pair, clock_offsets(pair))
    assert figures["path"] == "fused"
    assert (figures["downtime_s"], figures["orchestration_gap_s"]) == (None, None)
    assert figures["phases_s"] == 0.5
