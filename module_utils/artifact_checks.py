"""Checks of the files a workload produced (its artifacts), run on the destination.

A declaration's `verify` key names them (docs/architecture.md), e.g. for video:

    verify:
      ffprobe: [segment_*.ts, video.mp4]

Each entry is a glob relative to the working directory. Every *finished* file it matches must
pass the check: a file the workload's process tree still holds open for writing is being
written and is skipped, except a fragmented MP4, which is valid up to its last complete
fragment and is checked up to there. At least one file must be checked, or there is no
evidence. The decisions are pure functions here; `library/workload_verify.py` lists the
directory, reads the open files from /proc and runs the tool. Standard library only.
"""

from __future__ import annotations

import fnmatch
import re
import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, BinaryIO

# check kind -> what passing means (the kinds the suite knows how to run)
ARTIFACT_CHECKS = {"ffprobe": "ffprobe decodes every frame without an error"}
PROBE_TIMEOUT_S = 60


class ArtifactSpecError(ValueError):
    """A `verify` declaration that cannot be used."""


@dataclass(frozen=True)
class Target:
    """One file to check: `end` bytes of it (None: the whole file)."""

    name: str
    end: int | None = None


@dataclass
class ProbeResult:
    name: str
    ok: bool
    frames: int
    bytes_checked: int
    detail: str = ""


@dataclass
class ArtifactCheck:
    """The outcome of one check kind over one glob, in the shape of a continuity check."""

    name: str
    ok: bool
    detail: str
    pattern: str
    checked: list[ProbeResult] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    def as_check(self) -> dict[str, Any]:
        return {"name": self.name, "ok": self.ok, "detail": self.detail}

    def as_evidence(self) -> dict[str, Any]:
        return {
            "check": self.name,
            "pattern": self.pattern,
            "ok": self.ok,
            "files": [
                {
                    "name": r.name,
                    "ok": r.ok,
                    "frames": r.frames,
                    "bytes_checked": r.bytes_checked,
                    **({"error": r.detail} if r.detail else {}),
                }
                for r in self.checked
            ],
            "skipped_being_written": self.skipped,
        }


def parse_artifact_checks(spec: Mapping[str, Any] | None) -> dict[str, list[str]]:
    """The declaration's `verify` mapping, normalised to {kind: [glob, ...]}."""
    if not spec:
        return {}
    if not isinstance(spec, Mapping):
        raise ArtifactSpecError(f"verify must be a mapping of check kind to globs, not {spec!r}")
    checks: dict[str, list[str]] = {}
    for kind, globs in spec.items():
        if kind not in ARTIFACT_CHECKS:
            raise ArtifactSpecError(
                f"verify: unknown check {kind!r}; valid: {', '.join(sorted(ARTIFACT_CHECKS))}"
            )
        patterns = [globs] if isinstance(globs, str) else globs
        if not isinstance(patterns, list) or not patterns:
            raise ArtifactSpecError(f"verify.{kind}: a glob or a list of globs, not {globs!r}")
        for pattern in patterns:
            if not isinstance(pattern, str) or not pattern.strip():
                raise ArtifactSpecError(f"verify.{kind}: {pattern!r} is not a glob")
            if pattern.startswith("/") or "/" in pattern or pattern in (".", ".."):
                raise ArtifactSpecError(
                    f"verify.{kind}: {pattern!r} must name files in the working directory (no '/')"
                )
        checks[kind] = list(patterns)
    return checks


