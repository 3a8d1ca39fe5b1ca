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
    (C(state=stopped), by their pidfile). Stopping first waits up to I(wait_s) seconds for the
    daemon to end by itself (a page server ends when the dump disconnects, a lazy-pages daemon
    once every page is in), then terminates it, and reports what the daemon's log says - pages
    received or served and for how long (metrics phases C(page_server) and C(lazy_pages)).
  - C(dump) with I(lazy_pages=true) is network post-copy - CRIU writes every image but the
    pages and then serves the pages to the destination's C(criu lazy-pages --page-server). The
    module starts that dump in the background and returns as soon as CRIU serves (the images
    can then be transferred and restored); C(action=dump state=stopped) with the same
    I(pidfile) later waits for it to finish and returns CRIU's C(stats-dump).
  - C(check) with I(probe=lazy_pages_network) tests network post-copy for real on this host
    instead - a throwaway process is dumped with C(--lazy-pages) to a local port, fetched by
    C(criu lazy-pages --page-server) and restored with C(--lazy-pages) in a fresh pid
    namespace; the restored process must read its memory back intact. Some kernels refuse
    what CRIU's page pipes need there ("page-pipe - tee - Operation not permitted") although
    C(criu check) passes; the probe names CRIU's reason.
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
      - dump - network post-copy (C(dump --lazy-pages)); the dump serves pages on I(address) and
        I(port), in the background (see I(state)).
      - page-server - serve pages lazily.
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
    description:
      - For page-server / lazy-pages, C(started) runs the daemon, C(stopped) stops the one in
        I(pidfile) (after waiting I(wait_s) for it to end by itself).
      - For a dump with I(lazy_pages=true), C(stopped) waits for the background dump in
        I(pidfile) to finish serving its pages.
    type: str
    choices: [started, stopped]
    default: started
  wait_s:
    description: With C(state=stopped), seconds to wait for the process to end by itself before it is terminated.
    type: float
    default: 0
  require_finished:
    description:
      - With C(state=stopped), fail unless the process ended by itself having done all its
        work - the dump's session complete (page-server), every page served (lazy-pages), the
        dump finished successfully (dump with I(lazy_pages)). It is terminated first either way.
    type: bool
    default: false
  probe:
    description: With C(action=check), run this probe instead of C(criu check).
    type: str
    choices: [lazy_pages_network]
  probe_cache_dir:
    description:
      - Where probe verdicts are cached, keyed by kernel release, boot and CRIU binary; empty
        disables the cache. Use a tmpfs (C(/run)) so a reboot forgets them.
    type: path
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

- name: Start a page server on the destination
  criu:
    action: page-server
    images_dir: /var/lib/criu-migration/images/exp1/1
    address: 10.77.0.12
    port: 27000
    log_file: /var/lib/criu-migration/images/exp1/criu-page-server.log
    pidfile: /var/lib/criu-migration/images/exp1/criu-page-server.pid

- name: Dump straight to it
  criu:
    action: dump
    pid: "{{ workload_pid }}"
    images_dir: /var/lib/criu-migration/images/exp1/1
    page_server: true
    address: 10.77.0.12
    port: 27000

- name: The page server ends by itself once the dump disconnected
  criu:
    action: page-server
    state: stopped
    pidfile: /var/lib/criu-migration/images/exp1/criu-page-server.pid
    wait_s: 10

- name: Does network post-copy work on this host?
  criu:
    action: check
    probe: lazy_pages_network
    probe_cache_dir: /run/criu-migration
  register: lazy_network
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
  description: The restored root PID (restore), the daemon's PID (page-server, lazy-pages) or the background dump's (dump with lazy_pages).
  returned: restore, page-server, lazy-pages, dump with lazy_pages
  type: int
  sample: 20001
finished:
  description: With state=stopped, the process had ended by itself (within wait_s).
  returned: state=stopped, when a pidfile was found
  type: bool
  sample: true
terminated:
  description: With state=stopped, the process had to be terminated.
  returned: state=stopped, when a pidfile was found
  type: bool
  sample: false
waited_s:
  description: With state=stopped, how long the module waited for the process to end by itself.
  returned: state=stopped, when a pidfile was found
  type: float
  sample: 1.12
resumed_pid:
  description: With state=stopped for a lazy dump that gave up, the workload PID that runs on the source again (CRIU unfroze it).
  returned: when that happened
  type: int
  sample: 16021
