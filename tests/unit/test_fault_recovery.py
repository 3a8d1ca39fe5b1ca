"""The pieces that keep a workload alive through a fault (issue 17), without the lab.

- module_utils/source_tree.py: the dumped tree left stopped on the source - found, resumed
  (TCP repair mode off, CRIU's network lock removed, SIGCONT) or ended - on real processes
  and a real TCP connection of this test;
- module_utils/detached.py: work that outlives the module that started it;
- module_utils/recovery_plan.py: who holds a host, what the source's journal says;
- library/experiment_lock.py, library/workload_tree.py: run as Ansible runs them;
- library/critical_path.py with dump.leave_stopped and its space check (the stand-ins of
  test_critical_path.py);
- a workload that died, in metrics.json and the summary (module_utils/metrics_report.py).
"""

from __future__ import annotations

import functools
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import detached
import experiment_lock
import fault_inject
import pytest
import recovery_plan
import source_tree
import workload_tree
from fakes import run_ansible_module
from processes import is_alive, process_state, wait_until

# -- real processes to work on ------------------------------------------------------------------


@pytest.fixture
def tree() -> Iterator[subprocess.Popen[bytes]]:
    """A shell with a child: a two-process tree, like a workload with a helper."""
    proc = subprocess.Popen(["sh", "-c", "sleep 600 & wait"], stdin=subprocess.DEVNULL)
    assert wait_until(lambda: len(source_tree.tree_pids(proc.pid)) == 2, 5)
    yield proc
    for pid in source_tree.tree_pids(proc.pid):
        os.kill(pid, signal.SIGCONT)
        os.kill(pid, signal.SIGKILL)
    proc.wait()


class FakeNft:
    """`nft` as source_tree runs it: a list of tables, and what was deleted."""

    def __init__(self, tables: list[str]) -> None:
        self.tables = list(tables)
        self.calls: list[list[str]] = []

    def __call__(self, argv: list[str]) -> tuple[int, str, str]:
        self.calls.append(argv)
        if argv[:3] == ["nft", "list", "tables"]:
            return 0, "".join(f"table inet {name}\n" for name in self.tables), ""
        if argv[:3] == ["nft", "delete", "table"]:
            self.tables.remove(argv[4])
            return 0, "", ""
        return 1, "", f"unexpected {argv}"


RUN_ID = "6ef809af-2ca8-4f3e-9e4d-0c4b1e6f2f83"
TABLE = "CRIU-6ef809af-2ca8-4f3e-9e"  # the run id cut to a table name's length


def test_the_tree_is_the_root_and_its_descendants(tree: subprocess.Popen[bytes]) -> None:
    pids = source_tree.tree_pids(tree.pid)
    assert pids[0] == tree.pid and len(pids) == 2
    assert source_tree.tree_pids(2**22 + 1) == []  # no such process


def test_memory_is_anonymous_and_shared_resident_memory(tmp_path: Path) -> None:
    for pid, anon, shmem in ((10, 1000, 24), (11, 500, 0)):
        (tmp_path / str(pid)).mkdir()
        (tmp_path / str(pid) / "status").write_text(
            f"Name:\tx\nVmRSS:\t99999 kB\nRssAnon:\t{anon} kB\nRssFile:\t5000 kB\n"
            f"RssShmem:\t{shmem} kB\n"
        )
    assert source_tree.memory_bytes([10, 11, 12], proc=str(tmp_path)) == 1524 * 1024


def test_the_lock_table_is_named_by_the_dumps_run_id() -> None:
    log = f"(00.000000) CRIU run id = {RUN_ID}\n(00.000100) Version: 4.2.1\n"
    assert source_tree.dump_run_id(log) == RUN_ID
    listing = f"table inet filter\ntable inet {TABLE}\ntable inet CRIU-aaaaaaaa-0000\n"
    assert source_tree.lock_tables(listing, RUN_ID) == [TABLE]
    assert source_tree.lock_tables(listing) == [TABLE, "CRIU-aaaaaaaa-0000"]


