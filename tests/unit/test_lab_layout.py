"""module_utils/lab_layout.py: the local lab's names, addresses, links and sshd config."""

from __future__ import annotations

import lab_layout
import pytest
from lab_layout import (
    DEFAULT_SUBNET,
    LabHost,
    bridge_address,
    bridge_name,
    is_lab_link,
    known_hosts_line,
    lab_hosts,
    prefix_length,
    sshd_config,
)

# A public key as ssh-keygen -t ed25519 writes it (with its comment).
HOST_KEY_PUB = (
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAOCjOwN8HHv3DFII7Ed0vix3QIiUcNqdQvOfhgANSu4 root@vm"
)


def test_one_pair_is_source_and_destination() -> None:
    assert lab_hosts(1) == [
        LabHost("source", "source", 1, "10.77.0.11", "destination"),
        LabHost("destination", "destination", 2, "10.77.0.12", "source"),
    ]


def test_three_pairs() -> None:
    hosts = lab_hosts(3)
    assert [(h.name, h.group, h.index, h.address, h.peer) for h in hosts] == [
        ("source-1", "source", 1, "10.77.0.11", "destination-1"),
        ("destination-1", "destination", 2, "10.77.0.12", "source-1"),
        ("source-2", "source", 3, "10.77.0.13", "destination-2"),
        ("destination-2", "destination", 4, "10.77.0.14", "source-2"),
        ("source-3", "source", 5, "10.77.0.15", "destination-3"),
        ("destination-3", "destination", 6, "10.77.0.16", "source-3"),
    ]
    by_name = {h.name: h for h in hosts}
    for host in hosts:
        assert by_name[host.peer].peer == host.name


def test_layout_is_stable_as_pairs_are_added() -> None:
    two, three = lab_hosts(2), lab_hosts(3)
    assert three[:4] == two


def test_link_names() -> None:
    hosts = lab_hosts(3)
    assert [h.link for h in hosts] == ["crlab1", "crlab2", "crlab3", "crlab4", "crlab5", "crlab6"]
    assert [h.link_peer for h in hosts][:2] == ["crlabp1", "crlabp2"]


def test_link_names_fit_the_kernels_limit_for_the_largest_lab() -> None:
    hosts = lab_hosts(122)  # the most a /24 holds
    names = {h.link for h in hosts} | {h.link_peer for h in hosts} | {bridge_name()}
    assert len(names) == 2 * len(hosts) + 1  # all distinct
    assert max(len(name) for name in names) <= 15  # IFNAMSIZ - 1
    assert hosts[-1].address == "10.77.0.254"
    assert bridge_name() == "crlab0"


def test_longest_prefix_and_largest_subnet_still_fit() -> None:
    hosts = lab_hosts(32762, "10.80.0.0/16", prefix="abcdefgh")  # the most a /16 holds
    assert hosts[-1].link_peer == "abcdefghp65524"
    assert max(len(h.link_peer) for h in hosts) <= 15
    assert len(bridge_name("abcdefgh")) <= 15
    assert hosts[-1].address == "10.80.255.254"


def test_prefix_names_every_link() -> None:
    hosts = lab_hosts(1, prefix="crtest")
    assert [(h.link, h.link_peer) for h in hosts] == [
        ("crtest1", "crtestp1"),
        ("crtest2", "crtestp2"),
    ]
    assert bridge_name("crtest") == "crtest0"
    assert hosts[0].address == "10.77.0.11"  # the prefix changes names, not addresses


@pytest.mark.parametrize("prefix", ["", "CRLAB", "cr-lab", "abcdefghi", "lab1"])
def test_bad_prefix(prefix: str) -> None:
    with pytest.raises(ValueError) as excinfo:
        lab_hosts(1, prefix=prefix)
    assert str(excinfo.value) == (
        f"lab prefix {prefix!r} must be 1-8 lowercase letters (link names <= 15 chars)"
    )


@pytest.mark.parametrize(
    ("name", "prefix", "expected"),
    [
        ("crlab1", "crlab", True),
        ("crlabp12", "crlab", True),
        ("crlab0", "crlab", True),  # the bridge
        ("crlab", "crlab", False),
        ("crlabx1", "crlab", False),
        ("crtest1", "crlab", False),
        ("crlab1", "crtest", False),
        ("eth0", "crlab", False),
        ("crlab1@if5", "crlab", False),
    ],
)
def test_is_lab_link(name: str, prefix: str, expected: bool) -> None:
    assert is_lab_link(name, prefix) is expected


