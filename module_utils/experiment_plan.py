"""The preflight's decisions: validate an experiment's variables and inventory, plan its pairs.

Pure functions over plain dicts, called by the preflight role through a filter plugin,
before any host is touched. Every error names the bad value and the valid ones.

One place per fact: every setting's default is in `group_vars/all.yml` (read here with
`load_setting_defaults` only to fall back from an empty value); its type, range, choices
and meaning are in `SETTINGS` below, from which the README's settings table is generated
(`scripts/settings_table.py`). Transfer methods come from the backends' registry
(module_utils/transfer_backends.py), pre-dump modes from the stop rule's
(module_utils/predump_policy.py).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from link_profiles import NO_PROFILE as NO_LINK_PROFILE
from link_profiles import profile_names as link_profile_names
from migration_trigger import NOTICE_PROVIDERS, TRIGGERS, plan_trigger
from predump_policy import MODES as PREDUMP_MODES
from transfer_backends import COMPRESSIONS, METHODS, METHODS_NOT_YET, cloud_transfer_errors
from workload_registry import Param, Workload, coerce, param_errors, resolve_params

CHECKPOINT_STRATEGIES = ("predump", "full")
# fused: final dump -> transfer -> restore in one call on the source (library/critical_path.py);
# stepwise: one Ansible task per phase.
CRITICAL_PATHS = ("fused", "stepwise")
LAZY_PAGES_MODES = ("images", "network")
# restore_pid_busy: the restore fails; transfer_interrupt: the transfer's SSH link dies
# midway; corrupt_image: a page image is altered on the destination after the transfer.
# transfer=s3: transfer_interrupt kills the uploader midway; ebs_attach_fail: the volume is
# attached to the destination in the API but no device appears there (the lab's attach).
FAULTS = ("none", "restore_pid_busy", "transfer_interrupt", "corrupt_image", "ebs_attach_fail")
# The fault matrix on the fused critical path (module_utils/faults.py, library/critical_path.py)
# and a workload that dies of its own error (library/fault_inject.py).
FAULTS = (*FAULTS, "dump_fails", "dump_crashes", "disk_full", "workload_dies")
SSH_CIPHERS = (
    "chacha20-poly1305@openssh.com",
    "aes128-gcm@openssh.com",
    "aes256-gcm@openssh.com",
    "aes128-ctr",
    "aes192-ctr",
    "aes256-ctr",
)
# Variables the seed or older versions of the suite used, refused with the new name (a
# value under the old name would otherwise be ignored without a word).
RENAMED = {"strategy": "checkpoint_strategy"}


def setting(name: str, kind: str, help: str, **limits: Any) -> Param:
    """A setting's type, limits and meaning; its default lives in group_vars/all.yml."""
    return Param(name, kind, None, help=help, **limits)


