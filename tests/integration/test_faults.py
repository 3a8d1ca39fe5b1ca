"""The fault matrix (issue 17): real faults during real migrations in the local lab.

Each test makes one fault happen for real on the default, fused critical path
(library/critical_path.py, critical_path=fused) - the control node killed or interrupted, the
destination's link taken down after the freeze, a dump that fails half way, a disk too small or
one that fills, a port another process holds - and ends with the same end-state check
(`assert_one_running_copy`): the workload runs on exactly one host, its progress.log sequence
going on; its logs are in the results and the results folder is marked; the hosts keep no
image, no experiment lock, no CRIU network lock, and a working directory only where the
workload runs. Each registers with the `fault_matrix` fixture, and the session's summary says
`N faults, 0 workloads lost`.

A test that changes the lab (a link down, a smaller disk, a port held) restores it in a
finaliser. The lab's hosts are read and changed from the control node through their
namespaces: /proc/<init>/root is a host's file system (its private tmpfs included),
/proc/<init>/root/proc its processes, `nsenter -t <init> -n` its network.

Also here: one experiment per host at a time (two runs on one lab), and a workload that dies
of its own error (item 6).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from conftest import (
    LAB_INVENTORY,
    LOCK_FILE,
    MIGRATION_ROOT,
    REPO,
    VENV_BIN,
    assert_no_secrets,
    lab_host_inits,
    run_playbook,
    suite_env,
)
from helpers import IMAGES_ROOT, WORK_ROOT

pytestmark = pytest.mark.lab

# Small, quick migrations; nothing to observe after the restore (the faults are before it).
SMALL_MEMORY = {
    "workload": "memory",
    "mb_size": 16,
    "interval": 0.5,
    "max_memory": 48,
    "post_restore_capture_s": 0,
    # a destination that stops answering is given up on soon (roles/critical_path)
    "critical_path_reach_timeout_s": 5,
}
SMALL_REDIS = {**SMALL_MEMORY, "workload": "redis", "num_keys": 2000, "value_size": 64}
# The critical path's journal lines that end a call (library/critical_path.py).
CALL_ENDED = ("done", "stopped")
MIGRATION_TIMEOUT_S = 600
RESULT_SUFFIXES = ("_failed", "_exception", "_interrupted")


# -- the lab's hosts, seen from the control node ------------------------------------------------


@dataclass(frozen=True)
class Host:
    name: str
    init: int  # the host's init: PID 1 of its namespaces

    def path(self, path: str) -> Path:
        """A path of the host's own file system (its private mounts included)."""
        return Path(f"/proc/{self.init}/root") / path.lstrip("/")

    def processes(self) -> dict[int, tuple[str, list[str]]]:
        """The host's processes (host PIDs): state and argv."""
        found: dict[int, tuple[str, list[str]]] = {}
        for entry in self.path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_text()
                argv = (entry / "cmdline").read_bytes().decode(errors="replace").split("\0")
            except OSError:
                continue
            found[int(entry.name)] = (stat.rsplit(")", 1)[1].split()[0], argv)
        return found

    def run(self, namespace: str, *argv: str, check: bool = True) -> str:
        """A command in one of the host's namespaces (`-n` network, `-m` mounts)."""
        proc = subprocess.run(
            ["nsenter", "-t", str(self.init), namespace, "--", *argv],
            capture_output=True,
            text=True,
            check=False,
        )
        assert not check or proc.returncode == 0, proc.stderr
        return proc.stdout


@pytest.fixture(scope="module")
def hosts(lab: Path) -> dict[str, Host]:
    """The lab's source and destination (their inits, from the lab's state)."""
    return {name: Host(name, init) for name, init in lab_host_inits(lab).items()}


