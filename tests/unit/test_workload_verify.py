"""library/workload_verify.py and module_utils/artifact_checks.py: the destination's checks of
the files a workload produced (the declaration's `verify` key), e.g. every finished video
segment decodes with ffprobe.

The pure parts are tested on synthetic MP4 boxes and on ffprobe output recorded on this
project's machine (ffprobe 5.1, Debian 12); the module itself runs as Ansible runs it
(`main()` with its arguments) over real files made by Debian's ffmpeg, with a real process
that holds the segment it "writes" open, skipped where ffmpeg is missing.
"""

from __future__ import annotations

import functools
import io
import json
import shutil
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import workload_verify
from artifact_checks import (
    ArtifactSpecError,
    ProbeResult,
    Target,
    ffprobe_argv,
    ffprobe_verdict,
    matching,
    missing,
    mp4_complete_end,
    parse_artifact_checks,
    plan_targets,
    summarize,
)
from fakes import run_ansible_module

needs_ffmpeg = pytest.mark.skipif(
    not (shutil.which("ffmpeg") and shutil.which("ffprobe")), reason="needs ffmpeg and ffprobe"
)

# What ffprobe 5.1 printed for `ffprobe_argv` (recorded on this project's machine).
TS_SEGMENT_OUT = "20\n\n20\n"  # MPEG-TS: the stream, then again under its program
TRUNCATED_MP4_ERR = (
    "[h264 @ 0x5566e9b09b40] Invalid NAL unit size (2054 > 1973).\n"
    "[h264 @ 0x5566e9b09b40] missing picture in access unit with size 1977\n"
    "[mov,mp4,m4a,3gp,3g2,mj2 @ 0x5566e9b086c0] stream 0, offset 0x4e71: partial file\n"
)
WRITTEN_TS_ERR = "segment_00003.ts: Invalid data found when processing input\n"


def box(kind: bytes, payload_size: int) -> bytes:
    return struct.pack(">I4s", 8 + payload_size, kind) + bytes(payload_size)


# -- the declaration's verify key ------------------------------------------------------------


def test_verify_spec_normalised() -> None:
    assert parse_artifact_checks(None) == {}
    assert parse_artifact_checks({}) == {}
    assert parse_artifact_checks({"ffprobe": "segment_*.ts"}) == {"ffprobe": ["segment_*.ts"]}
    assert parse_artifact_checks({"ffprobe": ["a_*.ts", "b.mp4"]}) == {
        "ffprobe": ["a_*.ts", "b.mp4"]
    }


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"md5": "*.bin"}, "verify: unknown check 'md5'; valid: ffprobe"),
        ({"ffprobe": []}, "verify.ffprobe: a glob or a list of globs, not []"),
        ({"ffprobe": 3}, "verify.ffprobe: a glob or a list of globs, not 3"),
        ({"ffprobe": [""]}, "verify.ffprobe: '' is not a glob"),
        ({"ffprobe": "/etc/*.ts"}, "must name files in the working directory"),
        ({"ffprobe": "../x/*.ts"}, "must name files in the working directory"),
        (["ffprobe"], "verify must be a mapping"),
    ],
)
def test_bad_verify_spec_is_refused(spec: Any, message: str) -> None:
    with pytest.raises(ArtifactSpecError, match=message.replace("[", r"\[").replace("]", r"\]")):
        parse_artifact_checks(spec)


# -- which files, and how much of them -------------------------------------------------------


def test_matching_is_in_natural_order_without_hidden_files() -> None:
    names = ["segment_10.ts", "segment_9.ts", ".segment_1.ts", "progress.log", "segment_100.ts"]
    assert matching(names, "segment_*.ts") == ["segment_9.ts", "segment_10.ts", "segment_100.ts"]
    assert matching(names, ".segment_*") == [".segment_1.ts"]
    assert matching(names, "video.mp4") == []


