"""The built-in local lab (issue 3), brought up for real with `playbooks/lab.yml`.

These tests never touch the default lab (prefix crlab, .lab/, 10.77.0.0/24,
inventories/lab/hosts.yml): they bring up their own labs with other prefixes, subnets,
folders and inventories, and always tear them down again.

- `lab` (module-scoped): one pair, prefix crlabt, 10.72.0.0/24, up once for most tests;
- `test_two_pairs`: its own lab, prefix crlabu, `lab_pairs=2`;
- `test_lab_dir_under_a_host_private_mount`: its own lab, prefix crlabv;
- `test_a_subnet_already_in_use_is_refused`: prefix crlabw, on a subnet the test first
  gives to a veth pair of its own (crlabwx/crlabwy).

Only crlabt's subnet is fixed (10.72.0.0/24, clear of the benchmark's crbench lab on
10.78.0.0/24); the others take the first /24 of 10.178-199 that nothing on this machine uses (other labs - the QEMU guest lab takes 10.79.0.0/24 -
run beside these tests). A subnet or prefix already in use stops the tests with a message.

The lab folders live under /var/tmp, not pytest's /tmp: a host's /tmp is a private tmpfs,
which hides a lab folder under /tmp from inside the hosts
(`test_lab_dir_under_a_host_private_mount`).
The measured lab-up (cold / warm) and lab-down durations are printed (`pytest -s`).
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
BIN = REPO / ".venv" / "bin"
INIT_MARKER = "criu-lab-init"
PRIVATE_MOUNTS = ("/run", "/root", "/tmp", "/var/log", "/var/lib/criu-migration", "/dev/shm")
SHARED_MOUNT = "/mnt/criu-shared"
SOURCE_FIRST_PID = 16000
NAMESPACES = ("pid", "mnt", "net", "uts", "ipc")

# The default lab, which other tests use and which may be up right now.
DEFAULT_LAB = {
    "prefix": "crlab",
    "subnet": "10.77.0.0/24",
    "lab_dir": REPO / ".lab",
    "inventory": REPO / "inventories" / "lab" / "hosts.yml",
}

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="the local lab needs root"),
    pytest.mark.skipif(
        not (BIN / "ansible-playbook").exists(), reason="no .venv: run `make setup` first"
    ),
]

# Measured durations (s): wall clock of the ansible-playbook call, and the module's own.
TIMINGS: dict[str, tuple[float, float | None]] = {}


def record_timing(name: str, run: PlaybookRun) -> None:
    TIMINGS[name] = (run.wall_s, run.module_s)
    print(f"\n[lab timing] {name}: {run.wall_s:.2f} s (local_lab module: {run.module_s} s)")


def print_timings() -> None:
    if not TIMINGS:
        return
    print("\n[lab timings] ansible-playbook wall clock (local_lab module's own duration_s)")
    for name, (wall, module_s) in TIMINGS.items():
        print(f"[lab timings]   {name:<36} {wall:6.2f} s  ({module_s} s)")


# -- running Ansible ------------------------------------------------------------------


@dataclass
class PlaybookRun:
    returncode: int
    output: str
    wall_s: float

    @property
    def recap(self) -> dict[str, int]:
        match = re.search(r"^localhost\s*:\s*(.*)$", self.output, re.MULTILINE)
        assert match, f"no PLAY RECAP in:\n{self.output[-3000:]}"
        return {key: int(value) for key, value in re.findall(r"(\w+)=(\d+)", match.group(1))}

    @property
    def report(self) -> str:
        """The playbook's closing line: 'lab up in X s; hosts: ...; created: ...'."""
        match = re.search(r"lab (?:up|down) in [\d.]+ s;[^\"\n]*", self.output)
        assert match, f"no report line in:\n{self.output[-3000:]}"
        return " ".join(match.group(0).split())

    @property
    def module_s(self) -> float | None:
        match = re.search(r"lab (?:up|down) in ([\d.]+) s", self.output)
        return float(match.group(1)) if match else None

    def tail(self, chars: int = 4000) -> str:
        return self.output[-chars:]


@dataclass
class AdHoc:
    returncode: int
    output: str
    results: dict[str, dict]

    def stdout(self, host: str) -> str:
        result = self.results[host]
        assert result.get("rc") == 0 and not result.get("unreachable"), (host, result)
        return result["stdout"]


