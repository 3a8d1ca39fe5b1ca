"""Integration fixtures: the local lab and the soft-dirty guest lab, each brought up once
per test session (and taken down at its end if the session made it, unless KEEP_LAB=1),
and playbook runs via ansible-runner."""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = REPO / ".venv" / "bin"
LAB_INVENTORY = REPO / "inventories" / "lab" / "hosts.yml"
GUEST_INVENTORY = REPO / "inventories" / "lab_guest" / "hosts.yml"
GUEST_LAB_DIR = REPO / ".lab" / "guest"


def suite_env() -> dict[str, str]:
    """Environment for ansible commands run by the tests: the suite's config and venv."""
    env = dict(os.environ)
    env["ANSIBLE_CONFIG"] = str(REPO / "ansible.cfg")
    env["PATH"] = f"{VENV_BIN}:{env.get('PATH', '')}"
    env["ANSIBLE_NOCOLOR"] = "1"
    return env


def ansible_playbook(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [str(VENV_BIN / "ansible-playbook"), *args],
        cwd=REPO,
        env=suite_env(),
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        check=False,
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"ansible-playbook {' '.join(args)} failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-2000:]}"
        )
    return proc


def on_host(host: str, command: str) -> subprocess.CompletedProcess[str]:
    """Run a shell command on a lab host through Ansible (real SSH)."""
    return subprocess.run(
        [str(VENV_BIN / "ansible"), host, "-m", "shell", "-a", command, "-o"],
        cwd=REPO,
        env=suite_env(),
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        check=False,
    )


@dataclass
class PlaybookRun:
    rc: int
    status: str
    stdout: str
    events: list[dict[str, Any]] = field(default_factory=list)
    results_root: Path | None = None

    def results_dirs(self) -> list[Path]:
        assert self.results_root is not None
        return sorted(p for p in self.results_root.iterdir() if p.is_dir())

    def only_results_dir(self) -> Path:
        dirs = self.results_dirs()
        assert len(dirs) == 1, f"expected one results folder, found {dirs}"
        return dirs[0]

    def metrics(self) -> dict[str, Any]:
        return json.loads((self.only_results_dir() / "metrics.json").read_text())

    def hosts_touched(self) -> set[str]:
        """Hosts any task ran on (runner_on_* events)."""
        hosts: set[str] = set()
        for event in self.events:
            data = event.get("event_data", {})
            if event.get("event", "").startswith("runner_on_") and data.get("host"):
                hosts.add(data["host"])
                if data.get("delegate_to") if isinstance(data.get("delegate_to"), str) else False:
                    hosts.add(data["delegate_to"])
        return hosts


def run_playbook(
    tmp_path: Path, playbook: str, extravars: dict[str, Any], inventory: str | None = None
) -> PlaybookRun:
    """Run one of the suite's playbooks through ansible-runner (the suite's CI interface)."""
    import ansible_runner

    results_root = tmp_path / "results"
    extravars = {"results_root": str(results_root), **extravars}
    private = tmp_path / "runner"
    private.mkdir(parents=True, exist_ok=True)
    env = {
        "ANSIBLE_CONFIG": str(REPO / "ansible.cfg"),
        # ansible-runner sets its own callback path; keep ours on it.
        "ANSIBLE_CALLBACK_PLUGINS": str(REPO / "callback_plugins"),
        # ansible-runner puts SSH control sockets under ~/.ansible/cp unless told otherwise.
        "ANSIBLE_SSH_CONTROL_PATH_DIR": str(REPO / ".ansible" / "cp"),
        "PATH": f"{VENV_BIN}:{os.environ.get('PATH', '')}",
        "ANSIBLE_NOCOLOR": "1",
    }
    kwargs: dict[str, Any] = {}
    if inventory:
        kwargs["inventory"] = inventory
    runner = ansible_runner.run(
        private_data_dir=str(private),
        project_dir=str(REPO),
        playbook=playbook,
        extravars=extravars,
        envvars=env,
        quiet=True,
        **kwargs,
    )
    stdout = runner.stdout.read() if runner.stdout else ""
    return PlaybookRun(
        rc=runner.rc,
        status=runner.status,
        stdout=stdout,
        events=list(runner.events),
        results_root=results_root if results_root.exists() else None,
    )


@pytest.fixture(scope="session")
def lab() -> Iterator[Path]:
    """The suite's default local lab, up for the whole session (torn down if this made it)."""
    proc = ansible_playbook("playbooks/lab.yml", "-e", "lab_state=present")
    created = "created: none" not in proc.stdout
    assert LAB_INVENTORY.exists()
    yield LAB_INVENTORY
    if created and not os.environ.get("KEEP_LAB"):
        ansible_playbook("playbooks/lab.yml", "-e", "lab_state=absent", check=False)


def _say_guest_lab(message: str) -> None:
    print(f"[guest lab] {message}", flush=True)


def guest_lab_leftovers() -> list[str]:
    """QEMU processes, links and disks of the guest lab that are still there."""
    left: list[str] = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                argv = (entry / "cmdline").read_bytes().decode(errors="replace").split("\0")
            except OSError:
                continue
            if any(arg.startswith(str(GUEST_LAB_DIR / "hosts")) for arg in argv):
                left.append(f"process {entry.name}: {' '.join(argv)[:120]}")
    links = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True).stdout
    left += [
        f"link {line.split(':')[1].strip()}"
        for line in links.splitlines()
        if line.split(":")[1].strip().split("@")[0].startswith("crlabg")
    ]
    left += [
        f"file {path}"
        for pattern in ("hosts/*/disk.qcow2", "hosts/*/config.tar", "state.json")
        for path in GUEST_LAB_DIR.glob(pattern)
    ]
    if GUEST_INVENTORY.exists():
        left.append(f"file {GUEST_INVENTORY}")
    return left


@pytest.fixture(scope="session")
def guest_lab() -> Iterator[Path]:
    """The soft-dirty guest lab's two QEMU guests, up for the whole session, shared by every
    test that asks for it: the image is built first when not cached (`make guest-image`,
    1-2 minutes cold), the guests booted unless already running. When this session booted
    them it takes them down at its end and checks that nothing is left behind (no QEMU
    process, tap, bridge or overlay); KEEP_LAB=1 leaves them up."""
    t0 = time.monotonic()
    proc = ansible_playbook(
        "playbooks/lab.yml", "-e", "lab_flavour=guest", "-e", "lab_state=present"
    )
    built = "image built in" in proc.stdout
    created = "created: none" not in proc.stdout
    _say_guest_lab(
        f"up in {time.monotonic() - t0:.1f} s (image {'built' if built else 'cached'}, "
        f"guests {'booted' if created else 'already running'})"
    )
    assert GUEST_INVENTORY.exists()
    yield GUEST_INVENTORY
    if created and not os.environ.get("KEEP_LAB"):
        t1 = time.monotonic()
        ansible_playbook("playbooks/lab.yml", "-e", "lab_flavour=guest", "-e", "lab_state=absent")
        _say_guest_lab(f"down in {time.monotonic() - t1:.1f} s")
        assert guest_lab_leftovers() == []
