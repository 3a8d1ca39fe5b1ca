#!/usr/bin/python
"""Ansible module: the soft-dirty guest lab (two QEMU guests running Debian 12's stock kernel)."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: guest_lab
short_description: Bring the soft-dirty guest lab (two QEMU guests) up or down
description:
  - Two QEMU virtual machines, C(source) and C(destination), in software emulation
    (TCG, C(-smp 1)), booted from the image C(make guest-image) builds
    (C(scripts/build-guest-image.sh)) - Debian 12's stock kernel, which has the
    soft-dirty memory tracking that C(criu pre-dump) needs and this machine's kernel lacks.
  - Each guest boots from its own qcow2 overlay of the shared raw root image, has a tap
    on the lab's own bridge (C(<prefix>0), no NAT, no route beyond it) and its own
    address, name and mode on the kernel command line, and gets its keys from a small
    read-only config disk - its pinned SSH host key, the lab's authorised key, and the
    lab's key and known_hosts at fixed paths for source -> destination transfers.
  - After the boot every guest's clock is set to the control node's (Cristian's algorithm
    over SSH, the best of several round trips), so cross-host timestamps (downtime) agree.
  - Idempotent. C(present) keeps healthy guests (QEMU running, SSH answering, same image),
    replaces broken ones; C(absent) leaves no QEMU process, tap, bridge, overlay or config
    disk behind.
options:
  state:
    description: C(present) to bring the guests up, C(absent) to tear them down.
    type: str
    choices: [present, absent]
    default: present
  lab_dir:
    description: The guest lab's state folder on the control machine (keys, known_hosts,
      overlays, console logs).
    type: path
    required: true
  image_dir:
    description: The built image (vmlinuz, initrd.img, root.img, manifest.json). Required
      for C(present).
    type: path
  subnet:
    description: The guest lab's private subnet; the control node is .1, the guests .21 and .22.
    type: str
    default: 10.79.0.0/24
  prefix:
    description: Name prefix of the lab's links (bridge C(<prefix>0), taps C(<prefix>1),
      C(<prefix>2)); 1-10 lowercase letters.
    type: str
    default: crlabg
  memory_mb:
    description: Memory of each guest in MiB.
    type: int
    default: 1024
  cpus:
    description: Virtual CPUs of each guest.
    type: int
    default: 1
  accel:
    description: QEMU's accelerator (C(-accel)). KVM on this machine kind is a nested
      backend the stock kernel hangs on, hence TCG.
    type: str
    default: tcg,thread=multi
  boot_timeout:
    description: Seconds a guest may take from QEMU's start to an SSH banner.
    type: int
    default: 180
  sync_clocks:
    description: Set each guest's clock to the control node's after the boot (and on every
      C(present), for guests kept running).
    type: bool
    default: true
attributes:
  check_mode:
    support: none
notes:
  - Needs root, C(qemu-system-x86_64), C(qemu-img), C(ip), C(ssh), C(ssh-keygen), C(tar)
    and C(/dev/net/tun).
  - A guest boots in about 8 s when the machine is idle; the image is built once by
    C(make guest-image) and cached in C(.cache/guest/).
seealso:
  - module: local_lab
author: CRIU migration suite
"""

EXAMPLES = r"""
- name: Bring the guest lab up
  guest_lab:
    state: present
    lab_dir: "{{ playbook_dir | dirname }}/.lab/guest"
    image_dir: "{{ playbook_dir | dirname }}/.cache/guest/current"
  register: guest_lab

- name: Tear it down
  guest_lab:
    state: absent
    lab_dir: "{{ playbook_dir | dirname }}/.lab/guest"
"""

