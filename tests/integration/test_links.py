"""A cloud link in the lab: migrate.yml under the cross-AZ inventory (inventories/lab_cross_az).

The test brings up a small lab of its own (prefix crlink, 10.73.0.0/24), never the session's
default one, so shaping never slows another test's links; its inventory is the cross-AZ
inventory with the lab's hosts file swapped in (hosts.yml -> this lab's, group_vars -> the
repository's inventories/lab_cross_az/group_vars): the same mechanism, another lab.

- one migration under that inventory: metrics.json names the profile and what was applied;
  the link measured before the workload started (library/lab_link.py's verification: TCP
  round trips and a bulk TCP stream through the shaped link) is within tolerance of the
  profile; the transfer never beat the profile's rate; afterwards no qdisc and no delay
  stage are left (and a finaliser removes any, whatever happened);
- a profile on hosts that are not lab hosts is refused, before anything is shaped.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from conftest import REPO, VENV_BIN, run_playbook, suite_env
from helpers import assert_continuous

pytestmark = pytest.mark.lab

PREFIX = "crlink"
SUBNET = "10.73.0.0/24"
LAB_ROOT = REPO / ".cache" / "test-link-lab"
PROFILE = yaml.safe_load((REPO / "config" / "link_profiles.yaml").read_text())["profiles"][
    "cross_az"
]
# 64 MiB at once: the shaped 1.25 Gbit/s link moves it in well under a second
MEMORY = {
    "workload": "memory",
    "mb_size": 64,
    "interval": 0.2,
    "max_memory": 64,
    "post_restore_capture_s": 1,
}
# Tolerances of the measured link against the profile. The round trip runs through the delay
# stage and two user-space probes on 2 cores shared with whatever else runs: the lower bound
# says the delay is there, the upper one allows the scheduling of a busy machine.
RTT_LOW, RTT_EXTRA_MS = 0.85, 2.5
# A bulk stream gets at most the shaped rate (+ htb's token bucket), and at least a good
# share of it unless the machine's CPU is the bottleneck.
RATE_LOW, RATE_HIGH = 0.5, 1.06


def lab_playbook(state: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            str(VENV_BIN / "ansible-playbook"), "playbooks/lab.yml", "-e", f"lab_state={state}",
            "-e", f"lab_prefix={PREFIX}", "-e", f"lab_subnet={SUBNET}",
            "-e", f"lab_dir={LAB_ROOT / 'lab'}", "-e", f"lab_inventory={LAB_ROOT / 'hosts.yml'}",
        ],
        cwd=REPO, env=suite_env(), capture_output=True, text=True, check=False, timeout=300,
    )  # fmt: skip


def leftovers() -> list[str]:
    """Any qdisc on the lab's links but a bare veth's, any delay-stage TAP or process."""
    found = []
    for link in (f"{PREFIX}1", f"{PREFIX}2"):
        shown = subprocess.run(
            ["tc", "qdisc", "show", "dev", link], capture_output=True, text=True, check=False
        )
        found += [f"{link}: {line}" for line in shown.stdout.splitlines() if "noqueue" not in line]
    links = subprocess.run(
        ["ip", "-o", "link", "show"], capture_output=True, text=True, check=False
    )
    found += [
        line.split(":")[1].strip() for line in links.stdout.splitlines() if f" {PREFIX}-d" in line
    ]
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                argv = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if any(b"delay_stage" in a for a in argv) and any(
                f"{PREFIX}-d".encode() in a for a in argv
            ):
                found.append(f"delay stage process {entry.name}")
    return found


@pytest.fixture(scope="module")
def link_lab() -> Iterator[Path]:
    """The test's own lab; at the end no shaping, no lab."""
    if os.geteuid() != 0:
        pytest.skip("the lab needs root")
    LAB_ROOT.mkdir(parents=True, exist_ok=True)
    proc = lab_playbook("present")
    assert proc.returncode == 0, proc.stdout[-3000:]
    yield LAB_ROOT / "hosts.yml"
    down = lab_playbook("absent")  # removes any shaping first (playbooks/lab.yml), then the lab
    assert down.returncode == 0, down.stdout[-3000:]
    assert leftovers() == []


