#!/usr/bin/python
"""Ansible module: capture a process tree's write syscalls with strace."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: strace_capture
short_description: Capture a workload's write syscalls (its stdout/stderr and files) with strace
description:
  - Attaches C(strace) to a running process and every descendant that exists at that moment
    (their threads too), following children forked later (C(-f)), and records the
    C(write), C(writev), C(pwrite64), C(pwritev) and C(pwritev2) syscalls with microsecond
    epoch timestamps and every byte hex-escaped.
  - The suite's workloads run with their stdio on C(/dev/null); this is how their output is
    seen. One capture is a I(window) (C(pre_dump), C(post_restore)) and leaves three files,
    named by the caller as the results layout does (docs/protocol.md) - the readable log (C(workload_stdout_<window>.log)),
    strace's own output (C(.log.raw)) and a record of how it was collected
    (C(.log.info)).
  - I(state=started) returns once every target thread shows strace in C(TracerPid); strace
    then runs detached from the Ansible session (new session, stdio on C(/dev/null), no
    inherited descriptors) and outlives the module.
  - I(state=stopped) sends C(SIGINT) so strace detaches, waits until no thread of the tree is
    traced any more, then parses the raw file and writes the log and the info file.
  - I(state=captured) is a one-shot window, start, wait I(duration_s), stop.
options:
  state:
    description:
      - C(started) attaches and returns, C(stopped) detaches and writes the log,
        C(captured) does both around a wait of I(duration_s).
    type: str
    required: true
    choices: [started, stopped, captured]
  pid:
    description:
      - The root of the process tree to trace. Required for C(started) and C(captured).
    type: int
  log_path:
    description:
      - The readable log, an absolute path, e.g. C(<dir>/workload_stdout_pre_dump.log).
        Its folder is created.
    type: path
    required: true
  raw_path:
    description:
      - strace's output file. Defaults to I(log_path) with C(.raw) appended.
    type: path
  info_path:
    description:
      - The record of how the capture was collected (C(key) and value per line). Defaults to I(log_path) with C(.info)
        appended. It is also the capture's state between C(started) and C(stopped),
        so both calls must name the same paths.
    type: path
  label:
    description:
      - The window's name, written into the log and the info file (e.g. C(pre_dump)).
    type: str
    default: ""
  duration_s:
    description:
      - Seconds to trace for I(state=captured). Ends early when every tracee has exited.
    type: float
    default: 6.0
  attach_timeout_s:
    description:
      - Seconds to wait until every target thread is traced.
    type: float
    default: 10.0
  stop_timeout_s:
    description:
      - Seconds to wait after C(SIGINT) for strace to detach and exit. strace is then killed
        (the kernel detaches its tracees; output strace had not flushed yet is lost) and the
        module waits as long again before it fails because a thread is still traced.
    type: float
    default: 10.0
  string_limit:
    description:
      - strace's C(-s) - bytes of each buffer that are recorded. Longer writes are counted
        and marked as truncated in the log.
    type: int
    default: 65536
  trace_paths:
    description:
      - Record only writes to fds that point to one of these paths (strace C(-P)), e.g.
        C(/dev/null) for the workload's stdout/stderr plus its C(progress.log). Use it when a
        workload writes bulk data (a video, a database file) that would make the raw file
        about four times as large as the data. Every traced syscall still stops the tracee.
    type: list
    elements: path
    default: []
  decode_fds:
    description:
      - Pass C(-y) so the raw file and the log name what each fd points to.
    type: bool
    default: true
  strace_bin:
    description:
      - Name or path of the strace binary, looked up in C(PATH) and the sbin folders.
    type: str
    default: strace
attributes:
  check_mode:
    support: full
    details:
      - Nothing is attached, stopped or written in check mode; the module checks the target
        (or the capture's info file) and reports C(changed=true).
  diff_mode:
    support: none
notes:
  - strace and CRIU both use ptrace and a thread has one tracer at most, so stop the capture
    (I(state=stopped)) before any C(criu pre-dump)/C(criu dump) of the same process; this
    module fails rather than return while a thread is still traced.
  - Attaching interrupts blocking syscalls. A write blocked on a full pipe or socket that
    had already moved some bytes returns a short count; programs that handle short writes
    (stdio, Python's file objects) do not notice. CRIU's own attach does the same.
  - Processes that a target forks between the module's walk of the tree and strace's attach
    are not traced; they are listed in C(untraced_pids).
  - The log stamps every line with the time of the write that ended it and keys text by the
    pid strace prints, which is the thread id for threads other than the main one.
  - Requires root (or CAP_SYS_PTRACE) and C(/proc/<pid>/task/<tid>/children)
    (CONFIG_PROC_CHILDREN).
seealso:
  - module: workload_status
  - name: strace(1)
    description: The manual of the wrapped tool.
    link: https://man7.org/linux/man-pages/man1/strace.1.html
author:
  - CRIU migration suite
"""

