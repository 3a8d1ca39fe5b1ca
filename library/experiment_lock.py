#!/usr/bin/python
"""Ansible module: one experiment per host at a time - take, probe or release a host's lock."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: experiment_lock
short_description: Take, probe or release the lock that keeps one experiment per host
description:
  - A host that takes part in an experiment - as source or destination - holds a lock file
    (I(path), C(migration_pair.lock_file), i.e. C(<migration_root>/experiment.lock)) naming the
    experiment, its results folder and the control node that runs it, from the node checks
    until the end of the run, or until C(playbooks/recover.yml) releases it after a run that
    was cut short. Another experiment towards that host is refused, naming the one that
    holds it.
  - C(state=acquired) creates the file atomically (C(O_EXCL)); when another experiment holds
    it the call succeeds with C(acquired=false) and the C(holder), so that the caller
    refuses with the reasons of every host at once. Taking a lock the same experiment
    holds is a no-op.
  - C(state=probed) only reads it. C(state=released) removes it when this experiment holds
    it (another experiment's lock is left alone, reported as C(holder)).
options:
  state:
    description: What to do.
    type: str
    choices: [acquired, probed, released]
    default: probed
  path:
    description: The lock file on this host.
    type: path
    required: true
  experiment:
    description: This experiment's id.
    type: str
    required: true
  holder:
    description: What the lock records about this experiment (state=acquired) - e.g. its
      results folder, journal, side, peer and control node.
    type: dict
    default: {}
attributes:
  check_mode:
    support: full
author: CRIU migration suite
"""

EXAMPLES = r"""
- name: Take this host's experiment lock
  experiment_lock:
    state: acquired
    path: /var/lib/criu-migration/experiment.lock
    experiment: memory_20261126_051500-1a2b3c
    holder: {results_dir: /work/main/results/memory_20261126_051500, side: source}
  register: lock
"""

RETURN = r"""
acquired:
  description: This experiment holds the lock now (state=acquired).
  returned: state=acquired
  type: bool
held:
  description: A lock file exists (after the call).
  returned: always
  type: bool
holder:
  description: What the lock file says (the experiment holding it, its results folder,
    journal, side, control node, when it was taken); empty when free.
  returned: always
  type: dict
  sample: {experiment: memory_20261126_051500-1a2b3c, results_dir: /work/main/results/memory_20261126_051500}
ours:
  description: The lock is this experiment's.
  returned: always
  type: bool
"""

import json
import os
import platform
import time
from pathlib import Path
from typing import Any

from ansible.module_utils.basic import AnsibleModule


def read_holder(path: Path) -> dict[str, Any] | None:
    """The lock's content; None when there is no lock; {"unreadable": ...} when broken."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    except OSError as exc:
        return {"unreadable": str(exc)}
    try:
        holder = json.loads(text)
    except ValueError:
        return {"unreadable": f"not JSON: {text[:200]!r}"}
    return holder if isinstance(holder, dict) else {"unreadable": repr(holder)[:200]}


def take(path: Path, record: dict[str, Any]) -> bool:
    """Create the lock with `record`, atomically; False when it exists already."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w") as out:
        out.write(json.dumps(record, indent=2) + "\n")
        out.flush()
        os.fsync(out.fileno())
    return True


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "state": {
                "type": "str",
                "default": "probed",
                "choices": ["acquired", "probed", "released"],
            },
            "path": {"type": "path", "required": True},
            "experiment": {"type": "str", "required": True},
            "holder": {"type": "dict", "default": {}},
        },
        supports_check_mode=True,
    )
    p = module.params
    path = Path(p["path"])
    holder = read_holder(path)
    ours = bool(holder) and holder.get("experiment") == p["experiment"]
    result: dict[str, Any] = {"changed": False, "held": holder is not None, "ours": ours}
    if p["state"] == "acquired":
        if holder is None and not module.check_mode:
            record = {
                **p["holder"],
                "experiment": p["experiment"],
                "host": platform.node(),
                "taken_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            }
            if take(path, record):
                holder, ours = record, True
                result["changed"] = True
            else:  # another run took it between the read and the create
                holder = read_holder(path)
                ours = bool(holder) and holder.get("experiment") == p["experiment"]
        result.update(acquired=ours or (holder is None and module.check_mode), ours=ours)
    elif p["state"] == "released" and ours:
        if not module.check_mode:
            path.unlink(missing_ok=True)
        result["changed"] = True
        holder = None
    result["held"] = holder is not None
    result["holder"] = holder or {}
    module.exit_json(**result)


if __name__ == "__main__":
    main()
