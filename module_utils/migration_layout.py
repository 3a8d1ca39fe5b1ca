"""Where an experiment's files live on its nodes: one definition, made by the preflight.

Every path a role, module or recovery uses on a source or destination host comes from
`node_paths`, computed once per pair on the control node (the `migration_experiment`
module puts it in the pair as `paths`): checkpoint images, CRIU's logs, the pidfiles of
CRIU's background processes and the fused critical path's journal.

- `checkpoint_dir` (node-local) holds CRIU's logs, pidfiles and, unless transfer=efs, the
  images; `working_dir` is the workload's folder, which moves with the checkpoint.
- `images_base`: pre-dump n goes to `<images_base>/<n>`, the final dump to
  `<images_base>/<N+1>` after N pre-dumps (1 with checkpoint_strategy=full). transfer=efs
  puts the images on the filesystem both hosts mount, so the destination restores them
  where the dump wrote them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

# Results bundles, scripts and experiments live under the node's migration_root.
IMAGES = "images"
WORK = "work"
EFS_IMAGES = "criu-migration/images"


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
    }


def transfer_link(pair: Mapping[str, Any], settings: Mapping[str, Any]) -> dict[str, Any]:
    """How the pair's transfers reach the destination: the options every sending module
    takes (TRANSFER_OPTIONS of module_utils/transfer_backends.py), from the settings and
    the planned pair (its paths included)."""
    efs = settings.get("transfer") == "efs"
    return {
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
    }
