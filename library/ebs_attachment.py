#!/usr/bin/python
"""Ansible module: attach, detach or check the pair's EBS volume (control node, EC2 API)."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: ebs_attachment
short_description: Attach, detach or check an EBS volume through the EC2 API (transfer=ebs)
description:
  - Runs on the control node (C(delegate_to) localhost) and moves the pair's EBS volume with
    boto3 - C(AttachVolume) / C(DetachVolume), each followed by a wait on C(DescribeVolumes)
    until the attachment is C(attached) (or the volume C(available)); every call and every
    wait is timed on its own.
  - I(state=attached) detaches the volume from another instance first when I(move=true) (the
    transfer's handover, the rollback's way back), else refuses a volume held elsewhere.
    I(state=detached) detaches it from whatever holds it (the run's cleanup - a known state).
    I(state=checked) changes nothing and returns what keeps the volume from moving between
    I(instances) (existence, zones, who holds it) for the node checks.
  - The attach step is the only piece that differs in the namespaces lab
    (I(implementation=lab), C(module_utils/ebs_attach.py)) - the same calls go to the lab's
    moto server, and a loop device on the volume's backing file in I(lab_backing_dir) is the
    disk the host finds by its volume id; I(fault=no_device) (C(inject_fault=ebs_attach_fail))
    attaches in the API and presents no device.
options:
  volume_id:
    description: The EBS volume (C(ebs_volume_id) of the pair's source).
    type: str
    required: true
  state:
    description: C(attached), C(detached) or C(checked).
    type: str
    choices: [attached, detached, checked]
    default: attached
  instance_id:
    description: The instance to attach to (C(state=attached)).
    type: str
  move:
    description: C(state=attached) - detach the volume from another instance first.
    type: bool
    default: false
  instances:
    description: C(state=checked) - the pair's instances by role, the source first
      ({source - i-..., destination - i-...}).
    type: dict
  implementation:
    description: C(aws) (EC2 presents the device) or C(lab) (the namespaces lab's loop devices).
    type: str
    choices: [aws, lab]
    default: aws
  lab_backing_dir:
    description: The lab's folder of volume backing files (C(<volume id>.img)).
    type: path
  fault:
    description: C(no_device) - attach in the API and present no device (lab only).
    type: str
    choices: [none, no_device]
    default: none
  endpoint_url:
    description: An EC2-compatible endpoint (C(ec2_endpoint_url); empty - AWS's own).
    type: str
  timeout_s:
    description: Seconds each detach and attach may take to complete.
    type: float
    default: 300
extends_documentation_fragment: [aws_api]
attributes:
  check_mode:
    support: partial
    details: C(state=checked) runs; the other states report what they would do.
notes:
  - Needs boto3 on the control node (the control virtualenv has it). Credentials come from
    boto3's chain (the bastion's instance profile on AWS) or I(aws.credentials) (the labs).
  - Its result reaches metrics.json through the next task on a pair host (the metrics
    callback files no result of the control node under a pair) - the transfer's receive
    (C(handover)) or M(transfer_storage) (C(attachment)).
seealso:
  - module: checkpoint_transfer
  - module: transfer_storage
author: CRIU migration suite
"""

EXAMPLES = r"""
- name: Move the volume from the source to the destination
  ebs_attachment:
    volume_id: vol-0123456789abcdef0
    instance_id: i-0fedcba9876543210
    move: true
    aws: {region: ap-northeast-2}
  delegate_to: localhost
  register: moved
"""

RETURN = r"""
steps:
  description: Each detach and attach, with C(api_s) (the call), C(wait_s) (until done),
    C(duration_s), the instance and device name; in the lab the loop device too.
  returned: always
  type: list
  elements: dict
  sample: [{step: detach, instance_id: i-1, api_s: 0.02, wait_s: 0.3, duration_s: 0.35},
           {step: attach, instance_id: i-2, device_name: /dev/sdf, api_s: 0.02, wait_s: 1.1}]
duration_s:
  description: Seconds the steps took together.
  returned: always
  type: float
  sample: 1.5
holder:
  description: The instance the volume is attached to afterwards (null - available).
  returned: always
  type: str
  sample: i-0fedcba9876543210
problems:
  description: C(state=checked) - what keeps the volume from moving between I(instances).
  returned: state=checked
  type: list
  elements: str
implementation:
  description: Which attach ran (C(aws), C(lab)).
  returned: always
  type: str
"""

import time
from typing import Any

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.ebs_attach import AttachError, Ec2Volumes, volumes_for
from ansible.module_utils.transfer_backends import AWS_OPTIONS


def volumes(module: AnsibleModule) -> Ec2Volumes:
    p = module.params
    try:
        return volumes_for(
            p["aws"], p["endpoint_url"], p["implementation"], p["lab_backing_dir"],
            no_device=p["fault"] == "no_device",
        )  # fmt: skip
    except AttachError as exc:
        module.fail_json(msg=str(exc))


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "volume_id": {"type": "str", "required": True},
            "state": {
                "type": "str",
                "default": "attached",
                "choices": ["attached", "detached", "checked"],
            },
            "instance_id": {"type": "str"},
            "move": {"type": "bool", "default": False},
            "instances": {"type": "dict"},
            "implementation": {"type": "str", "default": "aws", "choices": ["aws", "lab"]},
            "lab_backing_dir": {"type": "path"},
            "fault": {"type": "str", "default": "none", "choices": ["none", "no_device"]},
            "endpoint_url": {"type": "str"},
            "timeout_s": {"type": "float", "default": 300.0},
            "aws": {"type": "dict", "options": AWS_OPTIONS},
        },
        required_if=[("state", "attached", ["instance_id"]), ("state", "checked", ["instances"])],
        supports_check_mode=True,
    )
    p = module.params
    ebs = volumes(module)
    volume_id = p["volume_id"]
    t0 = time.monotonic()
    steps: list[dict[str, Any]] = []
    problems: list[str] = []
    try:
        if p["state"] == "checked":
            problems = ebs.problems(volume_id, dict(p["instances"]))
        elif module.check_mode:
            module.exit_json(changed=True, steps=[], duration_s=0.0, holder=None)
        elif p["state"] == "detached":
            steps = [ebs.detach(volume_id, p["timeout_s"])]
        elif p["move"]:
            steps = ebs.move(volume_id, p["instance_id"], p["timeout_s"])
        else:
            steps = [ebs.attach(volume_id, p["instance_id"], p["timeout_s"])]
        holder = ebs.holder(volume_id) if not problems else None
    except AttachError as exc:
        module.fail_json(
            msg=f"EBS volume {volume_id}: {exc}",
            steps=steps,
            duration_s=round(time.monotonic() - t0, 6),
        )
    duration = round(time.monotonic() - t0, 6)
    result: dict[str, Any] = {
        "changed": any(not step.get("already") for step in steps),
        "steps": steps,
        "duration_s": duration,
        "holder": holder,
        "implementation": ebs.kind,
    }
    if p["state"] == "checked":
        result["problems"] = problems
    module.exit_json(**result)


if __name__ == "__main__":
    main()
