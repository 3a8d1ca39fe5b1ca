#!/usr/bin/env python3
"""redis workload: a real redis-server with continuous reads/writes over one TCP connection.

The script starts Debian's redis-server as its own child (no RDB/AOF persistence, bound to
127.0.0.1), loads `num_keys` keys of `value_size` bytes deterministically, then reads and
writes continuously over ONE persistent connection of the Python `redis` client. It keeps a
client-side model of the dataset: `dataset_checksum` is the sum mod 2^64 of a 64-bit BLAKE2b
of key and value over all keys, updated on every write. After a restore the checksum is
recomputed by a full SCAN of the server and `client_id` (CLIENT ID) shows the connection is
the same one: CRIU must dump the tree (this process + redis-server) with --tcp-established.

Single file on purpose: it is copied alone to bare nodes (stdlib + redis, written against
redis-py 4.3 as in Debian 12). The protocol part (`Protocol`) is repeated in every workload
script; see docs/architecture.md.
"""

from __future__ import annotations

import argparse
import ctypes
import hashlib
import json
import math
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
import traceback
from array import array
from collections.abc import Callable
from pathlib import Path
from typing import Any

try:
    import redis
except ImportError:  # argument parsing needs only the stdlib; work() reports it
    redis = None

SEED = 20240611
READS_PER_UNIT = 100
WRITES_PER_UNIT = 100
UNIT_S = 0.1  # one unit of work (and one progress line) every 0.1 s
LOAD_BATCH = 1000
MASK64 = (1 << 64) - 1
PR_SET_PDEATHSIG = 1


# --- the suite's workload protocol (same shape in every *_standalone.py) ------------------
class Protocol:
    """Ready file, progress.log lines, restore detection by host name, flag, finish."""

    def __init__(self, working_dir: Path, restored_fields: Callable[[], dict[str, Any]]) -> None:
        self.working_dir = working_dir
        self.flag = working_dir / "checkpoint_flag"
        self.restored_fields = restored_fields
        # Append mode: CRIU accepts a file open for writing whose size changed only then.
        self.log = open(working_dir / "progress.log", "a", buffering=1)  # noqa: SIM115
        self.seq = 0
        self.host = socket.gethostname()

    def ready(self) -> None:
        tmp = self.working_dir / ".checkpoint_ready.tmp"
        tmp.write_text(f"ready:{os.getpid()}")
        tmp.replace(self.working_dir / "checkpoint_ready")

    def _write(self, fields: dict[str, Any], ts: float | None = None) -> None:
        host = socket.gethostname()
        self.seq += 1
        record = {"seq": self.seq, "ts": ts if ts is not None else time.time(), "host": host}
        self.log.write(json.dumps({**record, **fields}) + "\n")
        self.host = host

    def check_restore(self) -> bool:
        """After a host change, log the state recomputed from memory before any more work."""
        if socket.gethostname() == self.host:
            return False
        detected = time.time()
        fields = self.restored_fields()
        fields["verify_s"] = round(time.time() - detected, 3)
        self._write({"event": "restored", **fields}, ts=detected)
        return True

    def line(self, **fields: Any) -> None:
        self.check_restore()
        self._write(fields)

    def running(self) -> bool:
        self.check_restore()
        return self.flag.exists()

    def sleep(self, seconds: float) -> None:
        # Counted in slices, not against a clock deadline: clocks differ between hosts.
        remaining = seconds
        while remaining > 0 and self.running():
            step = min(remaining, 0.1)
            time.sleep(step)
            remaining -= step

    def finish(self) -> None:
        self.check_restore()
        self._write({"event": "finished"})
        print("restore completed", flush=True)


def run_protocol(
    parser: argparse.ArgumentParser, work: Callable[[argparse.Namespace, Path], None]
) -> int:
    args = parser.parse_args()
    working_dir = Path(args.working_dir).resolve()
    working_dir.mkdir(parents=True, exist_ok=True)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # unwinds: children are stopped
    try:
        work(args, working_dir)
    except Exception:
        (working_dir / "workload_error.log").write_text(traceback.format_exc())
        return 1
    return 0


