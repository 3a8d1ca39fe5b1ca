"""run_experiment.py's flags: every seed flag maps to its variable, the suite's settings get
flags from SETTINGS, --help shows group_vars/all.yml's defaults, bad values exit 2."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from experiment_plan import SETTINGS, load_setting_defaults  # noqa: E402
from workload_registry import Param, load_registry  # noqa: E402

from frontdoor.flags import build_parser, flag_variables, setting_group  # noqa: E402

REGISTRY = load_registry(REPO / "workloads")
DEFAULTS = load_setting_defaults()
LAB = yaml.safe_load((REPO / "group_vars" / "lab.yml").read_text())

# Every flag of the seed's run_experiment.py (its README) -> (argv, the variables it sets).
SEED_FLAGS: dict[str, tuple[list[str], dict[str, Any]]] = {
    "--workload": (["--workload", "redis"], {"workload": "redis"}),
    "--strategy": (["--strategy", "full"], {"checkpoint_strategy": "full"}),
    "--predump-iterations": (["--predump-iterations", "3"], {"predump_iterations": 3}),
    "--predump-interval": (["--predump-interval", "2.5"], {"predump_interval": 2.5}),
    "--lazy-pages": (["--lazy-pages"], {"lazy_pages": True}),
    "--mb-size": (["--mb-size", "512"], {"mb_size": 512}),
    "--max-memory": (["--max-memory", "8192"], {"max_memory": 8192}),
    "--interval": (["--interval", "0.5"], {"interval": 0.5}),
    "--matrix-size": (["--matrix-size", "4096"], {"matrix_size": 4096}),
    "--iterations": (["--iterations", "10"], {"iterations": 10}),
    "--redis-port": (["--redis-port", "6380"], {"redis_port": 6380}),
    "--num-keys": (["--num-keys", "1000000"], {"num_keys": 1000000}),
    "--value-size": (["--value-size", "4096"], {"value_size": 4096}),
    "--model-size": (["--model-size", "large"], {"model_size": "large"}),
    "--batch-size": (["--batch-size", "32"], {"batch_size": 32}),
    "--epochs": (["--epochs", "2"], {"epochs": 2}),
    "--learning-rate": (["--learning-rate", "0.01"], {"learning_rate": 0.01}),
    "--dataset-size": (["--dataset-size", "5000"], {"dataset_size": 5000}),
    "--resolution": (["--resolution", "3840x2160"], {"resolution": "3840x2160"}),
    "--fps": (["--fps", "60"], {"fps": 60}),
    "--duration": (["--duration", "30"], {"duration": 30}),
    "--video-mode": (["--video-mode", "file"], {"video_mode": "file"}),
    "--num-rows": (["--num-rows", "10000000"], {"num_rows": 10000000}),
    "--num-cols": (["--num-cols", "100"], {"num_cols": 100}),
    "--operations": (["--operations", "5"], {"operations": 5}),
}


def parse(argv: list[str], settings: dict[str, Param] | None = None) -> dict[str, Any]:
    parser, spec = build_parser(settings or SETTINGS, REGISTRY, DEFAULTS, LAB)
    return flag_variables(parser.parse_args(argv), spec)


@pytest.mark.parametrize("flag", sorted(SEED_FLAGS))
def test_every_seed_flag_maps_to_its_variable(flag: str) -> None:
    argv, expected = SEED_FLAGS[flag]
    assert parse(argv) == expected


def test_the_seed_flags_together() -> None:
    argv = [arg for flag in SEED_FLAGS for arg in SEED_FLAGS[flag][0]]
    expected = {key: value for _, wanted in SEED_FLAGS.values() for key, value in wanted.items()}
    assert parse(argv) == expected


def test_every_workload_parameter_has_its_seed_flag() -> None:
    declared = {param.flag for w in REGISTRY.values() for param in w.params.values()}
    seed = {flag for flag in SEED_FLAGS if flag not in ("--workload", "--strategy", "--predump-iterations", "--predump-interval", "--lazy-pages")}  # fmt: skip
    assert seed <= declared


def test_flags_not_given_leave_the_variables_unset() -> None:
    assert parse([]) == {}


def test_every_setting_gets_a_flag_named_after_it() -> None:
    _parser, spec = build_parser(SETTINGS, REGISTRY, DEFAULTS, LAB)
    for name in SETTINGS:
        assert spec.flags[name].startswith("--"), name
    assert spec.flags["checkpoint_strategy"] == "--strategy"  # the seed's name first
    assert parse(["--checkpoint-strategy", "full"]) == {"checkpoint_strategy": "full"}
    assert parse(["--critical-path", "stepwise"]) == {"critical_path": "stepwise"}
    assert parse(["--transfer", "efs"]) == {"transfer": "efs"}
    assert parse(["--page-server", "--no-lazy-pages"]) == {"page_server": True, "lazy_pages": False}


def test_a_new_setting_gets_its_flag_without_code() -> None:
    settings = dict(SETTINGS)
    settings["migrate_after_demo_s"] = Param(
        "migrate_after_demo_s", "float", None, help="a new setting", min=0.0, unit="s"
    )
    assert parse(["--migrate-after-demo-s", "7"], settings) == {"migrate_after_demo_s": 7.0}
    assert setting_group("migrate_after_demo_s") == "when to migrate"


def test_help_groups_the_flags_and_shows_the_defaults() -> None:
    parser, _ = build_parser(SETTINGS, REGISTRY, DEFAULTS, LAB)
    text = parser.format_help()
    for group in (
        "configuration:",
        "experiment:",
        "checkpoint strategy:",
        "transfer:",
        "nodes:",
        "workload parameters: memory:",
        "workload parameters: redis:",
        "sweeps and repetitions:",
    ):
        assert group in text
    flat = " ".join(text.split())
    # group_vars/all.yml's defaults, and the lab's own beside them
    assert f"(default: {DEFAULTS['checkpoint_strategy']}; lab: full)" in flat
    assert f"(default: {DEFAULTS['transfer']})" in flat
    # the declarations' defaults and the lab's sizes
    assert "(default: 256 MB, lab 64)" in flat
    assert "memory 5.0 s, lab 1.0; matmul 1.0 s; dataproc 1.0 s" in flat


@pytest.mark.parametrize(
    "argv",
    [
        ["--strategy", "sometimes"],
        ["--workload", "nginx"],
        ["--mb-size", "lots"],
        ["--predump-interval", "soon"],
        ["--video-mode", "stream"],
        ["--no-such-flag"],
    ],
)
def test_bad_flag_values_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    parser, _ = build_parser(SETTINGS, REGISTRY, DEFAULTS, LAB)
    with pytest.raises(SystemExit) as exc:
        parser.parse_args(argv)
    assert exc.value.code == 2
    assert "run_experiment.py: error:" in capsys.readouterr().err


def test_the_system_python_runs_it_under_the_venv() -> None:
    """`python3 run_experiment.py --help` with the system Python (no ansible_runner there):
    it re-runs itself under .venv and prints the grouped help."""
    python = "/usr/bin/python3" if Path("/usr/bin/python3").exists() else sys.executable
    proc = subprocess.run(
        [python, str(REPO / "run_experiment.py"), "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert "workload parameters: memory:" in proc.stdout
    assert "--source-ip" in proc.stdout and "--dest-ip" in proc.stdout
