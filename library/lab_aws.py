#!/usr/bin/python
"""Ansible module: the labs' AWS - moto in server mode serving S3 and EC2 on the lab bridge."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: lab_aws
short_description: Start or stop a lab's S3 and EC2 (moto in server mode) and its EBS volumes
description:
  - Runs C(moto_server) (the control virtualenv's C(moto[server])) as a detached process
    bound to the lab bridge's control-side address (in I(subnet)), so the lab's hosts reach it
    over the network - a host's own loopback is its own namespace. Its PID is kept in
    C(<lab_dir>/aws/moto.pid); C(absent) stops exactly that process.
  - Makes the lab's bucket, throwaway credentials (C(<lab_dir>/aws/credentials.json), mode
    0600, random; moto accepts any, the suite treats them as secrets), registers every lab
    host as an EC2 instance (tag C(criu-lab-host)) in I(zone), and creates one EBS volume per
    source host (tag C(criu-lab-pair)) backed by a sparse file
    C(<lab_dir>/ebs/<volume id>.img) - the disk that the lab's attach presents as a loop
    device (C(module_utils/ebs_attach.py)).
  - Idempotent. The server keeps its state in memory - C(present) reuses a running server
    and finds its instances and volumes by their tags; after a restart they are registered
    again (new ids; the inventory is rewritten) and stale backing files are removed.
  - C(absent) stops the server, detaches the loop devices of the lab's volumes and removes
    the credentials and backing files.
options:
  state:
    description: C(present) or C(absent).
    type: str
    choices: [present, absent]
    default: present
  lab_dir:
    description: The lab's state folder.
    type: path
    required: true
  subnet:
    description: The lab's subnet; moto binds to the control node's address on its bridge
      (the first address).
    type: str
  port:
    description: The server's TCP port.
    type: int
    default: 5000
  hosts:
    description: The lab's hosts (C(name), C(group) - source or destination).
    type: list
    elements: dict
    default: []
  volumes:
    description: Make the EC2 instances and EBS volumes (the namespaces lab); false - S3 only
      (the guest lab, whose QEMU guests cannot attach a loop device).
    type: bool
    default: true
  region:
    description: The region the lab's clients name.
    type: str
    default: us-east-1
  zone:
    description: The availability zone of every lab host and volume.
    type: str
    default: us-east-1a
  bucket:
    description: The lab's bucket.
    type: str
    default: criu-lab
  volume_gb:
    description: Size of each lab volume (sparse backing file).
    type: int
    default: 4
attributes:
  check_mode:
    support: none
notes:
  - Needs root (loop devices) and the control virtualenv's C(moto_server) and boto3.
author: CRIU migration suite
"""

EXAMPLES = r"""
- name: The lab's S3 and EC2
  lab_aws:
    lab_dir: /work/main/.lab
    subnet: 10.77.0.0/24
    hosts: "{{ lab.hosts }}"
  register: lab_aws
"""

RETURN = r"""
endpoint_url:
  description: The server's URL (S3 and EC2).
  returned: state=present
  type: str
  sample: http://10.77.0.1:5000
credentials_file:
  description: The lab's throwaway credentials (JSON, mode 0600).
  returned: state=present
  type: str
bucket:
  description: The lab's bucket.
  returned: state=present
  type: str
backing_dir:
  description: The folder of the volumes' backing files.
  returned: state=present
  type: str
instances:
  description: Host name to its instance id and zone.
  returned: state=present
  type: dict
  sample: {source: {instance_id: i-0123, availability_zone: us-east-1a}}
volumes:
  description: Source host name to its pair's volume id.
  returned: state=present
  type: dict
  sample: {source: vol-0123}
pid:
  description: The server's PID.
  returned: state=present
  type: int
"""

import json
import os
import secrets
import socket
import sys
import time
from pathlib import Path
from typing import Any

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.ebs_attach import (
    LAB_BACKING_SUFFIX,
    make_backing_file,
    remove_loop_devices,
)
from ansible.module_utils.lab_layout import bridge_address
from ansible.module_utils.processes import cmdline, is_alive, start_detached, terminate

MARKER = "moto_server"
AMI = "ami-12c6146b"  # one of moto's built-in images


