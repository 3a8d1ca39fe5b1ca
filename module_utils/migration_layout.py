"""Where an experiment's files live on its nodes: one definition, made by the preflight.

Every path a role, module or recovery uses on a source or destination host comes from
`node_paths`, computed once per pair on the control node (the `migration_experiment`
module puts it in the pair as `paths`): checkpoint images, CRIU's logs, the pidfiles of
CRIU's background processes and the fused critical path's journal.

- `checkpoint_dir` (node-local) holds CRIU's logs, pidfiles and, unless transfer=efs, the
  images; `working_dir` is the workload's folder, which moves with the checkpoint.
- `images_base`: pre-dump n goes to `<images_base>/<n>`, the final dump to
  `<images_base>/<N+1>` after N pre-dumps (1 with checkpoint_strategy=full). transfer=efs
  puts the images on the filesystem both hosts mount, transfer=ebs on the pair's volume
  (mounted at ebs_mount_path on the host that holds it), so the destination restores them
  where the dump wrote them.
- transfer=s3 keys: `<s3_prefix>/<experiment id>/<source host>/` (`s3_key_prefix`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

# Results bundles, scripts and experiments live under the node's migration_root.
IMAGES = "images"
WORK = "work"
TLS = "tls"
EFS_IMAGES = "criu-migration/images"
EBS_IMAGES = "criu-migration/images"


def final_dump_index(settings: Mapping[str, Any]) -> int:
    """The final dump's folder number: N+1 after N pre-dumps (at most N when adaptive)."""
    if settings.get("checkpoint_strategy") == "predump":
        return int(settings["predump_iterations"]) + 1
    return 1


def node_paths(
    migration_root: str,
    experiment_id: str,
    source: str,
    settings: Mapping[str, Any],
    efs_mount_path: str = "",
) -> dict[str, str]:
    """Every node-side path of one pair's experiment (the same paths on both hosts)."""
    root = migration_root.rstrip("/")
    checkpoint_dir = f"{root}/{IMAGES}/{experiment_id}"
    if settings.get("transfer") == "efs":
        images_base = f"{efs_mount_path.rstrip('/')}/{EFS_IMAGES}/{experiment_id}/{source}"
    elif settings.get("transfer") == "ebs":
        mount = str(settings.get("ebs_mount_path") or "").rstrip("/")
        images_base = f"{mount}/{EBS_IMAGES}/{experiment_id}/{source}"
    else:
        images_base = checkpoint_dir
    return {
        "checkpoint_dir": checkpoint_dir,
        "working_dir": f"{root}/{WORK}/{experiment_id}",
        "images_base": images_base,
        "final_images_dir": f"{images_base}/{final_dump_index(settings)}",
        # CRIU's logs (collected into the results' source/ and dest/)
        "predump_log": f"{checkpoint_dir}/criu-pre-dump.log",
        "dump_log": f"{checkpoint_dir}/criu-dump.log",
        "restore_log": f"{checkpoint_dir}/criu-restore.log",
        "rollback_log": f"{checkpoint_dir}/criu-rollback-restore.log",
        "page_server_log": f"{checkpoint_dir}/criu-page-server.log",
        "lazy_pages_log": f"{checkpoint_dir}/criu-lazy-pages.log",
        # pidfiles of CRIU's background processes: whatever still runs after a failure is
        # stopped from them
        "page_server_pidfile": f"{checkpoint_dir}/criu-page-server.pid",
        "lazy_pages_pidfile": f"{checkpoint_dir}/criu-lazy-pages.pid",
        "lazy_dump_pidfile": f"{checkpoint_dir}/criu-dump-lazy.pid",
        # the restored tree's root PID
        "restored_pidfile": f"{checkpoint_dir}/restored.pid",
        "rollback_pidfile": f"{checkpoint_dir}/rollback.pid",
        # the fused critical path's progress, on the source (read by a recovery)
        "critical_path_journal": f"{checkpoint_dir}/critical-path.journal",
        # one experiment per host at a time: the host's lock (library/experiment_lock.py),
        # the same file whatever the experiment
        "lock_file": f"{root}/experiment.lock",
        # page_server_tls: the experiment's CA certificate and this host's certificate and
        # key, outside checkpoint_dir so that no results bundle ever packs them (removed at
        # the end, success or not)
        "tls_dir": f"{root}/{TLS}/{experiment_id}",
        "tls_cacert": f"{root}/{TLS}/{experiment_id}/ca.pem",
        "tls_cert": f"{root}/{TLS}/{experiment_id}/cert.pem",
        "tls_key": f"{root}/{TLS}/{experiment_id}/key.pem",
    }


def s3_key_prefix(settings: Mapping[str, Any], experiment_id: str, source: str) -> str:
    """Where a pair's objects go in the bucket (transfer=s3)."""
    return f"{str(settings.get('s3_prefix') or '').strip('/')}/{experiment_id}/{source}"


def transfer_link(
    pair: Mapping[str, Any], settings: Mapping[str, Any], experiment_id: str = ""
) -> dict[str, Any]:
    """How the pair's transfers reach the destination: the options every sending module
    takes (TRANSFER_OPTIONS of module_utils/transfer_backends.py), from the settings and
    the planned pair (its paths included)."""
    efs = settings.get("transfer") == "efs"
    s3 = settings.get("transfer") == "s3"
    ebs = settings.get("transfer") == "ebs"
    link = {
        "method": settings.get("transfer"),
        "destination": pair.get("destination_link_address"),
        "destination_user": pair.get("destination_user") or "root",
        "ssh_key": pair.get("ssh_key") or None,
        "known_hosts": pair.get("known_hosts") or None,
        "cipher": settings.get("transfer_cipher"),
        "compress": settings.get("transfer_compress"),
        "compress_level": settings.get("transfer_compress_level"),
        "efs_path": pair.get("efs_mount_path") if efs else None,
        "efs_dir": pair.get("images_base") if efs else None,
        "s3_bucket": settings.get("s3_bucket") if s3 else None,
        "s3_prefix": s3_key_prefix(settings, experiment_id, str(pair.get("source")))
        if s3
        else None,
        "s3_endpoint_url": (settings.get("s3_endpoint_url") or None) if s3 else None,
        "s3_part_size_mb": settings.get("s3_part_size_mb"),
        "s3_max_concurrency": settings.get("s3_max_concurrency"),
        "ebs_volume_id": pair.get("ebs_volume_id") if ebs else None,
        "ebs_mount_path": settings.get("ebs_mount_path") if ebs else None,
        "ebs_dir": pair.get("images_base") if ebs else None,
        "ebs_timeout_s": settings.get("ebs_timeout_s"),
    }
    # numbers are given or left out (the argument spec's default then), never null
    for key in ("s3_part_size_mb", "s3_max_concurrency", "ebs_timeout_s"):
        if link[key] is None:
            del link[key]
    return link