def test_only_this_runs_lock_is_removed_and_none_without_a_run_id() -> None:
    nft = FakeNft(["filter", TABLE, "CRIU-aaaaaaaa-0000"])
    assert source_tree.remove_lock(nft, None)["removed"] == []
    assert nft.calls == []
    assert source_tree.remove_lock(nft, RUN_ID) == {"removed": [TABLE], "error": ""}
    assert nft.tables == ["filter", "CRIU-aaaaaaaa-0000"]


def test_a_stopped_tree_is_resumed_and_its_lock_removed(tree: subprocess.Popen[bytes]) -> None:
    pids = source_tree.tree_pids(tree.pid)
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    assert wait_until(lambda: source_tree.is_stopped(source_tree.tree_states(pids)), 5)
    nft = FakeNft([TABLE])
    done = source_tree.resume(tree.pid, nft, RUN_ID)
    assert done["resumed"] is True and done["pids"] == pids
    assert done["lock_removed"] == [TABLE] and done["sockets_repaired"] == []
    assert not source_tree.is_stopped(source_tree.tree_states(pids))


def test_a_stopped_tree_is_ended_once_the_destination_runs_it(
    tree: subprocess.Popen[bytes],
) -> None:
    pids = source_tree.tree_pids(tree.pid)
    os.kill(tree.pid, signal.SIGSTOP)
    nft = FakeNft([TABLE])
    done = source_tree.kill(tree.pid, nft, RUN_ID)  # our child's zombie counts as gone
    assert done["gone"] is True and done["pids"] == pids and done["lock_removed"] == [TABLE]


@pytest.fixture
def repaired_connection() -> Iterator[tuple[socket.socket, socket.socket]]:
    """A TCP connection of this process whose client end is in repair mode, as a dump leaves it."""
    server = socket.create_server(("127.0.0.1", 0))
    client = socket.create_connection(server.getsockname())
    peer, _ = server.accept()
    try:
        client.setsockopt(socket.IPPROTO_TCP, source_tree.TCP_REPAIR, 1)
    except PermissionError:
        pytest.skip("capability: no CAP_NET_ADMIN here: TCP repair mode cannot be set")
    yield client, peer
    for sock in (client, peer, server):
        sock.close()


def test_repair_mode_is_turned_off_and_the_connection_works_again(
    repaired_connection: tuple[socket.socket, socket.socket],
) -> None:
    client, peer = repaired_connection
    done = source_tree.repair_off([os.getpid()])
    assert done["error"] == ""
    assert [s["fd"] for s in done["sockets"]] == [client.fileno()]
    assert client.getsockopt(socket.IPPROTO_TCP, source_tree.TCP_REPAIR) == 0
    client.sendall(b"still here")
    peer.settimeout(5)
    assert peer.recv(64) == b"still here"


# -- detached work ----------------------------------------------------------------------------


def test_detached_work_returns_its_result(tmp_path: Path) -> None:
    def work() -> dict[str, Any]:
        return {"pid": os.getpid(), "session": os.getsid(0)}

    result = detached.run_detached(work, tmp_path / "result.json")
    assert result["pid"] != os.getpid()
    assert result["session"] == result["pid"]  # its own session: no SIGHUP from ours
    assert json.loads((tmp_path / "result.json").read_text()) == result


def test_detached_work_that_fails_or_dies_says_so(tmp_path: Path) -> None:
    def fails() -> dict[str, Any]:
        raise RuntimeError("half way")

    assert detached.run_detached(fails, tmp_path / "r1.json") == {
        "failed": True,
        "msg": "RuntimeError: half way",
    }

    def dies() -> dict[str, Any]:
        os.kill(os.getpid(), signal.SIGKILL)
        return {}

    died = detached.run_detached(dies, tmp_path / "r2.json")
    assert died["failed"] is True and "ended without a result (status -9)" in died["msg"]


def test_detached_work_ignores_the_session_hangup(tmp_path: Path) -> None:
    def work() -> dict[str, Any]:
        os.kill(os.getpid(), signal.SIGHUP)
        os.kill(os.getpid(), signal.SIGPIPE)
        return {"survived": True}

    assert detached.run_detached(work, tmp_path / "r.json") == {"survived": True}


