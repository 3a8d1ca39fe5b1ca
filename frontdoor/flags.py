"""run_experiment.py's command line, generated from the one place each fact lives.

Every setting in `SETTINGS` (module_utils/experiment_plan.py) becomes a flag named after its
variable (`critical_path` -> `--critical-path`), typed and with its choices; its default
shown in `--help` comes from group_vars/all.yml (and the lab's own from group_vars/lab.yml).
Every workload parameter in the declarations (workloads/<name>.yml) becomes a flag the
same way (`mb_size` -> `--mb-size`, the seed's names). The seed's own spellings are kept as
aliases (`--strategy` for `checkpoint_strategy`, which is an Ansible play keyword).

A flag that is not given is absent from the result: the layers below it (defaults, the
inventory's group_vars, config files) decide.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from workload_registry import Param, Workload

# The seed's spelling of a setting, kept as an alias of the suite's flag.
SEED_ALIASES: dict[str, tuple[str, ...]] = {"checkpoint_strategy": ("--strategy",)}

# --help groups of the settings, by name prefix (first match wins; the rest: "experiment").
SETTING_GROUPS: tuple[tuple[str, tuple[str, ...]], ...] = (
    (
        "checkpoint strategy",
        ("checkpoint_", "critical_path", "predump_", "lazy_pages", "page_server"),
    ),
    ("transfer", ("transfer", "s3_", "ec2_", "ebs_", "efs_")),
    ("when to migrate", ("migrate_", "trigger", "notice_")),
)
DEFAULT_SETTING_GROUP = "experiment"
# --help lists the workloads' parameters in the seed's order (its README's); others follow.
SEED_WORKLOAD_ORDER = ("memory", "matmul", "redis", "ml_training", "video", "dataproc")

DESCRIPTION = """\
Run CRIU live-migration experiments: migrate.yml through ansible-runner, with live
progress, the seed's summary, sweeps with repetitions and a report.

  python3 run_experiment.py [flags]                 one experiment (or a sweep)
  python3 run_experiment.py report FOLDER [-o DIR]  CSVs, plots and report.html of a
                                                    results, sweep or parent folder

Precedence, lowest first: group_vars/all.yml < the inventory's group_vars (lab: full
dump, small sizes) < config/default.yaml < -c files (in order) < flags and --set.
--print-config shows every value and where it came from.

