"""One migrate.yml run: the inventory read and the preflight's validation done in-process
(before any host is touched), then the playbook through ansible-runner's Python API.

The validation is the preflight's own (`experiment_plan.plan_experiment`) over the
variables Ansible would give the first source host: its group_vars and host variables,
then the run's extra variables on top. A refusal here means nothing ran anywhere; the
preflight in the playbook validates again, and its refusal is mapped to the same exit code.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import signal
import tempfile
import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from frontdoor import REPO
from frontdoor.configfile import InventoryChoice
from frontdoor.progress import Display, Tracker

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT, EXIT_INTERRUPTED = 0, 1, 2, 130
# Ansible's warning about the lab's hosts, named like their groups: harmless (README).
HARMLESS = ("Found both group and host with same name",)


def ansible_env(repo: Path = REPO) -> dict[str, str]:
    """The environment of the playbook: the suite's ansible.cfg and venv, its callback and
    SSH socket folders (ansible-runner would replace both)."""
    return {
        "ANSIBLE_CONFIG": str(repo / "ansible.cfg"),
        "ANSIBLE_CALLBACK_PLUGINS": str(repo / "callback_plugins"),
        "ANSIBLE_SSH_CONTROL_PATH_DIR": str(repo / ".ansible" / "cp"),
        "PATH": f"{repo / '.venv' / 'bin'}:{os.environ.get('PATH', '')}",
        "ANSIBLE_NOCOLOR": "1",
    }


# -- the inventory, read as Ansible reads it -------------------------------------------------


@dataclass
class InventoryView:
    """Groups and each pair host's variables (group_vars included), as the playbook sees them."""

    sources: list[str]
    groups: dict[str, list[str]]
    hostvars: dict[str, dict[str, Any]]
    host_groups: dict[str, list[str]]
    messages: list[str] = field(default_factory=list)
    loader: Any = None  # Ansible's DataLoader, for templating

    def source_host(self) -> str | None:
        sources = self.groups.get("source") or []
        return sources[0] if sources else None

    def resolved(self, host: str | None, extravars: Mapping[str, Any]) -> dict[str, Any]:
        """A host's variables with the extra vars on top, templates (`{{ ... }}`) rendered as
        the playbook renders them (a template that fails is left as written)."""
        merged = {**(self.hostvars.get(host, {}) if host else {}), **extravars}
        templated = [k for k, v in merged.items() if isinstance(v, str) and "{{" in v]
        if not templated or self.loader is None:
            return merged
        from ansible.template import Templar, trust_as_template

        for name in extravars:  # extra vars are trusted templates, as with -e
            if name in templated:
                merged[name] = trust_as_template(merged[name])
        templar = Templar(loader=self.loader, variables=merged)
        rendered = dict(merged)
        for name in templated:
            try:
                rendered[name] = templar.template(merged[name])
            except Exception:  # Ansible reports it when the playbook runs
                rendered[name] = str(merged[name])
        return rendered

    def host_var(self, extravars: Mapping[str, Any]) -> Callable[[str, str], Any]:
        """host_var(host, name) as Ansible resolves it: extra vars win over the inventory."""
        cache: dict[str, dict[str, Any]] = {}

        def lookup(host: str, name: str) -> Any:
            if host not in cache:
                cache[host] = self.resolved(host, extravars)
            return cache[host].get(name)

        return lookup

    def variables(self, extravars: Mapping[str, Any]) -> dict[str, Any]:
        """The variables the preflight validates: the first source host's, extra vars on top."""
        return self.resolved(self.source_host(), extravars)


def load_inventory(choice: InventoryChoice, repo: Path = REPO) -> InventoryView:
    """Read the chosen inventory with Ansible's own classes (no host is contacted; an
    inventory script runs locally). Ansible's warnings are kept as messages."""
    # Ansible reads its configuration when first imported; an inventory script reads the
    # environment (inventories/env): both for the time of the read only.
    changes = {"ANSIBLE_CONFIG": str(repo / "ansible.cfg"), **choice.env}
    saved = {name: os.environ.get(name) for name in changes}
    os.environ.update(changes)
    warnings.filterwarnings("ignore", message=".*DSA.*")
    output = io.StringIO()
    with contextlib.ExitStack() as stack:
        stack.callback(_restore_environ, saved)
        stack.enter_context(contextlib.redirect_stderr(output))
        stack.enter_context(contextlib.redirect_stdout(output))
        from ansible import constants
        from ansible.inventory.helpers import sort_groups
        from ansible.inventory.manager import InventoryManager
        from ansible.parsing.dataloader import DataLoader
        from ansible.plugins.loader import init_plugin_loader
        from ansible.vars.manager import VariableManager

        with warnings.catch_warnings():  # "already configured" on a second read
            warnings.simplefilter("ignore")
            init_plugin_loader()  # filters and lookups, for the templates in group_vars
        sources = [choice.inventory] if choice.inventory else list(constants.DEFAULT_HOST_LIST)
        loader = DataLoader()
        loader.set_basedir(str(repo))
        inventory = InventoryManager(loader=loader, sources=sources)
        manager = VariableManager(loader=loader, inventory=inventory)
        groups = {name: list(hosts) for name, hosts in inventory.get_groups_dict().items()}
        hostvars: dict[str, dict[str, Any]] = {}
        host_groups: dict[str, list[str]] = {}
        for name in dict.fromkeys([*groups.get("source", []), *groups.get("destination", [])]):
            host = inventory.get_host(name)
            hostvars[name] = dict(manager.get_vars(host=host, include_hostvars=False))
            # lowest precedence first, as Ansible merges group_vars
            host_groups[name] = [group.name for group in sort_groups(host.get_groups())]
    messages = [
        line
        for line in _paragraphs(output.getvalue())
        if line and not any(harmless in line for harmless in HARMLESS)
    ]
    return InventoryView(sources, groups, hostvars, host_groups, messages, loader)