# -- who holds a host, what the journal says -----------------------------------------------------

HOLDER = {
    "experiment": "memory_20261206_100000-abc123",
    "results_dir": "/r/memory_20261206_100000",
    "critical_path_journal": "/var/lib/criu-migration/images/x/critical-path.journal",
    "side": "destination",
    "source": "source",
    "control_host": "bastion",
    "taken_at": "2026-12-06T10:00:05Z",
}


def test_a_busy_host_is_refused_naming_the_experiment_and_the_recovery() -> None:
    text = recovery_plan.lock_refusal("destination", HOLDER, exists=lambda path: False)
    assert text.startswith("destination is busy: experiment memory_20261206_100000-abc123")
    assert "started on bastion at 2026-12-06T10:00:05Z, destination its destination" in text
    assert (
        "ansible-playbook playbooks/recover.yml -e journal=/r/memory_20261206_100000/journal.json"
        in text
    )
    assert HOLDER["critical_path_journal"] in text


def test_the_journal_is_found_under_the_suffix_its_run_ended_with() -> None:
    there = {"/r/m_failed/journal.json"}
    assert recovery_plan.journal_path("/r/m", there.__contains__) == "/r/m_failed/journal.json"
    assert recovery_plan.journal_path("/r/m", lambda p: False) == "/r/m/journal.json"


def test_only_other_experiments_refuse_and_each_host_once() -> None:
    ours = {"holder": {**HOLDER, "experiment": "mine"}}
    theirs = {"holder": HOLDER}
    found = recovery_plan.lock_refusals(
        [("source", ours), ("destination", theirs), ("destination", theirs), ("x", {})],
        "mine",
        exists=lambda path: False,
    )
    assert len(found) == 1 and found[0].startswith("destination is busy")


def test_the_critical_paths_journal_says_where_the_workload_is() -> None:
    lines = [
        {"step": "prepared", "where": "source"},
        {"step": "dumped", "where": "source (stopped)"},
        {"step": "restored", "where": "destination (the source's copy still stopped)"},
        {"step": "source ended", "where": "destination"},
        {"step": "done", "where": "destination"},
    ]
    text = "\n".join(json.dumps(line) for line in lines) + '\n{"step": "torn'
    state = recovery_plan.parse_critical_path_journal(text)
    assert state["where"] == "destination" and state["finished"]
    assert state["dumped"] and state["restored"] and state["source_ended"]
    assert not state["source_resumed"] and not state["outcome_unknown"]
    assert recovery_plan.parse_critical_path_journal("")["present"] is False


def test_a_run_that_never_ended_is_marked_interrupted() -> None:
    assert recovery_plan.marked_results_dir("/r/m") == "/r/m_interrupted"
    assert recovery_plan.marked_results_dir("/r/m_failed") == "/r/m_failed"


# -- the lock module ------------------------------------------------------------------------------

run_lock = functools.partial(run_ansible_module, experiment_lock)


