"""filter_plugins/criu_filters.py: the criu role's version checks and facts.

Probes are shaped like `criu action=check` results (library/criu.py), filled from what CRIU
4.2.1 printed on this machine (tests/fixtures/criu_cli/, recorded by its record.sh).
"""

from __future__ import annotations

from typing import Any

import pytest
from criu_filters import (
    FilterModule,
    criu_apt_candidate,
    criu_facts_from_probe,
    criu_install_reason,
    criu_pages_pull_argv,
    criu_version_at_least,
    lazy_network_facts,
)
from fakes import CRIU_CLI, CRIU_CLI_KERNEL, CRIU_CLI_RCS

FEATURES = ("mem_dirty_track", "uffd-noncoop", "network_lock_nftables")

# `apt-cache policy criu` when no repository carries criu.
APT_POLICY_NONE = "criu:\n  Installed: (none)\n  Candidate: (none)\n  Version table:\n"


# The network post-copy facts when the probe did not run (criu_probe_lazy_pages_network=false).
NOT_PROBED = {
    "lazy_pages_network": False,
    "lazy_pages_network_side": "setup",
    "lazy_pages_network_reason": "network post-copy was not probed on this host "
    "(criu_probe_lazy_pages_network=false, or `criu check` failed)",
}
# What `criu action=check probe=lazy_pages_network` returned on this machine's kernel.
TEE_REASON = (
    "criu dump --lazy-pages (serving pages) failed: page-pipe: tee: 65536: Operation not permitted"
)
LAZY_NETWORK_PROBE = {
    "changed": False,
    "criu_bin": "/usr/local/sbin/criu",
    "kernel": "6.18.44-fc-v595",
    "probe": {
        "name": "lazy_pages_network",
        "ok": False,
        "side": "dump",
        "reason": TEE_REASON,
        "cached": False,
        "duration_s": 0.289,
    },
}


def recorded_probe() -> dict[str, Any]:
    """What `criu action=check features=[...]` returned on this machine."""
    return {
        "changed": False,
        "criu_bin": "/usr/local/sbin/criu",
        "version": "4.2.1",
        "version_output": (CRIU_CLI / "version.txt").read_text().strip(),
        "check": {"ok": True, "summary": "Looks good.", "errors": [], "warnings": []},
        # the module decides a feature on `criu check --feature NAME`'s exit status
        "features": {name: CRIU_CLI_RCS[f"check-feature-{name}"]["rc"] == 0 for name in FEATURES},
        # `criu check --tls` passes: this CRIU links GnuTLS; root here lacks CAP_SYS_RESOURCE
        "tls": {"ok": CRIU_CLI_RCS["check-tls"]["rc"] == 0, "reason": ""},
        "cap_sys_resource": False,
        "kernel": CRIU_CLI_KERNEL,
    }


def test_recorded_kernel_and_features() -> None:
    probe = recorded_probe()
    assert CRIU_CLI_KERNEL == "6.18.44-fc-v595"
    assert probe["features"] == {
        "mem_dirty_track": False,
        "uffd-noncoop": True,
        "network_lock_nftables": True,
    }


@pytest.mark.parametrize(
    ("version", "minimum", "expected"),
    [
        ("4.2.1", "4.2", True),
        ("4.2", "4.2", True),
        ("4.2", "4.2.1", False),
        ("4.1.1", "4.2", False),
        ("3.17.1", "4.2", False),
        ("4.10.0", "4.9", True),
        ("4.2.1", 4.2, True),  # YAML may hand the minimum over as a number
        ("", "4.2", False),
        (None, "4.2", False),
        ("unknown", "4.2", False),
    ],
)
def test_criu_version_at_least(version: str | None, minimum: Any, expected: bool) -> None:
    assert criu_version_at_least(version, minimum) is expected


def test_apt_candidate_on_this_machine() -> None:
    assert CRIU_CLI_RCS["apt-cache-policy-criu"]["rc"] == 0
    policy = (CRIU_CLI / "apt-cache-policy-criu.txt").read_text()
    assert "Candidate: 3.17.1-2+deb12u2" in policy
    assert criu_apt_candidate(policy) == "3.17.1"


