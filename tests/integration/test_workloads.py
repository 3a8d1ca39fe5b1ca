"""Every workload migrated for real in the local lab through migrate.yml (issue 5).

Small parameters that still use each workload's real parts: a real redis-server with a live
TCP client, a real ffmpeg (both video modes), a real torch model, numpy. Each run asserts the
workload's continuity evidence in metrics.json (`verification.checks`) and in the results
folder (`dest/progress.log`, the process tree in `workload_status_*.txt`). Bad input is
refused before anything starts: by the preflight (a bad parameter) and by the node checks
(a redis port already in use on the source).

Other people migrate in the same lab at the same time: redis gets a port away from 6379
(derived from this process id), and these tests stop only what they started.

`pytest -s` prints one line per migration: image size, dump / transfer / restore times,
downtime and the continuity evidence.
"""

from __future__ import annotations

import json
import os
import re
import shlex
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import REPO, PlaybookRun, on_host, run_playbook
from helpers import (
    assert_continuous,
    assert_refused_before_any_host,
    assert_refused_before_the_workload,
    end_workload,
    host_output,
    progress,
)

pytestmark = pytest.mark.lab

# Ports of this test process's own redis-servers (the seed's 6379 is left to everyone else).
REDIS_PORT = 16379 + os.getpid() % 500
BUSY_PORT = REDIS_PORT + 500
# Shorter than the seed's 6 s observation window: enough lines after the restore.
FAST = {"post_restore_capture_s": 4}

CASES: dict[str, dict[str, Any]] = {
    "memory": {"workload": "memory", "mb_size": 16, "interval": 0.5, "max_memory": 128},
    "matmul": {"workload": "matmul", "matrix_size": 256, "iterations": 0, "interval": 0.2},
    "redis": {
        "workload": "redis",
        "redis_port": REDIS_PORT,
        "num_keys": 5000,
        "value_size": 256,
    },
    "ml_training": {
        "workload": "ml_training",
        "model_size": "small",
        "batch_size": 32,
        "epochs": 0,
        "dataset_size": 2000,
    },
    "video-live": {
        "workload": "video",
        "video_mode": "live",
        "resolution": "320x240",
        "fps": 15,
        "duration": 120,
    },
    "video-file": {
        "workload": "video",
        "video_mode": "file",
        "resolution": "320x240",
        "fps": 15,
        "duration": 120,
    },
    "dataproc": {
        "workload": "dataproc",
        "num_rows": 20000,
        "num_cols": 10,
        "operations": 0,
        "interval": 0.2,
    },
}

# The checks the issue names for each workload (besides every declared continuity rule).
KEY_CHECKS = {
    "memory": ["equal:blocks", "equal:sample_checksum", "close:rss_anon_kb"],
    "matmul": ["equal:iteration", "equal:fixed_checksum", "equal:inputs_checksum"],
    "redis": ["equal:dataset_checksum", "equal:client_id", "equal:keys", "equal:writes"],
    "ml_training": ["equal:global_step", "equal:params_checksum", "equal:optimizer_checksum"],
    "video-live": ["equal:ffmpeg_pid", "increasing:segments", "ffprobe:segment_*.ts"],
    "video-file": ["equal:ffmpeg_pid", "increasing:segments", "ffprobe:video.mp4"],
    "dataproc": ["equal:op_count", "equal:fixed_checksum"],
}
# Children the whole tree must keep (pid and parent) across the migration.
CHILDREN = {"redis": "redis-server", "video-live": "ffmpeg", "video-file": "ffmpeg"}

TREE_LINE = re.compile(r"^\s+(?:`- )?(\d+) \(([^)]*)\) ppid=(\d+) ")


def declaration(name: str) -> dict[str, Any]:
    return yaml.safe_load((REPO / "workloads" / f"{name}.yml").read_text())


