#!/usr/bin/env python3
"""The lab's userspace delay stage: a TAP device that hands every frame back after a delay.

For kernels without netem (this machine's: docs/lab.md). library/lab_link.py starts it on the
control node; tc filters redirect a lab pair's packets into the TAP and the frames the stage
writes back out of the receiving link (module_utils/link_shaping.py). Each frame is released
`delay` (+ a normal `jitter` draw) after it arrived, never before a frame that arrived
earlier (a network path does not reorder a flow; netem with jitter would). GSO frames come
and go whole (IFF_VNET_HDR with TSO offloads), so a 64 KiB segment costs one read and one
write: the stage moves several Gbit/s on one core (its measured ceiling is in docs/links.md).

    delay_stage.py --tap crlab-d1 --delay-ms 0.665 --jitter-ms 0.05 --stats FILE

It writes FILE (JSON) once the TAP is up ("ready": true), and again, with its counters, when
it ends (SIGTERM). Standard library only; runs on the control node as root.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import errno
import fcntl
import json
import os
import random
import select
import signal
import struct
import subprocess
import sys
import time
from typing import Any

TUN_DEVICE = "/dev/net/tun"
TUNSETIFF = 0x400454CA
TUNSETOFFLOAD = 0x400454D0
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000
IFF_VNET_HDR = 0x4000
# TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6 | TUN_F_TSO_ECN: GSO frames stay whole
OFFLOADS = 0x01 | 0x02 | 0x04 | 0x08
# a virtio-net header (10 bytes), an Ethernet header and a 64 KiB GSO packet
READ_SIZE = 70_000
# frames the kernel may queue towards the stage before it drops (the TAP's txqueuelen)
TX_QUEUE_LEN = 10_000


class DelayLine:
    """Frames in arrival order, each with the time it may leave (the stage's whole logic).

    release = max(arrival + delay + N(0, jitter), the previous frame's release): the order of
    arrival is kept. Beyond `max_bytes` held, a frame is dropped (a full queue).
    """

    def __init__(
        self,
        delay_s: float,
        jitter_s: float = 0.0,
        seed: int | None = None,
        max_bytes: int = 256 << 20,
    ) -> None:
        if delay_s < 0 or jitter_s < 0:
            raise ValueError("delay and jitter must not be negative")
        self.delay_s, self.jitter_s, self.max_bytes = delay_s, jitter_s, max_bytes
        self.rng = random.Random(seed)
        self.queue: collections.deque[tuple[float, bytes]] = collections.deque()
        self.held_bytes = 0
        self.last_release = 0.0
        self.counters = {
            "frames_in": 0,
            "frames_out": 0,
            "bytes_out": 0,
            "dropped": 0,
            "max_held_bytes": 0,
        }

    def push(self, now: float, frame: bytes) -> bool:
        self.counters["frames_in"] += 1
        if self.held_bytes + len(frame) > self.max_bytes:
            self.counters["dropped"] += 1
            return False
        jitter = self.rng.gauss(0.0, self.jitter_s) if self.jitter_s else 0.0
        release = max(now + self.delay_s + jitter, self.last_release, now)
        self.last_release = release
        self.queue.append((release, frame))
        self.held_bytes += len(frame)
        self.counters["max_held_bytes"] = max(self.counters["max_held_bytes"], self.held_bytes)
        return True

    def next_release(self) -> float | None:
        return self.queue[0][0] if self.queue else None

    def pop_due(self, now: float) -> list[bytes]:
        due = []
        while self.queue and self.queue[0][0] <= now:
            frame = self.queue.popleft()[1]
            self.held_bytes -= len(frame)
            due.append(frame)
        return due

    def released(self, frame: bytes) -> None:
        self.counters["frames_out"] += 1
        self.counters["bytes_out"] += len(frame)


def open_tap(name: str) -> int:
    """A non-blocking TAP `name` with virtio-net headers and GSO offloads; its descriptor."""
    fd = os.open(TUN_DEVICE, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        fcntl.ioctl(
            fd, TUNSETIFF, struct.pack("16sH", name.encode(), IFF_TAP | IFF_NO_PI | IFF_VNET_HDR)
        )
        fcntl.ioctl(fd, TUNSETOFFLOAD, OFFLOADS)
    except OSError:
        os.close(fd)
        raise
    return fd


def set_realtime(priority: int) -> str:
    """Run at a real-time priority (SCHED_FIFO) with a 1 ns timer slack, so a frame leaves
    when due even while the machine's cores are busy (a normal task waits its turn for tens
    of microseconds to milliseconds after its timer fires). The kernel's real-time
    throttling (sched_rt_runtime_us) still leaves the others 5 % of each second. What was
    set, or why not."""
    if priority <= 0:
        return "off"
    with contextlib.suppress(OSError, AttributeError):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(29, 1, 0, 0, 0)  # PR_SET_TIMERSLACK, 1 ns
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(priority))
    except (OSError, AttributeError) as exc:
        return f"unavailable: {exc}"
    return f"SCHED_FIFO {priority}"


def write_stats(path: str, data: dict[str, Any]) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as handle:
        json.dump(data, handle)
    os.replace(tmp, path)


def run(fd: int, line: DelayLine, stop: list[bool]) -> None:
    """Read frames, hold them, write them back when due, until `stop[0]` or the TAP goes."""
    while not stop[0]:
        now = time.monotonic()
        for frame in line.pop_due(now):
            try:
                os.write(fd, frame)
                line.released(frame)
            except OSError as exc:
                if exc.errno in (errno.EBADFD, errno.ENODEV):
                    return
                line.counters["dropped"] += 1
        release = line.next_release()
        timeout = 1.0 if release is None else max(0.0, release - time.monotonic())
        try:
            readable, _, _ = select.select([fd], [], [], timeout)  # microsecond timeouts
        except InterruptedError:
            continue
        if not readable:
            continue
        arrived = time.monotonic()
        while True:
            try:
                frame = os.read(fd, READ_SIZE)
            except BlockingIOError:
                break
            except OSError as exc:
                if exc.errno in (errno.EBADFD, errno.ENODEV, errno.EIO):
                    return
                raise
            if not frame:
                return
            line.push(arrived, frame)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tap", required=True)
    parser.add_argument("--delay-ms", type=float, required=True)
    parser.add_argument("--jitter-ms", type=float, default=0.0)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--stats", required=True)
    parser.add_argument("--ip", default="ip", help="the ip binary")
    parser.add_argument("--max-held-mb", type=float, default=256.0)
    parser.add_argument(
        "--realtime-priority", type=int, default=1, help="SCHED_FIFO priority (0: off)"
    )
    args = parser.parse_args(argv)
    line = DelayLine(
        args.delay_ms / 1000.0,
        args.jitter_ms / 1000.0,
        args.seed,
        int(args.max_held_mb * (1 << 20)),
    )
    stop = [False]

    def on_signal(_signum: int, _frame: Any) -> None:
        stop[0] = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    started = time.time()
    base = {
        "pid": os.getpid(),
        "tap": args.tap,
        "delay_ms": args.delay_ms,
        "jitter_ms": args.jitter_ms,
    }
    try:
        fd = open_tap(args.tap)
    except OSError as exc:
        write_stats(
            args.stats, {**base, "ready": False, "error": f"cannot create TAP {args.tap}: {exc}"}
        )
        return 1
    setup = subprocess.run(
        [args.ip, "link", "set", "dev", args.tap, "txqueuelen", str(TX_QUEUE_LEN), "up"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    if setup.returncode:
        write_stats(
            args.stats,
            {**base, "ready": False, "error": f"ip link set {args.tap} up: {setup.stderr.strip()}"},
        )
        return 1
    realtime = set_realtime(args.realtime_priority)
    write_stats(args.stats, {**base, "ready": True, "started_at": started, "realtime": realtime})
    try:
        run(fd, line, stop)
    finally:
        with contextlib.suppress(OSError):
            os.close(fd)
        write_stats(
            args.stats,
            {
                **base,
                "ready": False,
                "started_at": started,
                "ended_at": time.time(),
                **line.counters,
            },
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
