#!/usr/bin/python
"""Ansible module: prove the restored workload runs and continued its state."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: workload_verify
short_description: Verify a migrated workload on the destination
description:
  - Runs on the destination after the restore. Checks that the restored process runs with
    the PID it had on the source, that it no longer runs on the source (I(source_running),
    probed by a task on the source), and that its C(progress.log) continues - the sequence
    goes on by exactly one from the last value written before the freeze, and the values
    named by the workload's continuity rules match the destination's C(restored) line.
  - Computes the app-perceived downtime, the largest gap between consecutive progress.log
    timestamps across the migration.
  - Checks the files the workload produced (I(artifact_checks), from the declaration's
    C(verify) key) - for example that ffprobe decodes every finished video segment. A file
    the restored process tree still holds open for writing is being written and is skipped;
    a fragmented MP4 being written is checked up to its last complete fragment.
  - Fails when any check fails; the details are in the result either way.
options:
  working_dir:
    description: The workload's working directory (holds progress.log).
    type: path
    required: true
  pid:
    description: The restored PID (equal to the source PID).
    type: int
    required: true
  source_pid:
    description: The workload's PID on the source before the migration.
    type: int
    required: true
  source_running:
    description: Whether the workload still runs on the source.
    type: bool
    required: true
  rules:
    description: The workload's continuity rules (C(equal), C(close), C(increasing)).
    type: dict
    default: {}
  artifact_checks:
    description:
      - Checks of the workload's output files, by kind, each a glob or a list of globs relative
        to I(working_dir) (the declaration's C(verify) key).
      - C(ffprobe) - every finished matching file decodes with C(ffprobe -count_frames)
        without an error and has at least one frame. Globs that match nothing are ignored,
        but at least one file must be checked.
    type: dict
    default: {}
  destination_host:
    description: The host name the workload writes on the destination. Defaults to this host's name.
    type: str
  wait_s:
    description: Seconds to wait for the workload's C(restored) line.
    type: float
    default: 30
attributes:
  check_mode:
    support: full
    details:
      - Only reads files and C(/proc) and runs C(ffprobe); it changes nothing.
notes:
  - C(ffprobe) (Debian package C(ffmpeg)) must be on the destination when I(artifact_checks)
    asks for it.
seealso:
  - module: workload_status
  - name: ffprobe
    description: The tool behind the C(ffprobe) artifact check.
    link: https://ffmpeg.org/ffprobe.html
author: CRIU migration suite
"""

EXAMPLES = r"""
- name: Verify the migrated workload
  workload_verify:
    working_dir: /var/lib/criu-migration/work/e1
    pid: 16020
    source_pid: 16020
    source_running: false
    rules: {equal: [checksum], close: {rss_anon_kb: 0.02}}

- name: Verify a video workload, decoding every finished segment
  workload_verify:
    working_dir: /var/lib/criu-migration/work/e2
    pid: 16031
    source_pid: 16031
    source_running: false
    rules: {equal: [ffmpeg_pid], increasing: [segments]}
    artifact_checks: {ffprobe: [segment_*.ts, video.mp4]}
"""

RETURN = r"""
verification:
  description: Every check and its evidence.
  returned: always
  type: dict
  sample: {restored_running: true, state_continuous: true, seq_continuous: true, app_downtime_s: 1.9,
           artifacts_ok: true, artifacts: [{check: "ffprobe:segment_*.ts", pattern: "segment_*.ts", ok: true,
           files: [{name: segment_00000.ts, ok: true, frames: 20, bytes_checked: 61100}],
           skipped_being_written: [segment_00005.ts]}]}
migration_metrics:
  description: What the metrics callback records.
  returned: always
  type: dict
  sample: {phase: verification, data: {restored_running: true}}
"""

import os
import platform
import time
from pathlib import Path
from typing import Any

from ansible.module_utils.artifact_checks import (
    PROBE_TIMEOUT_S,
    ArtifactCheck,
    ArtifactSpecError,
    ProbeResult,
    ffprobe_argv,
    ffprobe_verdict,
    missing,
    mp4_complete_end,
    parse_artifact_checks,
    plan_targets,
    summarize,
)
from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.continuity import check_continuity, parse_progress
from ansible.module_utils.proc_status import process_tree, read_fds
from ansible.module_utils.processes import is_alive