EXAMPLES = r"""
- name: Capture the workload's output from its start until just before the first checkpoint
  strace_capture:
    state: started
    pid: "{{ workload_pid }}"
    label: pre_dump
    log_path: "{{ working_dir }}/../capture/workload_stdout_pre_dump.log"
  register: pre_dump_capture

- name: Detach strace (CRIU cannot seize a traced process)
  strace_capture:
    state: stopped
    log_path: "{{ working_dir }}/../capture/workload_stdout_pre_dump.log"

- name: Watch the restored workload for a few seconds
  strace_capture:
    state: captured
    pid: "{{ restored_pid }}"
    label: post_restore
    duration_s: "{{ post_restore_capture_s }}"
    log_path: /var/lib/criu-migration/capture/workload_stdout_post_restore.log
"""

RETURN = r"""
state:
  description: The state that was asked for.
  returned: always
  type: str
  sample: stopped
log_path:
  description: The readable log (written by C(stopped) and C(captured)).
  returned: always
  type: str
  sample: /var/lib/criu-migration/capture/workload_stdout_pre_dump.log
raw_path:
  description: strace's output file.
  returned: always
  type: str
  sample: /var/lib/criu-migration/capture/workload_stdout_pre_dump.log.raw
info_path:
  description: The record of how the capture was collected.
  returned: always
  type: str
  sample: /var/lib/criu-migration/capture/workload_stdout_pre_dump.log.info
command:
  description: The strace argv.
  returned: success
  type: list
  elements: str
  sample: [/usr/bin/strace, -f, -ttt, -xx, -y, -s, "65536", -e,
           "trace=write,writev,pwrite64,pwritev,pwritev2", -o, /tmp/w.log.raw, -p, "4242"]
tracer_pid:
  description: strace's pid.
  returned: success
  type: int
  sample: 4301
traced_pids:
  description: The processes strace was attached to with C(-p) (the tree at start).
  returned: success
  type: list
  elements: int
  sample: [4242, 4250]
traced_threads:
  description: Every thread that showed strace as its tracer when the attach completed.
  returned: success
  type: list
  elements: int
  sample: [4242, 4243, 4250]
untraced_pids:
  description: Descendants that appeared while strace attached and are not traced.
  returned: success
  type: list
  elements: int
  sample: []
start_epoch:
  description: When every target was traced (seconds since the epoch, node clock).
  returned: success
  type: float
  sample: 1795669084.890595
start_iso:
  description: I(start_epoch) in UTC, ISO 8601.
  returned: success
  type: str
  sample: "2026-11-26T04:58:04.890595Z"
attach_s:
  description: Seconds from starting strace until every target was traced.
  returned: success
  type: float
  sample: 0.021
end_epoch:
  description: When no thread was traced any more (seconds since the epoch).
  returned: when state is stopped or captured
  type: float
  sample: 1795669090.912345
end_iso:
  description: I(end_epoch) in UTC, ISO 8601.
  returned: when state is stopped or captured
  type: str
  sample: "2026-11-26T04:58:10.912345Z"
duration_s:
  description: I(end_epoch) minus I(start_epoch).
  returned: when state is stopped or captured
  type: float
  sample: 6.02
detach_s:
  description: Seconds from the stop request until strace had exited and no thread was traced.
  returned: when state is stopped or captured
  type: float
  sample: 0.004
stop_signals:
  description: The signals sent to strace to stop it (empty when it had already exited).
  returned: when state is stopped or captured
  type: list
  elements: str
  sample: [SIGINT]
tracer_exit:
  description: How strace ended, e.g. C(killed by SIGINT) after a normal stop, C(exited 0)
    when every tracee had exited, C(unknown) when its monitor did not report.
  returned: when state is stopped or captured
  type: str
  sample: killed by SIGINT
bytes:
  description: Bytes the traced writes reported written.
  returned: when state is stopped or captured
  type: int
  sample: 1350
lines:
  description: Lines of text in the log.
  returned: when state is stopped or captured
  type: int
  sample: 81
writes:
  description: Write syscalls seen.
  returned: when state is stopped or captured
  type: int
  sample: 161
stats:
  description: Everything counted while parsing the raw file.
  returned: when state is stopped or captured
  type: dict
  contains:
    writes:
      description: Write syscalls seen.
      type: int
    bytes:
      description: Bytes written according to the syscalls' results.
      type: int
    bytes_captured:
      description: Bytes whose content strace showed.
      type: int
    lines:
      description: Lines in the log.
      type: int
    incomplete_lines:
      description: Lines without a line end when the capture ended.
      type: int
    failed_writes:
      description: Writes that returned an error.
      type: int
    errors:
      description: Errno name to count.
      type: dict
    truncated_writes:
      description: Writes longer than I(string_limit).
      type: int
    truncated_bytes:
      description: Bytes written but not shown.
      type: int
    unknown_result_writes:
      description: Writes whose process ended inside the syscall.
      type: int
    unfinished_never_resumed:
      description: Writes still in progress when tracing stopped.
      type: int
    resumed_writes:
      description: Writes strace printed as unfinished/resumed pairs.
      type: int
    pids:
      description: Every pid (or thread id) strace reported.
      type: list
      elements: int
    streams:
      description: Per pid and fd - paths, writes, bytes and lines.
      type: list
      elements: dict
    first_ts:
      description: Epoch of the first write.
      type: float
    last_ts:
      description: Epoch of the last write.
      type: float
    first_iso:
      description: I(first_ts) in UTC, ISO 8601.
      type: str
    last_iso:
      description: I(last_ts) in UTC, ISO 8601.
      type: str
    exited:
      description: Pid to exit code, for processes that exited.
      type: dict
    killed:
      description: Pid to signal name, for processes killed by a signal.
      type: dict
    signals:
      description: Signal name to deliveries seen.
      type: dict
    unparsed_lines:
      description: Raw lines the parser did not understand.
      type: int
  sample: {writes: 161, bytes: 1350, lines: 81, killed: {}, exited: {"4250": 0}}
still_traced:
  description: Threads still traced when the module gave up (always empty on success).
  returned: when state is stopped or captured
  type: list
  elements: str
  sample: []
migration_metrics:
  description: What the suite's metrics callback records for this call.
  returned: when a window ended (strace_capture) / always (workload_status)
  type: dict
  sample: {phase: capture, data: {window: pre_dump, bytes: 1234, lines: 20, first_write_ts: 1764150000.1, last_write_ts: 1764150004.9}}
"""

