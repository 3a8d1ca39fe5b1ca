#!/usr/bin/env python3
"""Benchmark the transfer backends on one real checkpoint image in the local lab.

    .venv/bin/python scripts/bench_transfer.py                 # dump a ~512 MiB memory workload
    .venv/bin/python scripts/bench_transfer.py --image DIR     # or use an images folder
    .venv/bin/python scripts/bench_transfer.py --workload dataproc  # numeric table: ~2x compressible

Every variant moves the SAME image folder from the source host's disk to the destination's,
run by the suite's own backend code (module_utils/transfer_backends.py) on the source:

  ssh cat <cipher>   cat of the image files | ssh -c <cipher> dest 'cat > file': the link's
                     practical ceiling for that cipher (no per-file work, no checks)
  rsync <cipher>     RsyncBackend (the suite's flags) for chacha20, aes128-gcm, aes256-gcm
  rsync --no-sparse  the suite's flags less --sparse (aes128-gcm): what keeping holes costs
  zstd               ZstdSshBackend: tar | zstd -T0 -3 | ssh (aes128-gcm) | zstd -d | tar -x
  verify             rsync aes128-gcm + sha256 manifest on the source (during the send) +
                     the comparison on the destination: time = send + destination check
  efs write / read   the image written into the shared directory from the source (fsync'd,
                     then dropped from the page cache) and read back on the destination:
                     what a dump to and a restore from the share pay instead of a copy
  s3                 S3Backend: the upload from the source (multipart, the suite's part size
                     and concurrency: AWS's defaults) and the download on the destination,
                     against the lab's S3 (moto in server mode on the bridge: an emulator,
                     not S3; docs/transfer.md)
  ebs                EbsBackend's path: the image written onto the pair's volume on the source
                     (fsync'd), the volume unmounted, moved by the control node (EC2 API
                     against the lab's moto, a loop device in the lab) and mounted on the
                     destination, which reads it all back

The lab's VM hands freed memory back to its host and touching it again is slower (docs/lab.md),
so one warm-up round runs first (not reported) and the variants are interleaved: each
round runs all of them, in an order rotated by one per round. MB/s = 10^6 bytes / s of the
image's payload. Prints a table (median, min-max) and writes JSON beside the image.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "module_utils"))

from lab_hosts import LabHosts  # noqa: E402
from transfer_backends import (  # noqa: E402
    RsyncBackend,
    S3Backend,
    TransferRequest,
    ZstdSshBackend,
    compare_manifest,
    manifest_of_files,
    mount_volume,
    payload_of,
    regular_files,
    request_from_options,
    rsync_argv,
    ssh_command,
    transfer_send,
    unmount_volume,
)

NODE_DIR = "/var/lib/criu-migration/bench-transfer"  # node-local disk (tmpfs in the lab)
SHARED_DIR = "/mnt/criu-shared/bench-transfer"  # the lab's EFS stand-in
BENCH_DIR = REPO / ".cache" / "bench-transfer"  # control side, visible to the lab's hosts
CIPHERS = {
    "chacha20": "chacha20-poly1305@openssh.com",
    "aes128-gcm": "aes128-gcm@openssh.com",
    "aes256-gcm": "aes256-gcm@openssh.com",
}
VARIANTS = [
    "ssh cat chacha20",
    "rsync chacha20",
    "ssh cat aes128-gcm",
    "rsync aes128-gcm",
    "ssh cat aes256-gcm",
    "rsync aes256-gcm",
    "rsync --no-sparse aes128-gcm",
    "zstd aes128-gcm",
    "verify aes128-gcm",
    "efs",
    "s3",
    "ebs",
]
S3_PREFIX = "criu-migration/bench-transfer"
EBS_MOUNT = "/mnt/criu-ebs"
EBS_DIR = f"{EBS_MOUNT}/bench-transfer"
WORKLOADS = {
    # ~512 MiB: four 128 MB blocks (one byte written per page, the rest zero)
    "memory": {"mb_size": 128, "interval": 0.3, "max_memory": 512},
    # three 4729 x 4729 float64 matrices: 512 MiB of random doubles (slow to start on 2 cores)
    "matmul": {"matrix_size": 4729, "interval": 1.0, "ready_timeout_s": 900},
    # a 3,355,443 x 20 float64 table (512 MiB) of 20-bit values: numeric data of modest entropy
    "dataproc": {"num_rows": 3355443, "num_cols": 20, "interval": 1.0, "ready_timeout_s": 900},
}


# -- node side (run on a lab host by /usr/bin/python3 through ssh) -----------------------------


def node_request(args: argparse.Namespace, paths: list[str]) -> TransferRequest:
    return TransferRequest(
        paths=paths,
        destination=args.dest,
        ssh_key=args.key,
        known_hosts=args.known_hosts,
        cipher=CIPHERS.get(args.cipher, ""),
    )


def run(argv: list[str], stdin: bytes | None = None) -> tuple[int, str, str]:
    if stdin is None:
        proc = subprocess.run(argv, capture_output=True, text=True, check=False)
        return proc.returncode, proc.stdout, proc.stderr
    raw = subprocess.run(argv, input=stdin, capture_output=True, check=False)
    return raw.returncode, raw.stdout.decode(), raw.stderr.decode()


def s3_request(args: argparse.Namespace, paths: list[str]) -> Any:
    """The S3 backend's request against the lab's S3, its throwaway credentials read here
    from the lab's file (this host shares the control node's filesystem)."""
    credentials = json.loads(Path(args.aws_file).read_text())
    aws = {
        "region": "us-east-1",
        "environment": {"AWS_EC2_METADATA_DISABLED": "true"},
        "credentials": credentials,
        "tools_dir": str(REPO / "tools"),
    }
    options = {
        "method": "s3",
        "s3_bucket": args.bucket,
        "s3_prefix": S3_PREFIX,
        "s3_endpoint_url": args.endpoint,
    }
    return request_from_options(options, paths, aws, stage="bench")


def read_all(root: str) -> int:
    total = 0
    for path in regular_files([root]):
        with open(path, "rb") as handle:
            while chunk := handle.read(1 << 20):
                total += len(chunk)
    return total


def fsync_copy(source: str, target: str) -> None:
    with open(source, "rb") as src, open(target, "wb") as dst:
        shutil.copyfileobj(src, dst, 1 << 20)
        dst.flush()
        os.fsync(dst.fileno())
        # what the destination reads must come from the disk, like a share's server
        os.posix_fadvise(dst.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)


def node_main(args: argparse.Namespace) -> dict[str, Any]:
    img, work = f"{NODE_DIR}/img", f"{NODE_DIR}/work"
    if args.node == "stage":  # source: the image and a small working directory
        shutil.rmtree(NODE_DIR, ignore_errors=True)
        shutil.copytree(args.image, img)
        os.makedirs(work)
        Path(work, "progress.log").write_text('{"seq": 1}\n' * 100)
        size, files = payload_of([img, work])
        return {"bytes": size, "files": files}
    if args.node == "forget":  # the dump run's kept images (keep_images) on this host
        shutil.rmtree(f"/var/lib/criu-migration/images/{args.variant}", ignore_errors=True)
        return {}
    if args.node == "clear":  # everything this benchmark put on the host (and the share)
        shutil.rmtree(NODE_DIR, ignore_errors=True)
        shutil.rmtree(SHARED_DIR, ignore_errors=True)
        return {}
    if args.node == "send":
        kind, _, cipher = (
            args.variant.rpartition(" ") if " " in args.variant else (args.variant, "", "")
        )
        args.cipher = cipher if cipher in CIPHERS else ""
        paths = [img, work]
        size, files = payload_of(paths)
        t0 = time.monotonic()
        extra: dict[str, Any] = {}
        if kind == "ssh cat":
            ssh = [*ssh_command(node_request(args, paths)), f"root@{args.dest}"]
            remote = f"mkdir -p {NODE_DIR} && cat > {NODE_DIR}/blob"
            with subprocess.Popen(["cat", *regular_files(paths)], stdout=subprocess.PIPE) as cat:
                proc = subprocess.run([*ssh, remote], stdin=cat.stdout, check=False)
                cat.stdout.close()  # type: ignore[union-attr]
            if proc.returncode or cat.returncode:
                raise SystemExit(f"ssh cat failed: {proc.returncode} {cat.returncode}")
        elif kind == "rsync":
            RsyncBackend().send(node_request(args, paths), run)
        elif kind == "rsync --no-sparse":
            argv = [arg for arg in rsync_argv(node_request(args, paths)) if arg != "--sparse"]
            rc, _out, err = run(argv)
            if rc:
                raise SystemExit(f"rsync --no-sparse failed: {err}")
        elif kind == "zstd":
            request = node_request(args, paths)
            request.compress, request.compress_level = "zstd", 3
            result = ZstdSshBackend().send(request, run)
            extra["compression"] = result.extra["compression"]
        elif kind == "verify":
            request = node_request(args, paths)
            request.verify = True
            outcome = transfer_send(request, run)
            Path(args.manifest).write_text(json.dumps(outcome.manifest))
            extra["source_hash_s"] = outcome.result.extra["verify"]["source_s"]
        elif kind == "efs":
            for path in regular_files(paths):
                target = f"{SHARED_DIR}{path}"
                os.makedirs(os.path.dirname(target), exist_ok=True)
                fsync_copy(path, target)
        elif kind == "s3":
            result = S3Backend().send(s3_request(args, paths), run)
            extra["upload"] = result.extra["s3"]["upload"]
        elif kind == "ebs":  # the dump's part: onto the volume (mounted here by "ebs-mount")
            for path in regular_files(paths):
                target = f"{EBS_DIR}{path}"
                os.makedirs(os.path.dirname(target), exist_ok=True)
                fsync_copy(path, target)
            extra["write_s"] = time.monotonic() - t0
            extra["unmount"] = unmount_volume(EBS_MOUNT, run)
        else:
            raise SystemExit(f"unknown variant {args.variant!r}")
        return {"seconds": time.monotonic() - t0, "bytes": size, "files": files, **extra}
    if args.node == "check":  # destination: compare the manifest
        manifest = json.loads(Path(args.manifest).read_text())
        t0 = time.monotonic()
        problems = compare_manifest(manifest, manifest_of_files(manifest))
        return {"seconds": time.monotonic() - t0, "problems": problems}
    if args.node == "s3-receive":  # destination: the download to the same paths
        shutil.rmtree(NODE_DIR, ignore_errors=True)
        t0 = time.monotonic()
        received = S3Backend().receive(s3_request(args, [img, work]), run)
        seconds = time.monotonic() - t0
        assert received is not None
        S3Backend().remove_partial(s3_request(args, [img, work]), run)  # the bucket emptied
        shutil.rmtree(NODE_DIR, ignore_errors=True)
        return {"seconds": seconds, "download": received.extra["s3"]["download"]}
    if args.node == "ebs-mount":  # mount the volume the control node attached here
        t0 = time.monotonic()
        figures = mount_volume(args.volume, EBS_MOUNT, 60, run, make_filesystem=True)
        return {"seconds": time.monotonic() - t0, **figures}
    if args.node == "ebs-read":  # destination: mount, read everything, clear, unmount
        t0 = time.monotonic()
        mount_volume(args.volume, EBS_MOUNT, 60, run)
        mount_s = time.monotonic() - t0
        total = read_all(EBS_DIR)
        seconds = time.monotonic() - t0
        shutil.rmtree(EBS_DIR, ignore_errors=True)
        unmount_volume(EBS_MOUNT, run)
        return {"seconds": seconds, "mount_s": mount_s, "bytes": total}
    if args.node == "efs-read":  # destination: read everything the source put on the share
        t0 = time.monotonic()
        total = 0
        for path in regular_files([SHARED_DIR]):
            with open(path, "rb") as handle:
                while chunk := handle.read(1 << 20):
                    total += len(chunk)
        seconds = time.monotonic() - t0
        shutil.rmtree(SHARED_DIR, ignore_errors=True)
        return {"seconds": seconds, "bytes": total}
    raise SystemExit(f"unknown node command {args.node}")


# -- control side ---------------------------------------------------------------------------------


class Lab(LabHosts):
    def __init__(self, inventory: Path) -> None:
        super().__init__(inventory)
        import yaml

        data = yaml.safe_load(inventory.read_text())
        self.vars = data["all"]["vars"]
        hosts = data["all"]["children"]["lab"]["children"]
        self.instances = {
            side: hosts[side]["hosts"][side].get("instance_id")
            for side in ("source", "destination")
        }
        self.volume = hosts["source"]["hosts"]["source"].get("ebs_volume_id")

    def node(self, address: str, *node_args: str) -> dict[str, Any]:  # type: ignore[override]
        return super().node(address, Path(__file__).resolve(), *node_args)

    def aws_args(self) -> list[str]:
        return [
            "--aws-file", self.vars["lab_aws_credentials_file"],
            "--endpoint", self.vars["lab_aws_endpoint_url"],
            "--bucket", self.vars["lab_s3_bucket"],
            "--volume", str(self.volume),
        ]  # fmt: skip

    def volumes(self) -> Any:
        """The lab's attach (module_utils/ebs_attach.py) on its EC2 API, from here."""
        import boto3
        from ebs_attach import LabVolumes

        credentials = json.loads(Path(self.vars["lab_aws_credentials_file"]).read_text())
        ec2 = boto3.client(
            "ec2",
            endpoint_url=self.vars["lab_aws_endpoint_url"],
            region_name="us-east-1",
            aws_access_key_id=credentials["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=credentials["AWS_SECRET_ACCESS_KEY"],
        )
        return LabVolumes(ec2, self.vars["lab_ebs_backing_dir"], poll_s=0.05)


def make_image(workload: str) -> Path:
    """Dump a workload once through migrate.yml (keep_images) and return its source images."""
    root = BENCH_DIR / "results"
    params = WORKLOADS[workload]
    argv = [
        str(REPO / ".venv" / "bin" / "ansible-playbook"),
        "migrate.yml",
        "-e",
        f"workload={workload}",
    ]
    for key, value in {**params, "keep_images": "true", "post_restore_capture_s": 0}.items():
        argv += ["-e", f"{key}={value}"]
    argv += ["-e", f"results_root={root}"]
    before = set(root.glob("*")) if root.exists() else set()
    print(f"dumping a {workload} workload once: {' '.join(argv[1:])}", file=sys.stderr)
    env = {**os.environ, "ANSIBLE_CONFIG": str(REPO / "ansible.cfg")}
    proc = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, check=False)
    made = sorted(set(root.glob("*")) - before)
    if proc.returncode or not made:
        raise SystemExit(f"the dump run failed:\n{proc.stdout[-3000:]}{proc.stderr[-2000:]}")
    return made[-1] / "source" / "1"