def _restore_environ(saved: Mapping[str, str | None]) -> None:
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


def _paragraphs(text: str) -> list[str]:
    """Ansible's warnings, one string each (a warning may span several lines)."""
    blocks, current = [], []
    for line in text.splitlines():
        if line.startswith("[WARNING]") or line.startswith("[ERROR]"):
            if current:
                blocks.append(" ".join(current))
            current = [line]
        elif line.strip():
            current.append(line.strip())
    if current:
        blocks.append(" ".join(current))
    return blocks


def validate(
    view: InventoryView,
    extravars: Mapping[str, Any],
    registry: Mapping[str, Any],
    defaults: Mapping[str, Any],
) -> Any:
    """The preflight's Plan for these extra variables (its `errors` empty when accepted)."""
    from experiment_plan import plan_experiment

    plan = plan_experiment(
        view.variables(extravars), registry, view.groups, view.host_var(extravars), defaults
    )
    if plan.errors and not view.source_host() and view.messages:
        plan.errors.extend(f"the inventory: {message}" for message in view.messages)
    return plan


# -- the run ---------------------------------------------------------------------------------


@dataclass
class Outcome:
    """What became of one run."""

    exit_code: int
    status: str  # ok | failed | exception | refused | error | interrupted
    message: str = ""
    results_dirs: list[Path] = field(default_factory=list)
    metrics: list[dict[str, Any] | None] = field(default_factory=list)
    journals: list[dict[str, Any] | None] = field(default_factory=list)
    stdout: str = ""
    duration_s: float = 0.0
    summaries: list[str] = field(default_factory=list)


class Interrupts:
    """Ctrl-C during a run: the first asks to stop after it (a migration half done would
    leave the workload checkpointed and stopped), the second cancels the playbook."""

    def __init__(self, say: Callable[[str], None]) -> None:
        self.count = 0
        self.say = say
        self._previous: Any = None

    def __enter__(self) -> Interrupts:
        self._previous = signal.signal(signal.SIGINT, self._handler)
        return self

    def __exit__(self, *exc: object) -> None:
        signal.signal(signal.SIGINT, self._previous)

    def _handler(self, number: int, frame: Any) -> None:
        self.count += 1
        if self.count == 1:
            self.say(
                "Ctrl-C: stopping after the current run (it finishes its migration so that the "
                "workload is not left stopped); Ctrl-C again cancels the playbook now"
            )
        else:
            self.say("Ctrl-C again: cancelling the playbook")

    @property
    def stop_requested(self) -> bool:
        return self.count >= 1

    def cancel(self) -> bool:
        return self.count >= 2


def final_dir(path: Path) -> Path:
    """A results folder after the metrics callback's rename (`_failed`, `_exception`)."""
    for candidate in (
        path,
        path.with_name(path.name + "_failed"),
        path.with_name(path.name + "_exception"),
    ):
        if candidate.exists():
            return candidate
    return path


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _summary_blocks(stdout: str) -> list[str]:
    """The summaries the metrics callback printed (used when metrics.json was not written):
    from the rule above `CRIU Experiment Metrics:` through the block's third rule."""
    rule = "=" * 60
    lines = stdout.splitlines()
    blocks = []
    for index, line in enumerate(lines):
        if not line.startswith("CRIU Experiment Metrics:") or index == 0:
            continue
        block, rules = [], 0
        for follow in lines[index - 1 :]:
            block.append(follow)
            rules += follow.strip() == rule
            if rules == 3:
                blocks.append("\n".join(block))
                break
    return blocks