def test_the_file_being_written_is_skipped() -> None:
    names = [f"segment_{i:05d}.ts" for i in range(4)] + ["ffmpeg.log", "progress.log"]
    targets, skipped = plan_targets(names, "segment_*.ts", {"segment_00003.ts", "ffmpeg.log"}, {})
    assert targets == [Target(f"segment_{i:05d}.ts") for i in range(3)]
    assert skipped == ["segment_00003.ts"]


def test_a_fragmented_mp4_being_written_is_checked_up_to_its_last_fragment() -> None:
    targets, skipped = plan_targets(["video.mp4"], "video.mp4", {"video.mp4"}, {"video.mp4": 9000})
    assert (targets, skipped) == ([Target("video.mp4", 9000)], [])
    # no complete fragment yet: nothing to check, it is being written
    targets, skipped = plan_targets(["video.mp4"], "video.mp4", {"video.mp4"}, {"video.mp4": None})
    assert (targets, skipped) == ([], ["video.mp4"])
    # a finished recording is checked whole
    assert plan_targets(["video.mp4"], "video.mp4", set(), {}) == ([Target("video.mp4")], [])


def test_mp4_complete_end_stops_before_a_fragment_being_written() -> None:
    head = box(b"ftyp", 20) + box(b"moov", 736)
    fragment = box(b"moof", 176) + box(b"mdat", 4000)
    data = head + fragment + fragment + box(b"moof", 176) + box(b"mdat", 4000)[:1000]
    assert mp4_complete_end(io.BytesIO(data), len(data)) == len(head) + 2 * len(fragment)
    # a moof without its mdat yet does not count
    data = head + fragment + box(b"moof", 176)
    assert mp4_complete_end(io.BytesIO(data), len(data)) == len(head) + len(fragment)
    # the size the module read before ffmpeg appended more: only what it saw counts
    data = head + fragment + fragment
    assert mp4_complete_end(io.BytesIO(data), len(head) + len(fragment) + 100) == len(head) + len(
        fragment
    )


def test_mp4_complete_end_reads_64_bit_box_sizes() -> None:
    head = box(b"ftyp", 20) + box(b"moov", 100)
    mdat = struct.pack(">I4sQ", 1, b"mdat", 16 + 50) + bytes(50)
    data = head + box(b"moof", 40) + mdat
    assert mp4_complete_end(io.BytesIO(data), len(data)) == len(data)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x47" * 188 * 3,  # MPEG-TS packets, not an MP4
        box(b"ftyp", 20) + box(b"moov", 100),  # no fragment yet
        box(b"ftyp", 20) + box(b"mdat", 100),  # a plain MP4 being written: no moof before mdat
        struct.pack(">I4s", 4, b"ftyp"),  # a box smaller than its header
    ],
)
def test_no_complete_fragment(data: bytes) -> None:
    assert mp4_complete_end(io.BytesIO(data), len(data)) is None


# -- ffprobe -----------------------------------------------------------------------------------


def test_ffprobe_argv() -> None:
    tail = ["-v", "error", "-count_frames", "-show_entries", "stream=nb_read_frames"]
    argv = ffprobe_argv("/usr/bin/ffprobe", "/w/segment_00001.ts")
    assert argv[:6] == ["/usr/bin/ffprobe", *tail]
    assert argv[-1] == "/w/segment_00001.ts"
    assert ffprobe_argv("ffprobe", "/w/video.mp4", 91319)[-1] == (
        "subfile,,start,0,end,91319,,:/w/video.mp4"
    )


