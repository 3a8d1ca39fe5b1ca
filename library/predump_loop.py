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
extends_documentation_fragment: [transfer]
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
migration_metrics:
  description: The stop decision, recorded as phase C(predump_stop).
  returned: success
  type: dict
  sample: {phase: predump_stop, data: {reason: iterations, count: 3, mode: fixed}}
"""

import platform
import time
from pathlib import Path
from typing import Any

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.criu_runner import CriuRunner, find_criu
from ansible.module_utils.predump_policy import MODES, Iteration, PredumpPolicy, decide
from ansible.module_utils.transfer_backends import (
    TRANSFER_OPTIONS,
    TransferError,
    backend_for,
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
        request = request_from_options(self.transfer, [images_dir], stage=stage)
        backend = backend_for(request.method, request.compress)
        started_at = time.time()
        try:
            result = backend.send(request, self.run)
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
        data.update(stage=stage, started_at=started_at, iteration=index)
        return data

    def run(self, argv: list[str]) -> tuple[int, str, str]:
        return self.module.run_command(argv, check_rc=False)

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
                if wait > 0:
                    time.sleep(wait)
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
            decision = decide(self.policy, history, elapsed)
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
        self.gather_logs()
        assert decision is not None and first_start is not None
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
        return {
            "changed": True,
            "count": len(history),
            "iterations": self.iterations,
            "stop": stop,
            "log_file": str(self.log_file),
            "duration_s": round(time.monotonic() - first_start, 6),
            "results": self.results,
            "migration_metrics": {"phase": "predump_stop", "data": stop},
        }

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
            "criu_bin": {"type": "path"},
            "file_locks": {"type": "bool", "default": False},
            "extra_args": {"type": "list", "elements": "str", "default": []},
            "criu_timeout": {"type": "int", "default": 600},
            "transfer": {"type": "dict", "options": TRANSFER_OPTIONS},
        },
        supports_check_mode=False,
    )
    module.exit_json(**PredumpLoop(module).loop())


if __name__ == "__main__":
    main()
