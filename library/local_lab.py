#!/usr/bin/python
"""Ansible module: the built-in local lab (two or more SSH hosts made of namespaces)."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: local_lab
short_description: Bring the built-in local lab up or down
description:
  - A lab host is a set of Linux namespaces (pid, mount, uts, net, ipc) on this machine, with
    its own host name, an init that reaps orphans, a private tmpfs as its disk (C(/run),
    C(/root), C(/tmp), C(/var/log), C(/var/lib/criu-migration)) and as its POSIX shared
    memory (C(/dev/shm)), its own SysV IPC (the ipc namespace), a directory shared by all
    hosts at C(/mnt/criu-shared) (the EFS stand-in), an address on a private bridge, and a
    real C(sshd) with key authentication.
  - Hosts come in pairs, C(source) and C(destination) (or C(source-N) / C(destination-N)
    for several pairs). Source hosts allocate PIDs from a high value so that a restored
    process's PID is free on its destination.
  - Idempotent. C(present) keeps healthy hosts, replaces broken ones (after a crash or a
    killed run) and outdated ones (made by an older suite, without a namespace or a private
    mount a host has now - C(outdated) says what each lacked), and removes hosts beyond
    I(pairs). C(absent) leaves no process, mount, link or namespace behind.
options:
  state:
    description: C(present) to bring the lab up, C(absent) to tear it down.
    type: str
    choices: [present, absent]
    default: present
  pairs:
    description: Number of source/destination pairs.
    type: int
    default: 1
  lab_dir:
    description: The lab's state folder on the control machine (keys, known_hosts, shared dir).
    type: path
    required: true
  subnet:
    description: The private /24 that exists only on the lab's bridge (no NAT, no route beyond it).
    type: str
    default: 10.77.0.0/24
  disk_size:
    description: Size limit of each host's private disk (tmpfs at /var/lib/criu-migration).
    type: str
    default: 8g
  prefix:
    description: Name prefix of the lab's links (bridge C(<prefix>0), veths C(<prefix><n>)),
      1-8 lowercase letters; two labs with different prefixes, directories and subnets
      can run side by side.
    type: str
    default: crlab
attributes:
  check_mode:
    support: none
notes:
  - Needs root, C(unshare)/C(nsenter) (util-linux), C(ip) (iproute2), C(sshd) and C(ssh-keygen).
author: CRIU migration suite
"""

EXAMPLES = r"""
- name: Bring the lab up
  local_lab:
    state: present
    pairs: 1
    lab_dir: "{{ playbook_dir | dirname }}/.lab"
  register: lab
"""

RETURN = r"""
hosts:
  description: The lab's hosts.
  returned: state=present
  type: list
  elements: dict
  sample: [{name: source, group: source, address: 10.77.0.11, peer: destination, init_pid: 4242}]
private_key:
  description: The lab's SSH private key (authorised on every host).
  returned: always
  type: str
  sample: /work/main/.lab/id_ed25519
known_hosts:
  description: The known_hosts file with every host's pinned key.
  returned: always
  type: str
  sample: /work/main/.lab/known_hosts
shared_dir:
  description: The control-side folder mounted at /mnt/criu-shared in every host.
  returned: always
  type: str
  sample: /work/main/.lab/shared
created:
  description: Hosts (re)created by this call.
  returned: always
  type: list
  elements: str
  sample: [source, destination]
outdated:
  description: Hosts replaced because they lacked what a host has now, and what they lacked.
  returned: state=present
  type: dict
  sample: {source: [no ipc namespace of its own, /dev/shm is this machine's]}
removed:
  description: Hosts removed by this call.
  returned: always
  type: list
  elements: str
  sample: []
duration_s:
  description: Seconds this call took.
  returned: always
  type: float
  sample: 1.8
"""

import contextlib
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.lab_base import GONE_TIMEOUT_S, LabBase, LabError, ssh_banner
from ansible.module_utils.lab_layout import (
    DEFAULT_PREFIX,
    HOST_NAMESPACES,
    INIT_MARKER,
    NS_FILES,
    PRIVATE_MOUNTS,
    SHARED_MOUNT,
    SOURCE_FIRST_PID,
    STICKY_MOUNTS,
    LabHost,
    host_mac,
    is_lab_link,
    known_hosts_line,
    lab_hosts,
    prefix_length,
    sshd_config,
    under_private_mount,
)
from ansible.module_utils.processes import (
    cmdline,
    is_alive,
    reap,
    start_detached,
    terminate,
    wait_gone,
)