@dataclass
class Lab:
    """A lab of the tests' own: never the default one."""

    prefix: str
    subnet: str
    root: Path  # the lab's folder and files (under /var/tmp)
    work: Path  # inventory, SSH control sockets, ad-hoc results (pytest's tmp)
    calls: int = field(default=0)

    def __post_init__(self) -> None:
        assert self.prefix != DEFAULT_LAB["prefix"]
        assert self.subnet != DEFAULT_LAB["subnet"]
        assert self.lab_dir.resolve() != DEFAULT_LAB["lab_dir"].resolve()
        assert self.inventory.resolve() != DEFAULT_LAB["inventory"].resolve()

    @property
    def lab_dir(self) -> Path:
        return self.root / "lab"

    @property
    def inventory(self) -> Path:
        return self.work / "hosts.yml"

    @property
    def control_path_dir(self) -> Path:
        return self.work / "cp"

    @property
    def bridge(self) -> str:
        return f"{self.prefix}0"

    def env(self, control_path_dir: Path | None = None) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("ANSIBLE_")}
        env.update(
            ANSIBLE_CONFIG=str(REPO / "ansible.cfg"),
            ANSIBLE_SSH_CONTROL_PATH_DIR=str(control_path_dir or self.control_path_dir),
            ANSIBLE_NOCOLOR="1",
            ANSIBLE_DEPRECATION_WARNINGS="false",
        )
        return env

    def playbook(self, state: str = "present", pairs: int = 1) -> PlaybookRun:
        argv = [
            str(BIN / "ansible-playbook"),
            "playbooks/lab.yml",
            "-e", f"lab_state={state}",
            "-e", f"lab_pairs={pairs}",
            "-e", f"lab_prefix={self.prefix}",
            "-e", f"lab_subnet={self.subnet}",
            "-e", f"lab_dir={self.lab_dir}",
            "-e", f"lab_inventory={self.inventory}",
        ]  # fmt: skip
        started = time.monotonic()
        proc = subprocess.run(
            argv,
            cwd=REPO,
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        return PlaybookRun(proc.returncode, proc.stdout + proc.stderr, time.monotonic() - started)

    def up(self, pairs: int = 1) -> PlaybookRun:
        return self.playbook("present", pairs)

    def down(self) -> PlaybookRun:
        self.close_ssh_masters()
        return self.playbook("absent")

    def adhoc(
        self,
        pattern: str,
        module: str,
        args: str | None = None,
        extra: list[str] | None = None,
        control_path_dir: Path | None = None,
    ) -> AdHoc:
        """`ansible PATTERN -i <inventory> -m MODULE -a ARGS`; per-host results as JSON."""
        self.calls += 1
        tree = self.work / f"tree-{self.calls}"
        argv = [str(BIN / "ansible"), pattern, "-i", str(self.inventory), "-m", module]
        argv += ["-a", args] if args is not None else []
        argv += ["-t", str(tree), *(extra or [])]
        proc = subprocess.run(
            argv,
            cwd=REPO,
            env=self.env(control_path_dir),
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        results = {}
        if tree.is_dir():
            results = {path.name: json.loads(path.read_text()) for path in tree.iterdir()}
        return AdHoc(proc.returncode, proc.stdout + proc.stderr, results)

    def shell(self, pattern: str, command: str) -> AdHoc:
        return self.adhoc(pattern, "ansible.builtin.shell", command)

    def state(self) -> dict:
        return json.loads((self.lab_dir / "state.json").read_text())

    def inventory_hosts(self) -> dict[str, dict]:
        data = yaml.safe_load(self.inventory.read_text())
        hosts: dict[str, dict] = {}
        for group in data["all"]["children"]["lab"]["children"].values():
            hosts.update(group.get("hosts") or {})
        return hosts

    def close_ssh_masters(self) -> None:
        """End the ControlPersist masters our Ansible calls left (they are ours, not the lab's)."""
        for directory in self.work.glob("cp*"):
            for socket_path in directory.iterdir():
                subprocess.run(
                    ["ssh", "-O", "exit", "-o", f"ControlPath={socket_path}", "lab-host"],
                    capture_output=True,
                    timeout=10,
                    check=False,
                )


# -- inspecting the control machine ----------------------------------------------------


def processes_mentioning(text: str) -> dict[int, str]:
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmdline:
            found[int(entry.name)] = cmdline.strip()
    return found


def running(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def lab_init(pid: int, lab: Lab) -> bool:
    """Whether `pid` is one of this lab's host inits (so it is ours to kill)."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return False
    return INIT_MARKER in argv and str(lab.lab_dir) in argv and "unshare" not in argv[0]


def links() -> list[str]:
    out = subprocess.run(
        ["ip", "-o", "link", "show"], capture_output=True, text=True, check=True
    ).stdout
    return [line.split(":")[1].strip().split("@")[0] for line in out.splitlines()]


def namespace_ids(pid: int) -> dict[str, str]:
    return {ns: os.readlink(f"/proc/{pid}/ns/{ns}") for ns in NAMESPACES}


def namespaces_in_use() -> set[str]:
    """Every namespace some process is in, plus those held by a mount (nsfs)."""
    held: set[str] = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        for ns in NAMESPACES:
            with contextlib.suppress(OSError):
                held.add(os.readlink(entry / "ns" / ns))
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        if " - nsfs " in line:
            held.add(line.split()[3].strip("/"))
    return held


def listed_by_lsns() -> set[str]:
    out = subprocess.run(
        ["lsns", "-n", "-o", "TYPE,NS"], capture_output=True, text=True, check=True
    ).stdout
    return {
        f"{kind}:[{inode}]" for kind, inode in (line.split() for line in out.splitlines() if line)
    }


def lab_inits(lab: Lab) -> dict[int, str]:
    """This lab's live host inits, found by their command line (state.json or not)."""
    found = {}
    for pid in processes_mentioning(INIT_MARKER):
        if lab_init(pid, lab) and running(pid):
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
            found[pid] = argv[argv.index(INIT_MARKER) + 2]
    return found


def snapshot(lab: Lab) -> dict:
    """What a lab-down must make disappear: processes, namespaces."""
    inits = sorted(lab_inits(lab))
    ns_ids: set[str] = set()
    for pid in inits:
        ns_ids |= set(namespace_ids(pid).values())  # e.g. "net:[4026532330]"
    return {"inits": inits, "namespaces": ns_ids}


def assert_nothing_left(lab: Lab, before: dict) -> None:
    leftover = processes_mentioning(str(lab.lab_dir))
    assert not leftover, f"processes still mention {lab.lab_dir}: {leftover}"
    # (any process left inside a host would also keep that host's namespaces, checked below)
    assert not [pid for pid in before["inits"] if running(pid)], before["inits"]
    ours = [link for link in links() if re.fullmatch(rf"{lab.prefix}p?\d+", link)]
    assert not ours, f"links left: {ours}"
    bridge = subprocess.run(["ip", "link", "show", "dev", lab.bridge], capture_output=True)
    assert bridge.returncode != 0, f"bridge {lab.bridge} still exists"
    mounts = [
        line
        for line in Path("/proc/self/mountinfo").read_text().splitlines()
        if str(lab.lab_dir) in line
    ]
    assert not mounts, mounts
    gone = before["namespaces"]
    assert len(gone) == len(NAMESPACES) * len(before["inits"]), gone
    assert not gone & namespaces_in_use(), gone & namespaces_in_use()
    assert not gone & listed_by_lsns(), gone & listed_by_lsns()
    named = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert lab.prefix not in named, named


def subnets_in_use() -> list[tuple[ipaddress.IPv4Network, str]]:
    """Every IPv4 network routed or addressed on this machine, with its device."""
    used = []
    for argv in (["ip", "-4", "-o", "addr", "show"], ["ip", "-4", "route", "show", "table", "all"]):
        out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
        for line in out.splitlines():
            words = line.split()
            device = words[words.index("dev") + 1] if "dev" in words else words[1]
            for word in words:
                with contextlib.suppress(ValueError):
                    if "/" in word or word[0].isdigit():
                        network = ipaddress.ip_network(word, strict=False)
                        if network.prefixlen < 32 and not network.is_loopback:
                            used.append((network, device))
    return used


def subnet_user(subnet: str) -> str | None:
    wanted = ipaddress.ip_network(subnet)
    for network, device in subnets_in_use():
        if network.overlaps(wanted):
            return f"{network} on {device}"
    return None


def free_subnet() -> str:
    for second in range(178, 200):
        candidate = f"10.{second}.0.0/24"
        if subnet_user(candidate) is None:
            return candidate
    pytest.fail("no free /24 in 10.178-199.0.0 for a test lab")


def refuse_if_taken(prefix: str, subnet: str | None) -> None:
    """A lab with our prefix already up (an earlier run killed before its teardown?), or
    our subnet used by something else (another lab)."""
    user = subnet_user(subnet) if subnet else None
    if user:
        pytest.fail(f"the test lab's subnet {subnet} is already in use here: {user}")
    if f"{prefix}0" in links():
        stale = {
            pid: cmd
            for pid, cmd in processes_mentioning(INIT_MARKER).items()
            if f"/{prefix}-" in cmd and "unshare" not in cmd.split()[0]
        }
        pytest.fail(
            f"a lab with prefix {prefix} is already up (bridge {prefix}0; inits: {stale}). "
            f"Tear it down with: ansible-playbook playbooks/lab.yml -e lab_state=absent "
            f"-e lab_prefix={prefix} -e lab_dir=<its lab dir>"
        )


@contextlib.contextmanager
def own_lab(
    prefix: str, subnet: str, work: Path, root: Path | None = None, *, subnet_free: bool = True
) -> Iterator[Lab]:
    """A lab of our own whose teardown always runs."""
    refuse_if_taken(prefix, subnet if subnet_free else None)
    made_root = root is None
    root = root or Path(tempfile.mkdtemp(prefix=f"{prefix}-", dir="/var/tmp"))
    lab = Lab(prefix, subnet, root, work)
    try:
        yield lab
    finally:
        down = lab.down()
        if down.returncode != 0:
            print(f"\n[lab] lab-down of {lab.lab_dir} failed:\n{down.tail()}")
        elif made_root:
            shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    try:
        with own_lab("crlabt", "10.72.0.0/24", tmp_path_factory.mktemp("crlabt")) as lab:
            run = lab.up()
            record_timing("lab-up (cold)", run)
            assert run.returncode == 0, run.tail()
            assert "created: source, destination" in run.report, run.report
            yield lab
    finally:
        print_timings()


def ansible_ping_ok(lab: Lab, pattern: str = "all") -> AdHoc:
    ping = lab.adhoc(pattern, "ansible.builtin.ping")
    assert ping.returncode == 0, ping.output[-3000:]
    return ping


# -- the tests -----------------------------------------------------------------------------


def test_ansible_ping_through_pinned_host_keys(lab: Lab):
    ping = ansible_ping_ok(lab)
    assert sorted(ping.results) == ["destination", "source"]
    assert all(result.get("ping") == "pong" for result in ping.results.values()), ping.results

    inventory = yaml.safe_load(lab.inventory.read_text())
    common = " ".join(inventory["all"]["vars"]["ansible_ssh_common_args"].split())
    assert f"-o UserKnownHostsFile={lab.lab_dir}/known_hosts" in common
    assert "-o StrictHostKeyChecking=yes" in common
    assert "StrictHostKeyChecking=no" not in json.dumps(inventory)  # comments aside
    assert inventory["all"]["vars"]["ansible_python_interpreter"] == "/usr/bin/python3"
    known = (lab.lab_dir / "known_hosts").read_text().splitlines()
    hosts = lab.inventory_hosts()
    for name, hostvars in hosts.items():
        assert any(line.startswith(f"{hostvars['ansible_host']},{name} ") for line in known), known


def test_another_known_hosts_fails_host_key_verification(lab: Lab, tmp_path: Path):
    address = lab.inventory_hosts()["source"]["ansible_host"]
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "other")],
        check=True,
    )
    other_key = (tmp_path / "other.pub").read_text().split()[:2]
    wrong = tmp_path / "wrong_known_hosts"
    wrong.write_text(f"{address},source {' '.join(other_key)}\n")
    empty = tmp_path / "empty_known_hosts"
    empty.write_text("")

    def ssh(known_hosts: Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [
                "ssh", "-i", str(lab.lab_dir / "id_ed25519"), "-o", "IdentitiesOnly=yes",
                "-o", f"UserKnownHostsFile={known_hosts}", "-o", "GlobalKnownHostsFile=/dev/null",
                "-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes",
                "-o", "ControlMaster=no", "-o", "ControlPath=none", "-o", "ConnectTimeout=10",
                f"root@{address}", "hostname",
            ],
            capture_output=True, text=True, timeout=30, check=False, stdin=subprocess.DEVNULL,
        )  # fmt: skip

    good = ssh(lab.lab_dir / "known_hosts")
    assert good.returncode == 0 and good.stdout.strip() == "source", good.stderr
    for known_hosts in (wrong, empty):
        bad = ssh(known_hosts)
        assert bad.returncode == 255, (known_hosts, bad.stdout, bad.stderr)
        assert "Host key verification failed" in bad.stderr, bad.stderr
    assert "REMOTE HOST IDENTIFICATION HAS CHANGED" in ssh(wrong).stderr

    # Ansible too (fresh control sockets, so no open master hides the check).
    ping = lab.adhoc(
        "source",
        "ansible.builtin.ping",
        extra=[
            "-e",
            f"ansible_ssh_common_args='-o UserKnownHostsFile={wrong} "
            "-o GlobalKnownHostsFile=/dev/null -o StrictHostKeyChecking=yes'",
        ],
        control_path_dir=tmp_path / "cp-other",
    )
    assert ping.returncode != 0
    assert ping.results["source"].get("unreachable"), ping.results
    assert "Host key verification failed" in ping.results["source"]["msg"]