def destination_link(hosts: dict[str, Host]) -> str:
    """The control side of the destination's link (the veth whose peer is its eth0)."""
    index = hosts["destination"].path("/sys/class/net/eth0/iflink").read_text().strip()
    for line in subprocess.run(
        ["ip", "-o", "link"], capture_output=True, text=True
    ).stdout.splitlines():
        number, name = line.split(":")[:2]
        if number.strip() == index:
            return name.strip().split("@")[0]
    raise AssertionError(f"no link with index {index}")


# -- a migration run in the background, killable like a control node ----------------------------


@dataclass
class Migration:
    proc: subprocess.Popen[bytes]
    results_root: Path
    control_dir: Path
    log: Path

    def results_dir(self) -> Path:
        found = (
            [p for p in self.results_root.iterdir() if p.is_dir()]
            if self.results_root.exists()
            else []
        )
        assert len(found) == 1, found
        return found[0]

    def journal(self) -> dict[str, Any]:
        return json.loads((self.results_dir() / "journal.json").read_text())

    def journal_so_far(self) -> dict[str, Any]:
        """journal.json once the run has written it ({} before that, or while half written)."""
        try:
            return self.journal()
        except (AssertionError, OSError, ValueError):
            return {}

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait(self, timeout: float = MIGRATION_TIMEOUT_S) -> int:
        rc = self.proc.wait(timeout=timeout)
        shutil.rmtree(self.control_dir, ignore_errors=True)  # masters left go idle and end
        return rc

    def kill(self, number: signal.Signals) -> float:
        """The control node dies (SIGKILL: Ansible, its workers and its SSH connections) or
        is interrupted (SIGINT: Ctrl-C reaches its foreground process group)."""
        killed_at = time.time()
        os.killpg(self.proc.pid, number)
        if number == signal.SIGKILL:  # the SSH masters Ansible left behind (its own session)
            for entry in Path("/proc").iterdir():
                try:
                    argv = (entry / "cmdline").read_bytes()
                except OSError:
                    continue
                if entry.name.isdigit() and str(self.control_dir).encode() in argv:
                    os.kill(int(entry.name), signal.SIGKILL)
        self.proc.wait(timeout=60)
        shutil.rmtree(self.control_dir, ignore_errors=True)
        return killed_at


def start_migration(tmp_path: Path, extravars: dict[str, Any]) -> Migration:
    """migrate.yml as a control node runs it, in a process group of its own."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    results_root = tmp_path / "results"
    # SSH's control sockets must fit a Unix socket path (108 bytes, ssh adds ~28): pytest's
    # tmp_path under an xdist worker is too long for that
    control_dir = Path(tempfile.mkdtemp(prefix="crcp-", dir="/tmp"))
    variables = tmp_path / "vars.json"
    variables.write_text(json.dumps({"results_root": str(results_root), **extravars}))
    log = tmp_path / "ansible.log"
    env = {**suite_env(), "ANSIBLE_SSH_CONTROL_PATH_DIR": str(control_dir)}
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [str(VENV_BIN / "ansible-playbook"), "migrate.yml", "-e", f"@{variables}"],
            cwd=REPO,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return Migration(proc, results_root, control_dir, log)


def wait_until(what: str, done: Callable[[], Any], timeout: float, interval: float = 0.02) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = done()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")


def call_journal(hosts: dict[str, Host], migration: Migration) -> list[dict[str, Any]]:
    """The critical path's own journal on the source (critical-path.journal), so far."""
    pair = migration.journal_so_far().get("pair")
    if not pair:
        return []
    path = hosts["source"].path(pair["critical_path_journal"])
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return []
    return [json.loads(line) for line in lines if line.endswith("}")]


def journal_lines(path: Path) -> list[dict[str, Any]]:
    """A critical-path journal the results collected."""
    return [json.loads(line) for line in path.read_text().splitlines()]


def wait_for_step(hosts: dict[str, Host], migration: Migration, step: str) -> None:
    """Until the critical path journals `step` (the run must still be going)."""

    def reached() -> bool:
        assert migration.proc.poll() is None, f"the run ended first:\n{migration.output()[-3000:]}"
        return step in [line["step"] for line in call_journal(hosts, migration)]

    wait_until(f"the critical path's '{step}'", reached, MIGRATION_TIMEOUT_S)


