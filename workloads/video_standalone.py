#!/usr/bin/env python3
"""video workload: Debian's ffmpeg encoding synthetic testsrc2 frames in real time.

ffmpeg runs as this process's child (one tree for CRIU: both are dumped and restored) and
encodes `testsrc2` at `resolution` and `fps` with libx264 (ultrafast, zerolatency, a
keyframe every 2 s) in real time (`-re`):
- `live`: the segment muxer writes numbered 2 s MPEG-TS segments `segment_%05d.ts` into the
  working directory; every segment but the one being written is finished and decodable.
- `file`: one MP4 of `duration` seconds, fragmented (`frag_keyframe+empty_moov`, packets
  flushed): the file is valid while it is written, up to its last complete 2 s fragment, so
  it can be checked at any moment and an interrupted recording still plays; a plain MP4
  has no index (moov) until ffmpeg finishes.
This script logs the count of finished segments (fragments in file mode) and ffmpeg's pid.
After a restore it checks that ffmpeg is the same pid, still its child and running, and
decodes the last finished segments with ffprobe.

Single file on purpose: it is copied alone to bare nodes (stdlib + ffmpeg). The protocol
part (`Protocol`) is repeated in every workload script; see docs/architecture.md.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import math
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

SEGMENT_S = 2
LINE_S = 0.5  # one progress line every 0.5 s
PROBE_LAST = 10  # segments decoded with ffprobe after a restore
PR_SET_PDEATHSIG = 1
# WIDTHxHEIGHT, both even (4:2:0 chroma), no leading zeros
RESOLUTION = r"^(?:[1-9][0-9]*[02468]|[2468])x(?:[1-9][0-9]*[02468]|[2468])$"
SEGMENT = re.compile(r"^segment_(\d{5,})\.ts$")


# --- the suite's workload protocol (same shape in every *_standalone.py) ------------------
class Protocol:
    """Ready file, progress.log lines, restore detection by host name, flag, finish."""

    def __init__(self, working_dir: Path, restored_fields: Callable[[], dict[str, Any]]) -> None:
        self.working_dir = working_dir
        self.flag = working_dir / "checkpoint_flag"
        self.restored_fields = restored_fields
        # Append mode: CRIU accepts a file open for writing whose size changed only then.
        self.log = open(working_dir / "progress.log", "a", buffering=1)  # noqa: SIM115
        self.seq = 0
        self.host = socket.gethostname()

    def ready(self) -> None:
        tmp = self.working_dir / ".checkpoint_ready.tmp"
        tmp.write_text(f"ready:{os.getpid()}")
        tmp.replace(self.working_dir / "checkpoint_ready")

    def _write(self, fields: dict[str, Any], ts: float | None = None) -> None:
        host = socket.gethostname()
        self.seq += 1
        record = {"seq": self.seq, "ts": ts if ts is not None else time.time(), "host": host}
        self.log.write(json.dumps({**record, **fields}) + "\n")
        self.host = host

    def check_restore(self) -> bool:
        """After a host change, log the state recomputed from memory before any more work."""
        if socket.gethostname() == self.host:
            return False
        detected = time.time()
        fields = self.restored_fields()
        fields["verify_s"] = round(time.time() - detected, 3)
        self._write({"event": "restored", **fields}, ts=detected)
        return True

    def line(self, **fields: Any) -> None:
        self.check_restore()
        self._write(fields)

    def running(self) -> bool:
        self.check_restore()
        return self.flag.exists()

    def sleep(self, seconds: float) -> None:
        # Counted in slices, not against a clock deadline: clocks differ between hosts.
        remaining = seconds
        while remaining > 0 and self.running():
            step = min(remaining, 0.1)
            time.sleep(step)
            remaining -= step

    def finish(self) -> None:
        self.check_restore()
        self._write({"event": "finished"})
        print("restore completed", flush=True)


def run_protocol(
    parser: argparse.ArgumentParser, work: Callable[[argparse.Namespace, Path], None]
) -> int:
    args = parser.parse_args()
    working_dir = Path(args.working_dir).resolve()
    working_dir.mkdir(parents=True, exist_ok=True)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # unwinds: children are stopped
    try:
        work(args, working_dir)
    except Exception:
        (working_dir / "workload_error.log").write_text(traceback.format_exc())
        return 1
    return 0


def bounded(
    kind: type, low: float | None = None, high: float | None = None
) -> Callable[[str], Any]:
    """An argparse type: `kind` within [low, high]."""

    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a valid {kind.__name__}") from None
        if kind is float and not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
        if low is not None and value < low:
            raise argparse.ArgumentTypeError(f"{value} is below the minimum {low}")
        if high is not None and value > high:
            raise argparse.ArgumentTypeError(f"{value} is above the maximum {high}")
        return value

    return parse


# --- the workload ---------------------------------------------------------------------------
def resolution(text: str) -> str:
    if not re.fullmatch(RESOLUTION, text):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not WIDTHxHEIGHT with even numbers, e.g. 1920x1080"
        )
    return text


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--working-dir", required=True, help="protocol files live here")
    parser.add_argument("--resolution", type=resolution, default="1920x1080", help="WIDTHxHEIGHT")
    parser.add_argument("--fps", type=bounded(int, 1, 120), default=30, help="frames per second")
    parser.add_argument(
        "--duration", type=bounded(int, 1), default=300, help="s of video (file mode)"
    )
    parser.add_argument(
        "--video-mode", choices=["live", "file"], default="live", help="segments or one MP4"
    )
    return parser


def mp4_fragments(path: Path) -> int:
    """Complete fragments (a moof followed by its whole mdat) of a fragmented MP4."""
    count = 0
    try:
        mp4 = path.open("rb")
    except FileNotFoundError:
        return 0
    with mp4:
        size = os.fstat(mp4.fileno()).st_size
        offset, after_moof = 0, False
        while offset + 8 <= size:
            mp4.seek(offset)
            box_size, box_type = struct.unpack(">I4s", mp4.read(8))
            if box_size == 1:
                box_size = struct.unpack(">Q", mp4.read(8))[0]
            if box_size < 8 or offset + box_size > size:
                break
            count += box_type == b"mdat" and after_moof
            after_moof = box_type == b"moof"
            offset += box_size
    return count


def decodes(path: Path) -> bool:
    """ffprobe decodes every frame of `path` without an error."""
    probe = subprocess.run(
        [
            "ffprobe",
            "-v",
            "error",
            "-count_frames",
            "-show_entries",
            "stream=nb_read_frames",
            "-of",
            "csv=p=0",
            str(path),
        ],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
    )
    # MPEG-TS lists the stream twice (under its program too): the first number counts.
    frames = (probe.stdout.split() or [""])[0].split(",")[0]
    return (
        probe.returncode == 0 and not probe.stderr.strip() and frames.isdigit() and int(frames) > 0
    )


class Video:
    def __init__(self, args: argparse.Namespace, working_dir: Path) -> None:
        self.mode = args.video_mode
        self.working_dir = working_dir
        self.output = working_dir / ("segment_%05d.ts" if self.mode == "live" else "video.mp4")
        self.log = working_dir / "ffmpeg.log"
        binary = shutil.which("ffmpeg") or "/usr/bin/ffmpeg"
        gop = str(args.fps * SEGMENT_S)
        argv = [binary, "-nostdin", "-hide_banner", "-loglevel", "error", "-re", "-f", "lavfi"]
        argv += ["-i", f"testsrc2=size={args.resolution}:rate={args.fps}"]
        argv += [
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            "-tune",
            "zerolatency",
            "-pix_fmt",
            "yuv420p",
        ]
        argv += ["-g", gop, "-keyint_min", gop, "-sc_threshold", "0", "-threads", "2"]
        if self.mode == "live":
            argv += ["-f", "segment", "-segment_time", str(SEGMENT_S), "-segment_format", "mpegts"]
            argv += ["-reset_timestamps", "1", str(self.output)]
        else:
            argv += ["-t", str(args.duration), "-flush_packets", "1"]
            argv += [
                "-movflags",
                "frag_keyframe+empty_moov+default_base_moof",
                "-f",
                "mp4",
                str(self.output),
            ]
        libc = ctypes.CDLL(None, use_errno=True)
        # ffmpeg's messages go to a file opened in append mode, which CRIU accepts growing.
        with self.log.open("ab") as log:
            self.ffmpeg = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=log,
                cwd=working_dir,
                # A child of this process (one tree for CRIU), killed if this process dies.
                preexec_fn=lambda: libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL),
            )

    def wait_started(self) -> None:
        first = self.working_dir / "segment_00000.ts" if self.mode == "live" else self.output
        deadline = time.time() + 15
        while not first.exists():
            self.check_exit()
            if time.time() > deadline:
                raise RuntimeError(f"ffmpeg wrote no {first.name} in 15 s")
            time.sleep(0.05)

    def check_exit(self) -> int | None:
        """ffmpeg's exit status once it ended; an error unless a file recording completed."""
        code = self.ffmpeg.poll()
        if code is not None and (code != 0 or self.mode == "live"):
            tail = self.log.read_text(errors="replace")[-800:]
            raise RuntimeError(f"ffmpeg exited with {code}: {tail}")
        return code

    def running(self) -> bool:
        """Fresh from /proc: our pid is ffmpeg, our child, and not a zombie."""
        try:
            stat = Path(f"/proc/{self.ffmpeg.pid}/stat").read_text()
        except OSError:
            return False
        comm, rest = (
            stat[stat.index("(") + 1 : stat.rindex(")")],
            stat[stat.rindex(")") + 2 :].split(),
        )
        return comm == "ffmpeg" and rest[0] != "Z" and int(rest[1]) == os.getpid()

    def live_segments(self, running: bool) -> list[tuple[int, Path]]:
        """Finished segments by number; the highest one is still written while ffmpeg runs."""
        numbered = sorted(
            (int(match.group(1)), self.working_dir / name)
            for name in os.listdir(self.working_dir)
            if (match := SEGMENT.match(name))
        )
        return numbered[:-1] if running else numbered

    def fields(self) -> dict[str, Any]:
        running = self.running()
        if self.mode == "file":
            count = mp4_fragments(self.output)
            last, size = count - 1, self.output.stat().st_size
        else:
            finished = self.live_segments(running)
            count = len(finished)
            last = finished[-1][0] if finished else -1
            size = sum(path.stat().st_size for _, path in finished)
        return {
            "video_mode": self.mode,
            "segments": count,
            "last_segment": last,
            "bytes": size,
            "ffmpeg_pid": self.ffmpeg.pid,
            "ffmpeg_running": running,
        }

    def restored(self) -> dict[str, Any]:
        """Same ffmpeg still running as our child; the last finished segments decode."""
        fields = self.fields()
        if self.mode == "file":
            checked = 1
            ok = fields["segments"] if decodes(self.output) else 0
        else:
            probed = self.live_segments(fields["ffmpeg_running"])[-PROBE_LAST:]
            checked = len(probed)
            ok = sum(decodes(path) for _, path in probed)
        fields.update(ffprobe_checked=checked, ffprobe_ok_segments=ok)
        return fields

    def stop(self) -> None:
        if self.ffmpeg.poll() is None:
            self.ffmpeg.send_signal(signal.SIGINT)  # ffmpeg closes its output cleanly
            try:
                self.ffmpeg.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.ffmpeg.kill()
                self.ffmpeg.wait()


def work(args: argparse.Namespace, working_dir: Path) -> None:
    video = Video(args, working_dir)
    try:
        video.wait_started()
        proto = Protocol(working_dir, video.restored)
        proto.ready()
        while proto.running():
            video.check_exit()
            proto.line(**video.fields())
            proto.sleep(LINE_S)
        video.stop()
        proto.finish()
    finally:
        if video.ffmpeg.poll() is None:
            video.ffmpeg.kill()
            video.ffmpeg.wait()


if __name__ == "__main__":
    sys.exit(run_protocol(build_parser(), work))
