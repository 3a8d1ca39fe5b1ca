"""The local lab's hosts as the benchmarks reach them: over the lab's own SSH trust.

Benchmarks run parts of themselves on a lab host (`node`): the hosts share this machine's
filesystem, so the same script file is there, run by the host's /usr/bin/python3.
"""

from __future__ import annotations

import json
import shlex
import subprocess
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
LAB_INVENTORY = REPO / "inventories" / "lab" / "hosts.yml"


class LabHosts:
    """The lab's source and destination (the first pair), and how to run things there."""

    def __init__(self, inventory: Path = LAB_INVENTORY) -> None:
        import yaml

        data = yaml.safe_load(inventory.read_text())
        top = data["all"]["vars"]
        hosts: dict[str, dict[str, Any]] = {}

        def walk(group: dict[str, Any]) -> None:
            hosts.update(group.get("hosts") or {})
            for child in (group.get("children") or {}).values():
                walk(child or {})

        walk(data["all"])
        self.key, self.known_hosts = top["migration_ssh_key"], top["migration_known_hosts"]
        self.source = hosts["source"].get("migration_address") or hosts["source"]["ansible_host"]
        self.destination = (
            hosts["destination"].get("migration_address") or hosts["destination"]["ansible_host"]
        )

    def ssh(self, address: str, command: str) -> str:
        """Run a shell command on a lab host; its stdout (a failure stops the benchmark)."""
        argv = [
            "ssh", "-o", "BatchMode=yes", "-i", self.key, "-o", "IdentitiesOnly=yes",
            "-o", f"UserKnownHostsFile={self.known_hosts}", "-o", "StrictHostKeyChecking=yes",
            "-n", f"root@{address}", command,
        ]  # fmt: skip
        proc = subprocess.run(argv, capture_output=True, text=True, check=False)
        if proc.returncode:
            raise SystemExit(f"on {address}: {command}\n{proc.stdout}{proc.stderr}")
        return proc.stdout

    def node(self, address: str, script: Path, *node_args: str) -> dict[str, Any]:
        """`script --node ...` on a lab host; the JSON object it prints last."""
        command = shlex.join(["/usr/bin/python3", str(script), "--node", *node_args])
        return json.loads(self.ssh(address, command).strip().splitlines()[-1])
