#!/usr/bin/python3
"""The S3 transfer backend's node side: upload, download, delete, check.

Copied to every node (`migration_tools_dir`, /opt/criu-migration/tools) and run with the
node's Debian `/usr/bin/python3`, which has `python3-boto3`; the suite's modules run it as an
argv (`transfer=s3`, module_utils/transfer_backends.py), on the destination through the
fused critical path's SSH master. Single file, nothing of the suite imported.

    s3_transfer.py upload   --bucket B --prefix P --stage S [--part-size-mb N] [--max-concurrency N] PATH...
    s3_transfer.py download --bucket B --prefix P --stage S [...]
    s3_transfer.py delete   --bucket B --prefix P
    s3_transfer.py check    --bucket B --prefix P --host NAME

Layout in the bucket (P is `<s3_prefix>/<experiment id>/<source host>`):

    P/files/<absolute path without its leading />   one object per regular file
    P/manifests/<stage>.json                         the stage's folders, files (size, mode,
                                                     owner, mtime) and symlinks

The download reads the stage's manifest and recreates every folder, file and symlink at the
same absolute path with its mode, owner and mtime (CRIU restores open files by path).

Credentials come from boto3's standard chain (instance profile on EC2). With --env-stdin the
first line of stdin is a JSON object {"env": {...}} whose variables are set before boto3 is
imported: how the lab hands its throwaway credentials over without a command line or a log
holding them. Every message this script prints has those values masked.

Each command prints one JSON object on stdout and exits 0, or 1 with {"ok": false, "error"}.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import stat
import sys
import threading
import time
import uuid
from collections.abc import Iterable, Sequence
from typing import Any

MIB = 1024 * 1024
MB = 1_000_000.0
# Amazon S3's multipart limits (docs/transfer.md): parts of 5 MiB to 5 GiB, at most 10,000.
MIN_PART = 5 * MIB
MAX_PART = 5 * 1024 * MIB
MAX_PARTS = 10_000
# Environment variables never printed (their values are masked in every message).
SECRET_VARS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")


class ToolError(RuntimeError):
    """A failure explained in one line (printed as {"ok": false, "error": ...})."""


# -- pure parts (unit-tested) -----------------------------------------------------------------


def part_size_for(size: int, part_size: int) -> int:
    """The part size a multipart upload of `size` bytes uses when `part_size` is asked for:
    within S3's 5 MiB-5 GiB and doubled until the object needs at most 10,000 parts (what
    s3transfer's chunk size adjuster does)."""
    chosen = min(max(int(part_size), MIN_PART), MAX_PART)
    while size > 0 and math.ceil(size / chosen) > MAX_PARTS and chosen < MAX_PART:
        chosen = min(chosen * 2, MAX_PART)
    return chosen


def planned_parts(size: int, part_size: int) -> int:
    """Requests that carry the object's bytes: 1 PutObject below the threshold (the part
    size), else one UploadPart per part."""
    if size < part_size:
        return 1
    return math.ceil(size / part_size_for(size, part_size))


def object_key(prefix: str, path: str) -> str:
    """The key of the file at absolute `path`: the path, kept, under `<prefix>/files/`."""
    if not path.startswith("/"):
        raise ValueError(f"{path!r} is not an absolute path")
    return f"{prefix.strip('/')}/files/{path.lstrip('/')}"


def path_of_key(prefix: str, key: str) -> str:
    """The absolute path an object of `object_key` goes back to."""
    head = f"{prefix.strip('/')}/files/"
    if not key.startswith(head):
        raise ValueError(f"key {key!r} is not under {head!r}")
    return "/" + key[len(head) :]


def manifest_key(prefix: str, stage: str) -> str:
    return f"{prefix.strip('/')}/manifests/{stage}.json"


def is_under(path: str, roots: Iterable[str]) -> bool:
    path = os.path.normpath(path)
    return any(
        path == os.path.normpath(root) or path.startswith(os.path.normpath(root).rstrip("/") + "/")
        for root in roots
    )