@pytest.mark.parametrize(
    ("rc", "stdout", "stderr", "verdict"),
    [
        (0, TS_SEGMENT_OUT, "", (True, 20, "")),
        (0, "40\n", "", (True, 40, "")),
        # ffprobe exits 0 on a truncated MP4: its errors decide
        (0, "7\n", TRUNCATED_MP4_ERR, (False, 7, TRUNCATED_MP4_ERR.splitlines()[0])),
        (1, "", WRITTEN_TS_ERR, (False, 0, "ffprobe exited with 1: " + WRITTEN_TS_ERR.strip())),
        (0, "0\n", "", (False, 0, "no frame decoded")),
        (0, "N/A\n", "", (False, 0, "no frame decoded")),
    ],
)
def test_ffprobe_verdict(rc: int, stdout: str, stderr: str, verdict: tuple[bool, int, str]) -> None:
    ok, frames, detail = ffprobe_verdict(rc, stdout, stderr)
    assert (ok, frames) == verdict[:2]
    assert detail.startswith(verdict[2])


def test_summary_of_a_glob() -> None:
    good = [ProbeResult(f"segment_{i:05d}.ts", True, 20, 60000) for i in range(3)]
    check = summarize("ffprobe", "segment_*.ts", good, ["segment_00003.ts"])
    assert check.as_check() == {
        "name": "ffprobe:segment_*.ts",
        "ok": True,
        "detail": "3 file(s) decode (segment_00000.ts .. segment_00002.ts, 60 frames); "
        "skipped segment_00003.ts (being written)",
    }
    bad = [*good, ProbeResult("segment_00004.ts", False, 0, 10, "Invalid data")]
    check = summarize("ffprobe", "segment_*.ts", bad, [])
    assert check.ok is False
    assert check.detail == "1 of 4 file(s) fail: segment_00004.ts: Invalid data"
    assert check.as_evidence()["files"][-1] == {
        "name": "segment_00004.ts",
        "ok": False,
        "frames": 0,
        "bytes_checked": 10,
        "error": "Invalid data",
    }
    # only the file being written: no evidence, so the check fails
    check = summarize("ffprobe", "segment_*.ts", [], ["segment_00000.ts"])
    assert check.ok is False
    assert check.detail == (
        "no finished file matches segment_*.ts; skipped segment_00000.ts (being written)"
    )
    check = missing("ffprobe", ["segment_*.ts", "video.mp4"])
    assert check.as_check() == {
        "name": "ffprobe",
        "ok": False,
        "detail": "no file matches segment_*.ts or video.mp4 in the working directory",
    }


# -- real files from Debian's ffmpeg -----------------------------------------------------------


FFMPEG_INPUT = ["-f", "lavfi", "-i", "testsrc2=size=160x120:rate=10", "-t", "6"]
FFMPEG_X264 = ["-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p"]
FFMPEG_GOP = ["-g", "20", "-keyint_min", "20", "-sc_threshold", "0"]  # a keyframe every 2 s


def ffmpeg(workdir: Path, *output: str) -> None:
    argv = ["ffmpeg", "-nostdin", "-v", "error", "-y", *FFMPEG_INPUT, *FFMPEG_X264, *FFMPEG_GOP]
    subprocess.run([*argv, *output], cwd=workdir, check=True, timeout=120)


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three 2 s MPEG-TS segments and a 6 s fragmented MP4, the video workload's formats."""
    if not (shutil.which("ffmpeg") and shutil.which("ffprobe")):
        pytest.skip("needs ffmpeg and ffprobe")
    workdir = tmp_path_factory.mktemp("media")
    segments = ["-f", "segment", "-segment_time", "2", "-segment_format", "mpegts"]
    ffmpeg(workdir, *segments, "-reset_timestamps", "1", "segment_%05d.ts")
    ffmpeg(workdir, "-movflags", "frag_keyframe+empty_moov+default_base_moof", "video.mp4")
    return workdir


def probe(path: Path, end: int | None = None) -> tuple[bool, int, str]:
    proc = subprocess.run(
        ffprobe_argv("ffprobe", str(path), end), capture_output=True, text=True, timeout=60
    )
    return ffprobe_verdict(proc.returncode, proc.stdout, proc.stderr)


