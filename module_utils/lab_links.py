"""Find a local lab host on this machine by its address, and its control-side link.

The shaping of a lab link (library/lab_link.py) must never touch a real network, so it
shapes only what it finds here: a lab host is a process marked as a lab's init
(`criu-lab-init <lab dir> <name>`, module_utils/lab_layout.py) whose network namespace has
the address on its eth0, a veth whose other end is in this (the control) namespace, on the
lab's bridge `<prefix>0`, named `<prefix><n>`. An address nothing here has is no lab host.
Parsing is pure; the caller runs the commands (`ip` inside a namespace through `nsenter`).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

try:
    from ansible.module_utils.lab_layout import INIT_MARKER, bridge_name, is_lab_link
except ImportError:  # scripts that put module_utils/ on sys.path (the benchmarks)
    from lab_layout import INIT_MARKER, bridge_name, is_lab_link  # type: ignore[no-redef]

# (argv) -> (returncode, stdout, stderr)
Runner = Callable[[list[str]], tuple[int, str, str]]


@dataclass(frozen=True)
class LabHostLink:
    name: str  # the lab host's name (source, destination-2, ...)
    lab_dir: str
    init_pid: int
    address: str
    link: str  # control-side end of its veth
    bridge: str
    prefix: str
    index: int

    @property
    def netns(self) -> str:
        return f"/proc/{self.init_pid}/ns/net"


def lab_inits(proc: str = "/proc") -> dict[int, tuple[str, str]]:
    """Every lab init on this machine: pid -> (lab dir, host name)."""
    found: dict[int, tuple[str, str]] = {}
    for entry in Path(proc).iterdir():
        if not entry.name.isdigit():
            continue
        try:
            args = [
                a.decode("utf-8", "replace")
                for a in (entry / "cmdline").read_bytes().split(b"\0")
                if a
            ]
        except OSError:
            continue
        if INIT_MARKER not in args or not args or "unshare" in Path(args[0]).name:
            continue
        marker = args.index(INIT_MARKER)
        if len(args) > marker + 2:
            found[int(entry.name)] = (args[marker + 1], args[marker + 2])
    return found


def parse_addresses(ip_addr_output: str) -> list[str]:
    """IPv4 addresses of `ip -o -4 addr show dev X`."""
    return [
        fields[3].split("/")[0]
        for fields in (line.split() for line in ip_addr_output.splitlines())
        if len(fields) > 3 and fields[2] == "inet"
    ]


def parse_peer_index(ip_link_output: str) -> int | None:
    """The ifindex of a veth's other end, from `ip -o link show dev eth0` (`eth0@if45:`)."""
    match = re.search(r"^\d+:\s+[^@:\s]+@if(\d+):", ip_link_output.strip())
    return int(match.group(1)) if match else None


def parse_links(ip_link_output: str) -> dict[int, tuple[str, str]]:
    """`ip -o link show` of this namespace: ifindex -> (name, master or "")."""
    links: dict[int, tuple[str, str]] = {}
    for line in ip_link_output.splitlines():
        match = re.match(r"^(\d+):\s+([^@:\s]+)(?:@\S+)?:\s", line)
        if not match:
            continue
        master = re.search(r"\smaster\s+(\S+)", line)
        links[int(match.group(1))] = (match.group(2), master.group(1) if master else "")
    return links


def find_lab_hosts(
    addresses: list[str],
    run: Runner,
    nsenter: str,
    ip: str,
    proc: str = "/proc",
) -> tuple[dict[str, LabHostLink], list[str]]:
    """The lab hosts that have these addresses, and what is wrong (one line per address)."""
    inits = lab_inits(proc)
    rc, out, err = run([ip, "-o", "link", "show"])
    if rc:
        return {}, [f"ip -o link show failed: {err.strip()}"]
    links = parse_links(out)
    found: dict[str, LabHostLink] = {}
    wanted = set(addresses)
    for pid, (lab_dir, name) in sorted(inits.items()):
        if not wanted - set(found):
            break
        netns = [nsenter, f"--net={proc}/{pid}/ns/net", "--"]
        rc, out, _err = run([*netns, ip, "-o", "-4", "addr", "show", "dev", "eth0"])
        if rc:
            continue
        here = wanted.intersection(parse_addresses(out)) - set(found)
        if not here:
            continue
        rc, out, _err = run([*netns, ip, "-o", "link", "show", "dev", "eth0"])
        peer = parse_peer_index(out) if rc == 0 else None
        link, bridge = links.get(peer, ("", "")) if peer is not None else ("", "")
        prefix = bridge[:-1] if bridge.endswith("0") else ""
        if not (link and prefix and bridge == bridge_name(prefix) and is_lab_link(link, prefix)):
            continue
        for address in here:
            found[address] = LabHostLink(
                name=name,
                lab_dir=lab_dir,
                init_pid=pid,
                address=address,
                link=link,
                bridge=bridge,
                prefix=prefix,
                index=int(link[len(prefix) :]),
            )
    errors = [
        f"{address} is not a host of a local lab on this machine (no lab namespace has it on "
        "its eth0, on a veth of a lab bridge)"
        for address in addresses
        if address not in found
    ]
    return found, errors