# -- where the workload is, and the end-state check -------------------------------------------------


def copies(hosts: dict[str, Host], experiment_id: str) -> dict[str, list[tuple[int, str]]]:
    """The experiment's workload roots on each host: (PID, state)."""
    found: dict[str, list[tuple[int, str]]] = {}
    for name, host in hosts.items():
        found[name] = [
            (pid, state)
            for pid, (state, argv) in host.processes().items()
            if len(argv) > 1
            and argv[1].endswith("_standalone.py")
            and any(arg.endswith(f"/work/{experiment_id}") for arg in argv)
            and state not in ("Z", "X")
        ]
    return found


def progress(host: Host, working_dir: str) -> list[dict[str, Any]]:
    text = host.path(f"{working_dir}/progress.log").read_text()
    return [json.loads(line) for line in text.splitlines() if line.endswith("}")]


def assert_one_running_copy(
    outcome: Any,
    hosts: dict[str, Host],
    journal: dict[str, Any],
    results: Path,
    where: str,
) -> None:
    """The end-state check of every fault test, recorded for the session's summary: the
    workload runs on exactly one host (`where`), not stopped, its progress.log sequence going
    on there; its logs are in the results, whose folder is marked; the hosts keep no image,
    no lock, no CRIU network lock, and its working directory only where it runs; no secret
    (key material, the lab's credentials) reached the results."""
    experiment, pair = journal["experiment"], journal["pair"]
    found = copies(hosts, experiment)
    running = {name: procs for name, procs in found.items() if procs}
    outcome.where = ", ".join(f"{name}: {procs}" for name, procs in running.items()) or "nowhere"
    outcome.checked = True
    outcome.lost = list(running) != [where] or len(running[where]) != 1
    assert not outcome.lost, f"the workload should run on {where} only: {found}"
    ((_pid, state),) = running[where]
    assert state not in ("T", "t"), f"the workload is stopped on {where}"
    host = hosts[where]
    before = progress(host, pair["working_dir"])
    wait_until(
        "the progress.log sequence to go on",
        lambda: len(progress(host, pair["working_dir"])) > len(before) + 1,
        30,
        0.2,
    )
    after = progress(host, pair["working_dir"])
    seqs = [line["seq"] for line in after]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), "progress.log has a gap"
    assert after[-1]["host"] == where
    # its logs in the results, the folder marked
    assert results.name.endswith(RESULT_SUFFIXES), results
    assert (results / "source" / "progress.log").stat().st_size > 0
    assert (results / "journal.json").exists()
    assert_no_secrets(results, inventory=LAB_INVENTORY)
    # the hosts keep what a running workload needs, nothing else (issue 17, item 7)
    for name, other in hosts.items():
        assert not other.path(pair["checkpoint_dir"]).exists(), f"images left on {name}"
        assert not other.path(pair["lock_file"]).exists(), f"an experiment lock left on {name}"
        assert other.path(pair["working_dir"]).exists() == (name == where), name
        tables = other.run("-n", "nft", "list", "tables", check=False)
        assert "CRIU-" not in tables, f"a CRIU network lock left on {name}: {tables}"


@pytest.fixture
def cleanup(hosts: dict[str, Host]) -> Iterator[list[str]]:
    """Experiments to clear at the end whatever happened: the workload told to finish (then
    killed), its folders and lock removed on both hosts."""
    experiments: list[str] = []
    yield experiments
    for experiment in experiments:
        for host in hosts.values():
            work = host.path(f"{WORK_ROOT}/{experiment}")
            (work / "checkpoint_flag").unlink(missing_ok=True)
        try:
            wait_until(
                "the workload to finish",
                lambda e=experiment: not any(copies(hosts, e).values()),
                20,
                0.2,
            )
        except AssertionError:
            for name, procs in copies(hosts, experiment).items():
                for pid, _state in procs:
                    hosts[name].run("-p", "kill", "-CONT", str(pid), check=False)
                    hosts[name].run("-p", "kill", "-KILL", str(pid), check=False)
        for host in hosts.values():
            for folder in (WORK_ROOT, IMAGES_ROOT):
                subprocess.run(
                    ["rm", "-rf", str(host.path(f"{folder}/{experiment}"))],
                    check=False,
                )
            lock = host.path(LOCK_FILE)
            if lock.exists() and experiment in lock.read_text():
                lock.unlink()