HOST_FACTS = (
    '/usr/bin/python3 -c "import json, os, socket; print(json.dumps({'
    "'hostname': socket.gethostname(), "
    "'ns': {ns: os.readlink('/proc/self/ns/' + ns) for ns in ('pid', 'mnt', 'net', 'uts', 'ipc')}, "
    "'init': open('/proc/1/cmdline').read().split(chr(0)), "
    "'pid': os.getpid()}))\""
)


def test_each_host_has_its_own_name_and_namespaces(lab: Lab):
    facts = lab.shell("all", HOST_FACTS)
    hosts = {name: json.loads(facts.stdout(name)) for name in ("source", "destination")}
    control = namespace_ids(os.getpid())
    for name, info in hosts.items():
        assert info["hostname"] == name
        for ns in NAMESPACES:
            assert info["ns"][ns] != control[ns], (name, ns)
        # PID 1 is the lab's reaper init (a python loop around os.wait()), not sleep.
        assert info["init"][0] == "/usr/bin/python3"
        assert "os.wait()" in info["init"][2]
        assert info["init"][3:6] == [INIT_MARKER, str(lab.lab_dir), name]
    for ns in NAMESPACES:
        assert hosts["source"]["ns"][ns] != hosts["destination"]["ns"][ns], ns
    # The control machine sees each host's init as an ordinary process in those namespaces.
    for name, info in lab.state()["hosts"].items():
        assert namespace_ids(info["init_pid"]) == hosts[name]["ns"]