def test_apt_candidate_none() -> None:
    assert criu_apt_candidate(APT_POLICY_NONE) == ""


@pytest.mark.parametrize("text", ["", "N: Unable to locate package criu\n"])
def test_apt_candidate_without_a_candidate_line(text: str) -> None:
    assert criu_apt_candidate(text) == ""


def test_apt_candidate_with_an_epoch() -> None:
    assert criu_apt_candidate("criu:\n  Installed: (none)\n  Candidate: 1:4.2.1-1\n") == "4.2.1"


@pytest.mark.parametrize("probe", [None, {}, {"skipped": True, "check": {}}, {"criu_bin": "/x"}])
def test_install_reason_without_a_binary(probe: dict[str, Any] | None) -> None:
    assert criu_install_reason(probe, "4.2") == "no criu binary found"


def test_install_reason_debian_package_too_old() -> None:
    probe = {
        "criu_bin": "/usr/sbin/criu",
        "version": "3.17.1",
        "check": {
            "ok": False,
            "summary": "Error (criu/vdso.c:374): vdso: Unexpected rt vDSO area bounds",
        },
    }
    assert criu_install_reason(probe, "4.2") == "/usr/sbin/criu is 3.17.1, older than 4.2"


def test_install_reason_unknown_version() -> None:
    probe = {"criu_bin": "/opt/criu", "version": "", "check": {"ok": False, "summary": "x"}}
    assert criu_install_reason(probe, "4.2.1") == "/opt/criu is unknown version, older than 4.2.1"


def test_install_reason_recent_enough_but_check_fails() -> None:
    probe = recorded_probe()
    probe["check"] = {"ok": False, "summary": "Error (criu/cr-check.c:1901): something broke"}
    assert criu_install_reason(probe, "4.2") == (
        "/usr/local/sbin/criu (4.2.1): criu check says Error (criu/cr-check.c:1901): something broke"
    )


def test_facts_on_this_machine_nftables_lock_no_soft_dirty() -> None:
    probe = recorded_probe()
    assert criu_facts_from_probe(probe) == {
        "bin": "/usr/local/sbin/criu",
        "version": "4.2.1",
        "usable": True,
        "check_summary": "Looks good.",
        "kernel": "6.18.44-fc-v595",
        "soft_dirty": False,
        "uffd": False,  # not asked for: absent features count as missing
        "lazy_pages": True,
        "network_lock": "nftables",
        "features": probe["features"],
        "tls": True,
        "tls_reason": "",
        "cap_sys_resource": False,
        **NOT_PROBED,
    }


def test_facts_iptables_lock_when_criu_lacks_nftables() -> None:
    probe = recorded_probe()
    probe["features"]["network_lock_nftables"] = False
    facts = criu_facts_from_probe(probe, "/usr/sbin/iptables-restore")
    assert facts["network_lock"] == "iptables"


def test_facts_nftables_wins_over_iptables() -> None:
    facts = criu_facts_from_probe(recorded_probe(), "/usr/sbin/iptables-restore")
    assert facts["network_lock"] == "nftables"


def test_facts_no_network_lock() -> None:
    probe = recorded_probe()
    probe["features"]["network_lock_nftables"] = False
    assert criu_facts_from_probe(probe, "")["network_lock"] == ""


def test_facts_soft_dirty_guest_and_unusable_criu() -> None:
    # The QEMU guest lab (docs/lab.md): soft-dirty present; and a CRIU whose check failed.
    probe = {
        "criu_bin": "/usr/sbin/criu",
        "version": "3.17.1",
        "check": {"ok": False, "summary": "vdso failure"},
        "features": {"mem_dirty_track": True, "uffd": True, "uffd-noncoop": False},
        "kernel": "6.1.0-40-amd64",
    }
    facts = criu_facts_from_probe(probe)
    assert facts["soft_dirty"] is True
    assert facts["uffd"] is True
    assert facts["lazy_pages"] is False
    assert facts["usable"] is False
    assert facts["check_summary"] == "vdso failure"
    assert facts["kernel"] == "6.1.0-40-amd64"


