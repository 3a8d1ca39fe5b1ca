"""proc_status: /proc parsing helpers and a snapshot of a real process tree."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from proc_status import (
    format_address,
    format_snapshot,
    parse_inet_table,
    parse_status,
    parse_unix_table,
    process_tree,
    snapshot_tree,
    tracer_of,
    tracers,
)
from processes import process_state

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")

# A process holding a listening TCP socket, a connected pair, a UDP socket, a bound unix
# socket and a file opened for append, with a thread and a forked child.
HOLDER = r"""
import os, socket, sys, threading, time
workdir = sys.argv[1]
listener = socket.socket(); listener.bind(("127.0.0.1", 0)); listener.listen()
client = socket.create_connection(listener.getsockname()); server, _ = listener.accept()
udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); udp.bind(("127.0.0.1", 0))
unix = socket.socket(socket.AF_UNIX); unix.bind(os.path.join(workdir, "holder.sock"))
held = open(os.path.join(workdir, "held.log"), "a"); held.write("12345"); held.flush()
threading.Thread(target=time.sleep, args=(60,), daemon=True).start()
if os.fork() == 0:
    time.sleep(60)
    os._exit(0)
print(listener.getsockname()[1], udp.getsockname()[1], flush=True)
time.sleep(60)
"""


@pytest.fixture
def holder(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], int, int]]:
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(tmp_path)],
        stdout=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
    )
    assert proc.stdout is not None
    tcp_port, udp_port = (int(x) for x in proc.stdout.readline().split())
    yield proc, tcp_port, udp_port
    for pid in reversed(process_tree(proc.pid)):
        os.kill(pid, signal.SIGKILL)
    proc.wait()


def test_snapshot_lists_tree_memory_fds_and_sockets(
    holder: tuple[subprocess.Popen[str], int, int], tmp_path: Path
) -> None:
    proc, tcp_port, udp_port = holder
    deadline = time.monotonic() + 5
    while len(process_tree(proc.pid)) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    snap = snapshot_tree(proc.pid)
    root, child = snap.processes
    assert snap.pids == [proc.pid, child.pid]
    assert child.ppid == proc.pid
    assert root.threads == 2 and child.threads == 1
    assert root.rss_kb > 0 and root.vmsize_kb >= root.rss_kb and root.vmhwm_kb >= root.rss_kb
    assert root.cwd == os.getcwd()
    assert root.cmdline[:2] == [sys.executable, "-c"]
    assert root.tracer_pid == 0

    held = [fd for fd in root.fds if fd.target == str(tmp_path / "held.log")]
    assert len(held) == 1 and held[0].pos == 5 and held[0].access == "wa"
    described = {s.describe() for s in root.sockets}
    assert f"tcp 127.0.0.1:{tcp_port} -> 0.0.0.0:0 LISTEN" in described
    assert sum("ESTABLISHED" in d and d.startswith("tcp ") for d in described) == 2
    assert f"udp 127.0.0.1:{udp_port} -> 0.0.0.0:0 UNCONN" in described
    assert f"unix stream UNCONNECTED {tmp_path / 'holder.sock'}" in described
    # the forked child inherited every descriptor
    assert {fd.target for fd in child.fds} == {fd.target for fd in root.fds}

    summary = snap.summary()
    assert summary["pids"] == [proc.pid, child.pid]
    assert summary["processes"] == 2 and summary["threads"] == 3
    assert summary["rss_kb"] == root.rss_kb + child.rss_kb
    assert summary["fds"] == len(root.fds) + len(child.fds)
    assert summary["sockets"] == 5  # distinct inodes, not counted twice for the child

    text = format_snapshot(snap, "pre_dump")
    assert text.startswith("# workload status: pre_dump\n")
    assert f"  {proc.pid} (python" in text
    assert f"    `- {child.pid} (python" in text
    assert f"{tmp_path / 'held.log'} pos=5" in text
    assert f"[tcp 127.0.0.1:{tcp_port} -> 0.0.0.0:0 LISTEN]" in text
    assert f"  memory:  VmRSS {root.rss_kb} kB" in text


def test_a_gone_process_gives_an_empty_snapshot() -> None:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    snap = snapshot_tree(proc.pid)
    assert snap.processes == [] and snap.pids == []
    assert f"process {proc.pid} is not running" in format_snapshot(snap)
    assert tracer_of(proc.pid) is None
    assert process_tree(proc.pid) == []


def test_a_zombie_root_is_not_running() -> None:
    pid = os.fork()
    if pid == 0:
        os._exit(3)
    try:
        deadline = time.monotonic() + 5
        while process_state(pid) != "Z" and time.monotonic() < deadline:
            time.sleep(0.005)
        assert process_state(pid) == "Z"
        assert process_tree(pid) == []
        assert snapshot_tree(pid).processes == []
        assert tracers([pid]) == {}  # a zombie cannot be traced
    finally:
        os.waitpid(pid, 0)


def test_tracers_of_an_untraced_process() -> None:
    me = os.getpid()
    found = tracers([me])
    assert me in found
    assert tracer_of(me) == found[me]


def test_format_address() -> None:
    assert format_address("0100007F:1F90") == "127.0.0.1:8080"
    assert format_address("00000000000000000000000001000000:0050") == "[::1]:80"
    assert format_address("0000000000000000FFFF00000100007F:18EB") == "[::ffff:127.0.0.1]:6379"


def test_parse_inet_and_unix_tables() -> None:
    tcp = (
        "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid"
        "  timeout inode\n"
        "   0: 0100007F:18EB 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0"
        "        0 4242 1 0000000000000000 100 0 0 10 0\n"
    )
    (sock,) = parse_inet_table(tcp, "tcp").values()
    assert (sock.inode, sock.local, sock.remote, sock.state) == (
        4242,
        "127.0.0.1:6379",
        "0.0.0.0:0",
        "LISTEN",
    )
    unix = (
        "Num       RefCount Protocol Flags    Type St Inode Path\n"
        "0000000000000000: 00000002 00000000 00010000 0001 01 777 /run/redis.sock\n"
        "0000000000000000: 00000003 00000000 00000000 0001 03 778\n"
    )
    table = parse_unix_table(unix)
    assert table[777].describe() == "unix stream UNCONNECTED /run/redis.sock"
    assert table[778].describe() == "unix stream CONNECTED"


def test_parse_status() -> None:
    fields = parse_status("Name:\tpython3\nVmRSS:\t  1234 kB\nTracerPid:\t0\n")
    assert fields == {"Name": "python3", "VmRSS": "1234 kB", "TracerPid": "0"}
