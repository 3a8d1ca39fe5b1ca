"""strace_capture and workload_status against real local processes.

The modules run as Ansible runs them (`ansible localhost -M library -m ...`, with the
nodes' /usr/bin/python3), or through their classes where only the behaviour matters.
Needs root (ptrace of processes this test did not start as children is root's) and strace.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import proc_status
import pytest
from proc_status import process_tree, tracers
from processes import process_state
from strace_capture import CaptureError, StraceCapture, parse_info

REPO = Path(__file__).resolve().parents[2]
ANSIBLE = str(Path(sys.executable).with_name("ansible"))
STRACE = shutil.which("strace") or "/usr/bin/strace"
NODE_PYTHON = "/usr/bin/python3"

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="ptrace of other processes needs root"),
    pytest.mark.skipif(not os.path.exists(STRACE), reason="strace is not installed"),
    pytest.mark.skipif(not os.path.exists(NODE_PYTHON), reason="no /usr/bin/python3"),
]

# Like a suite workload: stdio on /dev/null, a thread, a child process, a progress file.
WORKLOAD = r"""
import os, sys, threading, time
workdir = sys.argv[1]
lines = int(sys.argv[2])
def ticker():
    for i in range(lines):
        os.write(2, b"thread tick %d\n" % i)
        time.sleep(0.05)
threading.Thread(target=ticker, daemon=True).start()
if os.fork() == 0:
    for i in range(lines):
        os.write(1, b"child line %d\n" % i)
        time.sleep(0.05)
    os._exit(0)
progress = open(os.path.join(workdir, "progress.log"), "a", buffering=1)
for i in range(lines):
    print("main line", i, flush=True)
    progress.write('{"seq": %d}\n' % i)
    time.sleep(0.05)
"""


@pytest.fixture(scope="module")
def ansible_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Ansible settings for these runs only: the repo's library/ and module_utils/, no
    inventory, no callbacks (the suite's ansible.cfg enables an aggregate one)."""
    home = tmp_path_factory.mktemp("ansible")
    config = home / "ansible.cfg"
    config.write_text(
        "[defaults]\n"
        f"library = {REPO / 'library'}\n"
        f"module_utils = {REPO / 'module_utils'}\n"
        f"home = {home}\n"
        f"local_tmp = {home / 'tmp'}\n"
        "gathering = explicit\n"
    )
    return {**os.environ, "ANSIBLE_CONFIG": str(config)}


def run_module(
    env: dict[str, str], name: str, args: dict[str, object], check: bool = False
) -> dict:
    """Run a library/ module on localhost through the ansible CLI; its JSON result."""
    argv = [
        ANSIBLE,
        "localhost",
        "-i",
        "localhost,",
        "-c",
        "local",
        "-o",
        "-e",
        f"ansible_python_interpreter={NODE_PYTHON}",
        "-m",
        name,
        "-a",
        json.dumps(args),
    ]
    if check:
        argv.append("--check")
    # a module that leaves a descriptor of its session open would make this hang
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120)
    _, sep, payload = done.stdout.partition("=> ")
    assert sep, f"no result from ansible: {done.stdout}\n{done.stderr}"
    result = json.loads(payload)
    result["_rc"] = done.returncode
    return result


def start_workload(tmp_path: Path, lines: int = 2000) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [NODE_PYTHON, "-c", WORKLOAD, str(tmp_path), str(lines)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        cwd=tmp_path,
    )
    deadline = time.monotonic() + 10
    while len(process_tree(proc.pid)) < 2 or not (tmp_path / "progress.log").exists():
        assert time.monotonic() < deadline, "workload did not start"
        time.sleep(0.01)
    return proc


