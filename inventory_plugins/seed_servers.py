"""Inventory plugin: the seed framework's config/servers.yaml as an inventory source."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import yaml
from ansible.errors import AnsibleParserError
from ansible.plugins.inventory import BaseFileInventoryPlugin

DOCUMENTATION = r"""
name: seed_servers
short_description: The seed framework's C(config/servers.yaml) as an inventory source
description:
  - Reads the node file of the framework this suite replaces, so its users keep their files
    (C(ansible-playbook migrate.yml -i config/servers.yaml)). Example in
    C(config/servers.example.yaml).
  - C(nodes.source) and C(nodes.destination) (each an C(ip) and an optional C(name)) become
    the hosts of groups C(source) and C(destination); the source gets C(migration_peer).
  - Every C(all_nodes.<key>) list becomes a group named after its key (C(az_a), C(az_c));
    all hosts are in group C(seed).
  - C(nodes.ssh_user) (default C(ubuntu), as in the seed) and C(nodes.ssh_key) become
    C(ansible_user) and C(ansible_ssh_private_key_file); the group C(seed) gets
    C(ansible_become=true), C(ansible_python_interpreter=/usr/bin/python3) and the
    transfer key paths that C(playbooks/bootstrap.yml) installs, as the cloud inventories do.
  - C(${VAR}) in a value is replaced by the environment variable C(VAR), as the seed did.
  - The plugin claims a C(.yaml)/C(.yml) file whose top level has a C(nodes) mapping with
    C(source), C(destination), C(ssh_user) or C(ssh_key), or an C(all_nodes) mapping. It
    must come before C(yaml) in C([inventory] enable_plugins), which would otherwise read
    such a file as two empty groups.
notes:
  - A missing C(nodes.source) or C(nodes.destination), or an empty C(ip), is an error that
    names the field (and the unset environment variable, for C(${VAR}) values).
"""

EXAMPLES = r"""
# config/servers.yaml, as the seed's Terraform wrote it
nodes:
  ssh_user: ubuntu
  ssh_key: ~/.ssh/id_ed25519
  source:
    ip: 192.168.10.100
    name: az-a-node-0
  destination:
    ip: 192.168.10.101
    name: az-a-node-1
all_nodes:
  az_a:
    - {ip: 192.168.10.100, name: az-a-node-0}
    - {ip: 192.168.10.101, name: az-a-node-1}
  az_c:
    - {ip: 192.168.20.100, name: az-c-node-0}

# ansible-inventory -i config/servers.yaml --graph
"""

ROLES = ("source", "destination")
SEED_NODE_KEYS = {"source", "destination", "ssh_user", "ssh_key"}
YAML_INVENTORY_KEYS = {"hosts", "children", "vars"}
ENV_REFERENCE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
GROUP_NAME = re.compile(r"[^A-Za-z0-9_]")
# What the seed's nodes are: Ubuntu cloud machines reached as a sudo-capable user.
SEED_GROUP_VARS = {
    "ansible_user": "ubuntu",  # the seed's default; nodes.ssh_user sets it per host
    "ansible_become": True,
    "ansible_python_interpreter": "/usr/bin/python3",
    "ansible_ssh_common_args": "-o StrictHostKeyChecking=accept-new",
    # installed by playbooks/bootstrap.yml for the rsync transfer (as in group_vars/aws.yml)
    "migration_ssh_key": "/root/.ssh/criu-migration-transfer",
    "migration_known_hosts": "/root/.ssh/criu-migration-known_hosts",
}


class SeedServersError(ValueError):
    """The file has the seed's shape but cannot describe a migration."""


@dataclass
class SeedInventory:
    """Hosts (name → variables) and groups (name → host names) read from a seed file."""

    hosts: dict[str, dict[str, Any]] = field(default_factory=dict)
    groups: dict[str, list[str]] = field(default_factory=dict)


def looks_like_seed_servers(data: Any) -> bool:
    """True for the seed's servers.yaml shape, false for a YAML inventory or plugin config."""
    if not isinstance(data, Mapping) or "plugin" in data:
        return False
    nodes = data.get("nodes")
    if isinstance(nodes, Mapping) and not YAML_INVENTORY_KEYS & set(nodes):
        return bool(SEED_NODE_KEYS & set(nodes))
    all_nodes = data.get("all_nodes")
    return isinstance(all_nodes, Mapping) and all(
        isinstance(entries, list) for entries in all_nodes.values()
    )


def expand(value: Any, where: str, environ: Mapping[str, str]) -> str:
    """`value` as text with ${VAR} replaced from `environ`; empty is an error naming `where`."""
    text = "" if value is None else str(value).strip()
    unset = [name for name in ENV_REFERENCE.findall(text) if not environ.get(name, "").strip()]
    expanded = ENV_REFERENCE.sub(lambda match: environ.get(match.group(1), "").strip(), text)
    if not expanded.strip():
        if unset:
            raise SeedServersError(
                f"{where} is empty: it is {text!r} and {', '.join(unset)} is not set"
            )
        raise SeedServersError(f"{where} is empty")
    return expanded.strip()


