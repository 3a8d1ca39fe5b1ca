"""Checkpoint transfer backends: how images and the working directory reach the destination.

A backend makes a list of absolute paths on the source exist at the same paths on the
destination (CRIU restores open files by path). `send` runs on the source; a two-sided
backend (`efs`, `s3`, `ebs`) also has a `receive` that runs on the destination before the
restore. Backends:

- `rsync`: straight from source to destination over SSH, one rsync, the cipher a setting.
- `ssh-zstd` (transfer=rsync with transfer_compress=zstd): `tar | zstd | ssh | zstd -d | tar`,
  built from Popen pipes with a counting pump in the middle (compressed bytes are measured,
  not estimated).
- `efs`: the images were written by the dump onto a filesystem both hosts mount; only the
  paths that are not on it (the working directory) are staged there (send) and copied to
  their local paths on the destination (receive).
- `s3`: the send uploads the files to a bucket (multipart, concurrent parts), the receive
  downloads them to the same paths on the destination. Both run the standalone
  `tools/s3_transfer.py` (copied to the nodes, run by the node's /usr/bin/python3 with
  Debian's python3-boto3) as an argv, so the fused critical path runs the receive over its
  SSH master; the AWS environment (region, the lab's credentials) goes to it on stdin.
- `ebs`: like efs, the images were dumped onto a volume mounted at `ebs_mount_path`; the send
  stages the rest on it and unmounts it, the volume moves to the destination
  (module_utils/ebs_attach.py: the control node's call on the stepwise path, the fused
  critical path's own on the source), and the receive mounts it there (the device found by
  its volume id: `find_volume_device`) and copies the staged paths out. Every step on a host
  goes through the runner it is given, so the fused path runs the receive on the
  destination over its SSH master.

Integrity: a sha256 manifest of the sent files (`checksum_manifest`), compared on the
destination (`compare_manifest`). Argv building, output parsing and the manifest code are
plain functions with unit tests; the `checkpoint_transfer` module runs them.
Standard library only (this file runs on the nodes; boto3 only in the S3 tool's process).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol


class Runner(Protocol):
    """Runs an argv (here, or on the destination over SSH): (rc, stdout, stderr). `stdin`,
    when given, is what the program reads on its standard input."""

    def __call__(self, argv: list[str], stdin: bytes | None = None) -> tuple[int, str, str]: ...


MB = 1_000_000.0
CHUNK = 1 << 20
CHECKSUM = "sha256"
# inject_fault=transfer_interrupt: rsync is throttled to this rate (KiB/s) and its SSH
# connection killed after INTERRUPT_AFTER_S, so it dies midway, deterministically.
INTERRUPT_BWLIMIT_KIB = 8192
INTERRUPT_AFTER_S = 1.0
# ... and the zstd stream is cut after this many compressed bytes.
INTERRUPT_AFTER_BYTES = 64 * 1024

VERIFY_NOT_APPLICABLE_EFS = (
    "not applicable: transfer=efs restores the very files the dump wrote on the shared "
    "filesystem; there is no second copy to compare"
)
VERIFY_PAGES_STREAMED = (
    "not applicable: the page images went to criu page-server on the destination during "
    "the dump; the source has no copy to checksum"
)


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
    efs_path: str = ""  # the shared filesystem's mount path (efs)
    efs_dir: str = ""  # this experiment's folder on it (efs)
    page_server: bool = False  # page images were streamed to criu page-server
    fault: str = "none"  # none | interrupt
    method: str = "rsync"  # the transfer setting; with compress it picks the backend
    # further `-o` options of every ssh the transfer runs (e.g. the fused critical path's
    # ControlPath: its SSH connection is opened before the freeze)
    ssh_options: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)
    # s3: the bucket, this pair's key prefix (<s3_prefix>/<experiment id>/<source host>),
    # an S3-compatible endpoint (empty: AWS), part size (MiB) and concurrent requests
    s3_bucket: str = ""
    s3_prefix: str = ""
    s3_endpoint_url: str = ""
    s3_part_size_mb: int = 8
    s3_max_concurrency: int = 10
    # ebs: the pair's volume, where it is mounted, this experiment's folder on it, and how
    # long its device may take to appear after the attach
    ebs_volume_id: str = ""
    ebs_mount_path: str = ""
    ebs_dir: str = ""
    ebs_timeout_s: float = 300.0
    # s3: the folder of the standalone tools on the nodes (tools/s3_transfer.py)
    tools_dir: str = ""
    # the environment of the programs that call AWS (region, the lab's credentials): handed
    # over on stdin, never on a command line, never printed
    env: dict[str, str] = field(default_factory=dict, repr=False)


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
            "throughput_mb_s": mb_per_s(self.bytes, self.duration_s),
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
    # True: the destination must run `receive` before the restore.
    two_sided: bool
    # The programs the backend runs on each side (the node checks look for them first).
    source_tools: tuple[str, ...]
    destination_tools: tuple[str, ...]

    def send(self, request: TransferRequest, run: Runner) -> TransferResult: ...

    def receive(self, request: TransferRequest, run: Runner) -> TransferResult | None: ...


def mb_per_s(size_bytes: float, seconds: float) -> float:
    return round(size_bytes / MB / seconds, 3) if seconds > 0 else 0.0


def check_paths(paths: Iterable[str]) -> None:
    for path in paths:
        if not path.startswith("/") or any(ch.isspace() for ch in path):
            raise ValueError(f"transfer path {path!r} must be absolute and without spaces")


def is_under(path: str, root: str) -> bool:
    path, root = os.path.normpath(path), os.path.normpath(root)
    return path == root or path.startswith(root.rstrip("/") + "/")


def payload_of(paths: Iterable[str]) -> tuple[int, int]:
    """(bytes, regular files) under `paths`, symlinks not followed."""
    total = files = 0
    for path in regular_files(paths):
        total += os.lstat(path).st_size
        files += 1
    return total, files


def regular_files(paths: Iterable[str]) -> list[str]:
    """Every regular file under `paths` (a path may itself be a file), sorted."""
    found: list[str] = []
    for root in paths:
        if os.path.isfile(root) and not os.path.islink(root):
            found.append(root)
            continue
        for folder, _dirs, names in os.walk(root):
            for name in names:
                path = os.path.join(folder, name)
                if os.path.isfile(path) and not os.path.islink(path):
                    found.append(path)
    return sorted(found)


# -- ssh and rsync ------------------------------------------------------------------------


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
    for option in request.ssh_options:
        argv += ["-o", option]
    return argv


# How images and working directories are copied, over SSH or locally: keep absolute paths
# (--relative), no delta search (--whole-file), holes stay holes (--sparse), and report
# what was sent (--stats).
RSYNC_IMAGE_FLAGS = (
    "--archive",
    "--relative",
    "--whole-file",
    "--sparse",
    "--numeric-ids",
    "--stats",
)


def rsync_argv(request: TransferRequest, rsync: str = "rsync", bwlimit_kib: int = 0) -> list[str]:
    """rsync of `paths` to the same absolute paths on the destination, over SSH.

    --whole-file: the destination has no older copy worth a delta search, so the search
    only costs time. --relative keeps the absolute paths. --sparse keeps holes as holes (a
    workload's sparse file must not grow on the destination; docs/transfer.md measures what
    it costs on page images). No --inplace (it cannot be combined with --sparse before
    rsync 3.1.3, and a cut transfer would leave half-written files under the final names),
    no -z (compression is transfer_compress=zstd, a separate pipeline).
    """
    if not request.destination:
        raise ValueError("rsync needs the destination's address")
    check_paths(request.paths)
    argv = [rsync, *RSYNC_IMAGE_FLAGS, "--rsh", " ".join(ssh_command(request))]
    if bwlimit_kib:
        argv.append(f"--bwlimit={bwlimit_kib}")
    if request.user != "root":
        argv += ["--rsync-path", "sudo rsync"]
    argv += [*request.paths, f"{request.user}@{request.destination}:/"]
    return argv


def local_rsync_argv(sources: Sequence[str], dest: str, rsync: str = "rsync") -> list[str]:
    """rsync between two local folders (efs staging), keeping the sources' absolute paths
    under `dest` (--relative; a `/./` in a source marks where the kept part starts)."""
    return [rsync, *RSYNC_IMAGE_FLAGS, *sources, dest]


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


def rsync_stats_or_raise(run: Runner, argv: list[str], what: str) -> dict[str, int]:
    """Run an rsync; its --stats figures, or a TransferError saying what failed and why."""
    rc, out, err = run(argv)
    if rc != 0:
        raise TransferError(f"{what} failed (rc={rc}): {err.strip()[-500:]}", argv, out + err)
    return parse_rsync_stats(out)


def stage_beside_images(
    run: Runner, staged: list[str], staging: str, where: str
) -> tuple[dict[str, int], float]:
    """Copy the folders that are not on the shared storage (the working directory) into
    `staging` on it, for efs and ebs alike: rsync's figures and the seconds it took."""
    stats: dict[str, int] = {}
    t0 = time.monotonic()
    if staged:
        os.makedirs(staging, exist_ok=True)
        stats = rsync_stats_or_raise(
            run, local_rsync_argv(staged, staging + "/"), f"staging {', '.join(staged)} on {where}"
        )
    return stats, time.monotonic() - t0