def test_other_subnet() -> None:
    hosts = lab_hosts(1, "192.168.50.0/28")
    assert [h.address for h in hosts] == ["192.168.50.11", "192.168.50.12"]
    assert [h.address for h in lab_hosts(2, "192.168.50.0/28")][-1] == "192.168.50.14"


@pytest.mark.parametrize(("pairs", "subnet"), [(123, DEFAULT_SUBNET), (3, "192.168.50.0/28")])
def test_subnet_too_small(pairs: int, subnet: str) -> None:
    with pytest.raises(ValueError) as excinfo:
        lab_hosts(pairs, subnet)
    assert str(excinfo.value) == f"subnet {subnet} is too small for {pairs} pairs"


@pytest.mark.parametrize("pairs", [0, -1])
def test_pairs_below_one(pairs: int) -> None:
    with pytest.raises(ValueError) as excinfo:
        lab_hosts(pairs)
    assert str(excinfo.value) == f"lab_pairs must be at least 1, got {pairs}"


def test_bridge_address_and_prefix() -> None:
    assert bridge_address() == "10.77.0.1/24"
    assert bridge_address("192.168.50.0/28") == "192.168.50.1/28"
    assert prefix_length() == 24
    assert prefix_length("192.168.50.0/28") == 28
    # the bridge's address is no host's
    assert bridge_address().split("/")[0] not in {h.address for h in lab_hosts(3)}


def test_sshd_config_is_key_only_and_listens_on_the_host() -> None:
    config = sshd_config(
        "10.77.0.12",
        "/work/main/.lab/hosts/destination/ssh_host_ed25519_key",
        "/work/main/.lab/ssh/authorized_keys",
        "/run/sshd-lab.pid",
    )
    lines = config.splitlines()
    assert config.endswith("\n")
    assert lines[0] == "ListenAddress 10.77.0.12"
    for expected in [
        "Port 22",
        "HostKey /work/main/.lab/hosts/destination/ssh_host_ed25519_key",
        "PidFile /run/sshd-lab.pid",
        "AuthorizedKeysFile /work/main/.lab/ssh/authorized_keys",
        "PermitRootLogin prohibit-password",
        "PasswordAuthentication no",
        "KbdInteractiveAuthentication no",
        "PubkeyAuthentication yes",
        "UsePAM no",
        "UseDNS no",
        "StrictModes no",
        "MaxStartups 100:30:200",
        "MaxSessions 100",
        "Subsystem sftp /usr/lib/openssh/sftp-server",
    ]:
        assert expected in lines, expected
    assert sum(line.startswith("ListenAddress") for line in lines) == 1
    assert not any(line.endswith(" yes") and "Password" in line for line in lines)


def test_known_hosts_line() -> None:
    host = lab_hosts(1)[1]
    assert known_hosts_line(host, HOST_KEY_PUB) == (
        "10.77.0.12,destination ssh-ed25519 "
        "AAAAC3NzaC1lZDI1NTE5AAAAIAOCjOwN8HHv3DFII7Ed0vix3QIiUcNqdQvOfhgANSu4"
    )


def test_known_hosts_line_without_comment() -> None:
    host = lab_hosts(1)[0]
    assert (
        known_hosts_line(host, "ssh-ed25519 AAAAkey\n") == "10.77.0.11,source ssh-ed25519 AAAAkey"
    )


@pytest.mark.parametrize(
    ("repo", "expected_prefix"),
    [
        ("/work/main", "/work/main/.lab"),
        ("/srv/criu-suite/", "/srv/criu-suite/.lab"),
        ("/tmp/fresh", "/var/lib/criu-lab/"),  # the hosts mount /tmp privately
        ("/root/criu-suite", "/var/lib/criu-lab/"),  # ... and /root
    ],
)
def test_lab_state_dir_avoids_folders_the_hosts_mount_privately(
    repo: str, expected_prefix: str
) -> None:
    state_dir = lab_layout.lab_state_dir(repo)
    assert state_dir.startswith(expected_prefix)
    assert lab_layout.under_private_mount(state_dir) is None


def test_lab_state_dir_differs_per_checkout() -> None:
    assert lab_layout.lab_state_dir("/tmp/a") != lab_layout.lab_state_dir("/tmp/b")
