"""Workload declarations (`workloads/<name>.yml`): loading, parameter validation, argv.

A declaration names a standalone script, its parameters with seed defaults and limits, its
dependencies, the CRIU options it needs and its continuity rules (docs/architecture.md).
Controller-side; PyYAML is imported lazily so the pure parts also run on bare nodes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PARAM_TYPES = ("int", "float", "str", "bool")
PROTOCOL_FILES = ("checkpoint_ready", "progress.log", "checkpoint_flag")


@dataclass(frozen=True)
class Param:
    name: str
    type: str
    default: Any
    help: str = ""
    unit: str = ""
    min: float | None = None
    max: float | None = None
    choices: tuple[Any, ...] = ()
    pattern: str = ""

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")


@dataclass(frozen=True)
class Workload:
    name: str
    script: str
    description: str
    params: dict[str, Param]
    deps: dict[str, list[str]] = field(default_factory=dict)
    criu: dict[str, Any] = field(default_factory=dict)
    continuity: dict[str, Any] = field(default_factory=dict)


class DeclarationError(ValueError):
    """A workload declaration that cannot be used."""


def parse_declaration(data: dict[str, Any], source: str = "<declaration>") -> Workload:
    """Build a Workload from a declaration's parsed YAML, checking its shape."""
    if not isinstance(data, dict):
        raise DeclarationError(f"{source}: a declaration is a mapping")
    for key in ("name", "script", "params"):
        if key not in data:
            raise DeclarationError(f"{source}: missing key {key!r}")
    params: dict[str, Param] = {}
    for name, spec in (data.get("params") or {}).items():
        if not isinstance(spec, dict) or "type" not in spec or "default" not in spec:
            raise DeclarationError(f"{source}: parameter {name!r} needs a type and a default")
        if spec["type"] not in PARAM_TYPES:
            raise DeclarationError(
                f"{source}: parameter {name!r} has type {spec['type']!r}; valid: {', '.join(PARAM_TYPES)}"
            )
        params[name] = Param(
            name=name,
            type=spec["type"],
            default=spec["default"],
            help=str(spec.get("help", "")),
            unit=str(spec.get("unit", "")),
            min=spec.get("min"),
            max=spec.get("max"),
            choices=tuple(spec.get("choices") or ()),
            pattern=str(spec.get("pattern", "")),
        )
    workload = Workload(
        name=str(data["name"]),
        script=str(data["script"]),
        description=str(data.get("description", "")),
        params=params,
        deps={key: list(value or []) for key, value in (data.get("deps") or {}).items()},
        criu=dict(data.get("criu") or {}),
        continuity=dict(data.get("continuity") or {}),
    )
    for param in params.values():
        errors = param_errors(param, param.default)
        if errors:
            raise DeclarationError(f"{source}: default of {param.name}: {errors[0]}")
    return workload


def load_registry(directory: str | Path) -> dict[str, Workload]:
    """Every `*.yml` declaration in `directory`, by workload name."""
    import yaml  # controller-side only

    registry: dict[str, Workload] = {}
    for path in sorted(Path(directory).glob("*.yml")):
        workload = parse_declaration(yaml.safe_load(path.read_text()), str(path))
        if workload.name in registry:
            raise DeclarationError(f"{path}: workload {workload.name!r} is declared twice")
        if workload.name != path.stem:
            raise DeclarationError(
                f"{path}: declares {workload.name!r}; name the file {workload.name}.yml"
            )
        registry[workload.name] = workload
    return registry


def coerce(param: Param, value: Any) -> Any:
    """Convert a user's value (often a string from `-e key=value`) to the parameter's type."""
    if param.type == "bool":
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in ("true", "yes", "1", "on"):
            return True
        if text in ("false", "no", "0", "off"):
            return False
        raise ValueError(f"{value!r} is not a boolean")
    if param.type == "int":
        if isinstance(value, bool):
            raise ValueError(f"{value!r} is not an integer")
        if isinstance(value, float):
            if not value.is_integer():
                raise ValueError(f"{value!r} is not an integer")
            return int(value)
        return int(str(value).strip())
    if param.type == "float":
        if isinstance(value, bool):
            raise ValueError(f"{value!r} is not a number")
        result = float(str(value).strip())
        if result != result or result in (float("inf"), float("-inf")):
            raise ValueError(f"{value!r} is not a finite number")
        return result
    return str(value)


def param_errors(param: Param, value: Any) -> list[str]:
    """What is wrong with `value` for `param` (empty when it is fine)."""
    try:
        typed = coerce(param, value)
    except (TypeError, ValueError):
        kind = {"int": "an integer", "float": "a number", "bool": "true or false"}.get(
            param.type, "text"
        )
        return [f"{param.name}={value!r} is not {kind}"]
    errors: list[str] = []
    unit = f" {param.unit}" if param.unit else ""
    if param.min is not None and typed < param.min:
        errors.append(f"{param.name}={typed}{unit} is below the minimum {param.min}{unit}")
    if param.max is not None and typed > param.max:
        errors.append(f"{param.name}={typed}{unit} is above the maximum {param.max}{unit}")
    if param.choices and typed not in param.choices:
        errors.append(
            f"{param.name}={typed!r} is not one of: {', '.join(str(c) for c in param.choices)}"
        )
    if param.pattern and not re.fullmatch(param.pattern, str(typed)):
        errors.append(f"{param.name}={typed!r} does not match the form {param.pattern}")
    return errors


def resolve_params(
    workload: Workload, overrides: dict[str, Any]
) -> tuple[dict[str, Any], list[str]]:
    """The workload's parameters: seed defaults, then `overrides` where given.

    Returns (typed values, errors). Unknown keys in `overrides` are not errors here: the
    caller passes every variable and only the workload's own are taken.
    """
    values: dict[str, Any] = {}
    errors: list[str] = []
    for name, param in workload.params.items():
        value = overrides.get(name, param.default)
        problems = param_errors(param, value)
        if problems:
            errors.extend(f"workload {workload.name}: {problem}" for problem in problems)
            continue
        values[name] = coerce(param, value)
    return values, errors


def script_argv(
    workload: Workload, params: dict[str, Any], python: str, script_dir: str, working_dir: str
) -> list[str]:
    """The command line that starts the workload on a node."""
    argv = [python, f"{script_dir.rstrip('/')}/{workload.script}", "--working-dir", working_dir]
    for name, param in workload.params.items():
        value = params.get(name, param.default)
        if param.type == "bool":
            value = "true" if value else "false"
        argv += [param.flag, str(value)]
    return argv