def _meta(st: os.stat_result) -> dict[str, int | float]:
    return {
        "mode": stat.S_IMODE(st.st_mode),
        "uid": st.st_uid,
        "gid": st.st_gid,
        "mtime": st.st_mtime,
    }


def scan(paths: Sequence[str]) -> dict[str, list[dict[str, Any]]]:
    """Folders, regular files and symlinks under `paths` (each may be a file), with the
    attributes the download restores; symlinks are not followed."""
    dirs: list[dict[str, Any]] = []
    files: list[dict[str, Any]] = []
    links: list[dict[str, Any]] = []

    def add(path: str) -> None:
        st = os.lstat(path)
        if stat.S_ISLNK(st.st_mode):
            links.append({"path": path, "target": os.readlink(path)})
        elif stat.S_ISREG(st.st_mode):
            files.append({"path": path, "size": st.st_size, **_meta(st)})
        elif stat.S_ISDIR(st.st_mode):
            dirs.append({"path": path, **_meta(st)})

    for root in paths:
        if not root.startswith("/"):
            raise ToolError(f"{root!r} is not an absolute path")
        if not os.path.lexists(root):
            raise ToolError(f"nothing to upload: {root} does not exist")
        add(root)
        if os.path.isdir(root) and not os.path.islink(root):
            for folder, names, filenames in os.walk(root):
                for name in sorted(names) + sorted(filenames):
                    add(os.path.join(folder, name))
    return {"dirs": dirs, "files": files, "links": links}


def mb_per_s(size: int, seconds: float) -> float:
    return round(size / MB / seconds, 3) if seconds > 0 else 0.0


def masked(text: str, environ: dict[str, str] | None = None) -> str:
    """`text` with the values of the credential variables replaced by ********."""
    env = os.environ if environ is None else environ
    for name in SECRET_VARS:
        value = env.get(name)
        if value and len(value) >= 4:
            text = text.replace(value, "********")
    return text


# -- boto3 (imported only when a command runs: the pure parts need no boto3) ------------------


def read_env_from_stdin() -> None:
    line = sys.stdin.readline()
    if not line.strip():
        return
    data = json.loads(line)
    for name, value in (data.get("env") or {}).items():
        if isinstance(name, str) and isinstance(value, str) and value != "":
            os.environ[name] = value


def client(args: argparse.Namespace, pool: int = 10) -> Any:
    try:
        import boto3
        from botocore.config import Config
    except ImportError as exc:
        raise ToolError(
            f"python3-boto3 is not installed for {sys.executable} ({exc}): apt-get install "
            "python3-boto3 (make setup, playbooks/bootstrap.yml, the guest image)"
        ) from exc
    config = Config(
        connect_timeout=10,
        read_timeout=60,
        retries={"max_attempts": 3, "mode": "standard"},
        max_pool_connections=max(pool, 10),
    )
    return boto3.session.Session().client(
        "s3",
        endpoint_url=args.endpoint_url or None,
        region_name=args.region or None,
        config=config,
    )


def explain(exc: BaseException, args: argparse.Namespace, action: str) -> str:
    """One line saying what failed, in the user's words (bucket, endpoint, credentials)."""
    name = type(exc).__name__
    where = f"s3://{args.bucket}" + (f" at {args.endpoint_url}" if args.endpoint_url else "")
    if name in ("NoCredentialsError", "PartialCredentialsError"):
        return (
            f"{action} {where}: no AWS credentials on this host (boto3's chain found none: "
            "environment, ~/.aws/credentials, instance profile)"
        )
    if name in ("EndpointConnectionError", "ConnectTimeoutError", "ConnectionClosedError"):
        return f"{action} {where}: cannot reach the S3 endpoint ({exc})"
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        error = response.get("Error") or {}
        code = str(error.get("Code") or "")
        status = (response.get("ResponseMetadata") or {}).get("HTTPStatusCode")
        if code in ("NoSuchBucket", "404") or (status == 404 and action == "checking"):
            return f"{action} {where}: the bucket does not exist"
        if code in ("AccessDenied", "403", "AllAccessDisabled") or status == 403:
            return f"{action} {where}: access denied ({error.get('Message') or code})"
        return f"{action} {where}: {code or status}: {error.get('Message') or exc}"
    return f"{action} {where}: {name}: {exc}"