def natural_key(name: str) -> list[Any]:
    """segment_9 before segment_10: digit runs compare as numbers."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def matching(names: Iterable[str], pattern: str) -> list[str]:
    """Names matching `pattern` (case-sensitive), in natural order; hidden files only if asked."""
    found = [
        name
        for name in names
        if fnmatch.fnmatchcase(name, pattern)
        and (pattern.startswith(".") or not name.startswith("."))
    ]
    return sorted(found, key=natural_key)


def mp4_complete_end(handle: BinaryIO, size: int) -> int | None:
    """Bytes of a fragmented MP4 up to the end of its last complete fragment (moof + mdat).

    None when the file is not an MP4 (no `ftyp` box first) or holds no complete fragment yet.
    A box that runs past `size` is being written: the scan stops before it.
    """
    offset, after_moof, end = 0, False, None
    while offset + 8 <= size:
        handle.seek(offset)
        header = handle.read(16)
        if len(header) < 8:
            break
        box_size, box_type = struct.unpack(">I4s", header[:8])
        if box_size == 1:
            if len(header) < 16:
                break
            box_size = struct.unpack(">Q", header[8:16])[0]
        if offset == 0 and box_type != b"ftyp":
            return None
        if box_size < 8 or offset + box_size > size:
            break
        if box_type == b"mdat" and after_moof:
            end = offset + box_size
        after_moof = box_type == b"moof"
        offset += box_size
    return end


def plan_targets(
    names: Iterable[str],
    pattern: str,
    open_for_writing: set[str],
    complete_end: Mapping[str, int | None],
) -> tuple[list[Target], list[str]]:
    """What to check for one glob: (targets, names skipped because they are being written).

    `open_for_writing`: names the workload's process tree holds open for writing, read
    *after* `names` was listed (a file closed in between is finished; none is reopened).
    `complete_end`: for those, the end of the last complete MP4 fragment (None: not one).
    """
    targets: list[Target] = []
    skipped: list[str] = []
    for name in matching(names, pattern):
        if name not in open_for_writing:
            targets.append(Target(name))
        elif complete_end.get(name):
            targets.append(Target(name, complete_end[name]))
        else:
            skipped.append(name)
    return targets, skipped


def ffprobe_argv(ffprobe: str, path: str, end: int | None = None) -> list[str]:
    """Decode every frame of `path` (its first `end` bytes, through ffmpeg's subfile protocol)."""
    source = path if end is None else f"subfile,,start,0,end,{end},,:{path}"
    return [
        ffprobe,
        "-v",
        "error",
        "-count_frames",
        "-show_entries",
        "stream=nb_read_frames",
        "-of",
        "csv=p=0",
        source,
    ]


def ffprobe_verdict(rc: int, stdout: str, stderr: str) -> tuple[bool, int, str]:
    """(decodes, frames read, why not) from one ffprobe run of `ffprobe_argv`.

    A file decodes when ffprobe exits 0, reports no error, and reads at least one frame. ffprobe
    exits 0 on a truncated file, so its error output counts. MPEG-TS lists the stream twice
    (under its program too): the first number counts.
    """
    numbers = [line.split(",")[0] for line in stdout.split() if line.strip()]
    frames = int(numbers[0]) if numbers and numbers[0].isdigit() else 0
    errors = " | ".join(line.strip() for line in stderr.splitlines() if line.strip())
    if rc != 0:
        return False, frames, f"ffprobe exited with {rc}: {errors[:300]}".rstrip(": ")
    if errors:
        return False, frames, errors[:300]
    if frames <= 0:
        return False, frames, "no frame decoded"
    return True, frames, ""


def summarize(
    kind: str, pattern: str, results: list[ProbeResult], skipped: list[str]
) -> ArtifactCheck:
    """One check per kind and glob: every finished file passed, and at least one was checked."""
    name = f"{kind}:{pattern}"
    bad = [r for r in results if not r.ok]
    being_written = f"; skipped {', '.join(skipped)} (being written)" if skipped else ""
    if not results:
        detail = f"no finished file matches {pattern}{being_written}"
        return ArtifactCheck(name, False, detail, pattern, results, skipped)
    frames = sum(r.frames for r in results)
    span = results[0].name if len(results) == 1 else f"{results[0].name} .. {results[-1].name}"
    if bad:
        detail = f"{len(bad)} of {len(results)} file(s) fail: " + "; ".join(
            f"{r.name}: {r.detail}" for r in bad[:5]
        )
    else:
        detail = f"{len(results)} file(s) decode ({span}, {frames} frames)"
    return ArtifactCheck(name, not bad, detail + being_written, pattern, results, skipped)


def missing(kind: str, patterns: list[str]) -> ArtifactCheck:
    """No glob of `kind` matched anything: nothing proves the artifacts are sound."""
    return ArtifactCheck(
        kind,
        False,
        f"no file matches {' or '.join(patterns)} in the working directory",
        " ".join(patterns),
    )