class ArtifactVerifier:
    """Runs the declaration's artifact checks over the working directory on this host."""

    def __init__(self, module: AnsibleModule, working_dir: str, pid: int) -> None:
        self.module = module
        self.working_dir = os.path.realpath(working_dir)
        self.pid = pid

    def open_for_writing(self) -> set[str]:
        """Names in the working directory that the workload's process tree writes to now."""
        names: set[str] = set()
        for pid in process_tree(self.pid):
            for fd in read_fds(pid):
                if fd.kind == "file" and "w" in fd.access:
                    target = fd.target.removesuffix(" (deleted)")
                    if os.path.dirname(target) == self.working_dir:
                        names.add(os.path.basename(target))
        return names

    def complete_end(self, name: str) -> int | None:
        path = os.path.join(self.working_dir, name)
        try:
            with open(path, "rb") as handle:
                return mp4_complete_end(handle, os.fstat(handle.fileno()).st_size)
        except OSError:
            return None

    def probe(self, ffprobe: str, name: str, end: int | None) -> ProbeResult:
        path = os.path.join(self.working_dir, name)
        size = end if end is not None else os.path.getsize(path)
        # a file that makes ffprobe hang fails its check instead of hanging the verification
        argv = ["timeout", str(PROBE_TIMEOUT_S), *ffprobe_argv(ffprobe, path, end)]
        rc, out, err = self.module.run_command(argv)
        ok, frames, detail = ffprobe_verdict(rc, out, err)
        return ProbeResult(name, ok, frames, size, detail)

    def run(self, spec: dict[str, list[str]]) -> list[ArtifactCheck]:
        # List first, then read the open files: a file closed in between is finished.
        try:
            with os.scandir(self.working_dir) as entries:
                names = [entry.name for entry in entries if entry.is_file(follow_symlinks=False)]
        except FileNotFoundError:
            names = []
        writing = self.open_for_writing()
        ends = {name: self.complete_end(name) for name in writing}
        checks: list[ArtifactCheck] = []
        for kind, patterns in spec.items():
            tool = self.module.get_bin_path(kind, required=True)  # each kind is its tool
            found: list[ArtifactCheck] = []
            for pattern in patterns:
                targets, skipped = plan_targets(names, pattern, writing, ends)
                if not targets and not skipped:
                    continue  # e.g. the other video_mode's output
                results = [self.probe(tool, t.name, t.end) for t in targets]
                found.append(summarize(kind, pattern, results, skipped))
            checks += found or [missing(kind, patterns)]
        return checks


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "working_dir": {"type": "path", "required": True},
            "pid": {"type": "int", "required": True},
            "source_pid": {"type": "int", "required": True},
            "source_running": {"type": "bool", "required": True},
            "rules": {"type": "dict", "default": {}},
            "artifact_checks": {"type": "dict", "default": {}},
            "destination_host": {"type": "str"},
            "wait_s": {"type": "float", "default": 30},
        },
        supports_check_mode=True,
    )
    p = module.params
    host = p["destination_host"] or platform.node()
    try:
        artifact_spec = parse_artifact_checks(p["artifact_checks"])
    except ArtifactSpecError as exc:
        module.fail_json(msg=f"artifact_checks: {exc}")
    progress = Path(p["working_dir"]) / "progress.log"
    deadline = time.monotonic() + p["wait_s"]
    while True:
        text = progress.read_text(errors="replace") if progress.exists() else ""
        lines, bad = parse_progress(text)
        restored_seen = any(
            line.get("host") == host and line.get("event") == "restored" for line in lines
        )
        if restored_seen or time.monotonic() >= deadline:
            break
        time.sleep(0.2)
    report = check_continuity(lines, host, p["rules"], bad)
    restored_running = is_alive(p["pid"])
    same_pid = p["pid"] == p["source_pid"]
    artifacts = (
        ArtifactVerifier(module, p["working_dir"], p["pid"]).run(artifact_spec)
        if artifact_spec and restored_running
        else []
    )
    verification: dict[str, Any] = {
        "restored_running": restored_running and same_pid,
        "restored_pid": p["pid"],
        "source_pid": p["source_pid"],
        "same_pid": same_pid,
        "running_on_source": p["source_running"],
        "seq_continuous": report.seq_continuous,
        "state_continuous": report.state_continuous and report.seq_continuous,
        "last_source_seq": report.last_source_seq,
        "first_destination_seq": report.first_destination_seq,
        "source_lines": report.source_lines,
        "destination_lines": report.destination_lines,
        "app_downtime_s": report.app_downtime_s,
        "boundary_gap_s": report.boundary_gap_s,
        "typical_interval_s": report.typical_interval_s,
        "checks": [{"name": c.name, "ok": c.ok, "detail": c.detail} for c in report.checks]
        + [check.as_check() for check in artifacts],
        # None: not checked (nothing asked, or the restored process does not run)
        "artifacts_ok": all(check.ok for check in artifacts) if artifacts else None,
        "artifacts": [check.as_evidence() for check in artifacts],
        "progress_log": str(progress),
        "clock": f"{host}'s wall clock (progress.log timestamps)",
    }
    failed = [c for c in report.checks if not c.ok]
    problems = [f"{c.name}: {c.detail}" for c in failed]
    problems += [f"{c.name}: {c.detail}" for c in artifacts if not c.ok]
    if not restored_running:
        problems.insert(0, f"restored process {p['pid']} does not run on {host}")
    if not same_pid:
        problems.insert(0, f"restored PID {p['pid']} differs from the source PID {p['source_pid']}")
    if p["source_running"]:
        problems.insert(0, f"the workload (pid {p['source_pid']}) still runs on the source")
    verification["ok"] = not problems
    verification["details"] = (
        "; ".join(problems)
        if problems
        else (
            f"pid {p['pid']} runs on {host}, seq {report.last_source_seq} -> {report.first_destination_seq}, "
            f"{len(verification['checks'])} checks passed"
        )
    )
    result = {
        "changed": False,
        "verification": verification,
        "migration_metrics": {"phase": "verification", "data": verification},
    }
    if problems:
        module.fail_json(msg=f"verification failed on {host}: {verification['details']}", **result)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
