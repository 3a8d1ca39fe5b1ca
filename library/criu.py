#!/usr/bin/python
"""Ansible module wrapping one `criu` call: check, dump, pre-dump or restore."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: criu
short_description: Run one CRIU action (check, dump, pre-dump, restore)
description:
  - Builds the argv of one C(criu) call from its options (C(module_utils/criu_cli.py)), runs
    it, and returns how long it took, where its log is, and the figures of CRIU's own
    C(stats-dump) / C(stats-restore) images, decoded by the suite's C(criu_stats) module
    utility.
  - C(check) reports the CRIU version, whether C(criu check) passes, and which of the
    requested kernel features (C(criu check --feature NAME)) are present; whether this CRIU
    takes C(--tls) (C(criu check --tls) - a CRIU built without GnuTLS refuses it), and
    whether this host's root has C(CAP_SYS_RESOURCE), without which CRIU cannot read the
    rlimits of a non-root process (C(Can't get rlimit)).
  - C(check) with I(probe=lazy_pages_network) tests network post-copy for real on this host
    instead (C(module_utils/criu_probe.py)) - a throwaway process is dumped with
    C(--lazy-pages) to a local port, fetched by C(criu lazy-pages --page-server) and restored
    with C(--lazy-pages) in a fresh pid namespace; the restored process must read its memory
    back intact. Some kernels refuse what CRIU's page pipes need there ("page-pipe - tee -
    Operation not permitted") although C(criu check) passes; the probe names CRIU's reason.
  - CRIU's background processes (page server, lazy-pages daemon, a network post-copy dump)
    are the M(criu_daemon) module's.
options:
  action:
    description: The CRIU action.
    type: str
    required: true
    choices: [check, dump, pre-dump, restore]
  criu_bin:
    description: Path of the criu binary. Found in /usr/local/sbin, /usr/sbin or PATH when omitted.
    type: path
  pid:
    description: Root PID of the process tree to dump (dump, pre-dump).
    type: int
  images_dir:
    description: CRIU's images directory (created when missing).
    type: path
  log_file:
    description: Absolute path of CRIU's log. Defaults to I(images_dir)/criu-I(action).log.
    type: path
  features:
    description: Kernel features to test with C(criu check --feature) (action=check).
    type: list
    elements: str
    default: []
  track_mem:
    description: Use soft-dirty memory tracking (--track-mem), for iterative dumps.
    type: bool
    default: false
  prev_images_dir:
    description: Parent images dir, relative to images_dir (e.g. C(../1)), for incremental dumps.
    type: str
  page_server:
    description: Send the dump's pages to a C(criu page-server) at I(address):I(port).
    type: bool
    default: false
  lazy_pages:
    description:
      - Restore with the lazy-pages daemon serving pages on fault (userfaultfd).
      - A dump with I(lazy_pages=true) (network post-copy) is refused - it runs in the
        background, M(criu_daemon) C(daemon=lazy-dump).
    type: bool
    default: false
  address:
    description: The page server's address (dump with I(page_server)).
    type: str
  port:
    description: The page server's TCP port (dump with I(page_server)).
    type: int
  tls:
    description: Encrypt and authenticate the page server connection (dump with
      I(page_server)) with TLS - C(--tls) with I(tls_cacert), I(tls_cert) and I(tls_key).
    type: bool
    default: false
  tls_cacert:
    description: The CA certificate the peer's certificate must be signed by (PEM).
    type: path
  tls_cert:
    description: This host's certificate (PEM), signed by I(tls_cacert)'s CA.
    type: path
  tls_key:
    description: This host's private key (PEM) for I(tls_cert).
    type: path
  tcp_established:
    description: Checkpoint / restore established TCP connections (--tcp-established).
    type: bool
    default: false
  network_lock:
    description: CRIU's network-lock method while TCP connections are dumped and restored.
    type: str
    choices: [iptables, nftables, skip]
  file_locks:
    description: Dump / restore file locks (--file-locks).
    type: bool
    default: false
  pidfile:
    description: Where CRIU writes the restored root PID (restore).
    type: path
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
    description: Further CRIU arguments appended verbatim (a list, never a shell string).
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
  - A restore always detaches CRIU from the restored tree (C(--restore-detached)).
seealso:
  - module: criu_daemon
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

- name: Dump straight to a page server (started with criu_daemon)
  criu:
    action: dump
    pid: "{{ workload_pid }}"
    images_dir: /var/lib/criu-migration/images/exp1/1
    page_server: true
    address: 10.77.0.12
    port: 27000

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
  returned: dump, pre-dump, restore
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
  description: The restored root PID (restore).
  returned: restore
  type: int
  sample: 20001
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
tls:
  description: Whether this CRIU takes C(--tls) (check), and CRIU's reason when it does not.
  returned: check
  type: dict
  sample: {ok: true, reason: ""}
cap_sys_resource:
  description: Whether root on this host has CAP_SYS_RESOURCE (check); without it CRIU cannot
    dump a process of another user.
  returned: check
  type: bool
  sample: false
kernel:
  description: The host's kernel release.
  returned: always
  type: str
  sample: 6.1.0-40-amd64
migration_metrics:
  description: What the suite's metrics callback records for this call.
  returned: check, dump, pre-dump, restore
  type: dict
  sample: {phase: final_dump, data: {duration_s: 1.2, frozen_s: 1.0}}
"""