RETURN = r"""
hosts:
  description: The guests.
  returned: state=present
  type: list
  elements: dict
  sample: [{name: source, group: source, address: 10.79.0.21, peer: destination, qemu_pid: 4242}]
private_key:
  description: The lab's SSH private key on the control node (authorised on every guest).
  returned: always
  type: str
  sample: /work/main/.lab/guest/id_ed25519
known_hosts:
  description: The known_hosts file on the control node with every guest's pinned key.
  returned: always
  type: str
  sample: /work/main/.lab/guest/known_hosts
guest_ssh_key:
  description: Where the lab's private key is inside each guest (source -> destination transfers).
  returned: always
  type: str
  sample: /etc/criu-lab/id_ed25519
guest_known_hosts:
  description: Where the pinned known_hosts is inside each guest.
  returned: always
  type: str
  sample: /etc/criu-lab/known_hosts
image:
  description: The booted image's manifest (kernel, CRIU, packages, build time).
  returned: state=present
  type: dict
  sample: {kernel_release: 6.1.0-56-amd64, criu_version: 4.2.1, build_s: 88.1}
boot_s:
  description: Seconds from QEMU's start to an SSH banner, per guest created by this call.
  returned: state=present
  type: dict
  sample: {source: 8.4, destination: 8.9}
clock:
  description: Each guest's clock offset from the control node before and after the sync (s).
  returned: state=present and sync_clocks
  type: dict
  sample: {source: {before_s: -0.71, after_s: 0.0004, uncertainty_s: 0.003}}
created:
  description: Guests (re)created by this call.
  returned: always
  type: list
  elements: str
  sample: [source, destination]
removed:
  description: Guests removed by this call.
  returned: always
  type: list
  elements: str
  sample: []
duration_s:
  description: Seconds this call took.
  returned: always
  type: float
  sample: 11.2
"""

import contextlib
import os
import selectors
import shlex
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.guest_image import (
    DEFAULT_PREFIX,
    DEFAULT_SUBNET,
    GUEST_KNOWN_HOSTS,
    GUEST_SSH_KEY,
    PIDFILE,
    Guest,
    clock_offset,
    guests,
    is_guest_link,
    known_hosts_line,
    qemu_argv,
    qemu_pidfile_of,
    read_manifest,
)
from ansible.module_utils.lab_base import GONE_TIMEOUT_S, LabBase, LabError, ssh_banner
from ansible.module_utils.processes import cmdline, is_alive, reap, start_detached, wait_gone

# Runs in a guest: answers "t" with its clock, applies "adj <seconds>" to it.
CLOCK_AGENT = """
import sys, time
for line in sys.stdin:
    cmd = line.split()
    if cmd and cmd[0] == "adj":
        time.clock_settime(time.CLOCK_REALTIME, time.clock_gettime(time.CLOCK_REALTIME) + float(cmd[1]))
    sys.stdout.write(repr(time.time()) + "\\n")
    sys.stdout.flush()
"""
CLOCK_SAMPLES = 12


GuestLabError = LabError  # the lab flavours share one error type


