"""run_experiment.py's main: parse, resolve the configuration, validate, run, report.

    run_experiment.py [flags]               one experiment, or a sweep (--sweep / --repeat)
    run_experiment.py report FOLDER [-o DIR]

Exit codes: 0 ok; 1 a migration failed; 2 bad input, refused before any host was touched;
130 stopped by Ctrl-C.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shlex
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from frontdoor import REPO
from frontdoor.configfile import (
    ConfigError,
    ConfigFile,
    InventoryChoice,
    Layer,
    choose_inventory,
    known_variables,
    merge_layers,
    parse_assignment,
    read_config,
)
from frontdoor.flags import build_parser, flag_variables
from frontdoor.launch import (
    EXIT_BAD_INPUT,
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    Interrupts,
    InventoryView,
    Outcome,
    load_inventory,
    run_migration,
    validate,
)
from frontdoor.progress import Display, Tracker, deadline_words
from frontdoor.results import point_label, summarize
from frontdoor.sweep import (
    RunRecord,
    SweepRecord,
    eta_s,
    fmt_duration,
    grid,
    parse_sweep,
    progress_bar,
    rows_of_sweep,
    schedule,
    sweep_folder,
    write_tables,
)

PROG = "run_experiment.py"
DEFAULT_CONFIG = REPO / "config" / "default.yaml"
SERVERS_FILE = REPO / "config" / "servers.yaml"
GROUP_VARS = REPO / "group_vars"


def say(text: str = "", stream: Any = None) -> None:
    print(text, file=stream or sys.stdout, flush=True)


def refuse(message: str) -> int:
    say(f"{PROG}: refused (nothing was started on any host):", sys.stderr)
    for line in message.splitlines():
        say(f"  {line}", sys.stderr)
    return EXIT_BAD_INPUT


@dataclass
class Suite:
    """The facts the command line is generated from."""

    settings: dict[str, Any]
    registry: dict[str, Any]
    defaults: dict[str, Any]  # the settings' defaults (group_vars/all.yml)
    all_vars: dict[str, Any]  # everything group_vars/all.yml defines
    lab: dict[str, Any]
    known: set[str]


def load_suite() -> Suite:
    from experiment_plan import SETTINGS, load_setting_defaults
    from workload_registry import load_registry

    all_vars = yaml.safe_load((GROUP_VARS / "all.yml").read_text()) or {}
    lab_file = GROUP_VARS / "lab.yml"
    lab = (yaml.safe_load(lab_file.read_text()) or {}) if lab_file.exists() else {}
    registry = load_registry(REPO / "workloads")
    return Suite(
        settings=dict(SETTINGS),
        registry=registry,
        defaults=load_setting_defaults(),
        all_vars=all_vars,
        lab=lab,
        known=known_variables(SETTINGS, registry, all_vars),
    )


@dataclass
class Request:
    """The run asked for: its extra variables (config files + flags), where each came
    from, the inventory, and the sweep."""

    extravars: dict[str, Any]
    origins: dict[str, str]
    configs: list[ConfigFile]
    choice: InventoryChoice
    sweeps: list[tuple[str, list[Any]]] = field(default_factory=list)
    repeat: int = 1
    argv: list[str] = field(default_factory=list)


def _config_path(text: str) -> Path:
    """A -c path: as given, else relative to the checkout (the seed's examples run there)."""
    path = Path(text).expanduser()
    if not path.exists() and not path.is_absolute() and (REPO / path).exists():
        return REPO / path
    return path


def _shown(path: Path) -> Path:
    """A path as messages show it: relative to the checkout when inside it."""
    resolved = path.resolve()
    return resolved.relative_to(REPO) if resolved.is_relative_to(REPO) else path


def resolve_request(
    args: argparse.Namespace, spec: Any, suite: Suite, argv: Sequence[str]
) -> Request:
    """Config files, flags and --set merged by precedence, and the inventory chosen.
    ConfigError for anything that cannot be used."""
    paths: list[Path] = [DEFAULT_CONFIG] if DEFAULT_CONFIG.exists() else []
    paths += [_config_path(text) for text in getattr(args, "config", None) or []]
    sets: dict[str, Any] = {}
    for text in getattr(args, "set", None) or []:
        if text.startswith("@"):
            paths.append(_config_path(text[1:]))
            continue
        key, value = parse_assignment(text)
        sets[key] = value
    configs = [read_config(path, suite.known, os.environ, str(_shown(path))) for path in paths]
    flags = flag_variables(args, spec)
    if getattr(args, "results_root", None):
        flags["results_root"] = str(Path(args.results_root).expanduser().resolve())
    layers = [Layer(config.path, config.variables) for config in configs]
    layers += [Layer("flags", flags), Layer("--set", sets)]
    merged = merge_layers(layers)
    origins = {}
    for name, (_, origin) in merged.items():
        if origin == "flags":
            origin = "--results-root" if name == "results_root" else spec.flags.get(name, "flag")
        elif origin == "--set":
            origin = f"--set {name}"
        origins[name] = origin
    nodes = next((c.nodes for c in reversed(configs) if c.nodes is not None), None)
    choice = choose_inventory(
        REPO,
        getattr(args, "inventory", None),
        getattr(args, "source_ip", None),
        getattr(args, "dest_ip", None),
        nodes,
        SERVERS_FILE,
    )
    allowed = set(suite.settings) | {p for w in suite.registry.values() for p in w.params}
    sweeps = [parse_sweep(text, allowed) for text in getattr(args, "sweep", None) or []]
    repeat = getattr(args, "repeat", 1)
    if repeat < 1:
        raise ConfigError(f"--repeat {repeat}: at least 1")
    for key, _ in sweeps:
        if key in sets or key in flags:
            raise ConfigError(f"--sweep {key}=... and {origins.get(key, key)} both set {key}")
    return Request(
        {name: value for name, (value, _) in merged.items()},
        origins,
        configs,
        choice,
        sweeps,
        repeat,
        list(argv),
    )


def unknown_set_keys(request: Request, suite: Suite) -> list[str]:
    """--set keys the suite does not know (passed on, with a warning)."""
    return sorted(
        name
        for name, origin in request.origins.items()
        if origin.startswith("--set") and name not in suite.known
    )


# -- --print-config --------------------------------------------------------------------------


def _inventory_origin(view: InventoryView, name: str) -> str:
    """Which group_vars file of the source host's groups sets `name` (else 'inventory')."""
    host = view.source_host()
    if host is None:
        return "inventory"
    found = "inventory"
    for group in view.host_groups.get(host, []):  # lowest precedence first
        if group == "all":
            continue
        path = GROUP_VARS / f"{group}.yml"
        if path.exists():
            data = yaml.safe_load(path.read_text()) or {}
            if name in data:
                found = f"group_vars/{group}.yml"
    return found


def _show(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, dict | list):
        return json.dumps(value)
    return str(value)


def setting_origins(
    request: Request, view: InventoryView, suite: Suite, plan: Any
) -> list[tuple[str, Any, str]]:
    """(name, value, where it came from) of every setting and workload parameter."""
    host = view.source_host()
    host_vars = view.hostvars.get(host, {}) if host else {}
    rows: list[tuple[str, Any, str]] = []
    for name in suite.settings:
        value = plan.settings.get(name, request.extravars.get(name, suite.defaults.get(name)))
        if name in request.origins:
            origin = request.origins[name]
        elif name in host_vars and host_vars[name] != suite.defaults.get(name):
            origin = _inventory_origin(view, name)
        else:
            origin = "group_vars/all.yml"
        rows.append((name, value, origin))
    workload = suite.registry.get(str(plan.settings.get("workload")))
    if workload is not None:
        scoped = (host_vars.get("workload_defaults") or {}).get(workload.name) or {}
        for name, param in workload.params.items():
            value = plan.workload_params.get(name, param.default)
            if name in request.origins:
                origin = request.origins[name]
            elif name in host_vars:
                origin = _inventory_origin(view, name)
            elif name in scoped:
                origin = f"workload_defaults.{workload.name} ({_inventory_origin(view, 'workload_defaults')})"
            else:
                origin = f"workloads/{workload.name}.yml"
            rows.append((name, value, origin))
    return rows


def ansible_command(request: Request) -> str:
    """The equivalent ansible-playbook command line."""
    parts = [".venv/bin/ansible-playbook", "migrate.yml"]
    if request.choice.inventory:
        parts += [
            "-i",
            str(Path(request.choice.inventory).relative_to(REPO))
            if Path(request.choice.inventory).is_relative_to(REPO)
            else request.choice.inventory,
        ]
    for name, value in request.extravars.items():
        if isinstance(value, dict | list):
            parts += ["-e", json.dumps({name: value})]
        else:
            parts += ["-e", f"{name}={_show(value)}"]
    env = " ".join(f"{k}={shlex.quote(v)}" for k, v in request.choice.env.items())
    return (env + " " if env else "") + shlex.join(parts)


def print_config(
    request: Request, view: InventoryView, suite: Suite, plan: Any, errors: Sequence[str]
) -> int:
    inventory = request.choice.inventory or ", ".join(view.sources)
    say(f"inventory: {inventory} ({request.choice.why})")
    pairs = ", ".join(f"{p['source']} -> {p['destination']}" for p in plan.pairs) or "none"
    say(f"pairs: {pairs}")
    files = ", ".join(f"{c.path} ({'nested' if c.nested else 'flat'})" for c in request.configs)
    say(f"config files: {files or 'none'}")
    say("precedence: group_vars/all.yml < inventory group_vars < config files < flags, --set")
    say()
    rows = setting_origins(request, view, suite, plan)
    width = max(len(name) for name, _, _ in rows) + 2
    value_width = min(40, max(len(_show(value)) for _, value, _ in rows) + 2)
    say(f"{'variable'.ljust(width)}{'value'.ljust(value_width)}from")
    for name, value, origin in rows:
        say(f"{name.ljust(width)}{_show(value).ljust(value_width)}{origin}")
    others = [
        n
        for n in request.extravars
        if n not in suite.settings and n not in dict.fromkeys(r[0] for r in rows)
    ]
    for name in others:
        say(
            f"{name.ljust(width)}{_show(request.extravars[name]).ljust(value_width)}{request.origins.get(name, '')}"
        )
    if request.sweeps:
        say()
        for key, values in request.sweeps:
            say(f"sweep {key}: {', '.join(_show(v) for v in values)}")
        say(f"repetitions: {request.repeat}")
    say()
    say("equivalent:")
    say(f"  {ansible_command(request)}")
    if errors:
        say()
        say("the preflight would refuse it:")
        for error in errors:
            say(f"  - {error}")
        return EXIT_BAD_INPUT
    return EXIT_OK


# -- running ---------------------------------------------------------------------------------


def describe_plan(plan: Any, choice: InventoryChoice, view: InventoryView) -> str:
    settings = plan.settings
    params = ", ".join(f"{k}={_show(v)}" for k, v in plan.workload_params.items())
    strategy = settings.get("checkpoint_strategy")
    if strategy == "predump":
        strategy += (
            f" ({settings.get('predump_iterations')} x {settings.get('predump_interval')} s)"
        )
    extras = [
        word
        for word, on in (
            ("lazy pages", settings.get("lazy_pages")),
            ("page server", settings.get("page_server")),
            (
                f"zstd {settings.get('transfer_compress_level')}",
                settings.get("transfer_compress") == "zstd",
            ),
        )
        if on
    ]
    pairs = ", ".join(f"{p['source']} -> {p['destination']}" for p in plan.pairs)
    return (
        f"workload {settings.get('workload')} ({params}); {strategy}, {settings.get('critical_path')} "
        f"critical path, transfer {settings.get('transfer')}{''.join(', ' + e for e in extras)}; "
        f"{pairs} ({choice.inventory or ', '.join(view.sources)})"
    )


def _display_factory(args: argparse.Namespace, prefix: str = "") -> Any:
    tty = sys.stdout.isatty() and not getattr(args, "plain", False)
    verbose = bool(getattr(args, "verbose", False))

    def factory(tracker: Tracker) -> Display:
        return Display(tracker, sys.stdout, tty=tty, prefix=lambda: prefix, verbose=verbose)

    return factory


def _validate_points(
    request: Request, view: InventoryView, suite: Suite, points: list[dict[str, Any]]
) -> tuple[list[Any], list[str]]:
    plans, errors = [], []
    for point in points:
        plan = validate(view, {**request.extravars, **point}, suite.registry, suite.defaults)
        label = f"{point_label(point)}: " if point else ""
        errors += [f"{label}{error}" for error in plan.errors]
        for key in point:
            if key not in suite.settings and key not in plan.workload_params:
                errors.append(
                    f"{label}--sweep {key}: not a parameter of workload {plan.settings.get('workload')}"
                )
        plans.append(plan)
    return plans, list(dict.fromkeys(errors))


def run_single(args: argparse.Namespace, request: Request, plan: Any, view: InventoryView) -> int:
    say(f"{PROG}: {describe_plan(plan, request.choice, view)}")
    with Interrupts(lambda text: say(text, sys.stderr)) as interrupts:
        outcome = run_migration(
            request.extravars,
            request.choice,
            _display_factory(args),
            interrupts,
            fused=bool(plan.flags.get("fused")),
        )
    return report_outcome(outcome)


def report_outcome(outcome: Outcome) -> int:
    for summary in outcome.summaries:
        say(summary)
    if outcome.exit_code == EXIT_BAD_INPUT:
        return refuse(outcome.message)
    if outcome.exit_code != EXIT_OK:
        say(f"{PROG}: migration {outcome.status}: {outcome.message}", sys.stderr)
    return outcome.exit_code


def _result_line(outcome: Outcome) -> str:
    metrics = next((m for m in outcome.metrics if m), None)
    if outcome.exit_code == EXIT_OK and metrics:
        clock = metrics.get("migration_s")
        downtime = metrics.get("downtime_s")
        words = deadline_words(clock) if isinstance(clock, int | float) else "n/a"
        return (
            f"ok: downtime {downtime:.2f} s, deadline clock {clock:.2f} s ({words})"
            if isinstance(downtime, int | float) and isinstance(clock, int | float)
            else "ok"
        )
    if outcome.exit_code == EXIT_OK:
        return "ok"
    return f"{outcome.status.upper()}: {outcome.message}"


def run_sweep(
    args: argparse.Namespace, request: Request, points: list[dict[str, Any]], plans: list[Any]
) -> int:
    root = Path(str(request.extravars.get("results_root") or (REPO / "results")))
    folder = sweep_folder(root, getattr(args, "sweep_name", None))
    (folder / "runs").mkdir(parents=True)
    (folder / "logs").mkdir()
    base = {k: v for k, v in request.extravars.items() if k != "results_root"}
    record = SweepRecord(
        folder=str(folder),
        command=[PROG, *request.argv],
        sweeps={key: values for key, values in request.sweeps},
        repeat=request.repeat,
        base=base,
        inventory=request.choice.inventory or "default (ansible.cfg)",
        started_at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    )
    order = schedule(len(points), request.repeat)
    record.runs = [
        RunRecord(index=i, point=points[p], repetition=rep) for i, (p, rep) in enumerate(order, 1)
    ]
    fused = {i: bool(plans[p].flags.get("fused")) for i, (p, _) in enumerate(order, 1)}
    record.save()
    total = len(order)
    say(
        f"{PROG}: sweep of {len(points)} point(s) x {request.repeat} repetition(s) = {total} runs -> {folder}"
    )
    durations: list[float] = []
    exit_code = EXIT_OK
    with Interrupts(lambda text: say(text, sys.stderr)) as interrupts:
        for run in record.runs:
            if interrupts.stop_requested:
                break
            remaining = total - run.index + 1
            header = (
                f"run {run.index}/{total} {progress_bar(run.index - 1, total)} "
                f"ETA {fmt_duration(eta_s(durations, remaining))}: {point_label(run.point)}, "
                f"repetition {run.repetition}"
            )
            say(header)
            extravars = {**request.extravars, **run.point, "results_root": str(folder / "runs")}
            run.started_at = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
            run.status = "running"
            record.save()
            outcome = run_migration(
                extravars,
                request.choice,
                _display_factory(args, prefix=f"run {run.index}/{total} "),
                interrupts,
                fused=fused[run.index],
            )
            durations.append(outcome.duration_s)
            log = folder / "logs" / f"run-{run.index:03d}.log"
            log.write_text(outcome.stdout)
            run.log = str(log.relative_to(folder))
            run.exit_code = outcome.exit_code
            run.status = outcome.status
            run.duration_s = round(outcome.duration_s, 3)
            run.message = outcome.message
            run.results_dirs = [
                str(path.relative_to(folder))
                for path in outcome.results_dirs
                if path.is_relative_to(folder)
            ]
            say(f"run {run.index}/{total} {_result_line(outcome)}")
            if outcome.exit_code == EXIT_INTERRUPTED:
                exit_code = EXIT_INTERRUPTED
            elif outcome.exit_code != EXIT_OK and exit_code == EXIT_OK:
                exit_code = EXIT_FAILED
            record.save()
            write_tables(folder, rows_of_sweep(folder))
        stopped = interrupts.stop_requested
    if stopped:
        exit_code = EXIT_INTERRUPTED
        record.runs = [run for run in record.runs if run.status != "pending"]
    record.status = "stopped" if stopped else "done"
    record.finished_at = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    record.save()
    from frontdoor.report import write_report

    result = write_report(folder)
    print_summary_table(folder)
    say(f"runs:    {result['runs_csv']}")
    say(f"summary: {result['summary_csv']}")
    for plot in result["plots"]:
        say(f"plot:    {plot}")
    say(f"report:  {result['report']}")
    if stopped:
        say(f"{PROG}: stopped by Ctrl-C after {len(record.runs)} of {total} runs", sys.stderr)
    return exit_code


def _mean_ci_text(point: Mapping[str, Any], name: str) -> str:
    mean = point.get(f"{name}_mean")
    if mean is None:
        return "n/a"
    low, high = point.get(f"{name}_ci95_low"), point.get(f"{name}_ci95_high")
    return f"{mean:.2f}" + (
        f" ± {(high - low) / 2:.2f}" if low is not None and high is not None else ""
    )


def print_summary_table(folder: Path) -> None:
    """Per point: runs, ok runs, downtime and deadline clock (mean ± 95 % CI), hit rates."""
    from frontdoor.sweep import rows_of_folder

    collected = rows_of_folder(folder)
    summary, _ = summarize(collected.rows, collected.point_keys)
    say("")
    say(f"{'point':<34} {'n':>3} {'ok':>3} {'downtime s':>16} {'deadline clock s':>18}  "
        "hit rate GCP/AWS")  # fmt: skip
    for point in summary:
        gcp, aws = point.get("gcp_30s_hit_rate"), point.get("aws_120s_hit_rate")
        rates = "/".join(f"{r * 100:.0f}%" if r is not None else "n/a" for r in (gcp, aws))
        say(
            f"{point['point'][:34]:<34} {point['n']:>3} {point['ok']:>3} "
            f"{_mean_ci_text(point, 'downtime_s'):>16} {_mean_ci_text(point, 'migration_s'):>18}  "
            f"{rates}"
        )
    say("")


# -- report ----------------------------------------------------------------------------------


def report_main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(
        prog=f"{PROG} report",
        description="runs.csv, summary.csv, plots/*.png and a self-contained report.html of a "
        "sweep folder, a results folder, or a folder of results folders (e.g. results/)",
    )
    parser.add_argument("folder", help="the folder to report on")
    parser.add_argument("-o", "--output", help="where to write (default: the folder itself)")
    args = parser.parse_args(argv)
    folder = Path(args.folder).expanduser()
    if not folder.is_dir():
        return refuse(f"{folder}: no such folder")
    from frontdoor.report import write_report
    from frontdoor.sweep import find_results_dirs

    if not (folder / "sweep.json").exists() and not find_results_dirs(folder):
        return refuse(f"{folder}: no sweep.json and no metrics.json in it or below it")
    result = write_report(folder, Path(args.output).expanduser() if args.output else None)
    print_summary_table(folder)
    say(f"{result['runs']} runs, {result['points']} points")
    say(f"runs:    {result['runs_csv']}")
    say(f"summary: {result['summary_csv']}")
    for plot in result["plots"]:
        say(f"plot:    {plot}")
    say(f"report:  {result['report']}")
    return EXIT_OK


# -- main ------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "report":
        return report_main(argv[1:])
    suite = load_suite()
    parser, spec = build_parser(suite.settings, suite.registry, suite.defaults, suite.lab)
    args = parser.parse_args(argv)  # exits 2 on a bad flag or value, with the reason
    try:
        request = resolve_request(args, spec, suite, argv)
    except ConfigError as exc:
        return refuse(str(exc))
    for name in unknown_set_keys(request, suite):
        say(
            f"{PROG}: warning: --set {name}: not a setting or parameter the suite declares; "
            "passed to Ansible as is",
            sys.stderr,
        )
    view = load_inventory(request.choice)
    points = grid(request.sweeps) if request.sweeps else [{}]
    plans, errors = _validate_points(request, view, suite, points)
    if getattr(args, "print_config", False):
        return print_config(request, view, suite, plans[0], errors)
    if errors:
        return refuse("\n".join(f"- {error}" for error in errors))
    if request.sweeps or request.repeat > 1:
        return run_sweep(args, request, points, plans)
    return run_single(args, request, plans[0], view)