# The experiment's own settings (not the workload's).
SETTINGS: dict[str, Param] = {
    spec.name: spec
    for spec in (
        setting("experiment_name", "str", "the experiment's name (metrics.json, summary)",
                pattern=r"[A-Za-z0-9._-]+"),
        setting("workload", "str", "the workload to migrate (workloads/<name>.yml)"),
        setting("save_metrics", "bool", "write metrics.json (false: only the summary is printed)"),
        setting("checkpoint_strategy", "str",
                "predump: N pre-dumps then a small final dump (needs soft-dirty tracking); "
                "full: one dump", choices=CHECKPOINT_STRATEGIES),
        setting("critical_path", "str",
                "fused: final dump, transfer and restore in one call on the source, the "
                "destination prepared before the freeze, every critical-path timestamp on the "
                "source's clock; stepwise: one Ansible task per phase (to watch each phase; its "
                "downtime includes Ansible's time between tasks, reported as the orchestration "
                "gap)", choices=CRITICAL_PATHS),
        setting("pairs_at_once", "int",
                "how many source/destination pairs migrate at the same time (migrate.yml's "
                "serial; 0: all of them)", min=0),
        setting("predump_iterations", "int",
                "pre-dump count (at most, when adaptive); each pre-dump is sent to the "
                "destination at once, while the workload runs", min=1, max=1000),
        setting("predump_interval", "float", "pre-dump spacing, start to start", min=0.0,
                unit="s"),
        setting("predump_mode", "str",
                "fixed: always predump_iterations; adaptive: stop earlier by the rule of "
                "module_utils/predump_policy.py (the reason in phases.predump.stop)",
                choices=PREDUMP_MODES),
        setting("predump_min_pages", "int",
                "adaptive: stop after a pre-dump of at most this many pages (p.haul)", min=0),
        setting("predump_skip_goal_pct", "float",
                "adaptive: stop when at least this % of the pages were unchanged since the "
                "previous pre-dump (LXD's migration.incremental.memory.goal)",
                min=0.0, max=100.0, unit="%"),
        setting("predump_max_growth_pct", "float",
                "adaptive: stop when the dirty set grew by more than this % (p.haul; 0: as "
                "soon as it stops shrinking)", min=-100.0, unit="%"),
        setting("predump_deadline_s", "float",
                "adaptive: stop when another iteration would not leave time for the final "
                "dump, its transfer and the restore within this budget on the deadline clock "
                "(0: with trigger=notice the notice's own length - AWS 120 s, GCP / Azure 30 s "
                "- on a clock started when it was issued; else deadline_s when set, else no "
                "deadline rule)", min=0.0, unit="s"),
        setting("predump_final_reserve_s", "float",
                "adaptive: time kept for the restore and orchestration when the deadline rule "
                "prices the final phase", min=0.0, unit="s"),
        setting("lazy_pages", "bool",
                "restore at once, the rest of the pages faulted in by criu lazy-pages "
                "(userfaultfd) on the destination"),
        setting("lazy_pages_mode", "str",
                "images: pages served from the transferred images; network: post-copy, the "
                "dump keeps the pages on the source and serves them (not with page_server)",
                choices=LAZY_PAGES_MODES),
        setting("lazy_pages_port", "int", "TCP port of network post-copy", min=1, max=65535),
        setting("page_server", "bool",
                "the dump streams its pages over TCP to criu page-server on the destination; "
                "only the small image files go through the transfer"),
        setting("page_server_port", "int", "TCP port of the page server", min=1, max=65535),
        setting("page_server_tls", "bool",
                "CRIU's page traffic (page_server, lazy_pages_mode=network) over TLS (criu "
                "--tls): a CA and a certificate per host made for the experiment on the control "
                "node, tried by a TLS handshake between the hosts before the workload starts, "
                "removed at the end (aws: on; a network you do not own)"),
        setting("transfer", "str",
                "rsync: source -> destination over SSH; efs: the dump writes the images onto "
                "the filesystem both hosts mount at efs_mount_path (lab: /mnt/criu-shared) and "
                "the destination restores them from there, only the working directory is "
                "copied through it; s3: uploaded to s3_bucket by the source, downloaded by the "
                "destination; ebs: dumped onto the pair's EBS volume (ebs_volume_id), which "
                "moves to the destination (the source moves it on the fused path, the control "
                "node on the stepwise path; docs/transfer.md)", choices=METHODS),
        setting("transfer_cipher", "str", "SSH cipher of the transfer", choices=SSH_CIPHERS),
        setting("transfer_compress", "str",
                "zstd: a tar | zstd -T0 -<level> | ssh | zstd -d | tar -x stream instead of "
                "rsync; metrics.json gets the ratio and MB/s before and after compression",
                choices=COMPRESSIONS),
        setting("transfer_compress_level", "int", "zstd level", min=1, max=19),
        setting("transfer_verify", "bool",
                "sha256 of every sent file on the source (during the send), compared on the "
                "destination before the restore: a mismatch fails the run naming the file, and "
                "the workload is restored on the source; not applicable to efs or to page "
                "images sent to a page server (the result says so)"),
        # transfer=s3 / ebs (module_utils/transfer_backends.py, docs/transfer.md)
        setting("s3_bucket", "str",
                "transfer=s3: the bucket (default: the environment's AWS_S3_BUCKET; Terraform's "
                "inventories and the labs set it)"),
        setting("s3_prefix", "str",
                "transfer=s3: key prefix; objects go under <s3_prefix>/<experiment id>/<source "
                "host>/ and are deleted after the run unless keep_images",
                pattern=r"[A-Za-z0-9._-]+(/[A-Za-z0-9._-]+)*"),
        setting("s3_endpoint_url", "str",
                "transfer=s3: an S3-compatible endpoint (empty: AWS's own; the labs: their moto "
                "server)", pattern=r"|https?://[^\s/]+(/\S*)?"),
        setting("s3_part_size_mb", "int",
                "transfer=s3: multipart part size, MiB (also the single-request threshold); "
                "8 is the AWS CLI's and boto3's default", min=5, max=5120, unit="MiB"),
        setting("s3_max_concurrency", "int",
                "transfer=s3: concurrent requests per side (parts and files); 10 is the AWS "
                "CLI's and boto3's default", min=1, max=100),
        setting("ec2_endpoint_url", "str",
                "transfer=ebs: an EC2-compatible endpoint for the attach and detach calls "
                "(empty: AWS's own; the namespaces lab: its moto server)",
                pattern=r"|https?://[^\s/]+(/\S*)?"),
        setting("ebs_mount_path", "str",
                "transfer=ebs: where the volume is mounted on the host that holds it",
                pattern=r"/[^\s]*"),
        setting("ebs_timeout_s", "float",
                "transfer=ebs: how long each detach, attach and the device's appearance on the "
                "host may take", min=1.0, unit="s"),
        setting("keep_images", "bool", "keep images on the hosts and page images in the results"),
        setting("keep_running", "bool", "leave the restored workload running (a real migration)"),
        setting("post_restore_capture_s", "float",
                "observation window after the restore (strace capture)", min=0.0, max=3600.0,
                unit="s"),
        setting("ready_timeout_s", "float", "time the workload may take to write checkpoint_ready",
                min=1.0, unit="s"),
        setting("deadline_s", "float",
                "a deadline of your own, judged beside AWS 120 s / GCP 30 s / Azure 30 s",
                min=0.0, unit="s"),
        # When to migrate (module_utils/migration_trigger.py, roles/migration_trigger).
        setting("trigger", "str",
                "ready: migrate as soon as the workload is ready and the migrate_* conditions "
                "hold; notice: start the workload, watch the cloud's interruption notice "
                "(notice_provider, notice_endpoint) and migrate when it comes - the deadline "
                "clock then starts when the provider issued it", choices=TRIGGERS),
        setting("migrate_after_s", "float",
                "trigger=ready: seconds the workload runs after it is ready before the "
                "checkpoint starts (0: at once)", min=0.0, unit="s"),
        setting("migrate_after_lines", "int",
                "trigger=ready: progress.log lines the workload must have written first (0: off)",
                min=0),
        setting("migrate_at_rss_mb", "int",
                "trigger=ready: anonymous memory (RssAnon of its process tree) the workload must "
                "have reached first (0: off)", min=0, unit="MB"),
        setting("notice_provider", "str",
                "trigger=notice: whose notice - auto: from the inventory (hosts in group aws or "
                "aws_* -> aws, gcp* -> gcp, azure* -> azure), refused when it names none",
                choices=NOTICE_PROVIDERS),
        setting("notice_endpoint", "str",
                "trigger=notice: base URL of the metadata service (auto: the provider's own, "
                "http://169.254.169.254 or http://metadata.google.internal; the labs point it "
                "at scripts/fake_metadata.py)"),
        setting("notice_poll_s", "float",
                "trigger=notice: seconds between two polls of the metadata service (GCP holds "
                "each request open until the value changes)", min=0.05, max=60.0, unit="s"),
        setting("notice_timeout_s", "float",
                "trigger=notice: how long to wait for the notice; then the run fails and the "
                "workload keeps running on the source", min=1.0, unit="s"),
        setting("notice_rebalance", "bool",
                "trigger=notice, AWS: the rebalance recommendation triggers too (an earlier "
                "signal; the budget is the 120 s of the notice that may follow)"),
        # The local lab's link shaped like a cloud link (config/link_profiles.yaml, roles/lab_link).
        setting("lab_link_profile", "str",
                "local lab only: shape the pair's link like a cloud link - RTT, jitter, rate, "
                "per-flow rate (config/link_profiles.yaml, docs/links.md) - from the node checks "
                "to the end of the run; the inventories/lab_<profile>/ inventories set it; none: "
                "the lab's bare link", choices=link_profile_names()),
        # Failure-path experiments: make a phase fail for real (see library/fault_inject.py).
        setting("inject_fault", "str",
                "make a phase fail for real (tests the rollback): restore_pid_busy (the "
                "workload's PID is taken on the destination), transfer_interrupt (the "
                "transfer's SSH connection is killed midway; transfer=s3: the uploader is "
                "killed midway), corrupt_image (a byte of a page image flips on the destination "
                "after the transfer: transfer_verify catches it), ebs_attach_fail (the lab's "
                "volume is attached to the destination but no device appears there)"
                "; dump_fails (the final dump fails half way: CRIU undoes it), "
                "dump_crashes (CRIU is killed half way through the final dump: its network "
                "lock stays), disk_full (the destination's disk fills after the space check), "
                "workload_dies (the memory workload's next allocation fails after it was "
                "ready) - fused path",
                choices=FAULTS),
    )
}  # fmt: skip