class GuestLab(LabBase):
    def __init__(self, module: AnsibleModule) -> None:
        super().__init__(module, ("ssh", "tar"))

    # -- helpers ---------------------------------------------------------------------
    def guest_dir(self, name: str) -> Path:
        return self.dir / "hosts" / name

    def ssh_argv(self, guest: Guest) -> list[str]:
        return [
            self.bins["ssh"], "-T",
            "-i", str(self.key), "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes",
            "-o", f"UserKnownHostsFile={self.known_hosts}", "-o", "StrictHostKeyChecking=yes",
            "-o", "ConnectTimeout=10", f"root@{guest.address}",
        ]  # fmt: skip

    # -- QEMU processes ------------------------------------------------------------------
    def qemu_processes(self) -> dict[int, str]:
        """This lab's QEMU processes (found by their pidfile path), pid -> guest name."""
        found: dict[int, str] = {}
        hosts_dir = str(self.dir / "hosts") + "/"
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            pidfile = qemu_pidfile_of(cmdline(int(entry.name)))
            if pidfile and pidfile.startswith(hosts_dir) and pidfile.endswith("/" + PIDFILE):
                found[int(entry.name)] = Path(pidfile).parent.name
        return found

    def stop_guest(self, guest_name: str, state: dict[str, Any]) -> bool:
        victims = [pid for pid, name in self.qemu_processes().items() if name == guest_name]
        for pid in victims:
            # the overlay is thrown away: no clean shutdown (so no `terminate`)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        wait_gone(victims, GONE_TIMEOUT_S)
        state["hosts"].pop(guest_name, None)
        folder = self.guest_dir(guest_name)
        for name in ("disk.qcow2", "config.tar", PIDFILE):
            (folder / name).unlink(missing_ok=True)
        return bool(victims)

    # -- pieces of a guest -----------------------------------------------------------------
    def ensure_keys(self, lab_guests: list[Guest]) -> None:
        self.keygen(self.key, "criu-guest-lab")
        for guest in lab_guests:
            self.keygen(self.guest_dir(guest.name) / "ssh_host_ed25519_key", guest.name)

    def write_known_hosts(self, lab_guests: list[Guest]) -> None:
        lines = [
            known_hosts_line(
                guest,
                (self.guest_dir(guest.name) / "ssh_host_ed25519_key.pub").read_text(),
            )
            for guest in lab_guests
        ]
        self.known_hosts.write_text("\n".join(lines) + "\n")

    def ensure_tap(self, guest: Guest) -> None:
        ip = self.bins["ip"]
        if self.link_exists(guest.tap):
            self.run([ip, "link", "del", guest.tap])
        self.run([ip, "tuntap", "add", "dev", guest.tap, "mode", "tap"])
        self.run([ip, "link", "set", guest.tap, "master", self.bridge, "up"])

    def write_config_disk(self, guest: Guest) -> Path:
        """The guest's config disk: a tar its init unpacks over / (keys, pinned hosts)."""
        folder = self.guest_dir(guest.name)
        tree = folder / "config"
        if tree.exists():
            self.run(["rm", "-rf", "--one-file-system", str(tree)])
        files = {
            "etc/ssh/ssh_host_ed25519_key": (folder / "ssh_host_ed25519_key").read_bytes(),
            "etc/ssh/ssh_host_ed25519_key.pub": (folder / "ssh_host_ed25519_key.pub").read_bytes(),
            "root/.ssh/authorized_keys": Path(f"{self.key}.pub").read_bytes(),
            GUEST_SSH_KEY.lstrip("/"): self.key.read_bytes(),
            GUEST_KNOWN_HOSTS.lstrip("/"): self.known_hosts.read_bytes(),
        }
        for relative, content in files.items():
            path = tree / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(content)
            path.chmod(0o644 if relative.endswith((".pub", "known_hosts")) else 0o600)
        (tree / "root" / ".ssh").chmod(0o700)
        disk = folder / "config.tar"
        # only the files: the image's own directories (and their modes) stay as they are
        self.run(
            [
                self.bins["tar"],
                "-C",
                str(tree),
                "--owner=0",
                "--group=0",
                "-cf",
                str(disk),
                *sorted(files),
            ]
        )
        self.run(["rm", "-rf", "--one-file-system", str(tree)])
        return disk

    def guest_argv(self, guest: Guest, image_dir: str) -> list[str]:
        params = self.module.params
        return qemu_argv(
            self.module.get_bin_path("qemu-system-x86_64", required=True),
            str(Path(image_dir).resolve()),
            guest,
            str(self.guest_dir(guest.name)),
            self.subnet,
            memory_mb=params["memory_mb"],
            cpus=params["cpus"],
            accel=params["accel"],
        )

    def start_guest(self, guest: Guest, image_dir: str) -> dict[str, Any]:
        qemu_img = self.module.get_bin_path("qemu-img", required=True)
        folder = self.guest_dir(guest.name)
        folder.mkdir(parents=True, exist_ok=True)
        overlay = folder / "disk.qcow2"
        overlay.unlink(missing_ok=True)
        root_image = str(Path(image_dir).resolve() / "root.img")
        self.run(
            [qemu_img, "create", "-q", "-f", "qcow2", "-b", root_image, "-F", "raw", str(overlay)]
        )
        self.write_config_disk(guest)
        self.ensure_tap(guest)
        (folder / "console.log").unlink(missing_ok=True)
        argv = self.guest_argv(guest, image_dir)
        qemu_pid = start_detached(argv, output=folder / "qemu.log")
        return {"qemu_pid": qemu_pid, "started": time.monotonic(), "argv": argv}

    def wait_booted(
        self, started: dict[str, dict[str, Any]], lab_guests: list[Guest]
    ) -> dict[str, float]:
        deadline = time.monotonic() + self.module.params["boot_timeout"]
        pending = {guest.name: guest for guest in lab_guests if guest.name in started}
        boot_s: dict[str, float] = {}
        while pending and time.monotonic() < deadline:
            for name, guest in list(pending.items()):
                qemu_pid = started[name]["qemu_pid"]
                if not is_alive(qemu_pid):
                    status = reap(qemu_pid)
                    raise GuestLabError(
                        f"QEMU of guest {name} exited during the boot"
                        + (f" (status {status})" if status is not None else "")
                        + f"; {self.tails(name)}"
                    )
                if ssh_banner(guest.address, timeout=1.0):
                    boot_s[name] = round(time.monotonic() - started[name]["started"], 3)
                    del pending[name]
            time.sleep(0.25)
        if pending:
            names = ", ".join(pending)
            raise GuestLabError(
                f"guest(s) {names} did not answer SSH within {self.module.params['boot_timeout']} s; "
                + "; ".join(self.tails(name) for name in pending)
            )
        return boot_s

    def tails(self, name: str) -> str:
        folder = self.guest_dir(name)
        parts = []
        for log in ("qemu.log", "console.log"):
            try:
                text = (folder / log).read_text(errors="replace")
            except OSError:
                continue
            parts.append(f"{folder / log}: ...{text[-800:]}")
        return " | ".join(parts) or f"no logs in {folder}"

    def sync_clock(self, guest: Guest) -> dict[str, float]:
        """Step the guest's clock onto the control node's (best of CLOCK_SAMPLES round trips)."""
        proc = subprocess.Popen(
            [*self.ssh_argv(guest), "python3", "-u", "-c", shlex.quote(CLOCK_AGENT)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        assert proc.stdin is not None and proc.stdout is not None
        selector = selectors.DefaultSelector()
        selector.register(proc.stdout, selectors.EVENT_READ)

        def exchange(command: str) -> tuple[float, float, float]:
            sent = time.time()
            proc.stdin.write(command + "\n")
            proc.stdin.flush()
            if not selector.select(timeout=20):
                raise GuestLabError(f"clock agent on {guest.name} did not answer")
            line = proc.stdout.readline()
            received = time.time()
            try:
                return sent, float(line), received
            except ValueError:
                raise GuestLabError(
                    f"clock agent on {guest.name}: {line!r} {proc.stderr.read() if proc.poll() is not None else ''}"
                ) from None

        try:
            exchange("t")  # the first answer waits for the interpreter's start-up
            before, _ = clock_offset([exchange("t") for _ in range(CLOCK_SAMPLES)])
            exchange(f"adj {-before!r}")
            after, uncertainty = clock_offset([exchange("t") for _ in range(CLOCK_SAMPLES)])
        finally:
            with contextlib.suppress(OSError):
                proc.stdin.close()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
        return {
            "before_s": round(before, 6),
            "after_s": round(after, 6),
            "uncertainty_s": round(uncertainty, 6),
        }

    def healthy(self, guest: Guest, state: dict[str, Any], image_hash: str, image_dir: str) -> bool:
        """Running, from this image, with the command line these options give, answering SSH."""
        info = state["hosts"].get(guest.name)
        if not info or info.get("address") != guest.address or info.get("image") != image_hash:
            return False
        pid = int(info.get("qemu_pid", 0))
        if pid not in self.qemu_processes() or not self.link_exists(guest.tap):
            return False
        if cmdline(pid) != self.guest_argv(guest, image_dir):
            return False  # memory, CPUs or the kernel command line changed: boot it again
        return ssh_banner(guest.address, timeout=3.0)

    # -- states -------------------------------------------------------------------------------
    def present(self, image_dir: str) -> dict[str, Any]:
        manifest = read_manifest(image_dir)
        image_hash = str(manifest.get("inputs_hash", ""))
        lab_guests = guests(self.subnet, self.prefix)
        state = self.load_state()
        self.ensure_keys(lab_guests)
        self.write_known_hosts(lab_guests)
        bridge_created = self.ensure_bridge()
        wanted = {guest.name for guest in lab_guests}
        removed = []
        for name in sorted(set(state["hosts"]) | set(self.qemu_processes().values())):
            if name not in wanted:
                self.stop_guest(name, state)
                removed.append(name)
        started: dict[str, dict[str, Any]] = {}
        for guest in lab_guests:
            if self.healthy(guest, state, image_hash, image_dir):
                continue
            self.stop_guest(guest.name, state)
            started[guest.name] = self.start_guest(guest, image_dir)
            state["hosts"][guest.name] = {
                "qemu_pid": started[guest.name]["qemu_pid"],
                "address": guest.address,
                "tap": guest.tap,
                "image": image_hash,
                "image_dir": str(Path(image_dir).resolve()),
            }
            self.save_state(state)
        state["subnet"] = self.subnet
        state["prefix"] = self.prefix
        self.save_state(state)
        boot_s = self.wait_booted(started, lab_guests)
        clock = {}
        if self.module.params["sync_clocks"]:
            clock = {guest.name: self.sync_clock(guest) for guest in lab_guests}
        return {
            "changed": bool(started or removed or bridge_created),
            "created": sorted(started),
            "removed": removed,
            "boot_s": boot_s,
            "clock": clock,
            "image": manifest,
            "hosts": [
                {
                    "name": guest.name,
                    "group": guest.group,
                    "address": guest.address,
                    "peer": guest.peer,
                    "tap": guest.tap,
                    "qemu_pid": state["hosts"][guest.name]["qemu_pid"],
                }
                for guest in lab_guests
            ],
        }

    def absent(self) -> dict[str, Any]:
        state = self.load_state()
        names = sorted(set(state["hosts"]) | set(self.qemu_processes().values()))
        stopped = [name for name in names if self.stop_guest(name, state)]
        leftover = self.remove_network_and_state(lambda link: is_guest_link(link, self.prefix))
        return {
            "changed": bool(stopped or leftover),
            "created": [],
            "removed": names,
            "hosts": [],
        }


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "state": {"type": "str", "default": "present", "choices": ["present", "absent"]},
            "lab_dir": {"type": "path", "required": True},
            "image_dir": {"type": "path"},
            "subnet": {"type": "str", "default": DEFAULT_SUBNET},
            "prefix": {"type": "str", "default": DEFAULT_PREFIX},
            "memory_mb": {"type": "int", "default": 1024},
            "cpus": {"type": "int", "default": 1},
            "accel": {"type": "str", "default": "tcg,thread=multi"},
            "boot_timeout": {"type": "int", "default": 180},
            "sync_clocks": {"type": "bool", "default": True},
        },
        required_if=[("state", "present", ("image_dir",))],
        supports_check_mode=False,
    )
    if os.geteuid() != 0:
        module.fail_json(msg="the guest lab needs root (taps, a bridge, /dev/net/tun)")
    started = time.monotonic()
    lab = GuestLab(module)
    try:
        if module.params["state"] == "present":
            result = lab.present(module.params["image_dir"])
        else:
            result = lab.absent()
    except (GuestLabError, ValueError, OSError) as exc:
        module.fail_json(msg=f"guest lab: {exc}", lab_dir=str(lab.dir))
    result.update(
        private_key=str(lab.key),
        known_hosts=str(lab.known_hosts),
        guest_ssh_key=GUEST_SSH_KEY,
        guest_known_hosts=GUEST_KNOWN_HOSTS,
        lab_dir=str(lab.dir),
        duration_s=round(time.monotonic() - started, 3),
    )
    module.exit_json(**result)


if __name__ == "__main__":
    main()
