"""Moving an EBS volume between instances, from the control node (transfer=ebs).

The one place where the lab differs from AWS is how an attachment becomes a block device on
its host, so the attach step is one small interface with two implementations:

- `Ec2Volumes` (AWS): the EC2 API's AttachVolume / DetachVolume, each followed by a wait
  on DescribeVolumes until the attachment is `attached` (or the volume `available`); EC2
  presents the device to the instance itself (on Nitro instances an NVMe disk whose serial is
  the volume id: the host finds it by that, module_utils/transfer_backends.py).
- `LabVolumes` (the namespaces lab): the same calls against the lab's moto server, so the
  volume's state, attachments and zone are real API state; after the attach it presents the
  device itself - a loop device on `<backing dir>/<volume id>.img` (ext4 once the source
  made it), which the host finds by that backing file - and removes it before the detach,
  refusing while a host still has it mounted. The images really move with the volume:
  nothing else carries them.

Every API call and every wait is timed on its own (`api_s`, `wait_s`). The move is made by
the control node on the stepwise path (library/ebs_attachment.py) and by the source itself on
the fused critical path (library/critical_path.py, with the node's python3-boto3); both build
their client with `volumes_for`, which imports boto3 only when called.
"""

from __future__ import annotations

import contextlib
import errno
import os
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

# Device names AttachVolume may be given (the ones AWS recommends for EBS data volumes);
# on Nitro instances the kernel names the disk /dev/nvme<N>n1 whatever was asked.
DEVICE_NAMES = tuple(f"/dev/sd{letter}" for letter in "fghijklmnop")
LAB_BACKING_SUFFIX = ".img"


class AttachError(RuntimeError):
    """A volume that could not be attached, detached or found, said in one line."""


def _attachment(volume: dict[str, Any]) -> dict[str, Any] | None:
    attachments = [a for a in volume.get("Attachments") or [] if a.get("State") != "detached"]
    return attachments[0] if attachments else None


def free_device_name(instance: dict[str, Any]) -> str:
    """A device name the instance does not use yet."""
    used = {m.get("DeviceName") for m in instance.get("BlockDeviceMappings") or []}
    for name in DEVICE_NAMES:
        if name not in used and name.replace("/dev/sd", "/dev/xvd") not in used:
            return name
    raise AttachError(f"instance {instance.get('InstanceId')} has no free device name left")


