#!/usr/bin/python
"""Ansible module: iterative CRIU pre-dumps, each sent to the destination, with a stop rule."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: predump_loop
short_description: Run CRIU pre-dumps while the workload runs, send each one, stop by rule
description:
  - The pre-dump phase of C(checkpoint_strategy=predump), on the source. Iteration I(n) runs
    C(criu pre-dump --track-mem) into I(images_base)/I(n) (from the second on with
    C(--prev-images-dir ../<n-1>), so only pages dirtied since the previous one are written),
    sends that folder to the same path on the destination with a backend of
    C(module_utils/transfer_backends.py) while the workload keeps running, and asks the stop
    rule (C(module_utils/predump_policy.py)) whether to go on.
  - Pre-dumps start every I(interval) seconds (start to start); when a pre-dump and its
    transfer take longer, the next one starts right after.
  - C(mode=fixed) runs I(iterations) pre-dumps (the seed's behaviour); C(mode=adaptive)
    stops earlier when the dirty set stops shrinking, when enough pages were unchanged since
    the previous pre-dump, when few pages were written, or when the deadline budget says the
    final dump must start now. The final dump then builds on the last pre-dump
    (C(--prev-images-dir ../<count>)).
  - Each iteration's CRIU log is gathered, in order, into I(log_file).
  - With I(notice) (C(trigger=notice)) a watcher of the cloud's interruption notice
    (module_utils/spot_notice.py, the same as the C(notice_watch) module's) polls the metadata
    service in a thread from the start, beside the pre-dumps. Before the notice there is no
    deadline clock - the pre-dumps run as usual, and when the stop rule says stop (or
    I(iterations) are done) they pause until the notice comes. When it comes - noticed during
    the wait between two pre-dumps, or after the pre-dump under way - C(mode=fixed) ends the
    pre-dumps (reason C(notice)); C(mode=adaptive) asks the stop rule with the deadline clock
    started at the notice's issue time and the budget I(deadline_s), or the notice's own
    length when I(deadline_s) is 0 (AWS 120 s, GCP / Azure 30 s), so pre-dumps go on only
    while another one still leaves time for the final dump, its transfer and the restore. A
    notice whose deadline already passed ends them at once. At least one pre-dump runs (the
    final dump builds on it). No notice within I(notice.timeout_s) fails the task; the
    workload keeps running on the source.
  - One task, not an Ansible loop, because the stop rule needs the figures of the iteration
    just done before another may start, and because each Ansible task costs 0.2 s in the
    namespaces lab and seconds on an emulated guest - more than a short I(interval).
  - Returns one C(results) item per iteration for the metrics callback - a C(predump) phase
    (CRIU's C(stats-dump)) and a C(transfer) phase (stage C(predump-<n>)) - and the stop
    decision as the C(predump_stop) phase.
options:
  pid:
    description: Root PID of the workload's process tree.
    type: int
    required: true
  images_base:
    description: The experiment's images folder; pre-dump I(n) goes to I(images_base)/I(n).
    type: path
    required: true
  log_file:
    description: All iterations' CRIU logs, concatenated in order. Defaults to
      I(images_base)/criu-pre-dump.log.
    type: path
  iterations:
    description: Pre-dumps to run (fixed), or at most (adaptive) - the experiment's
      C(predump_iterations).
    type: int
    required: true
  interval:
    description: Seconds between the starts of two pre-dumps (C(predump_interval)).
    type: float
    required: true
  mode:
    description: The stop rule (C(predump_mode)).
    type: str
    choices: [fixed, adaptive]
    required: true
  min_pages:
    description: (adaptive) Stop when a pre-dump wrote at most this many pages
      (C(predump_min_pages)).
    type: int
    required: true
  skip_goal_pct:
    description: (adaptive) Stop when at least this share (%) of the pages CRIU looked at was
      unchanged since the previous pre-dump (C(predump_skip_goal_pct)).
    type: float
    required: true
  max_growth_pct:
    description: (adaptive) Stop when the pages written grew by more than this (%) over the
      previous pre-dump; 0 stops as soon as the dirty set stops shrinking
      (C(predump_max_growth_pct)).
    type: float
    required: true
  deadline_s:
    description: (adaptive) The budget, in seconds on the deadline clock, that the final dump,
      its transfer and the restore must also fit in; 0 turns the deadline rule off.
    type: float
    required: true
  final_reserve_s:
    description: (adaptive) Seconds reserved for the restore and orchestration on top of the
      estimated final dump and transfer (C(predump_final_reserve_s)).
    type: float
    required: true
  clock_started_at:
    description: When the deadline clock started (epoch seconds, e.g. the spot notice's
      arrival). Defaults to the start of the first pre-dump.
    type: float
  notice:
    description: Watch for the cloud's interruption notice (C(trigger=notice)) while
      pre-dumping; the notice ends the pre-dumps (see the description).
    type: dict
    suboptions:
      provider:
        description: The cloud whose metadata protocol the endpoint speaks.
        type: str
        choices: [aws, gcp, azure]
        required: true
      endpoint:
        description: Base URL of the metadata service (C(notice_endpoint)).
        type: str
        required: true
      poll_s:
        description: Seconds between two polls (C(notice_poll_s)).
        type: float
        default: 1.0
      timeout_s:
        description: Seconds to wait for the notice (C(notice_timeout_s)).
        type: float
        default: 3600
      rebalance:
        description: AWS - the rebalance recommendation triggers too (C(notice_rebalance)).
        type: bool
        default: false
      request_timeout_s:
        description: Seconds one HTTP request may take.
        type: float
        default: 2.0
  criu_bin:
    description: Path of the criu binary. Found in /usr/local/sbin, /usr/sbin or PATH when omitted.
    type: path
  file_locks:
    description: Dump file locks (--file-locks).
    type: bool
    default: false
  extra_args:
    description: Further CRIU arguments, appended verbatim.
    type: list
    elements: str
    default: []
  criu_timeout:
    description: Seconds one pre-dump may take.
    type: int
    default: 600
extends_documentation_fragment: [transfer, aws_api]
attributes:
  check_mode:
    support: none
    details: Pre-dumps are never idempotent; the module always runs them.
notes:
  - Without I(transfer) the pre-dumps stay on the source.
  - Needs soft-dirty memory tracking on the host (C(criu check --feature mem_dirty_track);
    C(CONFIG_MEM_SOFT_DIRTY)) - the preflight refuses C(checkpoint_strategy=predump) elsewhere.
  - Reports C(changed=true).
seealso:
  - module: criu
  - module: checkpoint_transfer
  - name: CRIU iterative migration
    link: https://criu.org/Iterative_migration
author: CRIU migration suite
"""