def measure(lab: Lab, variant: str, manifest: Path) -> dict[str, Any]:
    lab.node(lab.destination, "clear")
    common = ["--dest", lab.destination, "--key", lab.key, "--known-hosts", lab.known_hosts]
    if variant in ("s3", "ebs"):
        common += lab.aws_args()
    if variant == "ebs":  # before the clock: the volume on the source, mounted
        lab.volumes().move(str(lab.volume), lab.instances["source"], 60)
        lab.node(lab.source, "ebs-mount", *common)
    sent = lab.node(lab.source, "send", "--variant", variant, "--manifest", str(manifest), *common)
    result = {"variant": variant, **sent}
    if variant == "s3":
        received = lab.node(lab.destination, "s3-receive", *common)
        result["send_s"], result["receive_s"] = sent["seconds"], received["seconds"]
        result["download"] = received["download"]
        result["seconds"] = sent["seconds"] + received["seconds"]
    if variant == "ebs":
        t0 = time.monotonic()
        steps = lab.volumes().move(str(lab.volume), lab.instances["destination"], 60)
        move_s = time.monotonic() - t0
        read = lab.node(lab.destination, "ebs-read", *common)
        lab.volumes().detach(str(lab.volume), 60)  # it rests detached
        result["move_s"], result["read_s"] = move_s, read["seconds"]
        result["steps"] = steps
        result["umount_s"] = sent["unmount"].get("sync_s", 0) + sent["unmount"].get("umount_s", 0)
        result["seconds"] = sent["seconds"] + move_s + read["seconds"]
    if variant.startswith("verify"):
        check = lab.node(lab.destination, "check", "--manifest", str(manifest))
        if check["problems"]:
            raise SystemExit(f"verify found differences: {check['problems']}")
        result["send_s"], result["check_s"] = sent["seconds"], check["seconds"]
        result["seconds"] = sent["seconds"] + check["seconds"]
    if variant == "efs":
        read = lab.node(lab.destination, "efs-read")
        result["write_s"], result["read_s"] = sent["seconds"], read["seconds"]
        result["seconds"] = sent["seconds"] + read["seconds"]
    result["mb_s"] = result["bytes"] / 1e6 / result["seconds"]
    return result


