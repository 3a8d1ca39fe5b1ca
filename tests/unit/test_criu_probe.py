"""module_utils/criu_probe.py: the network post-copy probe, round trip and verdicts.

CRIU and unshare are scripts. The fake `dump --lazy-pages` serves until the probe tells the
"restored" process to go; `lazy-pages` starts like a daemon; `restore` (behind a fake
`unshare` that drops its flags) logs success and waits for the process's answer. The
throwaway process is never really dumped: it answers for the restored one, so a correct
probe reads back what it wrote. FAKE_CRIU_MODE makes one side fail as CRIU does.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import tempfile
import textwrap
from pathlib import Path
from typing import Any

import criu_probe
import pytest
from criu_probe import PROBE_NAME, probe_lazy_pages_network
from criu_runner import CriuRunner
from fakes import criu_call_records, install_fake_criu, install_script
from processes import is_alive

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")

FAKE_CRIU = """\
    # FAKE_CRIU_MODE: ok | dump-fail | lazy-fail | restore-fail
    images = Path(opt("--images-dir"))
    log = Path(opt("--log-file"))
    probe = images.parent  # the probe's folder: source/, destination/, the logs
    if args[0] == "dump":
        if mode == "dump-fail":
            log.write_text(rlimit + "(00.237586) Error (criu/page-pipe.c:418): page-pipe: tee: 65536: Operation not permitted\\n")
            sys.exit(1)
        (images / "inventory.img").write_bytes(b"images but the pages")
        log.write_text(rlimit + "(00.079777) Starting lazy pages server\\n")
        restore_log = probe / "restore.log"
        wait_for(lambda: (probe / "go").exists()
                 or "Error" in (restore_log.read_text() if restore_log.exists() else ""))
        if not (probe / "go").exists():
            sys.exit(1)  # the destination never asked for a page
        with log.open("a") as out:
            out.write("(00.300000) Dumping finished successfully\\n")
        sys.exit(0)
    if args[0] == "lazy-pages":
        if mode == "lazy-fail":
            log.write_text(rlimit + "(00.001000) Error (criu/page-xfer.c:1300): page-xfer: Can't connect to server: Connection refused\\n")
            sys.exit(1)
        if not (images / "inventory.img").exists():
            log.write_text("(00.001000) Error (criu/cr-restore.c:1): the dump's images were not copied\\n")
            sys.exit(1)
        log.write_text("(00.000500) uffd: Received PID: 1\\n")
        Path(opt("--pidfile")).write_text(str(os.getpid()))  # a daemon that has ended
        sys.exit(0)
    if args[0] == "restore":
        if mode == "restore-fail":
            log.write_text(rlimit + "(00.010000) Error (criu/uffd.c:300): uffd: Can't register: Operation not permitted\\n")
            sys.exit(1)
        log.write_text("(00.020000) Restore finished successfully\\n")
        wait_for(lambda: (probe / "result").exists())
        sys.exit(0)
    sys.exit(2)
    """

FAKE_UNSHARE = textwrap.dedent(
    """\
    #!{python}
    import json, os, sys

    args = sys.argv[1:]
    with open(os.environ["FAKE_UNSHARE_CALLS"], "a") as calls:
        calls.write(json.dumps(args) + "\\n")
    while args and args[0].startswith("--"):
        args.pop(0)
    os.execv(args[0], args)
    """
)


@pytest.fixture
def fakes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    """(criu, unshare); the probe's temporary folders go under tmp_path/tmp."""
    monkeypatch.setenv("FAKE_UNSHARE_CALLS", str(tmp_path / "unshare.jsonl"))
    (tmp_path / "tmp").mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    return (
        install_fake_criu(tmp_path, monkeypatch, FAKE_CRIU),
        install_script(tmp_path / "bin" / "unshare", FAKE_UNSHARE.format(python=sys.executable)),
    )


def opt(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1]


def probe(fakes: tuple[Path, Path], cache_dir: Path | None = None) -> dict[str, Any]:
    criu, unshare = fakes
    return probe_lazy_pages_network(
        CriuRunner(str(criu)), str(unshare), 10, str(cache_dir) if cache_dir else None
    )


def test_a_working_round_trip(fakes: tuple[Path, Path], tmp_path: Path) -> None:
    verdict = probe(fakes)
    assert verdict["ok"] is True, verdict
    assert (verdict["side"], verdict["reason"]) == ("", "")
    assert verdict["name"] == PROBE_NAME == "lazy_pages_network"
    assert verdict["cached"] is False
    assert verdict["kernel"] == platform.release()
    assert verdict["criu_bin"] == str(fakes[0])
    assert 0 < verdict["duration_s"] < 10

    dump, lazy, restore = criu_call_records(tmp_path)
    # the source: the throwaway process dumped with --lazy-pages, serving a local port
    assert dump["args"][0] == "dump"
    port = opt(dump["args"], "--port")
    assert opt(dump["args"], "--address") == "127.0.0.1"
    assert "--lazy-pages" in dump["args"]
    source = Path(opt(dump["args"], "--images-dir"))
    assert source.name == "source"
    # the destination: a lazy-pages daemon fetching from it, over the copied images
    assert lazy["args"][0] == "lazy-pages"
    assert (opt(lazy["args"], "--address"), opt(lazy["args"], "--port")) == ("127.0.0.1", port)
    assert "--page-server" in lazy["args"] and "--daemon" in lazy["args"]
    destination = Path(opt(lazy["args"], "--images-dir"))
    assert destination == source.parent / "destination"
    # a lazy restore in a fresh pid namespace, attached (criu is that namespace's init)
    assert restore["args"][0] == "restore"
    assert "--lazy-pages" in restore["args"]
    assert "--restore-detached" not in restore["args"]
    assert Path(opt(restore["args"], "--images-dir")) == destination
    (unshare_call,) = (json.loads(line) for line in (tmp_path / "unshare.jsonl").open())
    assert unshare_call[:4] == ["--pid", "--fork", "--mount-proc", str(fakes[0])]

    # nothing is left behind: the throwaway process, CRIU, the probe's folder
    child = int(opt(dump["args"], "--tree"))
    assert not is_alive(child)
    assert not any(is_alive(call["pid"]) for call in criu_call_records(tmp_path))
    assert list((tmp_path / "tmp").iterdir()) == []


