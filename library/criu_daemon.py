#!/usr/bin/python
"""Ansible module: CRIU's background processes - page server, lazy-pages daemon, post-copy dump."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: criu_daemon
short_description: Start or stop CRIU's page server, lazy-pages daemon or network post-copy dump
description:
  - C(state=started) starts one of CRIU's background processes and returns once it serves -
    C(page-server) (C(criu page-server --daemon)) receives a dump's pages over TCP;
    C(lazy-pages) (C(criu lazy-pages --daemon)) serves a lazy restore's pages on fault, from
    the images or (I(page_server=true)) fetched from the source's post-copy dump;
    C(lazy-dump) is network post-copy (C(criu dump --lazy-pages)), run in the background
    because it only ends once the destination fetched every page - the module returns as soon
    as CRIU serves them.
  - C(state=stopped) finds the process from I(pidfile), waits up to I(wait_s) seconds for it
    to end by itself (a page server ends when the dump disconnects, a lazy-pages daemon once
    every page is in, a post-copy dump once every page was fetched), then terminates it, and
    reports what its log says - pages received or served and for how long - for the metrics
    (phases C(page_server), C(lazy_pages), C(final_dump)).
  - What C(state=stopped) needs to know about the process is left beside the pidfile by
    C(state=started) (C(<pidfile>.json)); the post-copy dump's exit status in C(<pidfile>.rc).
options:
  daemon:
    description: Which background process.
    type: str
    required: true
    choices: [page-server, lazy-pages, lazy-dump]
  state:
    description: C(started) runs it; C(stopped) stops the one in I(pidfile).
    type: str
    choices: [started, stopped]
    default: started
  pidfile:
    description: The process's pidfile (its companions sit beside it).
    type: path
    required: true
  criu_bin:
    description: Path of the criu binary. Found in /usr/local/sbin, /usr/sbin or PATH when omitted.
    type: path
  images_dir:
    description: CRIU's images directory (where a page server writes, a lazy-pages daemon
      reads, a post-copy dump writes every image but the pages).
    type: path
  log_file:
    description: Absolute path of CRIU's log. Defaults to I(images_dir)/criu-I(daemon).log.
    type: path
  pid:
    description: Root PID of the process tree to dump (lazy-dump).
    type: int
  address:
    description: Where the page server listens, where the post-copy dump serves, or where
      the lazy-pages daemon fetches from.
    type: str
  port:
    description: The TCP port of that address.
    type: int
  tls:
    description: The page traffic goes over TLS (C(--tls)) - the page server and the post-copy
      dump serve it (checking the client's certificate against I(tls_cacert) only), the
      lazy-pages daemon with I(page_server) fetches it (checking that the source's
      certificate names I(address)).
    type: bool
    default: false
  tls_cacert:
    description: The CA certificate the peer's certificate must be signed by (PEM).
    type: path
  tls_cert:
    description: This host's certificate (PEM).
    type: path
  tls_key:
    description: This host's private key (PEM).
    type: path
  prev_images_dir:
    description: Parent images dir, relative to images_dir, for a page server receiving an
      incremental dump.
    type: str
  page_server:
    description: (lazy-pages) Fetch the pages from the source's post-copy dump at
      I(address):I(port) instead of reading them from I(images_dir).
    type: bool
    default: false
  tcp_established:
    description: (lazy-dump) Checkpoint established TCP connections.
    type: bool
    default: false
  network_lock:
    description: (lazy-dump) CRIU's network-lock method.
    type: str
    choices: [iptables, nftables, skip]
  file_locks:
    description: (lazy-dump) Dump file locks.
    type: bool
    default: false
  wait_s:
    description: With C(state=stopped), seconds to wait for the process to end by itself
      before it is terminated.
    type: float
    default: 0
  require_finished:
    description:
      - With C(state=stopped), fail unless the process ended by itself having done all its
        work - the dump's session complete (page-server), every page served (lazy-pages), the
        dump finished successfully (lazy-dump). It is terminated first either way.
    type: bool
    default: false
  metrics_phase:
    description: The phase the metrics callback files the stopped process's figures under.
    type: str
  timeout:
    description: Seconds C(state=started) waits for the process to serve.
    type: int
    default: 600
attributes:
  check_mode:
    support: partial
    details: Nothing is started or stopped in check mode; C(started) reports the command.
notes:
  - C(state=started) reports C(changed=true); C(state=stopped) reports C(changed) when it had to
    terminate the process.
  - A C(lazy-dump) that gives up unfreezes the source's tasks - the workload runs there
    again, which the result says (C(resumed_pid)).
seealso:
  - module: criu
author: CRIU migration suite
"""

