"""Checkpoint transfer backends: how images and the working directory reach the destination.

A backend moves a list of absolute paths from the source host so that they exist at the
same paths on the destination. `send` runs on the source; backends whose destination has
to fetch (S3, EBS) also implement `receive`, run on the destination. Argv building and
output parsing are pure functions with unit tests; the `checkpoint_transfer` module runs
them. Standard library only.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

# run(argv) -> (rc, stdout, stderr)
Runner = Callable[[list[str]], tuple[int, str, str]]


@dataclass
class TransferRequest:
    paths: list[str]
    destination: str = ""  # address of the destination host
    user: str = "root"
    ssh_key: str = ""
    known_hosts: str = ""
    ssh_port: int = 22
    cipher: str = ""
    compress: str = "none"
    compress_level: int = 3
    verify: bool = False
    stage: str = "final"
    efs_path: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class TransferResult:
    method: str
    duration_s: float
    bytes: int
    files: int
    wire_bytes: int | None = None
    dest_paths: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "method": self.method,
            "duration_s": round(self.duration_s, 6),
            "bytes": self.bytes,
            "files": self.files,
            "throughput_mb_s": round(self.bytes / 1e6 / self.duration_s, 3)
            if self.duration_s > 0
            else 0.0,
            "dest_paths": self.dest_paths,
        }
        if self.wire_bytes is not None:
            data["wire_bytes"] = self.wire_bytes
        data.update(self.extra)
        return data


class TransferError(RuntimeError):
    def __init__(self, message: str, argv: Sequence[str] = (), output: str = "") -> None:
        super().__init__(message)
        self.argv = list(argv)
        self.output = output


class TransferBackend(Protocol):
    name: str

    def send(self, request: TransferRequest, run: Runner) -> TransferResult: ...


def ssh_command(request: TransferRequest) -> list[str]:
    """The ssh argv the transfer uses to reach the destination (keys pinned, no prompts)."""
    argv = ["ssh", "-o", "BatchMode=yes", "-o", "Compression=no", "-p", str(request.ssh_port)]
    if request.ssh_key:
        argv += ["-i", request.ssh_key, "-o", "IdentitiesOnly=yes"]
    if request.known_hosts:
        argv += [
            "-o",
            f"UserKnownHostsFile={request.known_hosts}",
            "-o",
            "StrictHostKeyChecking=yes",
        ]
    if request.cipher:
        argv += ["-c", request.cipher]
    return argv


def rsync_argv(request: TransferRequest, rsync: str = "rsync") -> list[str]:
    """rsync of `paths` to the same absolute paths on the destination, over SSH.

    --whole-file: the destination has no older copy worth a delta search, so the search
    only costs time. --relative keeps the absolute paths. --sparse keeps holes as holes.
    """
    if not request.destination:
        raise ValueError("rsync needs the destination's address")
    for path in request.paths:
        if not path.startswith("/") or any(ch.isspace() for ch in path):
            raise ValueError(f"transfer path {path!r} must be absolute and without spaces")
    argv = [
        rsync,
        "--archive",
        "--relative",
        "--whole-file",
        "--sparse",
        "--numeric-ids",
        "--stats",
        "--rsh",
        " ".join(ssh_command(request)),
    ]
    if request.user != "root":
        argv += ["--rsync-path", "sudo rsync"]
    argv += [*request.paths, f"{request.user}@{request.destination}:/"]
    return argv


_STAT_PATTERNS = {
    "files": re.compile(r"Number of regular files transferred:\s*([\d,]+)"),
    "bytes": re.compile(r"Total transferred file size:\s*([\d,]+)"),
    "wire_bytes": re.compile(r"Total bytes sent:\s*([\d,]+)"),
    "total_size": re.compile(r"Total file size:\s*([\d,]+)"),
}


def parse_rsync_stats(output: str) -> dict[str, int]:
    """The figures of `rsync --stats` (files transferred, payload bytes, bytes sent)."""
    stats: dict[str, int] = {}
    for key, pattern in _STAT_PATTERNS.items():
        match = pattern.search(output or "")
        if match:
            stats[key] = int(match.group(1).replace(",", ""))
    return stats


class RsyncBackend:
    name = "rsync"

    def send(self, request: TransferRequest, run: Runner) -> TransferResult:
        argv = rsync_argv(request)
        t0 = time.monotonic()
        rc, out, err = run(argv)
        duration = time.monotonic() - t0
        if rc != 0:
            raise TransferError(
                f"rsync to {request.destination} failed (rc={rc}): {err.strip()[-500:]}",
                argv,
                out + err,
            )
        stats = parse_rsync_stats(out)
        return TransferResult(
            method=self.name,
            duration_s=duration,
            bytes=stats.get("bytes", 0),
            files=stats.get("files", 0),
            wire_bytes=stats.get("wire_bytes"),
            dest_paths=list(request.paths),
            extra={"cipher": request.cipher, "total_size": stats.get("total_size", 0)},
        )


BACKENDS: dict[str, type] = {"rsync": RsyncBackend}


def backend_for(method: str) -> TransferBackend:
    try:
        return BACKENDS[method]()
    except KeyError:
        raise ValueError(
            f"transfer method {method!r} is not implemented; available: {', '.join(BACKENDS)}"
        ) from None