def process_tree(status_file: Path) -> list[tuple[int, str, int]]:
    """(pid, name, ppid) of every process in a workload_status snapshot's tree."""
    text = status_file.read_text()
    section = text.split("process tree\n", 1)[1].split("\n\n", 1)[0]
    return [
        (int(m.group(1)), m.group(2), int(m.group(3)))
        for line in section.splitlines()
        if (m := TREE_LINE.match(line))
    ]


def split_at_restore(
    lines: list[dict[str, Any]],
) -> tuple[dict[str, Any], dict[str, Any], list[dict[str, Any]]]:
    """(last line on the source, the destination's restored line, the work lines after it)."""
    last_source = [line for line in lines if line["host"] == "source"][-1]
    restored_at = next(
        i
        for i, line in enumerate(lines)
        if line["host"] == "destination" and line.get("event") == "restored"
    )
    after = [line for line in lines[restored_at + 1 :] if "event" not in line]
    return last_source, lines[restored_at], after


def workload_pids(host: str, pattern: str) -> list[str]:
    """Pids on `host` whose command line matches `pattern` (the probe itself left out)."""
    out = host_output(host, f"pgrep -af {shlex.quote(pattern)} || true")
    return [line.split()[0] for line in out.split("\\n") if line.strip() and "pgrep" not in line]


def stop_left_over(run: PlaybookRun) -> None:
    """After a failed run the suite keeps the workload running where it is (on the source
    after a rollback): end this test's own workload through its protocol (flag removed)."""
    for results in run.results_dirs() if run.results_root else []:
        metrics_file = results / "metrics.json"
        if metrics_file.exists():
            experiment = json.loads(metrics_file.read_text())["experiment"]["id"]
            end_workload(experiment, "source", "destination")


# -- the per-migration table (pytest -s) ----------------------------------------------------

TABLE: list[str] = []


@pytest.fixture(scope="module", autouse=True)
def evidence_table() -> Iterator[None]:
    yield
    if TABLE:
        print("\n\nper workload, one lab run each (checkpoint_strategy=full, rsync):")
        print("\n".join(TABLE))


def table_row(case: str, metrics: dict[str, Any]) -> str:
    phases = metrics["phases"]
    dump, transfer, restore = phases["final_dump"], phases["transfer"], phases["restore"]
    verification = metrics["verification"]
    checks = [
        f"{c['name']} ({c['detail']})"
        for c in verification["checks"]
        if c["name"] not in ("seq", "restored_line")
    ]
    seq = f"seq {verification['last_source_seq']} -> {verification['first_destination_seq']}"
    return (
        f"{case:<12} image {dump['bytes'] / 1e6:7.2f} MB ({dump['pages_written']} pages)  "
        f"dump {dump['duration_s']:.3f}s (frozen {dump['frozen_s']:.3f}s)  "
        f"transfer {transfer['duration_s']:.3f}s ({transfer['bytes'] / 1e6:.2f} MB)  "
        f"restore {restore['duration_s']:.3f}s  downtime {metrics['downtime_s']:.2f}s  "
        f"app downtime {metrics['app_downtime_s']:.2f}s\n"
        f"{'':<12} {seq}; " + "; ".join(checks)
    )


# -- every workload, migrated --------------------------------------------------------------