def recover(tmp_path: Path, results: Path) -> Any:
    """playbooks/recover.yml on a run's journal (where a refusal tells to run it)."""
    run = run_playbook(
        tmp_path / "recover", "playbooks/recover.yml", {"journal": str(results / "journal.json")}
    )
    assert run.rc == 0, run.stdout[-4000:]
    return run


# -- the control node killed or interrupted ---------------------------------------------------


@pytest.mark.parametrize(
    ("trigger", "number", "second_run"),
    [
        pytest.param("dump started", signal.SIGKILL, True, id="sigkill-during-the-dump"),
        pytest.param("dumped", signal.SIGKILL, False, id="sigkill-during-the-transfer"),
        pytest.param("done", signal.SIGKILL, False, id="sigkill-between-restore-and-verification"),
        pytest.param("dumped", signal.SIGINT, True, id="ctrl-c-during-the-transfer"),
    ],
)
def test_the_control_node_killed(
    lab: Path,
    tmp_path: Path,
    hosts: dict[str, Host],
    fault_matrix: Any,
    cleanup: list[str],
    trigger: str,
    number: signal.Signals,
    second_run: bool,
) -> None:
    """The fused call runs on without the control node (detached from its SSH session) and
    completes the migration; the hosts stay locked until playbooks/recover.yml, which finds
    the workload on the destination, collects the logs and marks the results folder."""
    outcome = fault_matrix(f"control node {number.name} at '{trigger}'")
    migration = start_migration(tmp_path / "run", {**SMALL_MEMORY, "mb_size": 32})
    wait_for_step(hosts, migration, trigger)
    killed_at = migration.kill(number)
    journal = migration.journal()
    cleanup.append(journal["experiment"])
    # the call goes on alone and ends it; its journal says where the workload went
    lines = wait_until(
        "the critical path to end without the control node",
        lambda: (
            (found := call_journal(hosts, migration)) and found[-1]["step"] in CALL_ENDED and found
        ),
        120,
        0.2,
    )
    steps = [line["step"] for line in lines]
    assert steps[-1] == "done" and lines[-1]["where"] == "destination", lines
    if trigger == "dump started":  # the kill came while CRIU dumped
        assert killed_at < next(line["at"] for line in lines if line["step"] == "dumped")
    results = migration.results_dir()
    if number == signal.SIGKILL:  # the run never reached its end: no suffix yet
        assert not results.name.endswith(RESULT_SUFFIXES), results

    if second_run:  # the next experiment on these hosts is refused while this one is unfinished
        refused = run_playbook(tmp_path / "second", "migrate.yml", SMALL_MEMORY)
        assert refused.rc != 0
        assert f"is busy: experiment {journal['experiment']}" in refused.stdout
        assert f"playbooks/recover.yml -e journal={results}/journal.json" in refused.stdout
        second = json.loads((refused.only_results_dir() / "journal.json").read_text())
        assert second["pid"] is None  # refused in the node checks, before its workload started

    recovered = recover(tmp_path, results)
    assert "runs on the destination destination" in recovered.stdout
    if not results.name.endswith(RESULT_SUFFIXES):
        results = results.with_name(results.name + "_interrupted")
    after = json.loads((results / "journal.json").read_text())
    assert after["location"] == "destination" and after["recovered_at"]
    assert after["critical_path"]["restored"] is True
    assert (results / "dest" / "progress.log").exists()
    assert (results / "source" / "critical-path.journal").exists()
    assert_one_running_copy(outcome, hosts, journal, results, "destination")


