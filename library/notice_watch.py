#!/usr/bin/python
"""Ansible module: watch a cloud's interruption notice (AWS, GCP, Azure) on the source."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: notice_watch
short_description: Wait for a spot instance's interruption notice, probe the metadata service, or acknowledge a notice
description:
  - C(state=watched) polls the provider's metadata service at I(endpoint) every I(poll_s)
    seconds until an interruption notice is there, and returns it - when the provider issued it
    (C(notice_at) - AWS's action time minus 120 s, Azure's NotBefore minus the Preempt notice's
    30 s; GCP gives no issue time, so there it is the time it was seen, flagged), when it was
    seen (C(seen_at)) and the detection delay between them. It is the trigger of
    C(trigger=notice) (roles/migration_trigger); with C(checkpoint_strategy=predump) the same
    watcher runs inside library/predump_loop.py instead, beside the pre-dumps.
  - An endpoint that fails while the module watches (no answer, garbage, a refused token) does
    not stop it - it keeps polling and reports every distinct error with its count. No notice
    within I(timeout_s) fails the task with what the endpoint answered; the workload keeps
    running where it is.
  - A notice whose deadline had already passed when it was seen is returned at once, with a
    warning that says so.
  - C(state=probed) polls once and fails with a clear message when the endpoint does not
    answer, answers something that is not the provider's protocol, or refuses the token or
    header (the node checks run it before the workload starts).
  - C(state=acknowledged) acknowledges an Azure Preempt event (C(StartRequests)), which lets
    Azure evict the machine at once - the suite does it only after the workload left the source.
  - The protocols (module_utils/spot_notice.py) - AWS IMDSv2
    U(https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/instance-metadata-v2-how-it-works.html)
    and U(https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/spot-instance-termination-notices.html);
    GCP U(https://cloud.google.com/compute/docs/metadata/querying-metadata); Azure Scheduled Events
    U(https://learn.microsoft.com/en-us/azure/virtual-machines/linux/scheduled-events).
options:
  state:
    description: Watch for the notice, probe the endpoint once, or acknowledge a notice.
    type: str
    choices: [watched, probed, acknowledged]
    default: watched
  provider:
    description: The cloud whose protocol the endpoint speaks.
    type: str
    choices: [aws, gcp, azure]
    required: true
  endpoint:
    description: Base URL of the metadata service (C(http://169.254.169.254) on AWS and Azure,
      C(http://metadata.google.internal) on GCP; in the lab the fake, scripts/fake_metadata.py).
    type: str
    required: true
  poll_s:
    description: Seconds between two polls (GCP holds each request open until the value
      changes instead, up to 10 s; this is then the pause after an error).
    type: float
    default: 1.0
  timeout_s:
    description: Seconds to wait for a notice (state=watched).
    type: float
    default: 3600
  rebalance:
    description: AWS - the rebalance recommendation also triggers (an earlier, optional signal;
      its budget is the 120 s of the interruption notice that may follow).
    type: bool
    default: false
  event_id:
    description: The Azure event to acknowledge (state=acknowledged).
    type: str
  request_timeout_s:
    description: Seconds one HTTP request may take.
    type: float
    default: 2.0
attributes:
  check_mode:
    support: partial
    details: C(watched) probes once and does not wait; C(probed) runs; C(acknowledged) does
      nothing.
notes:
  - Standard library only (urllib, never through a proxy); the node needs no package.
seealso:
  - module: predump_loop
author: CRIU migration suite
"""

EXAMPLES = r"""
- name: Wait for the spot notice
  notice_watch:
    provider: aws
    endpoint: http://169.254.169.254
    poll_s: 1
    timeout_s: 3600
  register: migration_notice

- name: The metadata service answers (before the workload starts)
  notice_watch:
    state: probed
    provider: gcp
    endpoint: http://10.77.0.1:18169

- name: Let Azure evict the source now
  notice_watch:
    state: acknowledged
    provider: azure
    endpoint: http://169.254.169.254
    event_id: "{{ migration_notice.notice.event_id }}"
"""

