#!/usr/bin/python
"""Ansible module: create an experiment's results folders and announce it to the callback."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: migration_experiment
short_description: Create a migration experiment's results folders
description:
  - Runs on the control node after the preflight validated everything. Creates
    C(<results_root>/<workload>_<UTC timestamp>[_<source host>]) with C(source/) and C(dest/)
    for each pair (the source host is appended when there are several pairs), and
    returns the experiment under C(migration_experiment), which the C(migration_metrics)
    callback reads to know the pairs and where to write C(metrics.json).
  - Each pair gets every node-side path of its experiment (C(module_utils/migration_layout.py)
    - images, CRIU's logs, pidfiles), so roles and recoveries read them from one place.
  - Records the control node's environment (git revision, Ansible and Python versions).
options:
  name:
    description: The experiment's name (C(experiment_name)).
    type: str
    required: true
  workload:
    description: The workload's name.
    type: str
    required: true
  params:
    description: The workload's resolved parameters.
    type: dict
    default: {}
  script:
    description: The workload's standalone script (recorded, so a recovery can recognise its process).
    type: str
    default: ""
  settings:
    description: The experiment's validated settings (checkpoint_strategy, transfer, ...).
    type: dict
    default: {}
  pairs:
    description: Source/destination pairs as the preflight planned them (C(source),
      C(destination), their addresses, the destination's login, C(efs_mount_path)).
    type: list
    elements: dict
    required: true
  results_root:
    description: Folder under which the results folder is created.
    type: path
    required: true
  migration_root:
    description: The nodes' experiment folder (images and working directories go below it).
    type: str
    default: /var/lib/criu-migration
  inventory:
    description: The inventory in use (recorded).
    type: str
  suite_dir:
    description: The suite's checkout (for its git revision).
    type: path
attributes:
  check_mode:
    support: none
author: CRIU migration suite
"""

EXAMPLES = r"""
- name: Create the results folders
  migration_experiment:
    name: default-experiment
    workload: memory
    params: {mb_size: 64}
    pairs: [{source: source, destination: destination}]
    results_root: "{{ playbook_dir }}/results"
  register: experiment
"""

RETURN = r"""
migration_experiment:
  description: The experiment, as the metrics callback and later plays use it.
  returned: always
  type: dict
  sample:
    id: memory_20261126_051500
    pairs: [{source: source, destination: destination, results_dir: /work/main/results/memory_20261126_051500,
             working_dir: /var/lib/criu-migration/work/memory_20261126_051500,
             checkpoint_dir: /var/lib/criu-migration/images/memory_20261126_051500,
             final_images_dir: /var/lib/criu-migration/images/memory_20261126_051500/1}]
"""

import datetime as dt
import platform
import secrets
import subprocess
import time
from pathlib import Path

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.migration_layout import node_paths, transfer_link


def git_revision(directory: str | None) -> str:
    if not directory:
        return ""
    try:
        out = subprocess.run(
            ["git", "-C", directory, "describe", "--always", "--dirty", "--abbrev=12"],
            capture_output=True, text=True, timeout=10, check=False,
        )  # fmt: skip
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return out.stdout.strip()


def unique_dir(root: Path, name: str) -> Path:
    """root/name, or root/name-2, -3 ... when a run in the same second already took it."""
    candidate = root / name
    counter = 2
    while (
        candidate.exists()
        or any(root.glob(f"{candidate.name}_failed"))
        or any(root.glob(f"{candidate.name}_exception"))
    ):
        candidate = root / f"{name}-{counter}"
        counter += 1
    return candidate


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "name": {"type": "str", "required": True},
            "workload": {"type": "str", "required": True},
            "params": {"type": "dict", "default": {}},
            "script": {"type": "str", "default": ""},
            "settings": {"type": "dict", "default": {}},
            "pairs": {"type": "list", "elements": "dict", "required": True},
            "results_root": {"type": "path", "required": True},
            "migration_root": {"type": "str", "default": "/var/lib/criu-migration"},
            "inventory": {"type": "str"},
            "suite_dir": {"type": "path"},
        },
        supports_check_mode=False,
    )
    params = module.params
    started = time.time()
    stamp = dt.datetime.fromtimestamp(started, tz=dt.UTC).strftime("%Y%m%d_%H%M%S")
    root = Path(params["results_root"])
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        module.fail_json(msg=f"cannot create results_root {root}: {exc}")
    base = f"{params['workload']}_{stamp}"
    several = len(params["pairs"]) > 1
    folder_base = unique_dir(root, base).name
    # The id names the experiment's folders on the nodes; runs with other results roots may
    # start in the same second, so it carries a random suffix the results folder does not need.
    experiment_id = f"{folder_base}-{secrets.token_hex(3)}"
    pairs = []
    for pair in params["pairs"]:
        folder = f"{folder_base}_{pair['source']}" if several else folder_base
        results_dir = unique_dir(root, folder)
        # root only: source/ and dest/ get CRIU's image files and the workload's files
        results_dir.mkdir(mode=0o700)
        for side in ("source", "dest"):
            (results_dir / side).mkdir(mode=0o700)
        planned = {
            **pair,
            "results_dir": str(results_dir),
            **node_paths(
                params["migration_root"],
                experiment_id,
                pair["source"],
                params["settings"],
                str(pair.get("efs_mount_path") or ""),
            ),
        }
        planned["transfer"] = transfer_link(planned, params["settings"], experiment_id)
        pairs.append(planned)
    settings = params["settings"]
    experiment = {
        "id": experiment_id,
        "name": params["name"],
        "started_at_epoch": started,
        "workload": {
            "type": params["workload"],
            "params": params["params"],
            "script": params["script"],
        },
        "strategy": {
            "mode": settings.get("checkpoint_strategy"),
            "critical_path": settings.get("critical_path"),
            "lazy_pages": settings.get("lazy_pages", False),
            "page_server": settings.get("page_server", False),
            "predump_iterations": settings.get("predump_iterations"),
            "predump_interval": settings.get("predump_interval"),
            "predump_mode": settings.get("predump_mode"),
            "lazy_pages_mode": settings.get("lazy_pages_mode"),
            "page_server_tls": settings.get("page_server_tls", False),
            "keep_images": settings.get("keep_images", False),
        },
        "transfer": {
            "method": settings.get("transfer"),
            "cipher": settings.get("transfer_cipher"),
            "compress": settings.get("transfer_compress"),
            "verify": settings.get("transfer_verify"),
        },
        "deadline_s": settings.get("deadline_s") or None,
        "settings": settings,
        "inventory": params["inventory"],
        "pairs": pairs,
        "control": {
            "host": platform.node(),
            "git_revision": git_revision(params["suite_dir"]),
            "python": platform.python_version(),
            "ansible": _ansible_version(),
        },
    }
    module.exit_json(changed=True, migration_experiment=experiment)


def _ansible_version() -> str:
    try:
        from ansible.release import __version__

        return str(__version__)
    except ImportError:
        return ""


if __name__ == "__main__":
    main()
