"""Aggregate callback: per-task timings, the migration journal, metrics.json and the summary."""

from __future__ import annotations

DOCUMENTATION = r"""
name: migration_metrics
type: aggregate
short_description: Record a CRIU migration's timings and write metrics.json
description:
  - Times every task per (host, task) from v2_runner_on_start to its result with a
    monotonic clock, and keeps wall-clock UTC stamps for cross-host timelines.
  - Assigns each task to a phase by its role (module_utils/metrics_report.py ROLE_PHASES).
  - Collects what modules return under C(migration_metrics) (CRIU's own figures, transfer
    sizes, verification) and the experiment announced by the C(migration_experiment)
    module, keeps a journal of where the workload is, and at the end writes one
    C(metrics.json) per pair (none with the setting C(save_metrics=false) - the summary
    says so), gives failed runs' folders their C(_failed) / C(_exception) suffix and
    prints the summary.
  - The only writer of C(metrics.json). Does nothing in runs without an experiment.
requirements:
  - enabled in ansible.cfg (callbacks_enabled = migration_metrics)
"""

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from ansible.plugins.callback import CallbackBase

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "module_utils"))

from metrics_report import (
    ROLE_PHASES,
    PairRecord,
    TaskRecord,
    build_metrics,
    iso_utc,
    summary_text,
)

# Where the workload is, after each event the journal follows.
_LOCATION_AFTER = {
    "workload_start": "source",
    "final_dump": "checkpointed (not running)",
    "rollback": "source",
    # the dumped tree, left stopped on the source (--leave-stopped), runs on there again
    "source_resumed": "source",
    "finish": "finished",
}


