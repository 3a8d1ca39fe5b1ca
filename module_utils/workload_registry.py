"""Workload declarations (`workloads/<name>.yml`): loading, parameter validation, argv.

A declaration names a standalone script, its parameters with seed defaults and limits, its
dependencies, the CRIU options it needs and its continuity rules (docs/architecture.md).
Controller-side; PyYAML is imported lazily so the pure parts also run on bare nodes.
"""

from __future__ import annotations

import ast
import operator
import re
from collections.abc import Callable
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
    # checks across parameters (`checks:` in the declaration), each refused with its message
    checks: tuple[Check, ...] = ()


class DeclarationError(ValueError):
    """A workload declaration that cannot be used."""


# What a check's expression may use: numbers, strings, the workload's parameter names,
# arithmetic, comparisons and and/or/not. It is interpreted node by node (never eval'd), so
# a declaration cannot run code; `**` is left out (10 ** 10 ** 10 would never finish).
_BINARY: dict[type, Callable[[Any, Any], Any]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
}
_UNARY: dict[type, Callable[[Any], Any]] = {
    ast.UAdd: operator.pos,
    ast.USub: operator.neg,
    ast.Not: operator.not_,
}
_COMPARE: dict[type, Callable[[Any, Any], Any]] = {
    ast.Lt: operator.lt,
    ast.LtE: operator.le,
    ast.Gt: operator.gt,
    ast.GtE: operator.ge,
    ast.Eq: operator.eq,
    ast.NotEq: operator.ne,
}


@dataclass(frozen=True)
class Check:
    """A condition over several parameters (`checks: [{expr: ..., message: ...}]`)."""

    expr: str
    message: str
    names: tuple[str, ...]
    tree: ast.Expression = field(compare=False, repr=False)

    def holds(self, values: dict[str, Any]) -> bool:
        return bool(_evaluate(self.tree.body, values))


# Every node a check's syntax tree may hold (checked before any evaluation, so that a
# branch that and/or would skip cannot hide anything else).
_ALLOWED_NODES: tuple[type, ...] = (
    ast.Expression,
    ast.BinOp,
    ast.UnaryOp,
    ast.BoolOp,
    ast.Compare,
    ast.Name,
    ast.Constant,
    ast.Load,
    ast.And,
    ast.Or,
    *_BINARY,
    *_UNARY,
    *_COMPARE,
)


def _evaluate(node: ast.AST, values: dict[str, Any]) -> Any:
    if isinstance(node, ast.Constant) and isinstance(node.value, int | float | str):
        return node.value
    if isinstance(node, ast.Name):
        return values[node.id]
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        return _BINARY[type(node.op)](_evaluate(node.left, values), _evaluate(node.right, values))
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        return _UNARY[type(node.op)](_evaluate(node.operand, values))
    if isinstance(node, ast.BoolOp):
        results = (_evaluate(value, values) for value in node.values)
        return all(results) if isinstance(node.op, ast.And) else any(results)
    if isinstance(node, ast.Compare) and all(type(op) in _COMPARE for op in node.ops):
        left = _evaluate(node.left, values)
        for op, comparator in zip(node.ops, node.comparators, strict=True):
            right = _evaluate(comparator, values)
            if not _COMPARE[type(op)](left, right):
                return False
            left = right
        return True
    raise ValueError(f"{ast.unparse(node)!r} is not allowed in a check")


def parse_check(spec: Any, params: dict[str, Param], source: str) -> Check:
    """A declaration's check, its expression parsed and its names checked (not evaluated)."""
    if not isinstance(spec, dict) or not spec.get("expr") or not spec.get("message"):
        raise DeclarationError(f"{source}: a check is a mapping with expr and message")
    expr = str(spec["expr"])
    try:
        tree = ast.parse(expr, mode="eval")
    except SyntaxError as exc:
        raise DeclarationError(f"{source}: check {expr!r} does not parse: {exc.msg}") from exc
    for node in ast.walk(tree):
        constant = not isinstance(node, ast.Constant) or isinstance(node.value, int | float | str)
        if not isinstance(node, _ALLOWED_NODES) or not constant:
            shown = ast.unparse(node) if isinstance(node, ast.expr) else type(node).__name__
            raise DeclarationError(
                f"{source}: check {expr!r}: {shown!r} is not allowed in a check (numbers, "
                "text, parameter names, + - * / // %, comparisons, and / or / not)"
            )
    names = tuple(dict.fromkeys(n.id for n in ast.walk(tree) if isinstance(n, ast.Name)))
    unknown = [name for name in names if name not in params]
    if unknown:
        raise DeclarationError(
            f"{source}: check {expr!r} names {', '.join(unknown)}, not a parameter "
            f"(valid: {', '.join(params)})"
        )
    check = Check(expr, str(spec["message"]), names, tree)
    try:
        check.holds({name: param.default for name, param in params.items()})
    except (ValueError, TypeError, ZeroDivisionError) as exc:
        raise DeclarationError(f"{source}: check {expr!r}: {exc}") from exc
    return check


def check_errors(workload: Workload, values: dict[str, Any]) -> list[str]:
    """The declaration's checks that `values` (typed, every parameter) break."""
    errors: list[str] = []
    for check in workload.checks:
        try:
            ok = check.holds(values)
        except (TypeError, ZeroDivisionError) as exc:
            ok, why = False, f" ({exc})"
        else:
            why = ""
        if not ok:
            given = ", ".join(f"{name}={values[name]}" for name in check.names)
            errors.append(
                f"workload {workload.name}: {given} breaks {check.expr}{why}: {check.message}"
            )
    return errors


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
    # criu.runs_as: {process name: user} for the processes of the tree that do not run as root
    # (the node checks refuse them where root lacks CAP_SYS_RESOURCE, which their dump needs)
    runs_as = (data.get("criu") or {}).get("runs_as", {})
    if not isinstance(runs_as, dict) or not all(
        isinstance(user, str | int) and str(user).strip() for user in runs_as.values()
    ):
        raise DeclarationError(
            f"{source}: criu.runs_as maps process names to the user each runs as "
            f"({{postgres: postgres}}), not {runs_as!r}"
        )
    workload = Workload(
        name=str(data["name"]),
        script=str(data["script"]),
        description=str(data.get("description", "")),
        params=params,
        deps={key: list(value or []) for key, value in (data.get("deps") or {}).items()},
        criu=dict(data.get("criu") or {}),
        continuity=dict(data.get("continuity") or {}),
        checks=tuple(parse_check(spec, params, source) for spec in data.get("checks") or ()),
    )
    for param in params.values():
        errors = param_errors(param, param.default)
        if errors:
            raise DeclarationError(f"{source}: default of {param.name}: {errors[0]}")
    broken = check_errors(workload, {name: param.default for name, param in params.items()})
    if broken:
        raise DeclarationError(f"{source}: the defaults break a check: {broken[0]}")
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
    if not errors:
        errors = check_errors(workload, values)
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
