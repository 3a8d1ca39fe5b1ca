"""The built-in local lab's layout: host names, addresses, link names, sshd config.

Pure functions, so the layout is unit-tested without starting anything.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

# Links are named <prefix><n> (control side), <prefix>p<n> (host side before the rename)
# and the bridge <prefix>0, so two labs with different prefixes can coexist (tests).
DEFAULT_PREFIX = "crlab"
DEFAULT_SUBNET = "10.77.0.0/24"
# Mount points inside each host. The private ones are tmpfs: the host's own "disk", and its
# own POSIX shared memory (/dev/shm), as on a machine of its own.
PRIVATE_MOUNTS = ("/run", "/root", "/tmp", "/var/log", "/var/lib/criu-migration", "/dev/shm")
# Everyone may create files there (mode 1777, as on any machine).
STICKY_MOUNTS = ("/tmp", "/dev/shm")
# Each host's own namespaces (unshare's options; /proc/<pid>/ns/ names in NS_FILES): its
# processes, mounts, name, network, and SysV IPC (shared memory, semaphores, message queues)
# - with the host's /dev/shm, a workload's shared memory is the host's, not the machine's.
HOST_NAMESPACES = ("pid", "mount", "uts", "net", "ipc")
NS_FILES = {"pid": "pid", "mount": "mnt", "uts": "uts", "net": "net", "ipc": "ipc"}
SHARED_MOUNT = "/mnt/criu-shared"
# Source hosts allocate PIDs from here up (pid_max is 32768 on this machine kind), so a
# workload's PID is free on its destination, whose own PIDs stay low.
SOURCE_FIRST_PID = 16000
INIT_MARKER = "criu-lab-init"


@dataclass(frozen=True)
class LabHost:
    name: str
    group: str  # "source" or "destination"
    index: int  # 1-based position, stable for a given pair count
    address: str
    peer: str  # the other host of the pair
    prefix: str = DEFAULT_PREFIX

    @property
    def link(self) -> str:
        """The control-side end of the host's veth pair (<= 15 chars)."""
        return f"{self.prefix}{self.index}"

    @property
    def link_peer(self) -> str:
        """The host-side end before it is moved into the host and renamed eth0."""
        return f"{self.prefix}p{self.index}"


def bridge_name(prefix: str = DEFAULT_PREFIX) -> str:
    return f"{prefix}0"


def is_lab_link(name: str, prefix: str = DEFAULT_PREFIX) -> bool:
    """Whether a network link belongs to the lab with this prefix."""
    return re.fullmatch(rf"{re.escape(prefix)}p?\d+", name) is not None


def lab_hosts(
    pairs: int, subnet: str = DEFAULT_SUBNET, prefix: str = DEFAULT_PREFIX
) -> list[LabHost]:
    """Hosts for `pairs` source/destination pairs.

    One pair is named `source` / `destination` (as every inventory names them); several are `source-1` /
    `destination-1`, `source-2`, ...
    """
    if pairs < 1:
        raise ValueError(f"lab_pairs must be at least 1, got {pairs}")
    if not re.fullmatch(r"[a-z]{1,8}", prefix):
        raise ValueError(
            f"lab prefix {prefix!r} must be 1-8 lowercase letters (link names <= 15 chars)"
        )
    network = ipaddress.ip_network(subnet)
    if network.num_addresses < 2 * pairs + 12:
        raise ValueError(f"subnet {subnet} is too small for {pairs} pairs")
    base = network.network_address
    hosts: list[LabHost] = []
    for pair in range(1, pairs + 1):
        suffix = "" if pairs == 1 else f"-{pair}"
        src, dst = f"source{suffix}", f"destination{suffix}"
        src_index, dst_index = 2 * pair - 1, 2 * pair
        hosts.append(LabHost(src, "source", src_index, str(base + 10 + src_index), dst, prefix))
        hosts.append(
            LabHost(dst, "destination", dst_index, str(base + 10 + dst_index), src, prefix)
        )
    return hosts


def bridge_address(subnet: str = DEFAULT_SUBNET) -> str:
    """The control node's address on the lab bridge, with prefix length."""
    network = ipaddress.ip_network(subnet)
    return f"{network.network_address + 1}/{network.prefixlen}"


def prefix_length(subnet: str = DEFAULT_SUBNET) -> int:
    return ipaddress.ip_network(subnet).prefixlen


def sshd_config(address: str, host_key: str, authorized_keys: str, pid_file: str) -> str:
    """A per-host sshd configuration (key authentication only)."""
    return "\n".join(
        [
            f"ListenAddress {address}",
            "Port 22",
            f"HostKey {host_key}",
            f"PidFile {pid_file}",
            f"AuthorizedKeysFile {authorized_keys}",
            "PermitRootLogin prohibit-password",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            "PubkeyAuthentication yes",
            "UsePAM no",
            "UseDNS no",
            # The lab's files live in the repo; their owners and modes are not sshd's business.
            "StrictModes no",
            # Ansible opens many sessions at once (forks, ControlPersist).
            "MaxStartups 100:30:200",
            "MaxSessions 100",
            "Subsystem sftp /usr/lib/openssh/sftp-server",
            "AcceptEnv LANG LC_*",
            "",
        ]
    )


def known_hosts_line(host: LabHost, public_key: str) -> str:
    """`address,name keytype key` for the lab's known_hosts."""
    key_type, key = public_key.split()[:2]
    return f"{host.address},{host.name} {key_type} {key}"


def host_mac(address: str) -> str:
    """A fixed, locally administered MAC for a host's eth0, derived from its address.

    A recreated host keeps its MAC, so the peers' and the control node's ARP caches stay
    right (a random MAC left them pointing at the dead veth for 15-45 s).
    """
    octets = ipaddress.ip_address(address).packed
    return "02:ce:" + ":".join(f"{octet:02x}" for octet in octets)


def bridge_mac(subnet: str = DEFAULT_SUBNET) -> str:
    """A fixed MAC for the lab's bridge (else it follows its lowest-numbered port)."""
    octets = ipaddress.ip_network(subnet).network_address.packed
    return "02:cb:" + ":".join(f"{octet:02x}" for octet in octets)


def under_private_mount(path: str) -> str | None:
    """The host-private mount point that would hide `path` inside a lab host, if any."""
    for mount_point in PRIVATE_MOUNTS:
        if path == mount_point or path.startswith(mount_point.rstrip("/") + "/"):
            return mount_point
    return None


def lab_state_dir(repo: str) -> str:
    """Where a checkout's lab keeps its state (keys, known_hosts, shared dir).

    `<repo>/.lab`, unless the checkout lies under a folder every lab host mounts privately
    (a clone in /tmp or /root): the hosts could not see the lab's files there, so the state
    goes to /var/lib/criu-lab/<checkout hash> and `<repo>/.lab` links to it.
    """
    import hashlib

    repo = repo.rstrip("/")
    if under_private_mount(f"{repo}/.lab") is None:
        return f"{repo}/.lab"
    return f"/var/lib/criu-lab/{hashlib.sha1(repo.encode()).hexdigest()[:12]}"