def test_each_host_sees_its_own_network_devices_in_sys(lab: Lab):
    """A real host's /sys/class/net lists its own links (tools read counters there)."""
    out = lab.shell("all", "ls /sys/class/net; echo ---; ip -o link show | cut -d: -f2")
    for name in ("source", "destination"):
        in_sys, in_netlink = out.stdout(name).split("---")
        links_seen = sorted(link.split("@")[0] for link in in_netlink.split())
        assert links_seen == ["eth0", "lo"], in_netlink
        assert sorted(in_sys.split()) == links_seen, (
            f"{name}'s /sys/class/net is not its own (sysfs of the control machine's network "
            f"namespace): {sorted(in_sys.split())}"
        )


def test_private_disks_and_the_shared_dir(lab: Lab):
    mark = f"crlabt-{uuid.uuid4().hex}"
    mounts = " ".join(PRIVATE_MOUNTS)
    write = (
        f"for d in {mounts}; do echo $d $(findmnt -n -o FSTYPE --mountpoint $d); "
        f"echo secret > $d/{mark}; done; "
        f"findmnt -n -o TARGET --mountpoint {SHARED_MOUNT}; "
        f"echo shared-{mark} > {SHARED_MOUNT}/{mark}"
    )
    look = f"for d in {mounts}; do ls $d/{mark} 2>/dev/null; done; cat {SHARED_MOUNT}/{mark}"
    try:
        lines = lab.shell("source", write).stdout("source").splitlines()
        fstypes = dict(line.split() for line in lines[: len(PRIVATE_MOUNTS)])
        assert fstypes == dict.fromkeys(PRIVATE_MOUNTS, "tmpfs"), lines
        assert lines[len(PRIVATE_MOUNTS)] == SHARED_MOUNT, lines

        seen = lab.shell("destination", look).stdout("destination").splitlines()
        assert seen == [f"shared-{mark}"], "private files leaked, or the shared file is missing"
        for directory in PRIVATE_MOUNTS:
            assert not (Path(directory) / mark).exists(), f"{directory} is not private"
        shared_file = lab.lab_dir / "shared" / mark
        assert shared_file.read_text() == f"shared-{mark}\n"

        # and the other way round: the destination's disk is its own too
        lab.shell("destination", f"echo dest > /var/lib/criu-migration/{mark}-d").stdout(
            "destination"
        )
        check = lab.shell("source", f"ls /var/lib/criu-migration/{mark}-d 2>&1 || true")
        assert "No such file" in check.stdout("source")
    finally:
        (lab.lab_dir / "shared" / mark).unlink(missing_ok=True)
        lab.shell("all", f"rm -f {' '.join(f'{d}/{mark}*' for d in PRIVATE_MOUNTS)}")