def test_one_experiment_holds_a_host_at_a_time(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = str(tmp_path / "experiment.lock")
    first = {"path": path, "experiment": "one", "holder": {"results_dir": "/r/one"}}
    rc, taken = run_lock({**first, "state": "acquired"}, capsys)
    assert rc == 0 and taken["acquired"] is True and taken["changed"] is True
    assert oct(os.stat(path).st_mode & 0o777) == "0o600"
    rc, again = run_lock({**first, "state": "acquired"}, capsys)
    assert again["acquired"] is True and again["changed"] is False  # its own: a no-op
    rc, refused = run_lock({"path": path, "experiment": "two", "state": "acquired"}, capsys)
    assert rc == 0 and refused["acquired"] is False
    assert refused["holder"]["experiment"] == "one" and refused["holder"]["results_dir"] == "/r/one"
    rc, kept = run_lock({"path": path, "experiment": "two", "state": "released"}, capsys)
    assert kept["changed"] is False and Path(path).exists()  # not its lock to release
    rc, released = run_lock({**first, "state": "released"}, capsys)
    assert released["changed"] is True and not Path(path).exists()
    rc, free = run_lock({**first, "state": "probed"}, capsys)
    assert free["held"] is False and free["holder"] == {}


# -- the workload's tree after a failure (library/workload_tree.py) ------------------------------

run_tree = functools.partial(run_ansible_module, workload_tree)


def test_a_workload_that_died_says_why(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "workload_error.log").write_text("Traceback ...\n  line\nMemoryError\n")
    gone = subprocess.Popen(["true"])
    gone.wait()
    rc, probe = run_tree({"pid": gone.pid, "working_dir": str(tmp_path)}, capsys)
    assert rc == 0 and probe["exists"] is False and probe["died"] is True
    assert probe["error_tail"].endswith("MemoryError")
    assert probe["migration_metrics"]["phase"] == "workload_died"


@pytest.mark.parametrize(
    ("destination_running", "action", "location"),
    [
        (False, "resumed", "source"),
        (True, "ended", "destination"),
        (None, "kept stopped", "unknown"),
    ],
)
def test_a_stopped_copy_is_settled_by_what_the_destination_runs(
    tree: subprocess.Popen[bytes],
    capsys: pytest.CaptureFixture[str],
    destination_running: bool | None,
    action: str,
    location: str,
) -> None:
    os.kill(tree.pid, signal.SIGSTOP)
    assert wait_until(lambda: process_state(tree.pid) == "T", 5)
    args: dict[str, Any] = {
        "state": "settled",
        "pid": tree.pid,
        "match": "sleep 600",
        "run_id": RUN_ID,
    }
    if destination_running is not None:
        args["destination_running"] = destination_running
    rc, settled = run_tree(args, capsys)
    assert rc == 0 and (settled["action"], settled["location"]) == (action, location), settled
    if action == "ended":
        tree.wait(timeout=10)
        assert not is_alive(tree.pid)
    else:
        assert (process_state(tree.pid) == "T") == (action == "kept stopped")


# -- a workload made to die, for real (library/fault_inject.py, fault=workload_dies) ---------------

GROWER = """
import time, traceback
blocks = []
try:
    while True:
        blocks.append(bytearray(16 * 1024 * 1024))
        time.sleep(0.05)
except Exception:
    open("error.log", "w").write(traceback.format_exc())
    raise SystemExit(1)
"""


def test_a_growing_workload_dies_of_its_next_allocation(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    grower = subprocess.Popen([sys.executable, "-c", GROWER], cwd=tmp_path)
    time.sleep(0.3)
    try:
        rc, died = run_ansible_module(
            fault_inject, {"fault": "workload_dies", "pid": grower.pid, "timeout": 20}, capsys
        )
    finally:
        grower.wait(timeout=20)
    assert rc == 0 and died["pid"] == grower.pid and died["rlimit_as_bytes"] > 0
    assert grower.returncode == 1
    assert (tmp_path / "error.log").read_text().strip().endswith("MemoryError")


# -- metrics.json and the summary of a workload that died ------------------------------------------


def test_a_workload_that_died_is_in_the_metrics_and_the_summary() -> None:
    from metrics_report import PairRecord, build_metrics, summary_text
    from test_migration_metrics import FINISHED, T0, experiment

    pair = PairRecord("source", "destination", "/r/memory_1_failed")
    pair.add("workload_start", {"pid": 16020}, "source")
    pair.add(
        "workload_died",
        {"pid": 16020, "error_log": "/w/workload_error.log", "error_tail": "  x()\nMemoryError"},
        "source",
    )
    pair.failure = {"phase": "capture", "task": "status", "host": "source", "msg": "gone"}
    metrics = build_metrics(experiment(), pair, T0, FINISHED)
    assert metrics["workload_error"] == {
        "host": "source",
        "pid": 16020,
        "error_log": "/w/workload_error.log",
        "error_tail": "  x()\nMemoryError",
    }
    text = summary_text(metrics)
    assert "Workload died on source (pid 16020); /w/workload_error.log ends:" in text
    assert "\n  MemoryError\n" in text