# -- the destination lost after the freeze ------------------------------------------------------


@pytest.mark.parametrize("page_server", [False, True], ids=["rsync", "page-server"])
def test_the_destination_unreachable_after_the_freeze(
    lab: Path,
    tmp_path: Path,
    hosts: dict[str, Host],
    fault_matrix: Any,
    cleanup: list[str],
    page_server: bool,
) -> None:
    """Its link goes down once the dump is done (with page_server=true the pages are then only
    on the destination): the source's tree, which the dump left stopped (--leave-stopped),
    runs on where it was. The destination, unreachable during the cleanup, keeps its lock and
    the partial checkpoint until playbooks/recover.yml clears it once the link is back."""
    outcome = fault_matrix(
        f"destination unreachable after the freeze ({'page server' if page_server else 'rsync'})"
    )
    link = destination_link(hosts)
    migration = start_migration(tmp_path / "run", {**SMALL_MEMORY, "page_server": page_server})
    try:
        wait_for_step(hosts, migration, "dumped")
        subprocess.run(["ip", "link", "set", link, "down"], check=True)
        rc = migration.wait()
    finally:
        subprocess.run(["ip", "link", "set", link, "up"], check=True)
    journal = migration.journal()
    cleanup.append(journal["experiment"])
    assert rc != 0
    output = migration.output()
    assert "the workload runs again on the source source, where it was" in output
    results = migration.results_dir()
    lines = journal_lines(results / "source" / "critical-path.journal")
    assert [line["step"] for line in lines][-2:] == ["source resumed", "stopped"], lines
    assert lines[-1]["where"] == "source"
    if page_server:  # the pages went to the destination during the dump
        assert "--page-server" in lines[0]["plan"]["dump"]
    assert json.loads((results / "journal.json").read_text())["location"] == "source"
    # the destination was left alone: its lock stays until a recovery
    assert hosts["destination"].path(journal["pair"]["lock_file"]).exists()
    address = journal["pair"]["destination_address"]
    wait_until("the destination to answer again", lambda: answers(address), 60, 0.5)
    recovered = recover(tmp_path, results)
    assert "runs on the source source" in recovered.stdout
    assert_one_running_copy(outcome, hosts, journal, results, "source")


def answers(address: str) -> bool:
    """Whether the host's sshd answers (its link is up again)."""
    try:
        socket.create_connection((address, 22), timeout=1).close()
    except OSError:
        return False
    return True


# -- the dump failing half way; CRIU's network lock left behind -----------------------------------


def client_socket(status: str) -> str:
    """The redis client's TCP socket (socket:[inode]) in a workload_status snapshot."""
    for line in status.splitlines():
        if "ESTABLISHED" in line and "-> 127.0.0.1:6379" in line and "socket:[" in line:
            return line[line.index("socket:[") :].split()[0]
    raise AssertionError(f"no client connection in:\n{status}")


def established(host: Host, pid: int) -> set[str]:
    """The sockets of `pid` that are established TCP connections (socket:[inode])."""
    inodes = set()
    for table in ("tcp", "tcp6"):
        for line in host.path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "01":  # TCP_ESTABLISHED
                inodes.add(f"socket:[{fields[9]}]")
    fds = host.path(f"/proc/{pid}/fd")
    return {os.readlink(fd) for fd in fds.iterdir()} & inodes


