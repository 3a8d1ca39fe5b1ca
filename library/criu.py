#!/usr/bin/python
"""Ansible module wrapping the `criu` command line."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: criu
short_description: Run one CRIU action (check, dump, pre-dump, restore, page-server, lazy-pages)
description:
  - Builds the argv of one C(criu) call from its options, runs it, and returns how long it
    took, where its log is, and the figures of CRIU's own C(stats-dump) / C(stats-restore)
    images, decoded by the suite's C(criu_stats) module utility.
  - C(check) reports the CRIU version, whether C(criu check) passes, and which of the
    requested kernel features (C(criu check --feature NAME)) are present.
  - C(page-server) and C(lazy-pages) start CRIU's daemons (C(state=started)) or stop them
    (C(state=stopped), by their pidfile).
options:
  action:
    description: The CRIU action.
    type: str
    required: true
    choices: [check, dump, pre-dump, restore, page-server, lazy-pages]
  criu_bin:
    description: Path of the criu binary. Found in /usr/local/sbin, /usr/sbin or PATH when omitted.
    type: path
  pid:
    description: Root PID of the process tree to dump (dump, pre-dump).
    type: int
  images_dir:
    description: CRIU's images directory (created when missing).
    type: path
  work_dir:
    description: CRIU's --work-dir (logs, stats). Defaults to images_dir.
    type: path
  log_file:
    description: Absolute path of CRIU's log (-o). Defaults to I(work_dir)/criu-I(action).log.
    type: path
  log_level:
    description: CRIU's verbosity (-v0 .. -v4).
    type: int
    default: 4
  features:
    description: Kernel features to test with C(criu check --feature) (action=check).
    type: list
    elements: str
    default: []
  leave_running:
    description: Keep the tree running after the dump (a checkpoint, not a migration).
    type: bool
    default: false
  track_mem:
    description: Use soft-dirty memory tracking (--track-mem), for iterative dumps.
    type: bool
    default: false
  prev_images_dir:
    description: Parent images dir, relative to images_dir (e.g. C(../1)), for incremental dumps.
    type: str
  page_server:
    description: Send pages to a C(criu page-server) at I(address):I(port) (dump, pre-dump, lazy-pages).
    type: bool
    default: false
  lazy_pages:
    description:
      - restore - restore with the lazy-pages daemon serving pages on fault (userfaultfd).
      - dump - network post-copy (C(dump --lazy-pages)): the dump serves pages on I(address):I(port).
      - page-server - serve lazily.
    type: bool
    default: false
  address:
    description: Address for page-server / lazy-pages connections.
    type: str
  port:
    description: TCP port for page-server / lazy-pages connections.
    type: int
  tcp_established:
    description: Checkpoint / restore established TCP connections (--tcp-established).
    type: bool
    default: false
  network_lock:
    description: CRIU's network-lock method while TCP connections are dumped and restored.
    type: str
    choices: [iptables, nftables, skip]
  shell_job:
    description: The tree was started from a shell and shares its session (--shell-job).
    type: bool
    default: false
  ext_unix_sk:
    description: Allow external unix sockets (--ext-unix-sk).
    type: bool
    default: false
  file_locks:
    description: Dump / restore file locks (--file-locks).
    type: bool
    default: false
  link_remap:
    description: Allow link remaps of deleted open files (--link-remap).
    type: bool
    default: false
  manage_cgroups:
    description: CRIU's --manage-cgroups mode.
    type: str
  restore_detached:
    description: Detach criu from the restored tree (restore); it then runs on its own.
    type: bool
    default: true
  pidfile:
    description: Where CRIU writes the restored root PID (restore) or the daemon's PID.
    type: path
  daemon:
    description: Run page-server / lazy-pages in the background (--daemon).
    type: bool
    default: true
  state:
    description: For page-server / lazy-pages, C(started) runs the daemon, C(stopped) kills the one in I(pidfile).
    type: str
    choices: [started, stopped]
    default: started
  extra_args:
    description: Further arguments appended verbatim (a list, never a shell string).
    type: list
    elements: str
    default: []
  metrics_phase:
    description: The phase the metrics callback files this call under (default from I(action),
      e.g. C(rollback) for a restore on the source after a failure).
    type: str
  timeout:
    description: Seconds before the CRIU call is killed and the task fails.
    type: int
    default: 600
attributes:
  check_mode:
    support: partial
    details: C(check) runs in check mode (it only reads); every other action is skipped and
      reports the command it would run, because dumps and restores are never idempotent.
notes:
  - Every action but C(check) reports C(changed=true).
  - CRIU prints "rlimit - Can't setup RLIMIT_NOFILE" on hosts without CAP_SYS_RESOURCE; it is harmless.
seealso:
  - name: CRIU usage
    link: https://criu.org/CLI
author: CRIU migration suite
"""

