#!/usr/bin/env python3
"""dataproc workload: ETL / batch analytics over an in-memory numpy table.

A `num_rows` x `num_cols` float64 table (column-major, seeded) is built once; then the seed's
seven operations run round-robin, one every `interval` seconds: filter, aggregate, sort,
group_aggregate, join, transform, window. Column 0 also gives each row a group (100 groups)
that group_aggregate and join use. Values are multiples of 1/1024 below 1024, so column
sums are exact in float64 whatever the summation order; `fixed_checksum` (a CRC32 of the
column sums, the aggregate of the fixed dataset) is therefore identical on any CPU and is
recomputed from the restored table after a migration.

Single file on purpose: it is copied alone to bare nodes (stdlib + numpy; pandas is not
needed). The protocol part (`Protocol`) is repeated in every workload script; see
docs/architecture.md.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import socket
import sys
import time
import traceback
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

try:
    import numpy as np
except ImportError:  # argument parsing needs only the stdlib; work() reports it
    np = None

SEED = 20240611
GROUPS = 100
WINDOW = 100  # rows in the rolling window
OPERATIONS = ("filter", "aggregate", "sort", "group_aggregate", "join", "transform", "window")


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
        "--num-rows", type=bounded(int, 1), default=1000000, help="rows of the table"
    )
    parser.add_argument("--num-cols", type=bounded(int, 2), default=50, help="float64 columns")
    parser.add_argument(
        "--operations", type=bounded(int, 0), default=0, help="operations to run; 0 = forever"
    )
    parser.add_argument(
        "--interval", type=bounded(float, 0.0), default=1.0, help="s between operations"
    )
    return parser


class Table:
    def __init__(self, rows: int, cols: int) -> None:
        rng = np.random.default_rng(SEED)
        self.data = np.empty((rows, cols), dtype=np.float64, order="F")
        for col in range(cols):  # one column at a time: no second full-size temporary
            self.data[:, col] = rng.integers(0, 1 << 20, size=rows) / 1024.0
        self.groups = (self.data[:, 0] * 1024).astype(np.int64) % GROUPS
        # the dimension table that join looks rows up in: one weight and one offset per group
        self.dimension = rng.integers(1, 1 << 10, size=(GROUPS, 2)) / 1024.0
        self.op_count = 0
        self.fixed_checksum = self.fixed()

    def fixed(self) -> str:
        return f"{zlib.crc32(self.data.sum(axis=0).tobytes()):08x}"

    def column(self, index: int) -> Any:
        return self.data[:, index % self.data.shape[1]]

    def run(self, op: str) -> Any:
        data = self.data
        if op == "filter":
            mask = self.column(1) > 512.0
            return np.array([mask.sum(), self.column(2)[mask].sum()])
        if op == "aggregate":
            return np.concatenate([data.sum(axis=0), data.min(axis=0), data.max(axis=0)])
        if op == "sort":
            order = np.argsort(self.column(3), kind="stable")
            return data[order[:10]].ravel()
        if op == "group_aggregate":
            sums = np.bincount(self.groups, weights=self.column(1), minlength=GROUPS)
            return sums / np.maximum(np.bincount(self.groups, minlength=GROUPS), 1)
        if op == "join":
            joined = self.dimension[self.groups]
            return np.bincount(
                self.groups, weights=self.column(1) * joined[:, 0] + joined[:, 1], minlength=GROUPS
            )
        if op == "transform":
            scaled = (data - data.mean(axis=0)) / np.maximum(data.std(axis=0), 1e-12)
            return np.abs(scaled).sum(axis=0)
        sums = np.cumsum(self.column(1))  # window: rolling mean
        window = min(WINDOW, len(sums))
        rolling = (sums[window - 1 :] - np.concatenate([[0.0], sums[:-window]])) / window
        return np.array([rolling.min(), rolling.max(), rolling.mean()])

    def fields(
        self, op_count: int, op: str | None, result: Any, elapsed_s: float, done: bool
    ) -> dict[str, Any]:
        return {
            "op_count": op_count,
            "op": op,
            "result_checksum": None
            if result is None
            else f"{zlib.crc32(np.ascontiguousarray(result).tobytes()):08x}",
            "fixed_checksum": self.fixed_checksum,
            "elapsed_s": round(elapsed_s, 4),
            "done": done,
        }

    def restored(self) -> dict[str, Any]:
        """The fixed aggregate recomputed from the restored table."""
        fields = self.fields(self.op_count, None, None, 0.0, False)
        fields["fixed_checksum"] = self.fixed()
        return fields


def work(args: argparse.Namespace, working_dir: Path) -> None:
    if np is None:
        raise RuntimeError(f"numpy is not importable by {sys.executable}")
    table = Table(args.num_rows, args.num_cols)
    proto = Protocol(working_dir, table.restored)
    proto.ready()
    while proto.running():
        if args.operations and table.op_count >= args.operations:
            proto.line(**table.fields(table.op_count, None, None, 0.0, True))
            proto.sleep(max(args.interval, 0.5))
            continue
        op = OPERATIONS[table.op_count % len(OPERATIONS)]
        started = time.time()
        result = table.run(op)
        # Logged before the counter moves: a freeze between the two leaves them consistent.
        proto.line(**table.fields(table.op_count + 1, op, result, time.time() - started, False))
        table.op_count += 1
        proto.sleep(args.interval)
    proto.finish()


if __name__ == "__main__":
    sys.exit(run_protocol(build_parser(), work))