def test_a_dump_that_fails_half_way_leaves_the_workload_running_with_its_connections(
    lab: Path, tmp_path: Path, hosts: dict[str, Host], fault_matrix: Any, cleanup: list[str]
) -> None:
    """inject_fault=dump_fails: a CRIU action script fails at the final dump's post-dump stage
    (every image written, the tree frozen, the network locked): CRIU undoes the dump, and the
    redis client goes on over the connection it had before the freeze (the same socket)."""
    outcome = fault_matrix("the final dump fails half way (redis)")
    run = run_playbook(tmp_path, "migrate.yml", {**SMALL_REDIS, "inject_fault": "dump_fails"})
    results = run.only_results_dir()
    journal = json.loads((results / "journal.json").read_text())
    cleanup.append(journal["experiment"])
    assert run.rc != 0 and results.name.endswith("_failed")
    metrics = json.loads((results / "metrics.json").read_text())
    assert metrics["failure"]["phase"] == "final_dump"
    assert "the workload runs again on the source source, where it was" in metrics["failure"]["msg"]
    assert "post-dump" in (results / "source" / "criu-dump.log").read_text()
    assert journal["location"] == "source"
    before = client_socket((results / "source" / "workload_status_pre_dump.txt").read_text())
    pid = metrics["workload"]["source_pid"]
    assert before in established(hosts["source"], pid), "the client's connection was not kept"
    assert_one_running_copy(outcome, hosts, journal, results, "source")


def test_a_network_lock_left_by_a_killed_dump_is_removed(
    lab: Path, tmp_path: Path, hosts: dict[str, Host], fault_matrix: Any, cleanup: list[str]
) -> None:
    """inject_fault=dump_crashes: CRIU itself is killed half way through the final dump of a
    TCP workload; the kernel lets the tree run on, but CRIU's network lock (an nftables
    table) and the sockets' repair mode stay behind - the critical path removes them (the
    client, which met its connection in repair mode first, reconnects)."""
    outcome = fault_matrix("CRIU killed half way through a TCP dump: network lock left (redis)")
    run = run_playbook(tmp_path, "migrate.yml", {**SMALL_REDIS, "inject_fault": "dump_crashes"})
    results = run.only_results_dir()
    journal = json.loads((results / "journal.json").read_text())
    cleanup.append(journal["experiment"])
    assert run.rc != 0 and results.name.endswith("_failed")
    lines = journal_lines(results / "source" / "critical-path.journal")
    resumed = next(line for line in lines if line["step"] == "source resumed")
    # the lock was really there, and removed: nft list ruleset shows no CRIU table
    assert resumed["lock_removed"] and resumed["lock_removed"][0].startswith("CRIU-"), resumed
    assert "CRIU-" not in hosts["source"].run("-n", "nft", "list", "ruleset")
    assert_one_running_copy(outcome, hosts, journal, results, "source")


# -- disks ------------------------------------------------------------------------------------------


@pytest.fixture
def small_destination_disk(hosts: dict[str, Host]) -> Iterator[Callable[[str], None]]:
    """Remount the destination's experiment disk (a tmpfs) at a size; restored afterwards."""
    destination = hosts["destination"]
    mounts = Path(f"/proc/{destination.init}/mounts").read_text().splitlines()
    options = next(m.split()[3] for m in mounts if m.split()[1] == MIGRATION_ROOT)
    size = next(o for o in options.split(",") if o.startswith("size="))

    def remount(new: str) -> None:
        destination.run("-m", "mount", "-o", f"remount,size={new}", MIGRATION_ROOT)

    yield remount
    remount(size.removeprefix("size="))


def test_a_destination_disk_too_small_is_refused_before_the_freeze(
    lab: Path,
    tmp_path: Path,
    hosts: dict[str, Host],
    fault_matrix: Any,
    cleanup: list[str],
    small_destination_disk: Callable[[str], None],
) -> None:
    """The destination's disk holds less than the workload's resident memory: refused by the
    critical path's space check, before the freeze."""
    outcome = fault_matrix("destination disk too small")
    small_destination_disk("16m")
    run = run_playbook(tmp_path, "migrate.yml", SMALL_MEMORY)
    results = run.only_results_dir()
    journal = json.loads((results / "journal.json").read_text())
    cleanup.append(journal["experiment"])
    assert run.rc != 0
    assert "not enough space for the checkpoint on the destination" in run.stdout
    assert "nothing was frozen" in run.stdout
    steps = [line["step"] for line in journal_lines(results / "source" / "critical-path.journal")]
    assert "dump started" not in steps, steps
    assert_one_running_copy(outcome, hosts, journal, results, "source")