@pytest.fixture
def cross_az_inventory(link_lab: Path, tmp_path: Path) -> Iterator[Path]:
    """inventories/lab_cross_az with this lab's hosts; a finaliser removes the shaping."""
    inventory = tmp_path / "lab_cross_az"
    inventory.mkdir()
    (inventory / "hosts.yml").symlink_to(link_lab)
    (inventory / "group_vars").symlink_to(REPO / "inventories" / "lab_cross_az" / "group_vars")
    yield inventory
    subprocess.run(
        [str(VENV_BIN / "ansible-playbook"), "playbooks/link.yml", "-i", str(inventory), "-e", "link_state=absent"],
        cwd=REPO, env=suite_env(), capture_output=True, text=True, check=False, timeout=120,
    )  # fmt: skip
    assert leftovers() == []


def test_a_migration_under_the_cross_az_inventory(cross_az_inventory: Path, tmp_path: Path) -> None:
    run = run_playbook(tmp_path, "migrate.yml", MEMORY, inventory=str(cross_az_inventory))
    assert run.rc == 0, run.stdout[-4000:]
    metrics = run.metrics()
    assert metrics["status"] == "ok"
    assert_continuous(metrics["verification"])
    link = metrics["environment"]["link"]
    # the profile in force and what of it was applied
    assert link["profile"] == "cross_az"
    assert link["figures"] == {
        k: float(PROFILE[k]) for k in ("rtt_ms", "jitter_ms", "rate_mbit", "per_flow_mbit")
    }
    assert link["method"] in ("netem", "stage")
    assert (
        link["applied"]["rtt_ms"] == PROFILE["rtt_ms"]
        and link["applied"]["rate_mbit"] == PROFILE["rate_mbit"]
    )
    assert link["links"] == {
        "source": f"{PREFIX}1",
        "destination": f"{PREFIX}2",
        "bridge": f"{PREFIX}0",
    }
    assert link["hosts"] == {"source": "source", "destination": "destination"}
    if link["method"] == "stage":
        assert link["stage"]["link"] == f"{PREFIX}-d1" and link["stage"]["ceiling_mbit"] > 0
        assert link["above_stage_ceiling"] is (PROFILE["rate_mbit"] > link["stage"]["ceiling_mbit"])
    # the shaped link measured before the workload started
    rtt = link["verified"]["rtt"]["median_ms"]
    assert RTT_LOW * PROFILE["rtt_ms"] <= rtt <= PROFILE["rtt_ms"] + RTT_EXTRA_MS, link["verified"]
    rate = link["verified"]["stream"]["mbit_s"]
    high = RATE_HIGH * PROFILE["rate_mbit"]
    low = RATE_LOW * min(
        PROFILE["rate_mbit"],
        link["stage"]["ceiling_mbit"] if link["stage"] else PROFILE["rate_mbit"],
    )
    assert low <= rate <= high, link["verified"]
    # the migration's own transfer never beat the shaped rate
    transfer = metrics["phases"]["transfer"]
    if transfer.get("bytes") and transfer.get("duration_s"):
        assert transfer["bytes"] * 8 / 1e6 / transfer["duration_s"] <= high
    # removed after the run: nothing left
    assert link["removed"]["removed"] is True and link["removed"]["leftovers"] == []
    if link["method"] == "stage":
        counters = link["removed"]["stage_counters"]
        assert counters["frames_out"] > 0 and counters["dropped"] == 0
    assert leftovers() == []
    assert metrics["experiment"]["inventory"].endswith("lab_cross_az")


def test_a_profile_on_hosts_that_are_not_lab_hosts_is_refused(
    link_lab: Path, tmp_path: Path
) -> None:
    inventory = tmp_path / "hosts.yml"
    inventory.write_text(
        yaml.safe_dump(
            {
                "all": {
                    "children": {
                        "source": {
                            "hosts": {
                                "source": {
                                    "ansible_host": "198.51.100.11",
                                    "migration_peer": "destination",
                                }
                            }
                        },
                        "destination": {
                            "hosts": {"destination": {"ansible_host": "198.51.100.12"}}
                        },
                    }
                }
            }
        )
    )
    proc = subprocess.run(
        [str(VENV_BIN / "ansible-playbook"), "playbooks/link.yml", "-i", str(inventory), "-e", "lab_link_profile=cross_az"],
        cwd=REPO, env=suite_env(), capture_output=True, text=True, check=False, timeout=120,
    )  # fmt: skip
    assert proc.returncode != 0
    assert (
        "never a real network" in proc.stdout
        and "198.51.100.11 is not a host of a local lab" in proc.stdout
    )
    assert leftovers() == []
