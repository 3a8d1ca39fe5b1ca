"""One CRIU call, timed, with its statistics and, when it fails, CRIU's own reason.

Every module that runs CRIU goes through `CriuRunner.run`: the `criu` module (one-shot
actions), `criu_daemon` (page server, lazy pages), `predump_loop` and the fused critical
path. Argv building is `criu_cli.build_criu_argv`; stats decoding is `criu_stats`.
Standard library only (this file runs on the nodes).
"""

from __future__ import annotations

import platform
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ansible.module_utils.criu_cli import (
    LAZY_DUMP_SERVING,
    build_criu_argv,
    first_error,
    log_tail,
)
from ansible.module_utils.criu_stats import summarize_stats_image
from ansible.module_utils.processes import (
    ProcessFiles,
    is_alive,
    start_detached,
    terminate,
    wait_until,
)

# Where an installed CRIU is looked for when no path is given (SSH sessions' PATH often
# lacks the sbin folders).
CRIU_DIRS = ("/usr/local/sbin", "/usr/sbin", "/sbin")
# CRIU writes these into its work dir after each call.
STATS_IMAGE = {"dump": "stats-dump", "pre-dump": "stats-dump", "restore": "stats-restore"}
# The metrics phase a call's figures are filed under.
PHASE = {"dump": "final_dump", "pre-dump": "predump", "restore": "restore"}


@dataclass
class CriuCall:
    """What one CRIU call did: argv, exit status, output, timings (both clocks), stats."""

    action: str
    argv: list[str]
    log_file: str
    rc: int = -1
    output: str = ""
    started_at: float = 0.0  # wall clock, epoch seconds
    finished_at: float = 0.0
    monotonic_start: float = 0.0  # this host's monotonic clock
    monotonic_end: float = 0.0
    timed_out: bool = False
    stats: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.rc == 0 and not self.timed_out

    @property
    def duration_s(self) -> float:
        return round(self.monotonic_end - self.monotonic_start, 6)

    def log_text(self) -> str:
        path = Path(self.log_file)
        return path.read_text(errors="replace") if path.is_file() else ""

    def reason(self, log_text: str | None = None) -> str:
        """CRIU's own words for a failure: the log's first error, else the output's."""
        text = self.log_text() if log_text is None else log_text
        if self.timed_out:
            return "did not finish in time"
        return first_error(text) or first_error(self.output) or log_tail(self.output, 3)

    def metrics(self, **extra: Any) -> dict[str, Any]:
        """The figures the metrics callback records for this call."""
        return {
            "duration_s": self.duration_s,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "log_file": self.log_file,
            "stats": self.stats,
            **extra,
        }


def run_captured(argv: Sequence[str], timeout_s: float) -> tuple[int, str, bool]:
    """Run `argv` (stdin /dev/null, no inherited descriptors): (exit status, stdout and
    stderr, timed out). A command past `timeout_s` is killed: -1 and what it printed."""
    try:
        proc = subprocess.run(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            timeout=timeout_s,
            check=False,
            close_fds=True,
        )
    except subprocess.TimeoutExpired as exc:
        return -1, (exc.output or b"").decode(errors="replace")[-4000:], True
    return proc.returncode, proc.stdout.decode(errors="replace"), False


class CriuRunner:
    """Runs CRIU calls on this host with one binary."""

    def __init__(self, criu_bin: str, host: str | None = None) -> None:
        self.criu_bin = criu_bin
        self.host = host or platform.node()

    def argv(self, action: str, opts: dict[str, Any]) -> list[str]:
        return build_criu_argv(self.criu_bin, action, opts)

    def prepare(self, action: str, opts: dict[str, Any]) -> None:
        """Folders CRIU writes to exist; no stale stats image or pidfile is left to misread."""
        images_dir = Path(opts["images_dir"])
        work_dir = Path(opts.get("work_dir") or images_dir)
        images_dir.mkdir(parents=True, exist_ok=True)
        work_dir.mkdir(parents=True, exist_ok=True)
        if opts.get("log_file"):
            Path(opts["log_file"]).parent.mkdir(parents=True, exist_ok=True)
        if action in STATS_IMAGE:
            (work_dir / STATS_IMAGE[action]).unlink(missing_ok=True)
        if opts.get("pidfile"):
            Path(opts["pidfile"]).unlink(missing_ok=True)

    def run(
        self,
        action: str,
        opts: dict[str, Any],
        timeout_s: float,
        via: Callable[[list[str]], list[str]] | None = None,
    ) -> CriuCall:
        """Run `criu <action>` and time it (on this host's clocks). `via` turns the argv into
        the command that runs it elsewhere (e.g. `SshMaster.argv`: on the destination); CRIU's
        files are then not here, so nothing is prepared or read back.

        Never raises for CRIU's failures: the caller reads `call.ok` and `call.reason()`.
        """
        argv = self.argv(action, opts)
        if via is None:
            self.prepare(action, opts)
        call = CriuCall(action=action, argv=argv, log_file=str(opts.get("log_file") or ""))
        call.started_at = time.time()
        call.monotonic_start = time.monotonic()
        call.rc, call.output, call.timed_out = run_captured(
            argv if via is None else via(argv), timeout_s
        )
        call.monotonic_end = time.monotonic()
        call.finished_at = time.time()
        if via is None and call.ok:
            call.stats = read_stats(action, Path(opts.get("work_dir") or opts["images_dir"]))
        return call

    def output(self, args: Sequence[str], timeout_s: float) -> tuple[int, str]:
        """(exit status, stdout + stderr) of `criu <args>`; -1 and a note when it hangs."""
        rc, output, timed_out = run_captured([self.criu_bin, *args], timeout_s)
        if timed_out:
            return -1, f"criu {' '.join(args)} did not finish within {timeout_s:g} s"
        return rc, output

    def failure(self, call: CriuCall, log_text: str | None = None) -> str:
        """One line for fail_json: what failed, where, why, and where the log is."""
        return (
            f"criu {call.action} failed on {self.host} (rc={call.rc}): "
            f"{call.reason(log_text) or 'no error line'}; log: {call.log_file}"
        )