def test_a_destination_disk_that_fills_anyway_is_rolled_back(
    lab: Path,
    tmp_path: Path,
    hosts: dict[str, Host],
    fault_matrix: Any,
    cleanup: list[str],
    small_destination_disk: Callable[[str], None],
) -> None:
    """inject_fault=disk_full: after the space check passed, the destination's disk fills (in
    the lab a tmpfs made small first); the transfer fails with ENOSPC, the source's stopped
    tree runs on, and the partial checkpoint leaves the destination, whose disk is free again."""
    outcome = fault_matrix("destination disk fills after the check")
    small_destination_disk("160m")
    run = run_playbook(tmp_path, "migrate.yml", {**SMALL_MEMORY, "inject_fault": "disk_full"})
    results = run.only_results_dir()
    journal = json.loads((results / "journal.json").read_text())
    cleanup.append(journal["experiment"])
    assert run.rc != 0
    assert "No space left on device" in run.stdout
    assert journal["location"] == "source"
    free = os.statvfs(hosts["destination"].path(MIGRATION_ROOT))
    assert free.f_bfree == free.f_blocks or free.f_bfree / free.f_blocks > 0.99  # emptied
    assert_one_running_copy(outcome, hosts, journal, results, "source")


# -- ports --------------------------------------------------------------------------------------


@pytest.fixture
def hold_port(hosts: dict[str, Host]) -> Iterator[Callable[[str, int], None]]:
    """A listener on a port in a host's network (this test's own process), stopped after."""
    holders: list[subprocess.Popen[bytes]] = []

    def hold(host: str, port: int) -> None:
        script = (
            "import socket, sys, time\n"
            "s = socket.socket()\n"
            f"s.bind(('0.0.0.0', {port}))\n"
            "s.listen()\n"
            "print('listening', flush=True)\n"
            "time.sleep(900)\n"
        )
        holder = subprocess.Popen(
            ["nsenter", "-t", str(hosts[host].init), "-n", "--", "python3", "-c", script],
            stdout=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
        )
        holders.append(holder)
        assert holder.stdout is not None and holder.stdout.readline() == b"listening\n"

    yield hold
    for holder in holders:
        holder.kill()
        holder.wait()


def test_a_busy_page_server_port_is_refused_before_the_start(
    lab: Path, tmp_path: Path, hosts: dict[str, Host], fault_matrix: Any, hold_port: Any
) -> None:
    """Another process listens on the page server's port on the destination: the node checks
    refuse the experiment before the workload starts (nothing to lose, nothing left)."""
    outcome = fault_matrix("page server port taken before the start")
    hold_port("destination", 27000)
    run = run_playbook(tmp_path, "migrate.yml", {**SMALL_MEMORY, "page_server": True})
    results = run.only_results_dir()
    journal = json.loads((results / "journal.json").read_text())
    assert run.rc != 0
    assert "27000" in run.stdout and "page_server_port" in run.stdout
    assert journal["pid"] is None  # never started
    outcome.checked, outcome.where = True, "not started"
    outcome.lost = any(copies(hosts, journal["experiment"]).values())
    assert not outcome.lost
    for host in hosts.values():
        assert not host.path(journal["pair"]["lock_file"]).exists()
        assert not host.path(journal["pair"]["working_dir"]).exists()