# The variable holding per-inventory workload parameter defaults, by workload
# ({memory: {mb_size: 64}, ...}): below -e and presets, above the declarations' defaults.
WORKLOAD_DEFAULTS = "workload_defaults"


# group_vars/all.yml of this checkout (this file runs on the control node only).
DEFAULTS_FILE = Path(__file__).resolve().parent.parent / "group_vars" / "all.yml"


def load_setting_defaults(path: str | Path = DEFAULTS_FILE) -> dict[str, Any]:
    """The settings' defaults from group_vars/all.yml (the one place they are written)."""
    import yaml  # controller-side only

    data = yaml.safe_load(Path(path).read_text()) or {}
    return {name: data[name] for name in SETTINGS if name in data}


@dataclass
class Plan:
    errors: list[str] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)
    workload_params: dict[str, Any] = field(default_factory=dict)
    pairs: list[dict[str, str]] = field(default_factory=list)
    flags: dict[str, bool] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": not self.errors,
            "errors": self.errors,
            "settings": self.settings,
            "workload_params": self.workload_params,
            "pairs": self.pairs,
            "flags": self.flags,
        }


def migration_flags(settings: Mapping[str, Any], workload: Workload | None) -> dict[str, bool]:
    """What the roles branch on, derived once from the settings and the workload."""
    criu = workload.criu if workload is not None else {}
    return {
        # the final dump builds on the last pre-dump (--track-mem, --prev-images-dir)
        "incremental": settings.get("checkpoint_strategy") == "predump",
        # network post-copy: the dump serves the pages from the source
        "lazy_network": bool(settings.get("lazy_pages"))
        and settings.get("lazy_pages_mode") == "network",
        # the workload holds established TCP connections (CRIU's network lock)
        "tcp_established": bool(criu.get("tcp_established")),
        "file_locks": bool(criu.get("file_locks")),
        "fused": settings.get("critical_path") == "fused",
        # CRIU's page traffic crosses the network over TLS (page_server_tls, when CRIU
        # talks TCP at all: the page server, or network post-copy)
        "tls": bool(settings.get("page_server_tls"))
        and (
            bool(settings.get("page_server"))
            or (bool(settings.get("lazy_pages")) and settings.get("lazy_pages_mode") == "network")
        ),
    }