import contextlib
import os
import shlex
import signal
import socket
import time
from collections.abc import Sequence

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.private_files import private_umask
from ansible.module_utils.proc_status import describe_tracers, process_tree, tracers
from ansible.module_utils.processes import (
    is_alive,
    read_exit,
    start_detached,
    start_ticks,
    write_atomic,
)
from ansible.module_utils.strace_log import (
    CaptureStats,
    format_log,
    iso_utc,
    parse_strace_stderr,
    read_raw,
    strace_argv,
    summarize,
)

POLL_S = 0.01
MONITOR_REPORT_S = 2.0  # how long to wait for the monitor's exit record after strace ended


# --------------------------------------------------------------------------- info file


def format_info(fields: Sequence[tuple[str, object]]) -> str:
    lines = ["# strace capture of a workload's write syscalls; the readable log is log_path"]
    for key, value in fields:
        if isinstance(value, list | tuple):
            value = " ".join(str(v) for v in value)
        text = str(value).replace("\n", " | ") if value is not None else ""
        lines.append(f"{key}: {text}".rstrip())
    return "\n".join(lines) + "\n"


def parse_info(text: str) -> dict[str, str]:
    fields: dict[str, str] = {}
    for line in text.splitlines():
        if line.startswith("#") or ":" not in line:
            continue
        key, _, value = line.partition(":")
        fields[key.strip()] = value.strip()
    return fields


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split() if x.lstrip("-").isdigit()]


def describe_exit(returncode: int | None) -> str:
    if returncode is None:
        return "unknown"
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exited {returncode}"