import platform
from pathlib import Path
from typing import Any

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.criu_cli import (
    error_message,
    first_error,
    log_tail,
    parse_check_output,
    parse_criu_version,
    version_string,
)
from ansible.module_utils.criu_probe import probe_lazy_pages_network
from ansible.module_utils.criu_runner import PHASE, CriuRunner, find_criu
from ansible.module_utils.private_files import private_umask
from ansible.module_utils.processes import is_alive, wait_until

ACTIONS = ("check", "dump", "pre-dump", "restore")
# capabilities(7): CRIU reads every dumped process's rlimits with prlimit(2), which for a
# process of another user needs CAP_SYS_RESOURCE (docs/lab.md: the lab's root lacks it).
CAP_SYS_RESOURCE = 24


def has_capability(bit: int, status_file: str = "/proc/self/status") -> bool:
    """Whether this process (root on the host, as CRIU runs) has capability `bit` in its
    effective set (CapEff of /proc/self/status)."""
    try:
        with open(status_file, encoding="ascii") as handle:
            for line in handle:
                if line.startswith("CapEff:"):
                    return bool(int(line.split()[1], 16) >> bit & 1)
    except (OSError, ValueError, IndexError):
        pass
    return False


class CriuAction:
    """One CRIU action for the module."""

    def __init__(self, module: AnsibleModule) -> None:
        self.module = module
        self.params = module.params
        self.action: str = self.params["action"]
        self.runner = CriuRunner(find_criu(module.get_bin_path, self.params["criu_bin"]))

    def check(self) -> dict[str, Any]:
        criu = self.runner.criu_bin
        _rc_v, out_v = self.runner.output(["--version"], 30)
        version = version_string(parse_criu_version(out_v))
        rc, out = self.runner.output(["check"], 120)
        verdict = parse_check_output(rc, out)
        features = {
            feature: self.runner.output(["check", "--feature", feature], 60)[0] == 0
            for feature in self.params["features"]
        }
        tls = self.tls_support(verdict.ok)
        cap_sys_resource = has_capability(CAP_SYS_RESOURCE)
        return {
            "changed": False,
            "criu_bin": criu,
            "version": version,
            "version_output": out_v.strip()[-500:],
            "check": {
                "ok": verdict.ok,
                "summary": verdict.summary,
                "errors": verdict.errors,
                "warnings": verdict.warnings,
                "output": log_tail(out, 40),
            },
            "features": features,
            "tls": tls,
            "cap_sys_resource": cap_sys_resource,
            "kernel": platform.release(),
            "migration_metrics": {
                "phase": "environment",
                "data": {
                    "kernel": platform.release(),
                    "criu": version,
                    "criu_bin": criu,
                    "criu_check": verdict.summary,
                    "features": features,
                    "hostname": self.runner.host,
                    "machine": platform.machine(),
                    "tls": tls["ok"],
                    "cap_sys_resource": cap_sys_resource,
                },
            },
        }

    def tls_support(self, check_ok: bool) -> dict[str, Any]:
        """Whether this CRIU takes --tls: `criu check --tls` passes like `criu check` does (a
        CRIU built without GnuTLS refuses --tls before anything else: "CRIU was built without
        TLS support")."""
        rc, out = self.runner.output(["check", "--tls"], 120)
        if rc == 0:
            return {"ok": True, "reason": ""}
        reason = error_message(first_error(out)) or log_tail(out, 1) or f"exit status {rc}"
        if check_ok:
            return {"ok": False, "reason": f"criu check --tls: {reason}"}
        return {"ok": False, "reason": f"criu check fails, so --tls was not judged: {reason}"}

    def probe(self) -> dict[str, Any]:
        verdict = probe_lazy_pages_network(
            self.runner,
            self.module.get_bin_path("unshare"),
            float(self.params["timeout"]),
            self.params["probe_cache_dir"],
        )
        return {
            "changed": False,
            "criu_bin": self.runner.criu_bin,
            "kernel": platform.release(),
            "probe": verdict,
        }

    def run(self) -> dict[str, Any]:
        opts = dict(self.params)
        if self.action == "dump" and opts["lazy_pages"]:
            # run here, a post-copy dump would hold the task until every page was fetched
            self.module.fail_json(
                msg="criu dump with lazy_pages=true is network post-copy: "
                "use criu_daemon daemon=lazy-dump"
            )
        if not opts["log_file"]:
            opts["log_file"] = str(Path(opts["images_dir"]) / f"criu-{self.action}.log")
        try:
            argv = self.runner.argv(self.action, opts)
        except ValueError as exc:  # e.g. pid=0: no process tree to dump
            self.module.fail_json(msg=str(exc))
        result: dict[str, Any] = {"changed": True, "cmd": argv, "kernel": platform.release()}
        if self.module.check_mode:
            result["msg"] = "check mode: CRIU was not run"
            return result
        call = self.runner.run(self.action, opts, self.params["timeout"])
        result.update(
            rc=call.rc,
            duration_s=call.duration_s,
            started_at=call.started_at,
            finished_at=call.finished_at,
            log_file=call.log_file,
        )
        if not call.ok:
            log_text = call.log_text()
            self.module.fail_json(
                msg=self.runner.failure(call, log_text),
                log_tail=log_tail(log_text),
                output=log_tail(call.output),
                **result,
            )
        if call.stats:  # returned only when CRIU wrote its stats image
            result["stats"] = call.stats
        data = call.metrics(images_dir=opts["images_dir"], cmd=call.argv)
        if self.action == "restore" and opts["pidfile"]:
            result["pid"] = data["pid"] = self._restored_pid(Path(opts["pidfile"]), call.log_file)
        phase = self.params["metrics_phase"] or PHASE[self.action]
        result["migration_metrics"] = {"phase": phase, "data": data}
        return result

    def _restored_pid(self, pidfile: Path, log_file: str) -> int:
        # --restore-detached returns once the tree runs and the pidfile is written
        wait_until(pidfile.exists, 5)
        try:
            pid = int(pidfile.read_text().strip())
        except (OSError, ValueError):
            self.module.fail_json(msg=f"criu restore wrote no pid to {pidfile}; log: {log_file}")
        if not is_alive(pid):
            self.module.fail_json(
                msg=f"the restored process {pid} (from {pidfile}) is not running on "
                f"{self.runner.host}; log: {log_file}"
            )
        return pid


