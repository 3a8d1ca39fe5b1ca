"""Feature gating (module_utils/experiment_plan.py gating_errors, required_ports, and the
preflight's option rules): every strategy or option that needs something a host lacks is
refused before the workload starts, naming the feature, the host and its kernel.

Facts are what the criu role records (filter_plugins/criu_filters.py criu_facts_from_probe),
built here from what CRIU 4.2.1 answered on this machine (tests/fixtures/criu_cli/) and what
the network post-copy probe found on its kernel.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from criu_filters import criu_facts_from_probe
from experiment_filters import migration_gating, migration_ports
from experiment_plan import gating_errors, plan_experiment, required_ports
from fakes import CRIU_CLI_KERNEL, CRIU_CLI_RCS
from workload_registry import load_registry

REPO = Path(__file__).resolve().parents[2]
REGISTRY = load_registry(str(REPO / "workloads"))
MEMORY = {"name": "memory", "criu": {"tcp_established": False}}
REDIS = {"name": "redis", "criu": {"tcp_established": True}}
TEE = (
    "criu dump --lazy-pages (serving pages) failed: page-pipe: tee: 65536: Operation not permitted"
)


def lab_facts(**overrides: Any) -> dict[str, Any]:
    """criu_facts of a lab host: this machine's CRIU answers and its network post-copy probe."""
    features = ("mem_dirty_track", "uffd", "uffd-noncoop", "network_lock_nftables")
    probe = {
        "criu_bin": "/usr/local/sbin/criu",
        "version": "4.2.1",
        "check": {"ok": True, "summary": "Looks good."},
        "features": {
            name: CRIU_CLI_RCS.get(f"check-feature-{name}", {"rc": 0})["rc"] == 0
            for name in features
        },
        "kernel": CRIU_CLI_KERNEL,
    }
    lazy_probe = {"probe": {"ok": False, "side": "dump", "reason": TEE}}
    return {**criu_facts_from_probe(probe, "", lazy_probe), **overrides}


def settings(**overrides: Any) -> dict[str, Any]:
    return {
        "checkpoint_strategy": "full",
        "lazy_pages": False,
        "lazy_pages_mode": "images",
        "lazy_pages_port": 27001,
        "page_server": False,
        "page_server_port": 27000,
        **overrides,
    }


NETWORK_LAZY = settings(lazy_pages=True, lazy_pages_mode="network")


def test_the_labs_facts() -> None:
    facts = lab_facts()
    assert facts["kernel"] == CRIU_CLI_KERNEL == "6.18.44-fc-v595"
    assert facts["usable"] and facts["uffd"] and facts["lazy_pages"]
    assert not facts["soft_dirty"]
    assert facts["network_lock"] == "nftables"
    assert not facts["lazy_pages_network"]


# -- what the lab can do passes ----------------------------------------------------------------


@pytest.mark.parametrize(
    "chosen",
    [
        settings(),
        settings(page_server=True),
        settings(lazy_pages=True),
        settings(lazy_pages=True, page_server=True),
    ],
)
@pytest.mark.parametrize("role", ["source", "destination"])
def test_full_page_server_and_lazy_images_pass_on_the_lab(
    chosen: dict[str, Any], role: str
) -> None:
    assert gating_errors(lab_facts(), role, role, chosen, MEMORY) == []
    assert gating_errors(lab_facts(), role, role, chosen, REDIS) == []


def test_page_server_and_lazy_pages_are_accepted_by_the_preflight() -> None:
    plan = plan_experiment(
        {"workload": "memory", "page_server": "true", "lazy_pages": "true"},
        REGISTRY,
        {"source": ["source"], "destination": ["destination"]},
        lambda host, name: None,
    )
    assert plan.errors == []


# -- soft-dirty: checkpoint_strategy=predump --------------------------------------------------------------


def test_predump_needs_soft_dirty_on_the_source() -> None:
    assert gating_errors(
        lab_facts(), "source", "source", settings(checkpoint_strategy="predump"), MEMORY
    ) == [
        "checkpoint_strategy=predump needs soft-dirty memory tracking (CONFIG_MEM_SOFT_DIRTY; criu check "
        f"--feature mem_dirty_track), which source (kernel {CRIU_CLI_KERNEL}) lacks; use checkpoint_strategy=full, "
        "or the soft-dirty guest lab"
    ]


def test_predump_passes_with_soft_dirty_and_never_gates_the_destination() -> None:
    guest = lab_facts(soft_dirty=True, kernel="6.1.0-56-amd64")
    assert (
        gating_errors(guest, "guest-a", "source", settings(checkpoint_strategy="predump"), MEMORY)
        == []
    )
    assert (
        gating_errors(
            lab_facts(), "d", "destination", settings(checkpoint_strategy="predump"), MEMORY
        )
        == []
    )


