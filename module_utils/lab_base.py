"""What both local lab flavours (namespaces, QEMU guests) do alike.

`library/local_lab.py` and `library/guest_lab.py` build on `LabBase`: commands, the state
file, SSH keys, the private bridge (with its fixed MAC, refusing a subnet another link
already has), and whether sshd answers. The labs start, watch and stop processes with
`module_utils/processes.py`. Standard library only.
"""

from __future__ import annotations

import ipaddress
import json
import socket
import subprocess
from pathlib import Path
from typing import Any

from ansible.module_utils.lab_layout import bridge_address, bridge_mac, bridge_name


class LabError(Exception):
    """A lab operation that failed, with what to tell the user."""


# How long a lab waits for the processes it killed to be gone.
GONE_TIMEOUT_S = 15.0


def ssh_banner(address: str, timeout: float) -> bool:
    """Whether an sshd answers on address:22."""
    try:
        with socket.create_connection((address, 22), timeout=timeout) as conn:
            conn.settimeout(timeout)
            return conn.recv(64).startswith(b"SSH-")
    except OSError:
        return False


class LabBase:
    def __init__(self, module: Any, binaries: tuple[str, ...]) -> None:
        self.module = module
        self.dir = Path(module.params["lab_dir"])
        self.subnet: str = module.params["subnet"]
        self.prefix: str = module.params["prefix"]
        self.bridge = bridge_name(self.prefix)
        self.state_file = self.dir / "state.json"
        self.key = self.dir / "id_ed25519"
        self.known_hosts = self.dir / "known_hosts"
        self.bins = {
            name: module.get_bin_path(name, required=True, opt_dirs=["/usr/sbin", "/sbin"])
            for name in ("ip", "ssh-keygen", *binaries)
        }

    def run(self, argv: list[str], check: bool = True) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            argv,
            capture_output=True,
            text=True,
            stdin=subprocess.DEVNULL,
            close_fds=True,
            check=False,
        )
        if check and proc.returncode != 0:
            raise LabError(
                f"{' '.join(argv)} failed (rc={proc.returncode}): "
                f"{proc.stderr.strip() or proc.stdout.strip()}"
            )
        return proc

    # -- state -----------------------------------------------------------------------------
    def load_state(self) -> dict[str, Any]:
        try:
            return json.loads(self.state_file.read_text())
        except (OSError, ValueError):
            return {"hosts": {}}

    def save_state(self, state: dict[str, Any]) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=2, sort_keys=True))
        tmp.replace(self.state_file)

    def keygen(self, path: Path, comment: str) -> None:
        """An ed25519 key pair at `path`, made once and kept (pinned host keys stay valid)."""
        if path.exists():
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        self.run(
            [
                self.bins["ssh-keygen"],
                "-q",
                "-t",
                "ed25519",
                "-N",
                "",
                "-C",
                comment,
                "-f",
                str(path),
            ]
        )

    # -- network ---------------------------------------------------------------------------
    def link_exists(self, name: str) -> bool:
        return self.run([self.bins["ip"], "link", "show", "dev", name], check=False).returncode == 0

    def links(self) -> list[str]:
        out = self.run([self.bins["ip"], "-o", "link", "show"]).stdout
        return [line.split(":")[1].strip().split("@")[0] for line in out.splitlines()]

    def refuse_subnet_in_use(self) -> None:
        """The lab's /24 must exist only on its bridge: refuse one another link has."""
        network = ipaddress.ip_network(self.subnet)
        out = self.run([self.bins["ip"], "-o", "-4", "addr", "show"]).stdout
        for line in out.splitlines():
            fields = line.split()
            link, address = fields[1], fields[3]
            if ipaddress.ip_interface(address).network.overlaps(network) and link != self.bridge:
                raise LabError(
                    f"subnet {self.subnet} is already in use on {link} ({address}); "
                    "choose another lab_subnet"
                )

    def ensure_bridge(self) -> bool:
        """The lab's bridge with the control node's address; True when it was created."""
        if self.link_exists(self.bridge):
            return False
        self.refuse_subnet_in_use()
        ip = self.bins["ip"]
        # A fixed MAC: else the bridge takes its lowest port's, which changes when a host
        # is recreated, and the hosts' ARP caches go stale.
        self.run(
            [ip, "link", "add", self.bridge, "address", bridge_mac(self.subnet), "type", "bridge"]
        )
        self.run([ip, "addr", "add", bridge_address(self.subnet), "dev", self.bridge])
        self.run([ip, "link", "set", self.bridge, "up"])
        return True

    def remove_network_and_state(self, is_ours: Any) -> list[str]:
        """Delete this lab's links (`is_ours(name)`, and the bridge, last) and its state files."""
        leftover = [link for link in self.links() if is_ours(link) or link == self.bridge]
        for link in sorted(leftover, key=lambda name: name == self.bridge):
            self.run([self.bins["ip"], "link", "del", link], check=False)
        self.state_file.unlink(missing_ok=True)
        self.known_hosts.unlink(missing_ok=True)
        return leftover