EXAMPLES = r"""
- name: What this host's CRIU and kernel can do
  criu:
    action: check
    features: [mem_dirty_track, uffd-noncoop, network_lock_nftables]
  register: criu_check

- name: Final dump of the workload
  criu:
    action: dump
    pid: "{{ workload_pid }}"
    images_dir: /var/lib/criu-migration/images/exp1/1
    tcp_established: true
    network_lock: nftables

- name: Restore on the destination
  criu:
    action: restore
    images_dir: /var/lib/criu-migration/images/exp1/1
    pidfile: /var/lib/criu-migration/images/exp1/restored.pid
"""

RETURN = r"""
cmd:
  description: The argv that was (or, in check mode, would be) run.
  returned: always
  type: list
  elements: str
  sample: [/usr/local/sbin/criu, dump, --images-dir, /var/lib/criu-migration/images/e/1, -v4, --tree, "20001"]
rc:
  description: CRIU's exit status.
  returned: when CRIU ran
  type: int
  sample: 0
duration_s:
  description: Wall time of the CRIU call in seconds (monotonic clock).
  returned: when CRIU ran
  type: float
  sample: 1.234
started_at:
  description: Wall-clock start of the call, seconds since the epoch (host clock).
  returned: when CRIU ran
  type: float
  sample: 1764150000.123
finished_at:
  description: Wall-clock end of the call, seconds since the epoch (host clock).
  returned: when CRIU ran
  type: float
  sample: 1764150001.357
log_file:
  description: CRIU's log on the host.
  returned: when CRIU ran (not for check)
  type: str
  sample: /var/lib/criu-migration/images/e/1/criu-dump.log
stats:
  description: CRIU's own statistics (stats-dump / stats-restore), in seconds, pages and bytes.
  returned: dump, pre-dump and restore, when CRIU wrote the stats image
  type: dict
  sample: {frozen_s: 1.26, freezing_s: 0.001, memdump_s: 0.9, memwrite_s: 0.8, pages_written: 263233, bytes_written: 1078202368}
pid:
  description: The restored root PID (restore) or the daemon's PID (page-server, lazy-pages).
  returned: restore, page-server, lazy-pages
  type: int
  sample: 20001
version:
  description: CRIU's version (check).
  returned: check
  type: str
  sample: 4.2.1
check:
  description: The verdict of C(criu check) (check).
  returned: check
  type: dict
  sample: {ok: true, summary: Looks good., errors: [], warnings: []}
features:
  description: Requested features and whether this host has them (check).
  returned: check
  type: dict
  sample: {mem_dirty_track: false, uffd-noncoop: true}
kernel:
  description: The host's kernel release.
  returned: always
  type: str
  sample: 6.1.0-40-amd64
migration_metrics:
  description: What the suite's metrics callback records for this call.
  returned: dump, pre-dump, restore
  type: dict
  sample: {phase: final_dump, data: {duration_s: 1.2, frozen_s: 1.0}}
"""

import os
import platform
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.criu_cli import (
    ACTIONS,
    build_criu_argv,
    first_error,
    log_tail,
    parse_check_output,
    parse_criu_version,
    version_string,
)
from ansible.module_utils.criu_stats import summarize_stats_image

# CRIU writes these into its work dir after each call.
_STATS_IMAGE = {"dump": "stats-dump", "pre-dump": "stats-dump", "restore": "stats-restore"}
_PHASE = {"dump": "final_dump", "pre-dump": "predump", "restore": "restore"}