# -- userfaultfd: lazy_pages=true --------------------------------------------------------------


def test_lazy_pages_needs_userfaultfd_on_the_destination() -> None:
    facts = lab_facts(uffd=False, lazy_pages=False, kernel="4.2.0-old")
    assert gating_errors(facts, "dest-b", "destination", settings(lazy_pages=True), MEMORY) == [
        "lazy_pages=true needs userfaultfd (CONFIG_USERFAULTFD; criu check --feature uffd), "
        "which dest-b (kernel 4.2.0-old) lacks; set lazy_pages=false"
    ]


def test_lazy_pages_needs_non_cooperative_userfaultfd_on_the_destination() -> None:
    facts = lab_facts(lazy_pages=False, kernel="4.10.0-uffd")
    assert gating_errors(facts, "dest-c", "destination", settings(lazy_pages=True), MEMORY) == [
        "lazy_pages=true needs userfaultfd with non-cooperative events (criu check --feature "
        "uffd-noncoop), which dest-c (kernel 4.10.0-uffd) lacks; set lazy_pages=false"
    ]


def test_lazy_pages_never_gates_the_source_on_userfaultfd() -> None:
    facts = lab_facts(uffd=False, lazy_pages=False)
    assert gating_errors(facts, "source", "source", settings(lazy_pages=True), MEMORY) == []


def test_without_lazy_pages_userfaultfd_does_not_matter() -> None:
    facts = lab_facts(uffd=False, lazy_pages=False)
    assert gating_errors(facts, "destination", "destination", settings(), MEMORY) == []


# -- the network post-copy probe: lazy_pages_mode=network ---------------------------------------


def test_network_lazy_pages_refused_on_the_source_of_this_kernel() -> None:
    assert gating_errors(lab_facts(), "source", "source", NETWORK_LAZY, MEMORY) == [
        "lazy_pages_mode=network needs network post-copy (criu dump --lazy-pages serving pages "
        f"to criu lazy-pages --page-server), which source (kernel {CRIU_CLI_KERNEL}) lacks; the probe "
        f"says: {TEE}; use lazy_pages_mode=images"
    ]


def test_a_dump_side_failure_is_not_charged_to_the_destination() -> None:
    assert gating_errors(lab_facts(), "destination", "destination", NETWORK_LAZY, MEMORY) == []


@pytest.mark.parametrize("side", ["lazy-pages", "restore"])
def test_a_fetch_side_failure_is_charged_to_the_destination_only(side: str) -> None:
    reason = f"criu {side} failed: something"
    facts = lab_facts(lazy_pages_network_side=side, lazy_pages_network_reason=reason)
    errors = gating_errors(facts, "destination", "destination", NETWORK_LAZY, MEMORY)
    assert len(errors) == 1 and f"the probe says: {reason}" in errors[0]
    assert "which destination (kernel 6.18.44-fc-v595) lacks" in errors[0]
    assert gating_errors(facts, "source", "source", NETWORK_LAZY, MEMORY) == []


@pytest.mark.parametrize("role", ["source", "destination"])
def test_a_probe_that_could_not_run_refuses_both_sides(role: str) -> None:
    check = {"check": {"ok": True}, "kernel": "6.1.0-56-amd64", "features": {"uffd": True}}
    facts = criu_facts_from_probe({**check, "features": {"uffd": True, "uffd-noncoop": True}})
    errors = gating_errors(facts, role, role, NETWORK_LAZY, MEMORY)
    assert errors == [
        "lazy_pages_mode=network needs network post-copy (criu dump --lazy-pages serving pages "
        f"to criu lazy-pages --page-server), which {role} (kernel 6.1.0-56-amd64) lacks; the "
        "probe says: network post-copy was not probed on this host "
        "(criu_probe_lazy_pages_network=false, or `criu check` failed); use lazy_pages_mode=images"
    ]


@pytest.mark.parametrize("role", ["source", "destination"])
def test_network_lazy_pages_pass_where_the_probe_worked(role: str) -> None:
    guest = lab_facts(
        lazy_pages_network=True, lazy_pages_network_side="", lazy_pages_network_reason=""
    )
    assert gating_errors(guest, role, role, NETWORK_LAZY, MEMORY) == []


def test_lazy_images_mode_ignores_the_network_probe() -> None:
    for role in ("source", "destination"):
        assert gating_errors(lab_facts(), role, role, settings(lazy_pages=True), MEMORY) == []


