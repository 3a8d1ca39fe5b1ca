"""Every workload declaration (`workloads/<name>.yml`) is well-formed and matches its script.

The format is docs/architecture.md's "A workload declaration"; the seed parameters and their
defaults are the seed's (README, "Workload parameters").
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
WORKLOADS = REPO / "workloads"

# The seed's table: every seed parameter with its seed default.
SEED_PARAMS: dict[str, dict[str, Any]] = {
    "memory": {"mb_size": 256, "interval": 5.0, "max_memory": 8192},
    "matmul": {"matrix_size": 2048, "iterations": 0, "interval": 1.0},
    "redis": {"redis_port": 6379, "num_keys": 100000, "value_size": 1024},
    "ml_training": {
        "model_size": "medium",
        "batch_size": 64,
        "epochs": 0,
        "learning_rate": 0.001,
        "dataset_size": 0,  # 0 = the model size's default
    },
    "video": {"resolution": "1920x1080", "fps": 30, "duration": 300, "video_mode": "live"},
    "dataproc": {"num_rows": 1000000, "num_cols": 50, "operations": 0, "interval": 1.0},
}
TOP_KEYS = {"name", "description", "script", "params", "deps", "criu", "continuity"}
# Optional: TCP ports the workload listens on (checked free), output-capture limits, checks
# of the files it produces (verify), conditions across parameters (checks).
OPTIONAL_KEYS = {"ports", "capture", "verify", "checks"}
PARAM_KEYS = {"type", "default", "min", "max", "choices", "pattern", "unit", "help"}
PYTHON_TYPES = {"int": int, "float": (int, float), "str": str, "bool": bool}
# Fields the protocol writes on every line; continuity rules compare workload fields.
PROTOCOL_FIELDS = {"seq", "ts", "host", "event"}


def declaration(name: str) -> dict[str, Any]:
    return yaml.safe_load((WORKLOADS / f"{name}.yml").read_text())


def test_every_seed_workload_is_declared() -> None:
    declared = {path.stem for path in WORKLOADS.glob("*.yml")}
    assert set(SEED_PARAMS) <= declared


@pytest.mark.parametrize("name", sorted(SEED_PARAMS))
def test_top_level_shape(name: str) -> None:
    decl = declaration(name)
    assert TOP_KEYS <= set(decl) <= TOP_KEYS | OPTIONAL_KEYS
    assert decl["name"] == name
    assert isinstance(decl["description"], str) and decl["description"]
    assert decl["script"] == f"{name}_standalone.py"
    assert (WORKLOADS / decl["script"]).is_file()


@pytest.mark.parametrize("name", sorted(SEED_PARAMS))
def test_params_are_the_seed_params_with_seed_defaults(name: str) -> None:
    params = declaration(name)["params"]
    assert {key: spec["default"] for key, spec in params.items()} == SEED_PARAMS[name]


@pytest.mark.parametrize("name", sorted(SEED_PARAMS))
def test_param_specs_are_valid(name: str) -> None:
    for key, spec in declaration(name)["params"].items():
        where = f"{name}.{key}"
        assert re.fullmatch(r"[a-z][a-z0-9_]*", key), where
        assert set(spec) <= PARAM_KEYS, where
        assert spec["type"] in PYTHON_TYPES, where
        default = spec["default"]
        assert isinstance(default, PYTHON_TYPES[spec["type"]]), where
        assert not (spec["type"] in ("int", "float") and isinstance(default, bool)), where
        assert isinstance(spec.get("help"), str) and spec["help"], f"{where}: help"
        if "min" in spec:
            assert spec["type"] in ("int", "float") and default >= spec["min"], where
        if "max" in spec:
            assert spec["type"] in ("int", "float") and default <= spec["max"], where
            assert spec.get("min", spec["max"]) <= spec["max"], where
        if "choices" in spec:
            assert isinstance(spec["choices"], list) and default in spec["choices"], where
        if "pattern" in spec:
            assert spec["type"] == "str", where
            assert re.fullmatch(spec["pattern"], default), where


def test_video_resolution_pattern() -> None:
    pattern = declaration("video")["params"]["resolution"]["pattern"]
    for good in ("1920x1080", "160x120", "2x2", "1280x720", "3840x2160"):
        assert re.fullmatch(pattern, good), good
    for bad in ("12x", "x12", "161x120", "160x121", "0x0", "0160x120", "160X120", "160x120 ", ""):
        assert not re.fullmatch(pattern, bad), bad


@pytest.mark.parametrize("name", sorted(SEED_PARAMS))
def test_deps(name: str) -> None:
    deps = declaration(name)["deps"]
    assert set(deps) == {"apt", "python", "pip"}
    for kind, names in deps.items():
        assert isinstance(names, list), kind
        assert all(isinstance(item, str) and item for item in names), kind
    source = (WORKLOADS / f"{name}_standalone.py").read_text()
    for module in deps["python"]:
        assert re.search(rf"^\s*import {module}\b", source, re.M), (
            f"{name} does not import {module}"
        )


def test_deps_of_the_real_parts() -> None:
    assert "redis-server" in declaration("redis")["deps"]["apt"]
    assert "redis" in declaration("redis")["deps"]["python"]
    assert "ffmpeg" in declaration("video")["deps"]["apt"]
    assert "torch" in declaration("ml_training")["deps"]["python"]
    for name in ("matmul", "dataproc"):
        assert declaration(name)["deps"]["python"] == ["numpy"]
    assert declaration("memory")["deps"] == {"apt": [], "python": [], "pip": []}


@pytest.mark.parametrize("name", sorted(SEED_PARAMS))
def test_criu_options(name: str) -> None:
    criu = declaration(name)["criu"]
    assert set(criu) == {"tcp_established", "process_tree"}
    assert isinstance(criu["tcp_established"], bool)
    assert isinstance(criu["process_tree"], list)
    assert criu["tcp_established"] is (name == "redis")
    expected_children = {"redis": ["redis-server"], "video": ["ffmpeg"]}.get(name, [])
    assert criu["process_tree"] == expected_children


@pytest.mark.parametrize("name", sorted(SEED_PARAMS))
def test_continuity_rules(name: str) -> None:
    continuity = declaration(name)["continuity"]
    assert set(continuity) == {"equal", "close", "increasing"}
    assert isinstance(continuity["equal"], list) and continuity["equal"]
    assert isinstance(continuity["increasing"], list)
    assert isinstance(continuity["close"], dict)
    for field, tolerance in continuity["close"].items():
        assert isinstance(tolerance, float) and 0 < tolerance < 1, field
    fields = [*continuity["equal"], *continuity["close"], *continuity["increasing"]]
    assert len(fields) == len(set(fields)), "a field under two rules"
    source = (WORKLOADS / f"{name}_standalone.py").read_text()
    for field in fields:
        assert field not in PROTOCOL_FIELDS, field
        # the script writes the field (as a dict key or keyword): its name is in the source
        assert re.search(rf"[\"']{field}[\"']|\b{field}=", source), f"{name} never writes {field}"


def test_suite_registry_loads_every_declaration() -> None:
    registry = pytest.importorskip("workload_registry")
    workloads = registry.load_registry(WORKLOADS)
    for name, params in SEED_PARAMS.items():
        workload = workloads[name]
        assert {key: param.default for key, param in workload.params.items()} == params
        argv = registry.script_argv(workload, {}, "python3", "/opt/w", "/work")
        assert argv[:4] == ["python3", f"/opt/w/{name}_standalone.py", "--working-dir", "/work"]


def test_redis_declares_its_port_and_video_limits_its_capture() -> None:
    assert declaration("redis")["ports"] == ["redis_port"]
    assert "progress.log" in declaration("video")["capture"]["trace_paths"]


@pytest.mark.parametrize("name", sorted(SEED_PARAMS))
def test_verify_keys_are_known_artifact_checks(name: str) -> None:
    artifact_checks = pytest.importorskip("artifact_checks")
    spec = artifact_checks.parse_artifact_checks(declaration(name).get("verify"))
    assert set(spec) <= set(artifact_checks.ARTIFACT_CHECKS)


def test_video_decodes_every_finished_output_file_of_both_modes() -> None:
    # live writes segment_%05d.ts, file writes video.mp4 (the script's Video.output)
    assert declaration("video")["verify"] == {"ffprobe": ["segment_*.ts", "video.mp4"]}
    source = (WORKLOADS / "video_standalone.py").read_text()
    assert '"segment_%05d.ts" if self.mode == "live" else "video.mp4"' in source