@pytest.mark.parametrize("case", list(CASES))
def test_workload_migrates_with_its_state_continuous(lab: Path, tmp_path: Path, case: str) -> None:
    extravars = {**CASES[case], **FAST}
    name = extravars["workload"]
    run = run_playbook(tmp_path, "migrate.yml", extravars)
    if run.rc != 0:
        stop_left_over(run)
    assert run.rc == 0, run.stdout[-6000:]
    results = run.only_results_dir()
    metrics = run.metrics()
    assert metrics["status"] == "ok"
    assert metrics["workload"]["type"] == name
    params = {k: v for k, v in CASES[case].items() if k != "workload"}
    assert {k: metrics["workload"]["params"][k] for k in params} == params

    verification = metrics["verification"]
    assert_continuous(verification)
    assert verification["same_pid"] is True
    checks = {c["name"]: c for c in verification["checks"]}
    rules = declaration(name)["continuity"]
    declared = (
        [f"equal:{field}" for field in rules["equal"]]
        + [f"close:{field}" for field in rules["close"]]
        + [f"increasing:{field}" for field in rules["increasing"]]
    )
    assert set(checks) >= {"seq", "restored_line", *declared, *KEY_CHECKS[case]}
    assert all(check["ok"] for check in checks.values()), checks

    # The restored line holds what the rules compared, recomputed on the destination; the
    # work goes on after it with the same counters moving forward.
    lines = progress(results)
    last_source, restored, after = split_at_restore(lines)
    assert after, "no work after the restore"
    assert lines[-1].get("event") == "finished"
    for field in rules["equal"]:
        assert restored[field] == last_source[field], field
        assert (
            f"before={last_source[field]!r} after={restored[field]!r}"
            in (checks[f"equal:{field}"]["detail"])
        )
    for field in rules["increasing"]:
        assert restored[field] >= last_source[field], field
    # The source's own progress.log ends where the destination's picked up.
    assert progress(results, "source")[-1] == last_source

    # The whole process tree was restored: the same pids with the same parents.
    before = process_tree(results / "source" / "workload_status_pre_dump.txt")
    after_tree = process_tree(results / "dest" / "workload_status_post_restore.txt")
    assert before == after_tree
    assert before[0][0] == metrics["workload"]["source_pid"] == verification["restored_pid"]
    if case in CHILDREN:
        children = [p for p in before if p[1] == CHILDREN[case]]
        assert len(children) == 1 and children[0][2] == before[0][0], before

    check_workload(case, results, metrics, last_source, restored, after)
    TABLE.append(table_row(case, metrics))

    # Nothing of this experiment runs any more, on either host.
    experiment = metrics["experiment"]["id"]
    for host in ("source", "destination"):
        assert workload_pids(host, f"standalone.py --working-dir .*/{experiment}") == []


def check_workload(
    case: str,
    results: Path,
    metrics: dict[str, Any],
    last_source: dict[str, Any],
    restored: dict[str, Any],
    after: list[dict[str, Any]],
) -> None:
    """What each workload's continuity means beyond the rules."""
    if case == "redis":
        # The dataset just before the dump (the client's model, logged before its writes are
        # sent) is the dataset on the destination (a full SCAN of the restored server).
        assert restored["dataset_checksum"] == last_source["dataset_checksum"]
        assert restored["model_checksum"] == last_source["dataset_checksum"]
        assert restored["keys"] == CASES["redis"]["num_keys"]
        # Writes go on over the same connection (CLIENT ID unchanged), reads are checked.
        assert all(line["client_id"] == last_source["client_id"] for line in after)
        assert after[-1]["writes"] > restored["writes"] > 0
        assert after[-1]["reads"] > restored["reads"]
        status = (results / "dest" / "workload_status_post_restore.txt").read_text()
        assert f"127.0.0.1:{REDIS_PORT} ESTABLISHED" in status  # the client's connection
        assert f"127.0.0.1:{REDIS_PORT} -> 0.0.0.0:0 LISTEN" in status
    elif case == "ml_training":
        # Parameters and Adam's state equal before the next step; the step count continues.
        assert restored["global_step"] == last_source["global_step"]
        assert after[-1]["global_step"] > restored["global_step"]
        assert after[-1]["params_checksum"] != restored["params_checksum"]  # training goes on
    elif case == "memory":
        assert after[-1]["blocks"] >= restored["blocks"]
        assert restored["allocated_mb"] == restored["blocks"] * CASES["memory"]["mb_size"]
    elif case in ("matmul", "dataproc"):
        counter = "iteration" if case == "matmul" else "op_count"
        assert after[-1][counter] > restored[counter]
    elif case.startswith("video"):
        verification = metrics["verification"]
        assert verification["artifacts_ok"] is True
        (artifacts,) = verification["artifacts"]
        files = artifacts["files"]
        assert files and all(f["ok"] and f["frames"] > 0 for f in files)
        assert restored["ffmpeg_running"] is True
        assert all(line["ffmpeg_pid"] == last_source["ffmpeg_pid"] for line in after)
        # more segments (fragments) finished after the restore, numbered on from the source's
        assert after[-1]["segments"] > last_source["segments"]
        assert after[-1]["last_segment"] > last_source["last_segment"]
        if case == "video-live":
            assert artifacts["check"] == "ffprobe:segment_*.ts"
            names = [f["name"] for f in files]
            # numbering continues without a gap, and the segment ffmpeg wrote when it was
            # frozen (finished after the restore) decodes too
            assert names == [f"segment_{i:05d}.ts" for i in range(len(names))]
            assert f"segment_{last_source['last_segment'] + 1:05d}.ts" in names
            # the one ffmpeg writes is skipped (unless it closed it between list and check)
            assert artifacts["skipped_being_written"] in ([], [f"segment_{len(names):05d}.ts"])
        else:
            assert artifacts["check"] == "ffprobe:video.mp4"
            (mp4,) = files
            assert mp4["name"] == "video.mp4" and mp4["bytes_checked"] > 0
            # fragments are 2 s at 15 fps: whole fragments only
            assert mp4["frames"] % 30 == 0 and mp4["frames"] >= 30
            assert artifacts["skipped_being_written"] == []


