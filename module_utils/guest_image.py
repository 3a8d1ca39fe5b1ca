"""The soft-dirty guest lab's layout: guests, links, kernel command line, QEMU argv.

Pure functions, so the layout is unit-tested without booting anything. `library/guest_lab.py`
runs them; `scripts/build-guest-image.sh` builds the image they boot (its `manifest.json`
is read here).

A guest is a QEMU virtual machine in software emulation (TCG: this machine kind's KVM is
a nested backend the stock kernel hangs on) running Debian 12's stock kernel, which has
the soft-dirty memory tracking CRIU's pre-dumps need (docs/lab.md).
"""

from __future__ import annotations

import ipaddress
import itertools
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Links: bridge <prefix>0, taps <prefix><n>. "crlabg" never matches the namespaces lab's
# link names (crlab<n>, crlabp<n>), so both labs come and go independently.
DEFAULT_PREFIX = "crlabg"
# Its own subnet (the namespaces lab has 10.77.0.0/24, its test twin 10.78.0.0/24).
DEFAULT_SUBNET = "10.79.0.0/24"
# Host part of the first guest's address (.21 source, .22 destination).
FIRST_HOST = 21
# Files the image directory holds (scripts/build-guest-image.sh).
IMAGE_FILES = ("vmlinuz", "initrd.img", "root.img", "manifest.json")
# Where a guest finds the lab's transfer key and known_hosts (from its config disk):
# migration_ssh_key / migration_known_hosts of the guest inventory.
GUEST_SSH_KEY = "/etc/criu-lab/id_ed25519"
GUEST_KNOWN_HOSTS = "/etc/criu-lab/known_hosts"
# QEMU's pidfile name in a guest's folder; its path also tells this lab's QEMU processes
# apart from anything else running QEMU.
PIDFILE = "qemu.pid"


@dataclass(frozen=True)
class Guest:
    name: str
    group: str  # "source" or "destination"
    index: int  # 1-based, names the tap
    address: str
    peer: str
    prefix: str = DEFAULT_PREFIX

    @property
    def tap(self) -> str:
        return f"{self.prefix}{self.index}"

    @property
    def mac(self) -> str:
        """A locally administered MAC derived from the address (unique on the bridge)."""
        octets = [int(part) for part in self.address.split(".")]
        return "52:54:{:02x}:{:02x}:{:02x}:{:02x}".format(*octets)


def bridge_name(prefix: str = DEFAULT_PREFIX) -> str:
    return f"{prefix}0"


def is_guest_link(name: str, prefix: str = DEFAULT_PREFIX) -> bool:
    """Whether a network link (bridge or tap) belongs to the guest lab with this prefix."""
    return re.fullmatch(rf"{re.escape(prefix)}\d+", name) is not None


def guests(subnet: str = DEFAULT_SUBNET, prefix: str = DEFAULT_PREFIX) -> list[Guest]:
    """The lab's two guests, `source` and `destination` (the names every inventory uses)."""
    if not re.fullmatch(r"[a-z]{1,10}", prefix):
        raise ValueError(f"guest lab prefix {prefix!r} must be 1-10 lowercase letters")
    network = ipaddress.ip_network(subnet)
    if network.num_addresses < FIRST_HOST + 4:
        raise ValueError(f"subnet {subnet} is too small for the guest lab (need a /27 or larger)")
    base = network.network_address
    return [
        Guest("source", "source", 1, str(base + FIRST_HOST), "destination", prefix),
        Guest("destination", "destination", 2, str(base + FIRST_HOST + 1), "source", prefix),
    ]


def bridge_address(subnet: str = DEFAULT_SUBNET) -> str:
    """The control node's address on the guest bridge, with prefix length."""
    network = ipaddress.ip_network(subnet)
    return f"{network.network_address + 1}/{network.prefixlen}"


def kernel_cmdline(guest: Guest, subnet: str = DEFAULT_SUBNET) -> str:
    """Serial console, root disk, and what the guest's init applies (crlab.*)."""
    prefixlen = ipaddress.ip_network(subnet).prefixlen
    return " ".join(
        [
            "console=ttyS0",
            "root=/dev/vda",
            "rw",
            # a crashed init ends the VM (QEMU runs with -no-reboot) instead of hanging
            "panic=-1",
            # an emulated lab machine: Spectre/Meltdown mitigations protect nothing here and
            # cost about a third of every fork and syscall under TCG
            "mitigations=off",
            "quiet",
            f"crlab.name={guest.name}",
            f"crlab.addr={guest.address}/{prefixlen}",
            f"crlab.mode={guest.group}",
        ]
    )


def qemu_argv(
    qemu: str,
    image_dir: str,
    guest: Guest,
    guest_dir: str,
    subnet: str = DEFAULT_SUBNET,
    memory_mb: int = 1024,
    cpus: int = 1,
    accel: str = "tcg,thread=multi",
) -> list[str]:
    """The QEMU command line of one guest.

    Disks: vda is the guest's own qcow2 overlay of the shared raw root image, vdb its
    config disk (a tar of keys, read-only). The NIC is a tap on the lab's bridge.
    """
    image = Path(image_dir)
    folder = Path(guest_dir)
    return [
        qemu,
        "-name", f"criu-lab-{guest.name}",
        "-accel", accel,
        "-cpu", "max",
        "-smp", str(cpus),
        "-m", str(memory_mb),
        "-kernel", str(image / "vmlinuz"),
        "-initrd", str(image / "initrd.img"),
        "-append", kernel_cmdline(guest, subnet),
        "-drive", f"file={folder / 'disk.qcow2'},if=virtio,format=qcow2,cache=unsafe",
        "-drive", f"file={folder / 'config.tar'},if=virtio,format=raw,readonly=on",
        "-netdev", f"tap,id=net0,ifname={guest.tap},script=no,downscript=no",
        "-device", f"virtio-net-pci,netdev=net0,mac={guest.mac}",
        "-device", "virtio-rng-pci",
        "-display", "none",
        "-monitor", "none",
        "-serial", f"file:{folder / 'console.log'}",
        "-pidfile", str(folder / PIDFILE),
        "-no-reboot",
    ]  # fmt: skip


def qemu_pidfile_of(argv: list[str]) -> str | None:
    """The -pidfile argument of a QEMU command line (how the lab finds its own guests)."""
    for flag, value in itertools.pairwise(argv):
        if flag == "-pidfile":
            return value
    return None


def read_manifest(image_dir: str) -> dict[str, Any]:
    """The image's manifest, after checking every file a guest boots from is there."""
    folder = Path(image_dir)
    missing = [name for name in IMAGE_FILES if not (folder / name).is_file()]
    if missing:
        raise ValueError(f"guest image {folder} lacks {', '.join(missing)}: run `make guest-image`")
    return json.loads((folder / "manifest.json").read_text())


def known_hosts_line(guest: Guest, public_key: str) -> str:
    """`address,name keytype key` for the guest lab's known_hosts."""
    key_type, key = public_key.split()[:2]
    return f"{guest.address},{guest.name} {key_type} {key}"


def clock_offset(samples: list[tuple[float, float, float]]) -> tuple[float, float]:
    """(offset, uncertainty) of a guest's clock from (sent, guest time, received) samples.

    Cristian's algorithm: the guest read its clock somewhere between sent and received,
    so the sample with the shortest round trip bounds the offset best (± half of it).
    """
    if not samples:
        raise ValueError("no clock samples")
    sent, guest_time, received = min(samples, key=lambda s: s[2] - s[0])
    return guest_time - (sent + received) / 2, (received - sent) / 2