# The host's init: reaps every orphan so no zombie keeps a PID that a restore needs.
REAPER = """
import os, sys, time
while True:
    try:
        os.wait()
    except ChildProcessError:
        time.sleep(0.2)
"""


def isolation_problems(init_pid: int, proc: str = "/proc") -> list[str]:
    """What a running host lacks that a host made now has - a namespace of its own
    (HOST_NAMESPACES) and its private mounts (PRIVATE_MOUNTS): a host made by an older suite
    (before the ipc namespace and /dev/shm) is replaced on lab-up, like a broken one."""
    problems = []
    for ns in HOST_NAMESPACES:
        name = NS_FILES[ns]
        try:
            shared = os.readlink(f"{proc}/{init_pid}/ns/{name}") == os.readlink(
                f"{proc}/self/ns/{name}"
            )
        except OSError:
            return [f"its init {init_pid} is gone"]
        if shared:
            problems.append(f"no {ns} namespace of its own")
    for mount_point in PRIVATE_MOUNTS:
        try:
            shared = (
                os.stat(f"{proc}/{init_pid}/root{mount_point}").st_dev
                == os.stat(mount_point).st_dev
            )
        except OSError:
            shared = True
        if shared:
            problems.append(f"{mount_point} is this machine's")
    return problems


class Lab(LabBase):
    def __init__(self, module: AnsibleModule) -> None:
        super().__init__(module, ("unshare", "nsenter", "sshd", "mount", "umount"))
        self.shared = self.dir / "shared"

    def in_host(
        self, init_pid: int, argv: list[str], check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        return self.run([self.bins["nsenter"], "-t", str(init_pid), "-a", "--", *argv], check=check)

    # -- keys ------------------------------------------------------------------------
    def ensure_keys(self, hosts: list[LabHost]) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        self.shared.mkdir(exist_ok=True)
        self.keygen(self.key, "criu-lab")
        (self.dir / "authorized_keys").write_text(Path(f"{self.key}.pub").read_text())
        for host in hosts:
            self.keygen(self.dir / "hosts" / host.name / "ssh_host_ed25519_key", host.name)

    def write_known_hosts(self, hosts: list[LabHost]) -> None:
        lines = [
            known_hosts_line(
                host, (self.dir / "hosts" / host.name / "ssh_host_ed25519_key.pub").read_text()
            )
            for host in hosts
        ]
        self.known_hosts.write_text("\n".join(lines) + "\n")

    # -- processes -------------------------------------------------------------------
    def stray_inits(self) -> dict[int, str]:
        """Init processes of this lab's hosts, found by their marker (state or not)."""
        found: dict[int, str] = {}
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            args = cmdline(int(entry.name))
            if INIT_MARKER not in args or "unshare" in Path(args[0]).name:
                continue
            marker = args.index(INIT_MARKER)
            # argv: python3 -c REAPER <marker> <lab dir> <host name> init
            if args[marker + 1 : marker + 2] == [str(self.dir)] and len(args) > marker + 2:
                found[int(entry.name)] = args[marker + 2]
        return found

    def host_init(self, host: str, state: dict[str, Any]) -> int | None:
        info = state["hosts"].get(host)
        if not info:
            return None
        pid = int(info.get("init_pid", 0))
        return pid if pid and pid in self.stray_inits() else None

    def healthy(self, host: LabHost, state: dict[str, Any], outdated: dict[str, list[str]]) -> bool:
        init_pid = self.host_init(host.name, state)
        if init_pid is None or state["hosts"][host.name].get("address") != host.address:
            return False
        if not self.link_exists(host.link):
            return False
        problems = isolation_problems(init_pid)
        if problems:
            outdated[host.name] = problems
            return False
        return ssh_banner(host.address, timeout=2.0)

    def destroy_host(self, name: str, index: int | None, state: dict[str, Any]) -> None:
        victims = [pid for pid, host in self.stray_inits().items() if host == name]
        info = state["hosts"].pop(name, {})
        for pid in victims:
            # A pid namespace's init ignores SIGTERM (so no `terminate`); SIGKILL ends every
            # process inside.
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        wait_gone(victims, GONE_TIMEOUT_S)
        for key in ("unshare_pid", "sshd_launcher_pid"):
            pid = int(info.get(key) or 0)
            if pid and is_alive(pid):
                terminate(pid, grace_s=GONE_TIMEOUT_S)
        if index is not None and self.link_exists(f"{self.prefix}{index}"):
            self.run([self.bins["ip"], "link", "del", f"{self.prefix}{index}"], check=False)

    def create_host(self, host: LabHost, disk_size: str) -> dict[str, Any]:
        unshare_pid = start_detached(
            [
                self.bins["unshare"], *(f"--{ns}" for ns in HOST_NAMESPACES), "--fork",
                "--mount-proc", "--propagation", "private",
                "/usr/bin/python3", "-c", REAPER, INIT_MARKER, str(self.dir), host.name, "init",
            ],
        )  # fmt: skip
        init_pid = self.wait_init(unshare_pid)
        # The host's own name and disks (mount points exist in the shared root filesystem).
        self.in_host(init_pid, ["hostname", host.name])
        for mount_point in (*PRIVATE_MOUNTS, SHARED_MOUNT):
            Path(mount_point).mkdir(parents=True, exist_ok=True)
        for mount_point in PRIVATE_MOUNTS:
            options = "mode=1777" if mount_point in STICKY_MOUNTS else "mode=0755"
            if mount_point == "/var/lib/criu-migration":
                options += f",size={disk_size}"
            # what the machine has mounted there (its /dev/shm, possibly twice) leaves the
            # host's view (propagation is private): the host's own tmpfs is the only mount
            umount = [self.bins["umount"], "--lazy", mount_point]
            for _ in range(8):
                if self.in_host(init_pid, umount, check=False).returncode:
                    break
            self.in_host(
                init_pid, [self.bins["mount"], "-t", "tmpfs", "-o", options, "tmpfs", mount_point]
            )
        self.in_host(init_pid, [self.bins["mount"], "--bind", str(self.shared), SHARED_MOUNT])
        self.in_host(init_pid, ["mkdir", "-p", "-m", "0755", "/run/sshd"])
        # sysfs of the host's own network namespace (else /sys/class/net shows the control
        # machine's devices)
        self.in_host(init_pid, [self.bins["mount"], "-t", "sysfs", "sysfs", "/sys"])
        if host.group == "source":
            self.in_host(
                init_pid,
                [
                    "/usr/bin/python3",
                    "-c",
                    f"open('/proc/sys/kernel/ns_last_pid', 'w').write('{SOURCE_FIRST_PID}')",
                ],
            )
        # The link: control-side end on the bridge, host end renamed eth0 inside the host.
        ip = self.bins["ip"]
        if self.link_exists(host.link):
            self.run([ip, "link", "del", host.link])
        self.run(
            [ip, "link", "add", host.link, "type", "veth", "peer", "name", host.link_peer,
             "address", host_mac(host.address)]
        )  # fmt: skip
        self.run([ip, "link", "set", host.link_peer, "netns", str(init_pid)])
        self.run([ip, "link", "set", host.link, "master", self.bridge, "up"])
        self.in_host(init_pid, [ip, "link", "set", "lo", "up"])
        self.in_host(init_pid, [ip, "link", "set", host.link_peer, "name", "eth0"])
        self.in_host(
            init_pid,
            [ip, "addr", "add", f"{host.address}/{prefix_length(self.subnet)}", "dev", "eth0"],
        )
        self.in_host(init_pid, [ip, "link", "set", "eth0", "up"])
        sshd_pid = self.start_sshd(host, init_pid)
        return {
            "init_pid": init_pid,
            "unshare_pid": unshare_pid,
            "sshd_launcher_pid": sshd_pid,
            "address": host.address,
            "index": host.index,
            "group": host.group,
            "peer": host.peer,
        }

    def wait_init(self, unshare_pid: int) -> int:
        children = Path(f"/proc/{unshare_pid}/task/{unshare_pid}/children")
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                pids = children.read_text().split() if is_alive(unshare_pid) else None
            except OSError:
                pids = None
            if pids is None:
                status = reap(unshare_pid)
                raise LabError(
                    f"unshare ({unshare_pid}) exited before starting the host's init"
                    + (f" (status {status})" if status is not None else "")
                )
            if pids:
                init_pid = int(pids[0])
                # wait until the child exec'ed the reaper (its marker is visible)
                if INIT_MARKER in cmdline(init_pid):
                    return init_pid
            time.sleep(0.01)
        raise LabError("the host's init did not start within 10 s")

    def start_sshd(self, host: LabHost, init_pid: int) -> int:
        host_dir = self.dir / "hosts" / host.name
        config = host_dir / "sshd_config"
        config.write_text(
            sshd_config(
                host.address,
                str(host_dir / "ssh_host_ed25519_key"),
                str(self.dir / "authorized_keys"),
                "/run/sshd.pid",
            )
        )
        test = self.in_host(init_pid, [self.bins["sshd"], "-t", "-f", str(config)], check=False)
        if test.returncode != 0:
            raise LabError(f"sshd -t rejects {config}: {test.stderr.strip()}")
        launcher = start_detached(
            [self.bins["nsenter"], "-t", str(init_pid), "-a", "--", self.bins["sshd"], "-D", "-e", "-f", str(config)],
            output=host_dir / "sshd.log",
        )  # fmt: skip
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if ssh_banner(host.address, timeout=0.5):
                return launcher
            if not is_alive(launcher):
                break
            time.sleep(0.05)
        tail = (host_dir / "sshd.log").read_text(errors="replace")[-1000:]
        raise LabError(f"sshd of {host.name} did not answer on {host.address}:22; its log: {tail}")

    # -- states ----------------------------------------------------------------------
    def present(self, pairs: int, disk_size: str) -> dict[str, Any]:
        hosts = lab_hosts(pairs, self.subnet, self.prefix)
        state = self.load_state()
        created: list[str] = []
        removed: list[str] = []
        outdated: dict[str, list[str]] = {}
        wanted = {host.name for host in hosts}
        self.ensure_keys(hosts)
        bridge_created = self.ensure_bridge()
        for name in sorted(set(state["hosts"]) | set(self.stray_inits().values())):
            if name not in wanted:
                self.destroy_host(name, state["hosts"].get(name, {}).get("index"), state)
                removed.append(name)
        for host in hosts:
            if self.healthy(host, state, outdated):
                continue
            self.destroy_host(host.name, host.index, state)
            state["hosts"][host.name] = self.create_host(host, disk_size)
            created.append(host.name)
            self.save_state(state)
        state["subnet"] = self.subnet
        self.save_state(state)
        self.write_known_hosts(hosts)
        return {
            "changed": bool(created or removed or bridge_created),
            "created": created,
            "removed": removed,
            "outdated": outdated,
            "hosts": [
                {
                    "name": host.name,
                    "group": host.group,
                    "address": host.address,
                    "peer": host.peer,
                    "init_pid": state["hosts"][host.name]["init_pid"],
                }
                for host in hosts
            ],
        }

    def absent(self) -> dict[str, Any]:
        state = self.load_state()
        names = sorted(set(state["hosts"]) | set(self.stray_inits().values()))
        for name in names:
            self.destroy_host(name, state["hosts"].get(name, {}).get("index"), state)
        # the hosts' veths (gone with their namespaces, unless something kept one), the bridge
        leftover_links = self.remove_network_and_state(lambda link: is_lab_link(link, self.prefix))
        return {
            "changed": bool(names or leftover_links),
            "created": [],
            "removed": names,
            "hosts": [],
        }


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "state": {"type": "str", "default": "present", "choices": ["present", "absent"]},
            "pairs": {"type": "int", "default": 1},
            "lab_dir": {"type": "path", "required": True},
            "subnet": {"type": "str", "default": "10.77.0.0/24"},
            "disk_size": {"type": "str", "default": "8g"},
            "prefix": {"type": "str", "default": DEFAULT_PREFIX},
        },
        supports_check_mode=False,
    )
    if os.geteuid() != 0:
        module.fail_json(msg="the local lab needs root (namespaces, mounts, links)")
    if module.params["pairs"] < 1:
        module.fail_json(msg=f"lab_pairs must be at least 1, got {module.params['pairs']}")
    hidden_by = under_private_mount(module.params["lab_dir"])
    if hidden_by:
        module.fail_json(
            msg=f"lab_dir {module.params['lab_dir']} is under {hidden_by}, which every lab host "
            "mounts privately (it would hide the lab's keys and shared dir); choose another folder"
        )
    started = time.monotonic()
    lab = Lab(module)
    try:
        if module.params["state"] == "present":
            result = lab.present(module.params["pairs"], module.params["disk_size"])
        else:
            result = lab.absent()
    except (LabError, ValueError) as exc:
        module.fail_json(msg=f"local lab: {exc}", lab_dir=str(lab.dir))
    result.update(
        private_key=str(lab.key),
        known_hosts=str(lab.known_hosts),
        shared_dir=str(lab.shared),
        lab_dir=str(lab.dir),
        duration_s=round(time.monotonic() - started, 3),
    )
    module.exit_json(**result)


if __name__ == "__main__":
    main()