summary:
  description:
    - With state=stopped, what the daemon's log says. page-server - connected, session_complete,
      session_s, pages_received, bytes_received. lazy-pages - pages_lazy_total,
      pages_lazy_served, complete, serving_s. dump (lazy) - finished, rc, serving_at_s.
  returned: state=stopped, when a pidfile was found
  type: dict
  sample: {pages_lazy_total: 16778, pages_lazy_served: 16778, complete: true, serving_s: 0.05}
probe:
  description: The probe's verdict (check with probe).
  returned: check with probe
  type: dict
  sample: {name: lazy_pages_network, ok: false, side: dump, reason: "criu dump --lazy-pages (serving pages) failed: page-pipe: tee: 65536: Operation not permitted", cached: false, duration_s: 0.4}
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
  returned: dump, pre-dump, restore; page-server, lazy-pages and a lazy dump with state=stopped
  type: dict
  sample: {phase: final_dump, data: {duration_s: 1.2, frozen_s: 1.0}}
"""

import contextlib
import hashlib
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.criu_cli import (
    ACTIONS,
    LAZY_DUMP_SERVING,
    build_criu_argv,
    first_error,
    lazy_network_probe_verdict,
    log_tail,
    parse_check_output,
    parse_criu_version,
    summarize_lazy_dump_log,
    summarize_lazy_pages_log,
    summarize_page_server_log,
    version_string,
)
from ansible.module_utils.criu_stats import DEFAULT_PAGE_SIZE, summarize_stats_image

# CRIU writes these into its work dir after each call.
_STATS_IMAGE = {"dump": "stats-dump", "pre-dump": "stats-dump", "restore": "stats-restore"}
_PHASE = {"dump": "final_dump", "pre-dump": "predump", "restore": "restore"}
# The metrics phase of a daemon, recorded when it is stopped.
_DAEMON_PHASE = {"page-server": "page_server", "lazy-pages": "lazy_pages"}

# Runs a command in the background and leaves its exit status in a file (argv[1]).
_BACKGROUND = (
    "import subprocess, sys\n"
    "rc = subprocess.call(sys.argv[2:], stdin=subprocess.DEVNULL)\n"
    "open(sys.argv[1] + '.tmp', 'w').write(str(rc))\n"
    "import os; os.replace(sys.argv[1] + '.tmp', sys.argv[1])\n"
)

# The lazy-pages probe's throwaway process: 1 MiB of random bytes (every page touched), its
# digest in `ready`; once `go` appears (after the restore) it digests the memory again into
# `result` and exits. argv[1] is the probe's folder.
_PROBE_CHILD = (
    "import hashlib, os, sys, time\n"
    "os.closerange(3, 65536)\n"
    "os.chdir('/')\n"
    "d = sys.argv[1]\n"
    "buf = bytearray(os.urandom(1 << 20))\n"
    "def put(name, text):\n"
    "    tmp = os.path.join(d, name + '.tmp')\n"
    "    with open(tmp, 'w') as f:\n"
    "        f.write(text)\n"
    "    os.replace(tmp, os.path.join(d, name))\n"
    "put('ready', hashlib.sha256(buf).hexdigest())\n"
    "while not os.path.exists(os.path.join(d, 'go')):\n"
    "    time.sleep(0.02)\n"
    "put('result', hashlib.sha256(buf).hexdigest())\n"
)


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

        if self.action == "dump" and params["lazy_pages"]:
            return self._start_lazy_dump(argv, result, log_file, pidfile)

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
            if self.action in _DAEMON_PHASE:
                _write_meta(pidfile, self._meta(result))
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

    def _meta(self, result: dict[str, Any]) -> dict[str, Any]:
        """What state=stopped needs to know about a process it did not start."""
        return {
            "action": self.action,
            "pid": result.get("pid"),
            "started_at": result.get("started_at"),
            "serving_at": result.get("finished_at"),
            "duration_s": result.get("duration_s"),
            "log_file": result.get("log_file"),
            "images_dir": self.params["images_dir"],
            "work_dir": str(self._work_dir()),
            "address": self.params["address"],
            "port": self.params["port"],
            "metrics_phase": self.params["metrics_phase"],
        }

    def _start_lazy_dump(
        self, argv: list[str], result: dict[str, Any], log_file: Path, pidfile: Path | None
    ) -> dict[str, Any]:
        """Network post-copy: run the dump in the background, return once it serves pages."""
        if pidfile is None:
            self.module.fail_json(msg="criu dump with lazy_pages=true needs pidfile")
        rc_file = _rc_file(pidfile)
        rc_file.unlink(missing_ok=True)
        if log_file.exists():
            log_file.unlink()  # the marker looked for below must be this dump's
        started_at = time.time()
        t0 = time.monotonic()
        with open(_out_file(pidfile), "wb") as out:
            proc = subprocess.Popen(
                [sys.executable, "-c", _BACKGROUND, str(rc_file), *argv],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                close_fds=True,
                start_new_session=True,  # survives this module; stopped as a process group
            )
        pidfile.write_text(f"{proc.pid}\n")
        deadline = t0 + self.params["timeout"]
        while True:
            text = log_file.read_text(errors="replace") if log_file.exists() else ""
            if LAZY_DUMP_SERVING in text:
                break
            if proc.poll() is not None or time.monotonic() > deadline:
                if proc.poll() is None:
                    _terminate(proc.pid, group=True)
                rc = _read_rc(rc_file)
                pidfile.unlink(missing_ok=True)
                self._fail(
                    argv,
                    -1 if rc is None else rc,
                    _out_file(pidfile).read_text(errors="replace")
                    if _out_file(pidfile).exists()
                    else "",
                    log_file,
                    duration_s=round(time.monotonic() - t0, 6),
                )
            time.sleep(0.02)
        duration = time.monotonic() - t0
        result.update(
            pid=proc.pid,
            duration_s=round(duration, 6),
            started_at=started_at,
            finished_at=time.time(),
            log_file=str(log_file),
            serving=True,
        )
        _write_meta(pidfile, self._meta(result))
        data = {key: result[key] for key in ("duration_s", "started_at", "finished_at", "log_file")}
        data.update(
            images_dir=self.params["images_dir"],
            stats={},
            pid=proc.pid,
            lazy_network=True,
            serving=True,
            address=self.params["address"],
            port=self.params["port"],
        )
        phase = self.params["metrics_phase"] or _PHASE["dump"]
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

    # -- state=stopped -----------------------------------------------------------
    def stop(self) -> dict[str, Any]:
        """Wait for a daemon (or a background lazy dump) to end by itself, else terminate it."""
        if not self.params["pidfile"]:
            self.module.fail_json(msg=f"criu {self.action} state=stopped needs pidfile")
        pidfile = Path(self.params["pidfile"])
        if not pidfile.exists():
            return {"changed": False, "msg": f"no pidfile {pidfile}: nothing to stop"}
        meta = _read_meta(pidfile)
        try:
            pid = int(pidfile.read_text().strip())
        except ValueError:
            pidfile.unlink()
            _meta_file(pidfile).unlink(missing_ok=True)
            return {"changed": False, "msg": f"empty pidfile {pidfile} removed"}
        background_dump = self.action == "dump"
        if self.module.check_mode:
            return {"changed": False, "pid": pid, "msg": "check mode: nothing was stopped"}

        t0 = time.monotonic()
        was_running = _alive(pid)
        deadline = t0 + max(0.0, float(self.params["wait_s"]))
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.02)
        waited = time.monotonic() - t0
        finished = not _alive(pid)
        ended_at = time.time()
        if not finished:
            _terminate(pid, group=background_dump)
        pidfile.unlink(missing_ok=True)
        _meta_file(pidfile).unlink(missing_ok=True)

        result: dict[str, Any] = {
            "changed": not finished,
            "pid": pid,
            "finished": finished,
            "terminated": not finished,
            "waited_s": round(waited, 6),
        }
        if not was_running:
            result["msg"] = f"criu {self.action} {pid} is not running"
        elif finished:
            result["msg"] = f"criu {self.action} {pid} ended by itself after {waited:.2f} s"
        else:
            result["msg"] = f"stopped criu {self.action} {pid}"
        if meta:
            problem = self._stopped_metrics(result, meta, pidfile, ended_at)
            if problem and self.params["require_finished"]:
                result["msg"] = problem
                self.module.fail_json(**result)
        elif self.params["require_finished"] and not finished:
            result["msg"] = (
                f"criu {self.action} {pid} on {self.host} was still running after "
                f"{waited:.1f} s and was stopped"
            )
            self.module.fail_json(**result)
        return result

    def _stopped_metrics(
        self, result: dict[str, Any], meta: dict[str, Any], pidfile: Path, ended_at: float
    ) -> str:
        """Fill summary and migration_metrics from the log; return what went wrong, if anything."""
        log_file = Path(self.params["log_file"] or meta.get("log_file") or "")
        text = log_file.read_text(errors="replace") if log_file.is_file() else ""
        images_dir = Path(meta.get("images_dir") or self.params["images_dir"] or "")
        finished = result["finished"]
        data: dict[str, Any] = {
            "pid": result["pid"],
            "started_at": meta.get("started_at"),
            "finished": finished,
            "terminated": result["terminated"],
            "log_file": str(log_file),
            "images_dir": str(images_dir),
        }
        if meta.get("port"):
            data["port"] = meta["port"]
        problem = ""
        if self.action == "page-server":
            summary = summarize_page_server_log(text)
            received = [p for p in images_dir.glob("pages-*.img") if p.is_file()]
            summary["bytes_received"] = sum(p.stat().st_size for p in received)
            summary["pages_received"] = summary["bytes_received"] // DEFAULT_PAGE_SIZE
            if not (finished and summary["session_complete"]):
                problem = (
                    f"criu page-server on {self.host} did not see the dump's session through"
                    f" ({summary['error'] or 'no error logged'}); log: {log_file}"
                )
        elif self.action == "lazy-pages":
            summary = summarize_lazy_pages_log(text)
            if not (finished and summary["complete"]):
                problem = (
                    f"criu lazy-pages on {self.host} "
                    + (
                        "ended"
                        if finished
                        else f"was still serving after {result['waited_s']:.1f} s and was stopped"
                    )
                    + f" having served {summary['pages_lazy_served']} of "
                    f"{summary['pages_lazy_total']} lazy pages"
                    + (f": {summary['error']}" if summary["error"] else "")
                    + f"; log: {log_file}"
                )
        else:  # a background dump with --lazy-pages
            summary = summarize_lazy_dump_log(text)
            rc = _read_rc(_rc_file(pidfile))
            summary["rc"] = rc
            _rc_file(pidfile).unlink(missing_ok=True)
            out = _out_file(pidfile)
            if out.is_file() and out.stat().st_size == 0:
                out.unlink()  # CRIU printed nothing beside its log
            stats_image = Path(meta.get("work_dir") or images_dir) / "stats-dump"
            stats = {}
            if summary["finished"] and stats_image.is_file():
                stats = summarize_stats_image(str(stats_image)).get("dump", {})
            data.update(
                {
                    key: meta.get(key)
                    for key in ("duration_s", "started_at", "address")
                    if meta.get(key) is not None
                }
            )
            data["finished_at"] = meta.get("serving_at")
            data["stats"] = stats
            data["lazy_network"] = True
            if meta.get("started_at"):
                data["served_s"] = round(ended_at - meta["started_at"], 6)
            result["stats"] = stats
            if not (finished and rc == 0 and summary["finished"]):
                problem = (
                    f"criu dump --lazy-pages on {self.host} did not finish serving its pages"
                    f" (rc={rc}): {summary['error'] or 'no error logged'}; log: {log_file}"
                )
                # A post-copy dump that gives up unfreezes its tasks: the workload runs on
                # here again, which the journal must say (phase rollback: back on the source).
                workload_pid = int(self.params["pid"] or 0)
                if workload_pid > 0 and _alive(workload_pid):
                    result["resumed_pid"] = workload_pid
                    result["migration_metrics"] = {
                        "phase": "rollback",
                        "data": {
                            "pid": workload_pid,
                            "resumed_on_source": True,
                            "reason": problem,
                            "log_file": str(log_file),
                            "dump": {**data, **summary},
                        },
                    }
                    result["summary"] = summary
                    result["log_file"] = str(log_file)
                    return problem
        data.update(summary)
        result["summary"] = summary
        result["log_file"] = str(log_file)
        phase = (
            self.params["metrics_phase"]
            or meta.get("metrics_phase")
            or _DAEMON_PHASE.get(self.action, "final_dump")
        )
        result["migration_metrics"] = {"phase": phase, "data": data}
        return problem

    # -- probes ------------------------------------------------------------------
    def probe(self) -> dict[str, Any]:
        cache_dir = self.params["probe_cache_dir"]
        cache = (
            Path(cache_dir) / f"{self.params['probe']}-{self._probe_key()}.json"
            if cache_dir
            else None
        )
        verdict: dict[str, Any] | None = None
        if cache is not None and cache.is_file():
            try:
                verdict = {**json.loads(cache.read_text()), "cached": True}
            except ValueError:
                verdict = None
        if verdict is None:
            t0 = time.monotonic()
            verdict = LazyNetworkProbe(self).run()
            verdict.update(
                name=self.params["probe"],
                duration_s=round(time.monotonic() - t0, 3),
                probed_at=time.time(),
                kernel=platform.release(),
                criu_bin=self.criu_bin,
            )
            if cache is not None:
                cache.parent.mkdir(parents=True, exist_ok=True)
                cache.write_text(json.dumps(verdict))
            verdict["cached"] = False
        return {
            "changed": False,
            "criu_bin": self.criu_bin,
            "kernel": platform.release(),
            "probe": verdict,
        }

    def _probe_key(self) -> str:
        """Kernel, boot and CRIU binary: a verdict holds until one of them changes."""
        try:
            boot_id = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        except OSError:
            boot_id = ""
        binary = os.stat(self.criu_bin)
        key = (
            f"{platform.release()}|{boot_id}|{self.criu_bin}|{binary.st_size}|{binary.st_mtime_ns}"
        )
        return hashlib.sha256(key.encode()).hexdigest()[:16]


class LazyNetworkProbe:
    """Network post-copy on this host, for real: dump --lazy-pages, lazy-pages, restore."""

    def __init__(self, runner: CriuRunner) -> None:
        self.runner = runner
        self.criu = runner.criu_bin
        self.timeout = float(runner.params["timeout"])
        self.procs: list[subprocess.Popen[bytes]] = []
        self.lazy_pid: int | None = None

    def run(self) -> dict[str, Any]:
        unshare = self.runner.module.get_bin_path("unshare")
        if not unshare:
            return {"ok": False, "side": "setup", "reason": "unshare (util-linux) is not installed"}
        workdir = Path(tempfile.mkdtemp(prefix="criu-lazy-probe-"))
        try:
            return self._run(workdir, unshare)
        finally:
            self._cleanup()
            shutil.rmtree(workdir, ignore_errors=True)

    def _spawn(self, argv: list[str], out: Path) -> subprocess.Popen[bytes]:
        with open(out, "wb") as stream:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=stream,
                stderr=subprocess.STDOUT,
                close_fds=True,
                start_new_session=True,
                cwd="/",
            )
        self.procs.append(proc)
        return proc

    def _wait(self, done: Any, seconds: float) -> bool:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if done():
                return True
            time.sleep(0.02)
        return bool(done())

    def _run(self, workdir: Path, unshare: str) -> dict[str, Any]:
        src, dst = workdir / "source", workdir / "destination"
        src.mkdir()
        dst.mkdir()
        logs = {side: workdir / f"{side}.log" for side in ("dump", "lazy-pages", "restore")}

        def verdict(restored_ok: bool = False, stuck: str = "") -> dict[str, Any]:
            texts = {
                side: path.read_text(errors="replace")
                for side, path in logs.items()
                if path.exists()
            }
            result = lazy_network_probe_verdict(texts, restored_ok)
            if stuck and not result["ok"] and not result["side"]:
                result.update(side="setup", reason=stuck)
            return result

        child = self._spawn(
            [sys.executable, "-c", _PROBE_CHILD, str(workdir)], workdir / "child.out"
        )
        if not self._wait(lambda: (workdir / "ready").exists() or child.poll() is not None, 10):
            return verdict(stuck="the probe's throwaway process did not start within 10 s")
        if child.poll() is not None:
            return verdict(stuck=f"the probe's throwaway process exited ({child.returncode})")
        expected = (workdir / "ready").read_text()

        port = _free_port()
        dump = self._spawn(
            build_criu_argv(
                self.criu,
                "dump",
                {
                    "pid": child.pid,
                    "images_dir": str(src),
                    "log_file": str(logs["dump"]),
                    "lazy_pages": True,
                    "address": "127.0.0.1",
                    "port": port,
                },
            ),
            workdir / "dump.out",
        )
        serving = self._wait(
            lambda: dump.poll() is not None or LAZY_DUMP_SERVING in _read(logs["dump"]),
            self.timeout,
        )
        if not serving or dump.poll() is not None:
            return verdict(
                stuck=f"criu dump --lazy-pages did not start serving within {self.timeout:.0f} s"
            )
        for image in src.glob("*.img"):
            shutil.copy2(image, dst / image.name)

        pidfile = workdir / "lazy-pages.pid"
        rc, output, _, _, _ = self.runner._run(
            build_criu_argv(
                self.criu,
                "lazy-pages",
                {
                    "images_dir": str(dst),
                    "log_file": str(logs["lazy-pages"]),
                    "page_server": True,
                    "address": "127.0.0.1",
                    "port": port,
                    "pidfile": str(pidfile),
                },
            ),
            int(self.timeout),
        )
        if rc != 0:
            return verdict(stuck=f"criu lazy-pages did not start (rc={rc}): {log_tail(output, 2)}")
        self.lazy_pid = int(pidfile.read_text().strip()) if pidfile.exists() else None

        # A fresh pid namespace: the dumped process still holds its PID here until its pages
        # are served. criu is that namespace's init, so it restores attached (no -d).
        restore = self._spawn(
            [
                unshare,
                "--pid",
                "--fork",
                "--mount-proc",
                *build_criu_argv(
                    self.criu,
                    "restore",
                    {
                        "images_dir": str(dst),
                        "log_file": str(logs["restore"]),
                        "lazy_pages": True,
                        "restore_detached": False,
                    },
                ),
            ],
            workdir / "restore.out",
        )
        restored = self._wait(
            lambda: (
                restore.poll() is not None
                or "Restore finished successfully" in _read(logs["restore"])
            ),
            self.timeout,
        )
        if restored and restore.poll() is None:
            (workdir / "go").write_text("go")
            self._wait(lambda: (workdir / "result").exists() or restore.poll() is not None, 10)
        restored_ok = (workdir / "result").exists() and (workdir / "result").read_text() == expected
        # Every page served: the dump, the daemon and the restored process end by themselves.
        self._wait(lambda: restore.poll() is not None and dump.poll() is not None, 10)
        if not restored:
            return verdict(
                stuck=f"criu restore --lazy-pages did not finish within {self.timeout:.0f} s"
            )
        return verdict(restored_ok and dump.returncode == 0)

    def _cleanup(self) -> None:
        for proc in reversed(self.procs):
            if proc.poll() is None:
                _terminate(proc.pid, group=True)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)
        if self.lazy_pid and _alive(self.lazy_pid):
            _terminate(self.lazy_pid, group=False)


# -- process helpers ------------------------------------------------------------------
def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def _terminate(pid: int, group: bool) -> None:
    """SIGTERM, then SIGKILL after 5 s: the process, or its whole process group."""
    if pid <= 1 or pid == os.getpid() or (group and pid == os.getpgrp()):
        return  # never this module itself, whatever a pidfile says
    kill = os.killpg if group else os.kill
    try:
        kill(pid, signal.SIGTERM)
    except (ProcessLookupError, PermissionError):
        return
    deadline = time.monotonic() + 5
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    if _alive(pid):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            kill(pid, signal.SIGKILL)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _read(path: Path) -> str:
    return path.read_text(errors="replace") if path.exists() else ""


def _meta_file(pidfile: Path) -> Path:
    return pidfile.with_name(pidfile.name + ".json")


def _rc_file(pidfile: Path) -> Path:
    return pidfile.with_name(pidfile.name + ".rc")


def _out_file(pidfile: Path) -> Path:
    return pidfile.with_name(pidfile.name + ".out")


def _write_meta(pidfile: Path, meta: dict[str, Any]) -> None:
    _meta_file(pidfile).write_text(json.dumps(meta))


def _read_meta(pidfile: Path) -> dict[str, Any]:
    try:
        meta = json.loads(_meta_file(pidfile).read_text())
    except (OSError, ValueError):
        return {}
    return meta if isinstance(meta, dict) else {}


def _read_rc(rc_file: Path) -> int | None:
    try:
        return int(rc_file.read_text().strip())
    except (OSError, ValueError):
        return None


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
            "wait_s": {"type": "float", "default": 0},
            "require_finished": {"type": "bool", "default": False},
            "probe": {"type": "str", "choices": ["lazy_pages_network"]},
            "probe_cache_dir": {"type": "path"},
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
        if module.params["probe"]:
            module.exit_json(**runner.probe())
        module.exit_json(**runner.check())
    if module.params["state"] == "stopped":
        if action in ("page-server", "lazy-pages") or (
            action == "dump" and module.params["lazy_pages"]
        ):
            module.exit_json(**runner.stop())
        module.fail_json(
            msg=f"state=stopped is for page-server, lazy-pages and a dump with lazy_pages=true, "
            f"not criu {action}"
        )
    module.exit_json(**runner.run_action())


if __name__ == "__main__":
    main()