# -- bad input ---------------------------------------------------------------------------------


def test_bad_workload_input_is_refused_before_any_host(lab: Path, tmp_path: Path) -> None:
    run = run_playbook(
        tmp_path, "migrate.yml", {"workload": "video", "resolution": "12x", "fps": -30}
    )
    assert_refused_before_any_host(
        run,
        (
            "workload video: resolution='12x' does not match the form",
            "workload video: fps=-30 is below the minimum 1",
            "nothing ran on any host",
        ),
    )


def test_redis_port_in_use_on_the_source_is_refused_before_the_workload(
    lab: Path, tmp_path: Path
) -> None:
    pid_file = f"/var/lib/criu-migration/busy-port-{BUSY_PORT}.pid"
    # A plain listener on 127.0.0.1, gone by itself after 10 minutes should the test die.
    listener = (
        "import os, socket, time; s = socket.socket(); "
        "s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); "
        f"s.bind(('127.0.0.1', {BUSY_PORT})); s.listen(); "
        f"open({pid_file!r}, 'w').write(str(os.getpid())); time.sleep(600)"
    )
    started = on_host(
        "source",
        f"mkdir -p /var/lib/criu-migration && rm -f {pid_file} && "
        f"setsid -f python3 -c {shlex.quote(listener)} </dev/null >/dev/null 2>&1 && "
        f"for i in $(seq 50); do test -s {pid_file} && break; sleep 0.1; done && cat {pid_file}",
    )
    assert started.returncode == 0, started.stdout + started.stderr
    listener_pid = started.stdout.split("(stdout)", 1)[-1].strip()
    assert listener_pid.isdigit(), started.stdout
    try:
        run = run_playbook(
            tmp_path,
            "migrate.yml",
            {**CASES["redis"], "redis_port": BUSY_PORT},
        )
        assert run.rc != 0
        message = (
            f"port {BUSY_PORT} is already in use on source (needed by workload redis redis_port)"
        )
        assert message in run.stdout, run.stdout[-4000:]
        metrics = run.metrics()
        assert metrics["failure"]["host"] == "source"
        assert message in metrics["failure"]["msg"]
        # refused before the workload started: no start task, no pid, no redis-server
        assert_refused_before_the_workload(metrics)
        assert workload_pids("source", f"redis-server 127.0.0.1:{BUSY_PORT}") == []
        assert workload_pids("source", f"redis_standalone.py .*--redis-port {BUSY_PORT}") == []
        # the listener is still the one this test started
        assert workload_pids("source", f"127.0.0.1., {BUSY_PORT}[)]") == [listener_pid]
    finally:
        on_host("source", f"kill {listener_pid}; rm -f {pid_file}")
