"""After a run was cut short: who holds a host, what the source's journal says, where to recover.

Pure functions over plain data, used on the control node by the node checks (a host that
another experiment holds is refused, naming how to recover it) and by
`playbooks/recover.yml` (the fused critical path's own journal, `critical-path.journal` on
the source, knows more than the control node's `journal.json` when the control node died
during the call). Standard library only.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Mapping
from typing import Any

# Suffixes a results folder gets at the end of a run (the metrics callback) or of a recovery.
RESULT_SUFFIXES = ("_failed", "_exception", "_interrupted")
# A results folder whose run never reached its end (the callback did not rename it) gets this.
INTERRUPTED = "_interrupted"


def journal_path(results_dir: str, exists: Callable[[str], bool] = os.path.exists) -> str:
    """The journal.json of a results folder, following the suffix its run ended with."""
    for candidate in (results_dir, *(results_dir + s for s in RESULT_SUFFIXES)):
        if exists(f"{candidate}/journal.json"):
            return f"{candidate}/journal.json"
    return f"{results_dir}/journal.json"


def lock_refusal(
    host: str, holder: Mapping[str, Any], exists: Callable[[str], bool] = os.path.exists
) -> str:
    """Why `host` is refused: the experiment holding its lock, and how to recover it."""
    if holder.get("unreadable"):
        return (
            f"{host} holds an experiment lock that cannot be read ({holder['unreadable']}); "
            "remove it by hand once no experiment runs there"
        )
    results = str(holder.get("results_dir") or "")
    journal = journal_path(results, exists) if results else str(holder.get("journal") or "")
    where = f" on {holder['control_host']}" if holder.get("control_host") else ""
    text = (
        f"{host} is busy: experiment {holder.get('experiment')} (started{where} at "
        f"{holder.get('taken_at', '?')}, {host} its {holder.get('side', '?')}) holds it and "
        "has not finished. If that run is still going, wait for it; if it was cut short "
        "(the control node killed, Ctrl-C, a host lost), bring its workload back to one "
        f"running copy and free the hosts with: ansible-playbook playbooks/recover.yml -e "
        f"journal={journal}"
    )
    if holder.get("critical_path_journal"):
        text += (
            f" (the source {holder.get('source', '?')} keeps the critical path's own journal "
            f"at {holder['critical_path_journal']})"
        )
    return text


def lock_refusals(
    probes: Iterable[tuple[str, Mapping[str, Any] | None]],
    experiment: str,
    exists: Callable[[str], bool] = os.path.exists,
) -> list[str]:
    """Refusals for the hosts whose lock (an experiment_lock result) another experiment
    holds; a host is named once."""
    found: list[str] = []
    seen: set[str] = set()
    for host, probe in probes:
        holder = (probe or {}).get("holder") or {}
        if host in seen or not holder or holder.get("experiment") == experiment:
            continue
        seen.add(host)
        found.append(lock_refusal(host, holder, exists))
    return found


def parse_critical_path_journal(text: str) -> dict[str, Any]:
    """What the fused critical path's journal on the source says: its steps, where the
    workload was at the last one, and whether it dumped, restored, ended or resumed the
    source's copy (lines that are not JSON - a torn last line - are skipped)."""
    steps: list[dict[str, Any]] = []
    for line in (text or "").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and "step" in record:
            steps.append(record)
    names = [str(step["step"]) for step in steps]
    last = steps[-1] if steps else {}
    return {
        "present": bool(steps),
        "steps": names,
        "last": last.get("step"),
        "where": last.get("where"),
        "dumped": "dumped" in names,
        "restored": "restored" in names,
        "source_ended": "source ended" in names,
        "source_resumed": "source resumed" in names,
        "outcome_unknown": "restore outcome unknown" in names,
        # the call ended (a "done" or "stopped" line): it was not killed half way
        "finished": bool({"done", "stopped"} & set(names)),
    }


def marked_results_dir(results_dir: str) -> str:
    """The results folder of a run the recovery closes: as it is when the run's end marked
    it already, else with INTERRUPTED (the run never reached its end)."""
    if results_dir.endswith(RESULT_SUFFIXES):
        return results_dir
    return results_dir + INTERRUPTED