def test_source_pids_start_high_destination_pids_stay_low(lab: Lab):
    out = lab.shell("all", "sh -c 'echo $$'")
    assert int(out.stdout("source")) >= SOURCE_FIRST_PID
    assert int(out.stdout("destination")) < SOURCE_FIRST_PID


ORPHAN = (
    "p=$(setsid sh -c 'sleep 0.5 </dev/null >/dev/null 2>&1 & echo $!'); "
    "for i in $(seq 100); do pp=$(cut -d' ' -f4 /proc/$p/stat 2>/dev/null); "
    '[ "$pp" = 1 ] && break; sleep 0.02; done; echo "ppid=$pp"; sleep 1.5; '
    "if [ -e /proc/$p ]; then echo state=$(cut -d' ' -f3 /proc/$p/stat); "
    "else echo state=gone; fi; echo zombies=$(ps -eo stat= | grep -c '^Z')"
)


def test_init_reaps_orphans(lab: Lab):
    out = lab.shell("all", ORPHAN)
    for name in ("source", "destination"):
        # the orphan was adopted by the host's init, which reaped it when it exited
        assert out.stdout(name).split() == ["ppid=1", "state=gone", "zombies=0"], name


def test_ssh_from_source_to_destination(lab: Lab):
    destination = lab.inventory_hosts()["destination"]["ansible_host"]
    command = (
        f"ssh -i {lab.lab_dir}/id_ed25519 -o UserKnownHostsFile={lab.lab_dir}/known_hosts "
        f"-o StrictHostKeyChecking=yes -o BatchMode=yes -o ControlPath=none "
        f"root@{destination} hostname"
    )
    out = lab.shell("source", command)
    assert out.stdout("source").strip() == "destination"


