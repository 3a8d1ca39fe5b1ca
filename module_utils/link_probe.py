#!/usr/bin/env python3
"""Measure a link between two hosts: a bulk TCP stream and TCP round trips.

    link_probe.py serve --bind ADDR --port P [--timeout S]   # on the receiver, one session
    link_probe.py stream --host ADDR --port P --seconds S    # on the sender: Mbit/s
    link_probe.py rtt --host ADDR --port P --count N         # on the sender: ms
    link_probe.py count < DATA                               # the rate DATA arrives at

`serve` takes one connection (or ends after --timeout): a first byte `S` starts a stream
(it counts the bytes until the sender closes, then answers with the count and the seconds
from the first to the last byte), `E` an echo (every byte sent back at once). The sender
prints one JSON line. The suite's own tools for links: library/lab_link.py measures its
delay stage's ceiling with them, `make bench BENCH=links` and the tests the shaped links.
Standard library only.
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

CHUNK = 1 << 20


def serve(bind: str, port: int, timeout_s: float) -> dict[str, Any]:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as server:
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind((bind, port))
        server.listen(1)
        server.settimeout(timeout_s)
        try:
            conn, _ = server.accept()
        except TimeoutError:
            return {"error": f"no connection within {timeout_s} s"}
    with conn:
        conn.settimeout(timeout_s)
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        mode = conn.recv(1)
        if mode == b"E":
            while data := conn.recv(4096):
                conn.sendall(data)
            return {"mode": "echo"}
        total, seconds = time_reads(lambda: conn.recv(CHUNK))
        conn.sendall(json.dumps({"bytes": total, "seconds": seconds}).encode())
        return {"mode": "stream", "bytes": total, "seconds": seconds}


def time_reads(read: Callable[[], bytes]) -> tuple[int, float]:
    """Call `read` until it returns nothing: the bytes read, and the seconds from the first
    byte to the last (a sender's connection set-up and the reader's wait are not counted)."""
    total, first, last = 0, None, time.monotonic()
    while data := read():
        now = time.monotonic()
        first = now if first is None else first
        last = now
        total += len(data)
    return total, (last - first) if first is not None else 0.0


def count_stdin() -> dict[str, Any]:
    """Bytes read from stdin until EOF, timed from the first byte to the last: the rate of
    whatever feeds it (e.g. an ssh session, without its handshake)."""
    stdin = sys.stdin.buffer
    total, seconds = time_reads(lambda: stdin.read1(CHUNK))
    return {
        "bytes": total,
        "seconds": seconds,
        "mbit_s": total * 8 / 1e6 / seconds if seconds else None,
    }


def connect(host: str, port: int, timeout_s: float) -> socket.socket:
    """Connect, retrying while the server is not listening yet."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            conn = socket.create_connection((host, port), timeout=timeout_s)
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            return conn
        except (ConnectionRefusedError, TimeoutError):
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.05)


def stream(host: str, port: int, seconds: float, timeout_s: float = 30.0) -> dict[str, Any]:
    """Send as fast as TCP allows for `seconds`; the receiver's count and clock say the rate."""
    with connect(host, port, timeout_s) as conn:
        conn.sendall(b"S")
        buf = b"\0" * CHUNK
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            conn.sendall(buf)
        conn.shutdown(socket.SHUT_WR)
        conn.settimeout(timeout_s + seconds)
        answer = b""
        while data := conn.recv(4096):
            answer += data
    result = json.loads(answer)
    result["mbit_s"] = result["bytes"] * 8 / 1e6 / result["seconds"] if result["seconds"] else None
    return result


def rtt(host: str, port: int, count: int, timeout_s: float = 30.0) -> dict[str, Any]:
    """`count` one-byte round trips over one connection (after one not counted)."""
    samples = []
    with connect(host, port, timeout_s) as conn:
        conn.sendall(b"E")
        for index in range(count + 1):
            started = time.perf_counter()
            conn.sendall(b"x")
            if not conn.recv(64):
                break
            if index:
                samples.append((time.perf_counter() - started) * 1000.0)
    return summary(samples)


def summary(samples: list[float]) -> dict[str, Any]:
    if not samples:
        return {"count": 0}
    return {
        "count": len(samples),
        "median_ms": statistics.median(samples),
        "mean_ms": statistics.fmean(samples),
        "min_ms": min(samples),
        "max_ms": max(samples),
        "stdev_ms": statistics.pstdev(samples),
        "p90_ms": statistics.quantiles(samples, n=10, method="inclusive")[8]
        if len(samples) > 1
        else samples[0],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("mode", choices=("serve", "stream", "rtt", "count"))
    parser.add_argument("--bind", default="0.0.0.0")
    parser.add_argument("--host")
    parser.add_argument("--port", type=int, default=5299)
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--count", type=int, default=20)
    parser.add_argument("--timeout", type=float, default=30.0)
    args = parser.parse_args(argv)
    if args.mode == "serve":
        result = serve(args.bind, args.port, args.timeout)
    elif args.mode == "stream":
        result = stream(args.host, args.port, args.seconds, args.timeout)
    elif args.mode == "count":
        result = count_stdin()
    else:
        result = rtt(args.host, args.port, args.count, args.timeout)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
