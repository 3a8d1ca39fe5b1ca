"""Checks across a workload's parameters (`checks:` in a declaration): a small evaluator of
arithmetic and comparisons over parameter names (never eval), enforced by the preflight."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from experiment_plan import load_setting_defaults, plan_experiment
from workload_registry import (
    DeclarationError,
    load_registry,
    parse_check,
    parse_declaration,
    resolve_params,
)

REPO = Path(__file__).resolve().parents[2]
REGISTRY = load_registry(REPO / "workloads")


def declaration(checks: list[Any], **params: Any) -> dict[str, Any]:
    return {
        "name": "demo",
        "script": "demo_standalone.py",
        "params": params
        or {
            "num_keys": {"type": "int", "default": 100, "min": 1},
            "value_size": {"type": "int", "default": 10, "min": 1},
            "mode": {"type": "str", "default": "a", "choices": ["a", "b"]},
        },
        "checks": checks,
    }


def check(expr: str, message: str = "no") -> dict[str, str]:
    return {"expr": expr, "message": message}


@pytest.mark.parametrize(
    ("expr", "values", "holds"),
    [
        ("num_keys * value_size <= 1000", {"num_keys": 100, "value_size": 10}, True),
        ("num_keys * value_size <= 1000", {"num_keys": 101, "value_size": 10}, False),
        ("num_keys // 3 + value_size % 4 - 1 == 33 + 2 - 1", {"num_keys": 100, "value_size": 10}, True),
        ("num_keys / value_size > 9.5", {"num_keys": 100, "value_size": 10}, True),
        ("1 < value_size < num_keys", {"num_keys": 100, "value_size": 10}, True),
        ("1 < num_keys < value_size", {"num_keys": 100, "value_size": 10}, False),
        ("mode == 'b' or num_keys < 50", {"num_keys": 100, "value_size": 10, "mode": "a"}, False),
        ("not (mode == 'a' and value_size > 100)", {"num_keys": 1, "value_size": 10, "mode": "a"}, True),
        ("-num_keys < 0", {"num_keys": 5, "value_size": 1}, True),
    ],
)  # fmt: skip
def test_the_evaluator(expr: str, values: dict[str, Any], holds: bool) -> None:
    params = parse_declaration(declaration([])).params
    full = {"num_keys": 1, "value_size": 1, "mode": "a", **values}
    assert parse_check(check(expr), params, "demo.yml").holds(full) is holds


@pytest.mark.parametrize(
    ("expr", "message"),
    [
        ("__import__('os').system('true')", "is not allowed in a check"),
        ("num_keys.bit_length() > 1", "is not allowed in a check"),
        ("num_keys ** 2 > 1", "is not allowed in a check"),
        ("[num_keys][0] > 1", "is not allowed in a check"),
        ("lambda: 1", "is not allowed in a check"),
        ("num_keys > 0 or num_keys.real > 0", "is not allowed in a check"),
        ("num_keys > 0 or b'x'", "is not allowed in a check"),
        ("max_memory > 1", "names max_memory, not a parameter"),
        ("num_keys >", "does not parse"),
        ("num_keys > 'x'", "not supported between"),
    ],
)
def test_anything_else_is_refused_when_the_declaration_loads(expr: str, message: str) -> None:
    with pytest.raises(DeclarationError, match=message):
        parse_declaration(declaration([check(expr)]))


def test_a_check_needs_an_expression_and_a_message() -> None:
    with pytest.raises(DeclarationError, match="a check is a mapping with expr and message"):
        parse_declaration(declaration([{"expr": "num_keys > 1"}]))


def test_the_defaults_must_pass_the_checks() -> None:
    with pytest.raises(DeclarationError, match="the defaults break a check"):
        parse_declaration(declaration([check("num_keys > 1000")]))


def test_resolve_params_names_the_values_and_the_message() -> None:
    workload = parse_declaration(declaration([check("num_keys * value_size <= 1000", "too big")]))
    _, errors = resolve_params(workload, {"num_keys": 200})
    assert errors == [
        "workload demo: num_keys=200, value_size=10 breaks num_keys * value_size <= 1000: too big"
    ]
    # a value refused on its own is reported alone (the check needs every value)
    _values, errors = resolve_params(workload, {"num_keys": 0})
    assert errors == ["workload demo: num_keys=0 is below the minimum 1"]


def test_redis_declares_its_dataset_within_memory() -> None:
    redis = REGISTRY["redis"]
    assert [c.names for c in redis.checks] == [("num_keys", "value_size")]
    # the seed's large cache fits; ten times that does not
    assert resolve_params(redis, {"num_keys": 1_000_000, "value_size": 4096})[1] == []
    errors = resolve_params(redis, {"num_keys": 10_000_000, "value_size": 4096})[1]
    assert len(errors) == 1 and "num_keys=10000000, value_size=4096 breaks" in errors[0]
    assert "8 GiB" in errors[0]


def test_the_preflight_refuses_a_broken_check() -> None:
    groups = {"source": ["src"], "destination": ["dst"]}
    plan = plan_experiment(
        {"workload": "memory", "mb_size": 600, "max_memory": 512},
        REGISTRY,
        groups,
        lambda host, name: None,
        load_setting_defaults(),
    )
    assert (
        "workload memory: mb_size=600, max_memory=512 breaks mb_size <= max_memory: no block of "
        "mb_size MB fits under max_memory, so nothing would be allocated"
    ) in plan.errors