class Counter:
    """Counts the S3 requests that carry file bytes (botocore's before-call events)."""

    def __init__(self, s3: Any) -> None:
        self.lock = threading.Lock()
        self.calls: dict[str, int] = {}
        for operation in ("PutObject", "UploadPart", "CreateMultipartUpload", "GetObject"):
            s3.meta.events.register(f"before-call.s3.{operation}", self._count(operation))

    def _count(self, operation: str) -> Any:
        def handler(**_kwargs: Any) -> None:
            with self.lock:
                self.calls[operation] = self.calls.get(operation, 0) + 1

        return handler


def _progress_subscriber(on_bytes: Any) -> Any:
    from s3transfer.subscribers import BaseSubscriber

    class Progress(BaseSubscriber):  # type: ignore[misc]
        def on_progress(self, future: Any, bytes_transferred: int, **kwargs: Any) -> None:
            on_bytes(bytes_transferred)

    return Progress()


def transfer_manager(s3: Any, args: argparse.Namespace) -> Any:
    from boto3.s3.transfer import TransferConfig, create_transfer_manager

    part = int(args.part_size_mb) * MIB
    config = TransferConfig(
        multipart_threshold=part,
        multipart_chunksize=part,
        max_concurrency=int(args.max_concurrency),
        use_threads=True,
    )
    return create_transfer_manager(s3, config)


# -- commands ---------------------------------------------------------------------------------


def upload(args: argparse.Namespace) -> dict[str, Any]:
    entries = scan(args.paths)
    payload = sum(f["size"] for f in entries["files"])
    s3 = client(args, int(args.max_concurrency))
    counter = Counter(s3)
    part = int(args.part_size_mb) * MIB
    sent = [0]
    lock = threading.Lock()

    def on_bytes(count: int) -> None:
        with lock:
            sent[0] += count
            cut = args.cut_after_bytes and sent[0] >= args.cut_after_bytes
        if cut:
            # inject_fault=transfer_interrupt: the uploader dies for real with parts in flight;
            # the caller removes what it left (partial objects, unfinished multipart uploads)
            sys.stdout.flush()
            os.kill(os.getpid(), signal.SIGKILL)

    subscribers = [_progress_subscriber(on_bytes)]
    t0 = time.monotonic()
    try:
        with transfer_manager(s3, args) as manager:
            futures = [
                manager.upload(
                    entry["path"],
                    args.bucket,
                    object_key(args.prefix, entry["path"]),
                    subscribers=subscribers,
                )
                for entry in entries["files"]
            ]
            for future in futures:
                future.result()
        files_s = time.monotonic() - t0
        manifest = {
            "stage": args.stage,
            "paths": list(args.paths),
            "part_size": part,
            **entries,
        }
        s3.put_object(
            Bucket=args.bucket,
            Key=manifest_key(args.prefix, args.stage),
            Body=json.dumps(manifest).encode(),
            ContentType="application/json",
        )
    except ToolError:
        raise
    except Exception as exc:
        raise ToolError(explain(exc, args, "uploading to")) from exc
    duration = time.monotonic() - t0
    calls = counter.calls
    return {
        "ok": True,
        "upload": {
            "duration_s": round(duration, 6),
            "files_s": round(files_s, 6),
            "bytes": payload,
            "objects": len(entries["files"]),
            "mb_s": mb_per_s(payload, duration),
            # requests that carried file bytes: PutObject (the manifest's excluded) + UploadPart
            "parts": calls.get("UploadPart", 0) + calls.get("PutObject", 0) - 1,
            "multipart_uploads": calls.get("CreateMultipartUpload", 0),
            "planned_parts": sum(planned_parts(f["size"], part) for f in entries["files"]),
            "part_size": part,
            "max_concurrency": int(args.max_concurrency),
            "dirs": len(entries["dirs"]),
            "links": len(entries["links"]),
        },
    }


