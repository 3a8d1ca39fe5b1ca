"""The fallback inventories, read with the real `ansible-inventory --list`.

- inventories/env: hosts from SOURCE_NODE_IP / DEST_NODE_IP (the seed's fallback);
- the seed's config/servers.yaml, through inventory_plugins/seed_servers.py.

Both put one host in each of the groups `source` and `destination`, and refuse a missing
or empty address with a message naming it.
"""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from helpers import run_ansible_inventory

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "tests" / "fixtures" / "inventories"
ENV_INVENTORY = REPO / "inventories" / "env"
# What ansible.cfg's [inventory] enable_plugins must say: seed_servers before yaml.
ENABLED_PLUGINS = "host_list, script, auto, seed_servers, yaml, ini"
NODE_VARIABLES = ("SOURCE_NODE_IP", "DEST_NODE_IP", "SSH_USER", "SSH_KEY_FILE")


@dataclass
class Inventory:
    returncode: int
    listing: dict
    stderr: str

    def hosts(self, group: str) -> list[str]:
        return self.listing.get(group, {}).get("hosts", [])

    def hostvars(self, host: str) -> dict:
        return plain(self.listing["_meta"]["hostvars"][host])

    @property
    def one_line_stderr(self) -> str:
        return " ".join(self.stderr.split())


def ansible_inventory(
    source: Path, tmp: Path, environ: dict[str, str] | None = None, *, suite_config: bool = False
) -> Inventory:
    """`ansible-inventory -i source --list` from the repository root (its ansible.cfg).

    Unless suite_config, the plugin settings are given explicitly, so the test does not
    depend on what ansible.cfg says today.
    """
    env = {k: v for k, v in os.environ.items() if k not in NODE_VARIABLES}
    env["ANSIBLE_HOME"] = str(tmp / "ansible-home")
    env["ANSIBLE_LOCAL_TEMP"] = str(tmp / "ansible-tmp")
    if not suite_config:
        env["ANSIBLE_INVENTORY_PLUGINS"] = str(REPO / "inventory_plugins")
        env["ANSIBLE_INVENTORY_ENABLED"] = ENABLED_PLUGINS
    env.update(environ or {})
    result = run_ansible_inventory(source, env)
    listing = json.loads(result.stdout) if result.stdout.strip() else {}
    return Inventory(result.returncode, listing, result.stderr)


def plain(value):
    """Values set by an inventory plugin are not templates; the listing marks them unsafe."""
    if isinstance(value, dict):
        if set(value) == {"__ansible_unsafe"}:
            return value["__ansible_unsafe"]
        return {key: plain(item) for key, item in value.items()}
    if isinstance(value, list):
        return [plain(item) for item in value]
    return value