def test_no_route_beyond_the_lab(lab: Lab):
    subnet = ipaddress.ip_network(lab.subnet)
    outside = [
        line.split()[3].split("/")[0]
        for line in subprocess.run(
            ["ip", "-4", "-o", "addr", "show"], capture_output=True, text=True, check=True
        ).stdout.splitlines()
    ]
    outside = [
        a
        for a in outside
        if ipaddress.ip_address(a) not in subnet and not ipaddress.ip_address(a).is_loopback
    ]
    assert outside, "the control machine has no address outside the lab to try"
    probe = (
        "ip -4 route show; echo ---; ip -6 route show default; echo ---; "
        '/usr/bin/python3 -c "import socket, sys\n'
        "for a in sys.argv[1:]:\n"
        "    try:\n"
        "        socket.create_connection((a, 22), timeout=3).close(); print(a, 'connected')\n"
        "    except OSError as e:\n"
        '        print(a, e.errno)" ' + " ".join(outside)
    )
    out = lab.shell("all", probe)
    for name, hostvars in lab.inventory_hosts().items():
        routes, default6, connects = out.stdout(name).split("---\n")
        assert [" ".join(line.split()[:3]) for line in routes.splitlines()] == [
            f"{lab.subnet} dev eth0"
        ], routes
        assert f"src {hostvars['ansible_host']}" in routes
        assert default6.strip() == ""
        for line in connects.splitlines():
            address, result = line.split()
            assert result == str(errno.ENETUNREACH), f"{name} -> {address}: {result}"


def test_lab_up_again_changes_nothing(lab: Lab):
    before = lab.state()
    run = lab.up()
    record_timing("lab-up (warm)", run)
    assert run.returncode == 0, run.tail()
    assert run.recap["changed"] == 0, run.tail()
    assert run.report.endswith("created: none"), run.report
    after = lab.state()
    assert {n: h["init_pid"] for n, h in after["hosts"].items()} == {
        n: h["init_pid"] for n, h in before["hosts"].items()
    }
    ansible_ping_ok(lab)


def heal(lab: Lab, budget_s: float = 90) -> None:
    """Make sure the lab answers (an earlier failure may have left it broken)."""
    deadline = time.monotonic() + budget_s
    while lab.adhoc("all", "ansible.builtin.ping").returncode != 0:
        assert time.monotonic() < deadline, "the test lab did not come back"
        lab.up()


def neighbours(lab: Lab) -> str:
    out = subprocess.run(
        ["ip", "neigh", "show", "dev", lab.bridge], capture_output=True, text=True, check=False
    )
    return out.stdout.strip()