def read_seed_servers(data: Any, environ: Mapping[str, str]) -> SeedInventory:
    """The inventory a seed servers.yaml describes; SeedServersError names what is wrong."""
    nodes = data.get("nodes") if isinstance(data, Mapping) else None
    if not isinstance(nodes, Mapping):
        raise SeedServersError(
            "nodes is missing: a seed servers.yaml needs nodes.source.ip and nodes.destination.ip"
        )
    login: dict[str, Any] = {}
    if nodes.get("ssh_user"):
        login["ansible_user"] = expand(nodes["ssh_user"], "nodes.ssh_user", environ)
    if nodes.get("ssh_key"):
        login["ansible_ssh_private_key_file"] = expand(nodes["ssh_key"], "nodes.ssh_key", environ)

    inventory = SeedInventory()
    by_address: dict[str, str] = {}
    for role in ROLES:
        entry = nodes.get(role)
        if entry is None:
            raise SeedServersError(
                f"nodes.{role} is missing: a seed servers.yaml needs nodes.source and "
                "nodes.destination, each with an ip (and a name)"
            )
        if not isinstance(entry, Mapping):
            raise SeedServersError(f"nodes.{role} must be a mapping with ip and name")
        address = expand(entry.get("ip"), f"nodes.{role}.ip", environ)
        name = str(entry.get("name") or f"{role}-node")
        if name in inventory.hosts:
            raise SeedServersError(f"nodes.source and nodes.destination are both {name!r}")
        inventory.hosts[name] = {"ansible_host": address, "migration_address": address, **login}
        inventory.groups[role] = [name]
        by_address.setdefault(address, name)
    source, destination = inventory.groups["source"][0], inventory.groups["destination"][0]
    inventory.hosts[source]["migration_peer"] = destination

    all_nodes = data.get("all_nodes") or {}
    if not isinstance(all_nodes, Mapping):
        raise SeedServersError("all_nodes must map an AZ key (az_a, az_c) to a list of nodes")
    for az_key, entries in all_nodes.items():
        group = GROUP_NAME.sub("_", str(az_key))
        if not isinstance(entries, list):
            raise SeedServersError(f"all_nodes.{az_key} must be a list of nodes (ip, name)")
        inventory.groups.setdefault(group, [])
        for index, entry in enumerate(entries):
            where = f"all_nodes.{az_key}[{index}]"
            if not isinstance(entry, Mapping):
                raise SeedServersError(f"{where} must be a mapping with ip and name")
            address = expand(entry.get("ip"), f"{where}.ip", environ)
            name = str(entry.get("name") or by_address.get(address) or address)
            known = inventory.hosts.get(name)
            if known is not None and known["ansible_host"] != address:
                raise SeedServersError(
                    f"{name} is {known['ansible_host']} in nodes but {address} in {where}"
                )
            name = by_address.get(address, name)
            inventory.hosts.setdefault(
                name, {"ansible_host": address, "migration_address": address, **login}
            )
            by_address.setdefault(address, name)
            if name not in inventory.groups[group]:
                inventory.groups[group].append(name)
    return inventory


def load_yaml(path: str) -> Any:
    with open(path, encoding="utf-8") as stream:
        return yaml.safe_load(stream)


class InventoryModule(BaseFileInventoryPlugin):
    NAME = "seed_servers"

    def verify_file(self, path: str) -> bool:
        if not super().verify_file(path) or not path.endswith((".yaml", ".yml")):
            return False
        try:
            return looks_like_seed_servers(load_yaml(path))
        except (OSError, yaml.YAMLError):
            return False

    def parse(self, inventory, loader, path, cache=True):
        super().parse(inventory, loader, path, cache)
        try:
            seed = read_seed_servers(load_yaml(path), os.environ)
        except (OSError, yaml.YAMLError, SeedServersError) as exc:
            message = f"{path}: {exc}"
            # Ansible hands a file this plugin rejects on to the next plugins, and `yaml`
            # accepts any mapping (two empty groups, no error): say why here, every time.
            self.display.error(message)
            raise AnsibleParserError(message) from exc

        self.inventory.add_group("seed")
        for name, hostvars in seed.hosts.items():
            self.inventory.add_host(name, group="seed")
            for key, value in hostvars.items():
                self.inventory.set_variable(name, key, value)
        for group, names in seed.groups.items():
            self.inventory.add_group(group)
            for name in names:
                self.inventory.add_child(group, name)
        for key, value in SEED_GROUP_VARS.items():
            self.inventory.set_variable("seed", key, value)