EXAMPLES = r"""
- name: Pre-dumps, each sent to the destination while the workload runs
  predump_loop:
    pid: "{{ workload_pid }}"
    images_base: /var/lib/criu-migration/images/e1
    iterations: 8
    interval: 10
    mode: adaptive
    min_pages: 64
    skip_goal_pct: 70
    max_growth_pct: 10
    deadline_s: 0
    final_reserve_s: 5
    transfer:
      method: rsync
      destination: 10.79.0.22
      ssh_key: /etc/criu-lab/id_ed25519
      known_hosts: /etc/criu-lab/known_hosts
      cipher: aes128-gcm@openssh.com
  register: criu_predump
"""

RETURN = r"""
count:
  description: Pre-dumps done; the final dump's parent is C(../<count>).
  returned: success
  type: int
  sample: 3
iterations:
  description: Per pre-dump - index, images_dir, duration_s, pages written / skipped, bytes,
    frozen_s, the transfer's figures, CRIU's stats, and the stop rule's verdict after it.
  returned: success
  type: list
  elements: dict
  sample: [{index: 1, duration_s: 0.49, pages_written: 17062, pages_skipped: 0, transfer: {duration_s: 2.1, bytes: 69885952}}]
stop:
  description: Why the pre-dumps stopped - reason (small_dump, skip_goal, not_shrinking,
    deadline, iterations), detail and the figures the rule read.
  returned: success
  type: dict
  sample: {reason: not_shrinking, detail: "pre-dump 3 wrote 1700 pages after 1582 (+7.5 %)", mode: adaptive}
log_file:
  description: The concatenated CRIU log of all pre-dumps.
  returned: always
  type: str
  sample: /var/lib/criu-migration/images/e1/criu-pre-dump.log
duration_s:
  description: Seconds from the first pre-dump's start to the end of the last transfer.
  returned: success
  type: float
  sample: 9.8
results:
  description: One item per pre-dump and per transfer, each with its C(migration_metrics),
    for the metrics callback (it reads C(results) items as it does a loop's).
  returned: success
  type: list
  elements: dict
  sample: [{migration_metrics: {phase: predump, data: {index: 1, duration_s: 0.49}}}]
notice:
  description: The interruption notice (with I(notice)) - as C(notice_watch) returns it.
  returned: success, with notice
  type: dict
  sample: {provider: aws, action: terminate, notice_at: 1764150000.0, seen_at: 1764150000.41}
migration_metrics:
  description: The stop decision, recorded as phase C(predump_stop).
  returned: success
  type: dict
  sample: {phase: predump_stop, data: {reason: iterations, count: 3, mode: fixed}}
"""

