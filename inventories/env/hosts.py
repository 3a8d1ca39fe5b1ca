#!/usr/bin/env python3
"""Ansible inventory built from environment variables, as the seed's fallback did.

    SOURCE_NODE_IP   address of the source node       (required)
    DEST_NODE_IP     address of the destination node  (required)
    SSH_USER         login on both nodes               (optional; group_vars/env.yml: ubuntu)
    SSH_KEY_FILE     private key for that login        (optional; group_vars/env.yml: ~/.ssh/id_ed25519)
    EFS_MOUNT_PATH   where both nodes mount the shared filesystem (optional; transfer=efs)

Hosts `source-node` and `destination-node`, in groups `source`, `destination` and `env`. Used as
`-i inventories/env`; Ansible runs this script with `--list`. Standard library only.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import re
import sys
from collections.abc import Mapping

# Host names differ from the group names, which Ansible would warn about.
HOSTS = {"source": "source-node", "destination": "destination-node"}
ADDRESS_VARIABLES = {"source": "SOURCE_NODE_IP", "destination": "DEST_NODE_IP"}
OPTIONAL_VARIABLES = {
    "SSH_USER": "ansible_user",
    "SSH_KEY_FILE": "ansible_ssh_private_key_file",
    "EFS_MOUNT_PATH": "efs_mount_path",
}
HOSTNAME = re.compile(
    r"^(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$"
)


class InventoryError(Exception):
    """The environment does not describe two usable nodes."""


def node_address(environ: Mapping[str, str], variable: str) -> str:
    """The address in `variable`: an IP address or a DNS name."""
    value = environ.get(variable, "").strip()
    if not value:
        raise InventoryError(
            f"{variable} is not set or empty: export {variable}=<IP address of the "
            f"{'source' if variable == 'SOURCE_NODE_IP' else 'destination'} node> "
            "before using -i inventories/env"
        )
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        if HOSTNAME.match(value):
            return value
    raise InventoryError(f"{variable}={value!r} is not one IP address or host name")


def build_inventory(environ: Mapping[str, str]) -> dict:
    """The `--list` document for the two nodes described by `environ`."""
    errors, addresses = [], {}
    for role, variable in ADDRESS_VARIABLES.items():
        try:
            addresses[role] = node_address(environ, variable)
        except InventoryError as exc:
            errors.append(str(exc))
    if errors:
        raise InventoryError("; ".join(errors))

    login = {
        ansible_var: environ[variable].strip()
        for variable, ansible_var in OPTIONAL_VARIABLES.items()
        if environ.get(variable, "").strip()
    }
    hostvars = {
        HOSTS[role]: {"ansible_host": address, "migration_address": address, **login}
        for role, address in addresses.items()
    }
    hostvars[HOSTS["source"]]["migration_peer"] = HOSTS["destination"]
    return {
        "_meta": {"hostvars": hostvars},
        "all": {"children": ["env", "source", "destination"]},
        "env": {"hosts": list(HOSTS.values())},
        "source": {"hosts": [HOSTS["source"]]},
        "destination": {"hosts": [HOSTS["destination"]]},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--list", action="store_true", help="print the whole inventory")
    mode.add_argument("--host", metavar="NAME", help="print one host's variables")
    args = parser.parse_args(argv)

    try:
        inventory = build_inventory(os.environ)
    except InventoryError as exc:
        print(f"inventories/env: {exc}", file=sys.stderr)
        return 1
    if args.list:
        print(json.dumps(inventory, indent=2, sort_keys=True))
    else:
        print(
            json.dumps(inventory["_meta"]["hostvars"].get(args.host, {}), indent=2, sort_keys=True)
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
