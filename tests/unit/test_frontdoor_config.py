"""Config files (flat presets and the seed's nested layout), precedence, the environment
fallback of the seed's nodes, and the choice of inventory."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from experiment_plan import SETTINGS  # noqa: E402
from workload_registry import load_registry  # noqa: E402

from frontdoor import cli  # noqa: E402
from frontdoor.configfile import (  # noqa: E402
    ConfigError,
    Layer,
    Nodes,
    choose_inventory,
    known_variables,
    merge_layers,
    parse_assignment,
    parse_config,
    read_config,
)

REGISTRY = load_registry(REPO / "workloads")
ALL_VARS = yaml.safe_load((REPO / "group_vars" / "all.yml").read_text())
KNOWN = known_variables(SETTINGS, REGISTRY, ALL_VARS)
SEED_DEFAULT = REPO / "tests" / "fixtures" / "inventories" / "seed_default.yaml"
NO_SERVERS = REPO / "config" / "no-such-servers.yaml"


def parsed(data: Any, environ: dict[str, str] | None = None) -> Any:
    return parse_config(data, "test.yaml", KNOWN, environ or {})


@pytest.mark.parametrize("preset", sorted((REPO / "config" / "experiments").glob("*.yaml")))
def test_every_preset_is_a_flat_config(preset: Path) -> None:
    config = read_config(preset, KNOWN, {})
    assert not config.nested
    assert config.variables == yaml.safe_load(preset.read_text())


def test_the_seeds_nested_layout_maps_to_the_suites_variables() -> None:
    config = read_config(
        SEED_DEFAULT, KNOWN, {"SOURCE_NODE_IP": "10.0.1.10", "DEST_NODE_IP": "10.0.1.11"}
    )
    assert config.nested
    assert config.variables == {
        "experiment_name": "default-experiment",
        "workload": "memory",
        "save_metrics": True,
        "checkpoint_strategy": "predump",
        "predump_iterations": 8,
        "predump_interval": 10,
        "lazy_pages": False,
        "transfer": "rsync",
    }
    assert config.keys["checkpoint_strategy"] == "checkpoint.strategy.mode"
    assert config.nodes is not None
    assert config.nodes.addresses() == ("10.0.1.10", "10.0.1.11")
    assert config.nodes.ssh_user == "ubuntu"


def test_other_settings_by_their_section() -> None:
    config = parsed(
        {
            "checkpoint": {"strategy": {"predump_mode": "adaptive"}, "page_server": True},
            "transfer": {"method": "rsync", "compress": "zstd", "cipher": "aes256-ctr"},
            "experiment": {"deadline_s": 45},
            "workload": {"type": "redis", "num_keys": 5000},
        }
    )
    assert config.variables == {
        "predump_mode": "adaptive",
        "page_server": True,
        "transfer": "rsync",
        "transfer_compress": "zstd",
        "transfer_cipher": "aes256-ctr",
        "deadline_s": 45,
        "workload": "redis",
        "num_keys": 5000,
    }


def test_the_checked_in_default_yaml_sets_nothing_but_the_nodes() -> None:
    """config/default.yaml leaves every value to group_vars (one place per fact)."""
    config = read_config(REPO / "config" / "default.yaml", KNOWN, {})
    assert config.nested and config.variables == {}
    assert config.nodes is not None and config.nodes.written == {
        "source": "${SOURCE_NODE_IP}",
        "destination": "${DEST_NODE_IP}",
    }


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"mb_sise": 64}, "test.yaml: unknown key 'mb_sise': not a variable of the suite (did you mean mb_size?)"),
        ({"checkpoint": {"strategy": {"mood": "full"}}}, "test.yaml: unknown key 'checkpoint.strategy.mood'"),
        ({"transfer": {"methd": "rsync"}}, "test.yaml: unknown key 'transfer.methd'"),
        ({"nodes": {"source": {"address": "x"}}}, "test.yaml: unknown key 'nodes.source.address'"),
        ({"nodes": {"bastion": {}}}, "test.yaml: unknown key 'nodes.bastion'"),
        ({"strategy": "full"}, "test.yaml: 'strategy' is not read: the setting is called checkpoint_strategy"),
        ({"all_nodes": {"az_a": []}}, "belongs to a node file"),
        (["a", "list"], "test.yaml: a config file is a mapping"),
    ],
)  # fmt: skip
def test_unknown_keys_are_named_with_the_file(data: Any, message: str) -> None:
    with pytest.raises(ConfigError) as exc:
        parsed(data)
    assert message in str(exc.value)


def test_a_file_that_does_not_parse_is_named_with_its_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("experiment:\n  name: [unclosed\n")
    with pytest.raises(ConfigError) as exc:
        read_config(bad, KNOWN, {})
    assert str(exc.value).startswith(f"{bad} does not parse as YAML (line")


def test_a_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"missing\.yaml: cannot read it"):
        read_config(tmp_path / "missing.yaml", KNOWN, {})


def test_env_references_are_expanded_and_null_means_unset() -> None:
    config = parsed(
        {"experiment_name": "${RUN_NAME}", "deadline_s": None}, {"RUN_NAME": "night-run"}
    )
    assert config.variables == {"experiment_name": "night-run"}


def test_assignments_are_read_as_yaml() -> None:
    assert parse_assignment("mb_size=64") == ("mb_size", 64)
    assert parse_assignment("interval=0.5") == ("interval", 0.5)
    assert parse_assignment("lazy_pages=true") == ("lazy_pages", True)
    assert parse_assignment("experiment_name=a-b") == ("experiment_name", "a-b")
    with pytest.raises(ConfigError):
        parse_assignment("mb_size")


def test_later_layers_win() -> None:
    merged = merge_layers(
        [
            Layer("group_vars/all.yml", {"checkpoint_strategy": "predump", "transfer": "rsync"}),
            Layer("config/default.yaml", {"checkpoint_strategy": "full"}),
            Layer("a.yaml", {"transfer": "efs", "mb_size": 32}),
            Layer("flags", {"mb_size": 64, "transfer": None}),
        ]
    )
    assert merged == {
        "checkpoint_strategy": ("full", "config/default.yaml"),
        "transfer": ("efs", "a.yaml"),
        "mb_size": (64, "flags"),
    }


# -- the inventory ---------------------------------------------------------------------------


def nodes(source: str, destination: str, **extra: str) -> Nodes:
    return Nodes(
        where="config/default.yaml",
        source_ip=source,
        destination_ip=destination,
        written={"source": "${SOURCE_NODE_IP}", "destination": "${DEST_NODE_IP}"},
        **extra,
    )


def test_default_is_the_lab() -> None:
    choice = choose_inventory(REPO, None, None, None, nodes("", ""), NO_SERVERS)
    assert choice.inventory is None and "local lab" in choice.why


def test_source_and_dest_ip_use_inventories_env() -> None:
    choice = choose_inventory(
        REPO, None, "10.0.1.10", "10.0.1.11", nodes("", "", ssh_user="admin"), NO_SERVERS
    )
    assert choice.inventory == str(REPO / "inventories" / "env")
    assert choice.env == {
        "SOURCE_NODE_IP": "10.0.1.10",
        "DEST_NODE_IP": "10.0.1.11",
        "SSH_USER": "admin",
    }


@pytest.mark.parametrize(("source", "dest"), [("10.0.1.10", None), (None, "10.0.1.11")])
def test_one_address_without_the_other_is_refused(source: str | None, dest: str | None) -> None:
    with pytest.raises(ConfigError, match=r"needs --(dest|source)-ip too"):
        choose_inventory(REPO, None, source, dest, None, NO_SERVERS)


def test_servers_yaml_wins_over_the_environment_fallback(tmp_path: Path) -> None:
    servers = tmp_path / "servers.yaml"
    servers.write_text((REPO / "config" / "servers.example.yaml").read_text())
    choice = choose_inventory(REPO, None, None, None, nodes("10.0.1.10", "10.0.1.11"), servers)
    assert choice.inventory == str(servers)


def test_the_environment_fallback_of_the_seeds_nodes() -> None:
    environ = {"SOURCE_NODE_IP": "10.0.1.10", "DEST_NODE_IP": "10.0.1.11"}
    config = read_config(SEED_DEFAULT, KNOWN, environ)
    choice = choose_inventory(REPO, None, None, None, config.nodes, NO_SERVERS)
    assert choice.inventory == str(REPO / "inventories" / "env")
    assert choice.env == {**environ, "SSH_USER": "ubuntu"}
    # neither variable set: the default inventory
    config = read_config(SEED_DEFAULT, KNOWN, {})
    assert choose_inventory(REPO, None, None, None, config.nodes, NO_SERVERS).inventory is None
    # one of them: refused, naming the unset variable
    config = read_config(SEED_DEFAULT, KNOWN, {"SOURCE_NODE_IP": "10.0.1.10"})
    with pytest.raises(
        ConfigError, match=r"nodes.destination.ip .* is empty: DEST_NODE_IP is not set"
    ):
        choose_inventory(REPO, None, None, None, config.nodes, NO_SERVERS)


def test_inventory_names_and_conflicts() -> None:
    choice = choose_inventory(REPO, "aws_cross_az", None, None, None, NO_SERVERS)
    assert choice.inventory == str(REPO / "inventories" / "aws_cross_az")
    with pytest.raises(ConfigError, match="no such inventory"):
        choose_inventory(REPO, "nowhere", None, None, None, NO_SERVERS)
    with pytest.raises(ConfigError, match="exclude each other"):
        choose_inventory(REPO, "aws_cross_az", "10.0.1.10", "10.0.1.11", None, NO_SERVERS)


# -- precedence through the command line -----------------------------------------------------


@pytest.fixture
def lab_like_inventory(tmp_path: Path) -> Path:
    """Two hosts in group `lab` (so group_vars/lab.yml applies), contacted by nobody."""
    path = tmp_path / "hosts.yml"
    path.write_text(
        yaml.safe_dump(
            {
                "all": {
                    "children": {
                        "lab": {
                            "children": {
                                "source": {"hosts": {"src": {"ansible_host": "192.0.2.1", "migration_peer": "dst"}}},
                                "destination": {"hosts": {"dst": {"ansible_host": "192.0.2.2"}}},
                            }
                        }
                    }
                }
            }
        )
    )  # fmt: skip
    return path


def print_config(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, dict[str, str]]:
    code = cli.main(["--print-config", *argv])
    out = capsys.readouterr().out
    origins = {}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) >= 3 and parts[0] in KNOWN:
            origins[parts[0]] = f"{parts[1]} {' '.join(parts[2:])}"
    return code, origins


def test_precedence_defaults_inventory_config_flags(
    lab_like_inventory: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    preset = tmp_path / "preset.yaml"
    preset.write_text("experiment_name: from-preset\nmb_size: 32\ntransfer_compress: zstd\n")
    _, origins = print_config(
        ["-i", str(lab_like_inventory), "-c", str(preset), "--mb-size", "48"], capsys
    )
    assert origins["checkpoint_strategy"] == "full group_vars/lab.yml"  # inventory > all.yml
    assert origins["critical_path"] == "fused group_vars/all.yml"
    assert origins["experiment_name"] == f"from-preset {preset}"  # config file > defaults
    assert origins["transfer_compress"] == f"zstd {preset}"
    assert origins["mb_size"] == "48 --mb-size"  # flag > config file
    assert origins["max_memory"] == "512 workload_defaults.memory (group_vars/lab.yml)"
    _, origins = print_config(
        ["-i", str(lab_like_inventory), "-c", str(preset), "--set", "experiment_name=flagged"],
        capsys,
    )
    assert origins["experiment_name"] == "flagged --set experiment_name"


def test_print_config_gives_the_equivalent_playbook_command(
    lab_like_inventory: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cli.main(
        ["--print-config", "-i", str(lab_like_inventory), "--strategy", "full", "--mb-size", "64"]
    )
    out = capsys.readouterr().out
    assert "ansible-playbook migrate.yml -i" in out
    assert "-e checkpoint_strategy=full -e mb_size=64" in out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--source-ip", "10.0.1.10"], "--source-ip needs --dest-ip too"),
        (["--sweep", "mb_sise=1,2"], "'mb_sise' is not a setting or a workload parameter (did you mean mb_size?)"),
        (["--sweep", "mb_size=1,1"], "a value is given twice"),
        (["-c", "no-such-file.yaml"], "no-such-file.yaml: cannot read it"),
        (["--repeat", "0"], "--repeat 0: at least 1"),
    ],
)  # fmt: skip
def test_bad_input_exits_2_before_anything_runs(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert "refused (nothing was started on any host)" in err
    assert message in err


def test_a_config_file_with_an_unknown_key_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("checkpoint:\n  strategy:\n    mode: full\n    predump_iteratons: 3\n")
    assert cli.main(["-c", str(bad)]) == 2
    assert f"{bad}: unknown key 'checkpoint.strategy.predump_iteratons'" in capsys.readouterr().err


def test_a_value_the_preflight_refuses_exits_2(
    lab_like_inventory: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The preflight's own validation runs in-process: nothing is started (the inventory's
    addresses are TEST-NET, which nobody answers)."""
    code = cli.main(["-i", str(lab_like_inventory), "--mb-size", "600", "--max-memory", "512"])
    assert code == 2
    err = capsys.readouterr().err
    assert "mb_size=600, max_memory=512 breaks mb_size <= max_memory" in err
    code = cli.main(
        ["-i", str(lab_like_inventory), "--workload", "redis", "--sweep", "mb_size=16,32"]
    )
    assert code == 2
    assert "--sweep mb_size: not a parameter of workload redis" in capsys.readouterr().err


def test_inventories_env_takes_the_efs_mount_path_from_the_environment() -> None:
    """The seed's efs_transfer.yaml with --source-ip / --dest-ip needs the shared
    filesystem's mount point: EFS_MOUNT_PATH (or --set efs_mount_path=...)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "env_hosts", REPO / "inventories" / "env" / "hosts.py"
    )
    assert spec is not None and spec.loader is not None
    hosts = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hosts)
    environ = {
        "SOURCE_NODE_IP": "10.0.1.10",
        "DEST_NODE_IP": "10.0.1.11",
        "EFS_MOUNT_PATH": "/mnt/efs",
    }
    hostvars = hosts.build_inventory(environ)["_meta"]["hostvars"]
    assert {host: v["efs_mount_path"] for host, v in hostvars.items()} == {
        "source-node": "/mnt/efs",
        "destination-node": "/mnt/efs",
    }
    environ.pop("EFS_MOUNT_PATH")
    assert (
        "efs_mount_path" not in hosts.build_inventory(environ)["_meta"]["hostvars"]["source-node"]
    )