def test_a_page_server_port_taken_after_the_checks_rolls_back(
    lab: Path,
    tmp_path: Path,
    hosts: dict[str, Host],
    fault_matrix: Any,
    cleanup: list[str],
    hold_port: Any,
) -> None:
    """The port is taken after the node checks, once the workload runs: the page server
    cannot start, before the freeze, and the workload runs on at the source."""
    outcome = fault_matrix("page server port taken after the checks")
    migration = start_migration(tmp_path / "run", {**SMALL_MEMORY, "page_server": True})
    wait_until(
        "the workload to start",
        lambda: migration.proc.poll() is None and migration.journal_so_far().get("pid"),
        MIGRATION_TIMEOUT_S,
        0.05,
    )
    hold_port("destination", 27000)
    assert migration.wait() != 0
    journal = migration.journal()
    cleanup.append(journal["experiment"])
    results = migration.results_dir()
    metrics = json.loads((results / "metrics.json").read_text())
    assert "page-server" in metrics["failure"]["msg"] or "27000" in metrics["failure"]["msg"]
    assert_one_running_copy(outcome, hosts, journal, results, "source")


# -- one experiment per host at a time (item 2) ---------------------------------------------------


def test_a_second_experiment_towards_busy_hosts_is_refused(
    lab: Path, tmp_path: Path, hosts: dict[str, Host], cleanup: list[str]
) -> None:
    first = start_migration(tmp_path / "first", {**SMALL_MEMORY, "post_restore_capture_s": 3})

    def first_holds_the_lock() -> dict[str, Any] | None:
        assert first.proc.poll() is None, f"the first run ended unlocked:\n{first.output()[-3000:]}"
        journal = first.journal_so_far()
        locked = "pair" in journal and hosts["source"].path(journal["pair"]["lock_file"]).exists()
        return journal if locked else None

    lock = wait_until("the first run's lock", first_holds_the_lock, MIGRATION_TIMEOUT_S, 0.05)
    cleanup.append(lock["experiment"])
    second = run_playbook(tmp_path / "second", "migrate.yml", SMALL_MEMORY)
    assert second.rc != 0
    assert f"is busy: experiment {lock['experiment']}" in second.stdout
    refused = json.loads((second.only_results_dir() / "journal.json").read_text())
    assert refused["pid"] is None
    assert first.wait() == 0, first.output()[-4000:]
    assert json.loads((first.results_dir() / "metrics.json").read_text())["status"] == "ok"
    for host in hosts.values():  # released at the end (the refused run took nothing)
        assert not host.path(lock["pair"]["lock_file"]).exists()


# -- a workload that dies says why (item 6) -------------------------------------------------------


def test_a_workload_that_dies_mid_run_says_why(
    lab: Path, tmp_path: Path, hosts: dict[str, Host], cleanup: list[str]
) -> None:
    """inject_fault=workload_dies: after it was ready, while strace is attached, the memory
    workload's next allocation fails (its address space capped); the summary and
    metrics.json show the tail of its workload_error.log, and the failure message and the
    journal agree: it runs nowhere, it died."""
    run = run_playbook(
        tmp_path,
        "migrate.yml",
        {**SMALL_MEMORY, "max_memory": 256, "inject_fault": "workload_dies"},
    )
    results = run.only_results_dir()
    journal = json.loads((results / "journal.json").read_text())
    cleanup.append(journal["experiment"])
    assert run.rc != 0 and results.name.endswith("_failed")
    metrics = json.loads((results / "metrics.json").read_text())
    died = metrics["workload_error"]
    assert died["host"] == "source" and died["pid"] == metrics["workload"]["source_pid"]
    assert died["error_tail"].splitlines()[-1] == "MemoryError"
    assert "Workload died on source" in run.stdout and "  MemoryError" in run.stdout
    assert "runs nowhere: it died on the source source" in run.stdout
    assert journal["location"] == "nowhere (it died on the source)"
    assert (results / "source" / "workload_error.log").read_text().strip().endswith("MemoryError")
    # nothing to keep: it died of its own error
    assert not any(copies(hosts, journal["experiment"]).values())
    for host in hosts.values():
        for key in ("working_dir", "checkpoint_dir", "lock_file"):
            assert not host.path(journal["pair"][key]).exists(), (host.name, key)
