"""The soft-dirty guest lab's layout (module_utils/guest_image.py): no QEMU needed."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from guest_image import (
    Guest,
    bridge_address,
    bridge_name,
    clock_offset,
    guests,
    is_guest_link,
    kernel_cmdline,
    known_hosts_line,
    qemu_argv,
    qemu_pidfile_of,
    read_manifest,
)


def test_two_guests_named_as_the_spec_wants() -> None:
    source, destination = guests()
    assert (source.name, source.group, source.peer) == ("source", "source", "destination")
    assert (destination.name, destination.group, destination.peer) == (
        "destination",
        "destination",
        "source",
    )
    # beside the namespaces lab (10.77.0.11/.12 on crlab0), on a bridge and subnet of its own
    assert (source.address, destination.address) == ("10.79.0.21", "10.79.0.22")
    assert (source.tap, destination.tap) == ("crlabg1", "crlabg2")
    assert bridge_name() == "crlabg0"
    assert bridge_address() == "10.79.0.1/24"


def test_other_subnet_and_prefix() -> None:
    source, destination = guests("192.168.50.0/24", "vmlab")
    assert source.address == "192.168.50.21" and destination.tap == "vmlab2"


def test_links_never_collide_with_the_namespaces_lab() -> None:
    assert is_guest_link("crlabg0") and is_guest_link("crlabg2")
    # the namespaces lab's links (crlab0, crlab1, crlabp1) and its test twin's (crlabt1)
    for name in ("crlab0", "crlab1", "crlabp1", "crlabt1", "eth0"):
        assert not is_guest_link(name)


def test_macs_are_unique_and_locally_administered() -> None:
    source, destination = guests()
    assert source.mac == "52:54:0a:4f:00:15"
    assert source.mac != destination.mac
    assert int(source.mac.split(":")[0], 16) & 0b10  # locally administered bit


def test_kernel_command_line_carries_name_address_and_mode() -> None:
    line = kernel_cmdline(guests()[0])
    assert "crlab.name=source" in line.split()
    assert "crlab.addr=10.79.0.21/24" in line.split()
    assert "crlab.mode=source" in line.split()
    assert "console=ttyS0" in line and "root=/dev/vda" in line and "panic=-1" in line


def test_qemu_argv_software_emulation_one_cpu_tap_and_overlay() -> None:
    guest = guests()[1]
    argv = qemu_argv("/usr/bin/qemu-system-x86_64", "/img", guest, "/lab/hosts/destination")
    joined = " ".join(argv)
    assert argv[0] == "/usr/bin/qemu-system-x86_64"
    assert argv[argv.index("-accel") + 1] == "tcg,thread=multi"
    assert argv[argv.index("-smp") + 1] == "1"
    assert argv[argv.index("-m") + 1] == "1024"
    assert argv[argv.index("-kernel") + 1] == "/img/vmlinuz"
    assert argv[argv.index("-initrd") + 1] == "/img/initrd.img"
    assert "file=/lab/hosts/destination/disk.qcow2,if=virtio,format=qcow2" in joined
    assert "file=/lab/hosts/destination/config.tar,if=virtio,format=raw,readonly=on" in joined
    assert "tap,id=net0,ifname=crlabg2,script=no,downscript=no" in argv
    assert f"virtio-net-pci,netdev=net0,mac={guest.mac}" in argv
    assert "-no-reboot" in argv
    assert qemu_pidfile_of(argv) == "/lab/hosts/destination/qemu.pid"


def test_qemu_argv_memory_and_cpus_are_settings() -> None:
    argv = qemu_argv("qemu", "/img", guests()[0], "/g", memory_mb=2048, cpus=2, accel="kvm")
    assert argv[argv.index("-m") + 1] == "2048"
    assert argv[argv.index("-smp") + 1] == "2"
    assert argv[argv.index("-accel") + 1] == "kvm"


def test_pidfile_of_something_else() -> None:
    assert qemu_pidfile_of(["sleep", "10"]) is None
    assert qemu_pidfile_of(["qemu", "-pidfile"]) is None


def test_known_hosts_line() -> None:
    line = known_hosts_line(guests()[0], "ssh-ed25519 AAAAC3Nza source\n")
    assert line == "10.79.0.21,source ssh-ed25519 AAAAC3Nza"


def test_manifest_needs_every_boot_file(tmp_path: Path) -> None:
    with pytest.raises(
        ValueError, match=re.escape("lacks vmlinuz, initrd.img, root.img, manifest.json")
    ):
        read_manifest(str(tmp_path))
    for name in ("vmlinuz", "initrd.img", "root.img"):
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "manifest.json").write_text(json.dumps({"kernel_release": "6.1.0-56-amd64"}))
    assert read_manifest(str(tmp_path))["kernel_release"] == "6.1.0-56-amd64"


def test_clock_offset_takes_the_shortest_round_trip() -> None:
    samples = [
        (100.0, 100.9, 101.0),  # slow: 1 s round trip
        (200.0, 200.55, 200.1),  # fast: guest 0.5 s ahead
    ]
    offset, uncertainty = clock_offset(samples)
    assert offset == pytest.approx(0.5)
    assert uncertainty == pytest.approx(0.05)
    with pytest.raises(ValueError):
        clock_offset([])


@pytest.mark.parametrize(
    ("subnet", "prefix", "message"),
    [
        ("10.79.0.0/29", "crlabg", "too small"),
        ("10.79.0.0/24", "Crlab-G", "lowercase letters"),
    ],
)
def test_bad_layouts_are_refused(subnet: str, prefix: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        guests(subnet, prefix)


def test_guest_is_a_value() -> None:
    assert Guest("a", "source", 1, "10.0.0.1", "b") == Guest("a", "source", 1, "10.0.0.1", "b")
