"""library/predump_loop.py run the way Ansible runs it, with CRIU replaced by a small script.

The fake CRIU writes, for pre-dump N, a `stats-dump` image whose page counts come from the
test (FAKE_PAGES), encoded as CRIU 4.2.1 frames it (module_utils/criu_stats.py), so the
loop, the stop rule and the returned metrics are exercised without soft-dirty tracking.
Transfers go through the real rsync backend to `localhost`-free stand-ins: an `rsync` on
PATH that copies into a folder and prints rsync's --stats lines.
"""

from __future__ import annotations

import itertools
import json
import struct
import sys
import textwrap
from pathlib import Path
from typing import Any

import predump_loop
import pytest
from criu_stats import IMG_SERVICE_MAGIC, STATS_MAGIC, summarize_stats_image
from experiment_plan import load_setting_defaults
from fakes import criu_calls, install_fake_criu, install_script, run_ansible_module


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def stats_dump_image(written: int, skipped: int, frozen_us: int = 66000) -> bytes:
    """A stats-dump image as CRIU writes it: magics, then one framed stats_entry{dump}."""
    fields = {
        1: 100,
        2: frozen_us,
        3: 40000,
        4: 30000,
        5: written + skipped,
        6: skipped,
        7: written,
    }
    dump = b"".join(_varint(number << 3) + _varint(value) for number, value in fields.items())
    entry = _varint(1 << 3 | 2) + _varint(len(dump)) + dump
    return struct.pack("<III", IMG_SERVICE_MAGIC, STATS_MAGIC, len(entry)) + entry


def test_the_encoder_matches_the_decoder(tmp_path: Path) -> None:
    image = tmp_path / "stats-dump"
    image.write_bytes(stats_dump_image(1582, 15480))
    dump = summarize_stats_image(image)["dump"]
    assert (dump["pages_written"], dump["pages_skipped_parent"]) == (1582, 15480)
    assert dump["frozen_s"] == 0.066


FAKE_CRIU = """\
    images = Path(opt("--images-dir"))
    log = Path(opt("--log-file"))
    index = int(images.name)
    if index == int(os.environ.get("FAKE_CRIU_FAIL_AT", "0")):
        log.write_text("(00.010000) Error (criu/mem.c:720): Can't dump page with parent\\n")
        sys.exit(1)
    log.write_text(f"(00.000000) pre-dump {{index}} log\\n")
    written, skipped = json.loads(os.environ["FAKE_PAGES"])[index - 1]
    (images / "stats-dump").write_bytes(bytes.fromhex(json.loads(os.environ["FAKE_IMAGES"])[index - 1]))
    (images / "pages-1.img").write_bytes(b"x" * 4096 * min(written, 8))
    sys.exit(0)
    """

# rsync stand-in: copies the sent folder under $FAKE_DEST and prints rsync's --stats lines.
FAKE_RSYNC = textwrap.dedent(
    """\
    #!{python}
    import os, shutil, sys
    from pathlib import Path

    source = Path(sys.argv[-2])
    dest = Path(os.environ["FAKE_DEST"]) / source.relative_to("/")
    shutil.copytree(source, dest, dirs_exist_ok=True)
    size = sum(p.stat().st_size for p in source.rglob("*") if p.is_file())
    files = sum(1 for p in source.rglob("*") if p.is_file())
    print(f"Number of regular files transferred: {{files}}")
    print(f"Total file size: {{size:,}} bytes")
    print(f"Total transferred file size: {{size:,}} bytes")
    print(f"Total bytes sent: {{size + 100:,}}")
    """
)


@pytest.fixture
def fakes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    criu = install_fake_criu(tmp_path, monkeypatch, FAKE_CRIU)
    install_script(criu.parent / "rsync", FAKE_RSYNC.format(python=sys.executable))
    monkeypatch.setenv("FAKE_DEST", str(tmp_path / "destination"))
    monkeypatch.setenv("PATH", f"{criu.parent}:{Path(sys.executable).parent}:/usr/bin:/bin")
    return {"criu": criu, "base": tmp_path / "images", "dest": tmp_path / "destination"}


def set_pages(monkeypatch: pytest.MonkeyPatch, pages: list[tuple[int, int]]) -> None:
    monkeypatch.setenv("FAKE_PAGES", json.dumps(pages))
    monkeypatch.setenv("FAKE_IMAGES", json.dumps([stats_dump_image(w, s).hex() for w, s in pages]))