RETURN = r"""
notice:
  description: The notice - provider, kind (interruption, rebalance), action, notice_at,
    notice_at_from, notice_at_estimated, notice_length_s, deadline_at, seen_at (epoch
    seconds), detection_delay_s, deadline_passed, raw (what the provider answered),
    event_id and incarnation (Azure), message.
  returned: state=watched, when a notice came
  type: dict
  sample: {provider: aws, action: terminate, notice_at: 1764150000.0, seen_at: 1764150000.41, detection_delay_s: 0.41}
watch:
  description: How the watch went - polls, poll_s, the last answer, every distinct error
    with its count, tokens requested (AWS), DocumentIncarnation (Azure).
  returned: state=watched
  type: dict
  sample: {polls: 12, poll_s: 1.0, errors: [], last_answer: "GET /latest/meta-data/spot/instance-action: HTTP 200 OK"}
probe:
  description: What the endpoint answered, and a notice already pending.
  returned: state=probed (and watched in check mode)
  type: dict
  sample: {provider: aws, answer: "GET /latest/meta-data/spot/instance-action: HTTP 404 Not Found", pending_notice: null}
acknowledged:
  description: The acknowledgement (Azure).
  returned: state=acknowledged
  type: dict
  sample: {acknowledged: true, event_id: 3A4A9430-8C19-4DB4-A193-CD63462CCE08}
migration_metrics:
  description: What the metrics callback records - phase C(notice) (the notice and the
    watch), C(notice_probe) or C(notice_ack).
  returned: success
  type: dict
  sample: {phase: notice, data: {provider: aws, notice_at: 1764150000.0}}
"""

from typing import Any

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.spot_notice import (
    PROVIDERS,
    MetadataError,
    NoticeTimeout,
    NoticeWatcher,
    client_for,
)


def probe_failure(provider: str, endpoint: str, exc: MetadataError) -> str:
    what = {
        "unreachable": "does not answer",
        "refused": "refuses the request",
        "garbage": "answers something that is not the protocol",
        "http": "answers with an unexpected status",
    }.get(exc.kind, "fails")
    return (
        f"the {provider} metadata service at {endpoint} {what}: {exc} (notice_endpoint; in the "
        f"lab: scripts/fake_metadata.py serve --provider {provider})"
    )


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "state": {
                "type": "str",
                "default": "watched",
                "choices": ["watched", "probed", "acknowledged"],
            },
            "provider": {"type": "str", "required": True, "choices": list(PROVIDERS)},
            "endpoint": {"type": "str", "required": True},
            "poll_s": {"type": "float", "default": 1.0},
            "timeout_s": {"type": "float", "default": 3600.0},
            "rebalance": {"type": "bool", "default": False},
            "event_id": {"type": "str"},
            "request_timeout_s": {"type": "float", "default": 2.0},
        },
        required_if=[("state", "acknowledged", ("event_id",))],
        supports_check_mode=True,
    )
    p = module.params
    if p["poll_s"] <= 0 or p["timeout_s"] <= 0 or p["request_timeout_s"] <= 0:
        module.fail_json(msg="poll_s, timeout_s and request_timeout_s must be positive")
    client = client_for(
        p["provider"], p["endpoint"], rebalance=p["rebalance"], timeout_s=p["request_timeout_s"]
    )
    state = p["state"]

    if state == "acknowledged":
        if module.check_mode:
            module.exit_json(changed=False, msg="check mode: not acknowledged")
        try:
            ack = client.acknowledge(p["event_id"])
        except MetadataError as exc:
            module.fail_json(msg=probe_failure(p["provider"], p["endpoint"], exc))
        module.exit_json(
            changed=bool(ack.get("acknowledged")),
            acknowledged=ack,
            migration_metrics={"phase": "notice_ack", "data": ack},
        )

    if state == "probed" or module.check_mode:
        try:
            probe = client.probe()
        except MetadataError as exc:
            module.fail_json(msg=probe_failure(p["provider"], p["endpoint"], exc), kind=exc.kind)
        result: dict[str, Any] = {
            "changed": False,
            "probe": probe,
            "migration_metrics": {"phase": "notice_probe", "data": probe},
        }
        if state == "watched":
            result["msg"] = "check mode: probed once, not waiting for a notice"
        module.exit_json(**result)

    watcher = NoticeWatcher(client, poll_s=p["poll_s"], timeout_s=p["timeout_s"])
    try:
        notice = watcher.watch()
    except NoticeTimeout as exc:
        module.fail_json(
            msg=f"{exc}; the workload keeps running where it is", watch=watcher.record()
        )
    record = notice.record()
    for error in watcher.errors:
        module.warn(
            f"while watching: {error['message']} ({error['count']} time(s)); it kept polling"
        )
    if notice.deadline_passed:
        module.warn(record["message"])
    module.exit_json(
        changed=False,
        notice=record,
        watch=watcher.record(),
        msg=record["message"],
        migration_metrics={
            "phase": "notice",
            "data": {**record, "watch": watcher.record(), "seen_during": "the wait"},
        },
    )


if __name__ == "__main__":
    main()