# --------------------------------------------------------------------------- the work


class CaptureError(Exception):
    def __init__(self, msg: str, **details: object) -> None:
        super().__init__(msg)
        self.details = details


class StraceCapture:
    """One capture window: the paths, the strace command and its lifecycle."""

    def __init__(self, params: dict, strace_bin: str, check_mode: bool = False) -> None:
        self.params = params
        self.strace_bin = strace_bin
        self.check_mode = check_mode
        self.log_path: str = params["log_path"]
        self.raw_path: str = params.get("raw_path") or self.log_path + ".raw"
        self.info_path: str = params.get("info_path") or self.log_path + ".info"
        self.stderr_path = self.raw_path + ".stderr"
        self.exit_path = self.raw_path + ".exit"
        self.host = socket.gethostname()

    def paths(self) -> dict[str, object]:
        return {"log_path": self.log_path, "raw_path": self.raw_path, "info_path": self.info_path}

    def _stderr(self) -> str:
        try:
            with open(self.stderr_path, encoding="utf-8", errors="replace") as handle:
                return handle.read()
        except FileNotFoundError:
            return ""

    # ---------------------------------------------------------------- started

    def start(self) -> dict[str, object]:
        pid: int = self.params["pid"]
        # zombies cannot be traced (strace's attach fails with EPERM) and write nothing
        tree = [p for p in process_tree(pid) if is_alive(p)]
        if not tree or tree[0] != pid:
            raise CaptureError(f"process {pid} is not running on {self.host}", pid=pid)
        busy = describe_tracers(tree)
        if busy:
            raise CaptureError(
                f"process tree of {pid} on {self.host} is already traced: {'; '.join(busy)}",
                traced=busy,
            )
        argv = strace_argv(
            self.strace_bin,
            self.raw_path,
            tree,
            string_limit=self.params["string_limit"],
            decode_fds=self.params["decode_fds"],
            trace_paths=self.params.get("trace_paths") or (),
        )
        if self.check_mode:
            return {"changed": True, "command": argv, "traced_pids": tree, **self.paths()}
        for path in (self.log_path, self.raw_path, self.info_path):
            os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        for stale in (self.exit_path, self.stderr_path):
            if os.path.exists(stale):
                os.remove(stale)

        spawned = time.monotonic()
        try:
            # Outside the module's session, so that the SSH session can close; a monitor
            # records strace's exit status in exit_path. strace writes the trace to raw_path
            # (-o) and its messages to stderr_path.
            tracer = start_detached(argv, output=self.stderr_path, exit_file=self.exit_path)
        except OSError as exc:
            raise CaptureError(f"cannot start strace on {self.host}: {exc}", command=argv) from exc
        tracer_ticks = start_ticks(tracer)
        threads = self._wait_attached(tracer, tree, argv, spawned)
        start_epoch = time.time()
        attach_s = time.monotonic() - spawned
        # children forked between the walk and the attach are not followed by -f
        untraced = [
            p
            for p in process_tree(pid)
            if p not in tree and any(who != tracer for who in tracers([p]).values())
        ]
        fields: list[tuple[str, object]] = [
            ("status", "capturing"),
            ("label", self.params.get("label") or ""),
            ("host", self.host),
            ("command", shlex.join(argv)),
            ("target_pid", pid),
            ("traced_pids", tree),
            ("traced_threads", threads),
            ("untraced_pids", untraced),
            ("tracer_pid", tracer),
            ("tracer_start_ticks", tracer_ticks if tracer_ticks is not None else ""),
            ("raw_path", self.raw_path),
            ("log_path", self.log_path),
            ("start_epoch", f"{start_epoch:.6f}"),
            ("start", iso_utc(start_epoch)),
            ("attach_s", f"{attach_s:.3f}"),
        ]
        write_atomic(self.info_path, format_info(fields))
        return {
            "changed": True,
            "command": argv,
            "tracer_pid": tracer,
            "traced_pids": tree,
            "traced_threads": threads,
            "untraced_pids": untraced,
            "start_epoch": start_epoch,
            "start_iso": iso_utc(start_epoch),
            "attach_s": round(attach_s, 6),
            **self.paths(),
        }

    def _wait_attached(
        self, tracer: int, tree: list[int], argv: list[str], spawned: float
    ) -> list[int]:
        deadline = spawned + self.params["attach_timeout_s"]
        while True:
            ended = read_exit(self.exit_path)
            if ended is not None:
                alive = [p for p in tree if is_alive(p)]
                why = "the target exited" if not alive else "strace failed"
                raise CaptureError(
                    f"strace ended before it had attached on {self.host} ({why}, "
                    f"{describe_exit(ended[0])}); see stderr",
                    command=argv,
                    stderr=self._stderr()[-4000:],
                )
            current = tracers(tree)
            waiting = sorted(tid for tid, who in current.items() if who != tracer)
            if current and not waiting:
                return sorted(current)
            if not current:
                waiting = tree
            if time.monotonic() > deadline:
                self._terminate(tracer)
                raise CaptureError(
                    f"strace did not attach to every thread within "
                    f"{self.params['attach_timeout_s']} s on {self.host}; not traced: "
                    f"{waiting}",
                    command=argv,
                    not_traced=waiting,
                    stderr=self._stderr()[-4000:],
                )
            time.sleep(POLL_S)

    def _terminate(self, tracer: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(tracer, signal.SIGINT)

    # ---------------------------------------------------------------- stopped

    def _load_state(self) -> dict[str, str]:
        try:
            with open(self.info_path, encoding="utf-8") as handle:
                return parse_info(handle.read())
        except FileNotFoundError:
            if os.path.exists(self.raw_path):
                return {"status": "capturing"}  # strace started by hand: parse what exists
            raise CaptureError(
                f"no capture to stop on {self.host}: {self.info_path} does not exist "
                f"(state=started writes it)",
                info_path=self.info_path,
            ) from None

    def _tracer_alive(self, tracer: int, ticks: str) -> bool:
        """Whether strace still runs: alive, and not another process that took its PID."""
        if not is_alive(tracer):
            return False
        current = start_ticks(tracer)
        return current is not None and (not ticks or str(current) == ticks)

    def stop(self) -> dict[str, object]:
        state = self._load_state()
        already = state.get("status") == "stopped"
        tracer = int(state.get("tracer_pid") or 0)
        if self.check_mode:
            return {"changed": not already, "tracer_pid": tracer, **self.paths()}
        if already:
            return self._report(state, changed=False)

        stop_requested = time.monotonic()
        sent: list[str] = []
        if self._tracer_alive(tracer, state.get("tracer_start_ticks", "")):
            os.kill(tracer, signal.SIGINT)
            sent.append("SIGINT")
        tracees = set(_ints(state.get("traced_pids", "")))
        target = int(state.get("target_pid") or 0)
        timeout = self.params["stop_timeout_s"]
        still = self._wait_detached(tracer, state, target, tracees, stop_requested + timeout)
        if still and self._tracer_alive(tracer, state.get("tracer_start_ticks", "")):
            os.kill(tracer, signal.SIGKILL)  # the kernel detaches a dead tracer's tracees
            sent.append("SIGKILL")
            still = self._wait_detached(tracer, state, target, tracees, time.monotonic() + timeout)
        end_epoch = time.time()
        detach_s = time.monotonic() - stop_requested
        if still:
            raise CaptureError(
                f"threads still traced {detach_s:.1f} s after stopping strace on {self.host}: "
                f"{'; '.join(still)} (CRIU cannot dump a traced process)",
                still_traced=still,
                stop_signals=sent,
            )
        exit_deadline = time.monotonic() + MONITOR_REPORT_S
        ended = read_exit(self.exit_path)
        while ended is None and tracer and time.monotonic() < exit_deadline:
            time.sleep(POLL_S)
            ended = read_exit(self.exit_path)
        state.update(
            {
                "status": "stopped",
                "end_epoch": f"{end_epoch:.6f}",
                "end": iso_utc(end_epoch),
                "detach_s": f"{detach_s:.3f}",
                "stop_signals": " ".join(sent),
                "tracer_exit": describe_exit(ended[0] if ended else None),
            }
        )
        if "start_epoch" in state:
            state["duration_s"] = f"{end_epoch - float(state['start_epoch']):.3f}"
        result = self._report(state, changed=True, write=True)
        for transient in (self.exit_path, self.stderr_path):
            if os.path.exists(transient):
                os.remove(transient)
        return result

    def _wait_detached(
        self, tracer: int, state: dict[str, str], target: int, tracees: set[int], deadline: float
    ) -> list[str]:
        """Wait until strace is gone and no thread of the tree is traced; the rest if not."""
        ticks = state.get("tracer_start_ticks", "")
        while True:
            members = tracees | set(process_tree(target) if target else [])
            members |= set(parse_strace_stderr(self._stderr()).attached)
            still = describe_tracers(sorted(members))
            if not still and not self._tracer_alive(tracer, ticks):
                return []
            if time.monotonic() > deadline:
                if not still:  # strace lingers but traces nothing: good enough for CRIU
                    return []
                return still
            time.sleep(POLL_S)

    def _report(
        self, state: dict[str, str], changed: bool, write: bool = False
    ) -> dict[str, object]:
        text = read_raw(self.raw_path) if os.path.exists(self.raw_path) else ""
        trace, lines, stats = summarize(text)
        messages = parse_strace_stderr(self._stderr())
        if write:
            header = [
                f"strace capture{' ' + state['label'] if state.get('label') else ''} "
                f"on {self.host}, target pid {state.get('target_pid', '?')}",
                f"from {state.get('start', '?')} to {state.get('end', '?')}; "
                f"how it was collected: {os.path.basename(self.info_path)}",
            ]
            write_atomic(self.log_path, format_log(trace, lines, stats, header))
            state.update(_stats_fields(stats))
            if messages.attached:
                state["strace_attached"] = " ".join(
                    f"{pid}({n} threads)" if n > 1 else str(pid)
                    for pid, n in sorted(messages.attached.items())
                )
            if messages.detached:
                state["strace_detached"] = " ".join(str(p) for p in messages.detached)
            if messages.other:
                state["strace_messages"] = " | ".join(messages.other[-20:])
            state["lost"] = _lost(stats, state)
            write_atomic(self.info_path, format_info(list(state.items())))
        start_epoch = float(state["start_epoch"]) if "start_epoch" in state else None
        end_epoch = float(state["end_epoch"]) if "end_epoch" in state else None
        return {
            "changed": changed,
            "command": shlex.split(state.get("command", "")),
            "tracer_pid": int(state.get("tracer_pid") or 0),
            "traced_pids": _ints(state.get("traced_pids", "")),
            "traced_threads": _ints(state.get("traced_threads", "")),
            "untraced_pids": _ints(state.get("untraced_pids", "")),
            "start_epoch": start_epoch,
            "start_iso": state.get("start"),
            "attach_s": float(state["attach_s"]) if "attach_s" in state else None,
            "end_epoch": end_epoch,
            "end_iso": state.get("end"),
            "duration_s": float(state["duration_s"]) if "duration_s" in state else None,
            "detach_s": float(state["detach_s"]) if "detach_s" in state else None,
            "stop_signals": state.get("stop_signals", "").split(),
            "tracer_exit": state.get("tracer_exit", "unknown"),
            "bytes": stats.bytes,
            "lines": stats.lines,
            "writes": stats.writes,
            "stats": stats.as_dict(),
            "still_traced": [],
            **self.paths(),
        }

    # ---------------------------------------------------------------- captured

    def capture(self) -> dict[str, object]:
        started = self.start()
        if self.check_mode:
            return started
        tracer = int(started["tracer_pid"])  # type: ignore[call-overload]
        deadline = time.monotonic() + self.params["duration_s"]
        while time.monotonic() < deadline:
            if read_exit(self.exit_path) is not None:
                break  # every tracee exited: nothing more to see
            time.sleep(min(0.1, max(0.0, deadline - time.monotonic())))
        result = self.stop()
        result["changed"] = True
        result["tracer_pid"] = tracer
        return result

    def run(self) -> dict[str, object]:
        action = {"started": self.start, "stopped": self.stop, "captured": self.capture}
        result = action[self.params["state"]]()
        result["state"] = self.params["state"]
        return result


def _stats_fields(stats: CaptureStats) -> dict[str, str]:
    errors = ", ".join(f"{name} {count}" for name, count in sorted(stats.errors.items()))
    return {
        "writes": str(stats.writes),
        "bytes": str(stats.bytes),
        "bytes_captured": str(stats.bytes_captured),
        "lines": str(stats.lines),
        "incomplete_lines": str(stats.incomplete_lines),
        "failed_writes": f"{stats.failed_writes}{' (' + errors + ')' if errors else ''}",
        "truncated_writes": f"{stats.truncated_writes} ({stats.truncated_bytes} bytes not shown)",
        "unknown_result_writes": str(stats.unknown_result_writes),
        "unfinished_never_resumed": str(stats.unfinished_never_resumed),
        "pids_seen": " ".join(str(p) for p in stats.pids),
        "processes_exited": " ".join(f"{p}({c})" for p, c in sorted(stats.exited.items())),
        "processes_killed": " ".join(f"{p}({s})" for p, s in sorted(stats.killed.items())),
        "signals": ", ".join(f"{name} {count}" for name, count in sorted(stats.signals.items())),
        "first_write": iso_utc(stats.first_ts) if stats.first_ts is not None else "",
        "last_write": iso_utc(stats.last_ts) if stats.last_ts is not None else "",
        "unparsed_lines": str(stats.unparsed_lines),
    }


def _lost(stats: CaptureStats, state: dict[str, str]) -> str:
    lost = []
    if stats.truncated_bytes:
        lost.append(f"{stats.truncated_bytes} bytes of {stats.truncated_writes} long writes")
    if stats.unfinished_never_resumed:
        lost.append(f"{stats.unfinished_never_resumed} writes still in progress at the end")
    if stats.unknown_result_writes:
        lost.append(f"{stats.unknown_result_writes} writes cut short by a process ending")
    if "SIGKILL" in state.get("stop_signals", ""):
        lost.append("strace was killed: output it had not flushed is missing")
    if state.get("untraced_pids"):
        lost.append(f"pids never traced: {state['untraced_pids']}")
    if stats.unparsed_lines:
        lost.append(f"{stats.unparsed_lines} raw lines not understood")
    return "; ".join(lost) or "nothing"


def main() -> None:
    private_umask()  # the experiment's files: 0600 / 0700 (module_utils/private_files.py)
    module = AnsibleModule(
        argument_spec={
            "state": {
                "type": "str",
                "required": True,
                "choices": ["started", "stopped", "captured"],
            },
            "pid": {"type": "int"},
            "log_path": {"type": "path", "required": True},
            "raw_path": {"type": "path"},
            "info_path": {"type": "path"},
            "label": {"type": "str", "default": ""},
            "duration_s": {"type": "float", "default": 6.0},
            "attach_timeout_s": {"type": "float", "default": 10.0},
            "stop_timeout_s": {"type": "float", "default": 10.0},
            "string_limit": {"type": "int", "default": 65536},
            "decode_fds": {"type": "bool", "default": True},
            "trace_paths": {"type": "list", "elements": "path", "default": []},
            "strace_bin": {"type": "str", "default": "strace"},
        },
        required_if=[("state", "started", ["pid"]), ("state", "captured", ["pid"])],
        supports_check_mode=True,
    )
    for name in ("duration_s", "attach_timeout_s", "stop_timeout_s", "string_limit"):
        if module.params[name] <= 0:
            module.fail_json(msg=f"{name} must be greater than 0, got {module.params[name]}")
    for name in ("log_path", "raw_path", "info_path"):
        value = module.params[name]
        if value is not None and not os.path.isabs(value):
            module.fail_json(msg=f"{name} must be an absolute path, got {value!r}")
    strace_bin = module.get_bin_path(
        module.params["strace_bin"], required=True, opt_dirs=["/usr/sbin", "/usr/local/sbin"]
    )
    capture = StraceCapture(module.params, strace_bin, module.check_mode)
    try:
        result = capture.run()
    except CaptureError as exc:
        module.fail_json(
            **{**capture.paths(), **exc.details, "msg": str(exc), "host": capture.host}
        )
    stats = result.get("stats")
    if isinstance(stats, dict):
        # The window's figures for the metrics callback (first/last write: the strace
        # estimate of the app-perceived downtime).
        result["migration_metrics"] = {
            "phase": "capture",
            "data": {
                "window": module.params["label"],
                "log_path": result.get("log_path"),
                "start_epoch": result.get("start_epoch"),
                "end_epoch": result.get("end_epoch"),
                "bytes": result.get("bytes"),
                "lines": result.get("lines"),
                "writes": result.get("writes"),
                "first_write_ts": stats.get("first_ts"),
                "last_write_ts": stats.get("last_ts"),
                "still_traced": result.get("still_traced"),
            },
        }
    module.exit_json(**result)


if __name__ == "__main__":
    main()