def _apply_meta(path: str, entry: dict[str, Any], chown: bool) -> None:
    if chown:
        os.chown(path, int(entry["uid"]), int(entry["gid"]), follow_symlinks=False)
    os.chmod(path, int(entry["mode"]))
    os.utime(path, (float(entry["mtime"]), float(entry["mtime"])))


def download(args: argparse.Namespace) -> dict[str, Any]:
    s3 = client(args, int(args.max_concurrency))
    counter = Counter(s3)
    t0 = time.monotonic()
    try:
        body = s3.get_object(Bucket=args.bucket, Key=manifest_key(args.prefix, args.stage))["Body"]
        manifest = json.loads(body.read())
    except Exception as exc:
        raise ToolError(explain(exc, args, f"reading the {args.stage} manifest from")) from exc
    roots = list(manifest.get("paths") or [])
    if args.paths and sorted(args.paths) != sorted(roots):
        raise ToolError(
            f"the {args.stage} manifest holds {', '.join(roots)}, not {', '.join(args.paths)}"
        )
    entries = [*manifest["dirs"], *manifest["files"], *manifest["links"]]
    outside = [e["path"] for e in entries if not is_under(e["path"], roots)]
    if outside:
        raise ToolError(f"the {args.stage} manifest names paths outside {roots}: {outside[:3]}")
    chown = os.geteuid() == 0
    for entry in manifest["dirs"]:
        os.makedirs(entry["path"], exist_ok=True)
    payload = sum(int(f["size"]) for f in manifest["files"])
    try:
        with transfer_manager(s3, args) as manager:
            futures = [
                manager.download(args.bucket, object_key(args.prefix, f["path"]), f["path"])
                for f in manifest["files"]
            ]
            for future in futures:
                future.result()
    except Exception as exc:
        raise ToolError(explain(exc, args, "downloading from")) from exc
    for link in manifest["links"]:
        if os.path.lexists(link["path"]):
            os.unlink(link["path"])
        os.symlink(link["target"], link["path"])
    wrong = [
        f"{f['path']}: {os.lstat(f['path']).st_size} bytes, {f['size']} uploaded"
        for f in manifest["files"]
        if os.lstat(f["path"]).st_size != int(f["size"])
    ]
    if wrong:
        raise ToolError(f"downloaded files differ in size from the uploaded ones: {wrong[:3]}")
    for entry in manifest["files"]:
        _apply_meta(entry["path"], entry, chown)
    # folders last, deepest first: writing into a folder changes its mtime
    for entry in sorted(manifest["dirs"], key=lambda e: e["path"].count("/"), reverse=True):
        _apply_meta(entry["path"], entry, chown)
    duration = time.monotonic() - t0
    return {
        "ok": True,
        "download": {
            "duration_s": round(duration, 6),
            "bytes": payload,
            "objects": len(manifest["files"]),
            "mb_s": mb_per_s(payload, duration),
            # GetObject requests, the manifest's excluded (ranged GETs of large objects)
            "requests": counter.calls.get("GetObject", 0) - 1,
            "max_concurrency": int(args.max_concurrency),
            "dirs": len(manifest["dirs"]),
            "links": len(manifest["links"]),
        },
    }