EXAMPLES = r"""
- name: Start a page server on the destination
  criu_daemon:
    daemon: page-server
    images_dir: /var/lib/criu-migration/images/exp1/1
    address: 10.77.0.12
    port: 27000
    log_file: /var/lib/criu-migration/images/exp1/criu-page-server.log
    pidfile: /var/lib/criu-migration/images/exp1/criu-page-server.pid

- name: The page server ends by itself once the dump disconnected
  criu_daemon:
    daemon: page-server
    state: stopped
    pidfile: /var/lib/criu-migration/images/exp1/criu-page-server.pid
    wait_s: 10

- name: Network post-copy - the source's dump serves its pages
  criu_daemon:
    daemon: lazy-dump
    pid: "{{ workload_pid }}"
    images_dir: /var/lib/criu-migration/images/exp1/1
    address: 10.77.0.11
    port: 27001
    pidfile: /var/lib/criu-migration/images/exp1/criu-dump-lazy.pid
"""

RETURN = r"""
cmd:
  description: The argv that was (or, in check mode, would be) run.
  returned: state=started
  type: list
  elements: str
  sample: [/usr/local/sbin/criu, page-server, --images-dir, /var/lib/criu-migration/images/e/1, -v4, --address, 10.77.0.12, --port, "27000", --daemon, --pidfile, /p]
pid:
  description: The background process's PID.
  returned: when one was started or found
  type: int
  sample: 20001
duration_s:
  description: Seconds from the start until it served (state=started).
  returned: state=started
  type: float
  sample: 0.05
log_file:
  description: CRIU's log on the host.
  returned: state=started, and state=stopped when the process was found
  type: str
  sample: /var/lib/criu-migration/images/e/criu-page-server.log
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
  description: With state=stopped for a lazy-dump that gave up, the workload PID that runs on the source again (CRIU unfroze it).
  returned: when that happened
  type: int
  sample: 16021
summary:
  description:
    - With state=stopped, what the log says. page-server - connected, session_complete,
      session_s, pages_received, bytes_received. lazy-pages - pages_lazy_total,
      pages_lazy_served, complete, serving_s. lazy-dump - finished, rc, serving_at_s.
  returned: state=stopped, when a pidfile was found
  type: dict
  sample: {pages_lazy_total: 16778, pages_lazy_served: 16778, complete: true, serving_s: 0.05}
stats:
  description: The post-copy dump's stats-dump, once it finished (state=stopped).
  returned: lazy-dump, state=stopped
  type: dict
  sample: {frozen_s: 1.2, pages_written: 0}
migration_metrics:
  description: What the suite's metrics callback records.
  returned: lazy-dump started; state=stopped when the process was found
  type: dict
  sample: {phase: page_server, data: {session_complete: true, pages_received: 16778}}
"""

import platform
import time
from pathlib import Path
from typing import Any

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.criu_cli import (
    log_tail,
    summarize_lazy_dump_log,
    summarize_lazy_pages_log,
    summarize_page_server_log,
)
from ansible.module_utils.criu_runner import (
    CriuCall,
    CriuRunner,
    daemon_meta,
    find_criu,
    read_stats,
    start_lazy_dump,
)
from ansible.module_utils.criu_stats import DEFAULT_PAGE_SIZE
from ansible.module_utils.private_files import private_umask
from ansible.module_utils.processes import (
    ProcessFiles,
    is_alive,
    terminate,
    wait_until,
)

