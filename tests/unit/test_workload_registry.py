"""module_utils/workload_registry.py: declarations, parameter typing and validation, argv."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from workload_registry import (
    DeclarationError,
    Param,
    Workload,
    coerce,
    load_registry,
    param_errors,
    parse_declaration,
    resolve_params,
    script_argv,
)

REPO = Path(__file__).resolve().parents[2]

MB_SIZE = Param("mb_size", "int", 256, unit="MB", min=1)
INTERVAL = Param("interval", "float", 5.0, unit="s", min=0.001)
PORT = Param("redis_port", "int", 6379, min=1, max=65535)
MODEL = Param("model_size", "str", "medium", choices=("small", "medium", "large"))
RESOLUTION = Param("resolution", "str", "1920x1080", pattern=r"[0-9]+x[0-9]+")
FLAG = Param("lazy_pages", "bool", False)

MEMORY_DECLARATION: dict[str, Any] = {
    "name": "memory",
    "description": "growing allocation",
    "script": "memory_standalone.py",
    "params": {
        "mb_size": {"type": "int", "default": 256, "min": 1, "unit": "MB", "help": "per interval"},
        "interval": {"type": "float", "default": 5.0, "min": 0.001, "unit": "s"},
        "max_memory": {"type": "int", "default": 8192, "min": 1, "unit": "MB"},
    },
    "deps": {"apt": [], "python": None, "pip": []},
    "criu": {"tcp_established": False},
    "continuity": {"equal": ["blocks"], "close": {"rss_kb": 0.1}, "increasing": []},
}


def memory() -> Workload:
    return parse_declaration(dict(MEMORY_DECLARATION), "memory.yml")


# -- coerce --------------------------------------------------------------------------------


TRUE_WORDS = [(True, True), ("true", True), (" Yes ", True), ("1", True), ("on", True), (1, True)]
FALSE_WORDS = [
    (False, False),
    ("false", False),
    ("NO", False),
    ("0", False),
    ("off", False),
    (0, False),
]


@pytest.mark.parametrize(("value", "expected"), [*TRUE_WORDS, *FALSE_WORDS])
def test_coerce_bool(value: Any, expected: bool) -> None:
    assert coerce(FLAG, value) is expected


@pytest.mark.parametrize("value", ["maybe", "", "2", None])
def test_coerce_bool_refuses(value: Any) -> None:
    with pytest.raises(ValueError, match="is not a boolean"):
        coerce(FLAG, value)


@pytest.mark.parametrize(
    ("value", "expected"), [("64", 64), (" 64 ", 64), (64, 64), (64.0, 64), ("-5", -5)]
)
def test_coerce_int(value: Any, expected: int) -> None:
    result = coerce(MB_SIZE, value)
    assert result == expected
    assert type(result) is int


@pytest.mark.parametrize("value", [True, 64.5, "64.0", "abc", ""])
def test_coerce_int_refuses(value: Any) -> None:
    with pytest.raises(ValueError):
        coerce(MB_SIZE, value)


@pytest.mark.parametrize(("value", "expected"), [("0.5", 0.5), (2, 2.0), ("1e-3", 0.001)])
def test_coerce_float(value: Any, expected: float) -> None:
    result = coerce(INTERVAL, value)
    assert result == expected
    assert type(result) is float


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "abc", False])
def test_coerce_float_refuses(value: Any) -> None:
    with pytest.raises(ValueError):
        coerce(INTERVAL, value)


def test_coerce_str() -> None:
    assert coerce(MODEL, 12) == "12"
    assert coerce(MODEL, "large") == "large"


# -- param_errors --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("param", "value", "expected"),
    [
        (MB_SIZE, 256, []),
        (MB_SIZE, "64", []),
        (MB_SIZE, 0, ["mb_size=0 MB is below the minimum 1 MB"]),
        (MB_SIZE, "-5", ["mb_size=-5 MB is below the minimum 1 MB"]),
        (MB_SIZE, "abc", ["mb_size='abc' is not an integer"]),
        (MB_SIZE, 1.5, ["mb_size=1.5 is not an integer"]),
        (INTERVAL, "0", ["interval=0.0 s is below the minimum 0.001 s"]),
        (INTERVAL, "fast", ["interval='fast' is not a number"]),
        (PORT, 70000, ["redis_port=70000 is above the maximum 65535"]),
        (PORT, 0, ["redis_port=0 is below the minimum 1"]),
        (MODEL, "huge", ["model_size='huge' is not one of: small, medium, large"]),
        (RESOLUTION, "1920x1080", []),
        (RESOLUTION, "1920*1080", ["resolution='1920*1080' does not match the form [0-9]+x[0-9]+"]),
        (FLAG, "perhaps", ["lazy_pages='perhaps' is not true or false"]),
        (FLAG, "yes", []),
    ],
)
def test_param_errors(param: Param, value: Any, expected: list[str]) -> None:
    assert param_errors(param, value) == expected


def test_param_flag_is_kebab_case() -> None:
    assert Param("max_memory", "int", 1).flag == "--max-memory"
    assert Param("fps", "int", 1).flag == "--fps"


# -- resolve_params / script_argv ----------------------------------------------------------


def test_resolve_params_defaults() -> None:
    values, errors = resolve_params(memory(), {})
    assert errors == []
    assert values == {"mb_size": 256, "interval": 5.0, "max_memory": 8192}


def test_resolve_params_coerces_overrides_and_ignores_other_variables() -> None:
    values, errors = resolve_params(
        memory(),
        {"mb_size": "64", "interval": "0.5", "checkpoint_strategy": "full", "workload": "memory"},
    )
    assert errors == []
    assert values == {"mb_size": 64, "interval": 0.5, "max_memory": 8192}
    assert type(values["mb_size"]) is int


def test_resolve_params_reports_every_bad_value() -> None:
    values, errors = resolve_params(memory(), {"mb_size": "abc", "interval": 0, "max_memory": 512})
    assert values == {"max_memory": 512}
    assert errors == [
        "workload memory: mb_size='abc' is not an integer",
        "workload memory: interval=0.0 s is below the minimum 0.001 s",
    ]


def test_script_argv() -> None:
    workload = Workload(
        name="demo",
        script="demo_standalone.py",
        description="",
        params={p.name: p for p in (MB_SIZE, INTERVAL, FLAG, MODEL)},
    )
    argv = script_argv(
        workload,
        {"mb_size": 64, "lazy_pages": True, "interval": 0.5},
        "/opt/criu-migration/venv/bin/python3",
        "/opt/criu-migration/workloads/",
        "/var/lib/criu-migration/work/e1",
    )
    assert argv == [
        "/opt/criu-migration/venv/bin/python3",
        "/opt/criu-migration/workloads/demo_standalone.py",
        "--working-dir",
        "/var/lib/criu-migration/work/e1",
        "--mb-size",
        "64",
        "--interval",
        "0.5",
        "--lazy-pages",
        "true",
        "--model-size",
        "medium",  # not given: the declared default
    ]


def test_script_argv_bool_false() -> None:
    workload = Workload("demo", "d.py", "", {"lazy_pages": FLAG})
    assert script_argv(workload, {}, "py", "/s", "/w")[-2:] == ["--lazy-pages", "false"]


# -- parse_declaration ---------------------------------------------------------------------


def test_parse_declaration() -> None:
    workload = memory()
    assert workload.name == "memory"
    assert workload.script == "memory_standalone.py"
    assert workload.description == "growing allocation"
    assert list(workload.params) == ["mb_size", "interval", "max_memory"]
    assert workload.params["mb_size"] == Param(
        "mb_size", "int", 256, help="per interval", unit="MB", min=1
    )
    assert workload.deps == {"apt": [], "python": [], "pip": []}  # None -> []
    assert workload.criu == {"tcp_established": False}
    assert workload.continuity["close"] == {"rss_kb": 0.1}


def test_parse_declaration_minimal() -> None:
    workload = parse_declaration({"name": "x", "script": "x.py", "params": None})
    assert workload.params == {}
    assert (workload.description, workload.deps, workload.criu, workload.continuity) == (
        "",
        {},
        {},
        {},
    )


@pytest.mark.parametrize("key", ["name", "script", "params"])
def test_parse_declaration_missing_key(key: str) -> None:
    data = dict(MEMORY_DECLARATION)
    del data[key]
    with pytest.raises(DeclarationError) as excinfo:
        parse_declaration(data, "workloads/memory.yml")
    assert str(excinfo.value) == f"workloads/memory.yml: missing key {key!r}"


def test_parse_declaration_not_a_mapping() -> None:
    with pytest.raises(DeclarationError, match=r"^w\.yml: a declaration is a mapping$"):
        parse_declaration(["name", "memory"], "w.yml")  # type: ignore[arg-type]


@pytest.mark.parametrize("spec", [{"type": "int"}, {"default": 1}, "int", None])
def test_parse_declaration_param_needs_type_and_default(spec: Any) -> None:
    data = {"name": "x", "script": "x.py", "params": {"size": spec}}
    with pytest.raises(DeclarationError) as excinfo:
        parse_declaration(data, "x.yml")
    assert str(excinfo.value) == "x.yml: parameter 'size' needs a type and a default"


def test_parse_declaration_bad_type() -> None:
    data = {"name": "x", "script": "x.py", "params": {"size": {"type": "integer", "default": 1}}}
    with pytest.raises(DeclarationError) as excinfo:
        parse_declaration(data, "x.yml")
    assert str(excinfo.value) == (
        "x.yml: parameter 'size' has type 'integer'; valid: int, float, str, bool"
    )


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"type": "int", "default": 0, "min": 1}, "size=0 is below the minimum 1"),
        ({"type": "int", "default": "big"}, "size='big' is not an integer"),
        ({"type": "str", "default": "x", "choices": ["a", "b"]}, "size='x' is not one of: a, b"),
    ],
)
def test_parse_declaration_bad_default(spec: dict[str, Any], message: str) -> None:
    data = {"name": "x", "script": "x.py", "params": {"size": spec}}
    with pytest.raises(DeclarationError) as excinfo:
        parse_declaration(data, "x.yml")
    assert str(excinfo.value) == f"x.yml: default of size: {message}"


# -- load_registry -------------------------------------------------------------------------


def write(directory: Path, name: str, data: dict[str, Any]) -> Path:
    path = directory / f"{name}.yml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_load_registry_from_a_folder(tmp_path: Path) -> None:
    write(tmp_path, "memory", MEMORY_DECLARATION)
    write(tmp_path, "tiny", {"name": "tiny", "script": "tiny.py", "params": {}})
    (tmp_path / "notes.txt").write_text("not a declaration")
    registry = load_registry(tmp_path)
    assert sorted(registry) == ["memory", "tiny"]
    assert registry["memory"].params["interval"].min == 0.001


def test_load_registry_name_must_match_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "mem", MEMORY_DECLARATION)
    with pytest.raises(DeclarationError) as excinfo:
        load_registry(tmp_path)
    assert str(excinfo.value) == f"{path}: declares 'memory'; name the file memory.yml"


def test_load_registry_reports_the_file_of_a_bad_declaration(tmp_path: Path) -> None:
    path = write(tmp_path, "broken", {"name": "broken", "script": "b.py"})
    with pytest.raises(DeclarationError) as excinfo:
        load_registry(tmp_path)
    assert str(excinfo.value) == f"{path}: missing key 'params'"


def test_load_registry_empty_folder(tmp_path: Path) -> None:
    assert load_registry(tmp_path) == {}


def test_the_repos_memory_declaration() -> None:
    registry = load_registry(REPO / "workloads")
    memory_workload = registry["memory"]
    assert memory_workload.script == "memory_standalone.py"
    values, errors = resolve_params(memory_workload, {})
    assert errors == []
    assert values == {"mb_size": 256, "interval": 5.0, "max_memory": 8192}