def where_the_workload_is(
    journal: Mapping[str, Any] | None, metrics: Mapping[str, Any] | None
) -> str:
    """A sentence on where the workload runs after a failed run (from journal.json)."""
    if not journal:
        return "where the workload runs is unknown (no journal.json)"
    location = journal.get("location") or "unknown"
    pid = journal.get("pid")
    hosts = {"source": journal.get("source"), "destination": journal.get("destination")}
    if location in hosts:
        return f"the workload runs on the {location} ({hosts[location]}, pid {pid})"
    if location == "not started":
        return "the workload was never started"
    if location == "finished":
        return "the workload has finished"
    return (
        f"the workload is {location}: bring it back with `ansible-playbook playbooks/recover.yml "
        f"-e journal=<results folder>/journal.json`"
    )


def run_migration(
    extravars: Mapping[str, Any],
    choice: InventoryChoice,
    display_factory: Callable[[Tracker], Display],
    interrupts: Interrupts,
    fused: bool = True,
    repo: Path = REPO,
) -> Outcome:
    """migrate.yml through ansible-runner, its events shown by the display. `fused`: the
    run's critical path is fused (how the progress names its phases)."""
    import ansible_runner

    private = Path(tempfile.mkdtemp(prefix="run_experiment-"))
    tracker = Tracker(fused=fused)
    display = display_factory(tracker)
    started = time.monotonic()
    kwargs: dict[str, Any] = {}
    if choice.inventory:
        kwargs["inventory"] = choice.inventory

    def on_event(event: dict[str, Any]) -> bool:
        display.event(event)
        return False  # nothing is kept on disk: the display and metrics.json have it all

    display.start()
    try:
        runner = ansible_runner.run(
            private_data_dir=str(private),
            project_dir=str(repo),
            playbook="migrate.yml",
            extravars=dict(extravars),
            envvars={**ansible_env(repo), **choice.env},
            quiet=True,
            event_handler=on_event,
            cancel_callback=interrupts.cancel,
            **kwargs,
        )
        stdout = runner.stdout.read() if runner.stdout else ""
        rc, status = runner.rc, runner.status
    except Exception as exc:  # ansible-runner could not start the playbook
        return Outcome(
            EXIT_FAILED,
            "error",
            f"ansible-runner could not run migrate.yml: {type(exc).__name__}: {exc}",
            duration_s=time.monotonic() - started,
        )
    finally:
        display.stop()
        shutil.rmtree(private, ignore_errors=True)
    outcome = Outcome(EXIT_OK, "ok", stdout=stdout, duration_s=time.monotonic() - started)
    pairs = (tracker.experiment or {}).get("pairs") or []
    for pair in pairs:
        folder = final_dir(Path(pair["results_dir"]))
        outcome.results_dirs.append(folder)
        outcome.metrics.append(_read_json(folder / "metrics.json"))
        outcome.journals.append(_read_json(folder / "journal.json"))
    if tracker.preflight_refusal is not None:
        outcome.exit_code, outcome.status = EXIT_BAD_INPUT, "refused"
        outcome.message = tracker.preflight_refusal
        return outcome
    if status == "canceled":
        outcome.exit_code, outcome.status = EXIT_INTERRUPTED, "interrupted"
        where = [
            where_the_workload_is(j, m)
            for j, m in zip(outcome.journals, outcome.metrics, strict=True)
        ]
        outcome.message = "the playbook was cancelled; " + (
            "; ".join(where) or "no experiment was created"
        )
        return outcome
    if not pairs:
        outcome.exit_code, outcome.status = EXIT_FAILED, "error"
        tail = "\n".join(stdout.strip().splitlines()[-15:])
        outcome.message = f"the playbook ended ({status}, rc {rc}) without an experiment:\n{tail}"
        return outcome
    statuses = [str((m or {}).get("status") or "") for m in outcome.metrics]
    printed = _summary_blocks(stdout)
    from metrics_report import summary_text

    for index, metrics in enumerate(outcome.metrics):
        if metrics is not None:
            outcome.summaries.append(summary_text(metrics))
        elif index < len(printed):
            outcome.summaries.append(printed[index])
    if not all(statuses) and rc == 0:
        statuses = [s if s else "ok" for s in statuses]  # save_metrics=false
    if rc != 0 or any(s != "ok" for s in statuses):
        outcome.exit_code = EXIT_FAILED
        outcome.status = next((s for s in statuses if s and s != "ok"), "failed")
        messages = []
        for metrics, journal in zip(outcome.metrics, outcome.journals, strict=True):
            failure = (metrics or {}).get("failure") or {}
            if failure:
                messages.append(
                    f"failed in {failure.get('phase')} on {failure.get('host')}: "
                    f"{str(failure.get('msg') or '').splitlines()[0] if failure.get('msg') else ''}"
                )
            messages.append(where_the_workload_is(journal, metrics))
        if not messages:
            messages = tracker.failures[-1:] or [f"the playbook failed (rc {rc})"]
        outcome.message = "; ".join(messages)
    return outcome
