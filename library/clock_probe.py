#!/usr/bin/python
"""Ansible module: read a host's wall clock, so the suite can estimate clock offsets."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: clock_probe
short_description: Read the host's wall clock
description:
  - Returns the host's C(time.time()). The metrics callback compares it with the control
    node's clock at the task's start and end, giving the host's offset with an
    uncertainty of half the task's round trip, and from two hosts the offset between
    source and destination - downtime figures that compare timestamps of two hosts say
    how far to trust them.
  - Also reports whether the host says its clock is synchronised (C(timedatectl)).
options: {}
attributes:
  check_mode:
    support: full
author: CRIU migration suite
"""

EXAMPLES = r"""
- name: Read the clock
  clock_probe:
"""

RETURN = r"""
host_time:
  description: The host's wall clock, seconds since the epoch.
  returned: always
  type: float
  sample: 1764150000.123
ntp_synchronized:
  description: What C(timedatectl show -p NTPSynchronized) says (null when unknown).
  returned: always
  type: bool
  sample: true
migration_metrics:
  description: What the metrics callback records.
  returned: always
  type: dict
  sample: {phase: clock, data: {host_time: 1764150000.123}}
"""

import subprocess
import time

from ansible.module_utils.basic import AnsibleModule


def ntp_synchronized() -> bool | None:
    try:
        out = subprocess.run(
            ["timedatectl", "show", "-p", "NTPSynchronized", "--value"],
            capture_output=True, text=True, timeout=5, check=False,
        )  # fmt: skip
    except (OSError, subprocess.TimeoutExpired):
        return None
    value = out.stdout.strip()
    return {"yes": True, "no": False}.get(value)


def main() -> None:
    module = AnsibleModule(argument_spec={}, supports_check_mode=True)
    synced = ntp_synchronized()
    host_time = time.time()
    module.exit_json(
        changed=False,
        host_time=host_time,
        ntp_synchronized=synced,
        migration_metrics={
            "phase": "clock",
            "data": {"host_time": host_time, "ntp_synchronized": synced},
        },
    )


if __name__ == "__main__":
    main()
