"""The standalone workload scripts: argument parsing against their declarations, and the
workload protocol run for real (docs/architecture.md, "The workload protocol").

Each protocol run starts the script under the node's interpreter inside its own UTS
namespace (`unshare --uts`), so a "migration" can be simulated by changing the host name
from outside (`nsenter -u hostname ...`): the script must then log a `restored` line whose
continuity values equal those of the line before it, keep `seq` continuous, finish when the
flag is removed, and leave no child behind. Small parameters throughout.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import itertools
import json
import math
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml
from artifact_checks import ffprobe_argv

REPO = Path(__file__).resolve().parents[2]
WORKLOADS = REPO / "workloads"
NODE_PYTHON = Path("/opt/criu-migration/venv/bin/python3")
NAMES = ("memory", "matmul", "redis", "ml_training", "video", "dataproc")
PROTOCOL_START = "# --- the suite's workload protocol"
PROTOCOL_END = "# --- the workload ---"
MIB_PAGES = 256  # 4096-byte pages per MiB

needs_node = pytest.mark.skipif(
    not NODE_PYTHON.exists() or os.geteuid() != 0,
    reason=f"needs root (unshare/nsenter) and the node interpreter {NODE_PYTHON} (make setup)",
)


def declaration(name: str) -> dict[str, Any]:
    return yaml.safe_load((WORKLOADS / f"{name}.yml").read_text())


def load_script(name: str) -> ModuleType:
    """Import a script in the test process: its top level needs only the stdlib."""
    spec = importlib.util.spec_from_file_location(
        f"{name}_standalone", WORKLOADS / f"{name}_standalone.py"
    )
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def flag(param: str) -> str:
    return "--" + param.replace("_", "-")


# --- argument parsing ------------------------------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
def test_parser_defaults_are_the_declaration_defaults(name: str) -> None:
    parser = load_script(name).build_parser()
    args = vars(parser.parse_args(["--working-dir", "/tmp/x"]))
    params = declaration(name)["params"]
    assert set(args) == {"working_dir", *params}
    for param, spec in params.items():
        assert args[param] == spec["default"], param
        assert type(args[param]) is {"int": int, "float": float, "str": str}[spec["type"]], param


@pytest.mark.parametrize("name", NAMES)
def test_parser_requires_working_dir(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        load_script(name).build_parser().parse_args([])
    assert exc.value.code == 2
    assert "--working-dir" in capsys.readouterr().err


def bad_values(spec: dict[str, Any]) -> list[str]:
    """Values the declaration refuses, written as a user would."""
    values: list[str] = []
    if spec["type"] == "int":
        values += ["abc", "1.5", ""]
    if spec["type"] == "float":
        values += ["abc", "nan", "inf", ""]
    if "min" in spec:
        values.append(str(spec["min"] - 1 if spec["type"] == "int" else spec["min"] - 0.0005))
    if "max" in spec:
        values.append(str(spec["max"] + 1))
    if "choices" in spec:
        values += ["bogus", spec["choices"][0].upper()]
    if "pattern" in spec:
        values += ["12x", "x", "0x0", "161x120"]
    return values


def good_values(spec: dict[str, Any]) -> list[str]:
    values = [str(spec["default"])]
    values += [str(spec[key]) for key in ("min", "max") if key in spec]
    values += [str(choice) for choice in spec.get("choices", [])]
    return values


@pytest.mark.parametrize("name", NAMES)
def test_parser_mirrors_the_declaration_limits(
    name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    parser = load_script(name).build_parser()
    for param, spec in declaration(name)["params"].items():
        for value in good_values(spec):
            parsed = vars(parser.parse_args(["--working-dir", "/w", flag(param), value]))[param]
            assert str(parsed) == value or float(parsed) == float(value), (param, value)
        for value in bad_values(spec):
            with pytest.raises(SystemExit) as exc:
                parser.parse_args(["--working-dir", "/w", flag(param), value])
            assert exc.value.code == 2, (param, value)
            assert flag(param) in capsys.readouterr().err, (param, value)


# The issue's examples of bad input, each refused with a message that says why.
ISSUE_BAD_INPUT = [
    ("video", "--resolution", "12x", "WIDTHxHEIGHT"),
    ("ml_training", "--model-size", "huge", "invalid choice"),
    ("redis", "--value-size", "0", "below the minimum 1"),
    ("redis", "--num-keys", "-5", "below the minimum 1"),
    ("memory", "--mb-size", "-1", "below the minimum 1"),
    ("matmul", "--iterations", "-1", "below the minimum 0"),
    ("dataproc", "--operations", "-3", "below the minimum 0"),
    ("ml_training", "--epochs", "-2", "below the minimum 0"),
]


@pytest.mark.parametrize(("name", "option", "value", "message"), ISSUE_BAD_INPUT)
def test_issue_bad_input_refused(
    name: str, option: str, value: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        load_script(name).build_parser().parse_args(["--working-dir", "/w", option, value])
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


@needs_node
@pytest.mark.parametrize(("name", "option", "value", "message"), ISSUE_BAD_INPUT[:4])
def test_bad_input_refused_by_the_node_interpreter(
    name: str, option: str, value: str, message: str, tmp_path: Path
) -> None:
    result = subprocess.run(
        [
            NODE_PYTHON,
            WORKLOADS / f"{name}_standalone.py",
            "--working-dir",
            tmp_path,
            option,
            value,
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert message in result.stderr
    assert not (tmp_path / "checkpoint_ready").exists()


def test_protocol_part_is_the_same_in_every_script() -> None:
    blocks = {}
    for name in NAMES:
        source = (WORKLOADS / f"{name}_standalone.py").read_text()
        blocks[name] = source[source.index(PROTOCOL_START) : source.index(PROTOCOL_END)]
    assert len(set(blocks.values())) == 1, "the Protocol part differs between scripts"


def test_scripts_import_only_the_stdlib_at_top_level() -> None:
    allowed_optional = {"numpy", "redis", "torch"}
    for name in NAMES:
        source = (WORKLOADS / f"{name}_standalone.py").read_text()
        guarded = set(re.findall(r"try:\n    import (\w+)", source))
        assert guarded <= allowed_optional, name
        assert "module_utils" not in source and "ansible" not in source, name


# --- the protocol, run for real ---------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def child_pids(pid: int) -> list[int]:
    return [int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def pid_alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


@dataclass
class Run:
    """A workload script started as the suite starts it, in its own UTS namespace."""

    working_dir: Path
    process: subprocess.Popen[bytes]
    stdout: Path

    @classmethod
    def start(cls, name: str, working_dir: Path, args: list[str]) -> Run:
        working_dir.mkdir(parents=True, exist_ok=True)
        (working_dir / "checkpoint_flag").touch()
        stdout = working_dir.parent / f"{working_dir.name}.stdout"
        with stdout.open("wb") as out:
            process = subprocess.Popen(
                [
                    "unshare",
                    "--uts",
                    "--",
                    NODE_PYTHON,
                    WORKLOADS / f"{name}_standalone.py",
                    "--working-dir",
                    working_dir,
                    *args,
                ],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=working_dir,
                start_new_session=True,
            )
        return cls(working_dir, process, stdout)

    def lines(self) -> list[dict[str, Any]]:
        log = self.working_dir / "progress.log"
        if not log.exists():
            return []
        return [json.loads(line) for line in log.read_text().splitlines() if line.endswith("}")]

    def wait_for(self, what: str, condition: Callable[[], Any], timeout: float = 60) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            result = condition()
            if result:
                return result
            if self.process.poll() is not None:
                break
            time.sleep(0.05)
        error = self.working_dir / "workload_error.log"
        detail = error.read_text() if error.exists() else self.stdout.read_text()
        pytest.fail(f"no {what} (exit {self.process.poll()}): {detail[-2000:]}")

    def wait_ready(self) -> None:
        ready = self.working_dir / "checkpoint_ready"
        content = self.wait_for("ready file", lambda: ready.exists() and ready.read_text())
        assert content == f"ready:{self.process.pid}"

    def set_hostname(self, name: str) -> None:
        subprocess.run(["nsenter", "-t", str(self.process.pid), "-u", "hostname", name], check=True)

    def stop(self) -> None:
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()


@pytest.fixture
def runs() -> Iterator[list[Run]]:
    started: list[Run] = []
    yield started
    for run in started:
        run.stop()


@dataclass
class Case:
    name: str
    args: list[str]
    # what must be true of the lines before the host name changes
    before: Callable[[list[dict[str, Any]]], bool] = lambda lines: len(lines) >= 3
    # what must be true of the lines after the restored line (work continues)
    after: Callable[[dict[str, Any], list[dict[str, Any]]], bool] = lambda restored, later: (
        len(later) >= 2
    )
    children: list[str] = field(default_factory=list)


def grew(key: str) -> Callable[[dict[str, Any], list[dict[str, Any]]], bool]:
    return lambda restored, later: any(line[key] > restored[key] for line in later)


CASES = {
    "memory": Case(
        "memory",
        ["--mb-size", "4", "--interval", "0.2", "--max-memory", "64"],
        after=grew("blocks"),
    ),
    "matmul": Case(
        "matmul",
        ["--matrix-size", "96", "--iterations", "0", "--interval", "0.1"],
        after=grew("iteration"),
    ),
    "redis": Case(
        "redis",
        ["--num-keys", "2000", "--value-size", "64"],
        after=grew("writes"),
        children=["redis-server"],
    ),
    "ml_training": Case(
        "ml_training",
        [
            "--model-size",
            "small",
            "--batch-size",
            "32",
            "--dataset-size",
            "512",
            "--learning-rate",
            "0.001",
        ],
        before=lambda lines: len(lines) >= 2,
        after=grew("global_step"),
    ),
    "video_live": Case(
        "video",
        ["--resolution", "160x120", "--fps", "10", "--video-mode", "live"],
        before=lambda lines: bool(lines) and lines[-1]["segments"] >= 1,
        after=grew("last_segment"),
        children=["ffmpeg"],
    ),
    "video_file": Case(
        "video",
        ["--resolution", "160x120", "--fps", "10", "--duration", "8", "--video-mode", "file"],
        before=lambda lines: bool(lines) and lines[-1]["segments"] >= 1,
        after=grew("segments"),
        children=["ffmpeg"],
    ),
    "dataproc": Case(
        "dataproc",
        ["--num-rows", "3000", "--num-cols", "6", "--interval", "0.1"],
        before=lambda lines: len(lines) >= 8,  # every one of the seven ops has run
        after=grew("op_count"),
    ),
}


def check_continuity(
    rules: dict[str, Any], before: dict[str, Any], restored: dict[str, Any]
) -> None:
    """The suite's verifier's rules: the last source line against the restored line."""
    for key in rules["equal"]:
        assert restored[key] == before[key], key
    for key, tolerance in rules["close"].items():
        assert math.isclose(restored[key], before[key], rel_tol=tolerance), key
    for key in rules["increasing"]:
        assert restored[key] >= before[key], key


@needs_node
@pytest.mark.parametrize("case", list(CASES.values()), ids=list(CASES))
def test_protocol_with_simulated_restore(case: Case, tmp_path: Path, runs: list[Run]) -> None:
    decl = declaration(case.name)
    rules = decl["continuity"]
    args = list(case.args)
    if case.name == "redis":
        args += ["--redis-port", str(free_port())]
    run = Run.start(case.name, tmp_path / "work", args)
    runs.append(run)
    run.wait_ready()
    source_host = socket.gethostname()
    run.wait_for("lines before the restore", lambda: case.before(run.lines()))
    children = child_pids(run.process.pid)
    assert (
        sorted(Path(f"/proc/{pid}/comm").read_text().strip() for pid in children) == case.children
    )

    run.set_hostname("restored-host")
    lines = run.wait_for(
        "restored line",
        lambda: (
            (found := run.lines())
            and any(line.get("event") == "restored" for line in found)
            and found
        ),
    )
    index = next(i for i, line in enumerate(lines) if line.get("event") == "restored")
    before, restored = lines[index - 1], lines[index]
    assert before["host"] == source_host and restored["host"] == "restored-host"
    assert restored["seq"] == before["seq"] + 1
    check_continuity(rules, before, restored)

    later = run.wait_for(
        "work after the restore",
        lambda: (found := run.lines()[index + 1 :]) and case.after(restored, found) and found,
    )
    assert all(line["host"] == "restored-host" and "event" not in line for line in later)

    (run.working_dir / "checkpoint_flag").unlink()
    assert run.process.wait(timeout=60) == 0
    assert "restore completed" in run.stdout.read_text()
    assert not (run.working_dir / "workload_error.log").exists()
    lines = run.lines()
    assert [line["seq"] for line in lines] == list(range(1, len(lines) + 1))
    assert all(a["ts"] <= b["ts"] for a, b in itertools.pairwise(lines))
    assert lines[-1]["event"] == "finished"
    assert sum(line.get("event") == "restored" for line in lines) == 1
    fields = {*rules["equal"], *rules["close"], *rules["increasing"]}
    for line in lines[:-1]:
        assert {"seq", "ts", "host"} <= set(line)
        assert fields <= set(line), line
    assert not any(pid_alive(pid) for pid in children), "a child outlived the workload"
    check_workload(case, restored, lines, run.working_dir)


def check_workload(
    case: Case, restored: dict[str, Any], lines: list[dict[str, Any]], working_dir: Path
) -> None:
    """What each workload's restored line proves beyond the continuity rules."""
    if case.name == "redis":
        assert restored["dataset_checksum"] == restored["model_checksum"]
        assert len({line["client_id"] for line in lines[:-1]}) == 1  # one connection throughout
    if case.name == "memory":
        assert all(line["allocated_mb"] == 4 * line["blocks"] for line in lines[:-1])
        assert restored["rss_kb"] >= restored["rss_anon_kb"] >= restored["allocated_mb"] * 1024
    if case.name == "ml_training":
        assert (
            restored["params_checksum"] != "00000000"
            and restored["optimizer_checksum"] != "00000000"
        )
    if case.name == "dataproc":
        ops = [line["op"] for line in lines if "event" not in line]
        assert set(ops[:7]) == {
            "filter",
            "aggregate",
            "sort",
            "group_aggregate",
            "join",
            "transform",
            "window",
        }
    if case.name == "video":
        assert restored["ffmpeg_running"] is True
        assert restored["segments"] >= 1
        if restored["video_mode"] == "live":  # the last (up to 10) finished segments
            assert restored["ffprobe_ok_segments"] == restored["ffprobe_checked"] >= 1
        else:  # the one MP4, up to its last complete fragment
            assert restored["ffprobe_ok_segments"] == restored["segments"]
        outputs = sorted(working_dir.glob("segment_*.ts")) or [working_dir / "video.mp4"]
        for path in outputs:  # every segment (the last one closed at the finish) decodes
            probe = subprocess.run(
                ffprobe_argv("ffprobe", str(path)),  # decode every frame
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert probe.returncode == 0 and not probe.stderr.strip(), (path, probe.stderr)
        if restored["video_mode"] == "live":
            numbers = [int(path.stem.split("_")[1]) for path in outputs]
            assert numbers == list(range(len(numbers)))  # numbering continued, no gap or restart


@needs_node
def test_redis_port_in_use_is_a_clear_error(tmp_path: Path, runs: list[Run]) -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        run = Run.start("redis", tmp_path / "work", ["--redis-port", str(port), "--num-keys", "10"])
        runs.append(run)
        assert run.process.wait(timeout=60) == 1
    error = (run.working_dir / "workload_error.log").read_text()
    assert f"redis_port {port} is already in use" in error
    assert not (run.working_dir / "checkpoint_ready").exists()
    assert not (run.working_dir / "progress.log").exists()


@needs_node
def test_sigterm_stops_the_child_too(tmp_path: Path, runs: list[Run]) -> None:
    port = free_port()
    run = Run.start("redis", tmp_path / "work", ["--redis-port", str(port), "--num-keys", "100"])
    runs.append(run)
    run.wait_ready()
    children = child_pids(run.process.pid)
    assert len(children) == 1
    run.process.send_signal(signal.SIGTERM)
    assert run.process.wait(timeout=30) == 143
    deadline = time.monotonic() + 10
    while pid_alive(children[0]) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not pid_alive(children[0])
    assert not (run.working_dir / "workload_error.log").exists()


# --- the memory workload: what its continuity fields measure ----------------------------------
def test_memory_script_logs_anonymous_memory(tmp_path: Path) -> None:
    """The script as the nodes run it (any interpreter, no root): ~2 s, four 4 MB blocks."""
    working_dir = tmp_path / "work"
    working_dir.mkdir()
    (working_dir / "checkpoint_flag").touch()
    log = working_dir / "progress.log"
    argv = ["--working-dir", str(working_dir), "--mb-size", "4", "--interval", "0.2"]
    process = subprocess.Popen(
        [sys.executable, WORKLOADS / "memory_standalone.py", *argv, "--max-memory", "16"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and process.poll() is None:
            if log.exists() and log.read_text().count("\n") >= 8:  # 4 blocks, then 4 idle lines
                break
            time.sleep(0.05)
        (working_dir / "checkpoint_flag").unlink()
        output, _ = process.communicate(timeout=30)
    finally:
        process.kill()
    assert process.returncode == 0, output
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    assert lines[-1]["event"] == "finished"
    work = lines[:-1]
    assert len(work) >= 8
    assert [line["blocks"] for line in work[:4]] == [1, 2, 3, 4]
    for line in work:
        assert isinstance(line["rss_anon_kb"], int), line
        # every page of every block is resident anonymous memory; the interpreter's file pages
        # (python, libc) are resident too, but no part of it
        assert line["rss_kb"] > line["rss_anon_kb"] >= line["allocated_mb"] * 1024, line
    # each block adds its 4 MB (1024 pages, and one for malloc's header), little else
    steps = [b["rss_anon_kb"] - a["rss_anon_kb"] for a, b in itertools.pairwise(work[:4])]
    assert all(4096 <= step <= 4096 + 256 for step in steps), steps
    # idle lines: nothing allocated, anonymous memory steady
    assert max(line["rss_anon_kb"] for line in work[3:]) - work[3]["rss_anon_kb"] <= 64


class Lines:
    """Stands in for the Protocol: collects the memory workload's lines."""

    def __init__(self) -> None:
        self.written: list[dict[str, Any]] = []

    def line(self, **fields: Any) -> None:
        self.written.append(fields)


def memory_with_blocks(count: int, mb_size: int = 16) -> tuple[Any, Any]:
    script = load_script("memory")
    memory = script.Memory(argparse.Namespace(mb_size=mb_size, max_memory=count * mb_size))
    for _ in range(count):
        memory.allocate(Lines())
    return script, memory


def test_memory_checksum_covers_every_page() -> None:
    """One byte per page, never zero: a page restored empty changes the CRC, wherever it is."""
    _, memory = memory_with_blocks(4)
    recorded = memory.restored()["sample_checksum"]
    assert recorded == f"{memory.checksum:08x}" == "dcdede6d"  # test_continuity's recording
    pages = 16 * MIB_PAGES
    assert all(block[::4096].count(0) == 0 for block in memory.blocks)
    for index, page in [(0, 0), (0, pages - 1), (2, 100), (3, pages - 1)]:
        block = memory.blocks[index]
        saved = block[page * 4096]
        block[page * 4096] = 0  # the page came back as zeros
        lost = memory.restored()["sample_checksum"]
        block[page * 4096] = saved
        assert lost != recorded, (index, page)
        if (index, page) == (2, 100):
            assert lost == "2e46acd0"  # test_continuity's lost page
    # two pages swapped (restored at each other's address) change it too
    block = memory.blocks[1]
    block[0], block[4096] = block[4096], block[0]
    assert memory.restored()["sample_checksum"] != recorded


def fake_status(
    monkeypatch: pytest.MonkeyPatch, script: Any, readings: list[tuple[int, int | None]]
) -> list[tuple[int, int | None]]:
    """memory_kb() returns these (VmRSS, RssAnon) readings in turn; returns what is left."""
    left = list(readings)
    monkeypatch.setattr(script, "memory_kb", lambda: left.pop(0))
    return left


def test_memory_restored_line_leaves_out_a_block_not_yet_logged(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    script, memory = memory_with_blocks(2)
    memory.logged_anon_kb = 40_000
    memory.pending = bytearray(16 * MIB_PAGES * 4096)  # frozen between allocation and its line
    fake_status(monkeypatch, script, [(62_000 + 16_384, 40_004 + 16_384)])
    monkeypatch.setattr(script, "lazy_restore_pending", lambda: pytest.fail("smaps read"))
    fields = memory.restored()
    assert (fields["blocks"], fields["rss_kb"], fields["rss_anon_kb"]) == (2, 62_000, 40_004)


def test_memory_restored_line_waits_for_a_lazy_restore(monkeypatch: pytest.MonkeyPatch) -> None:
    """Less anonymous memory than logged while userfaultfd still owes pages: wait, then count."""
    script, memory = memory_with_blocks(1)
    memory.logged_anon_kb = 24_000
    left = fake_status(monkeypatch, script, [(20_000, 21_000), (30_000, 24_004)])
    pending = [True, True, False]
    monkeypatch.setattr(script, "lazy_restore_pending", lambda: pending.pop(0))
    fields = memory.restored()
    assert (fields["rss_kb"], fields["rss_anon_kb"]) == (30_000, 24_004)
    assert pending == [] and left == []


def test_memory_restored_line_waits_for_a_lazy_restore_at_most_so_long(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    script, memory = memory_with_blocks(1)
    memory.logged_anon_kb = 24_000
    monkeypatch.setattr(script, "LAZY_WAIT_S", 0.3)
    fake_status(monkeypatch, script, [(20_000, 21_000), (20_000, 21_000)])
    checks: list[bool] = []
    monkeypatch.setattr(script, "lazy_restore_pending", lambda: checks.append(True) or True)
    started = time.monotonic()
    fields = memory.restored()
    assert len(checks) == 3 and time.monotonic() - started < 5
    assert fields["rss_anon_kb"] == 21_000  # measured anyway: the continuity rule judges it


def test_memory_restored_line_without_rssanon(monkeypatch: pytest.MonkeyPatch) -> None:
    script, memory = memory_with_blocks(1)
    memory.logged_anon_kb = None
    fake_status(monkeypatch, script, [(20_000, None)])
    assert memory.restored()["rss_anon_kb"] is None  # the rule then fails: "missing"


def test_lazy_restore_pending_reads_the_userfaultfd_flag(tmp_path: Path) -> None:
    script = load_script("memory")
    smaps = tmp_path / "smaps"
    mapping = (
        "7f0000000000-7f0001000000 rw-p 00000000 00:00 0\n"
        "Rss:               16384 kB\n"
        "VmFlags: rd wr mr mw me ac sd {}\n"
    )
    smaps.write_text(mapping.format("") + mapping.format("uw"))
    assert script.lazy_restore_pending(str(smaps)) is False
    smaps.write_text(mapping.format("") + mapping.format("um"))
    assert script.lazy_restore_pending(str(smaps)) is True
    assert script.lazy_restore_pending() is False  # this process: nothing registered