def main() -> None:
    private_umask()  # the experiment's files: 0600 / 0700 (module_utils/private_files.py)
    module = AnsibleModule(
        argument_spec={
            "action": {"type": "str", "required": True, "choices": list(ACTIONS)},
            "criu_bin": {"type": "path"},
            "pid": {"type": "int"},
            "images_dir": {"type": "path"},
            "log_file": {"type": "path"},
            "features": {"type": "list", "elements": "str", "default": []},
            "track_mem": {"type": "bool", "default": False},
            "prev_images_dir": {"type": "str"},
            "page_server": {"type": "bool", "default": False},
            "lazy_pages": {"type": "bool", "default": False},
            "address": {"type": "str"},
            "port": {"type": "int"},
            "tls": {"type": "bool", "default": False},
            "tls_cacert": {"type": "path"},
            "tls_cert": {"type": "path"},
            "tls_key": {"type": "path"},
            "tcp_established": {"type": "bool", "default": False},
            "network_lock": {"type": "str", "choices": ["iptables", "nftables", "skip"]},
            "file_locks": {"type": "bool", "default": False},
            "pidfile": {"type": "path"},
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
            ("page_server", True, ("address", "port")),
        ],
        supports_check_mode=True,
    )
    action = CriuAction(module)
    if module.params["action"] == "check":
        module.exit_json(**(action.probe() if module.params["probe"] else action.check()))
    module.exit_json(**action.run())


if __name__ == "__main__":
    main()