import platform
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.criu_runner import CriuRunner, find_criu
from ansible.module_utils.predump_policy import (
    MODES,
    Decision,
    Iteration,
    PredumpPolicy,
    decide,
)
from ansible.module_utils.private_files import private_umask
from ansible.module_utils.spot_notice import (
    PROVIDERS,
    Notice,
    NoticeThread,
    NoticeWatcher,
    client_for,
)
from ansible.module_utils.ssh_master import SshMaster, SshMasterError
from ansible.module_utils.transfer_backends import (
    AWS_OPTIONS,
    TRANSFER_OPTIONS,
    TransferError,
    TransferRequest,
    backend_for,
    combine_sides,
    request_from_options,
)


class PredumpLoop:
    def __init__(self, module: AnsibleModule) -> None:
        self.module = module
        p = module.params
        self.host = platform.node()
        self.base = Path(p["images_base"])
        self.log_file = Path(p["log_file"] or self.base / "criu-pre-dump.log")
        self.runner = CriuRunner(find_criu(module.get_bin_path, p["criu_bin"]), self.host)
        self.policy = PredumpPolicy(
            mode=p["mode"],
            max_iterations=p["iterations"],
            interval_s=p["interval"],
            min_pages=p["min_pages"],
            skip_goal_pct=p["skip_goal_pct"],
            max_growth_pct=p["max_growth_pct"],
            deadline_s=p["deadline_s"],
            final_reserve_s=p["final_reserve_s"],
        )
        self.transfer = self._transfer_settings(p["transfer"])
        # a backend whose receive fetches each stage (s3) runs it on the destination over one
        # SSH master connection, opened at the first pre-dump
        self.master: SshMaster | None = None
        # trigger=notice: the watcher polls from now on, beside the pre-dumps
        self.watch = self._notice_thread(p["notice"])
        self.waited_for_notice_s: float | None = None
        self.iterations: list[dict[str, Any]] = []
        self.results: list[dict[str, Any]] = []
        self.logs: list[Path] = []

    def _transfer_settings(self, given: dict[str, Any] | None) -> dict[str, Any] | None:
        if given is None:
            return None
        try:
            backend_for(given["method"], given["compress"])
        except ValueError as exc:
            self.module.fail_json(msg=f"pre-dump transfers: {exc}")
        if given["method"] == "rsync" and not given["destination"]:
            self.module.fail_json(msg="pre-dump transfers with rsync need transfer.destination")
        aws = self.module.params["aws"] or {}
        needs = {
            "s3": {
                "transfer.s3_bucket": given["s3_bucket"],
                "transfer.s3_prefix": given["s3_prefix"],
                "transfer.destination": given["destination"],
                "aws.tools_dir": aws.get("tools_dir"),
            },
            "ebs": {
                "transfer.ebs_mount_path": given["ebs_mount_path"],
                "transfer.ebs_dir": given["ebs_dir"],
            },
        }.get(given["method"], {})
        missing = [name for name, value in needs.items() if not value]
        if missing:
            self.module.fail_json(
                msg=f"pre-dump transfers with {given['method']} need {', '.join(missing)}"
            )
        return given

    # -- one iteration ------------------------------------------------------------------
    def predump(self, index: int) -> dict[str, Any]:
        p = self.module.params
        images_dir = self.base / str(index)
        log = self.base / f".criu-pre-dump-{index}.log"
        self.logs.append(log)
        opts = {
            "images_dir": str(images_dir),
            "log_file": str(log),
            "pid": p["pid"],
            "track_mem": True,
            "prev_images_dir": f"../{index - 1}" if index > 1 else None,
            "file_locks": p["file_locks"],
            "extra_args": p["extra_args"],
        }
        call = self.runner.run("pre-dump", opts, p["criu_timeout"])
        if not call.ok:
            log_text = call.log_text()
            self.gather_logs()
            self.fail(
                f"criu pre-dump {index} failed on {self.host} (rc={call.rc}): "
                f"{call.reason(log_text) or 'no error line'}; log: {self.log_file}",
                cmd=call.argv,
                rc=call.rc,
                log_tail=log_text[-4000:],
            )
        return {
            "index": index,
            "images_dir": str(images_dir),
            "parent": opts["prev_images_dir"],
            **call.metrics(log_file=str(self.log_file)),
            "cmd": call.argv,
        }

    def send(self, index: int, images_dir: str) -> dict[str, Any] | None:
        if self.transfer is None:
            return None
        stage = f"predump-{index}"
        request = request_from_options(
            self.transfer, [images_dir], self.module.params["aws"], stage=stage
        )
        backend = backend_for(request.method, request.compress)
        started_at = time.time()
        received = None
        try:
            result = backend.send(request, self.run)
            if getattr(backend, "receive_fetches", False):
                # s3: the destination downloads this pre-dump now, while the workload runs
                received = backend.receive(request, self.remote(request))
        except (TransferError, ValueError) as exc:
            self.gather_logs()
            self.fail(
                f"sending pre-dump {index} ({images_dir}) from {self.host} failed: {exc}",
                cmd=getattr(exc, "argv", []),
                output=getattr(exc, "output", "")[-3000:],
            )
        if result.extra.get("staged"):
            # a two-sided backend would need the destination to fetch in the middle of the loop
            self.fail(f"transfer={request.method} staged {result.extra['staged']} for {stage}")
        data = result.as_dict()
        if received is not None:
            data = combine_sides(data, received.as_dict(), "off")
        data.update(stage=stage, started_at=started_at, iteration=index)
        return data

    def run(self, argv: list[str], stdin: bytes | None = None) -> tuple[int, str, str]:
        if stdin is None:
            return self.module.run_command(argv, check_rc=False)
        return self.module.run_command(argv, check_rc=False, data=stdin, binary_data=True)

    def remote(self, request: TransferRequest) -> Any:
        """A runner on the destination, over the loop's SSH master (opened once)."""
        if self.master is None:
            master = SshMaster(request)
            try:
                master.open()
            except SshMasterError as exc:
                raise TransferError(f"{exc} (the destination runs the receive)") from exc
            self.master = master
        return self.master.runner(self.module.params["criu_timeout"])

    def close(self) -> None:
        if self.master is not None:
            self.master.close()
            self.master = None

    # -- the loop ---------------------------------------------------------------------------
    def loop(self) -> dict[str, Any]:
        history: list[Iteration] = []
        clock_start = self.module.params["clock_started_at"]
        first_start = None
        decision = None
        for index in range(1, self.policy.max_iterations + 1):
            if first_start is not None:
                # start to start: the workload runs undisturbed until the next slot
                wait = first_start + (index - 1) * self.policy.interval_s - time.monotonic()
                # a notice during the wait may end the pre-dumps (trigger=notice)
                ended = self.pause(wait, history)
                if ended is not None:
                    decision = ended
                    break
            t_iter = time.monotonic()
            if first_start is None:
                first_start = t_iter
            record = self.predump(index)
            if clock_start is None and index == 1:
                clock_start = record["started_at"]
            transfer = self.send(index, record["images_dir"])
            stats = record["stats"]
            iteration = Iteration(
                index=index,
                pages_written=int(stats.get("pages_written", 0)),
                pages_skipped=int(stats.get("pages_skipped_parent", 0)),
                predump_s=record["duration_s"],
                transfer_s=float(transfer["duration_s"]) if transfer else 0.0,
            )
            history.append(iteration)
            elapsed = time.time() - float(clock_start)
            decision = self.decide(history, elapsed)
            record["transfer"] = (
                {
                    k: transfer[k]
                    for k in ("method", "duration_s", "bytes", "files", "throughput_mb_s")
                }
                if transfer
                else None
            )
            record["iteration_s"] = round(time.monotonic() - t_iter, 6)
            record["decision"] = {
                "stop": decision.stop,
                "reason": decision.reason,
                **decision.figures,
            }
            self.iterations.append(self.summary(record))
            self.results.append(
                {"index": index, "migration_metrics": {"phase": "predump", "data": record}}
            )
            if transfer:
                self.results.append(
                    {"index": index, "migration_metrics": {"phase": "transfer", "data": transfer}}
                )
            if decision.stop:
                break
        assert decision is not None and first_start is not None
        decision = self.await_notice(decision)
        self.gather_logs()
        stop = {
            "reason": decision.reason,
            "detail": decision.detail,
            "mode": self.policy.mode,
            "count": len(history),
            "max_iterations": self.policy.max_iterations,
            "figures": decision.figures,
            "policy": {
                "interval_s": self.policy.interval_s,
                "min_pages": self.policy.min_pages,
                "skip_goal_pct": self.policy.skip_goal_pct,
                "max_growth_pct": self.policy.max_growth_pct,
                "deadline_s": self.policy.deadline_s,
                "final_reserve_s": self.policy.final_reserve_s,
            },
        }
        notice = self.notice_result(stop)
        return {
            "changed": True,
            **notice,
            "count": len(history),
            "iterations": self.iterations,
            "stop": stop,
            "log_file": str(self.log_file),
            "duration_s": round(time.monotonic() - first_start, 6),
            "results": self.results,
            "migration_metrics": {"phase": "predump_stop", "data": stop},
        }

    # -- the spot notice (trigger=notice) ---------------------------------------------------
    def _notice_thread(self, options: dict[str, Any] | None) -> NoticeThread | None:
        if not options:
            return None
        client = client_for(
            options["provider"],
            options["endpoint"],
            rebalance=options["rebalance"],
            timeout_s=options["request_timeout_s"],
        )
        watcher = NoticeWatcher(client, poll_s=options["poll_s"], timeout_s=options["timeout_s"])
        return NoticeThread(watcher).start()

    def notice(self) -> Notice | None:
        return self.watch.notice if self.watch is not None else None

    def decide(self, history: list[Iteration], elapsed: float) -> Decision:
        """The stop rule after an iteration; with a notice watched, its clock and budget."""
        if self.watch is None:
            return decide(self.policy, history, elapsed)
        if self.notice() is None:
            # no deadline clock before the notice: the other rules only (a stop pauses the
            # pre-dumps until the notice comes)
            return decide(replace(self.policy, deadline_s=0.0), history, elapsed)
        return self.after_notice(history)

    def after_notice(self, history: list[Iteration]) -> Decision:
        """Whether the pre-dumps end now that the notice came: fixed - yes; adaptive - the
        stop rule, its clock started at the notice's issue time and its budget the notice's
        length (or deadline_s when given); a deadline already passed - yes."""
        notice = self.notice()
        assert notice is not None
        now = time.time()
        budget = self.policy.deadline_s or notice.notice_length_s
        elapsed = now - notice.notice_at
        extra = {
            "clock": "spot notice",
            "notice_at": notice.notice_at,
            "remaining_s": round(budget - elapsed, 3),
        }
        if self.policy.mode == "adaptive" and not notice.deadline_passed:
            rule = decide(replace(self.policy, deadline_s=budget), history, elapsed)
            return Decision(rule.stop, rule.reason, rule.detail, {**rule.figures, **extra})
        detail = (
            notice.message()
            if notice.deadline_passed
            else f"the {notice.provider} {notice.action} notice came ({elapsed:.1f} s of its "
            f"{budget:g} s gone): the pre-dumps end, the final dump starts"
        )
        figures = {
            "iteration": history[-1].index,
            "elapsed_s": round(elapsed, 3),
            "deadline_s": budget,
            **extra,
        }
        return Decision(True, "notice", detail, figures)

    def pause(self, seconds: float, history: list[Iteration]) -> Decision | None:
        """Wait until the next pre-dump's slot; the decision that ends the pre-dumps when a
        notice comes meanwhile and says so."""
        end = time.monotonic() + max(0.0, seconds)
        if self.watch is not None and self.notice() is None and self.watch.wait(max(0.0, seconds)):
            self.check_watch(len(history))
            decision = self.after_notice(history)
            if decision.stop:
                return decision
        left = end - time.monotonic()
        if left > 0:
            time.sleep(left)
        return None

    def await_notice(self, decision: Decision) -> Decision:
        """After the last pre-dump: wait for the notice when it has not come yet."""
        if self.watch is None:
            return decision
        if self.notice() is None:
            waited_from = time.time()
            self.watch.wait(None)  # the watcher's own timeout bounds it
            self.check_watch(len(self.iterations))
            self.waited_for_notice_s = round(time.time() - waited_from, 3)
            detail = (
                f"{decision.detail}; then waited {self.waited_for_notice_s:.1f} s for the "
                f"{self.watch.watcher.client.provider} notice"
            )
            decision = Decision(decision.stop, decision.reason, detail, decision.figures)
        self.watch.close()
        return decision

    def check_watch(self, done: int) -> None:
        """Fail when the watcher gave up (no notice within its timeout)."""
        if self.watch is not None and self.notice() is None and self.watch.error:
            self.gather_logs()
            self.fail(
                f"{self.watch.error}; {done} pre-dump(s) done; the workload keeps running on "
                f"{self.host}",
                watch=self.watch.watcher.record(),
            )

    def notice_result(self, stop: dict[str, Any]) -> dict[str, Any]:
        """The notice's metrics item and return value (nothing without a notice watched)."""
        notice = self.notice()
        if self.watch is None or notice is None:
            return {}
        seen = notice.seen_at
        before = sum(
            1
            for it in self.results
            if it["migration_metrics"]["phase"] == "predump"
            and float(it["migration_metrics"]["data"].get("started_at") or 0)
            + float(it["migration_metrics"]["data"].get("iteration_s") or 0)
            <= seen
        )
        record = notice.record()
        stop["notice"] = {
            "provider": notice.provider,
            "action": notice.action,
            "notice_at": notice.notice_at,
            "seen_at": seen,
            "predumps_before": before,
            "waited_s": self.waited_for_notice_s,
        }
        data = {
            **record,
            "watch": self.watch.watcher.record(),
            "seen_during": "the wait after the pre-dumps"
            if self.waited_for_notice_s is not None
            else "the pre-dumps",
            "predumps_before": before,
        }
        if notice.deadline_passed:
            self.module.warn(notice.message())
        self.results.append(
            {"notice": True, "migration_metrics": {"phase": "notice", "data": data}}
        )
        return {"notice": record}

    @staticmethod
    def summary(record: dict[str, Any]) -> dict[str, Any]:
        stats = record["stats"]
        return {
            "index": record["index"],
            "images_dir": record["images_dir"],
            "duration_s": record["duration_s"],
            "frozen_s": stats.get("frozen_s"),
            "pages_written": stats.get("pages_written", 0),
            "pages_skipped": stats.get("pages_skipped_parent", 0),
            "bytes": stats.get("bytes_written", 0),
            "transfer": record["transfer"],
            "iteration_s": record["iteration_s"],
            "decision": record["decision"],
        }

    def gather_logs(self) -> None:
        """Every iteration's CRIU log, in order, in one file (CRIU truncates its -o log)."""
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        with self.log_file.open("w") as out:
            for index, log in enumerate(self.logs, start=1):
                out.write(f"===== criu pre-dump {index} ({self.base / str(index)}) =====\n")
                if log.exists():
                    out.write(log.read_text(errors="replace"))
                    log.unlink()
                else:
                    out.write("(no log)\n")
        self.logs = []

    def fail(self, msg: str, **extra: Any) -> None:
        self.module.fail_json(
            msg=msg,
            log_file=str(self.log_file),
            count=len(self.iterations),
            iterations=self.iterations,
            results=self.results,
            **extra,
        )