# The stop rule's options as the role passes them: the experiment's predump_* settings, here
# the suite's defaults (group_vars/all.yml).
DEFAULTS = load_setting_defaults()
SEED_POLICY_ARGS = {
    "iterations": DEFAULTS["predump_iterations"],
    "interval": DEFAULTS["predump_interval"],
    "mode": DEFAULTS["predump_mode"],
    "min_pages": DEFAULTS["predump_min_pages"],
    "skip_goal_pct": DEFAULTS["predump_skip_goal_pct"],
    "max_growth_pct": DEFAULTS["predump_max_growth_pct"],
    "deadline_s": DEFAULTS["predump_deadline_s"],
    "final_reserve_s": DEFAULTS["predump_final_reserve_s"],
}


def run_module(
    fakes: dict[str, Path], capsys: pytest.CaptureFixture[str], **args: Any
) -> tuple[int, dict]:
    """predump_loop with the fake criu: pid 1, the fakes' images base and the seed's stop-rule
    options unless `args` say otherwise (an option given as None is left out)."""
    defaults = {"pid": 1, "images_base": str(fakes["base"]), "criu_bin": str(fakes["criu"])}
    merged = {**SEED_POLICY_ARGS, **defaults, **args}
    return run_ansible_module(
        predump_loop, {key: value for key, value in merged.items() if value is not None}, capsys
    )


PAGES = [(17062, 0), (1582, 15480), (1590, 15472), (1600, 15462)]