def test_facts_from_an_empty_probe() -> None:
    assert criu_facts_from_probe({}) == {
        "bin": "",
        "version": "",
        "usable": False,
        "check_summary": "",
        "kernel": "",
        "soft_dirty": False,
        "uffd": False,
        "lazy_pages": False,
        "network_lock": "",
        "features": {},
        "tls": False,
        "tls_reason": "",
        "cap_sys_resource": False,
        **NOT_PROBED,
    }


def test_facts_with_the_network_post_copy_probe_of_this_kernel() -> None:
    facts = criu_facts_from_probe(recorded_probe(), "", LAZY_NETWORK_PROBE)
    assert facts["lazy_pages"] is True  # uffd-noncoop: lazy restore from images works
    assert facts["lazy_pages_network"] is False
    assert facts["lazy_pages_network_side"] == "dump"
    assert facts["lazy_pages_network_reason"] == TEE_REASON


def test_facts_with_a_passing_network_post_copy_probe() -> None:
    passing = {"probe": {"name": "lazy_pages_network", "ok": True, "side": "", "reason": ""}}
    assert lazy_network_facts(passing) == {
        "lazy_pages_network": True,
        "lazy_pages_network_side": "",
        "lazy_pages_network_reason": "",
    }


@pytest.mark.parametrize(
    "probe",
    [None, {}, {"skipped": True, "skip_reason": "Conditional result was False", "changed": False}],
)
def test_facts_when_the_network_probe_was_skipped(probe: dict[str, Any] | None) -> None:
    assert lazy_network_facts(probe) == NOT_PROBED


def test_pages_pull_argv_with_the_labs_ssh_trust() -> None:
    # the pair's transfer options (migration_pair.transfer), as the preflight plans them
    link = {
        "method": "rsync",
        "destination": "10.77.0.12",
        "destination_user": "root",
        "ssh_key": "/work/main/.lab/id_ed25519",
        "known_hosts": "/work/main/.lab/known_hosts",
        "cipher": "aes128-gcm@openssh.com",
    }
    argv = criu_pages_pull_argv("/var/lib/criu-migration/images/e1/1/", link)
    assert argv == [
        "rsync",
        "--archive",
        "--whole-file",
        "--sparse",
        "--rsh",
        # the transfer's own ssh command: same trust, same cipher
        "ssh -o BatchMode=yes -o Compression=no -p 22 -i /work/main/.lab/id_ed25519 "
        "-o IdentitiesOnly=yes -o UserKnownHostsFile=/work/main/.lab/known_hosts "
        "-o StrictHostKeyChecking=yes -c aes128-gcm@openssh.com",
        "root@10.77.0.12:/var/lib/criu-migration/images/e1/1/pagemap-*.img",
        "root@10.77.0.12:/var/lib/criu-migration/images/e1/1/pages-*.img",
        "/var/lib/criu-migration/images/e1/1/",
    ]


def test_pages_pull_argv_for_a_cloud_user_without_pinned_keys() -> None:
    argv = criu_pages_pull_argv(
        "/imgs/9", {"destination": "10.0.1.5", "destination_user": "ubuntu"}
    )
    assert argv[:7] == [
        "rsync",
        "--archive",
        "--whole-file",
        "--sparse",
        "--rsh",
        "ssh -o BatchMode=yes -o Compression=no -p 22",
        "--rsync-path",
    ]
    assert argv[7:] == [
        "sudo rsync",
        "ubuntu@10.0.1.5:/imgs/9/pagemap-*.img",
        "ubuntu@10.0.1.5:/imgs/9/pages-*.img",
        "/imgs/9/",
    ]


@pytest.mark.parametrize("images_dir", ["relative/1", "/with space/1"])
def test_pages_pull_argv_refuses_odd_paths(images_dir: str) -> None:
    with pytest.raises(ValueError, match="must be absolute and without spaces"):
        criu_pages_pull_argv(images_dir, {"destination": "10.77.0.12"})


def test_filter_names() -> None:
    filters = FilterModule().filters()
    assert filters == {
        "criu_version_at_least": criu_version_at_least,
        "criu_apt_candidate": criu_apt_candidate,
        "criu_install_reason": criu_install_reason,
        "criu_facts_from_probe": criu_facts_from_probe,
        "criu_pages_pull_argv": criu_pages_pull_argv,
    }