def write_yaml(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


# --- inventories/env --------------------------------------------------------------


def test_env_inventory_builds_the_two_hosts(tmp_path):
    inventory = ansible_inventory(
        ENV_INVENTORY, tmp_path, {"SOURCE_NODE_IP": "10.0.1.10", "DEST_NODE_IP": "10.0.1.11"}
    )
    assert inventory.returncode == 0, inventory.stderr
    assert inventory.hosts("source") == ["source-node"]
    assert inventory.hosts("destination") == ["destination-node"]
    assert sorted(inventory.hosts("env")) == ["destination-node", "source-node"]

    source, destination = inventory.hostvars("source-node"), inventory.hostvars("destination-node")
    assert source["ansible_host"] == source["migration_address"] == "10.0.1.10"
    assert destination["ansible_host"] == destination["migration_address"] == "10.0.1.11"
    assert source["migration_peer"] == "destination-node"
    # group_vars/env.yml, found through inventories/env/group_vars/ from any playbook folder
    for hostvars in (source, destination):
        assert hostvars["ansible_user"] == "ubuntu"
        assert hostvars["ansible_become"] is True
        assert hostvars["ansible_ssh_private_key_file"] == "~/.ssh/id_ed25519"
        assert hostvars["ansible_python_interpreter"] == "/usr/bin/python3"
        assert hostvars["checkpoint_strategy"] == "predump"


def test_env_inventory_takes_the_login_from_the_environment(tmp_path):
    inventory = ansible_inventory(
        ENV_INVENTORY,
        tmp_path,
        {
            "SOURCE_NODE_IP": " 10.0.1.10 ",
            "DEST_NODE_IP": "node-b.example.internal",
            "SSH_USER": "admin",
            "SSH_KEY_FILE": "~/.ssh/lab_key",
        },
    )
    assert inventory.returncode == 0, inventory.stderr
    assert inventory.hostvars("source-node")["ansible_host"] == "10.0.1.10"
    assert inventory.hostvars("destination-node")["ansible_host"] == "node-b.example.internal"
    for host in ("source-node", "destination-node"):
        assert inventory.hostvars(host)["ansible_user"] == "admin"
        assert inventory.hostvars(host)["ansible_ssh_private_key_file"] == "~/.ssh/lab_key"


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"SOURCE_NODE_IP": "10.0.1.10"}, "DEST_NODE_IP is not set or empty"),
        ({"SOURCE_NODE_IP": "10.0.1.10", "DEST_NODE_IP": ""}, "DEST_NODE_IP is not set or empty"),
        (
            {"SOURCE_NODE_IP": "  ", "DEST_NODE_IP": "10.0.1.11"},
            "SOURCE_NODE_IP is not set or empty",
        ),
        (
            {"SOURCE_NODE_IP": "10.0.1.10 10.0.1.11", "DEST_NODE_IP": "10.0.1.12"},
            "SOURCE_NODE_IP='10.0.1.10 10.0.1.11' is not one IP address or host name",
        ),
    ],
)
def test_env_inventory_refuses_a_missing_or_bad_address(tmp_path, environ, message):
    inventory = ansible_inventory(ENV_INVENTORY, tmp_path, environ)
    assert message in inventory.one_line_stderr
    assert inventory.hosts("source") == [] and inventory.hosts("destination") == []
    # With [inventory] any_unparsed_is_failed the run stops there, with the same message.
    strict = ansible_inventory(
        ENV_INVENTORY, tmp_path, {**environ, "ANSIBLE_INVENTORY_ANY_UNPARSED_IS_FAILED": "true"}
    )
    assert strict.returncode != 0
    assert message in strict.one_line_stderr