class CriuRunner:
    """Runs one CRIU action for the module."""

    def __init__(self, module: AnsibleModule) -> None:
        self.module = module
        self.params = module.params
        self.action: str = self.params["action"]
        self.host = platform.node()
        self.criu_bin = self.params["criu_bin"] or module.get_bin_path(
            "criu", required=True, opt_dirs=["/usr/local/sbin", "/usr/sbin", "/sbin"]
        )

    # -- helpers -----------------------------------------------------------------
    def _run(self, argv: list[str], timeout: int) -> tuple[int, str, float, float, float]:
        started_at = time.time()
        t0 = time.monotonic()
        try:
            proc = subprocess.run(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                timeout=timeout,
                check=False,
                close_fds=True,
            )
        except subprocess.TimeoutExpired as exc:
            self.module.fail_json(
                msg=f"criu {self.action} on {self.host} did not finish within {timeout} s",
                cmd=argv,
                output=(exc.output or b"").decode(errors="replace")[-4000:],
            )
        duration = time.monotonic() - t0
        return (
            proc.returncode,
            proc.stdout.decode(errors="replace"),
            duration,
            started_at,
            time.time(),
        )

    def _work_dir(self) -> Path:
        return Path(self.params["work_dir"] or self.params["images_dir"])

    def _log_file(self) -> Path:
        if self.params["log_file"]:
            return Path(self.params["log_file"])
        return self._work_dir() / f"criu-{self.action}.log"

    def _fail(self, argv: list[str], rc: int, output: str, log_file: Path, **extra: Any) -> None:
        log_text = log_file.read_text(errors="replace") if log_file.exists() else ""
        reason = first_error(log_text) or first_error(output) or log_tail(output, 3)
        self.module.fail_json(
            msg=(
                f"criu {self.action} failed on {self.host} (rc={rc}): {reason or 'no error line'}; "
                f"log: {log_file}"
            ),
            cmd=argv,
            rc=rc,
            log_file=str(log_file),
            log_tail=log_tail(log_text),
            output=log_tail(output),
            kernel=platform.release(),
            **extra,
        )

    # -- actions -----------------------------------------------------------------
    def check(self) -> dict[str, Any]:
        rc_v, out_v, _, _, _ = self._run([self.criu_bin, "--version"], 30)
        version = parse_criu_version(out_v)
        rc, out, _, _, _ = self._run([self.criu_bin, "check"], 120)
        verdict = parse_check_output(rc, out)
        features = {}
        for feature in self.params["features"]:
            f_rc, _, _, _, _ = self._run(
                build_criu_argv(self.criu_bin, "check", {"feature": feature}), 60
            )
            features[feature] = f_rc == 0
        return {
            "changed": False,
            "criu_bin": self.criu_bin,
            "version": version_string(version),
            "version_output": out_v.strip() if rc_v == 0 else out_v.strip()[-500:],
            "check": {
                "ok": verdict.ok,
                "summary": verdict.summary,
                "errors": verdict.errors,
                "warnings": verdict.warnings,
                "output": log_tail(out, 40),
            },
            "features": features,
            "kernel": platform.release(),
            "migration_metrics": {
                "phase": "environment",
                "data": {
                    "kernel": platform.release(),
                    "criu": version_string(version),
                    "criu_bin": self.criu_bin,
                    "criu_check": verdict.summary,
                    "features": features,
                    "hostname": self.host,
                    "machine": platform.machine(),
                },
            },
        }

    def run_action(self) -> dict[str, Any]:
        params = dict(self.params)
        log_file = self._log_file()
        params["log_file"] = str(log_file)
        argv = build_criu_argv(self.criu_bin, self.action, params)
        result: dict[str, Any] = {"changed": True, "cmd": argv, "kernel": platform.release()}
        if self.module.check_mode:
            result["msg"] = "check mode: CRIU was not run"
            return result

        Path(params["images_dir"]).mkdir(parents=True, exist_ok=True)
        self._work_dir().mkdir(parents=True, exist_ok=True)
        log_file.parent.mkdir(parents=True, exist_ok=True)
        stats_image = self._work_dir() / _STATS_IMAGE.get(self.action, "-")
        if stats_image.exists():
            stats_image.unlink()  # never report a previous call's figures
        pidfile = Path(params["pidfile"]) if params.get("pidfile") else None
        if pidfile and pidfile.exists():
            pidfile.unlink()

        rc, output, duration, started_at, finished_at = self._run(argv, self.params["timeout"])
        result.update(
            rc=rc,
            duration_s=round(duration, 6),
            started_at=started_at,
            finished_at=finished_at,
            log_file=str(log_file),
        )
        if rc != 0:
            self._fail(argv, rc, output, log_file, duration_s=round(duration, 6))

        if self.action in _STATS_IMAGE and stats_image.exists():
            summary = summarize_stats_image(str(stats_image))
            result["stats"] = summary.get("restore" if self.action == "restore" else "dump", {})
        if pidfile is not None:
            result["pid"] = self._read_pid(pidfile, argv, output, log_file)
        if self.action in _PHASE:
            data = {
                key: result[key] for key in ("duration_s", "started_at", "finished_at", "log_file")
            }
            data["images_dir"] = params["images_dir"]
            data["stats"] = result.get("stats", {})
            if "pid" in result:
                data["pid"] = result["pid"]
            phase = self.params["metrics_phase"] or _PHASE[self.action]
            result["migration_metrics"] = {"phase": phase, "data": data}
        return result

    def _read_pid(self, pidfile: Path, argv: list[str], output: str, log_file: Path) -> int:
        # --daemon returns once the daemon wrote its pidfile; give the filesystem a moment.
        deadline = time.monotonic() + 5
        while not pidfile.exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        try:
            pid = int(pidfile.read_text().strip())
        except (OSError, ValueError):
            self._fail(argv, 0, output + f"\nno pid in {pidfile}", log_file)
        if not Path(f"/proc/{pid}").exists():
            self._fail(argv, 0, output + f"\nprocess {pid} from {pidfile} is not running", log_file)
        return pid

    def stop_daemon(self) -> dict[str, Any]:
        pidfile = Path(self.params["pidfile"] or "")
        if not self.params["pidfile"]:
            self.module.fail_json(msg=f"criu {self.action} state=stopped needs pidfile")
        if not pidfile.exists():
            return {"changed": False, "msg": f"no pidfile {pidfile}: nothing to stop"}
        try:
            pid = int(pidfile.read_text().strip())
        except ValueError:
            pidfile.unlink()
            return {"changed": False, "msg": f"empty pidfile {pidfile} removed"}
        if self.module.check_mode or not _alive(pid):
            return {"changed": False, "pid": pid, "msg": f"criu {self.action} {pid} is not running"}
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 5
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)
        pidfile.unlink(missing_ok=True)
        return {"changed": True, "pid": pid, "msg": f"stopped criu {self.action} {pid}"}


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "action": {"type": "str", "required": True, "choices": list(ACTIONS)},
            "criu_bin": {"type": "path"},
            "pid": {"type": "int"},
            "images_dir": {"type": "path"},
            "work_dir": {"type": "path"},
            "log_file": {"type": "path"},
            "log_level": {"type": "int", "default": 4, "choices": [0, 1, 2, 3, 4]},
            "features": {"type": "list", "elements": "str", "default": []},
            "leave_running": {"type": "bool", "default": False},
            "track_mem": {"type": "bool", "default": False},
            "prev_images_dir": {"type": "str"},
            "page_server": {"type": "bool", "default": False},
            "lazy_pages": {"type": "bool", "default": False},
            "address": {"type": "str"},
            "port": {"type": "int"},
            "tcp_established": {"type": "bool", "default": False},
            "network_lock": {"type": "str", "choices": ["iptables", "nftables", "skip"]},
            "shell_job": {"type": "bool", "default": False},
            "ext_unix_sk": {"type": "bool", "default": False},
            "file_locks": {"type": "bool", "default": False},
            "link_remap": {"type": "bool", "default": False},
            "manage_cgroups": {"type": "str"},
            "restore_detached": {"type": "bool", "default": True},
            "pidfile": {"type": "path"},
            "daemon": {"type": "bool", "default": True},
            "state": {"type": "str", "default": "started", "choices": ["started", "stopped"]},
            "extra_args": {"type": "list", "elements": "str", "default": []},
            "metrics_phase": {"type": "str"},
            "timeout": {"type": "int", "default": 600},
        },
        required_if=[
            ("action", "dump", ("pid", "images_dir")),
            ("action", "pre-dump", ("pid", "images_dir")),
            ("action", "restore", ("images_dir",)),
            ("action", "page-server", ("images_dir",)),
            ("action", "lazy-pages", ("images_dir",)),
            ("page_server", True, ("address", "port")),
        ],
        supports_check_mode=True,
    )
    runner = CriuRunner(module)
    action = module.params["action"]
    if action == "check":
        module.exit_json(**runner.check())
    if action in ("page-server", "lazy-pages") and module.params["state"] == "stopped":
        module.exit_json(**runner.stop_daemon())
    module.exit_json(**runner.run_action())


if __name__ == "__main__":
    main()
