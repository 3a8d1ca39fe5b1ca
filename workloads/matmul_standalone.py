#!/usr/bin/env python3
"""matmul workload: HPC-style dense matrix products with numpy (float64, N x N).

A and B are fixed (seeded); every iteration computes C = A @ B into a preallocated C, so
memory stays static at about 3*N*N*8 bytes. A and B hold small integers stored as float64:
every product and partial sum is then exact, so the checksum of the fixed product is the same
whatever BLAS kernel or summation order the destination's CPU uses. After a restore the
product and a CRC32 of A and B are recomputed from memory.

Single file on purpose: it is copied alone to bare nodes (stdlib + numpy). The protocol part
(`Protocol`) is repeated in every workload script; see docs/architecture.md.
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
        "--matrix-size", type=bounded(int, 1), default=2048, help="N of the N x N matrices"
    )
    parser.add_argument(
        "--iterations", type=bounded(int, 0), default=0, help="products to compute; 0 = forever"
    )
    parser.add_argument(
        "--interval", type=bounded(float, 0.0), default=1.0, help="s between products"
    )
    return parser


class MatMul:
    def __init__(self, size: int) -> None:
        rng = np.random.default_rng(SEED)
        self.a = rng.integers(-8, 9, size=(size, size)).astype(np.float64)
        self.b = rng.integers(-8, 9, size=(size, size)).astype(np.float64)
        self.c = np.empty((size, size), dtype=np.float64)
        self.iteration = 0
        self.fixed_checksum = self.product()
        self.inputs_checksum = self.inputs()

    def product(self) -> int:
        np.matmul(self.a, self.b, out=self.c)
        return int(self.c.sum())

    def inputs(self) -> str:
        return f"{zlib.crc32(self.b, zlib.crc32(self.a)):08x}"

    def fields(self, iteration: int, result: int, elapsed_s: float, done: bool) -> dict[str, Any]:
        return {
            "iteration": iteration,
            "result_checksum": result,
            "fixed_checksum": self.fixed_checksum,
            "inputs_checksum": self.inputs_checksum,
            "elapsed_s": round(elapsed_s, 4),
            "done": done,
        }

    def restored(self) -> dict[str, Any]:
        """The fixed product and the inputs' CRC, recomputed from the restored matrices."""
        started = time.time()
        product = self.product()
        fields = self.fields(self.iteration, product, time.time() - started, False)
        fields.update(fixed_checksum=product, inputs_checksum=self.inputs())
        return fields


def work(args: argparse.Namespace, working_dir: Path) -> None:
    if np is None:
        raise RuntimeError(f"numpy is not importable by {sys.executable}")
    matmul = MatMul(args.matrix_size)
    proto = Protocol(working_dir, matmul.restored)
    proto.ready()
    while proto.running():
        if args.iterations and matmul.iteration >= args.iterations:
            proto.line(**matmul.fields(matmul.iteration, matmul.fixed_checksum, 0.0, True))
            proto.sleep(max(args.interval, 0.5))
            continue
        # Wall clock, not perf_counter: monotonic clocks differ between hosts.
        started = time.time()
        result = matmul.product()
        elapsed = time.time() - started
        # Logged before the counter moves: a freeze between the two leaves them consistent.
        proto.line(**matmul.fields(matmul.iteration + 1, result, elapsed, False))
        matmul.iteration += 1
        proto.sleep(args.interval)
    proto.finish()


if __name__ == "__main__":
    sys.exit(run_protocol(build_parser(), work))