def _task_phase(task: Any, role: str | None) -> str | None:
    """The phase a task belongs to: its role's, except the check of a role's arguments,
    which Ansible runs on entering a role and which is part of no phase (the fused path
    enters checkpoint_dump for the page server before the freeze: its argument check is
    not a dump step)."""
    if task.action in ("validate_argument_spec", "ansible.builtin.validate_argument_spec"):
        return None
    return ROLE_PHASES.get(role or "")


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "aggregate"
    CALLBACK_NAME = "migration_metrics"
    CALLBACK_NEEDS_ENABLED = True

    def __init__(self) -> None:
        super().__init__()
        self.experiment: dict[str, Any] | None = None
        self.pairs: dict[str, PairRecord] = {}  # by source host
        self.host_pair: dict[str, str] = {}  # any pair host -> its source host
        self.starts: dict[tuple[str, str], tuple[float, float]] = {}
        self.started_at = time.time()
        self.journals: dict[str, dict[str, Any]] = {}
        self.addresses: dict[str, str] = {}  # connection address -> inventory host name

    # -- helpers ---------------------------------------------------------------------
    def _real_host(self, result: Any) -> str:
        """The host a task really ran on (the delegate for delegated tasks).

        Callbacks see only the delegate's connection address, so it is mapped back to its
        inventory name; an address no pair host has (e.g. localhost) stays as it is.
        """
        delegated = result.result.get("_ansible_delegated_vars") or {}
        address = delegated.get("ansible_host")
        if not address:
            return str(result.host.get_name())
        if delegated.get("ansible_connection") == "local" or address in ("localhost", "127.0.0.1"):
            return "localhost"
        return self.addresses.get(str(address), str(address))

    @staticmethod
    def _role(task: Any) -> str | None:
        role = getattr(task, "_role", None)
        return role.get_name() if role is not None else None

    def _pair_of(self, host: str) -> PairRecord | None:
        source = self.host_pair.get(host)
        return self.pairs.get(source) if source else None

    def _start_experiment(self, experiment: dict[str, Any]) -> None:
        self.experiment = experiment
        self.started_at = float(experiment.get("started_at_epoch", self.started_at))
        for pair in experiment["pairs"]:
            record = PairRecord(pair["source"], pair["destination"], pair["results_dir"])
            self.pairs[pair["source"]] = record
            self.host_pair[pair["source"]] = pair["source"]
            self.host_pair[pair["destination"]] = pair["source"]
            for side in ("source", "destination"):
                self.addresses[str(pair.get(f"{side}_address") or pair[side])] = pair[side]
            self.journals[pair["source"]] = {
                "experiment": experiment.get("id"),
                "workload": experiment.get("workload", {}).get("type"),
                "script": experiment.get("workload", {}).get("script"),
                "inventory": experiment.get("inventory"),
                "source": pair["source"],
                "destination": pair["destination"],
                "working_dir": pair.get("working_dir"),
                "checkpoint_dir": pair.get("checkpoint_dir"),
                # the pair as planned (every node path, the transfer's options) and the
                # settings a recovery needs: playbooks/recover.yml works from this file
                "pair": pair,
                "settings": {
                    key: (experiment.get("settings") or {}).get(key)
                    for key in ("keep_images", "transfer", "page_server", "critical_path")
                },
                "location": "not started",
                "pid": None,
                "images": {"source": [], "destination": []},
                "steps": [],
            }
            self._write_journal(pair["source"], "experiment created", "localhost")

    def _write_journal(self, source: str, step: str, host: str) -> None:
        journal = self.journals[source]
        journal["steps"].append({"at": iso_utc(time.time()), "step": step, "host": host})
        journal["updated_at"] = iso_utc(time.time())
        path = Path(self.pairs[source].results_dir) / "journal.json"
        try:
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(journal, indent=2))
            tmp.chmod(0o600)  # the results are root's only (module_utils/private_files.py)
            tmp.replace(path)
        except OSError as exc:
            self._display.warning(f"migration_metrics: cannot write {path}: {exc}")

    def _journal_event(self, pair: PairRecord, phase: str, data: dict[str, Any], host: str) -> None:
        journal = self.journals[pair.source]
        side = "source" if host == pair.source else "destination"
        if phase == "workload_start":
            journal["pid"] = data.get("pid")
        if phase in ("predump", "final_dump") and data.get("images_dir"):
            journal["images"]["source"].append(data["images_dir"])
        if phase == "transfer" and data.get("dest_paths"):
            journal["images"]["destination"].extend(data["dest_paths"])
        if phase == "restore":
            # a restore started from the source over SSH (fused) ran on the destination
            journal["location"] = data.get("ran_on") or side
        elif phase == "workload_died":
            journal["location"] = f"nowhere (it died on the {side})"
        elif phase in _LOCATION_AFTER:
            journal["location"] = _LOCATION_AFTER[phase]
        elif phase not in ("predump", "transfer"):
            return
        # written at once: after a crash the journal must say which images exist where
        self._write_journal(pair.source, f"{phase} ({journal['location']})", host)

    def _collect(self, result: Any, status: str) -> None:
        host = self._real_host(result)
        task = result.task
        payload = result.result
        started = self.starts.pop((result.host.get_name(), task._uuid), None)
        items = payload.get("results") if isinstance(payload.get("results"), list) else []
        for data in [payload, *[item for item in items if isinstance(item, dict)]]:
            if "migration_experiment" in data and self.experiment is None:
                self._start_experiment(data["migration_experiment"])
        pair = self._pair_of(host)
        if pair is None:
            return
        role = self._role(task)
        now_mono = time.monotonic()
        if started is not None:
            start_mono, start_wall = started
            pair.tasks.append(
                TaskRecord(
                    host=host,
                    task=task.get_name(),
                    role=role,
                    phase=_task_phase(task, role),
                    start_epoch=start_wall,
                    duration_s=now_mono - start_mono,
                    status=status,
                )
            )
        for data in [payload, *[item for item in items if isinstance(item, dict)]]:
            metrics = data.get("migration_metrics")
            if isinstance(metrics, dict) and metrics.get("phase"):
                phase_data = dict(metrics.get("data") or {})
                if metrics["phase"] == "clock" and started is not None:
                    # the control node's clock around the read, for the offset estimate
                    phase_data["control_start"], phase_data["control_end"] = started[1], time.time()
                pair.add(metrics["phase"], phase_data, host)
                # The journal follows what really happened: a task that succeeded, or a step
                # of a failed multi-step call (the fused critical path) that did not fail.
                done = status == "ok" or (data is not payload and not phase_data.get("failed"))
                if done:
                    self._journal_event(pair, metrics["phase"], phase_data, host)

    # -- events ----------------------------------------------------------------------
    def v2_runner_on_start(self, host: Any, task: Any) -> None:
        self.starts[(host.get_name(), task._uuid)] = (time.monotonic(), time.time())

    def v2_runner_on_ok(self, result: Any) -> None:
        self._collect(result, "ok")

    def v2_runner_on_skipped(self, result: Any) -> None:
        self.starts.pop((result.host.get_name(), result.task._uuid), None)

    def v2_runner_on_failed(self, result: Any, ignore_errors: bool = False) -> None:
        self._collect(result, "ignored" if ignore_errors else "failed")
        if ignore_errors:
            return
        host = self._real_host(result)
        pair = self._pair_of(host) or self._pair_of(result.host.get_name())
        if pair is None or pair.failure is not None:
            return
        payload = result.result
        # A loop's summary says only "One or more items failed": report the failed item.
        failed_items = [
            i for i in payload.get("results") or [] if isinstance(i, dict) and i.get("failed")
        ]
        if failed_items:
            payload = failed_items[0]
        role = self._role(result.task)
        pair.failure = {
            # a module doing several phases in one call (the fused critical path) names the
            # one that failed
            "phase": payload.get("failed_phase") or ROLE_PHASES.get(role or "", role or "playbook"),
            "role": role,
            "task": result.task.get_name(),
            "host": host,
            "msg": str(payload.get("msg", ""))[:2000],
        }
        for key in ("log_file", "log_tail", "cmd", "rc"):
            if key in payload:
                pair.failure[key] = payload[key]
        # A module that crashed (traceback) is an unexpected error, not a failed phase.
        if payload.get("exception") and "module_stderr" in payload:
            pair.exception = True

    def v2_runner_on_unreachable(self, result: Any) -> None:
        self._collect(result, "unreachable")
        pair = self._pair_of(self._real_host(result))
        if pair is not None:
            pair.exception = True
            if pair.failure is None:
                pair.failure = {
                    "phase": ROLE_PHASES.get(self._role(result.task) or "", "playbook"),
                    "task": result.task.get_name(),
                    "host": self._real_host(result),
                    "msg": str(result.result.get("msg", "host unreachable"))[:2000],
                }

    def _save_metrics(self) -> bool:
        """The experiment's save_metrics setting (validated by the preflight; default true)."""
        settings = (self.experiment or {}).get("settings") or {}
        value = settings.get("save_metrics", True)
        if isinstance(value, str):  # the preflight hands a bool; a string is read as Ansible does
            return value.strip().lower() not in ("false", "no", "off", "n", "f", "0")
        return bool(value)

    def v2_playbook_on_stats(self, stats: Any) -> None:
        if self.experiment is None:
            return
        finished_at = time.time()
        save = self._save_metrics()
        for source, pair in self.pairs.items():
            results_dir = Path(pair.results_dir)
            if pair.status != "ok" and results_dir.exists():
                final_dir = results_dir.with_name(f"{results_dir.name}_{pair.status}")
                os.replace(results_dir, final_dir)
                pair.results_dir = str(final_dir)
            metrics = build_metrics(self.experiment, pair, self.started_at, finished_at)
            path = Path(pair.results_dir) / "metrics.json"
            path.parent.mkdir(parents=True, exist_ok=True)
            if save:
                tmp = path.with_suffix(".tmp")
                tmp.write_text(json.dumps(metrics, indent=2, sort_keys=False, default=str))
                tmp.chmod(0o600)
                tmp.replace(path)
            journal = self.journals[source]
            journal["status"] = pair.status
            self._write_journal(source, f"experiment {pair.status}", "localhost")
            self._display.display(summary_text(metrics, metrics_written=save))
