"""The preflight's decisions: module_utils/experiment_plan.py and filter_plugins/experiment_filters.py.

Every refusal must name the bad value and what is valid (experiment_plan's docstring). The
workloads are the repo's real declarations (workloads/*.yml).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest
from experiment_filters import (
    FilterModule,
    migration_gating,
    migration_plan,
    migration_port_message,
    migration_ports,
)
from experiment_plan import (
    gating_errors,
    load_setting_defaults,
    plan_experiment,
    plan_pairs,
    required_ports,
)
from transfer_backends import METHODS as TRANSFERS
from transfer_backends import METHODS_NOT_YET as TRANSFERS_NOT_YET
from transfer_backends import backend_for
from workload_filters import workload_declaration
from workload_registry import load_registry

REPO = Path(__file__).resolve().parents[2]
WORKLOADS = str(REPO / "workloads")
DEFAULTS_FILE = str(REPO / "group_vars" / "all.yml")
# The settings' defaults, from the one place they are written.
DEFAULTS = load_setting_defaults(DEFAULTS_FILE)
REGISTRY = load_registry(WORKLOADS)
VALID_WORKLOADS = ", ".join(sorted(REGISTRY))

LAB_GROUPS = {"source": ["source"], "destination": ["destination"]}
LAB_HOSTVARS = {
    "source": {"ansible_host": "10.77.0.11"},
    "destination": {"ansible_host": "10.77.0.12"},
}

# criu_facts of a lab host (this machine's kernel: no soft-dirty; CRIU 4.2.1 with nftables).
LAB_FACTS = {
    "usable": True,
    "check_summary": "Looks good.",
    "kernel": "6.18.44-fc-v595",
    "soft_dirty": False,
    "uffd": True,
    "lazy_pages": True,
    "network_lock": "nftables",
}


def host_vars(hostvars: Mapping[str, Mapping[str, Any]]) -> Callable[[str, str], Any]:
    return lambda host, name: hostvars.get(host, {}).get(name)


def plan(
    variables: Mapping[str, Any],
    groups: Mapping[str, list[str]] | None = None,
    hostvars: Mapping[str, Mapping[str, Any]] | None = None,
) -> dict[str, Any]:
    return plan_experiment(
        variables,
        REGISTRY,
        LAB_GROUPS if groups is None else groups,
        host_vars(LAB_HOSTVARS if hostvars is None else hostvars),
        DEFAULTS,
    ).as_dict()


def errors_of(variables: Mapping[str, Any]) -> list[str]:
    return plan(variables)["errors"]


# -- good input ----------------------------------------------------------------------------


def test_seed_defaults_plan() -> None:
    result = plan({})
    assert result["ok"] is True
    assert result["errors"] == []
    settings = result["settings"]
    expected = {
        "workload": "memory",
        "experiment_name": "default-experiment",
        "checkpoint_strategy": "predump",
        "predump_iterations": 8,
        "predump_interval": 10.0,
        "lazy_pages": False,
        "page_server": False,
        "page_server_port": 27000,
        "lazy_pages_port": 27001,
        "transfer": "rsync",
        "save_metrics": True,
        "post_restore_capture_s": 6.0,
        "deadline_s": 0.0,
    }
    assert {key: settings[key] for key in expected} == expected
    assert result["workload_params"] == {"mb_size": 256, "interval": 5.0, "max_memory": 8192}
    assert result["pairs"] == [
        {
            "source": "source",
            "destination": "destination",
            "source_address": "10.77.0.11",
            "source_link_address": "10.77.0.11",
            "destination_address": "10.77.0.12",
            "destination_link_address": "10.77.0.12",
            "destination_user": "root",
            "efs_mount_path": "",
            "ebs_volume_id": "",
            "source_instance_id": "",
            "destination_instance_id": "",
            "ssh_key": "",
            "known_hosts": "",
        }
    ]


def test_extra_vars_strings_are_typed() -> None:
    # `-e key=value` hands every value over as a string.
    result = plan(
        {
            "workload": "memory",
            "checkpoint_strategy": "full",
            "keep_images": "true",
            "save_metrics": "no",
            "predump_iterations": "3",
            "predump_interval": "2.5",
            "deadline_s": "30",
            "mb_size": "64",
            "interval": "1",
            "max_memory": "512",
        }
    )
    assert result["errors"] == []
    settings = result["settings"]
    assert settings["checkpoint_strategy"] == "full"
    assert settings["keep_images"] is True
    assert settings["save_metrics"] is False
    assert settings["predump_iterations"] == 3
    assert type(settings["predump_iterations"]) is int
    assert settings["predump_interval"] == 2.5
    assert settings["deadline_s"] == 30.0
    assert type(settings["deadline_s"]) is float
    assert result["workload_params"] == {"mb_size": 64, "interval": 1.0, "max_memory": 512}
    assert type(result["workload_params"]["mb_size"]) is int


def test_empty_and_none_values_fall_back_to_the_defaults() -> None:
    result = plan({"checkpoint_strategy": "", "predump_iterations": None})
    assert result["errors"] == []
    assert result["settings"]["checkpoint_strategy"] == "predump"
    assert result["settings"]["predump_iterations"] == 8


def test_every_declared_workload_plans_with_its_defaults() -> None:
    for name, workload in REGISTRY.items():
        result = plan({"workload": name})
        assert result["errors"] == [], name
        assert set(result["workload_params"]) == set(workload.params), name


# -- bad settings --------------------------------------------------------------------------


def test_unknown_workload_names_the_valid_ones() -> None:
    assert "memory" in REGISTRY
    result = plan({"workload": "bitcoin"})
    assert result["ok"] is False
    assert result["errors"] == [f"workload='bitcoin' is unknown; valid: {VALID_WORKLOADS}"]
    assert result["workload_params"] == {}


def test_unknown_strategy() -> None:
    assert errors_of({"checkpoint_strategy": "live"}) == [
        "checkpoint_strategy='live' is not one of: predump, full"
    ]


def test_unknown_transfer() -> None:
    assert errors_of({"transfer": "ftp"}) == ["transfer='ftp' is not one of: rsync, efs, s3, ebs"]


@pytest.mark.parametrize(
    ("variables", "message"),
    [
        ({"mb_size": 0}, "workload memory: mb_size=0 MB is below the minimum 1 MB"),
        ({"mb_size": "0"}, "workload memory: mb_size=0 MB is below the minimum 1 MB"),
        ({"mb_size": -5}, "workload memory: mb_size=-5 MB is below the minimum 1 MB"),
        ({"mb_size": "abc"}, "workload memory: mb_size='abc' is not an integer"),
        ({"mb_size": "1.5"}, "workload memory: mb_size='1.5' is not an integer"),
        ({"interval": 0}, "workload memory: interval=0.0 s is below the minimum 0.001 s"),
        ({"interval": "soon"}, "workload memory: interval='soon' is not a number"),
        ({"max_memory": "-1"}, "workload memory: max_memory=-1 MB is below the minimum 1 MB"),
        ({"predump_iterations": 0}, "predump_iterations=0 is below the minimum 1"),
        ({"predump_iterations": "many"}, "predump_iterations='many' is not an integer"),
        ({"predump_interval": -1}, "predump_interval=-1.0 s is below the minimum 0.0 s"),
        ({"page_server_port": 70000}, "page_server_port=70000 is above the maximum 65535"),
        ({"page_server_port": 0}, "page_server_port=0 is below the minimum 1"),
        ({"lazy_pages_port": "-1"}, "lazy_pages_port=-1 is below the minimum 1"),
        ({"lazy_pages_port": "http"}, "lazy_pages_port='http' is not an integer"),
        ({"lazy_pages": "maybe"}, "lazy_pages='maybe' is not true or false"),
        (
            {"lazy_pages_mode": "remote"},
            "lazy_pages_mode='remote' is not one of: images, network",
        ),
        ({"transfer_compress": "gzip"}, "transfer_compress='gzip' is not one of: none, zstd"),
        (
            {"experiment_name": "my run"},
            "experiment_name='my run' does not match the form [A-Za-z0-9._-]+",
        ),
        ({"deadline_s": -30}, "deadline_s=-30.0 s is below the minimum 0.0 s"),
    ],
)
def test_bad_value_is_refused_with_the_valid_range(variables: dict[str, Any], message: str) -> None:
    result = plan(variables)
    assert result["ok"] is False
    assert result["errors"] == [message]


def test_a_bad_workload_parameter_of_another_workload() -> None:
    errors = errors_of({"workload": "redis", "redis_port": 70000})
    assert errors == ["workload redis: redis_port=70000 is above the maximum 65535"]


RESOLUTION_FORM = r"^(?:[1-9][0-9]*[02468]|[2468])x(?:[1-9][0-9]*[02468]|[2468])$"


# Issue 5's bad workload input, refused by the preflight through the real declarations (their
# min / choices / pattern), before any host is touched. Values come as -e strings.
@pytest.mark.parametrize(
    ("variables", "message"),
    [
        (
            {"workload": "video", "resolution": "12x"},
            f"workload video: resolution='12x' does not match the form {RESOLUTION_FORM}",
        ),
        (
            {"workload": "video", "resolution": "1921x1080"},
            f"workload video: resolution='1921x1080' does not match the form {RESOLUTION_FORM}",
        ),
        (
            {"workload": "ml_training", "model_size": "huge"},
            "workload ml_training: model_size='huge' is not one of: small, medium, large",
        ),
        (
            {"workload": "redis", "value_size": "0"},
            "workload redis: value_size=0 bytes is below the minimum 1 bytes",
        ),
        (
            {"workload": "redis", "num_keys": "-1"},
            "workload redis: num_keys=-1 is below the minimum 1",
        ),
        (
            {"workload": "redis", "redis_port": "-6379"},
            "workload redis: redis_port=-6379 is below the minimum 1",
        ),
        (
            {"workload": "matmul", "iterations": "-1"},
            "workload matmul: iterations=-1 is below the minimum 0",
        ),
        (
            {"workload": "matmul", "matrix_size": -8},
            "workload matmul: matrix_size=-8 is below the minimum 1",
        ),
        (
            {"workload": "ml_training", "epochs": "-2"},
            "workload ml_training: epochs=-2 is below the minimum 0",
        ),
        (
            {"workload": "ml_training", "batch_size": "-64"},
            "workload ml_training: batch_size=-64 is below the minimum 1",
        ),
        (
            {"workload": "ml_training", "dataset_size": "-1"},
            "workload ml_training: dataset_size=-1 is below the minimum 0",
        ),
        (
            {"workload": "dataproc", "operations": "-3"},
            "workload dataproc: operations=-3 is below the minimum 0",
        ),
        (
            {"workload": "dataproc", "num_rows": "-1"},
            "workload dataproc: num_rows=-1 is below the minimum 1",
        ),
        ({"workload": "video", "fps": "-30"}, "workload video: fps=-30 is below the minimum 1"),
        (
            {"workload": "video", "duration": "-1"},
            "workload video: duration=-1 s is below the minimum 1 s",
        ),
        (
            {"workload": "video", "video_mode": "stream"},
            "workload video: video_mode='stream' is not one of: live, file",
        ),
    ],
)
def test_bad_workload_input_is_refused(variables: dict[str, Any], message: str) -> None:
    result = plan(variables)
    assert result["ok"] is False
    assert result["errors"] == [message]
    # the bad parameter is not planned; the others keep their values
    bad = next(name for name in variables if name != "workload")
    assert bad not in result["workload_params"]


def test_every_bad_value_is_reported_at_once() -> None:
    errors = errors_of({"checkpoint_strategy": "x", "mb_size": 0, "predump_iterations": 0})
    assert errors == [
        "checkpoint_strategy='x' is not one of: predump, full",
        "predump_iterations=0 is below the minimum 1",
        "workload memory: mb_size=0 MB is below the minimum 1 MB",
    ]


def test_transfer_not_available_yet(monkeypatch: pytest.MonkeyPatch) -> None:
    # every method has a backend now; the refusal still works for one that has none
    import experiment_plan

    monkeypatch.setitem(experiment_plan.METHODS_NOT_YET, "ebs", "the EBS backend")
    result = plan({"transfer": "ebs", "critical_path": "stepwise"})
    assert result["errors"][0] == (
        "transfer=ebs is not available yet (the EBS backend has not landed); available: "
        "rsync, efs, s3"
    )


def test_s3_and_ebs_are_available() -> None:
    assert TRANSFERS_NOT_YET == {}
    assert plan({"transfer": "s3", "s3_bucket": "a-bucket"})["errors"] == []
    assert plan({"transfer": "s3"})["errors"] == [
        "transfer=s3 needs a bucket: set AWS_S3_BUCKET in the environment or pass "
        "-e s3_bucket=<name> (Terraform's inventories set it with create_s3_bucket=true or "
        "existing_s3_bucket; the labs set their own)"
    ]


def test_every_transfer_the_preflight_accepts_has_a_backend() -> None:
    # A transfer the preflight lets through must not fail only after the workload was dumped.
    accepted = [t for t in TRANSFERS if not plan({"transfer": t})["errors"]]
    assert "rsync" in accepted
    for transfer in accepted:
        assert backend_for(transfer).name == transfer


def test_page_server_port_equal_to_lazy_pages_port() -> None:
    errors = errors_of({"page_server": "true", "page_server_port": 27001, "lazy_pages_port": 27001})
    clash = [e for e in errors if "page_server_port" in e and "lazy_pages_port" in e]
    assert len(clash) == 1
    assert "27001" in clash[0]  # the bad value, as every preflight error names it


def test_equal_ports_are_fine_without_the_page_server() -> None:
    assert errors_of({"page_server_port": 27001, "lazy_pages_port": 27001}) == []


# -- the inventory -------------------------------------------------------------------------


def test_inventory_without_source() -> None:
    result = plan({}, {"destination": ["destination"]})
    assert result["errors"] == ["the inventory has no host in group 'source' (need one per pair)"]
    assert result["pairs"] == []


def test_inventory_without_destination() -> None:
    result = plan({}, {"source": ["source"], "destination": []})
    assert result["errors"] == [
        "the inventory has no host in group 'destination' (need one per pair)"
    ]


def test_empty_inventory_points_at_the_lab() -> None:
    errors = plan({}, {})["errors"]
    assert errors == [
        "the inventory has no host in group 'source' (need one per pair)",
        "the inventory has no host in group 'destination' (need one per pair)",
        "is the inventory right? The default is the local lab: run `make lab-up` first, "
        "or pass -i <inventory>",
    ]


def test_two_destinations_and_no_migration_peer() -> None:
    groups = {"source": ["source-1"], "destination": ["destination-1", "destination-2"]}
    result = plan({}, groups, {})
    assert result["errors"] == [
        "source host source-1 has no migration_peer and the inventory has 2 destinations "
        "(destination-1, destination-2): name its peer"
    ]
    assert result["pairs"] == []


def test_migration_peer_not_in_destination() -> None:
    groups = {"source": ["source-1"], "destination": ["destination-1", "destination-2"]}
    hostvars = {"source-1": {"migration_peer": "destination-3"}}
    assert plan({}, groups, hostvars)["errors"] == [
        "migration_peer of source-1 is 'destination-3', which is not in group 'destination' "
        "(valid: destination-1, destination-2)"
    ]


def test_one_destination_shared_by_two_sources() -> None:
    groups = {"source": ["source-1", "source-2"], "destination": ["destination-1", "destination-2"]}
    hostvars = {
        "source-1": {"migration_peer": "destination-1"},
        "source-2": {"migration_peer": "destination-1"},
    }
    result = plan({}, groups, hostvars)
    assert result["errors"] == [
        "destination destination-1 is the peer of both source-1 and source-2"
    ]
    assert [p["source"] for p in result["pairs"]] == ["source-1"]


def test_a_host_in_both_groups() -> None:
    groups = {"source": ["source", "destination"], "destination": ["destination"]}
    assert plan({}, groups, {})["errors"] == [
        "host destination cannot migrate to itself",
        "host destination is in both 'source' and 'destination'",
    ]


@pytest.mark.parametrize("address", ["", "   "])
def test_empty_ansible_host(address: str) -> None:
    hostvars = {"source": {"ansible_host": "10.77.0.11"}, "destination": {"ansible_host": address}}
    result = plan({}, LAB_GROUPS, hostvars)
    assert result["errors"] == [
        "host destination has an empty address (ansible_host / migration_address)"
    ]


def test_three_pairs_with_peers_and_addresses() -> None:
    groups = {
        "source": ["source-1", "source-2", "source-3"],
        "destination": ["destination-1", "destination-2", "destination-3"],
    }
    hostvars = {
        f"{side}-{i}": {
            "ansible_host": f"10.77.0.{10 + (2 * i - 1 if side == 'source' else 2 * i)}",
            **({"migration_peer": f"destination-{4 - i}"} if side == "source" else {}),
        }
        for i in (1, 2, 3)
        for side in ("source", "destination")
    }
    pairs, errors = plan_pairs(groups, host_vars(hostvars))
    assert errors == []
    addresses = [
        {
            key: pair[key]
            for key in ("source", "destination", "source_address", "destination_address")
        }
        for pair in pairs
    ]
    assert addresses == [
        {
            "source": "source-1",
            "destination": "destination-3",
            "source_address": "10.77.0.11",
            "destination_address": "10.77.0.16",
        },
        {
            "source": "source-2",
            "destination": "destination-2",
            "source_address": "10.77.0.13",
            "destination_address": "10.77.0.14",
        },
        {
            "source": "source-3",
            "destination": "destination-1",
            "source_address": "10.77.0.15",
            "destination_address": "10.77.0.12",
        },
    ]
    # without migration_address the link is the connection address
    assert all(p["source_link_address"] == p["source_address"] for p in pairs)
    assert all(p["destination_link_address"] == p["destination_address"] for p in pairs)


def test_migration_address_is_the_link_and_ansible_host_the_connection() -> None:
    hostvars = {
        "source": {"ansible_host": "1.2.3.4", "migration_address": "10.0.1.10",
                   "migration_ssh_key": "/k", "migration_known_hosts": "/kh",
                   "efs_mount_path": "/mnt/efs"},
        "destination": {"ansible_host": "1.2.3.5", "migration_address": "10.0.1.11",
                        "ansible_user": "ubuntu"},
    }  # fmt: skip
    pairs, errors = plan_pairs(LAB_GROUPS, host_vars(hostvars))
    assert errors == []
    assert pairs[0] == {
        "source": "source",
        "destination": "destination",
        "source_address": "1.2.3.4",
        "source_link_address": "10.0.1.10",
        "destination_address": "1.2.3.5",
        "destination_link_address": "10.0.1.11",
        "destination_user": "ubuntu",
        "efs_mount_path": "/mnt/efs",
        "ebs_volume_id": "",
        "source_instance_id": "",
        "destination_instance_id": "",
        "ssh_key": "/k",
        "known_hosts": "/kh",
    }


def test_strategy_is_refused_naming_checkpoint_strategy() -> None:
    assert errors_of({"strategy": "full"}) == [
        "strategy='full' is not read: the setting is called checkpoint_strategy (`strategy` "
        "is an Ansible play keyword); use -e checkpoint_strategy=full"
    ]


def test_a_setting_without_any_value_is_refused() -> None:
    result = plan_experiment(
        {}, REGISTRY, LAB_GROUPS, host_vars(LAB_HOSTVARS), {**DEFAULTS, "transfer": None}
    ).as_dict()
    assert result["errors"] == [
        "transfer has no value: group_vars/all.yml gives every setting its default (run the "
        "suite's playbooks from its folder, with its ansible.cfg)"
    ]


def test_workload_defaults_reach_only_their_workload() -> None:
    # the lab's per-workload sizes: dataproc's num_rows never becomes another workload's
    scoped = {"workload_defaults": {"memory": {"mb_size": 64, "interval": 1.0},
                                    "dataproc": {"num_rows": 100000}}}  # fmt: skip
    memory = plan({**scoped, "workload": "memory"})
    assert memory["errors"] == []
    assert memory["workload_params"] == {"mb_size": 64, "interval": 1.0, "max_memory": 8192}
    matmul = plan({**scoped, "workload": "matmul"})
    assert matmul["workload_params"]["interval"] == REGISTRY["matmul"].params["interval"].default
    dataproc = plan({**scoped, "workload": "dataproc"})
    assert dataproc["workload_params"]["num_rows"] == 100000


def test_a_bare_parameter_wins_over_workload_defaults() -> None:
    result = plan({"workload_defaults": {"memory": {"mb_size": 64}}, "mb_size": "128"})
    assert result["workload_params"]["mb_size"] == 128


def test_workload_defaults_with_unknown_names_are_refused() -> None:
    errors = errors_of({"workload_defaults": {"memry": {"mb_size": 1}, "memory": {"mb": 2}}})
    assert errors == [
        f"workload_defaults names workload 'memry', which is unknown; valid: {VALID_WORKLOADS}",
        "workload_defaults.memory: mb is not a parameter of workload memory (valid: mb_size, "
        "interval, max_memory)",
    ]


def test_host_without_ansible_host_is_reached_by_its_name() -> None:
    pairs, errors = plan_pairs(
        {"source": ["src.example"], "destination": ["dst.example"]}, host_vars({})
    )
    assert errors == []
    assert pairs[0]["source_address"] == "src.example"
    assert pairs[0]["destination_address"] == "dst.example"


# -- the filter ----------------------------------------------------------------------------


class HostVars(dict):
    """Ansible's hostvars: a mapping of host name to that host's variables."""


def test_migration_plan_filter_reads_the_first_source_hosts_variables() -> None:
    hostvars = HostVars(
        source={"ansible_host": "10.77.0.11", "workload": "redis", "checkpoint_strategy": "full"},
        destination={"ansible_host": "10.77.0.12"},
        localhost={"workload": "nope"},
    )
    result = migration_plan(LAB_GROUPS, hostvars, WORKLOADS, DEFAULTS_FILE)
    assert result["ok"] is True
    assert result["settings"]["workload"] == "redis"
    assert result["settings"]["checkpoint_strategy"] == "full"
    assert result["workload_params"] == {"redis_port": 6379, "num_keys": 100000, "value_size": 1024}
    assert result["pairs"][0]["destination_address"] == "10.77.0.12"


def test_migration_plan_filter_without_sources_uses_localhost() -> None:
    hostvars = HostVars(localhost={"workload": "nope"})
    result = migration_plan({"destination": ["d"]}, hostvars, WORKLOADS, DEFAULTS_FILE)
    assert result["errors"] == [
        f"workload='nope' is unknown; valid: {VALID_WORKLOADS}",
        "the inventory has no host in group 'source' (need one per pair)",
    ]


def test_migration_plan_filter_peer_missing_from_hostvars() -> None:
    hostvars = HostVars(source={"migration_peer": "destination"})
    result = migration_plan(LAB_GROUPS, hostvars, WORKLOADS, DEFAULTS_FILE)
    assert result["errors"] == []
    assert result["pairs"][0]["destination_address"] == "destination"


# -- gating on the nodes' facts ------------------------------------------------------------

MEMORY = {"name": "memory", "criu": {"tcp_established": False}}
PREDUMP = {"checkpoint_strategy": "predump", "lazy_pages": False}
FULL = {"checkpoint_strategy": "full", "lazy_pages": False}


def test_predump_without_soft_dirty_names_feature_host_and_kernel() -> None:
    assert gating_errors(LAB_FACTS, "source", "source", PREDUMP, MEMORY) == [
        "checkpoint_strategy=predump needs soft-dirty memory tracking (CONFIG_MEM_SOFT_DIRTY; criu check "
        "--feature mem_dirty_track), which source (kernel 6.18.44-fc-v595) lacks; use "
        "checkpoint_strategy=full, or the soft-dirty guest lab"
    ]


def test_predump_is_gated_on_the_source_only() -> None:
    assert gating_errors(LAB_FACTS, "destination", "destination", PREDUMP, MEMORY) == []
    guest = {**LAB_FACTS, "soft_dirty": True, "kernel": "6.1.0-40-amd64"}
    assert gating_errors(guest, "source", "source", PREDUMP, MEMORY) == []


def test_full_strategy_on_the_lab_passes() -> None:
    assert gating_errors(LAB_FACTS, "source", "source", FULL, MEMORY) == []


def test_lazy_pages_without_uffd_noncoop() -> None:
    facts = {**LAB_FACTS, "lazy_pages": False, "kernel": "5.4.0-1-amd64"}
    settings = {"checkpoint_strategy": "full", "lazy_pages": True}
    assert gating_errors(facts, "destination-2", "destination", settings, MEMORY) == [
        "lazy_pages=true needs userfaultfd with non-cooperative events (criu check --feature "
        "uffd-noncoop), which destination-2 (kernel 5.4.0-1-amd64) lacks; set lazy_pages=false"
    ]
    # the source does not fault pages in
    assert gating_errors(facts, "source-2", "source", settings, MEMORY) == []


def test_tcp_workload_without_network_lock() -> None:
    redis = workload_declaration(WORKLOADS, "redis")
    assert redis["criu"]["tcp_established"] is True
    facts = {**LAB_FACTS, "network_lock": ""}
    message = (
        "workload redis (established TCP connections) needs a CRIU network lock (nftables "
        "support in CRIU, or iptables-restore), which {host} (kernel 6.18.44-fc-v595) lacks; "
        "install nftables (and a CRIU built with libnftables) or iptables"
    )
    for host, role in (("source", "source"), ("destination", "destination")):
        assert gating_errors(facts, host, role, FULL, redis) == [message.format(host=host)]
    assert gating_errors(LAB_FACTS, "source", "source", FULL, redis) == []


def test_unusable_criu_and_missing_features_all_reported() -> None:
    facts = {
        "usable": False,
        "check_summary": "Error (criu/vdso.c:374): vdso: Unexpected rt vDSO area bounds",
        "kernel": "6.18.44-fc-v595",
    }
    errors = gating_errors(
        facts, "source", "source", PREDUMP, {"name": "redis", "criu": {"tcp_established": True}}
    )
    assert len(errors) == 3
    assert errors[0] == (
        "CRIU on source does not pass `criu check`: "
        "Error (criu/vdso.c:374): vdso: Unexpected rt vDSO area bounds"
    )
    assert errors[1].startswith("checkpoint_strategy=predump needs soft-dirty")
    assert errors[2].startswith("workload redis (established TCP connections)")


def test_gating_without_a_kernel_fact() -> None:
    errors = gating_errors({"usable": True}, "h", "source", PREDUMP, MEMORY)
    assert errors == [
        "checkpoint_strategy=predump needs soft-dirty memory tracking (CONFIG_MEM_SOFT_DIRTY; criu check "
        "--feature mem_dirty_track), which h (kernel unknown) lacks; use checkpoint_strategy=full, or the "
        "soft-dirty guest lab"
    ]


def test_migration_gating_filter_is_gating_errors() -> None:
    assert migration_gating(LAB_FACTS, "source", "source", PREDUMP, MEMORY) == gating_errors(
        LAB_FACTS, "source", "source", PREDUMP, MEMORY
    )
    assert len(migration_gating(LAB_FACTS, "source", "source", PREDUMP, MEMORY)) == 1


# -- ports ---------------------------------------------------------------------------------

SETTINGS = {
    "page_server": True,
    "page_server_port": 27000,
    "lazy_pages": True,
    "lazy_pages_mode": "network",
    "lazy_pages_port": 27001,
}


def test_page_server_port_on_the_destination() -> None:
    assert required_ports(MEMORY, "destination", SETTINGS, {}) == [
        {"port": 27000, "why": "criu page-server (page_server_port)"}
    ]


def test_network_lazy_pages_port_on_the_source() -> None:
    assert required_ports(MEMORY, "source", SETTINGS, {}) == [
        {"port": 27001, "why": "network lazy pages (lazy_pages_port)"}
    ]


def test_no_ports_for_local_lazy_pages_and_no_page_server() -> None:
    settings = {**SETTINGS, "page_server": False, "lazy_pages_mode": "images"}
    assert required_ports(MEMORY, "source", settings, {}) == []
    assert required_ports(MEMORY, "destination", settings, {}) == []


def test_workload_ports_on_both_hosts() -> None:
    workload = {"name": "redis", "ports": ["redis_port", "absent_port"]}
    settings = {**SETTINGS, "page_server": False, "lazy_pages": False}
    for role in ("source", "destination"):
        assert required_ports(workload, role, settings, {"redis_port": "6380"}) == [
            {"port": 6380, "why": "workload redis redis_port"}
        ]


def test_the_redis_declarations_port_must_be_free() -> None:
    # node_checks passes the declaration (workload_declaration) and the resolved params: the
    # redis workload starts its own redis-server on redis_port, on the source, and the restore
    # recreates that listening socket on the destination, so the port must be free on both.
    redis = workload_declaration(WORKLOADS, "redis")
    settings = {**SETTINGS, "page_server": False, "lazy_pages": False}
    for role in ("source", "destination"):
        ports = migration_ports(redis, role, settings, {"redis_port": 6379})
        assert {"port": 6379, "why": "workload redis redis_port"} in ports, role


def test_port_message() -> None:
    item = {"port": 27000, "why": "criu page-server (page_server_port)"}
    assert migration_port_message(item, "destination") == (
        "port 27000 is already in use on destination (needed by criu page-server (page_server_port))"
    )


def test_filter_names() -> None:
    assert sorted(FilterModule().filters()) == [
        "migration_gating",
        "migration_plan",
        "migration_port_message",
        "migration_ports",
        "migration_ssh_argv",
        "migration_transfer_tools",
    ]


def test_transfers_not_yet_are_transfers() -> None:
    assert set(TRANSFERS_NOT_YET) <= set(TRANSFERS)
    assert "rsync" not in TRANSFERS_NOT_YET