def test_env_inventory_script_answers_host_queries():
    env = {**os.environ, "SOURCE_NODE_IP": "10.0.1.10", "DEST_NODE_IP": "10.0.1.11"}
    result = subprocess.run(
        [str(ENV_INVENTORY / "hosts.py"), "--host", "source-node"],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    assert json.loads(result.stdout)["migration_peer"] == "destination-node"


# --- the seed's config/servers.yaml -------------------------------------------------


def test_seed_servers_file_is_an_inventory(tmp_path):
    inventory = ansible_inventory(FIXTURES / "seed_servers.yaml", tmp_path)
    assert inventory.returncode == 0, inventory.stderr
    assert inventory.hosts("source") == ["az-a-node-0"]
    assert inventory.hosts("destination") == ["az-c-node-0"]
    assert sorted(inventory.hosts("seed")) == ["az-a-node-0", "az-a-node-1", "az-c-node-0"]
    assert inventory.hosts("az_a") == ["az-a-node-0", "az-a-node-1"]
    assert inventory.hosts("az_c") == ["az-c-node-0"]

    source = inventory.hostvars("az-a-node-0")
    assert source["ansible_host"] == source["migration_address"] == "192.168.10.100"
    assert source["migration_peer"] == "az-c-node-0"
    assert inventory.hostvars("az-c-node-0")["migration_address"] == "192.168.20.100"
    for host in ("az-a-node-0", "az-a-node-1", "az-c-node-0"):
        hostvars = inventory.hostvars(host)
        assert hostvars["ansible_user"] == "admin"
        assert hostvars["ansible_ssh_private_key_file"] == "~/.ssh/lab_key"
        assert hostvars["ansible_become"] is True
    assert "nodes" not in inventory.listing, "read by the yaml plugin instead"


def test_the_shipped_example_is_a_valid_seed_file(tmp_path):
    inventory = ansible_inventory(REPO / "config" / "servers.example.yaml", tmp_path)
    assert inventory.returncode == 0, inventory.stderr
    assert inventory.hosts("source") == ["az-a-node-0"]
    assert inventory.hosts("destination") == ["az-a-node-1"]
    assert inventory.hostvars("az-a-node-0")["ansible_user"] == "ubuntu"


def test_seed_default_yaml_takes_addresses_from_the_environment(tmp_path):
    inventory = ansible_inventory(
        FIXTURES / "seed_default.yaml",
        tmp_path,
        {"SOURCE_NODE_IP": "10.0.1.10", "DEST_NODE_IP": "10.0.1.11"},
    )
    assert inventory.returncode == 0, inventory.stderr
    assert inventory.hosts("source") == ["source-node"]
    assert inventory.hosts("destination") == ["destination-node"]
    assert inventory.hostvars("source-node")["ansible_host"] == "10.0.1.10"
    assert inventory.hostvars("destination-node")["ansible_host"] == "10.0.1.11"

    unset = ansible_inventory(
        FIXTURES / "seed_default.yaml", tmp_path, {"SOURCE_NODE_IP": "10.0.1.10"}
    )
    assert (
        "nodes.destination.ip is empty: it is '${DEST_NODE_IP}' and DEST_NODE_IP is not set"
        in unset.one_line_stderr
    )
    assert unset.hosts("destination") == []


def seed_variant(tmp_path: Path, change) -> Path:
    data = yaml.safe_load((FIXTURES / "seed_servers.yaml").read_text(encoding="utf-8"))
    change(data)
    return write_yaml(tmp_path / "servers.yaml", data)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d["nodes"].pop("source"), "nodes.source is missing"),
        (lambda d: d["nodes"].pop("destination"), "nodes.destination is missing"),
        (lambda d: d["nodes"]["destination"].update(ip=""), "nodes.destination.ip is empty"),
        (lambda d: d["nodes"]["source"].pop("ip"), "nodes.source.ip is empty"),
        (lambda d: d["all_nodes"]["az_c"][0].update(ip=" "), "all_nodes.az_c[0].ip is empty"),
        (
            lambda d: d["all_nodes"]["az_c"][0].update(ip="192.168.20.200"),
            "az-c-node-0 is 192.168.20.100 in nodes but 192.168.20.200 in all_nodes.az_c[0]",
        ),
    ],
)
def test_seed_file_with_a_missing_node_or_address_is_refused(tmp_path, change, message):
    inventory = ansible_inventory(seed_variant(tmp_path, change), tmp_path)
    assert f"servers.yaml: {message}" in inventory.one_line_stderr
    assert "ERROR" in inventory.stderr
    assert inventory.hosts("source") == [] and inventory.hosts("destination") == []
    assert "seed" not in inventory.listing


def test_a_yaml_inventory_with_a_nodes_group_is_left_to_the_yaml_plugin(tmp_path):
    inventory = ansible_inventory(FIXTURES / "yaml_inventory_with_nodes_group.yml", tmp_path)
    assert inventory.returncode == 0, inventory.stderr
    assert inventory.hosts("nodes") == ["node-1"]
    assert inventory.hosts("source") == ["node-1"]
    assert "seed" not in inventory.listing


def test_the_suite_config_reads_seed_files(tmp_path):
    """ansible.cfg itself enables seed_servers ahead of yaml (see ENABLED_PLUGINS)."""
    inventory = ansible_inventory(FIXTURES / "seed_servers.yaml", tmp_path, suite_config=True)
    assert inventory.returncode == 0, inventory.stderr
    assert inventory.hosts("source") == ["az-a-node-0"], (
        f"ansible.cfg must have `enable_plugins = {ENABLED_PLUGINS}` under [inventory]"
    )