Exit codes: 0 every migration ok; 1 a migration failed (the summary says where the
workload runs); 2 bad input, refused before any host was touched; 130 stopped by Ctrl-C."""

EPILOG = """\
examples (the seed's):
  python3 run_experiment.py
  python3 run_experiment.py --workload matmul
  python3 run_experiment.py --workload memory --mb-size 512 --max-memory 8192
  python3 run_experiment.py -c config/experiments/lazy_pages.yaml
  python3 run_experiment.py --strategy predump --predump-iterations 8 --predump-interval 10
  python3 run_experiment.py -c config/experiments/efs_transfer.yaml \\
      --source-ip $SOURCE_NODE_IP --dest-ip $DEST_NODE_IP
sweeps:
  python3 run_experiment.py --workload memory --sweep mb_size=16,32,64 --repeat 3
  python3 run_experiment.py report results/sweep_<UTC timestamp>"""


@dataclass
class FlagSpec:
    """What the generated flags map to: flag destination -> variable, and the --help notes."""

    variables: dict[str, str] = field(default_factory=dict)  # dest -> variable name
    flags: dict[str, str] = field(default_factory=dict)  # variable -> its main flag


def _show(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if value == "":
        return "empty"
    return str(value)


def _kind(param: Param) -> dict[str, Any]:
    """argparse keywords for a parameter's type and choices."""
    if param.type == "bool":
        return {"action": argparse.BooleanOptionalAction}
    keywords: dict[str, Any] = {"type": {"int": int, "float": float}.get(param.type, str)}
    if param.choices:
        keywords["choices"] = list(param.choices)
    return keywords


def _metavar(param: Param) -> str | None:
    if param.type == "bool" or param.choices:
        return None
    return (param.unit or param.type).upper().replace(" ", "_").replace("%", "PCT")


def setting_group(name: str) -> str:
    for title, prefixes in SETTING_GROUPS:
        if name.startswith(prefixes):
            return title
    return DEFAULT_SETTING_GROUP


def _limits(param: Param) -> str:
    unit = f" {param.unit}" if param.unit else ""
    if param.min is not None and param.max is not None:
        return f"{param.min:g}-{param.max:g}{unit}"
    if param.min is not None:
        return f">= {param.min:g}{unit}"
    return ""


def _setting_help(param: Param, defaults: Mapping[str, Any], lab: Mapping[str, Any]) -> str:
    text = param.help
    limits = _limits(param)
    if limits:
        text += f" [{limits}]"
    if param.name in defaults:
        text += f" (default: {_show(defaults[param.name])}"
        if param.name in lab and lab[param.name] != defaults[param.name]:
            text += f"; lab: {_show(lab[param.name])}"
        text += ")"
    return text.replace("%", "%%")  # argparse formats help with %


def _param_help(
    name: str, owners: list[Workload], lab_sizes: Mapping[str, Mapping[str, Any]]
) -> str:
    first = owners[0].params[name]
    helps = {workload.params[name].help for workload in owners}
    if len(helps) == 1:
        text = first.help or name
    else:
        text = "; ".join(f"{w.name}: {w.params[name].help or name}" for w in owners)
    unit = f" {first.unit}" if first.unit else ""
    parts = []
    for workload in owners:
        param = workload.params[name]
        part = _show(param.default) + unit
        lab_value = (lab_sizes.get(workload.name) or {}).get(name)
        if lab_value is not None and lab_value != param.default:
            part += f", lab {_show(lab_value)}"
        parts.append(part if len(owners) == 1 else f"{workload.name} {part}")
    return f"{text} (default: {'; '.join(parts)})".replace("%", "%%")


def build_parser(
    settings: Mapping[str, Param],
    registry: Mapping[str, Workload],
    defaults: Mapping[str, Any],
    lab: Mapping[str, Any] | None = None,
) -> tuple[argparse.ArgumentParser, FlagSpec]:
    """The run parser, its flags generated from `settings` and the workloads' parameters.

    `defaults`: group_vars/all.yml; `lab`: group_vars/lab.yml (for the --help notes only).
    """
    lab = lab or {}
    spec = FlagSpec()
    parser = argparse.ArgumentParser(
        prog="run_experiment.py",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        argument_default=argparse.SUPPRESS,
        allow_abbrev=False,
    )
    config = parser.add_argument_group("configuration")
    config.add_argument(
        "-c",
        "--config",
        action="append",
        metavar="FILE",
        help="a config file: a flat preset (config/experiments/*.yaml, as `-e @FILE`) or the "
        "seed's nested layout (config/default.yaml); several apply in order",
    )
    config.add_argument(
        "--set",
        "-e",
        action="append",
        metavar="KEY=VALUE",
        dest="set",
        help="any other variable of the suite (value read as YAML: 3, 0.5, true, text); "
        "-e @FILE is -c FILE",
    )
    config.add_argument(
        "--print-config",
        action="store_true",
        help="print every setting with its value and where it came from, the inventory, the "
        "equivalent ansible-playbook command, and exit",
    )

    groups: dict[str, argparse._ArgumentGroup] = {}

    def group(title: str) -> argparse._ArgumentGroup:
        if title not in groups:
            groups[title] = parser.add_argument_group(title)
        return groups[title]

    for title in (DEFAULT_SETTING_GROUP, *(title for title, _ in SETTING_GROUPS)):
        if any(setting_group(name) == title for name in settings):
            group(title)
    for name, param in settings.items():
        flag = "--" + name.replace("_", "-")
        options = [*SEED_ALIASES.get(name, ()), flag]
        keywords = _kind(param)
        if name == "workload":
            keywords["choices"] = sorted(registry)
        group(setting_group(name)).add_argument(
            *options,
            dest=f"var_{name}",
            metavar=_metavar(param) if "choices" not in keywords else None,
            help=_setting_help(param, defaults, lab),
            **keywords,
        )
        spec.variables[f"var_{name}"] = name
        spec.flags[name] = options[0]

    nodes = parser.add_argument_group("nodes")
    nodes.add_argument(
        "--source-ip",
        metavar="ADDRESS",
        help="source node (with --dest-ip): inventories/env with SOURCE_NODE_IP / DEST_NODE_IP",
    )
    nodes.add_argument("--dest-ip", metavar="ADDRESS", help="destination node (with --source-ip)")
    nodes.add_argument(
        "-i",
        "--inventory",
        metavar="PATH",
        help="an Ansible inventory, or a name under inventories/ (aws_cross_az, lab_guest); "
        "default: config/servers.yaml when present, else config nodes.*.ip when set, else the "
        "local lab (ansible.cfg)",
    )

    order = [name for name in SEED_WORKLOAD_ORDER if name in registry]
    order += sorted(name for name in registry if name not in order)
    owners: dict[str, list[Workload]] = {}
    for workload_name in order:
        for name in registry[workload_name].params:
            owners.setdefault(name, []).append(registry[workload_name])
    lab_sizes = lab.get("workload_defaults") or {}
    for workload_name in order:
        workload = registry[workload_name]
        names = [n for n in workload.params if owners[n][0] is workload and n not in settings]
        if not names:
            continue
        params_group = parser.add_argument_group(f"workload parameters: {workload.name}")
        for name in names:
            param = workload.params[name]
            keywords = _kind(param)
            if len(owners[name]) > 1:
                keywords.pop("choices", None)
                shared = ", ".join(w.name for w in owners[name])
                help_text = f"({shared}) " + _param_help(name, owners[name], lab_sizes)
            else:
                help_text = _param_help(name, owners[name], lab_sizes)
            params_group.add_argument(
                param.flag,
                dest=f"var_{name}",
                metavar=_metavar(param) if "choices" not in keywords else None,
                help=help_text,
                **keywords,
            )
            spec.variables[f"var_{name}"] = name
            spec.flags[name] = param.flag

    sweeps = parser.add_argument_group("sweeps and repetitions")
    sweeps.add_argument(
        "--repeat",
        type=int,
        metavar="N",
        help="run every point N times (default: 1)",
    )
    sweeps.add_argument(
        "--sweep",
        action="append",
        metavar="KEY=V1,V2,...",
        help="one experiment per value of a setting or workload parameter; several --sweep "
        "make a grid. Results: <results root>/sweep_<UTC timestamp>/ (runs.csv, summary.csv, "
        "plots, report.html, each run's folder under runs/)",
    )
    sweeps.add_argument("--sweep-name", metavar="NAME", help="the sweep folder's name")

    output = parser.add_argument_group("output")
    output.add_argument(
        "--results-root",
        metavar="DIR",
        help="where results folders go (default: results/ in the checkout)",
    )
    output.add_argument(
        "--plain",
        action="store_true",
        help="progress as plain lines even on a terminal (the default when not a TTY)",
    )
    output.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="show the playbook's own output (every task) instead of the progress line",
    )
    return parser, spec


def flag_variables(args: argparse.Namespace, spec: FlagSpec) -> dict[str, Any]:
    """The variables the given flags set, by variable name (flags not given are absent)."""
    given = vars(args)
    return {variable: given[dest] for dest, variable in spec.variables.items() if dest in given}


def variable_flags(spec: FlagSpec) -> dict[str, str]:
    """Each variable's flag (for messages and --print-config)."""
    return dict(spec.flags)