@pytest.mark.parametrize("victims", [["source"], ["destination"], ["destination", "source"]])
def test_a_killed_host_is_recreated(lab: Lab, victims: list[str]):
    """After a crash (init killed), lab-up recreates exactly the dead hosts, right away.

    The hosts were just used (as after any experiment), so the control machine's
    neighbour cache holds their addresses' link-layer addresses, as REACHABLE.
    """
    heal(lab)
    before = lab.state()["hosts"]
    cache_before = neighbours(lab)
    for name in victims:
        victim = before[name]["init_pid"]
        assert lab_init(victim, lab), f"{victim} is not this lab's {name} init"
        os.kill(victim, signal.SIGKILL)  # a pid namespace's init ignores SIGTERM
    deadline = time.monotonic() + 10
    while any(running(before[n]["init_pid"]) for n in victims) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(running(before[n]["init_pid"]) for n in victims)

    run = lab.up()
    record_timing(f"lab-up (recover {'+'.join(victims)})", run)
    assert run.returncode == 0, (
        f"{run.tail(1500)}\nneighbour cache on {lab.bridge} before the kill:\n{cache_before}"
        f"\nafter the failed lab-up:\n{neighbours(lab)}"
    )
    assert run.report.endswith(f"created: {', '.join(sorted(victims, reverse=True))}"), run.report
    after = lab.state()["hosts"]
    for name in ("source", "destination"):
        if name in victims:
            assert after[name]["init_pid"] != before[name]["init_pid"]
            assert lab_init(after[name]["init_pid"], lab)
            for key in ("unshare_pid", "sshd_launcher_pid"):
                assert not running(before[name][key]), (name, key)
        else:
            assert after[name]["init_pid"] == before[name]["init_pid"]
    ansible_ping_ok(lab)
    facts = lab.shell("all", HOST_FACTS)
    for name in ("source", "destination"):
        assert json.loads(facts.stdout(name))["hostname"] == name
    assert json.loads(facts.stdout("source"))["pid"] >= SOURCE_FIRST_PID


def link_address(name: str) -> str:
    return Path(f"/sys/class/net/{name}/address").read_text().strip()