@needs_ffmpeg
def test_real_fragmented_mp4_cut_mid_fragment(media: Path, tmp_path: Path) -> None:
    whole = (media / "video.mp4").read_bytes()
    cut = tmp_path / "video.mp4"
    cut.write_bytes(whole[: len(whole) * 2 // 3])
    with cut.open("rb") as handle:
        end = mp4_complete_end(handle, cut.stat().st_size)
    assert end is not None and 0 < end < cut.stat().st_size
    # the whole cut file does not decode cleanly; up to its last complete fragment it does
    assert probe(cut)[0] is False
    ok, frames, _ = probe(cut, end)
    assert ok and frames % 20 == 0 and 0 < frames < 60
    assert probe(media / "video.mp4") == (True, 60, "")


@needs_ffmpeg
def test_real_segments_decode(media: Path) -> None:
    segments = matching([p.name for p in media.iterdir()], "segment_*.ts")
    assert segments == ["segment_00000.ts", "segment_00001.ts", "segment_00002.ts"]
    assert [probe(media / name) for name in segments] == [(True, 20, "")] * 3


# -- the module, as Ansible runs it ------------------------------------------------------------


run_module = functools.partial(run_ansible_module, workload_verify)


def progress_log(workdir: Path, restored: dict[str, Any] | None = None) -> None:
    lines = [
        {"seq": 1, "ts": 100.0, "host": "src-host", "segments": 1, "ffmpeg_pid": 7},
        {"seq": 2, "ts": 100.5, "host": "src-host", "segments": 1, "ffmpeg_pid": 7},
        {
            "seq": 3,
            "ts": 102.4,
            "host": "dst-host",
            "event": "restored",
            "segments": 2,
            "ffmpeg_pid": 7,
            **(restored or {}),
        },
        {"seq": 4, "ts": 102.9, "host": "dst-host", "segments": 3, "ffmpeg_pid": 7},
    ]
    (workdir / "progress.log").write_text("".join(json.dumps(line) + "\n" for line in lines))


@pytest.fixture
def writer(tmp_path: Path) -> Iterator[tuple[Path, subprocess.Popen[str]]]:
    """A working directory with the segments, and a process that holds the newest open for
    writing (the way ffmpeg holds the segment it writes)."""
    workdir = tmp_path / "work"
    workdir.mkdir()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time\n"
            "f = open(sys.argv[1], 'wb'); f.write(b'\\x47' * 188); f.flush()\n"
            "print('open', flush=True); time.sleep(60)",
            str(workdir / "segment_00003.ts"),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline() == "open\n"
        yield workdir, proc
    finally:
        proc.kill()
        proc.wait()


RULES = {"equal": ["ffmpeg_pid"], "close": {}, "increasing": ["segments"]}


def module_args(workdir: Path, pid: int, **extra: Any) -> dict[str, Any]:
    return {
        "working_dir": str(workdir),
        "pid": pid,
        "source_pid": pid,
        "source_running": False,
        "rules": RULES,
        "destination_host": "dst-host",
        "wait_s": 0,
        **extra,
    }


@needs_ffmpeg
def test_module_decodes_every_finished_segment(
    media: Path, writer: tuple[Path, subprocess.Popen[str]], capsys: pytest.CaptureFixture[str]
) -> None:
    workdir, proc = writer
    for path in media.glob("segment_*.ts"):
        shutil.copy(path, workdir / path.name)
    progress_log(workdir)
    spec = {"ffprobe": ["segment_*.ts", "video.mp4"]}
    rc, result = run_module(module_args(workdir, proc.pid, artifact_checks=spec), capsys)
    assert rc == 0, result
    verification = result["verification"]
    assert verification["ok"] is True and verification["artifacts_ok"] is True
    check = verification["checks"][-1]
    assert check == {
        "name": "ffprobe:segment_*.ts",
        "ok": True,
        "detail": "3 file(s) decode (segment_00000.ts .. segment_00002.ts, 60 frames); "
        "skipped segment_00003.ts (being written)",
    }
    # continuity checks first, then the artifact checks, all in one list
    assert [c["name"] for c in verification["checks"]] == [
        "seq",
        "restored_line",
        "equal:ffmpeg_pid",
        "increasing:segments",
        "ffprobe:segment_*.ts",
    ]
    (evidence,) = verification["artifacts"]
    assert [f["name"] for f in evidence["files"]] == [f"segment_{i:05d}.ts" for i in range(3)]
    assert evidence["skipped_being_written"] == ["segment_00003.ts"]
    assert verification["details"].endswith("5 checks passed")


@needs_ffmpeg
def test_module_fails_on_a_finished_segment_that_does_not_decode(
    media: Path, writer: tuple[Path, subprocess.Popen[str]], capsys: pytest.CaptureFixture[str]
) -> None:
    workdir, proc = writer
    shutil.copy(media / "segment_00000.ts", workdir / "segment_00000.ts")
    data = (media / "segment_00001.ts").read_bytes()
    (workdir / "segment_00001.ts").write_bytes(data[: len(data) // 2])  # closed, yet cut short
    progress_log(workdir)
    rc, result = run_module(
        module_args(workdir, proc.pid, artifact_checks={"ffprobe": "segment_*.ts"}), capsys
    )
    assert rc == 1
    assert result["failed"] is True
    assert (
        "verification failed on dst-host: ffprobe:segment_*.ts: 1 of 2 file(s) fail: "
        in (result["msg"])
    )
    assert "segment_00001.ts" in result["msg"]
    assert result["verification"]["artifacts_ok"] is False
    # the continuity itself was fine
    assert result["verification"]["state_continuous"] is True


@needs_ffmpeg
def test_module_checks_a_recording_mp4_up_to_its_last_fragment(
    media: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    workdir = tmp_path / "work"
    workdir.mkdir()
    whole = (media / "video.mp4").read_bytes()
    mp4 = workdir / "video.mp4"
    mp4.write_bytes(whole[: len(whole) * 2 // 3])
    # a process that holds video.mp4 open for writing, as ffmpeg does in file mode
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time\nf = open(sys.argv[1], 'r+b')\nprint('open', flush=True)\n"
            "time.sleep(60)",
            str(mp4),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline() == "open\n"
        progress_log(workdir)
        spec = {"ffprobe": ["segment_*.ts", "video.mp4"]}
        rc, result = run_module(module_args(workdir, proc.pid, artifact_checks=spec), capsys)
    finally:
        proc.kill()
        proc.wait()
    assert rc == 0, result
    (evidence,) = result["verification"]["artifacts"]
    assert evidence["check"] == "ffprobe:video.mp4"
    (checked,) = evidence["files"]
    assert 0 < checked["bytes_checked"] < mp4.stat().st_size
    assert checked["ok"] is True and checked["frames"] in (20, 40)


@needs_ffmpeg
def test_module_fails_when_no_artifact_exists(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    workdir = tmp_path / "work"
    workdir.mkdir()
    progress_log(workdir)
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        time.sleep(0.1)
        rc, result = run_module(
            module_args(workdir, proc.pid, artifact_checks={"ffprobe": ["segment_*.ts"]}), capsys
        )
    finally:
        proc.kill()
        proc.wait()
    assert rc == 1
    assert "ffprobe: no file matches segment_*.ts in the working directory" in result["msg"]


def test_module_refuses_a_bad_spec(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, result = run_module(module_args(tmp_path, 1, artifact_checks={"md5": "*"}), capsys)
    assert rc == 1
    assert result["msg"] == "artifact_checks: verify: unknown check 'md5'; valid: ffprobe"


def test_module_without_artifact_checks_is_unchanged(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    progress_log(tmp_path)
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        rc, result = run_module(module_args(tmp_path, proc.pid), capsys)
    finally:
        proc.kill()
        proc.wait()
    assert rc == 0, result
    assert result["verification"]["artifacts"] == []
    assert result["verification"]["artifacts_ok"] is None
    assert [c["name"] for c in result["verification"]["checks"]][-1] == "increasing:segments"