def _address(host: str, host_var: Callable[[str, str], Any], *names: str) -> str:
    """The first of `names` the host sets (stripped), else its inventory name."""
    for name in names:
        value = host_var(host, name)
        if value is not None:
            return str(value).strip()
    return host


def plan_pairs(
    groups: Mapping[str, list[str]], host_var: Callable[[str, str], Any]
) -> tuple[list[dict[str, str]], list[str]]:
    """Source/destination pairs from the inventory, with what is wrong with it.

    Each source names its destination in `migration_peer`; with exactly one destination
    the peer may be omitted. Each pair carries both hosts' connection addresses
    (`<side>_address`: ansible_host, how Ansible reaches them) and link addresses
    (`<side>_link_address`: migration_address, else ansible_host: where the migration's
    own traffic goes), and the login the source uses on the destination.
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
            address = _address(host, host_var, "ansible_host")
            link = _address(host, host_var, "migration_address", "ansible_host")
            if not address or not link:
                errors.append(
                    f"host {host} has an empty address (ansible_host / migration_address)"
                )
            pair[f"{side}_address"] = address
            pair[f"{side}_link_address"] = link
        pair["destination_user"] = str(host_var(pair["destination"], "ansible_user") or "root")
        # transfer=efs: where the shared filesystem is mounted (transfer_errors checks it)
        pair["efs_mount_path"] = str(host_var(pair["source"], "efs_mount_path") or "")
        # transfer=ebs: the pair's volume (a host var of the source) and both instances
        pair["ebs_volume_id"] = str(host_var(pair["source"], "ebs_volume_id") or "")
        for side in ("source", "destination"):
            pair[f"{side}_instance_id"] = str(host_var(pair[side], "instance_id") or "")
        # the SSH trust the source's transfers use to reach the destination
        for key, name in (
            ("ssh_key", "migration_ssh_key"),
            ("known_hosts", "migration_known_hosts"),
        ):
            pair[key] = str(host_var(pair["source"], name) or "")
    return pairs, errors


def plan_settings(
    variables: Mapping[str, Any], defaults: Mapping[str, Any]
) -> tuple[dict[str, Any], list[str]]:
    """Every setting typed and checked; an empty value falls back to its default."""
    settings: dict[str, Any] = {}
    errors: list[str] = []
    for old, new in RENAMED.items():
        if variables.get(old) not in (None, ""):
            errors.append(
                f"{old}={variables[old]!r} is not read: the setting is called {new} "
                f"(`{old}` is an Ansible play keyword); use -e {new}={variables[old]}"
            )
    for name, spec in SETTINGS.items():
        value = variables.get(name)
        if value is None or value == "":
            fallback = defaults.get(name)
            # a default Ansible computes itself ("{{ lookup('env', ...) }}") had its say
            # already: what it gave (or nothing) stays empty
            templated = isinstance(fallback, str) and "{{" in fallback
            value = "" if templated else fallback
        if value is None:
            errors.append(
                f"{name} has no value: group_vars/all.yml gives every setting its default "
                "(run the suite's playbooks from its folder, with its ansible.cfg)"
            )
            continue
        problems = param_errors(spec, value)
        if problems:
            errors.extend(problems)
        else:
            settings[name] = coerce(spec, value)
    return settings, errors


def workload_overrides(
    variables: Mapping[str, Any], workload: Workload, registry: Mapping[str, Workload]
) -> tuple[dict[str, Any], list[str]]:
    """The values of the workload's parameters given for this run: the inventory's
    `workload_defaults` for this workload, then any variable of the parameter's own name
    (-e, presets) on top."""
    errors: list[str] = []
    scoped = variables.get(WORKLOAD_DEFAULTS) or {}
    if not isinstance(scoped, Mapping):
        return {}, [f"{WORKLOAD_DEFAULTS} must map workload names to parameters, not {scoped!r}"]
    for name, params in scoped.items():
        if name not in registry:
            errors.append(
                f"{WORKLOAD_DEFAULTS} names workload {name!r}, which is unknown; "
                f"valid: {', '.join(sorted(registry))}"
            )
            continue
        unknown = sorted(set(params or {}) - set(registry[name].params))
        if unknown:
            errors.append(
                f"{WORKLOAD_DEFAULTS}.{name}: {', '.join(unknown)} is not a parameter of "
                f"workload {name} (valid: {', '.join(registry[name].params)})"
            )
    overrides = dict(scoped.get(workload.name) or {})
    for name in workload.params:
        if variables.get(name) is not None:
            overrides[name] = variables[name]
    return overrides, errors


def plan_experiment(
    variables: Mapping[str, Any],
    registry: Mapping[str, Workload],
    groups: Mapping[str, list[str]],
    host_var: Callable[[str, str], Any],
    defaults: Mapping[str, Any] | None = None,
) -> Plan:
    """Validate everything the preflight can check without touching a host.

    `defaults`: the settings' defaults (None: read from group_vars/all.yml).
    """
    defaults = load_setting_defaults() if defaults is None else defaults
    plan = Plan()
    plan.settings, plan.errors = plan_settings(variables, defaults)
    workload_name = str(variables.get("workload") or defaults.get("workload"))
    if workload_name not in registry:
        plan.errors.append(
            f"workload={workload_name!r} is unknown; valid: {', '.join(sorted(registry))}"
        )
    transfer = plan.settings.get("transfer")
    if transfer in METHODS_NOT_YET:
        plan.errors.append(
            f"transfer={transfer} is not available yet ({METHODS_NOT_YET[transfer]} has not "
            f"landed); available: {', '.join(m for m in METHODS if m not in METHODS_NOT_YET)}"
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
        overrides, errors = workload_overrides(variables, workload, registry)
        plan.errors.extend(errors)
        plan.workload_params, errors = resolve_params(workload, overrides)
        plan.errors.extend(errors)
    plan.pairs, errors = plan_pairs(groups, host_var)
    plan.errors.extend(errors)
    plan.errors.extend(transfer_errors(plan.settings, plan.pairs, host_var))
    plan.errors.extend(link_profile_errors(plan.settings, plan.pairs, groups))
    # resolves notice_provider=auto and notice_endpoint=auto in plan.settings
    plan.errors.extend(plan_trigger(plan.settings, groups, plan.workload_params))
    plan.flags = migration_flags(plan.settings, registry.get(workload_name))
    return plan


def link_profile_errors(
    settings: Mapping[str, Any], pairs: list[dict[str, str]], groups: Mapping[str, list[str]]
) -> list[str]:
    """A link profile shapes the local lab's links only: every pair host must be a lab host
    (group `lab`); library/lab_link.py checks it again on the machine."""
    profile = settings.get("lab_link_profile")
    if profile in (None, NO_LINK_PROFILE):
        return []
    lab = set(groups.get("lab") or [])
    outside = sorted({pair[side] for pair in pairs for side in ("source", "destination")} - lab)
    if not outside:
        return []
    return [
        f"lab_link_profile={profile} shapes the links of the local lab (hosts in group lab) and "
        f"never a real network; {', '.join(outside)} are not lab hosts: use lab_link_profile=none "
        "(a cloud inventory's network is the real one)"
    ]


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
    errors.extend(cloud_transfer_errors(settings, pairs, host_var))
    return errors


def non_root_processes(criu_needs: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(process, user) of each process a workload declares it runs as another user than
    root (`criu.runs_as` of its declaration: {process name: user name or uid})."""
    runs_as = criu_needs.get("runs_as") or {}
    return [
        (str(process), str(user))
        for process, user in sorted(runs_as.items())
        if str(user) not in ("root", "0")
    ]


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
    if (
        role == "source"
        and settings.get("checkpoint_strategy") == "predump"
        and not facts.get("soft_dirty")
    ):
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
    tls_used = bool(settings.get("page_server_tls")) and (
        bool(settings.get("page_server")) or network_lazy
    )
    if tls_used and not facts.get("tls"):
        errors.append(
            _feature_error(
                host, kernel, "page_server_tls=true (the page traffic over TLS)",
                "a CRIU built with TLS support (GnuTLS)",
                f"{facts.get('tls_reason') or 'not probed'}; install a CRIU linked with "
                "GnuTLS (make setup builds one), or set page_server_tls=false and the pages "
                "cross the network unencrypted",
            )
        )  # fmt: skip
    criu_needs = workload.get("criu") or {}
    if role == "source" and not facts.get("cap_sys_resource"):
        errors.extend(
            f"workload {workload.get('name')} runs {process} as {user} (criu.runs_as), and "
            f"criu dump reads the rlimits of every process it dumps, which for a process of "
            f"another user needs CAP_SYS_RESOURCE: root on {host} lacks it (the dump would "
            f'fail with "Can\'t get rlimit 0: Operation not permitted"); run {process} as '
            f"root, or migrate from hosts whose root has CAP_SYS_RESOURCE (docs/lab.md)"
            for process, user in non_root_processes(criu_needs)
        )
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