def child_pids(pid: int) -> list[int]:
    """Direct children of `pid` (from /proc)."""
    children = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat:
                # "pid (comm) state ppid ...": comm may hold spaces, so split after ')'.
                ppid = int(stat.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        if ppid == pid:
            children.append(int(entry))
    return children


def run_and_cut(argv: list[str], after_s: float) -> tuple[int, str, str]:
    """Run `argv`, and after `after_s` kill the processes it spawned (its ssh): the link
    dies under a running transfer. Returns (rc, stdout, stderr) like a Runner."""
    with subprocess.Popen(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as proc:
        try:
            out, err = proc.communicate(timeout=after_s)
            return proc.returncode, out, err  # finished before the cut
        except subprocess.TimeoutExpired:
            pass
        for child in child_pids(proc.pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signal.SIGKILL)
        out, err = proc.communicate()
        note = f"\n[inject_fault=transfer_interrupt: SSH connection killed after {after_s:g} s]"
        return proc.returncode, out, err + note


class RsyncBackend:
    name = "rsync"
    two_sided = False
    source_tools = ("rsync", "ssh")
    destination_tools = ("rsync",)

    def send(self, request: TransferRequest, run: Runner) -> TransferResult:
        interrupt = request.fault == "interrupt"
        argv = rsync_argv(request, bwlimit_kib=INTERRUPT_BWLIMIT_KIB if interrupt else 0)
        t0 = time.monotonic()
        rc, out, err = run_and_cut(argv, INTERRUPT_AFTER_S) if interrupt else run(argv)
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

    def receive(self, request: TransferRequest, run: Runner) -> TransferResult | None:
        return None  # rsync wrote the files on the destination already


# -- tar | zstd | ssh pipeline --------------------------------------------------------------


@dataclass
class Pipeline:
    """Processes connected stdout -> stdin; the Python pump sits before stage `pump_at`."""

    stages: list[list[str]]
    pump_at: int

    def describe(self) -> str:
        parts = [shlex.join(stage) for stage in self.stages]
        parts.insert(self.pump_at, "(count)")
        return " | ".join(parts)


def zstd_pipeline(
    request: TransferRequest, tar: str = "tar", zstd: str = "zstd", remote_zstd: str = "zstd"
) -> Pipeline:
    """`tar -c paths | zstd -T0 -<level> | (count) | ssh dest 'zstd -d | tar -x -C /'`.

    tar takes the paths relative to / so the destination extracts them at the same absolute
    paths. The remote side is one command line for the destination's shell (ssh sends a
    string), quoted stage by stage.
    """
    if not request.destination:
        raise ValueError("the zstd stream needs the destination's address")
    check_paths(request.paths)
    level = int(request.compress_level)
    if not 1 <= level <= 19:
        raise ValueError(f"zstd level {level} is outside 1..19")
    relative = [path.lstrip("/") for path in request.paths]
    sudo = [] if request.user == "root" else ["sudo"]
    remote = " | ".join(
        [
            shlex.join([remote_zstd, "--decompress", "--quiet", "--stdout"]),
            shlex.join([*sudo, "tar", "--extract", "--numeric-owner", "--file=-", "--directory=/"]),
        ]
    )
    return Pipeline(
        stages=[
            [
                tar,
                "--create",
                "--sparse",
                "--numeric-owner",
                "--totals",
                "--file=-",
                "--directory=/",
                *relative,
            ],
            [zstd, "--threads=0", f"-{level}", "--quiet", "--stdout"],
            [*ssh_command(request), f"{request.user}@{request.destination}", remote],
        ],
        pump_at=2,
    )


@dataclass
class PipelineOutcome:
    returncodes: list[int]
    stderr: list[str]
    pumped_bytes: int
    duration_s: float
    cpu_s: list[float]  # user + system seconds of each stage
    cut: bool = False

    @property
    def ok(self) -> bool:
        return not self.cut and all(rc == 0 for rc in self.returncodes)


def _reap(proc: subprocess.Popen[bytes]) -> float:
    """Wait for `proc` and return its CPU seconds (os.wait4 gives the rusage Popen hides;
    0.0 when Popen reaped it already)."""
    if proc.returncode is not None:
        return 0.0
    _pid, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return usage.ru_utime + usage.ru_stime


def _kill(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL without Popen.kill, which may reap the process and lose its rusage."""
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGKILL)


def run_pipeline(pipeline: Pipeline, cut_after_bytes: int = 0) -> PipelineOutcome:
    """Run the stages with OS pipes; bytes from stage pump_at-1 to pump_at go through a
    counting loop here. cut_after_bytes > 0 kills the stage after the pump (the ssh) once
    that many bytes went through: the stream dies midway (inject_fault)."""
    procs: list[subprocess.Popen[bytes]] = []
    # stderr to files, not pipes: nothing here reads them while the stages run
    errs = [tempfile.TemporaryFile() for _ in pipeline.stages]  # noqa: SIM115 (closed below)
    pumped, cut = 0, False
    t0 = time.monotonic()
    try:
        upstream = subprocess.DEVNULL
        for index, argv in enumerate(pipeline.stages):
            stdin = subprocess.PIPE if index == pipeline.pump_at else upstream
            last = index == len(pipeline.stages) - 1
            proc = subprocess.Popen(
                argv,
                stdin=stdin,
                stdout=subprocess.DEVNULL if last else subprocess.PIPE,
                stderr=errs[index],
            )
            if index > 0 and index != pipeline.pump_at and procs[-1].stdout:
                procs[-1].stdout.close()  # the child holds it now; EOF/SIGPIPE must propagate
            procs.append(proc)
            upstream = proc.stdout
        source = procs[pipeline.pump_at - 1].stdout
        sink = procs[pipeline.pump_at].stdin
        assert source is not None and sink is not None
        try:
            while True:
                chunk = os.read(source.fileno(), CHUNK)
                if not chunk:
                    break
                view = memoryview(chunk)
                while view:
                    view = view[os.write(sink.fileno(), view) :]
                pumped += len(chunk)
                if cut_after_bytes and pumped >= cut_after_bytes:
                    _kill(procs[pipeline.pump_at])
                    cut = True
                    break
        except BrokenPipeError:
            pass  # the receiving side died: its return code says why
        finally:
            sink.close()
            if cut:
                for proc in procs[: pipeline.pump_at]:
                    _kill(proc)
            source.close()
        cpu = [_reap(proc) for proc in procs]
    except BaseException:
        for proc in procs:
            _kill(proc)
            with contextlib.suppress(ChildProcessError):
                _reap(proc)
        raise
    finally:
        texts = []
        for err in errs:
            err.seek(0)
            texts.append(err.read().decode(errors="replace"))
            err.close()
    return PipelineOutcome(
        returncodes=[proc.returncode or 0 for proc in procs],
        stderr=texts,
        pumped_bytes=pumped,
        duration_s=time.monotonic() - t0,
        cpu_s=[round(value, 6) for value in cpu],
        cut=cut,
    )


_TAR_TOTALS = re.compile(r"Total bytes written:\s*(\d+)")


def parse_tar_totals(stderr: str) -> int | None:
    """The tar stream's size from `tar --totals` ("Total bytes written: N (...)")."""
    match = _TAR_TOTALS.search(stderr or "")
    return int(match.group(1)) if match else None


def compression_figures(
    raw_bytes: int, compressed_bytes: int, duration_s: float, cpu_s: float, level: int
) -> dict[str, Any]:
    """Ratio, time and MB/s before and after compression, for metrics.json."""
    return {
        "algorithm": "zstd",
        "level": level,
        "raw_bytes": raw_bytes,
        "compressed_bytes": compressed_bytes,
        "ratio": round(raw_bytes / compressed_bytes, 3) if compressed_bytes else None,
        "duration_s": round(duration_s, 6),
        "raw_mb_s": mb_per_s(raw_bytes, duration_s),
        "compressed_mb_s": mb_per_s(compressed_bytes, duration_s),
        "compress_cpu_s": round(cpu_s, 6),
    }


class ZstdSshBackend:
    """transfer=rsync with transfer_compress=zstd: a compressed tar stream over SSH."""

    name = "ssh-zstd"
    two_sided = False
    source_tools = ("tar", "zstd", "ssh")
    destination_tools = ("tar", "zstd")

    def send(self, request: TransferRequest, run: Runner) -> TransferResult:
        pipeline = zstd_pipeline(request)
        payload, files = payload_of(request.paths)
        cut = INTERRUPT_AFTER_BYTES if request.fault == "interrupt" else 0
        outcome = run_pipeline(pipeline, cut_after_bytes=cut)
        if not outcome.ok:
            names = ["tar", "zstd", "ssh (zstd -d | tar -x on the destination)"]
            failed = [
                f"{names[i]} rc={rc}: {outcome.stderr[i].strip()[-300:]}"
                for i, rc in enumerate(outcome.returncodes)
                if rc != 0
            ]
            if outcome.cut:
                failed.append(
                    f"inject_fault=transfer_interrupt: SSH killed after {outcome.pumped_bytes} "
                    "compressed bytes"
                )
            raise TransferError(
                f"zstd stream to {request.destination} failed: {'; '.join(failed)}",
                pipeline.stages[-1],
                "\n".join(outcome.stderr),
            )
        raw = parse_tar_totals(outcome.stderr[0]) or payload
        return TransferResult(
            method=self.name,
            duration_s=outcome.duration_s,
            bytes=payload,
            files=files,
            wire_bytes=outcome.pumped_bytes,
            dest_paths=list(request.paths),
            extra={
                "cipher": request.cipher,
                "pipeline": pipeline.describe(),
                "compression": compression_figures(
                    raw,
                    outcome.pumped_bytes,
                    outcome.duration_s,
                    outcome.cpu_s[1],
                    request.compress_level,
                ),
            },
        )

    def receive(self, request: TransferRequest, run: Runner) -> TransferResult | None:
        return None  # tar extracted the files on the destination already


# -- efs: a filesystem both hosts mount --------------------------------------------------------


def efs_layout(request: TransferRequest) -> tuple[list[str], list[str], str]:
    """(paths already on the shared filesystem, paths to stage, staging folder)."""
    if not request.efs_path or not request.efs_dir:
        raise ValueError(
            "transfer=efs needs the mount path (efs_path) and the experiment's folder on it (efs_dir)"
        )
    check_paths([*request.paths, request.efs_path, request.efs_dir])
    if not is_under(request.efs_dir, request.efs_path):
        raise ValueError(f"efs_dir {request.efs_dir} is not under efs_path {request.efs_path}")
    in_place = [p for p in request.paths if is_under(p, request.efs_path)]
    staged = [p for p in request.paths if not is_under(p, request.efs_path)]
    return in_place, staged, os.path.join(request.efs_dir, "files")


class EfsBackend:
    """The dump wrote the images onto the shared filesystem; the rest goes through it."""

    name = "efs"
    two_sided = True
    source_tools = ("rsync",)
    destination_tools = ("rsync",)

    def send(self, request: TransferRequest, run: Runner) -> TransferResult:
        in_place, staged, staging = efs_layout(request)
        if not in_place:
            raise TransferError(
                f"transfer=efs: none of {', '.join(request.paths)} is on the shared filesystem "
                f"{request.efs_path}: the images must be dumped there (migration_images_base)"
            )
        shared_bytes, shared_files = payload_of(in_place)
        stats, duration = stage_beside_images(run, staged, staging, request.efs_path)
        return TransferResult(
            method=self.name,
            duration_s=duration,
            bytes=stats.get("bytes", 0),
            files=stats.get("files", 0),
            dest_paths=in_place,
            extra={
                "efs_path": request.efs_path,
                "efs_dir": request.efs_dir,
                "shared_bytes": shared_bytes,
                "shared_files": shared_files,
                "staged": staged,
            },
        )

    def receive(self, request: TransferRequest, run: Runner) -> TransferResult | None:
        _in_place, staged, staging = efs_layout(request)
        stats: dict[str, int] = {}
        t0 = time.monotonic()
        if staged:
            stats = rsync_stats_or_raise(
                run,
                local_rsync_argv([f"{staging}/.{path}" for path in staged], "/"),
                f"copying {', '.join(staged)} from {staging}",
            )
        return TransferResult(
            method=self.name,
            duration_s=time.monotonic() - t0,
            bytes=stats.get("bytes", 0),
            files=stats.get("files", 0),
            dest_paths=staged,
        )


# -- s3: upload on the source, download on the destination -----------------------------------

# The node side of transfer=s3 (tools/s3_transfer.py, copied to `tools_dir` on every node),
# run by the node's Debian interpreter, which has python3-boto3.
S3_TOOL = "s3_transfer.py"
NODE_PYTHON = "/usr/bin/python3"
# inject_fault=transfer_interrupt with s3: the uploader is killed once this share of the
# payload went out, with parts in flight.
S3_INTERRUPT_SHARE = 0.5
# Environment variables that hold credentials (masked in every message).
SECRET_ENV = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")
# An S3 bucket name (3-63 characters: lowercase letters, digits, dots, hyphens).
S3_BUCKET_PATTERN = r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]"


def aws_environment(aws: dict[str, Any] | None) -> dict[str, str]:
    """The environment of a program that calls AWS, from a module's `aws` option (AWS_OPTIONS):
    the inventory's plain variables, its credentials, the region. Empty values are left out
    (boto3's own chain then decides: the instance profile on EC2)."""
    aws = aws or {}
    env = {str(k): str(v) for k, v in (aws.get("environment") or {}).items() if v not in (None, "")}
    env.update(
        {str(k): str(v) for k, v in (aws.get("credentials") or {}).items() if v not in (None, "")}
    )
    if aws.get("region"):
        env["AWS_DEFAULT_REGION"] = str(aws["region"])
    return env


def masked(text: str, env: dict[str, str]) -> str:
    """`text` with every credential value of `env` replaced by ********."""
    for name in SECRET_ENV:
        value = env.get(name)
        if value and len(value) >= 4:
            text = text.replace(value, "********")
    return text


def env_stdin(request: TransferRequest) -> bytes:
    """What the S3 tool reads with --env-stdin: one JSON line with the environment."""
    return (json.dumps({"env": request.env}) + "\n").encode()


def s3_location(request: TransferRequest) -> str:
    return f"s3://{request.s3_bucket}/{request.s3_prefix.strip('/')}/"


def s3_tool_argv(request: TransferRequest, command: str, *extra: str) -> list[str]:
    """The S3 tool's argv for `command` (upload, download, delete, check) of this request."""
    if not request.s3_bucket or not request.s3_prefix:
        raise ValueError("transfer=s3 needs the bucket (s3_bucket) and the pair's key prefix")
    if not request.tools_dir:
        raise ValueError("transfer=s3 needs the nodes' tools folder (aws.tools_dir)")
    argv = [
        NODE_PYTHON,
        os.path.join(request.tools_dir, S3_TOOL),
        command,
        "--env-stdin",
        "--bucket",
        request.s3_bucket,
        "--prefix",
        request.s3_prefix.strip("/"),
        "--stage",
        request.stage,
        "--part-size-mb",
        str(int(request.s3_part_size_mb)),
        "--max-concurrency",
        str(int(request.s3_max_concurrency)),
    ]
    if request.s3_endpoint_url:
        argv += ["--endpoint-url", request.s3_endpoint_url]
    if request.env.get("AWS_DEFAULT_REGION"):
        argv += ["--region", request.env["AWS_DEFAULT_REGION"]]
    return [*argv, *extra]


def tool_reply(out: str) -> dict[str, Any]:
    """The S3 tool's JSON reply (its last stdout line), {} when it printed none."""
    for line in reversed((out or "").strip().splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                data = json.loads(line)
            except ValueError:
                continue
            return data if isinstance(data, dict) else {}
    return {}


def run_s3_tool(
    request: TransferRequest, run: Runner, command: str, *extra: str
) -> tuple[int, dict[str, Any], str, list[str]]:
    """(rc, reply, why it failed or "", argv) of one S3 tool call."""
    argv = s3_tool_argv(request, command, *extra)
    rc, out, err = run(argv, stdin=env_stdin(request))
    reply = tool_reply(out)
    why = ""
    if rc != 0 or not reply.get("ok"):
        why = str(reply.get("error") or (err or out).strip()[-500:] or f"exit status {rc}")
    return rc, reply, masked(why, request.env), argv


class S3Backend:
    """transfer=s3: multipart upload by the source, download by the destination."""

    name = "s3"
    two_sided = True
    # the receive fetches what the send put in the bucket (every stage, pre-dumps included)
    receive_fetches = True
    # NODE_PYTHON with python3-boto3 and the tool: the node checks run the tool itself
    source_tools = ("python3",)
    destination_tools = ("python3",)

    def remove_partial(self, request: TransferRequest, run: Runner) -> str:
        """After a failed upload: abort the pair's unfinished multipart uploads and delete
        its objects (the source's images are intact; a partial set is of no use)."""
        rc, reply, why, _argv = run_s3_tool(request, run, "delete")
        if rc != 0:
            return f"removing the partial upload failed too: {why}"
        done = reply.get("delete") or {}
        return (
            f"removed the partial upload under {s3_location(request)}: "
            f"{done.get('uploads_aborted', 0)} unfinished multipart uploads aborted, "
            f"{done.get('objects_deleted', 0)} objects deleted"
        )

    def send(self, request: TransferRequest, run: Runner) -> TransferResult:
        check_paths(request.paths)
        payload, _files = payload_of(request.paths)
        cut = max(1, int(payload * S3_INTERRUPT_SHARE)) if request.fault == "interrupt" else 0
        extra = ("--cut-after-bytes", str(cut)) if cut else ()
        t0 = time.monotonic()
        rc, reply, why, argv = run_s3_tool(request, run, "upload", *extra, *request.paths)
        duration = time.monotonic() - t0
        if why:
            if cut and rc in (-signal.SIGKILL, 128 + signal.SIGKILL):
                why = (
                    f"inject_fault=transfer_interrupt: the uploader was killed after "
                    f"{cut} of {payload} bytes, with parts in flight"
                )
            raise TransferError(
                f"upload to {s3_location(request)} failed (rc={rc}): {why}; "
                f"{self.remove_partial(request, run)}",
                argv,
            )
        upload = reply.get("upload") or {}
        return TransferResult(
            method=self.name,
            duration_s=duration,
            bytes=int(upload.get("bytes", 0)),
            files=int(upload.get("objects", 0)),
            dest_paths=[],
            extra={
                "s3": {
                    "bucket": request.s3_bucket,
                    "prefix": request.s3_prefix.strip("/") + "/",
                    "endpoint_url": request.s3_endpoint_url or None,
                    "part_size_mb": int(request.s3_part_size_mb),
                    "max_concurrency": int(request.s3_max_concurrency),
                    "upload": upload,
                }
            },
        )

    def receive(self, request: TransferRequest, run: Runner) -> TransferResult | None:
        t0 = time.monotonic()
        rc, reply, why, argv = run_s3_tool(request, run, "download", *request.paths)
        duration = time.monotonic() - t0
        if why:
            raise TransferError(
                f"download from {s3_location(request)} failed (rc={rc}): {why}", argv
            )
        download = reply.get("download") or {}
        return TransferResult(
            method=self.name,
            duration_s=duration,
            bytes=int(download.get("bytes", 0)),
            files=int(download.get("objects", 0)),
            dest_paths=list(request.paths),
            extra={"s3": {"download": download}},
        )


# -- ebs: a volume that moves from the source to the destination -------------------------------

# Where udev links an EBS volume on a Nitro instance: the NVMe controller's serial number is
# the volume id without its dash (docs/cloud.md).
EBS_BY_ID = "disk/by-id/nvme-Amazon_Elastic_Block_Store_{serial}"
# The lab's volumes are files named <volume id>.img behind loop devices
# (module_utils/ebs_attach.py), found by their backing file.
LAB_BACKING_SUFFIX = ".img"
EBS_FS_LABEL = "criu-ebs"
SBIN_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def volume_serial(volume_id: str) -> str:
    """The NVMe serial number of an EBS volume: its id without the dash (vol0123...)."""
    if not re.fullmatch(r"vol-[0-9a-f]{8,17}", volume_id or ""):
        raise ValueError(f"{volume_id!r} is not an EBS volume id (vol-<hex>)")
    return volume_id.replace("-", "")


# The block device of an attached EBS volume, found by its volume id, never guessed from the
# device name given to AttachVolume (Nitro instances rename it /dev/nvme<N>n1). A shell
# script, so that it runs on whichever host the runner reaches ($1 volume id, $2 its NVMe
# serial, $3 /dev, $4 /sys, $5 the lab's backing-file suffix, $6 udev's link, EBS_BY_ID):
# 1. udev's link /dev/disk/by-id/nvme-Amazon_Elastic_Block_Store_vol<id without dash>;
# 2. the same serial in sysfs (/sys/block/<name>/device/serial; virtio disks: .../serial),
#    for hosts without udev (NVMe pads its serial with spaces);
# 3. the namespaces lab: a loop device whose backing file is <volume id>.img.
FIND_VOLUME_DEVICE_SH = r"""
volume=$1 serial=$2 dev=$3 sys=$4 suffix=$5 link=$6
if [ -e "$link" ]; then readlink -f "$link"; exit 0; fi
for block in "$sys"/block/*; do
  name=${block##*/}
  [ -e "$dev/$name" ] || continue
  for file in "$block/device/serial" "$block/serial"; do
    [ -r "$file" ] || continue
    found=$(tr -d ' \t\n' < "$file")
    if [ "$found" = "$serial" ] || [ "$found" = "$volume" ]; then echo "$dev/$name"; exit 0; fi
  done
  if [ -r "$block/loop/backing_file" ]; then
    backing=$(cat "$block/loop/backing_file")
    if [ "${backing##*/}" = "$volume$suffix" ]; then echo "$dev/$name"; exit 0; fi
  fi
done
exit 1
"""


def find_volume_device(
    volume_id: str, run: Runner, dev: str = "/dev", sys_root: str = "/sys"
) -> str | None:
    """The block device of an attached EBS volume on the host `run` reaches (None: none yet)."""
    serial = volume_serial(volume_id)
    rc, out, _err = run(
        ["sh", "-c", FIND_VOLUME_DEVICE_SH, "find-volume-device", volume_id, serial, dev,
         sys_root, LAB_BACKING_SUFFIX, os.path.join(dev, EBS_BY_ID.format(serial=serial))]
    )  # fmt: skip
    return out.strip() or None if rc == 0 else None


def host_name(run: Runner) -> str:
    """The name of the host `run` reaches (for messages)."""
    rc, out, _err = run(["uname", "-n"])
    return out.strip() if rc == 0 and out.strip() else "the host"


def wait_for_volume_device(
    volume_id: str,
    timeout_s: float,
    find: Callable[[str], str | None],
    interval_s: float = 0.05,
    where: Callable[[], str] = lambda: os.uname().nodename,
) -> tuple[str, float]:
    """(device, seconds waited) once the attached volume's device shows up on the host."""
    t0 = time.monotonic()
    while True:
        device = find(volume_id)
        if device:
            return device, time.monotonic() - t0
        if time.monotonic() - t0 >= timeout_s:
            raise TransferError(
                f"no block device of EBS volume {volume_id} appeared on {where()} "
                f"within {timeout_s:g} s of its attach (looked for the NVMe serial "
                f"{volume_serial(volume_id)} in /dev/disk/by-id and /sys/block)"
            )
        time.sleep(interval_s)


def mounted_source(
    mount_path: str, run: Runner, mountinfo: str = "/proc/self/mountinfo"
) -> str | None:
    """major:minor of what is mounted at `mount_path` on the host `run` reaches (None:
    nothing)."""
    target = os.path.normpath(mount_path)
    _rc, out, _err = run(["cat", mountinfo])
    found = None
    for line in out.splitlines():
        fields = line.split()
        if len(fields) > 4 and fields[4].replace("\\040", " ") == target:
            found = fields[2]  # the last mount on a path is the visible one
    return found


def device_number(device: str, run: Runner) -> str:
    """major:minor of a block device on the host `run` reaches."""
    rc, out, err = run(["stat", "--dereference", "--format", "%t:%T", device])
    if rc != 0 or ":" not in out:
        raise TransferError(f"cannot stat {device}: {(err or out).strip()}")
    major, minor = out.strip().split(":")
    return f"{int(major, 16)}:{int(minor, 16)}"


def missing_paths(paths: Sequence[str], run: Runner) -> list[str]:
    """Which of `paths` do not exist on the host `run` reaches."""
    if not paths:
        return []
    script = 'for p; do [ -e "$p" ] || printf "%s\\n" "$p"; done'
    _rc, out, _err = run(["sh", "-c", script, "missing-paths", *paths])
    return [line for line in out.splitlines() if line]


def sbin(name: str) -> str:
    """A system tool by its full path (SSH sessions' PATH may lack the sbin folders)."""
    return shutil.which(name, path=SBIN_PATH) or name


def run_or_raise(run: Runner, argv: list[str], what: str) -> tuple[str, float]:
    t0 = time.monotonic()
    rc, out, err = run(argv)
    if rc != 0:
        raise TransferError(f"{what} failed (rc={rc}): {(err or out).strip()[-400:]}", argv)
    return out, time.monotonic() - t0


def mount_volume(
    volume_id: str,
    mount_path: str,
    timeout_s: float,
    run: Runner,
    make_filesystem: bool = False,
    find: Callable[[str], str | None] | None = None,
) -> dict[str, Any]:
    """Find the attached volume's device by its id, make its filesystem when it has none and
    `make_filesystem` (the source, once), mount it at `mount_path` - on the host `run`
    reaches. Each step timed."""
    device, waited = wait_for_volume_device(
        volume_id,
        timeout_s,
        find or (lambda volume: find_volume_device(volume, run)),
        where=lambda: host_name(run),
    )
    figures: dict[str, Any] = {
        "volume_id": volume_id,
        "device": device,
        "device_wait_s": round(waited, 6),
    }
    current = mounted_source(mount_path, run)
    if current is not None:
        if current == device_number(device, run):
            return {**figures, "mounted_already": True, "mount_s": 0.0}
        raise TransferError(f"{mount_path} is already a mount point of another device ({current})")
    rc, out, _err = run([sbin("blkid"), "-o", "value", "-s", "TYPE", device])
    fstype = out.strip() if rc == 0 else ""
    if not fstype:
        if not make_filesystem:
            raise TransferError(
                f"EBS volume {volume_id} ({device}) has no filesystem here: it was not "
                "mounted on the source first"
            )
        _out, figures["mkfs_s"] = run_or_raise(
            run,
            [sbin("mkfs.ext4"), "-q", "-F", "-L", EBS_FS_LABEL, device],
            f"making a filesystem on {device} ({volume_id})",
        )
        fstype = "ext4"
    run_or_raise(run, ["mkdir", "-p", mount_path], f"creating {mount_path}")
    _out, figures["mount_s"] = run_or_raise(
        run, [sbin("mount"), device, mount_path], f"mounting {device} ({volume_id}) at {mount_path}"
    )
    figures["mount_s"] = round(figures["mount_s"], 6)
    figures["fstype"] = fstype
    return figures


def unmount_volume(mount_path: str, run: Runner) -> dict[str, Any]:
    """Flush and unmount the volume at `mount_path` (nothing to do when it is not mounted)."""
    if mounted_source(mount_path, run) is None:
        return {"mounted": False, "umount_s": 0.0}
    _out, sync_s = run_or_raise(run, [sbin("sync"), "-f", mount_path], f"sync of {mount_path}")
    _out, umount_s = run_or_raise(run, [sbin("umount"), mount_path], f"unmounting {mount_path}")
    return {"mounted": True, "sync_s": round(sync_s, 6), "umount_s": round(umount_s, 6)}


def shared_layout(
    paths: Sequence[str], mount_path: str, folder: str, method: str
) -> tuple[list[str], list[str], str]:
    """(paths already on the shared filesystem or volume, paths to stage, staging folder)."""
    if not mount_path or not folder:
        raise ValueError(
            f"transfer={method} needs the mount path and the experiment's folder on it"
        )
    check_paths([*paths, mount_path, folder])
    if not is_under(folder, mount_path):
        raise ValueError(f"{folder} is not under the mount path {mount_path}")
    in_place = [p for p in paths if is_under(p, mount_path)]
    staged = [p for p in paths if not is_under(p, mount_path)]
    return in_place, staged, os.path.join(folder, "files")


class EbsBackend:
    """transfer=ebs: the dump wrote the images onto the pair's volume, mounted on the source;
    the send stages the rest there and unmounts it, the volume moves (the `handover`: the
    control node's call stepwise, the critical path's own fused), the receive mounts it on the
    destination and copies the staged paths out."""

    name = "ebs"
    two_sided = True
    receive_fetches = False  # pre-dumps stay on the volume: nothing to fetch per stage
    # the source also mounts the volume before the dump (and makes its filesystem once)
    source_tools = ("rsync", "blkid", "mkfs.ext4", "mount", "sync", "umount")
    destination_tools = ("rsync", "blkid", "mount", "sync", "umount")

    def send(self, request: TransferRequest, run: Runner) -> TransferResult:
        in_place, staged, staging = shared_layout(
            request.paths, request.ebs_mount_path, request.ebs_dir, self.name
        )
        if mounted_source(request.ebs_mount_path, run) is None:
            raise TransferError(
                f"transfer=ebs: nothing is mounted at {request.ebs_mount_path} on "
                f"{os.uname().nodename}: the volume {request.ebs_volume_id} must be attached and "
                "mounted before the dump"
            )
        if not in_place:
            raise TransferError(
                f"transfer=ebs: none of {', '.join(request.paths)} is on the volume at "
                f"{request.ebs_mount_path}: the images must be dumped there (migration_images_base)"
            )
        shared_bytes, shared_files = payload_of(in_place)
        stats, stage_s = stage_beside_images(
            run, staged, staging, f"the volume at {request.ebs_mount_path}"
        )
        return TransferResult(
            method=self.name,
            duration_s=stage_s,
            bytes=stats.get("bytes", 0),
            files=stats.get("files", 0),
            dest_paths=[],
            extra={
                "ebs": {
                    "volume_id": request.ebs_volume_id,
                    "mount_path": request.ebs_mount_path,
                    "source": {"stage_s": round(stage_s, 6)},
                },
                "shared_bytes": shared_bytes,
                "shared_files": shared_files,
                "staged": staged,
            },
        )

    def finish_send(self, request: TransferRequest, run: Runner, result: TransferResult) -> None:
        """After the source's checksums (they read the volume): flush and unmount it, so the
        control node can detach it. Timed into the send."""
        figures = unmount_volume(request.ebs_mount_path, run)
        result.extra["ebs"]["source"].update(figures)
        result.duration_s += float(figures.get("sync_s", 0.0)) + float(figures.get("umount_s", 0.0))

    def receive(self, request: TransferRequest, run: Runner) -> TransferResult | None:
        in_place, staged, staging = shared_layout(
            request.paths, request.ebs_mount_path, request.ebs_dir, self.name
        )
        t0 = time.monotonic()
        mounted = mount_volume(
            request.ebs_volume_id, request.ebs_mount_path, request.ebs_timeout_s, run
        )
        missing = missing_paths(in_place, run)
        if missing:
            raise TransferError(
                f"the volume {request.ebs_volume_id} mounted at {request.ebs_mount_path} lacks "
                f"{', '.join(missing)}"
            )
        stats: dict[str, int] = {}
        t_copy = time.monotonic()
        if staged:
            stats = rsync_stats_or_raise(
                run,
                local_rsync_argv([f"{staging}/.{path}" for path in staged], "/"),
                f"copying {', '.join(staged)} from the volume ({staging})",
            )
        mounted["copy_s"] = round(time.monotonic() - t_copy, 6)
        return TransferResult(
            method=self.name,
            duration_s=time.monotonic() - t0,
            bytes=stats.get("bytes", 0),
            files=stats.get("files", 0),
            dest_paths=[*in_place, *staged],
            extra={"ebs": {"destination": mounted}},
        )


# -- integrity: checksum manifests ------------------------------------------------------------


def file_digest(path: str, algorithm: str = CHECKSUM) -> str:
    digest = hashlib.new(algorithm)
    with open(path, "rb") as handle:
        while True:
            chunk = handle.read(CHUNK)
            if not chunk:
                break
            digest.update(chunk)
    return digest.hexdigest()


def checksum_manifest(paths: Iterable[str], algorithm: str = CHECKSUM) -> dict[str, dict[str, Any]]:
    """{absolute file path: {"size": bytes, algorithm: hex digest}} of every regular file."""
    return {
        path: {"size": os.lstat(path).st_size, algorithm: file_digest(path, algorithm)}
        for path in regular_files(paths)
    }


def manifest_of_files(files: Iterable[str], algorithm: str = CHECKSUM) -> dict[str, dict[str, Any]]:
    """The same manifest for named files as they are here; a missing file has no entry."""
    manifest: dict[str, dict[str, Any]] = {}
    for path in files:
        if os.path.isfile(path):
            manifest[path] = {
                "size": os.lstat(path).st_size,
                algorithm: file_digest(path, algorithm),
            }
    return manifest


def compare_manifest(
    expected: dict[str, dict[str, Any]],
    actual: dict[str, dict[str, Any]],
    algorithm: str = CHECKSUM,
) -> list[str]:
    """What differs, one line per file (missing, size, digest); empty when all match."""
    problems = []
    for path in sorted(expected):
        want, got = expected[path], actual.get(path)
        if got is None:
            problems.append(f"{path}: missing on the destination")
        elif got.get("size") != want.get("size"):
            problems.append(f"{path}: size {got.get('size')} != {want.get('size')} on the source")
        elif got.get(algorithm) != want.get(algorithm):
            problems.append(
                f"{path}: {algorithm} {got.get(algorithm)} != {want.get(algorithm)} on the source"
            )
    return problems


def _sha256sum_line(path: str, digest: str) -> str:
    """One line of a checksum file. A name with a newline or a backslash is escaped the way
    sha256sum writes it (a leading backslash, then \\\\ and \\n), else the newline would
    split the line (--strict: "improperly formatted", a mismatch that is not one)."""
    if "\n" not in path and "\\" not in path:
        return f"{digest}  {path}\n"
    escaped = path.replace("\\", "\\\\").replace("\n", "\\n")
    return f"\\{digest}  {escaped}\n"


def _sha256sum_name(text: str) -> str:
    """A file name as sha256sum prints it, unescaped (a leading backslash marks escapes)."""
    if not text.startswith("\\"):
        return text
    out, chars = [], iter(text[1:])
    for char in chars:
        if char == "\\":
            nxt = next(chars, "")
            out.append({"n": "\n", "r": "\r", "\\": "\\"}.get(nxt, "\\" + nxt))
        else:
            out.append(char)
    return "".join(out)


def sha256sum_check_input(manifest: dict[str, dict[str, Any]]) -> str:
    """The manifest as `sha256sum --check` reads it: one "<digest>  <path>" line per file
    (the comparison where no module runs: on the destination, over SSH)."""
    return "".join(
        _sha256sum_line(path, entry[CHECKSUM]) for path, entry in sorted(manifest.items())
    )


def sha256sum_problems(rc: int, output: str, manifest: dict[str, dict[str, Any]]) -> list[str]:
    """What `sha256sum --check --quiet --strict` found, one line per file in the words
    `compare_manifest` uses (missing, sha256 differs); empty when every file matched."""
    if rc == 0:
        return []
    problems = []
    for line in (output or "").splitlines():
        text = line.strip()
        if text.endswith(": FAILED open or read"):
            path = _sha256sum_name(text.removesuffix(": FAILED open or read"))
            problems.append(f"{path}: missing on the destination")
        elif text.endswith(": FAILED"):
            path = _sha256sum_name(text.removesuffix(": FAILED"))
            want = manifest.get(path, {}).get(CHECKSUM, "?")
            problems.append(f"{path}: sha256 differs from the source's {want}")
        elif text and not text.startswith("sha256sum:"):
            problems.append(text)
    return problems or [f"sha256sum --check exited {rc} checking {len(manifest)} files"]


class ManifestThread(threading.Thread):
    """Checksums the source files while the send runs (hashlib releases the GIL on large
    buffers, so this overlaps the transfer's own processes)."""

    def __init__(self, paths: list[str]) -> None:
        super().__init__(daemon=True)
        self.paths = paths
        self.manifest: dict[str, dict[str, Any]] = {}
        self.duration_s = 0.0
        self.error: BaseException | None = None

    def run(self) -> None:
        t0 = time.monotonic()
        try:
            self.manifest = checksum_manifest(self.paths)
        except BaseException as exc:  # reported by the caller
            self.error = exc
        self.duration_s = time.monotonic() - t0


# A side's own figures in the combined record; a backend's further figures (a dict under
# its name, e.g. `s3`, `ebs`) are merged into the record's entry of that name.
SIDE_FIGURES = ("duration_s", "bytes", "files", "throughput_mb_s")


def combine_sides(
    sent: dict[str, Any],
    received: dict[str, Any] | None,
    verify: dict[str, Any] | str,
    handover: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """One metrics record per transfer: totals over send (+ handover) (+ receive) (+ the
    destination's check), with each side's own figures beside them. `handover`: what
    happened between the two sides, on neither host (transfer=ebs: the control node moved
    the volume), with its own duration_s."""
    record = {k: v for k, v in sent.items() if k not in ("send", "receive", "verify")}
    send = sent.get("send") or {key: sent.get(key) for key in SIDE_FIGURES}
    record["send"] = send
    duration = float(send.get("duration_s") or 0.0)
    if handover is not None:
        record["handover"] = handover
        duration += float(handover.get("duration_s") or 0.0)
    # the paths this call made exist on the destination (the send's are in its own record;
    # the metrics report unites a stage's records)
    record["dest_paths"] = list((received or {}).get("dest_paths") or [])
    if received is not None:
        record["receive"] = {key: received.get(key) for key in SIDE_FIGURES}
        for key, value in received.items():
            if isinstance(value, dict) and key not in ("verify", "send", "receive"):
                record[key] = {**(record.get(key) or {}), **value}
        duration += float(received.get("duration_s") or 0.0)
    if isinstance(verify, dict):
        duration += float(verify.get("destination_s") or 0.0)
    record["verify"] = verify
    record["duration_s"] = round(duration, 6)
    record["throughput_mb_s"] = mb_per_s(record.get("bytes", 0), duration)
    return record


def verify_scope(request: TransferRequest) -> str | None:
    """Why verification does not apply to this transfer (None: it applies)."""
    if not request.verify:
        return "off"
    if request.method == "efs":
        return VERIFY_NOT_APPLICABLE_EFS
    return None


@dataclass
class SendOutcome:
    result: TransferResult
    manifest: dict[str, dict[str, Any]] | None
    receive_needed: bool

    def record(self, stage: str) -> dict[str, Any]:
        data = self.result.as_dict()
        data["stage"] = stage
        return data


def transfer_send(
    request: TransferRequest, run: Runner, backend: TransferBackend | None = None
) -> SendOutcome:
    """The source's side: the backend's send, with the source's checksum manifest computed
    alongside when verification applies (CRIU writes the images itself, so they cannot be
    hashed while written: they are hashed right after the dump, during the send)."""
    backend = backend or backend_for(request.method, request.compress)
    scope = verify_scope(request)
    hasher = None
    if scope is None:
        hasher = ManifestThread(list(request.paths))
        hasher.start()
    try:
        result = backend.send(request, run)
    finally:
        if hasher is not None:
            hasher.join()
    # a backend's last step on the source, after the checksums read the files (ebs: unmount)
    finish = getattr(backend, "finish_send", None)
    if finish is not None:
        finish(request, run, result)
    verify: dict[str, Any] | str = scope or ""
    manifest = None
    if hasher is not None:
        if hasher.error is not None:
            raise TransferError(f"checksumming the sent files failed: {hasher.error}")
        manifest = hasher.manifest
        verify = {
            "algorithm": CHECKSUM,
            "files": len(manifest),
            "bytes": sum(entry["size"] for entry in manifest.values()),
            "source_s": round(hasher.duration_s, 6),
            "source_when": "right after the dump, while the files were sent",
        }
        if request.page_server:
            verify["page_images"] = VERIFY_PAGES_STREAMED
    result.extra["verify"] = verify
    result.extra["send"] = {
        "duration_s": round(result.duration_s, 6),
        "bytes": result.bytes,
        "files": result.files,
        "throughput_mb_s": mb_per_s(result.bytes, result.duration_s),
    }
    return SendOutcome(result, manifest, backend.two_sided or manifest is not None)


def transfer_receive(
    request: TransferRequest,
    run: Runner,
    sent: dict[str, Any],
    manifest: dict[str, dict[str, Any]] | None,
    backend: TransferBackend | None = None,
    handover: dict[str, Any] | None = None,
) -> tuple[dict[str, Any], list[str]]:
    """The destination's side: the backend's receive, then the checksum comparison.
    Returns the transfer's combined record and the mismatches (empty: all good)."""
    backend = backend or backend_for(request.method, request.compress)
    received = backend.receive(request, run) if backend.two_sided else None
    verify = sent.get("verify", "off")
    problems: list[str] = []
    if manifest is not None and isinstance(verify, dict):
        t0 = time.monotonic()
        actual = manifest_of_files(manifest)
        problems = compare_manifest(manifest, actual)
        verify = {
            **verify,
            "destination_s": round(time.monotonic() - t0, 6),
            "ok": not problems,
            "mismatches": problems,
        }
    record = combine_sides(sent, received.as_dict() if received else None, verify, handover)
    return record, problems


BACKENDS: dict[str, type] = {
    "rsync": RsyncBackend,
    "ssh-zstd": ZstdSshBackend,
    "efs": EfsBackend,
    "s3": S3Backend,
    "ebs": EbsBackend,
}
# The experiment's `transfer` setting: every method the suite names, implemented or not.
METHODS = ("rsync", "efs", "s3", "ebs")
# Methods without a backend yet: refused by the preflight with this reason.
METHODS_NOT_YET: dict[str, str] = {}
# The `transfer_compress` setting.
COMPRESSIONS = ("none", "zstd")
# transfer=<method> with transfer_compress=<compress> -> backend
COMPRESSED = {("rsync", "zstd"): "ssh-zstd"}


def backend_for(method: str, compress: str = "none") -> TransferBackend:
    name = method if compress in ("", "none") else COMPRESSED.get((method, compress))
    if name is None:
        raise ValueError(f"transfer={method} cannot compress with {compress}")
    try:
        return BACKENDS[name]()
    except KeyError:
        available = ", ".join(key for key in BACKENDS if key not in COMPRESSED.values())
        raise ValueError(
            f"transfer method {method!r} is not implemented; available: {available}"
        ) from None


def tools_for(method: str, compress: str, side: str) -> list[str]:
    """The programs transfer=<method> (with transfer_compress=<compress>) runs on `side`
    (source or destination); [] for a method without a backend."""
    try:
        backend = backend_for(method, compress)
    except ValueError:
        return []
    return list(backend.source_tools if side == "source" else backend.destination_tools)


# transfer=ebs: what attaches a volume to a host, per inventory (`ebs_attacher`): aws: EC2
# itself; lab: the namespaces lab's loop devices (module_utils/ebs_attach.py).
EBS_ATTACHMENTS = ("aws", "lab")


def cloud_transfer_errors(
    settings: Mapping[str, Any], pairs: Sequence[Mapping[str, Any]], host_var: Any
) -> list[str]:
    """What transfer=s3 / ebs cannot do with these settings and this inventory, said before
    any host is touched (the node checks then try the bucket, the volume and the tools)."""
    errors: list[str] = []
    transfer, fault = settings.get("transfer"), settings.get("inject_fault")
    if fault == "ebs_attach_fail" and transfer != "ebs":
        errors.append("inject_fault=ebs_attach_fail needs transfer=ebs")
    if transfer not in ("s3", "ebs"):
        return errors
    if settings.get("transfer_compress") not in (None, "none"):
        errors.append(
            f"transfer_compress={settings['transfer_compress']} compresses the SSH stream of "
            f"transfer=rsync; transfer={transfer} moves the files as they are (use "
            "transfer_compress=none)"
        )
    if transfer == "s3":
        bucket = str(settings.get("s3_bucket") or "")
        if not bucket:
            errors.append(
                "transfer=s3 needs a bucket: set AWS_S3_BUCKET in the environment or pass "
                "-e s3_bucket=<name> (Terraform's inventories set it with create_s3_bucket=true "
                "or existing_s3_bucket; the labs set their own)"
            )
        elif not re.fullmatch(S3_BUCKET_PATTERN, bucket) or ".." in bucket:
            errors.append(
                f"s3_bucket={bucket!r} is not a valid bucket name (3-63 characters: lowercase "
                "letters, digits, dots and hyphens, starting and ending with a letter or digit)"
            )
        if fault == "corrupt_image":
            errors.append(
                "inject_fault=corrupt_image alters the destination's copy between the transfer "
                "and the checksum comparison; with transfer=s3 the download and the comparison "
                "are one step (use transfer=rsync)"
            )
        return errors
    # ebs
    if settings.get("page_server"):
        errors.append(
            "page_server=true streams the pages to the destination's disk; with transfer=ebs "
            "the images travel on the volume: use one or the other"
        )
    if fault in ("corrupt_image", "transfer_interrupt"):
        errors.append(
            f"inject_fault={fault} needs a transfer that copies (rsync, s3): with transfer=ebs "
            + (
                "the image it would alter is the only copy, which the rollback restores"
                if fault == "corrupt_image"
                else "there is no stream to cut (inject_fault=ebs_attach_fail fails the attach)"
            )
        )
    for pair in pairs:
        source, destination = pair["source"], pair["destination"]
        attachment = str(host_var(source, "ebs_attacher") or "")
        if attachment not in EBS_ATTACHMENTS:
            errors.append(
                f"transfer=ebs cannot attach a volume to {source} (ebs_attacher={attachment!r}; "
                f"one of {', '.join(EBS_ATTACHMENTS)}: EC2 instances, the namespaces lab); the "
                "guest lab's QEMU guests have no EBS: use transfer=rsync or s3 there"
            )
        elif fault == "ebs_attach_fail" and attachment != "lab":
            errors.append(
                "inject_fault=ebs_attach_fail holds back the lab's device after the attach; on "
                f"{source} (ebs_attacher={attachment}) EC2 presents the device itself"
            )
        if not host_var(source, "ebs_volume_id"):
            errors.append(
                f"transfer=ebs needs ebs_volume_id (the pair's volume) on {source}; Terraform's "
                "same-AZ inventory sets it with create_ebs_volumes=true, the namespaces lab sets "
                "its own"
            )
        for host in (source, destination):
            if not host_var(host, "instance_id"):
                errors.append(
                    f"transfer=ebs needs instance_id of {host} (the EC2 instance the volume is "
                    "attached to); Terraform's inventories and the namespaces lab set it"
                )
        zones = {host: host_var(host, "availability_zone") for host in (source, destination)}
        if all(zones.values()) and zones[source] != zones[destination]:
            errors.append(
                f"transfer=ebs cannot move a volume from {source} ({zones[source]}) to "
                f"{destination} ({zones[destination]}): an EBS volume lives in one availability "
                "zone and attaches only to instances there; across zones use transfer=rsync, "
                "s3 or efs (inventories/aws_same_az works with ebs)"
            )
    return errors


# The options that say how a transfer reaches the destination, as an Ansible argument spec:
# the checkpoint_transfer module takes them at its top level, predump_loop and the fused
# critical path as a `transfer` dict. `request_from_options` turns them into a request.
TRANSFER_OPTIONS: dict[str, dict[str, Any]] = {
    "method": {"type": "str", "default": "rsync", "choices": list(METHODS)},
    "destination": {"type": "str"},
    "destination_user": {"type": "str", "default": "root"},
    "ssh_key": {"type": "path"},
    "known_hosts": {"type": "path"},
    "ssh_port": {"type": "int", "default": 22},
    "cipher": {"type": "str"},
    "compress": {"type": "str", "default": "none", "choices": list(COMPRESSIONS)},
    "compress_level": {"type": "int", "default": 3},
    "efs_path": {"type": "path"},
    "efs_dir": {"type": "path"},
    "s3_bucket": {"type": "str"},
    "s3_prefix": {"type": "str"},
    "s3_endpoint_url": {"type": "str"},
    "s3_part_size_mb": {"type": "int", "default": 8},
    "s3_max_concurrency": {"type": "int", "default": 10},
    "ebs_volume_id": {"type": "str"},
    "ebs_mount_path": {"type": "path"},
    "ebs_dir": {"type": "path"},
    "ebs_timeout_s": {"type": "float", "default": 300.0},
}
# How a module reaches AWS's APIs (transfer=s3 / ebs), an argument spec beside `transfer`:
# boto3's standard chain decides everything left empty (the instance profile on EC2).
# `credentials` is no_log: Ansible masks its values in every result and log.
AWS_OPTIONS: dict[str, dict[str, Any]] = {
    "region": {"type": "str"},
    "environment": {"type": "dict", "default": {}},
    "credentials": {"type": "dict", "default": {}, "no_log": True},
    "tools_dir": {"type": "path"},
}


def request_from_options(
    options: dict[str, Any],
    paths: Sequence[str],
    aws: dict[str, Any] | None = None,
    **fields: Any,
) -> TransferRequest:
    """A TransferRequest from TRANSFER_OPTIONS-shaped options (None: the option's default)
    and, for s3 / ebs, the AWS_OPTIONS-shaped `aws` (environment, tools)."""
    given = {
        key: options.get(key) if options.get(key) is not None else spec.get("default")
        for key, spec in TRANSFER_OPTIONS.items()
    }
    aws = aws or {}
    return TransferRequest(
        paths=list(paths),
        method=str(given["method"]),
        destination=str(given["destination"] or ""),
        user=str(given["destination_user"] or "root"),
        ssh_key=str(given["ssh_key"] or ""),
        known_hosts=str(given["known_hosts"] or ""),
        ssh_port=int(given["ssh_port"]),
        cipher=str(given["cipher"] or ""),
        compress=str(given["compress"] or "none"),
        compress_level=int(given["compress_level"]),
        efs_path=str(given["efs_path"] or ""),
        efs_dir=str(given["efs_dir"] or ""),
        s3_bucket=str(given["s3_bucket"] or ""),
        s3_prefix=str(given["s3_prefix"] or ""),
        s3_endpoint_url=str(given["s3_endpoint_url"] or ""),
        s3_part_size_mb=int(given["s3_part_size_mb"]),
        s3_max_concurrency=int(given["s3_max_concurrency"]),
        ebs_volume_id=str(given["ebs_volume_id"] or ""),
        ebs_mount_path=str(given["ebs_mount_path"] or ""),
        ebs_dir=str(given["ebs_dir"] or ""),
        ebs_timeout_s=float(given["ebs_timeout_s"]),
        tools_dir=str(aws.get("tools_dir") or ""),
        env=aws_environment(aws),
        **fields,
    )