def test_network_lazy_pages_on_the_destination_also_needs_userfaultfd() -> None:
    facts = lab_facts(lazy_pages=False, lazy_pages_network_side="dump")
    errors = gating_errors(facts, "destination", "destination", NETWORK_LAZY, MEMORY)
    assert len(errors) == 1 and "uffd-noncoop" in errors[0]


def test_page_server_and_network_post_copy_exclude_each_other() -> None:
    plan = plan_experiment(
        {
            "workload": "memory",
            "page_server": True,
            "lazy_pages": True,
            "lazy_pages_mode": "network",
        },
        REGISTRY,
        {"source": ["source"], "destination": ["destination"]},
        lambda host, name: None,
    )
    assert plan.errors == [
        "page_server=true and lazy_pages_mode=network exclude each other: network post-copy keeps "
        "the pages on the source until the destination faults them in; use lazy_pages_mode=images "
        "with the page server"
    ]


# -- a network lock: workloads with established TCP connections ---------------------------------


@pytest.mark.parametrize("role", ["source", "destination"])
def test_tcp_workloads_need_a_network_lock_on_both_hosts(role: str) -> None:
    facts = lab_facts(network_lock="")
    assert gating_errors(facts, role, role, settings(), REDIS) == [
        "workload redis (established TCP connections) needs a CRIU network lock (nftables "
        f"support in CRIU, or iptables-restore), which {role} (kernel {CRIU_CLI_KERNEL}) lacks; install "
        "nftables (and a CRIU built with libnftables) or iptables"
    ]
    assert gating_errors(facts, role, role, settings(), MEMORY) == []


# -- CRIU itself, and everything at once --------------------------------------------------------


def test_an_unusable_criu_and_every_missing_feature_are_all_named() -> None:
    facts = {
        "usable": False,
        "check_summary": "Error (criu/vdso.c:374): vdso: Unexpected rt vDSO area bounds",
        "kernel": "5.10.0-bare",
        "uffd": False,
        "lazy_pages": False,
        "network_lock": "",
        "lazy_pages_network": False,
        "lazy_pages_network_side": "setup",
        "lazy_pages_network_reason": "unshare (util-linux) is not installed",
    }
    everything = settings(checkpoint_strategy="predump", lazy_pages=True, lazy_pages_mode="network")
    source = gating_errors(facts, "s", "source", everything, REDIS)
    destination = gating_errors(facts, "d", "destination", everything, REDIS)
    assert [e.split(" needs ")[0] for e in source] == [
        "CRIU on s does not pass `criu check`: Error (criu/vdso.c:374): vdso: Unexpected rt vDSO "
        "area bounds",
        "checkpoint_strategy=predump",
        "lazy_pages_mode=network",
        "workload redis (established TCP connections)",
    ]
    assert [e.split(" needs ")[0] for e in destination] == [
        "CRIU on d does not pass `criu check`: Error (criu/vdso.c:374): vdso: Unexpected rt vDSO "
        "area bounds",
        "lazy_pages=true",
        "lazy_pages_mode=network",
        "workload redis (established TCP connections)",
    ]
    assert all("(kernel 5.10.0-bare)" in e for e in source[1:] + destination[1:])
    assert "the probe says: unshare (util-linux) is not installed" in destination[2]


def test_the_node_checks_filter_is_gating_errors() -> None:
    for role in ("source", "destination"):
        assert migration_gating(lab_facts(), role, role, NETWORK_LAZY, MEMORY) == gating_errors(
            lab_facts(), role, role, NETWORK_LAZY, MEMORY
        )


# -- ports that must be free before the workload starts -----------------------------------------


def test_ports_page_server_on_the_destination_network_lazy_on_the_source() -> None:
    chosen = settings(page_server=True, page_server_port=27210)
    assert required_ports(MEMORY, "destination", chosen, {}) == [
        {"port": 27210, "why": "criu page-server (page_server_port)"}
    ]
    assert required_ports(MEMORY, "source", chosen, {}) == []
    assert required_ports(MEMORY, "source", NETWORK_LAZY, {}) == [
        {"port": 27001, "why": "network lazy pages (lazy_pages_port)"}
    ]
    assert required_ports(MEMORY, "destination", NETWORK_LAZY, {}) == []
    # lazy pages from images talk over a unix socket in the images folder: no port
    assert required_ports(MEMORY, "destination", settings(lazy_pages=True), {}) == []
    assert migration_ports(MEMORY, "destination", chosen, {}) == required_ports(
        MEMORY, "destination", chosen, {}
    )
