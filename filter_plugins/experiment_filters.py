"""Jinja filters for the preflight: validate and plan an experiment before any host is touched."""

from __future__ import annotations

import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "module_utils"))

from experiment_plan import (
    DEFAULTS_FILE,
    gating_errors,
    load_setting_defaults,
    plan_experiment,
    required_ports,
)
from transfer_backends import request_from_options, ssh_command, tools_for
from workload_registry import load_registry


def migration_plan(
    groups: Mapping[str, list[str]],
    hostvars: Any,
    registry_dir: str,
    defaults_file: str = str(DEFAULTS_FILE),
) -> dict[str, Any]:
    """Validate the experiment (read from the first source host's variables) and its pairs.

    `defaults_file`: group_vars/all.yml, whose defaults stand in for empty values.
    """

    def host_var(host: str, name: str) -> Any:
        try:
            return hostvars[host].get(name)
        except KeyError:
            return None

    sources = list(groups.get("source") or [])
    variables: Mapping[str, Any] = hostvars[sources[0]] if sources else hostvars["localhost"]
    registry = load_registry(registry_dir)
    defaults = load_setting_defaults(defaults_file)
    return plan_experiment(variables, registry, groups, host_var, defaults).as_dict()


def migration_gating(
    facts: dict[str, Any], host: str, role: str, settings: dict[str, Any], workload: dict[str, Any]
) -> list[str]:
    """Kernel / CRIU features `host` lacks for the experiment (criu role facts)."""
    return gating_errors(facts, host, role, settings, workload)


def migration_ports(
    workload: dict[str, Any], role: str, settings: dict[str, Any], params: dict[str, Any]
) -> list[dict[str, Any]]:
    """Ports that must be free on a pair host."""
    return required_ports(workload, role, settings, params)


def migration_transfer_tools(settings: dict[str, Any], side: str) -> list[str]:
    """The programs the experiment's transfer runs on `side` (from the backends' registry)."""
    return tools_for(settings["transfer"], settings["transfer_compress"], side)


def migration_ssh_argv(link: dict[str, Any], remote: list[str]) -> list[str]:
    """The ssh argv that runs `remote` on the destination with the transfer's trust (key,
    pinned known_hosts, port, cipher): what the transfer and the fused critical path use."""
    request = request_from_options(link, ["/"])
    return [*ssh_command(request), f"{request.user}@{request.destination}", "--", *remote]


def migration_port_message(item: dict[str, Any], host: str) -> str:
    return f"port {item['port']} is already in use on {host} (needed by {item['why']})"


class FilterModule:
    def filters(self) -> dict[str, Any]:
        return {
            "migration_plan": migration_plan,
            "migration_gating": migration_gating,
            "migration_ports": migration_ports,
            "migration_port_message": migration_port_message,
            "migration_transfer_tools": migration_transfer_tools,
            "migration_ssh_argv": migration_ssh_argv,
        }