# The CRIU action behind each daemon, and the metrics phase its figures go to when stopped.
ACTION = {"page-server": "page-server", "lazy-pages": "lazy-pages", "lazy-dump": "dump"}
PHASE = {"page-server": "page_server", "lazy-pages": "lazy_pages", "lazy-dump": "final_dump"}
# How long state=stopped waits for the lazy-dump monitor to record CRIU's exit status.
EXIT_STATUS_WAIT_S = 2.0


class CriuDaemon:
    def __init__(self, module: AnsibleModule) -> None:
        self.module = module
        self.params = module.params
        self.daemon: str = self.params["daemon"]
        self.files = ProcessFiles.at(self.params["pidfile"])
        self.host = platform.node()

    def fail(self, msg: str, **extra: Any) -> None:
        self.module.fail_json(msg=msg, daemon=self.daemon, **extra)

    # -- state=started ---------------------------------------------------------------
    def start(self) -> dict[str, Any]:
        p = self.params
        if not p["images_dir"]:
            self.fail(f"criu_daemon {self.daemon} needs images_dir")
        if self.daemon == "lazy-dump" and not p["pid"]:
            self.fail("criu_daemon lazy-dump needs pid")
        runner = CriuRunner(find_criu(self.module.get_bin_path, p["criu_bin"]))
        opts = dict(p, lazy_pages=self.daemon == "lazy-dump")
        opts["log_file"] = p["log_file"] or str(Path(p["images_dir"]) / f"criu-{self.daemon}.log")
        try:
            argv = runner.argv(ACTION[self.daemon], opts)
        except ValueError as exc:
            self.fail(str(exc))
        if self.module.check_mode:
            return {"changed": True, "cmd": argv, "msg": "check mode: nothing was started"}
        if self.daemon == "lazy-dump":
            return self._start_lazy_dump(runner, opts)
        call = runner.run(ACTION[self.daemon], opts, p["timeout"])
        if not call.ok:
            self._fail_call(runner, call)
        # --daemon returns once the daemon wrote its pidfile; give the filesystem a moment
        wait_until(self.files.pidfile.exists, 5)
        pid = self.files.read_pid()
        if pid is None or not is_alive(pid):
            self.fail(
                f"criu {self.daemon} on {self.host} left no running process in "
                f"{self.files.pidfile}; log: {call.log_file}",
                cmd=argv,
                output=log_tail(call.output),
            )
        self.files.write_meta(self._meta(call, pid))
        return self._started(call, pid)

    @staticmethod
    def _started(call: CriuCall, pid: int, **extra: Any) -> dict[str, Any]:
        """The result of a start: what ran, the process, how long until it served."""
        return {
            "changed": True,
            "cmd": call.argv,
            "pid": pid,
            "duration_s": call.duration_s,
            "log_file": call.log_file,
            **extra,
        }

    def _meta(self, call: CriuCall, pid: int) -> dict[str, Any]:
        """What state=stopped needs to know about a process it did not start."""
        return daemon_meta(self.daemon, call, pid, self.params, self.params["metrics_phase"])

    def _fail_call(self, runner: CriuRunner, call: CriuCall) -> None:
        log_text = call.log_text()
        self.fail(
            runner.failure(call, log_text),
            cmd=call.argv,
            rc=call.rc,
            log_file=call.log_file,
            log_tail=log_tail(log_text),
            output=log_tail(call.output),
            kernel=platform.release(),
        )

    def _start_lazy_dump(self, runner: CriuRunner, opts: dict[str, Any]) -> dict[str, Any]:
        """Network post-copy: the dump runs in the background; return once it serves pages."""
        call, pid = start_lazy_dump(runner, opts, self.files, opts["timeout"])
        if not call.ok:
            self._fail_call(runner, call)
        self.files.write_meta(self._meta(call, pid))
        data = call.metrics(
            images_dir=opts["images_dir"],
            pid=pid,
            lazy_network=True,
            serving=True,
            address=opts["address"],
            port=opts["port"],
        )
        return self._started(
            call,
            pid,
            serving=True,
            migration_metrics={
                "phase": self.params["metrics_phase"] or PHASE[self.daemon],
                "data": data,
            },
        )

    # -- state=stopped ---------------------------------------------------------------
    def stop(self) -> dict[str, Any]:
        """Wait for the process to end by itself, else terminate it; report what it did."""
        if not self.files.pidfile.exists():
            return {"changed": False, "msg": f"no pidfile {self.files.pidfile}: nothing to stop"}
        meta = self.files.read_meta()
        pid = self.files.read_pid()
        if pid is None:
            self.files.clear()
            return {"changed": False, "msg": f"empty pidfile {self.files.pidfile} removed"}
        if self.module.check_mode:
            return {"changed": False, "pid": pid, "msg": "check mode: nothing was stopped"}
        t0 = time.monotonic()
        was_running = is_alive(pid)
        wait_until(lambda: not is_alive(pid), max(0.0, float(self.params["wait_s"])))
        waited = time.monotonic() - t0
        finished = not is_alive(pid)
        ended_at = time.time()
        if not finished:
            # the post-copy dump runs as its own process group (CRIU and its helpers)
            terminate(pid, group=self.daemon == "lazy-dump")
        result: dict[str, Any] = {
            "changed": not finished,
            "pid": pid,
            "finished": finished,
            "terminated": not finished,
            "waited_s": round(waited, 6),
        }
        if not was_running:
            result["msg"] = f"criu {self.daemon} {pid} is not running"
        elif finished:
            result["msg"] = f"criu {self.daemon} {pid} ended by itself after {waited:.2f} s"
        else:
            result["msg"] = f"stopped criu {self.daemon} {pid}"
        problem = self._stopped_metrics(result, meta, ended_at) if meta else ""
        if not meta and self.params["require_finished"] and not finished:
            problem = (
                f"criu {self.daemon} {pid} on {self.host} was still running after "
                f"{waited:.1f} s and was stopped"
            )
        self.files.clear()
        if problem and self.params["require_finished"]:
            result["msg"] = problem
            self.module.fail_json(**result)
        return result

    def _stopped_metrics(
        self, result: dict[str, Any], meta: dict[str, Any], ended_at: float
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
        if self.daemon == "page-server":
            summary, problem = self._page_server_summary(text, images_dir, finished, log_file)
        elif self.daemon == "lazy-pages":
            summary, problem = self._lazy_pages_summary(text, result, log_file)
        else:
            summary, problem = self._lazy_dump_summary(text, result, meta, images_dir, log_file)
            data.update(
                {k: meta[k] for k in ("duration_s", "started_at", "address", "cmd") if meta.get(k)},
                finished_at=meta.get("serving_at"),
                stats=result["stats"],
                lazy_network=True,
            )
            if meta.get("started_at"):
                data["served_s"] = round(ended_at - meta["started_at"], 6)
            if problem:
                # A post-copy dump that gives up unfreezes its tasks: the workload runs on
                # here again, which the journal must say (phase rollback: back on the source).
                workload_pid = int(self.params["pid"] or 0)
                if workload_pid > 0 and is_alive(workload_pid):
                    result["resumed_pid"] = workload_pid
                    result["summary"] = summary
                    result["log_file"] = str(log_file)
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
                    return problem
        data.update(summary)
        result["summary"] = summary
        result["log_file"] = str(log_file)
        phase = self.params["metrics_phase"] or meta.get("metrics_phase") or PHASE[self.daemon]
        result["migration_metrics"] = {"phase": phase, "data": data}
        return problem

    def _page_server_summary(
        self, text: str, images_dir: Path, finished: bool, log_file: Path
    ) -> tuple[dict[str, Any], str]:
        summary = summarize_page_server_log(text)
        received = [p for p in images_dir.glob("pages-*.img") if p.is_file()]
        summary["bytes_received"] = sum(p.stat().st_size for p in received)
        summary["pages_received"] = summary["bytes_received"] // DEFAULT_PAGE_SIZE
        problem = ""
        if not (finished and summary["session_complete"]):
            # with --tls, a refused certificate says more than the errors that follow it
            error = (summary.get("tls") or {}).get("error") or summary["error"]
            problem = (
                f"criu page-server on {self.host} did not see the dump's session through"
                f" ({error or 'no error logged'}); log: {log_file}"
            )
        return summary, problem

    def _lazy_pages_summary(
        self, text: str, result: dict[str, Any], log_file: Path
    ) -> tuple[dict[str, Any], str]:
        summary = summarize_lazy_pages_log(text)
        if result["finished"] and summary["complete"]:
            return summary, ""
        how = (
            "ended"
            if result["finished"]
            else f"was still serving after {result['waited_s']:.1f} s and was stopped"
        )
        problem = (
            f"criu lazy-pages on {self.host} {how} having served {summary['pages_lazy_served']} "
            f"of {summary['pages_lazy_total']} lazy pages"
            + (f": {summary['error']}" if summary["error"] else "")
            + f"; log: {log_file}"
        )
        return summary, problem

    def _lazy_dump_summary(
        self,
        text: str,
        result: dict[str, Any],
        meta: dict[str, Any],
        images_dir: Path,
        log_file: Path,
    ) -> tuple[dict[str, Any], str]:
        summary = summarize_lazy_dump_log(text)
        # CRIU has ended (by itself or terminated); its monitor writes the exit status once it
        # reaped it, a moment later - a status read too early would fail a good dump
        wait_until(lambda: self.files.read_exit() is not None, EXIT_STATUS_WAIT_S)
        ended = self.files.read_exit()
        rc = None if ended is None else ended[0]
        summary["rc"] = rc
        result["stats"] = read_stats("dump", images_dir) if summary["finished"] else {}
        problem = ""
        if not (result["finished"] and rc == 0 and summary["finished"]):
            problem = (
                f"criu dump --lazy-pages on {self.host} did not finish serving its pages"
                f" (rc={rc}): {summary['error'] or 'no error logged'}; log: {log_file}"
            )
        return summary, problem


def main() -> None:
    private_umask()  # the experiment's files: 0600 / 0700 (module_utils/private_files.py)
    module = AnsibleModule(
        argument_spec={
            "daemon": {"type": "str", "required": True, "choices": list(ACTION)},
            "state": {"type": "str", "default": "started", "choices": ["started", "stopped"]},
            "pidfile": {"type": "path", "required": True},
            "criu_bin": {"type": "path"},
            "images_dir": {"type": "path"},
            "log_file": {"type": "path"},
            "pid": {"type": "int"},
            "address": {"type": "str"},
            "port": {"type": "int"},
            "tls": {"type": "bool", "default": False},
            "tls_cacert": {"type": "path"},
            "tls_cert": {"type": "path"},
            "tls_key": {"type": "path"},
            "prev_images_dir": {"type": "str"},
            "page_server": {"type": "bool", "default": False},
            "tcp_established": {"type": "bool", "default": False},
            "network_lock": {"type": "str", "choices": ["iptables", "nftables", "skip"]},
            "file_locks": {"type": "bool", "default": False},
            "wait_s": {"type": "float", "default": 0},
            "require_finished": {"type": "bool", "default": False},
            "metrics_phase": {"type": "str"},
            "timeout": {"type": "int", "default": 600},
        },
        supports_check_mode=True,
    )
    daemon = CriuDaemon(module)
    if module.params["state"] == "stopped":
        module.exit_json(**daemon.stop())
    module.exit_json(**daemon.start())


if __name__ == "__main__":
    main()