def test_fixed_mode_runs_every_pre_dump_on_its_parent(
    fakes: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    set_pages(monkeypatch, PAGES)
    rc, result = run_module(fakes, capsys, pid=16001, iterations=3, interval=0.0)
    assert rc == 0, result
    assert result["changed"] is True
    assert result["count"] == 3
    assert result["stop"]["reason"] == "iterations"
    argvs = criu_calls(tmp_path)
    assert [argv[0] for argv in argvs] == ["pre-dump"] * 3
    for index, argv in enumerate(argvs, start=1):
        assert argv[argv.index("--images-dir") + 1] == str(fakes["base"] / str(index))
        assert "--track-mem" in argv
        assert argv[argv.index("--tree") + 1] == "16001"
        if index == 1:
            assert "--prev-images-dir" not in argv
        else:
            assert argv[argv.index("--prev-images-dir") + 1] == f"../{index - 1}"
    assert [it["pages_written"] for it in result["iterations"]] == [17062, 1582, 1590]
    assert [it["pages_skipped"] for it in result["iterations"]] == [0, 15480, 15472]
    assert all(it["transfer"] is None for it in result["iterations"])
    # one metrics item per pre-dump (no transfers asked for), and the stop decision
    phases = [item["migration_metrics"]["phase"] for item in result["results"]]
    assert phases == ["predump"] * 3
    first = result["results"][0]["migration_metrics"]["data"]
    assert first["index"] == 1 and first["stats"]["pages_written"] == 17062
    assert first["started_at"] <= first["finished_at"]
    assert result["migration_metrics"] == {"phase": "predump_stop", "data": result["stop"]}


def test_logs_are_gathered_in_order_into_one_file(
    fakes: dict[str, Path], monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    set_pages(monkeypatch, PAGES)
    rc, result = run_module(fakes, capsys, iterations=3, interval=0.0)
    assert rc == 0
    log = Path(result["log_file"])
    assert log == fakes["base"] / "criu-pre-dump.log"
    text = log.read_text()
    assert (
        text.index("pre-dump 1 log") < text.index("pre-dump 2 log") < text.index("pre-dump 3 log")
    )
    assert text.count("===== criu pre-dump") == 3
    # the per-iteration logs are gone (the results folder keeps only the gathered one)
    assert not list(fakes["base"].glob(".criu-pre-dump-*.log"))


def test_adaptive_mode_stops_by_rule_and_says_why(
    fakes: dict[str, Path], monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    set_pages(monkeypatch, PAGES)
    rc, result = run_module(
        fakes,
        capsys,
        iterations=8,
        interval=0.0,
        mode="adaptive",
        skip_goal_pct=100.0,
        max_growth_pct=0.0,
    )
    assert rc == 0, result
    # 17062 -> 1582 shrinks; 1590 grows: stop after the third
    assert result["count"] == 3
    stop = result["stop"]
    assert stop["reason"] == "not_shrinking" and stop["mode"] == "adaptive"
    assert stop["figures"]["growth_pct"] == pytest.approx(0.506, abs=0.001)
    assert stop["policy"]["max_growth_pct"] == 0.0
    decisions = [it["decision"]["stop"] for it in result["iterations"]]
    assert decisions == [False, False, True]


def test_each_pre_dump_is_sent_at_once_with_its_stage(
    fakes: dict[str, Path], monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    set_pages(monkeypatch, PAGES)
    rc, result = run_module(
        fakes,
        capsys,
        iterations=2,
        interval=0.0,
        transfer={
            "method": "rsync",
            "destination": "10.79.0.22",
            "ssh_key": "/etc/criu-lab/id_ed25519",
            "cipher": "aes128-gcm@openssh.com",
        },
    )
    assert rc == 0, result
    items = [item["migration_metrics"] for item in result["results"]]
    assert [(m["phase"], m["data"].get("stage")) for m in items] == [
        ("predump", None),
        ("transfer", "predump-1"),
        ("predump", None),
        ("transfer", "predump-2"),
    ]
    sent = items[1]["data"]
    assert sent["method"] == "rsync" and sent["bytes"] > 0 and sent["iteration"] == 1
    assert sent["dest_paths"] == [str(fakes["base"] / "1")]
    # the folder arrived whole at the same path under the stand-in destination
    assert (fakes["dest"] / str(fakes["base"] / "2").lstrip("/") / "stats-dump").is_file()
    assert result["iterations"][0]["transfer"]["bytes"] == sent["bytes"]


def test_interval_is_start_to_start(
    fakes: dict[str, Path], monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    set_pages(monkeypatch, PAGES)
    rc, result = run_module(fakes, capsys, iterations=3, interval=0.4)
    assert rc == 0
    starts = [item["migration_metrics"]["data"]["started_at"] for item in result["results"]]
    gaps = [later - earlier for earlier, later in itertools.pairwise(starts)]
    assert all(0.38 <= gap < 0.8 for gap in gaps), gaps


def test_a_failed_pre_dump_fails_naming_it_and_keeps_what_was_done(
    fakes: dict[str, Path], monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    set_pages(monkeypatch, PAGES)
    monkeypatch.setenv("FAKE_CRIU_FAIL_AT", "2")
    rc, result = run_module(fakes, capsys, iterations=3, interval=0.0)
    assert rc == 1 and result["failed"] is True
    assert result["msg"].startswith("criu pre-dump 2 failed on ")
    assert "Can't dump page with parent" in result["msg"]
    assert result["count"] == 1
    assert [item["migration_metrics"]["phase"] for item in result["results"]] == ["predump"]
    assert "pre-dump 1 log" in Path(result["log_file"]).read_text()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"mode": "smart"}, "value of mode must be one of: fixed, adaptive, got: smart"),
        ({"iterations": None}, "missing required arguments: iterations"),
        (
            {"transfer": {"method": "ftp"}},
            "value of method must be one of: rsync, efs, s3, ebs, got: ftp found in transfer",
        ),
        (
            {"transfer": {"method": "s3"}},
            "pre-dump transfers with s3 need transfer.s3_bucket, transfer.s3_prefix, "
            "transfer.destination, aws.tools_dir",
        ),
        (
            {"transfer": {"method": "ebs"}},
            "pre-dump transfers with ebs need transfer.ebs_mount_path, transfer.ebs_dir",
        ),
        (
            {"transfer": {"method": "rsync"}},
            "pre-dump transfers with rsync need transfer.destination",
        ),
        (
            {"transfer": {"methd": "rsync"}},
            "Unsupported parameters for (basic.py) module: transfer.methd",
        ),
    ],
)
def test_bad_arguments_are_refused(
    extra: dict[str, Any], message: str, fakes: dict[str, Path], tmp_path: Path, capsys: Any
) -> None:
    rc, result = run_module(fakes, capsys, **extra)
    assert rc == 1
    assert result["msg"].startswith(message)
    assert not (tmp_path / "calls.jsonl").exists()