@pytest.mark.parametrize(
    ("mode", "side", "reason", "ran"),
    [
        (
            "dump-fail",
            "dump",
            "criu dump --lazy-pages (serving pages) failed: "
            "page-pipe: tee: 65536: Operation not permitted",
            ["dump"],
        ),
        (
            "lazy-fail",
            "lazy-pages",
            "criu lazy-pages --page-server (fetching pages) failed: "
            "page-xfer: Can't connect to server: Connection refused",
            ["dump", "lazy-pages"],
        ),
        (
            "restore-fail",
            "restore",
            "criu restore --lazy-pages failed: uffd: Can't register: Operation not permitted",
            ["dump", "lazy-pages", "restore"],
        ),
    ],
)
def test_the_failing_side_and_crius_reason(
    mode: str,
    side: str,
    reason: str,
    ran: list[str],
    fakes: tuple[Path, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("FAKE_CRIU_MODE", mode)
    verdict = probe(fakes)
    assert (verdict["ok"], verdict["side"], verdict["reason"]) == (False, side, reason)
    made = criu_call_records(tmp_path)
    assert [call["args"][0] for call in made] == ran
    # the dump left serving and the throwaway process are stopped
    assert not is_alive(int(opt(made[0]["args"], "--tree")))
    assert not any(is_alive(call["pid"]) for call in made)
    assert list((tmp_path / "tmp").iterdir()) == []


def test_without_unshare_nothing_runs(fakes: tuple[Path, Path], tmp_path: Path) -> None:
    verdict = probe_lazy_pages_network(CriuRunner(str(fakes[0])), None, 10, None)
    assert verdict["ok"] is False
    assert verdict["side"] == "setup"
    assert verdict["reason"] == "unshare (util-linux) is not installed"
    assert verdict["name"] == PROBE_NAME and verdict["cached"] is False
    assert criu_call_records(tmp_path) == []


def test_the_verdict_is_cached_per_criu_binary(
    fakes: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_CRIU_MODE", "dump-fail")
    cache = tmp_path / "cache" / "probes"  # made when missing
    first = probe(fakes, cache)
    assert first["cached"] is False
    (entry,) = cache.iterdir()
    assert entry.name.startswith(f"{PROBE_NAME}-") and entry.suffix == ".json"
    assert json.loads(entry.read_text())["reason"] == first["reason"]

    again = probe(fakes, cache)
    assert again == {**first, "cached": True}
    assert len(criu_call_records(tmp_path)) == 1  # the cached verdict ran nothing

    # another CRIU binary (an upgrade: other size, other mtime) is probed again
    criu = fakes[0]
    criu.write_text(criu.read_text() + "\n# upgraded\n")
    os.utime(criu, ns=(0, 1_000_000_000))
    monkeypatch.setenv("FAKE_CRIU_MODE", "ok")
    upgraded = probe(fakes, cache)
    assert upgraded["ok"] is True and upgraded["cached"] is False
    assert len(list(cache.iterdir())) == 2


@pytest.mark.parametrize("damage", ["{not json", "[]", '"ok"'])
def test_a_damaged_cache_entry_is_probed_again(
    damage: str, fakes: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_CRIU_MODE", "dump-fail")
    cache = tmp_path / "cache"
    first = probe(fakes, cache)
    (entry,) = cache.iterdir()
    entry.write_text(damage)
    again = probe(fakes, cache)
    assert again["cached"] is False and again["reason"] == first["reason"]
    assert len(criu_call_records(tmp_path)) == 2
    assert json.loads(entry.read_text())["reason"] == first["reason"]  # rewritten


def test_without_a_cache_dir_every_call_probes(
    fakes: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_CRIU_MODE", "dump-fail")
    assert probe(fakes)["cached"] is False
    assert probe(fakes)["cached"] is False
    assert len(criu_call_records(tmp_path)) == 2


def test_the_cache_key_follows_the_binary(tmp_path: Path) -> None:
    binary = tmp_path / "criu"
    binary.write_text("v1")
    key = criu_probe._cache_key(str(binary))
    assert key == criu_probe._cache_key(str(binary))  # stable
    assert len(key) == 16
    binary.write_text("v1.1")
    assert criu_probe._cache_key(str(binary)) != key