def median_of(runs: list[dict[str, Any]], key: str) -> float:
    return statistics.median(r[key] for r in runs)


def step_mb_s(runs: list[dict[str, Any]], seconds_key: str) -> float:
    """One step's rate: the image's size over that step's median seconds."""
    return runs[0]["bytes"] / 1e6 / median_of(runs, seconds_key)


def table(results: list[dict[str, Any]], variants: list[str]) -> str:
    def mb_s(variant: str, key: str = "mb_s") -> list[float]:
        return [r[key] for r in results if r["variant"] == variant]

    ceilings = {c: statistics.median(mb_s(f"ssh cat {c}")) for c in CIPHERS if mb_s(f"ssh cat {c}")}
    lines = [
        f"{'variant':28} {'MB/s median':>11} {'min-max':>15} {'s median':>9} {'vs ssh cat':>10}  notes",
        "-" * 100,
    ]
    for variant in variants:
        rates = mb_s(variant)
        if not rates:
            continue
        secs = statistics.median(r["seconds"] for r in results if r["variant"] == variant)
        cipher = variant.rpartition(" ")[2]
        ratio = (
            f"{statistics.median(rates) / ceilings[cipher]:.0%}"
            if cipher in ceilings and not variant.startswith("ssh cat")
            else ""
        )
        notes = ""
        runs = [r for r in results if r["variant"] == variant]
        if variant.startswith("zstd"):
            compression = [r["compression"] for r in runs]
            notes = (
                f"compression ratio {median_of(compression, 'ratio'):.1f}, "
                f"compressed MB/s {median_of(compression, 'compressed_mb_s'):.1f}"
            )
        elif variant.startswith("verify"):
            notes = (
                f"send {median_of(runs, 'send_s'):.2f}s (source sha256 "
                f"{median_of(runs, 'source_hash_s'):.2f}s alongside), "
                f"destination check {median_of(runs, 'check_s'):.2f}s"
            )
        elif variant == "efs":
            notes = (
                f"write+fsync {step_mb_s(runs, 'write_s'):.0f} MB/s, "
                f"read {step_mb_s(runs, 'read_s'):.0f} MB/s"
            )
        elif variant == "s3":
            notes = (
                f"upload {step_mb_s(runs, 'send_s'):.0f} MB/s, "
                f"download {step_mb_s(runs, 'receive_s'):.0f} MB/s "
                f"({runs[0]['upload']['parts']} parts; emulator)"
            )
        elif variant == "ebs":
            notes = (
                f"write+fsync {step_mb_s(runs, 'write_s'):.0f} MB/s, "
                f"umount {median_of(runs, 'umount_s'):.2f}s, move {median_of(runs, 'move_s'):.2f}s, "
                f"mount+read {step_mb_s(runs, 'read_s'):.0f} MB/s (emulated attach)"
            )
        lines.append(
            f"{variant:28} {statistics.median(rates):11.1f} "
            f"{f'{min(rates):.0f}-{max(rates):.0f}':>15} {secs:9.2f} {ratio:>10}  {notes}"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--image", type=Path, help="a CRIU images folder (default: dump one)")
    parser.add_argument("--workload", choices=sorted(WORKLOADS), default="memory")
    parser.add_argument("--rounds", type=int, default=5, help="measured rounds (after a warm-up)")
    parser.add_argument("--variants", nargs="*", default=VARIANTS, choices=VARIANTS)
    parser.add_argument(
        "--inventory", type=Path, default=REPO / "inventories" / "lab" / "hosts.yml"
    )
    # node side
    parser.add_argument("--node", help=argparse.SUPPRESS)
    for name in (
        "--variant", "--dest", "--key", "--known-hosts", "--manifest",
        "--aws-file", "--endpoint", "--bucket", "--volume",
    ):  # fmt: skip
        parser.add_argument(name, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.node:
        print(json.dumps(node_main(args)))
        return 0

    lab = Lab(args.inventory)
    image = (args.image or make_image(args.workload)).resolve()
    if not args.image:  # its copy in the results is the one used: free the hosts' disks
        for address in (lab.source, lab.destination):
            lab.node(address, "forget", "--variant", image.parent.parent.name)
    BENCH_DIR.mkdir(parents=True, exist_ok=True)
    manifest = BENCH_DIR / "manifest.json"
    staged = lab.node(lab.source, "stage", "--image", str(image))
    print(
        f"image {image}: {staged['bytes'] / 2**20:.0f} MiB in {staged['files']} files "
        "(with a small working directory)",
        file=sys.stderr,
    )
    variants = list(args.variants)
    results: list[dict[str, Any]] = []
    try:
        for round_index in range(args.rounds + 1):
            shift = round_index % len(variants)
            for variant in variants[shift:] + variants[:shift]:
                result = measure(lab, variant, manifest)
                label = "warm-up" if round_index == 0 else f"round {round_index}"
                print(f"{label:8} {variant:28} {result['mb_s']:8.1f} MB/s", file=sys.stderr)
                if round_index:
                    results.append(result)
    finally:
        lab.node(lab.destination, "clear")
        lab.node(lab.source, "clear")
    out = BENCH_DIR / f"bench_transfer_{time.strftime('%Y%m%d_%H%M%S')}.json"
    out.write_text(
        json.dumps({"image": str(image), "staged": staged, "results": results}, indent=1)
    )
    print(table(results, variants))
    print(f"\n{args.rounds} rounds after a warm-up, interleaved; raw figures: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