@pytest.fixture
def workload(tmp_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    proc = start_workload(tmp_path)
    yield proc
    for pid in reversed(process_tree(proc.pid)):
        os.kill(pid, signal.SIGKILL)
    proc.wait()


def traced_threads(pid: int) -> dict[int, int]:
    return {tid: who for tid, who in tracers(process_tree(pid)).items() if who}


def capture(tmp_path: Path, **params: object) -> StraceCapture:
    defaults: dict[str, object] = {
        "state": "captured",
        "pid": None,
        "log_path": str(tmp_path / "capture" / "workload_stdout_test.log"),
        "raw_path": None,
        "info_path": None,
        "label": "test",
        "duration_s": 1.0,
        "attach_timeout_s": 10.0,
        "stop_timeout_s": 10.0,
        "string_limit": 65536,
        "decode_fds": True,
    }
    return StraceCapture({**defaults, **params}, STRACE)


def log_body(path: Path) -> list[str]:
    return [ln for ln in path.read_text().splitlines() if not ln.startswith("#")]


# --------------------------------------------------------------------------- ansible


def test_started_then_stopped_through_ansible(
    ansible_env: dict[str, str], workload: subprocess.Popen[bytes], tmp_path: Path
) -> None:
    log = tmp_path / "capture" / "workload_stdout_pre_dump.log"
    common = {"log_path": str(log), "label": "pre_dump"}

    started = run_module(
        ansible_env, "strace_capture", {"state": "started", "pid": workload.pid, **common}
    )
    assert started["_rc"] == 0 and started["changed"] is True, started
    tracer = started["tracer_pid"]
    tree = process_tree(workload.pid)
    assert started["traced_pids"] == tree
    assert started["command"][:6] == [STRACE, "-f", "-ttt", "-xx", "-y", "-s"]
    # strace outlived the module and traces every thread of the tree
    assert set(traced_threads(workload.pid).values()) == {tracer}
    assert set(traced_threads(workload.pid)) == set(started["traced_threads"])
    assert parse_info((tmp_path / "capture" / f"{log.name}.info").read_text())["status"] == (
        "capturing"
    )
    # strace and its monitor (strace's parent) hold nothing of the Ansible session
    monitor = int(proc_status.read_status(tracer)["PPid"])  # type: ignore[index]
    assert proc_status.read_comm(monitor).startswith("python")
    allowed = {os.devnull, f"{log}.raw", f"{log}.raw.stderr"}
    for holder in (tracer, monitor):
        assert os.getsid(holder) not in (os.getsid(0), os.getsid(workload.pid))
        assert {fd.target for fd in proc_status.read_fds(holder)} <= allowed
        assert os.readlink(f"/proc/{holder}/cwd") == "/"
    time.sleep(1.0)

    stopped = run_module(ansible_env, "strace_capture", {"state": "stopped", **common})
    assert stopped["_rc"] == 0 and stopped["changed"] is True, stopped
    assert traced_threads(workload.pid) == {}  # CRIU could seize it now
    assert not os.path.exists(f"/proc/{tracer}")
    assert stopped["still_traced"] == []
    assert stopped["stop_signals"] == ["SIGINT"]
    assert stopped["tracer_exit"] == "killed by SIGINT"
    assert stopped["detach_s"] < 5
    assert stopped["lines"] > 20 and stopped["bytes"] > 0 and stopped["writes"] >= stopped["lines"]
    assert stopped["duration_s"] == pytest.approx(
        stopped["end_epoch"] - stopped["start_epoch"], abs=0.01
    )

    body = log_body(log)
    main = [ln for ln in body if f"pid={workload.pid} fd=1 | main line" in ln]
    numbers = [int(ln.rsplit(" ", 1)[1]) for ln in main]
    assert len(numbers) > 10 and numbers == list(range(numbers[0], numbers[0] + len(numbers)))
    assert any("fd=2 | thread tick" in ln for ln in body)
    assert any("fd=1 | child line" in ln for ln in body)
    assert any('| {"seq": ' in ln for ln in body)  # the progress file's writes too
    header = log.read_text()
    assert f"# pid={workload.pid} fd=1 -> /dev/null" in header
    assert "progress.log" in header

    info = parse_info(Path(f"{log}.info").read_text())
    assert info["status"] == "stopped"
    assert info["tracer_exit"] == "killed by SIGINT"
    assert info["lost"] == "nothing"
    assert info["lines"] == str(stopped["lines"])
    assert info["command"].startswith(f"{STRACE} -f -ttt -xx -y -s 65536")
    assert sorted(os.listdir(log.parent)) == [log.name, f"{log.name}.info", f"{log.name}.raw"]

    again = run_module(ansible_env, "strace_capture", {"state": "stopped", **common})
    assert again["_rc"] == 0 and again["changed"] is False and again["lines"] == stopped["lines"]


def test_captured_window_through_ansible(
    ansible_env: dict[str, str], workload: subprocess.Popen[bytes], tmp_path: Path
) -> None:
    log = tmp_path / "post" / "workload_stdout_post_restore.log"
    began = time.monotonic()
    result = run_module(
        ansible_env,
        "strace_capture",
        {
            "state": "captured",
            "pid": workload.pid,
            "duration_s": 1.5,
            "log_path": str(log),
            "label": "post_restore",
        },
    )
    assert result["_rc"] == 0, result
    assert time.monotonic() - began >= 1.5
    assert 1.4 <= result["duration_s"] < 5
    assert traced_threads(workload.pid) == {}
    assert result["stats"]["lines"] == result["lines"] > 10
    assert any("| main line" in ln for ln in log_body(log))
    assert log.read_text().startswith("# strace capture post_restore on ")


def test_check_mode_attaches_nothing(
    ansible_env: dict[str, str], workload: subprocess.Popen[bytes], tmp_path: Path
) -> None:
    log = tmp_path / "check" / "w.log"
    result = run_module(
        ansible_env,
        "strace_capture",
        {"state": "started", "pid": workload.pid, "log_path": str(log)},
        check=True,
    )
    assert result["_rc"] == 0 and result["changed"] is True
    assert traced_threads(workload.pid) == {}
    assert not log.parent.exists()


def test_failures_say_what_and_where(
    ansible_env: dict[str, str], workload: subprocess.Popen[bytes], tmp_path: Path
) -> None:
    log = str(tmp_path / "fail" / "w.log")
    gone = run_module(
        ansible_env, "strace_capture", {"state": "started", "pid": 2**22 + 7, "log_path": log}
    )
    assert gone["_rc"] != 0 and "is not running on" in gone["msg"]
    nothing = run_module(ansible_env, "strace_capture", {"state": "stopped", "log_path": log})
    assert nothing["_rc"] != 0 and "no capture to stop" in nothing["msg"]
    missing_pid = run_module(ansible_env, "strace_capture", {"state": "captured", "log_path": log})
    assert missing_pid["_rc"] != 0 and "pid" in missing_pid["msg"]
    relative = run_module(
        ansible_env, "strace_capture", {"state": "stopped", "log_path": "capture/w.log"}
    )
    assert relative["_rc"] != 0 and "must be an absolute path" in relative["msg"]


def test_workload_status_through_ansible(
    ansible_env: dict[str, str], workload: subprocess.Popen[bytes], tmp_path: Path
) -> None:
    dest = tmp_path / "status" / "workload_status_pre_dump.txt"
    result = run_module(
        ansible_env,
        "workload_status",
        {"pid": workload.pid, "dest": str(dest), "title": "pre_dump"},
    )
    assert result["_rc"] == 0, result
    assert result["pids"] == process_tree(workload.pid)
    assert result["threads"] >= 3 and result["rss_kb"] > 0 and result["fds"] >= 7
    text = dest.read_text()
    assert text.startswith("# workload status: pre_dump")
    assert f"{tmp_path / 'progress.log'} pos=" in text
    missing = run_module(ansible_env, "workload_status", {"pid": 2**22 + 7, "dest": str(dest)})
    assert missing["_rc"] != 0 and "is not running" in missing["msg"]
    allowed = run_module(
        ansible_env, "workload_status", {"pid": 2**22 + 7, "dest": str(dest), "allow_missing": True}
    )
    assert allowed["_rc"] == 0 and allowed["running"] is False and allowed["pids"] == []


# --------------------------------------------------------------------------- edge cases


def test_target_exits_during_the_window(tmp_path: Path) -> None:
    proc = start_workload(tmp_path, lines=10)  # about half a second of output
    try:
        began = time.monotonic()
        result = capture(tmp_path, pid=proc.pid, duration_s=20.0).run()
    finally:
        proc.wait()
    assert time.monotonic() - began < 10  # ended when the tracees were gone
    assert result["stop_signals"] == []
    assert result["tracer_exit"] == "exited 0"
    stats = result["stats"]
    assert stats["exited"][str(proc.pid)] == 0
    log = Path(str(result["log_path"]))
    assert f"pid={proc.pid} +++ exited with 0 +++" in log.read_text()
    assert any("| main line 9" in ln for ln in log_body(log))


def test_tracee_killed_while_traced(workload: subprocess.Popen[bytes], tmp_path: Path) -> None:
    cap = capture(tmp_path, state="started", pid=workload.pid)
    started = cap.run()
    child = started["traced_pids"][1]  # type: ignore[index]
    time.sleep(0.3)
    os.kill(child, signal.SIGKILL)
    time.sleep(0.3)
    cap.params["state"] = "stopped"
    stopped = cap.run()
    assert stopped["stats"]["killed"] == {str(child): "SIGKILL"}  # type: ignore[index]
    assert traced_threads(workload.pid) == {}
    assert f"pid={child} +++ killed by SIGKILL +++" in Path(cap.log_path).read_text()


def test_already_traced_is_refused(workload: subprocess.Popen[bytes], tmp_path: Path) -> None:
    first = capture(tmp_path, state="started", pid=workload.pid)
    first.run()
    try:
        second = capture(tmp_path, state="started", pid=workload.pid, log_path=str(tmp_path / "b"))
        with pytest.raises(CaptureError, match="already traced"):
            second.run()
    finally:
        first.params["state"] = "stopped"
        first.run()
    assert traced_threads(workload.pid) == {}


def test_a_stuck_strace_is_killed_and_the_tree_released(
    workload: subprocess.Popen[bytes], tmp_path: Path
) -> None:
    cap = capture(tmp_path, state="started", pid=workload.pid, stop_timeout_s=1.0)
    tracer = int(cap.run()["tracer_pid"])  # type: ignore[call-overload]
    os.kill(tracer, signal.SIGSTOP)  # strace can no longer act on SIGINT
    cap.params["state"] = "stopped"
    stopped = cap.run()
    assert stopped["stop_signals"] == ["SIGINT", "SIGKILL"]
    assert stopped["tracer_exit"] == "killed by SIGKILL"
    assert traced_threads(workload.pid) == {}
    info = parse_info(Path(f"{cap.log_path}.info").read_text())
    assert "strace was killed" in info["lost"]
    # the workload runs on after its tracer died
    size = (tmp_path / "progress.log").stat().st_size
    time.sleep(0.3)
    assert (tmp_path / "progress.log").stat().st_size > size


ZOMBIE_PARENT = r"""
import os, sys, time
if os.fork() == 0:
    os._exit(0)  # never reaped: stays a zombie child of the workload
open(os.path.join(sys.argv[1], "ready"), "w").close()
for i in range(2000):
    os.write(1, b"still here %d\n" % i)
    time.sleep(0.05)
"""


def test_zombie_children_are_left_out(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [NODE_PYTHON, "-c", ZOMBIE_PARENT, str(tmp_path)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        while not (tmp_path / "ready").exists():
            time.sleep(0.01)
        zombie = process_tree(proc.pid)[1]
        while process_state(zombie) != "Z":
            time.sleep(0.01)
        result = capture(tmp_path, pid=proc.pid, duration_s=0.5).run()
        assert result["traced_pids"] == [proc.pid]
        assert zombie not in result["traced_threads"]  # type: ignore[operator]
        assert result["lines"] > 3  # type: ignore[operator]
    finally:
        proc.kill()
        proc.wait()


def test_trace_paths_keeps_only_writes_to_those_paths(
    workload: subprocess.Popen[bytes], tmp_path: Path
) -> None:
    result = capture(tmp_path, pid=workload.pid, duration_s=0.5, trace_paths=["/dev/null"]).run()
    assert "-P" in result["command"]  # type: ignore[operator]
    body = log_body(Path(str(result["log_path"])))
    assert any("| main line" in ln for ln in body)
    assert not any('"seq"' in ln for ln in body)  # progress.log is not /dev/null