def main() -> None:
    private_umask()  # the experiment's files: 0600 / 0700 (module_utils/private_files.py)
    module = AnsibleModule(
        argument_spec={
            "pid": {"type": "int", "required": True},
            "images_base": {"type": "path", "required": True},
            "log_file": {"type": "path"},
            # the experiment's predump_* settings, validated by the preflight
            "iterations": {"type": "int", "required": True},
            "interval": {"type": "float", "required": True},
            "mode": {"type": "str", "required": True, "choices": list(MODES)},
            "min_pages": {"type": "int", "required": True},
            "skip_goal_pct": {"type": "float", "required": True},
            "max_growth_pct": {"type": "float", "required": True},
            "deadline_s": {"type": "float", "required": True},
            "final_reserve_s": {"type": "float", "required": True},
            "clock_started_at": {"type": "float"},
            # trigger=notice: the notice_* settings (module_utils/spot_notice.py)
            "notice": {
                "type": "dict",
                "options": {
                    "provider": {"type": "str", "required": True, "choices": list(PROVIDERS)},
                    "endpoint": {"type": "str", "required": True},
                    "poll_s": {"type": "float", "default": 1.0},
                    "timeout_s": {"type": "float", "default": 3600.0},
                    "rebalance": {"type": "bool", "default": False},
                    "request_timeout_s": {"type": "float", "default": 2.0},
                },
            },
            "criu_bin": {"type": "path"},
            "file_locks": {"type": "bool", "default": False},
            "extra_args": {"type": "list", "elements": "str", "default": []},
            "criu_timeout": {"type": "int", "default": 600},
            "transfer": {"type": "dict", "options": TRANSFER_OPTIONS},
            "aws": {"type": "dict", "options": AWS_OPTIONS},
        },
        supports_check_mode=False,
    )
    predumps = PredumpLoop(module)
    try:
        result = predumps.loop()
    finally:  # fail_json exits through here too
        predumps.close()
    module.exit_json(**result)


if __name__ == "__main__":
    main()