class Ec2Volumes:
    """Attach and detach through the EC2 API; the device appears by EC2's own doing."""

    kind = "aws"

    def __init__(
        self,
        ec2: Any,
        poll_s: float = 0.25,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.ec2 = ec2
        self.poll_s = poll_s
        self.clock = clock
        self.sleep = sleep

    # -- reading ---------------------------------------------------------------------------
    def volume(self, volume_id: str) -> dict[str, Any]:
        try:
            volumes = self.ec2.describe_volumes(VolumeIds=[volume_id])["Volumes"]
        except Exception as exc:
            raise AttachError(f"cannot describe EBS volume {volume_id}: {exc}") from exc
        if not volumes:
            raise AttachError(f"EBS volume {volume_id} does not exist")
        return volumes[0]

    def instance(self, instance_id: str) -> dict[str, Any]:
        try:
            reservations = self.ec2.describe_instances(InstanceIds=[instance_id])["Reservations"]
        except Exception as exc:
            raise AttachError(f"cannot describe instance {instance_id}: {exc}") from exc
        instances = [i for r in reservations for i in r.get("Instances") or []]
        if not instances:
            raise AttachError(f"instance {instance_id} does not exist")
        return instances[0]

    def holder(self, volume_id: str) -> str | None:
        """The instance the volume is attached to (None: available)."""
        attachment = _attachment(self.volume(volume_id))
        return attachment.get("InstanceId") if attachment else None

    def problems(self, volume_id: str, instance_ids: dict[str, str]) -> list[str]:
        """What keeps the volume from moving between these instances ({role: id}), before
        anything changes: each instance exists and runs in the volume's zone, and the
        volume is free or attached to the first of them (the source)."""
        found: list[str] = []
        try:
            volume = self.volume(volume_id)
        except AttachError as exc:
            return [str(exc)]
        zone = volume.get("AvailabilityZone")
        for role, instance_id in instance_ids.items():
            try:
                instance = self.instance(instance_id)
            except AttachError as exc:
                found.append(f"{exc} (the {role})")
                continue
            state = (instance.get("State") or {}).get("Name")
            if state != "running":
                found.append(f"the {role}'s instance {instance_id} is {state}, not running")
            instance_zone = (instance.get("Placement") or {}).get("AvailabilityZone")
            if instance_zone != zone:
                found.append(
                    f"EBS volume {volume_id} is in {zone} and the {role}'s instance "
                    f"{instance_id} in {instance_zone}: a volume attaches only in its own zone"
                )
        attachment = _attachment(volume)
        source = next(iter(instance_ids.values()), None)
        if attachment and attachment.get("InstanceId") != source:
            found.append(
                f"EBS volume {volume_id} is {attachment.get('State')} to "
                f"{attachment.get('InstanceId')}, not to the source {source}: a previous run "
                f"left it there; unmount it on that host and detach it (aws ec2 detach-volume "
                f"--volume-id {volume_id}, with --endpoint-url <ec2_endpoint_url> in the lab)"
            )
        return found

    # -- waiting ---------------------------------------------------------------------------
    def _wait(self, what: str, done: Callable[[dict[str, Any]], bool], volume_id: str,
              timeout_s: float) -> float:  # fmt: skip
        t0 = self.clock()
        while True:
            volume = self.volume(volume_id)
            if done(volume):
                return self.clock() - t0
            if self.clock() - t0 >= timeout_s:
                attachment = _attachment(volume) or {}
                raise AttachError(
                    f"EBS volume {volume_id} did not become {what} within {timeout_s:g} s "
                    f"(state {volume.get('State')}, attachment {attachment.get('State')} to "
                    f"{attachment.get('InstanceId')})"
                )
            self.sleep(self.poll_s)

    # -- changing ----------------------------------------------------------------------------
    def attach(self, volume_id: str, instance_id: str, timeout_s: float) -> dict[str, Any]:
        """Attach the volume to the instance and wait until the attachment is `attached`."""
        t0 = self.clock()
        volume = self.volume(volume_id)
        attachment = _attachment(volume)
        if attachment and attachment.get("InstanceId") == instance_id:
            return {"step": "attach", "instance_id": instance_id, "already": True,
                    "device_name": attachment.get("Device"), "api_s": 0.0, "wait_s": 0.0,
                    "duration_s": round(self.clock() - t0, 6)}  # fmt: skip
        if attachment:
            raise AttachError(
                f"EBS volume {volume_id} is {attachment.get('State')} to "
                f"{attachment.get('InstanceId')}; detach it before attaching it to {instance_id}"
            )
        instance = self.instance(instance_id)
        zone = (instance.get("Placement") or {}).get("AvailabilityZone")
        if zone != volume.get("AvailabilityZone"):
            raise AttachError(
                f"EBS volume {volume_id} is in {volume.get('AvailabilityZone')}, instance "
                f"{instance_id} in {zone}: a volume attaches only in its own zone"
            )
        device = free_device_name(instance)
        t_api = self.clock()
        try:
            self.ec2.attach_volume(VolumeId=volume_id, InstanceId=instance_id, Device=device)
        except Exception as exc:
            raise AttachError(f"AttachVolume {volume_id} -> {instance_id} failed: {exc}") from exc
        api_s = self.clock() - t_api

        def attached(v: dict[str, Any]) -> bool:
            a = _attachment(v)
            return bool(a and a.get("InstanceId") == instance_id and a.get("State") == "attached")

        wait_s = self._wait(f"attached to {instance_id}", attached, volume_id, timeout_s)
        return {
            "step": "attach",
            "instance_id": instance_id,
            "device_name": device,
            "api_s": round(api_s, 6),
            "wait_s": round(wait_s, 6),
            "duration_s": round(self.clock() - t0, 6),
        }

    def detach(self, volume_id: str, timeout_s: float) -> dict[str, Any]:
        """Detach the volume from whatever holds it and wait until it is `available`."""
        t0 = self.clock()
        attachment = _attachment(self.volume(volume_id))
        if not attachment:
            return {"step": "detach", "instance_id": None, "already": True, "api_s": 0.0,
                    "wait_s": 0.0, "duration_s": round(self.clock() - t0, 6)}  # fmt: skip
        instance_id = attachment.get("InstanceId")
        t_api = self.clock()
        try:
            self.ec2.detach_volume(
                VolumeId=volume_id, InstanceId=instance_id, Device=attachment.get("Device")
            )
        except Exception as exc:
            raise AttachError(f"DetachVolume {volume_id} from {instance_id} failed: {exc}") from exc
        api_s = self.clock() - t_api
        wait_s = self._wait(
            "available", lambda v: v.get("State") == "available", volume_id, timeout_s
        )
        return {
            "step": "detach",
            "instance_id": instance_id,
            "device_name": attachment.get("Device"),
            "api_s": round(api_s, 6),
            "wait_s": round(wait_s, 6),
            "duration_s": round(self.clock() - t0, 6),
        }

    def move(self, volume_id: str, instance_id: str, timeout_s: float) -> list[dict[str, Any]]:
        """Detach from wherever it is (unless there already), then attach to `instance_id`."""
        steps = []
        if self.holder(volume_id) not in (None, instance_id):
            steps.append(self.detach(volume_id, timeout_s))
        steps.append(self.attach(volume_id, instance_id, timeout_s))
        return steps


Run = Callable[[list[str]], "subprocess.CompletedProcess[str]"]


def _run(argv: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, check=False)


def device_busy(device: str) -> bool:
    """Whether a block device is in use - mounted in any mount namespace (an exclusive open
    fails with EBUSY while a filesystem holds it)."""
    try:
        fd = os.open(device, os.O_RDONLY | os.O_EXCL)
    except OSError as exc:
        if exc.errno == errno.EBUSY:
            return True
        if exc.errno == errno.ENOENT:
            return False
        raise
    os.close(fd)
    return False


class LabVolumes(Ec2Volumes):
    """The namespaces lab: moto's EC2 API for the state, a loop device for the disk."""

    kind = "lab"

    def __init__(
        self,
        ec2: Any,
        backing_dir: str,
        present_devices: bool = True,
        run: Callable[[list[str]], subprocess.CompletedProcess[str]] = _run,
        **kwargs: Any,
    ) -> None:
        super().__init__(ec2, **kwargs)
        self.backing_dir = Path(backing_dir)
        # False: inject_fault=ebs_attach_fail - attached in the API, no device on the host
        self.present_devices = present_devices
        self.run = run

    def backing_file(self, volume_id: str) -> Path:
        return self.backing_dir / f"{volume_id}{LAB_BACKING_SUFFIX}"

    def loop_devices(self, volume_id: str) -> list[str]:
        """Loop devices on the volume's backing file."""
        backing = self.backing_file(volume_id)
        proc = self.run(
            ["losetup", "--noheadings", "--output", "NAME", "--associated", str(backing)]
        )
        return [line.strip() for line in proc.stdout.splitlines() if line.strip()]

    def attach(self, volume_id: str, instance_id: str, timeout_s: float) -> dict[str, Any]:
        step = super().attach(volume_id, instance_id, timeout_s)
        if self.loop_devices(volume_id):
            step["block_device"] = self.loop_devices(volume_id)[0]
            return step
        if not self.present_devices:
            step["block_device"] = None
            step["fault"] = "ebs_attach_fail: no device presented to the host"
            return step
        backing = self.backing_file(volume_id)
        if not backing.exists():
            raise AttachError(f"the lab's volume {volume_id} has no backing file {backing}")
        t0 = self.clock()
        proc = self.run(["losetup", "--find", "--show", str(backing)])
        if proc.returncode != 0:
            raise AttachError(f"losetup of {backing} failed: {proc.stderr.strip()}")
        step["block_device"] = proc.stdout.strip()
        step["present_s"] = round(self.clock() - t0, 6)
        step["duration_s"] = round(step["duration_s"] + step["present_s"], 6)
        return step

    def detach(self, volume_id: str, timeout_s: float) -> dict[str, Any]:
        t0 = self.clock()
        devices = self.loop_devices(volume_id)
        busy = [device for device in devices if device_busy(device)]
        if busy:
            raise AttachError(
                f"EBS volume {volume_id} ({', '.join(busy)}) is still mounted on its host "
                f"({self.holder(volume_id)}): unmount it first"
            )
        for device in devices:
            proc = self.run(["losetup", "--detach", device])
            if proc.returncode != 0:
                raise AttachError(f"losetup --detach {device} failed: {proc.stderr.strip()}")
        removed_s = self.clock() - t0
        step = super().detach(volume_id, timeout_s)
        step["block_devices_removed"] = devices
        step["remove_s"] = round(removed_s, 6)
        step["duration_s"] = round(step["duration_s"] + removed_s, 6)
        return step


def make_backing_file(path: Path, size_bytes: int) -> bool:
    """The lab volume's sparse backing file; True when it was made."""
    if path.exists():
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as handle:
        handle.truncate(size_bytes)
    return True


def remove_loop_devices(backing: Path, run: Callable[[list[str]], Any] = _run) -> list[str]:
    """Detach every loop device on `backing` that nothing holds (lab teardown)."""
    proc = run(["losetup", "--noheadings", "--output", "NAME", "--associated", str(backing)])
    removed = []
    for device in [line.strip() for line in proc.stdout.splitlines() if line.strip()]:
        if not device_busy(device):
            with contextlib.suppress(Exception):
                run(["losetup", "--detach", device])
                removed.append(device)
    return removed


def volumes_for(
    aws: dict[str, Any] | None,
    endpoint_url: str | None,
    implementation: str = "aws",
    lab_backing_dir: str | None = None,
    no_device: bool = False,
) -> Ec2Volumes:
    """The attach implementation with its EC2 client: `aws` holds the region and the labs'
    credentials (transfer_backends.AWS_OPTIONS); otherwise boto3's chain (an instance
    profile on AWS). The variables go into this process's environment only."""
    from ansible.module_utils.transfer_backends import aws_environment

    env = aws_environment(aws)
    os.environ.update(env)
    try:
        import boto3
        from botocore.config import Config
    except ImportError as exc:
        raise AttachError(f"moving an EBS volume needs boto3 here ({exc})") from exc
    config = Config(connect_timeout=10, read_timeout=30, retries={"max_attempts": 3})
    ec2 = boto3.session.Session().client(
        "ec2",
        endpoint_url=endpoint_url or None,
        region_name=env.get("AWS_DEFAULT_REGION") or None,
        config=config,
    )
    if implementation == "lab":
        if not lab_backing_dir:
            raise AttachError("implementation=lab needs lab_backing_dir")
        return LabVolumes(ec2, lab_backing_dir, present_devices=not no_device)
    if no_device:
        raise AttachError("fault=no_device needs implementation=lab (EC2 presents devices)")
    return Ec2Volumes(ec2)
