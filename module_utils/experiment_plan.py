"""The preflight's decisions: validate an experiment's variables and inventory, plan its pairs.

Pure functions over plain dicts, called by the preflight role through a filter plugin,
before any host is touched. Every error names the bad value and the valid ones.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from workload_registry import Param, Workload, coerce, param_errors, resolve_params

STRATEGIES = ("predump", "full")
TRANSFERS = ("rsync", "efs", "s3", "ebs")
# Backends whose implementation has not landed yet: refused with that reason.
TRANSFERS_NOT_YET = {"s3": "the S3 backend", "ebs": "the EBS backend"}
# Options whose implementation has not landed yet: refused instead of silently ignored.
OPTIONS_NOT_YET: dict[str, str] = {}
COMPRESS_NOT_YET: dict[str, str] = {}
PREDUMP_MODES = ("fixed", "adaptive")
LAZY_PAGES_MODES = ("images", "network")
COMPRESSIONS = ("none", "zstd")
# restore_pid_busy: the restore fails; transfer_interrupt: the transfer's SSH link dies
# midway; corrupt_image: a page image is altered on the destination after the transfer.
FAULTS = ("none", "restore_pid_busy", "transfer_interrupt", "corrupt_image")
SSH_CIPHERS = (
    "chacha20-poly1305@openssh.com",
    "aes128-gcm@openssh.com",
    "aes256-gcm@openssh.com",
    "aes128-ctr",
    "aes192-ctr",
    "aes256-ctr",
)

# The experiment's own settings (not the workload's): type, limits, seed default.
SETTINGS: dict[str, Param] = {
    spec.name: spec
    for spec in (
        Param("experiment_name", "str", "default-experiment", pattern=r"[A-Za-z0-9._-]+"),
        Param("checkpoint_strategy", "str", "predump", choices=STRATEGIES),
        Param("predump_iterations", "int", 8, min=1, max=1000),
        Param("predump_interval", "float", 10.0, min=0.0, unit="s"),
        Param("predump_mode", "str", "fixed", choices=PREDUMP_MODES),
        # predump_mode=adaptive's stop rule (module_utils/predump_policy.py)
        Param("predump_min_pages", "int", 64, min=0),
        Param("predump_skip_goal_pct", "float", 70.0, min=0.0, max=100.0, unit="%"),
        Param("predump_max_growth_pct", "float", 10.0, min=-100.0, unit="%"),
        Param("predump_deadline_s", "float", 0.0, min=0.0, unit="s"),
        Param("predump_final_reserve_s", "float", 5.0, min=0.0, unit="s"),
        Param("lazy_pages", "bool", False),
        Param("lazy_pages_mode", "str", "images", choices=LAZY_PAGES_MODES),
        Param("lazy_pages_port", "int", 27001, min=1, max=65535),
        Param("page_server", "bool", False),
        Param("page_server_port", "int", 27000, min=1, max=65535),
        Param("transfer", "str", "rsync", choices=TRANSFERS),
        Param("transfer_cipher", "str", "aes128-gcm@openssh.com", choices=SSH_CIPHERS),
        Param("transfer_compress", "str", "none", choices=COMPRESSIONS),
        Param("transfer_compress_level", "int", 3, min=1, max=19),
        Param("transfer_verify", "bool", False),
        Param("save_metrics", "bool", True),
        Param("keep_images", "bool", False),
        Param("keep_running", "bool", False),
        Param("post_restore_capture_s", "float", 6.0, min=0.0, max=3600.0, unit="s"),
        Param("ready_timeout_s", "float", 120.0, min=1.0, unit="s"),
        Param("deadline_s", "float", 0.0, min=0.0, unit="s"),
        # Failure-path experiments: make a phase fail for real (see library/fault_inject.py).
        Param("inject_fault", "str", "none", choices=FAULTS),
    )
}


@dataclass
class Plan:
    errors: list[str] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)
    workload_params: dict[str, Any] = field(default_factory=dict)
    pairs: list[dict[str, str]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": not self.errors,
            "errors": self.errors,
            "settings": self.settings,
            "workload_params": self.workload_params,
            "pairs": self.pairs,
        }


def plan_pairs(
    groups: Mapping[str, list[str]], host_var: Callable[[str, str], Any]
) -> tuple[list[dict[str, str]], list[str]]:
    """Source/destination pairs from the inventory, with what is wrong with it.

    Each source names its destination in `migration_peer`; with exactly one destination
    the peer may be omitted.
    """
    errors: list[str] = []
    sources = list(groups.get("source") or [])
    destinations = list(groups.get("destination") or [])
    if not sources:
        errors.append("the inventory has no host in group 'source' (need one per pair)")
    if not destinations:
        errors.append("the inventory has no host in group 'destination' (need one per pair)")
    if not sources and not destinations:
        errors.append(
            "is the inventory right? The default is the local lab: run `make lab-up` first, "
            "or pass -i <inventory>"
        )
    if errors:
        return [], errors
    pairs: list[dict[str, str]] = []
    used: dict[str, str] = {}
    for source in sources:
        peer = host_var(source, "migration_peer")
        if not peer:
            if len(destinations) != 1:
                errors.append(
                    f"source host {source} has no migration_peer and the inventory has "
                    f"{len(destinations)} destinations ({', '.join(destinations)}): name its peer"
                )
                continue
            peer = destinations[0]
        peer = str(peer)
        if peer not in destinations:
            errors.append(
                f"migration_peer of {source} is {peer!r}, which is not in group 'destination' "
                f"(valid: {', '.join(destinations)})"
            )
            continue
        if peer == source:
            errors.append(f"host {source} cannot migrate to itself")
            continue
        if peer in used:
            errors.append(f"destination {peer} is the peer of both {used[peer]} and {source}")
            continue
        used[peer] = source
        pairs.append({"source": source, "destination": peer})
    for source in sources:
        if source in destinations:
            errors.append(f"host {source} is in both 'source' and 'destination'")
    for pair in pairs:
        for side in ("source", "destination"):
            host = pair[side]
            address = host_var(host, "ansible_host")
            address = host if address is None else str(address).strip()
            if not address:
                errors.append(f"host {host} has an empty address (ansible_host)")
            pair[f"{side}_address"] = address
    return pairs, errors


def plan_experiment(
    variables: Mapping[str, Any],
    registry: Mapping[str, Workload],
    groups: Mapping[str, list[str]],
    host_var: Callable[[str, str], Any],
) -> Plan:
    """Validate everything the preflight can check without touching a host."""
    plan = Plan()
    workload_name = str(variables.get("workload", "memory"))
    plan.settings["workload"] = workload_name
    if workload_name not in registry:
        plan.errors.append(
            f"workload={workload_name!r} is unknown; valid: {', '.join(sorted(registry))}"
        )
    for name, spec in SETTINGS.items():
        value = variables.get(name, spec.default)
        if value is None or value == "":
            value = spec.default
        problems = param_errors(spec, value)
        if problems:
            plan.errors.extend(problems)
        else:
            plan.settings[name] = coerce(spec, value)
    transfer = plan.settings.get("transfer")
    if transfer in TRANSFERS_NOT_YET:
        plan.errors.append(
            f"transfer={transfer} is not available yet ({TRANSFERS_NOT_YET[transfer]} has not "
            f"landed); available: {', '.join(t for t in TRANSFERS if t not in TRANSFERS_NOT_YET)}"
        )
    for option, what in OPTIONS_NOT_YET.items():
        if plan.settings.get(option):
            plan.errors.append(f"{option}=true is not available yet ({what} has not landed)")
    compress = plan.settings.get("transfer_compress")
    if compress in COMPRESS_NOT_YET:
        plan.errors.append(
            f"transfer_compress={compress} is not available yet ({COMPRESS_NOT_YET[compress]} has not landed)"
        )
    if (
        plan.settings.get("page_server")
        and plan.settings.get("lazy_pages")
        and plan.settings.get("lazy_pages_mode") == "network"
    ):
        plan.errors.append(
            "page_server=true and lazy_pages_mode=network exclude each other: network post-copy "
            "keeps the pages on the source until the destination faults them in; use "
            "lazy_pages_mode=images with the page server"
        )
    if plan.settings.get("page_server") and plan.settings.get(
        "page_server_port"
    ) == plan.settings.get("lazy_pages_port"):
        port = plan.settings.get("page_server_port")
        plan.errors.append(f"page_server_port={port} and lazy_pages_port={port} must differ")
    if workload_name in registry:
        workload = registry[workload_name]
        plan.workload_params, errors = resolve_params(workload, variables)
        plan.errors.extend(errors)
    plan.pairs, errors = plan_pairs(groups, host_var)
    plan.errors.extend(errors)
    plan.errors.extend(transfer_errors(plan.settings, plan.pairs, host_var))
    return plan


def transfer_errors(
    settings: Mapping[str, Any], pairs: list[dict[str, str]], host_var: Callable[[str, str], Any]
) -> list[str]:
    """What the transfer settings and the inventory cannot do together (the node checks then
    see whether efs_mount_path really is one filesystem on both hosts)."""
    errors: list[str] = []
    transfer, fault = settings.get("transfer"), settings.get("inject_fault")
    if transfer == "efs":
        for pair in pairs:
            paths = {
                side: host_var(pair[side], "efs_mount_path") for side in ("source", "destination")
            }
            for side, path in paths.items():
                if not path:
                    errors.append(
                        f"transfer=efs needs efs_mount_path (where the shared filesystem is "
                        f"mounted) for {pair[side]}; the lab sets /mnt/criu-shared, Terraform's "
                        "inventories set it with create_efs=true"
                    )
                elif not str(path).startswith("/"):
                    errors.append(
                        f"efs_mount_path={path!r} of {pair[side]} is not an absolute path"
                    )
            if all(paths.values()) and paths["source"] != paths["destination"]:
                errors.append(
                    f"transfer=efs: efs_mount_path differs between {pair['source']} "
                    f"({paths['source']}) and {pair['destination']} ({paths['destination']}); "
                    "the restore reads the images at the path the dump wrote them"
                )
        if settings.get("transfer_compress") not in (None, "none"):
            errors.append(
                f"transfer_compress={settings['transfer_compress']} compresses the SSH stream "
                "of transfer=rsync; with transfer=efs nothing is streamed (use transfer_compress=none)"
            )
        if settings.get("page_server"):
            errors.append(
                "page_server=true streams the pages to the destination; with transfer=efs the "
                "images are already on the shared filesystem: use one or the other"
            )
        if fault in ("corrupt_image", "transfer_interrupt"):
            errors.append(
                f"inject_fault={fault} needs a transfer that copies (rsync): with transfer=efs "
                + (
                    "the image it would alter is the only copy, which the rollback restores"
                    if fault == "corrupt_image"
                    else "there is no stream to cut"
                )
            )
    if fault == "corrupt_image" and settings.get("page_server"):
        errors.append(
            "inject_fault=corrupt_image with page_server=true would alter the only copy of the "
            "page images (the page server wrote them on the destination)"
        )
    return errors


def _feature_error(host: str, kernel: str, wants: str, feature: str, advice: str) -> str:
    return f"{wants} needs {feature}, which {host} (kernel {kernel}) lacks; {advice}"


def gating_errors(
    facts: Mapping[str, Any],
    host: str,
    role: str,
    settings: Mapping[str, Any],
    workload: Mapping[str, Any],
) -> list[str]:
    """What `host` (as `role` of a pair) lacks for this experiment, from the criu role's facts."""
    errors: list[str] = []
    kernel = str(facts.get("kernel", "unknown"))
    if not facts.get("usable"):
        errors.append(f"CRIU on {host} does not pass `criu check`: {facts.get('check_summary')}")
    if role == "source" and settings.get("checkpoint_strategy") == "predump" and not facts.get("soft_dirty"):
        errors.append(
            _feature_error(
                host, kernel, "checkpoint_strategy=predump",
                "soft-dirty memory tracking (CONFIG_MEM_SOFT_DIRTY; criu check --feature mem_dirty_track)",
                "use checkpoint_strategy=full, or the soft-dirty guest lab",
            )
        )  # fmt: skip
    lazy = bool(settings.get("lazy_pages"))
    network_lazy = lazy and settings.get("lazy_pages_mode") == "network"
    if role == "destination" and lazy and facts.get("uffd") is False:
        errors.append(
            _feature_error(
                host, kernel, "lazy_pages=true",
                "userfaultfd (CONFIG_USERFAULTFD; criu check --feature uffd)",
                "set lazy_pages=false",
            )
        )  # fmt: skip
    elif role == "destination" and lazy and not facts.get("lazy_pages"):
        errors.append(
            _feature_error(
                host, kernel, "lazy_pages=true",
                "userfaultfd with non-cooperative events (criu check --feature uffd-noncoop)",
                "set lazy_pages=false",
            )
        )  # fmt: skip
    # The criu role's probe tries the whole round trip on each host; a failure is charged to
    # the side that failed: the dump serving pages (source) or fetching them (destination).
    failed_side = facts.get("lazy_pages_network_side") or ""
    charged = failed_side not in (("lazy-pages", "restore") if role == "source" else ("dump",))
    if network_lazy and not facts.get("lazy_pages_network") and charged:
        errors.append(
            _feature_error(
                host, kernel, "lazy_pages_mode=network",
                "network post-copy (criu dump --lazy-pages serving pages to criu lazy-pages "
                "--page-server)",
                f"the probe says: {facts.get('lazy_pages_network_reason') or 'not probed'}; "
                "use lazy_pages_mode=images",
            )
        )  # fmt: skip
    criu_needs = workload.get("criu") or {}
    if criu_needs.get("tcp_established") and not facts.get("network_lock"):
        errors.append(
            _feature_error(
                host, kernel, f"workload {workload.get('name')} (established TCP connections)",
                "a CRIU network lock (nftables support in CRIU, or iptables-restore)",
                "install nftables (and a CRIU built with libnftables) or iptables",
            )
        )  # fmt: skip
    return errors


def required_ports(
    workload: Mapping[str, Any], role: str, settings: Mapping[str, Any], params: Mapping[str, Any]
) -> list[dict[str, Any]]:
    """TCP ports that must be free on a pair host before the workload starts."""
    ports = [
        {"port": int(params[name]), "why": f"workload {workload.get('name')} {name}"}
        for name in workload.get("ports") or []
        if name in params
    ]
    if role == "destination" and settings.get("page_server"):
        ports.append(
            {
                "port": int(settings["page_server_port"]),
                "why": "criu page-server (page_server_port)",
            }
        )
    if (
        role == "source"
        and settings.get("lazy_pages")
        and settings.get("lazy_pages_mode") == "network"
    ):
        ports.append(
            {
                "port": int(settings["lazy_pages_port"]),
                "why": "network lazy pages (lazy_pages_port)",
            }
        )
    return ports