def bounded(
    kind: type, low: float | None = None, high: float | None = None
) -> Callable[[str], Any]:
    """An argparse type: `kind` within [low, high]."""

    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a valid {kind.__name__}") from None
        if kind is float and not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
        if low is not None and value < low:
            raise argparse.ArgumentTypeError(f"{value} is below the minimum {low}")
        if high is not None and value > high:
            raise argparse.ArgumentTypeError(f"{value} is above the maximum {high}")
        return value

    return parse


# --- the workload ---------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--working-dir", required=True, help="protocol files live here")
    parser.add_argument(
        "--redis-port", type=bounded(int, 1, 65535), default=6379, help="TCP port on 127.0.0.1"
    )
    parser.add_argument("--num-keys", type=bounded(int, 1), default=100000, help="keys loaded")
    parser.add_argument("--value-size", type=bounded(int, 1), default=1024, help="bytes per value")
    return parser


def key_of(index: int) -> bytes:
    return b"key:%08d" % index


def value_of(index: int, version: int, size: int) -> bytes:
    digest = hashlib.blake2b(b"%d:%d" % (index, version), digest_size=64).digest()
    return (digest * (size // len(digest) + 1))[:size]


def entry_hash(key: bytes, value: bytes) -> int:
    return int.from_bytes(hashlib.blake2b(key + b"=" + value, digest_size=8).digest(), "little")


def check_port_free(port: int) -> None:
    with socket.socket() as probe:
        # SO_REUSEADDR: only a listening socket makes the bind fail, not TIME_WAIT leftovers.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError as exc:
            raise RuntimeError(
                f"redis_port {port} is already in use on 127.0.0.1 of {socket.gethostname()} "
                f"({exc.strerror}); stop what listens there or choose another redis_port"
            ) from None


def start_server(port: int, working_dir: Path) -> subprocess.Popen[bytes]:
    binary = shutil.which("redis-server") or "/usr/bin/redis-server"
    if not os.access(binary, os.X_OK):
        raise RuntimeError("redis-server not found (Debian package redis-server)")
    server_dir = working_dir / "redis"
    server_dir.mkdir(exist_ok=True)
    log = server_dir / "redis-server.log"  # redis reopens it per message: never held open
    argv = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    argv += ["--daemonize", "no", "--dir", str(server_dir), "--logfile", str(log)]
    libc = ctypes.CDLL(None, use_errno=True)
    server = subprocess.Popen(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        cwd=server_dir,
        # A child of this process (one tree for CRIU), killed if this process dies.
        preexec_fn=lambda: libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL),
    )
    deadline = time.time() + 15
    while True:
        if server.poll() is not None:
            tail = log.read_text(errors="replace")[-600:] if log.exists() else ""
            raise RuntimeError(f"redis-server exited with {server.returncode}: {tail}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return server
        except OSError:
            if time.time() > deadline:
                raise RuntimeError(
                    f"redis-server did not listen on 127.0.0.1:{port} in 15 s"
                ) from None
            time.sleep(0.05)


class Dataset:
    def __init__(self, port: int, num_keys: int, value_size: int) -> None:
        # max_connections=1: every command and pipeline goes over the same TCP connection.
        pool = redis.ConnectionPool(host="127.0.0.1", port=port, max_connections=1)
        self.client = redis.Redis(connection_pool=pool)
        self.num_keys = num_keys
        self.value_size = value_size
        self.versions = array("Q", bytes(8 * num_keys))
        self.hashes = array("Q", bytes(8 * num_keys))
        self.checksum = 0
        self.reads = 0
        self.writes = 0
        self.rng = random.Random(SEED)
        self.client_id = int(self.client.client_id())

    def load(self) -> None:
        for start in range(0, self.num_keys, LOAD_BATCH):
            pipe = self.client.pipeline(transaction=False)
            for index in range(start, min(start + LOAD_BATCH, self.num_keys)):
                key, value = key_of(index), value_of(index, 0, self.value_size)
                self.hashes[index] = entry_hash(key, value)
                self.checksum = (self.checksum + self.hashes[index]) & MASK64
                pipe.set(key, value)
            pipe.execute()
        scanned, keys = self.scan_checksum()
        if (scanned, keys) != (self.checksum, self.num_keys):
            raise RuntimeError(f"loaded dataset mismatch: {keys} keys, checksum {scanned:016x}")

    def scan_checksum(self) -> tuple[int, int]:
        """The checksum of what the server holds, by a full SCAN (duplicates dropped)."""
        seen: set[bytes] = set()
        total = 0
        batch: list[bytes] = []

        def add(keys: list[bytes]) -> int:
            values = self.client.mget(keys)
            return sum(entry_hash(k, v) for k, v in zip(keys, values, strict=True) if v is not None)

        for key in self.client.scan_iter(match=b"key:*", count=LOAD_BATCH):
            if key not in seen:
                seen.add(key)
                batch.append(key)
            if len(batch) == LOAD_BATCH:
                total += add(batch)
                batch = []
        if batch:
            total += add(batch)
        return total & MASK64, len(seen)

    def fields(self, checksum: int, reads: int, writes: int) -> dict[str, Any]:
        return {
            "keys": self.num_keys,
            "reads": reads,
            "writes": writes,
            "dataset_checksum": f"{checksum:016x}",
            "client_id": self.client_id,
        }

    def unit(self, proto: Protocol) -> None:
        """Reads checked against the model, then writes logged before they are sent."""
        indices = [self.rng.randrange(self.num_keys) for _ in range(READS_PER_UNIT)]
        pipe = self.client.pipeline(transaction=False)
        for index in indices:
            pipe.get(key_of(index))
        for index, value in zip(indices, pipe.execute(), strict=True):
            if value != value_of(index, self.versions[index], self.value_size):
                raise RuntimeError(f"{key_of(index)!r} holds an unexpected value")
        versions: dict[int, int] = {}
        hashes: dict[int, int] = {}
        values: dict[int, bytes] = {}
        checksum = self.checksum
        for _ in range(WRITES_PER_UNIT):
            index = self.rng.randrange(self.num_keys)
            version = versions.get(index, self.versions[index]) + 1
            value = value_of(index, version, self.value_size)
            new_hash = entry_hash(key_of(index), value)
            checksum = (checksum - hashes.get(index, self.hashes[index]) + new_hash) & MASK64
            versions[index], hashes[index], values[index] = version, new_hash, value
        # Logged first, then sent as one MULTI/EXEC: wherever a freeze falls, the restored
        # server holds either the last line's dataset or completes to it before the next check.
        proto.line(**self.fields(checksum, self.reads + len(indices), self.writes + len(values)))
        pipe = self.client.pipeline(transaction=True)
        for index, value in values.items():
            pipe.set(key_of(index), value)
        pipe.execute()
        for index, version in versions.items():
            self.versions[index] = version
            self.hashes[index] = hashes[index]
        self.checksum = checksum
        self.reads += len(indices)
        self.writes += len(values)

    def restored(self) -> dict[str, Any]:
        """The dataset checksum by a full SCAN, and the connection's id, after a restore."""
        scanned, keys = self.scan_checksum()
        fields = self.fields(scanned, self.reads, self.writes)
        fields.update(
            keys=keys,
            client_id=int(self.client.client_id()),
            model_checksum=f"{self.checksum:016x}",
        )
        return fields


def work(args: argparse.Namespace, working_dir: Path) -> None:
    if redis is None:
        raise RuntimeError(f"the redis module is not importable by {sys.executable}")
    check_port_free(args.redis_port)
    server = start_server(args.redis_port, working_dir)
    try:
        dataset = Dataset(args.redis_port, args.num_keys, args.value_size)
        dataset.load()
        proto = Protocol(working_dir, dataset.restored)
        proto.ready()
        while proto.running():
            started = time.time()
            dataset.unit(proto)
            proto.sleep(UNIT_S - (time.time() - started))
        proto.finish()
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


if __name__ == "__main__":
    sys.exit(run_protocol(build_parser(), work))