class LabAws:
    def __init__(self, module: AnsibleModule) -> None:
        self.module = module
        p = module.params
        self.dir = Path(p["lab_dir"]) / "aws"
        self.backing_dir = Path(p["lab_dir"]) / "ebs"
        self.pidfile = self.dir / "moto.pid"
        self.credentials_file = self.dir / "credentials.json"
        self.address = bridge_address(p["subnet"]).split("/")[0] if p["subnet"] else ""
        self.port = p["port"]
        self.url = f"http://{self.address}:{self.port}"

    # -- the server ---------------------------------------------------------------------
    def server_pid(self) -> int | None:
        try:
            pid = int(self.pidfile.read_text().strip())
        except (OSError, ValueError):
            return None
        argv = cmdline(pid)
        ours = any(MARKER in part for part in argv) and str(self.port) in argv
        return pid if is_alive(pid) and ours else None

    def answers(self, timeout: float = 0.5) -> bool:
        try:
            with socket.create_connection((self.address, self.port), timeout=timeout):
                return True
        except OSError:
            return False

    def start(self) -> tuple[int, bool]:
        pid = self.server_pid()
        if pid is not None and self.answers():
            return pid, False
        if pid is not None:
            terminate(pid)
        binary = Path(sys.executable).parent / MARKER
        if not binary.exists():
            self.module.fail_json(msg=f"{binary} is missing: make setup installs moto[server]")
        self.dir.mkdir(parents=True, exist_ok=True)
        pid = start_detached(
            [str(binary), "-H", self.address, "-p", str(self.port)],
            output=self.dir / "moto.log",
            exit_file=self.dir / "moto.exit",
        )
        self.pidfile.write_text(f"{pid}\n")
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.answers():
                return pid, True
            if not is_alive(pid):
                break
            time.sleep(0.1)
        log = (self.dir / "moto.log").read_text(errors="replace")[-1500:]
        self.module.fail_json(msg=f"moto_server did not answer on {self.url}; its log: {log}")
        raise AssertionError  # unreachable

    def stop(self) -> bool:
        pid = self.server_pid()
        if pid is None:
            return False
        terminate(pid)
        return True

    # -- credentials ------------------------------------------------------------------------
    def credentials(self) -> dict[str, str]:
        if self.credentials_file.exists():
            return dict(json.loads(self.credentials_file.read_text()))
        data = {
            "AWS_ACCESS_KEY_ID": "LAB" + secrets.token_hex(8).upper(),
            "AWS_SECRET_ACCESS_KEY": secrets.token_urlsafe(30),
        }
        self.dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.credentials_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            json.dump(data, handle)
        return data

    def clients(self) -> tuple[Any, Any]:
        import boto3

        session = boto3.session.Session(
            aws_access_key_id=self.credentials()["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=self.credentials()["AWS_SECRET_ACCESS_KEY"],
            region_name=self.module.params["region"],
        )
        return (
            session.client("s3", endpoint_url=self.url),
            session.client("ec2", endpoint_url=self.url),
        )

    # -- contents -----------------------------------------------------------------------
    def bucket(self, s3: Any) -> None:
        name = self.module.params["bucket"]
        existing = {b["Name"] for b in s3.list_buckets().get("Buckets") or []}
        if name not in existing:
            s3.create_bucket(Bucket=name)

    def instances(self, ec2: Any) -> dict[str, dict[str, str]]:
        p = self.module.params
        found: dict[str, dict[str, str]] = {}
        for host in p["hosts"]:
            name = host["name"]
            reply = ec2.describe_instances(
                Filters=[
                    {"Name": "tag:criu-lab-host", "Values": [name]},
                    {"Name": "instance-state-name", "Values": ["running"]},
                ]
            )
            instances = [i for r in reply["Reservations"] for i in r["Instances"]]
            if instances:
                instance = instances[0]
            else:
                instance = ec2.run_instances(
                    ImageId=AMI,
                    MinCount=1,
                    MaxCount=1,
                    InstanceType="m5.xlarge",
                    Placement={"AvailabilityZone": p["zone"]},
                    TagSpecifications=[
                        {
                            "ResourceType": "instance",
                            "Tags": [
                                {"Key": "Name", "Value": name},
                                {"Key": "criu-lab-host", "Value": name},
                            ],
                        }
                    ],
                )["Instances"][0]
            found[name] = {
                "instance_id": instance["InstanceId"],
                "availability_zone": instance["Placement"]["AvailabilityZone"],
            }
        return found

    def volumes(self, ec2: Any) -> dict[str, str]:
        p = self.module.params
        found: dict[str, str] = {}
        for host in p["hosts"]:
            if host.get("group") != "source":
                continue
            name = host["name"]
            reply = ec2.describe_volumes(Filters=[{"Name": "tag:criu-lab-pair", "Values": [name]}])
            if reply["Volumes"]:
                volume_id = reply["Volumes"][0]["VolumeId"]
            else:
                volume_id = ec2.create_volume(
                    AvailabilityZone=p["zone"],
                    Size=p["volume_gb"],
                    VolumeType="gp3",
                    TagSpecifications=[
                        {
                            "ResourceType": "volume",
                            "Tags": [
                                {"Key": "Name", "Value": f"criu-lab {name}"},
                                {"Key": "criu-lab-pair", "Value": name},
                            ],
                        }
                    ],
                )["VolumeId"]
            make_backing_file(
                self.backing_dir / f"{volume_id}{LAB_BACKING_SUFFIX}", p["volume_gb"] << 30
            )
            found[name] = volume_id
        return found

    def remove_stale_backing_files(self, keep: set[str]) -> list[str]:
        removed = []
        for path in sorted(self.backing_dir.glob(f"*{LAB_BACKING_SUFFIX}")):
            if path.name.removesuffix(LAB_BACKING_SUFFIX) in keep:
                continue
            remove_loop_devices(path)
            path.unlink(missing_ok=True)
            removed.append(path.name)
        return removed

    # -- states --------------------------------------------------------------------------
    def present(self) -> dict[str, Any]:
        pid, started = self.start()
        s3, ec2 = self.clients()
        self.bucket(s3)
        instances: dict[str, dict[str, str]] = {}
        volumes: dict[str, str] = {}
        removed: list[str] = []
        if self.module.params["volumes"]:
            instances = self.instances(ec2)
            volumes = self.volumes(ec2)
            removed = self.remove_stale_backing_files(set(volumes.values()))
        return {
            "changed": started or bool(removed),
            "pid": pid,
            "started": started,
            "endpoint_url": self.url,
            "credentials_file": str(self.credentials_file),
            "bucket": self.module.params["bucket"],
            "backing_dir": str(self.backing_dir),
            "instances": instances,
            "volumes": volumes,
            "stale_backing_files_removed": removed,
        }

    def absent(self) -> dict[str, Any]:
        stopped = self.stop()
        removed = self.remove_stale_backing_files(set())
        busy = [p.name for p in self.backing_dir.glob(f"*{LAB_BACKING_SUFFIX}")]
        for path in (self.credentials_file, self.pidfile, self.dir / "moto.exit"):
            path.unlink(missing_ok=True)
        return {"changed": stopped or bool(removed), "stopped": stopped, "removed": removed,
                "left_busy": busy}  # fmt: skip


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "state": {"type": "str", "default": "present", "choices": ["present", "absent"]},
            "lab_dir": {"type": "path", "required": True},
            "subnet": {"type": "str"},
            "port": {"type": "int", "default": 5000},
            "hosts": {"type": "list", "elements": "dict", "default": []},
            "volumes": {"type": "bool", "default": True},
            "region": {"type": "str", "default": "us-east-1"},
            "zone": {"type": "str", "default": "us-east-1a"},
            "bucket": {"type": "str", "default": "criu-lab"},
            "volume_gb": {"type": "int", "default": 4},
        },
        required_if=[("state", "present", ["subnet"])],
        supports_check_mode=False,
    )
    if os.geteuid() != 0:
        module.fail_json(msg="the lab's AWS needs root (loop devices)")
    lab = LabAws(module)
    try:
        result = lab.present() if module.params["state"] == "present" else lab.absent()
    except Exception as exc:  # boto3 / moto errors, said in one line
        module.fail_json(msg=f"lab_aws: {type(exc).__name__}: {exc}")
    module.exit_json(**result)


if __name__ == "__main__":
    main()
