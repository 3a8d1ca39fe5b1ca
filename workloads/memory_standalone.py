#!/usr/bin/env python3
"""memory workload: a growing allocation, every page really touched.

Every `interval` seconds one `bytearray` block of `mb_size` MB is allocated (until
`max_memory` MB are held) and one byte of each 4096-byte page is written, so the pages are
resident and CRIU has to copy them. Each line logs `sample_checksum`, a CRC32 of those bytes
(one per page of every block, never zero, chained in block order: a page that did not come
back reads as zero and changes it), and `rss_anon_kb`, the process's anonymous memory
(RssAnon); both are recomputed from memory after a restore. `rss_kb` (VmRSS) is for
information only: right after a restore the file-backed pages (the interpreter, libpython)
are not faulted in again yet.

Single file on purpose: it is copied alone to bare nodes (stdlib only). The protocol part
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

PAGE = 4096
MIB = 1024 * 1024
# 255 distinct non-zero bytes; block i's pages get this pattern rotated by i.
PATTERN = bytes(range(1, 256))


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
        "--mb-size", type=bounded(int, 1), default=256, help="MB allocated per interval"
    )
    parser.add_argument(
        "--interval", type=bounded(float, 0.001), default=5.0, help="s between blocks"
    )
    parser.add_argument("--max-memory", type=bounded(int, 1), default=8192, help="MB at most")
    return parser


# A lazy restore may still owe the process pages the restored recompute does not read (the
# interpreter's own): wait this long at most for them before measuring RssAnon.
LAZY_WAIT_S = 10.0


def memory_kb() -> tuple[int, int | None]:
    """VmRSS (all resident memory) and RssAnon (its anonymous part) in kB."""
    found: dict[str, int] = {}
    with open("/proc/self/status") as status:
        for line in status:
            name, _, value = line.partition(":")
            if name in ("VmRSS", "RssAnon"):
                found[name] = int(value.split()[0])
    return found.get("VmRSS", 0), found.get("RssAnon")


def lazy_restore_pending(smaps: str = "/proc/self/smaps") -> bool:
    """A lazy restore still sends pages: CRIU's lazy-pages daemon keeps the restored mappings
    registered with userfaultfd (VmFlags `um`) until every page went in."""
    with open(smaps) as lines:
        return any(line.startswith("VmFlags:") and "um" in line.split() for line in lines)


class Memory:
    def __init__(self, args: argparse.Namespace) -> None:
        self.mb_size = args.mb_size
        self.max_memory = args.max_memory
        self.blocks: list[bytearray] = []
        self.checksum = 0  # CRC32 of one byte of every page of every block, in block order
        self.pending: bytearray | None = None  # allocated and touched, not yet committed
        self.logged_anon_kb: int | None = None  # rss_anon_kb of the last line written

    def allocate(self, proto: Protocol) -> None:
        """One block, logged before it is committed (a freeze never splits the two)."""
        block = bytearray(self.mb_size * MIB)
        self.pending = block
        pages = len(range(0, len(block), PAGE))
        shift = len(self.blocks) % len(PATTERN)
        block[::PAGE] = (PATTERN * (pages // len(PATTERN) + 2))[shift : shift + pages]
        checksum = zlib.crc32(block[::PAGE], self.checksum)
        self.line(proto, len(self.blocks) + 1, checksum)
        self.blocks.append(block)
        self.checksum = checksum
        self.pending = None

    def line(self, proto: Protocol, count: int, checksum: int) -> None:
        fields = self.fields(count, checksum, *memory_kb())
        proto.line(**fields)  # a restore noticed here logs its line first, then this one
        self.logged_anon_kb = fields["rss_anon_kb"]

    def fields(self, count: int, checksum: int, rss_kb: int, anon_kb: int | None) -> dict[str, Any]:
        return {
            "blocks": count,
            "allocated_mb": count * self.mb_size,
            "rss_kb": rss_kb,  # information only: no continuity rule
            "rss_anon_kb": anon_kb,
            "sample_checksum": f"{checksum:08x}",
        }

    def restored(self) -> dict[str, Any]:
        """Recomputed from the restored pages (reading them also faults in lazy pages)."""
        checksum = 0
        for block in self.blocks:
            checksum = zlib.crc32(block[::PAGE], checksum)
        pending_kb = 0
        if self.pending is not None:  # frozen mid-block: the last line did not count it
            zlib.crc32(self.pending[::PAGE])
            pending_kb = len(self.pending) // 1024
        rss_kb, anon_kb = memory_kb()
        if (
            anon_kb is not None
            and self.logged_anon_kb is not None
            and anon_kb - pending_kb < self.logged_anon_kb
        ):
            # Fewer anonymous pages than before the freeze: after a lazy restore the pages this
            # recompute did not read may still be on their way. (smaps walks every page
            # table, ~10 ms per GB, hence only then.)
            for _ in range(round(LAZY_WAIT_S / 0.1)):
                if not lazy_restore_pending():
                    break
                time.sleep(0.1)
            rss_kb, anon_kb = memory_kb()
        return self.fields(
            len(self.blocks),
            checksum,
            rss_kb - pending_kb,
            None if anon_kb is None else anon_kb - pending_kb,
        )


def work(args: argparse.Namespace, working_dir: Path) -> None:
    memory = Memory(args)
    proto = Protocol(working_dir, memory.restored)
    proto.ready()
    while proto.running():
        if (len(memory.blocks) + 1) * memory.mb_size <= memory.max_memory:
            memory.allocate(proto)
        else:
            memory.line(proto, len(memory.blocks), memory.checksum)
        proto.sleep(args.interval)
    proto.finish()


if __name__ == "__main__":
    sys.exit(run_protocol(build_parser(), work))