def delete(args: argparse.Namespace) -> dict[str, Any]:
    """Abort the prefix's unfinished multipart uploads and delete its objects."""
    s3 = client(args)
    prefix = args.prefix.strip("/") + "/"
    t0 = time.monotonic()
    aborted = deleted = 0
    try:
        for page in s3.get_paginator("list_multipart_uploads").paginate(
            Bucket=args.bucket, Prefix=prefix
        ):
            for upload_ in page.get("Uploads") or []:
                s3.abort_multipart_upload(
                    Bucket=args.bucket, Key=upload_["Key"], UploadId=upload_["UploadId"]
                )
                aborted += 1
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=args.bucket, Prefix=prefix):
            keys = [{"Key": item["Key"]} for item in page.get("Contents") or []]
            for start in range(0, len(keys), 1000):
                batch = keys[start : start + 1000]
                reply = s3.delete_objects(
                    Bucket=args.bucket, Delete={"Objects": batch, "Quiet": True}
                )
                errors = reply.get("Errors") or []
                if errors:
                    raise ToolError(
                        f"deleting from s3://{args.bucket}/{prefix}: {len(errors)} objects "
                        f"could not be deleted ({errors[0].get('Code')}: {errors[0].get('Key')})"
                    )
                deleted += len(batch)
    except ToolError:
        raise
    except Exception as exc:
        raise ToolError(explain(exc, args, "cleaning up")) from exc
    return {
        "ok": True,
        "delete": {
            "prefix": prefix,
            "objects_deleted": deleted,
            "uploads_aborted": aborted,
            "duration_s": round(time.monotonic() - t0, 6),
        },
    }


def check(args: argparse.Namespace) -> dict[str, Any]:
    """What the transfer needs from this host: credentials, the endpoint, the bucket, and
    writing, reading and deleting an object under the prefix."""
    s3 = client(args)
    key = f"{args.prefix.strip('/')}/checks/{args.host}-{uuid.uuid4().hex[:8]}"
    body = f"criu-migration node check from {args.host}\n".encode()
    t0 = time.monotonic()
    try:
        s3.head_bucket(Bucket=args.bucket)
    except Exception as exc:
        raise ToolError(explain(exc, args, "checking")) from exc
    try:
        s3.put_object(Bucket=args.bucket, Key=key, Body=body)
    except Exception as exc:
        raise ToolError(explain(exc, args, "writing a test object to")) from exc
    try:
        read = s3.get_object(Bucket=args.bucket, Key=key)["Body"].read()
        s3.delete_object(Bucket=args.bucket, Key=key)
    except Exception as exc:
        raise ToolError(explain(exc, args, "reading back and deleting a test object in")) from exc
    if read != body:
        raise ToolError(f"s3://{args.bucket}/{key} read back differs from what was written")
    return {"ok": True, "check": {"duration_s": round(time.monotonic() - t0, 6), "key": key}}


COMMANDS = {"upload": upload, "download": download, "delete": delete, "check": check}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=sorted(COMMANDS))
    parser.add_argument("paths", nargs="*", help="absolute paths (upload, download)")
    parser.add_argument("--bucket", required=True)
    parser.add_argument("--prefix", required=True, help="<s3_prefix>/<experiment id>/<source>")
    parser.add_argument("--stage", default="final", help="final, predump-<n>")
    parser.add_argument("--endpoint-url", default="")
    parser.add_argument("--region", default="")
    parser.add_argument("--part-size-mb", type=int, default=8)
    parser.add_argument("--max-concurrency", type=int, default=10)
    parser.add_argument("--host", default=os.uname().nodename)
    parser.add_argument("--cut-after-bytes", type=int, default=0)
    parser.add_argument("--env-stdin", action="store_true")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_intermixed_args(argv)
    try:
        if args.env_stdin:
            read_env_from_stdin()
        if args.command == "upload" and not args.paths:
            raise ToolError("upload needs the paths to send")
        if not 1 <= args.max_concurrency <= 1000:
            raise ToolError(f"--max-concurrency {args.max_concurrency} is outside 1..1000")
        result = COMMANDS[args.command](args)
    except ToolError as exc:
        print(json.dumps({"ok": False, "error": masked(str(exc))}))
        return 1
    except Exception as exc:  # an unexpected error: still one line, still masked
        print(json.dumps({"ok": False, "error": masked(f"{type(exc).__name__}: {exc}")}))
        return 1
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