def test_a_peer_reaches_a_recreated_host_at_once(lab: Lab):
    """Transfers go host to host: after the source is recreated (crash, lab-up), the
    destination - which talked to the old source a moment ago - must reach the new one
    right away, and the hosts must still reach the control machine's bridge address.

    A host's eth0 gets a new random link-layer address each time it is created, and the
    bridge takes the lowest of its ports' addresses, so a recreated host can leave its
    peers' and the control machine's neighbour caches pointing at addresses that are gone
    (REACHABLE for 15-45 s, then a few seconds of probing)."""
    heal(lab)
    hosts = lab.inventory_hosts()
    source_ip = hosts["source"]["ansible_host"]
    ssh = (
        f"ssh -i {lab.lab_dir}/id_ed25519 -o UserKnownHostsFile={lab.lab_dir}/known_hosts "
        f"-o StrictHostKeyChecking=yes -o BatchMode=yes -o ControlPath=none "
        f"-o ConnectTimeout=5 root@{source_ip} hostname"
    )
    timed = f"s=$(date +%s%N); {ssh} 2>&1; echo rc=$? took_ms=$(( ($(date +%s%N) - s) / 1000000 ))"
    warm = lab.shell("destination", timed).stdout("destination")
    assert warm.split()[0] == "source", warm

    before = lab.state()["hosts"]
    bridge_before = link_address(lab.bridge)
    victim = before["source"]["init_pid"]
    assert lab_init(victim, lab)
    os.kill(victim, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while running(victim) and time.monotonic() < deadline:
        time.sleep(0.05)
    run = lab.up()
    assert run.returncode == 0, run.tail(1500)
    assert run.report.endswith("created: source"), run.report
    bridge_after = link_address(lab.bridge)

    after = lab.shell("destination", f"{timed}; ip neigh show dev eth0")
    out = after.stdout("destination")
    if out.split()[0] != "source":
        new_link = lab.shell("source", "ip -o link show dev eth0").stdout("source").split()
        new_mac = new_link[new_link.index("link/ether") + 1]
        pytest.fail(
            f"the destination could not reach the recreated source at {source_ip} "
            f"(its eth0 is now {new_mac}; bridge {lab.bridge}'s address went "
            f"{bridge_before} -> {bridge_after}); on the destination:\n{out}"
        )
    assert "rc=0" in out, out


def test_two_pairs(tmp_path_factory: pytest.TempPathFactory):
    work = tmp_path_factory.mktemp("crlabu")
    with own_lab("crlabu", free_subnet(), work) as lab:
        run = lab.up(pairs=2)
        record_timing("lab-up (2 pairs, cold)", run)
        assert run.returncode == 0, run.tail()
        listing = json.loads(
            subprocess.run(
                [str(BIN / "ansible-inventory"), "-i", str(lab.inventory), "--list"],
                cwd=REPO,
                env=lab.env(),
                capture_output=True,
                text=True,
                timeout=60,
                check=True,
            ).stdout
        )
        assert sorted(listing["source"]["hosts"]) == ["source-1", "source-2"]
        assert sorted(listing["destination"]["hosts"]) == ["destination-1", "destination-2"]
        hostvars = listing["_meta"]["hostvars"]
        for pair in (1, 2):
            assert hostvars[f"source-{pair}"]["migration_peer"] == f"destination-{pair}"
        addresses = {name: hostvars[name]["ansible_host"] for name in hostvars}
        assert len(set(addresses.values())) == 4
        assert all(
            ipaddress.ip_address(a) in ipaddress.ip_network(lab.subnet) for a in addresses.values()
        )

        ping = ansible_ping_ok(lab)
        assert sorted(ping.results) == ["destination-1", "destination-2", "source-1", "source-2"]
        names = lab.shell("all", "hostname")
        assert {name: names.stdout(name).strip() for name in ping.results} == {
            name: name for name in ping.results
        }
        pids = lab.shell("all", "sh -c 'echo $$'")
        for pair in (1, 2):
            assert int(pids.stdout(f"source-{pair}")) >= SOURCE_FIRST_PID
            assert int(pids.stdout(f"destination-{pair}")) < SOURCE_FIRST_PID

        before = snapshot(lab)
        down = lab.down()
        record_timing("lab-down (2 pairs)", down)
        assert down.returncode == 0, down.tail()
        assert down.report.endswith("removed: destination-1, destination-2, source-1, source-2"), (
            down.report
        )
        assert_nothing_left(lab, before)


def test_lab_dir_under_a_host_private_mount(tmp_path_factory: pytest.TempPathFactory):
    """A lab folder under /tmp (pytest's tmp_path, for one): each host mounts a private
    tmpfs on /tmp, which hides the lab's own files (sshd config, keys, shared dir) inside
    the host. lab-up must either work or refuse up front, saying why."""
    work = tmp_path_factory.mktemp("crlabv")
    with own_lab("crlabv", free_subnet(), work, root=work) as lab:
        assert str(lab.lab_dir).startswith("/tmp/")
        run = lab.up()
        if run.returncode == 0:
            ansible_ping_ok(lab)
            return
        message = " ".join(run.tail().split())
        assert "special device" not in message, (
            "lab-up with lab_dir under /tmp fails with a bare mount error instead of saying "
            f"that /tmp is private to each host:\n{run.tail(1500)}"
        )
        assert "lab_dir" in message, f"a refusal must name what to change:\n{run.tail(1500)}"


def test_a_subnet_already_in_use_is_refused(tmp_path_factory: pytest.TempPathFactory):
    """Two labs on one /24 (it happened beside these tests: the QEMU guest lab's crlabg0
    and a namespaces lab on 10.79.0.0/24): the second lab's bridge gets an address whose
    route is already on another link, so its hosts are unreachable. lab-up must refuse up
    front, naming the subnet and where it is in use - not fail 15 s later with "sshd of
    source did not answer"."""
    subnet = free_subnet()
    # a veth pair of this test's own (no digits: not a crlabw lab link); no dummy links here
    taken_by, other_end = "crlabwx", "crlabwy"
    network = ipaddress.ip_network(subnet)
    subprocess.run(
        ["ip", "link", "add", taken_by, "type", "veth", "peer", "name", other_end], check=True
    )
    try:
        subprocess.run(
            ["ip", "addr", "add", f"{network.network_address + 1}/24", "dev", taken_by],
            check=True,
        )
        for link in (taken_by, other_end):
            subprocess.run(["ip", "link", "set", link, "up"], check=True)
        work = tmp_path_factory.mktemp("crlabw")
        with own_lab("crlabw", subnet, work, subnet_free=False) as lab:
            run = lab.up()
            record_timing("lab-up (subnet in use)", run)
            message = " ".join(run.tail(3000).split())
            assert run.returncode != 0, "a lab came up on a subnet routed elsewhere"
            assert subnet in message and taken_by in message, (
                f"lab-up on a subnet already in use ({subnet} on {taken_by}) took "
                f"{run.wall_s:.1f} s and did not say why:\n{run.tail(1500)}"
            )
    finally:
        subprocess.run(["ip", "link", "del", taken_by], check=False)


def test_lab_down_leaves_nothing_behind(lab: Lab):
    before = snapshot(lab)
    assert sorted(lab_inits(lab).values()) == ["destination", "source"]
    run = lab.down()
    record_timing("lab-down", run)
    assert run.returncode == 0, run.tail()
    assert run.report.endswith("removed: destination, source"), run.report
    assert_nothing_left(lab, before)
    assert not lab.inventory.exists()
    assert not (lab.lab_dir / "state.json").exists()

    again = lab.down()
    assert again.returncode == 0, again.tail()
    assert again.report.endswith("removed: none") and again.recap["changed"] == 0, again.tail()