def read_stats(action: str, work_dir: Path) -> dict[str, Any]:
    """CRIU's statistics image of `action` in `work_dir`, decoded ({} when absent)."""
    image = work_dir / STATS_IMAGE.get(action, "-")
    if not image.is_file():
        return {}
    try:
        summary = summarize_stats_image(str(image))
    except (OSError, ValueError) as exc:
        # a damaged image must not hide that the call itself succeeded
        return {"error": f"{image}: {exc}"}
    return summary.get("restore" if action == "restore" else "dump", {})


def find_criu(get_bin_path: Any, criu_bin: str | None = None) -> str:
    """The criu binary: `criu_bin` when given, else PATH or the sbin folders (required)."""
    return criu_bin or get_bin_path("criu", required=True, opt_dirs=list(CRIU_DIRS))


def start_lazy_dump(
    runner: CriuRunner, opts: dict[str, Any], files: ProcessFiles, timeout_s: float
) -> tuple[CriuCall, int]:
    """Network post-copy: `criu dump --lazy-pages` in the background, back once it serves.

    The dump writes every image but the pages, then serves the pages until the
    destination's lazy-pages daemon fetched them all - it ends only then, so it runs
    detached, its exit status recorded beside its pidfile (`files`). Returns the call (ok
    once it serves; its rc and output when it ended first or did not serve in time) and
    the dump's PID.
    """
    opts = {**opts, "lazy_pages": True}
    runner.prepare("dump", opts)
    argv = runner.argv("dump", opts)
    log_file = Path(opts["log_file"])
    log_file.unlink(missing_ok=True)  # the marker looked for below must be this dump's
    files.clear(keep_output=False)
    call = CriuCall(action="dump", argv=argv, log_file=str(log_file))
    call.started_at, call.monotonic_start = time.time(), time.monotonic()
    pid = start_detached(argv, output=files.output, exit_file=files.exit_file)
    files.write_pid(pid)

    def log_text() -> str:
        return log_file.read_text(errors="replace") if log_file.exists() else ""

    serving = wait_until(
        lambda: LAZY_DUMP_SERVING in log_text() or files.read_exit() is not None, timeout_s
    )
    call.monotonic_end, call.finished_at = time.monotonic(), time.time()
    if serving and LAZY_DUMP_SERVING in log_text():
        call.rc = 0
        return call, pid
    if is_alive(pid):
        terminate(pid, group=True)
    ended = files.read_exit()
    call.rc = -1 if ended is None else ended[0]
    call.timed_out = not serving
    call.output = files.output.read_text(errors="replace") if files.output.exists() else ""
    files.clear()
    return call, pid


def daemon_meta(
    daemon: str, call: CriuCall, pid: int, opts: dict[str, Any], metrics_phase: str | None = None
) -> dict[str, Any]:
    """What stopping a CRIU background process needs to know about its start (written
    beside its pidfile: ProcessFiles.meta_file), whoever started it."""
    return {
        "daemon": daemon,
        "pid": pid,
        "started_at": call.started_at,
        "serving_at": call.finished_at,
        "duration_s": call.duration_s,
        "cmd": call.argv,  # the post-copy dump's record is completed when it is stopped
        "log_file": call.log_file,
        "images_dir": opts.get("images_dir"),
        "address": opts.get("address"),
        "port": opts.get("port"),
        "metrics_phase": metrics_phase,
    }
