"""library/predump_loop.py with a spot notice (trigger=notice): the watcher polls a fake
metadata service in a thread beside the pre-dumps, and the notice ends them - at once in
fixed mode, by the adaptive rule with the notice's remaining time as its budget otherwise.

CRIU is a small script writing each pre-dump's stats-dump (pages from the test); the
metadata service is scripts/fake_metadata.py on 127.0.0.1.
"""

from __future__ import annotations

import json
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import predump_loop
import pytest
from notice_fakes import run_module, serving
from test_predump_loop import stats_dump_image

FAKE_CRIU = textwrap.dedent(
    """\
    #!{python}
    import json, os, sys, time
    from pathlib import Path

    args = sys.argv[1:]
    opt = lambda name: args[args.index(name) + 1]
    images, log = Path(opt("--images-dir")), Path(opt("--log-file"))
    index = int(images.name)
    time.sleep(float(os.environ.get("FAKE_PREDUMP_S", "0")))
    log.write_text(f"(00.000000) pre-dump {{index}}\\n")
    pages = json.loads(os.environ["FAKE_PAGES"])
    written, skipped = pages[min(index, len(pages)) - 1]
    (images / "stats-dump").write_bytes(bytes.fromhex(os.environ["FAKE_IMAGE_" + str(written) + "_" + str(skipped)]))
    """
)

# The dirty set stays about the same: neither skip_goal nor not_shrinking would stop it
PAGES = [(17062, 0), (1600, 15462), (1590, 15472), (1580, 15482), (1570, 15492)]
POLICY = {
    "interval": 0.3,
    "min_pages": 0,
    "skip_goal_pct": 100.0,
    "max_growth_pct": 1000.0,
    "deadline_s": 0.0,
    "final_reserve_s": 1.0,
}


@pytest.fixture
def criu(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "bin" / "criu"
    path.parent.mkdir()
    path.write_text(FAKE_CRIU.format(python=sys.executable))
    path.chmod(0o755)
    monkeypatch.setenv("FAKE_PAGES", json.dumps(PAGES))
    for written, skipped in PAGES:
        monkeypatch.setenv(
            f"FAKE_IMAGE_{written}_{skipped}", stats_dump_image(written, skipped).hex()
        )
    monkeypatch.setenv("FAKE_PREDUMP_S", "0.1")
    return path


def loop(
    criu: Path, tmp_path: Path, url: str, capsys: Any, provider: str = "aws", **args: Any
) -> tuple[int, dict[str, Any]]:
    notice = {"provider": provider, "endpoint": url, "poll_s": 0.05, "timeout_s": 20}
    notice.update(args.pop("notice", {}))
    return run_module(
        predump_loop,
        {
            "pid": 1,
            "images_base": str(tmp_path / "images"),
            "criu_bin": str(criu),
            "mode": "fixed",
            "iterations": 8,
            **POLICY,
            **args,
            "notice": notice,
        },
        capsys,
    )


def later(seconds: float, action: Any) -> threading.Timer:
    timer = threading.Timer(seconds, action)
    timer.start()
    return timer


def test_fixed_pre_dumps_end_when_the_notice_comes(criu: Path, tmp_path: Path, capsys: Any) -> None:
    with serving("aws") as fake:
        timer = later(0.5, lambda: fake.notice(in_s=0))  # at the next whole second
        rc, result = loop(criu, tmp_path, fake.url, capsys)
        timer.join()
    assert rc == 0, result
    stop = result["stop"]
    assert stop["reason"] == "notice", stop
    assert 1 <= result["count"] < 8
    assert "the aws terminate notice came" in stop["detail"]
    assert stop["notice"]["provider"] == "aws"
    assert stop["notice"]["predumps_before"] <= result["count"]
    # the notice is recorded for the metrics, with when it was issued and seen
    items = [i["migration_metrics"] for i in result["results"]]
    notices = [m["data"] for m in items if m["phase"] == "notice"]
    assert len(notices) == 1
    notice = notices[0]
    assert notice == {**notice, **{k: result["notice"][k] for k in ("notice_at", "seen_at")}}
    assert notice["seen_during"] == "the pre-dumps"
    assert notice["watch"]["polls"] >= 2
    assert 0 <= notice["detection_delay_s"] < 0.5


def test_adaptive_pre_dumps_go_on_while_the_remaining_time_allows(
    criu: Path, tmp_path: Path, capsys: Any
) -> None:
    # Azure's notice gives 30 s; issued 27.5 s ago, 2.5 s remain: another pre-dump (0.3 s
    # apart) and the final phase (its cost + the 1 s reserve) fit at first, then no longer
    with serving("azure") as fake:
        timer = later(0.2, lambda: fake.notice(in_s=0, issued_ago_s=27.5))
        rc, result = loop(
            criu, tmp_path, fake.url, capsys, provider="azure", mode="adaptive", iterations=30
        )
        timer.join()
    assert rc == 0, result
    stop = result["stop"]
    assert stop["reason"] == "deadline", stop
    figures = stop["figures"]
    assert figures["deadline_s"] == 30.0  # the notice's own length: deadline_s was 0
    assert figures["clock"] == "spot notice"
    assert figures["remaining_s"] == pytest.approx(30.0 - figures["elapsed_s"], abs=0.01)
    assert 27.5 <= figures["elapsed_s"] < 30
    decisions = [it["decision"] for it in result["iterations"]]
    # before the notice no deadline rule; after it the clock runs from the notice, and a
    # pre-dump or more still fitted before the remaining time ran short
    after = [d for d in decisions if d.get("clock") == "spot notice"]
    assert len(after) >= 2 and [d["stop"] for d in after] == [False] * (len(after) - 1) + [True]
    assert all("deadline_s" not in d for d in decisions if d.get("clock") != "spot notice")


def test_an_explicit_deadline_is_the_budget_instead_of_the_notice(
    criu: Path, tmp_path: Path, capsys: Any
) -> None:
    with serving("aws") as fake:
        timer = later(0.2, lambda: fake.notice(in_s=0))
        rc, result = loop(
            criu, tmp_path, fake.url, capsys, mode="adaptive", deadline_s=2.0, iterations=20
        )
        timer.join()
    assert rc == 0, result
    assert result["stop"]["reason"] == "deadline"
    assert result["stop"]["figures"]["deadline_s"] == 2.0


def test_pre_dumps_done_before_the_notice_wait_for_it(
    criu: Path, tmp_path: Path, capsys: Any
) -> None:
    with serving("gcp") as fake:
        timer = later(2.0, lambda: fake.notice(in_s=0))
        started = time.monotonic()
        rc, result = loop(criu, tmp_path, fake.url, capsys, provider="gcp", iterations=2)
        timer.join()
    assert rc == 0, result
    assert result["count"] == 2
    assert time.monotonic() - started >= 2.0
    stop = result["stop"]
    assert stop["reason"] == "iterations"
    assert "then waited" in stop["detail"] and "for the gcp notice" in stop["detail"]
    assert stop["notice"]["waited_s"] > 0.5
    notice = next(i for i in result["results"] if i.get("notice"))["migration_metrics"]["data"]
    assert notice["seen_during"] == "the wait after the pre-dumps"
    assert notice["predumps_before"] == 2
    assert notice["notice_at_estimated"] is True  # GCP gives no issue time


def test_a_notice_whose_deadline_passed_ends_the_pre_dumps_at_once(
    criu: Path, tmp_path: Path, capsys: Any
) -> None:
    with serving("aws") as fake:
        issued = fake.notice(in_s=0, issued_ago_s=125)
        time.sleep(max(0.0, issued["publish_at"] - time.time()) + 0.05)
        rc, result = loop(criu, tmp_path, fake.url, capsys, mode="adaptive")
    assert rc == 0, result
    assert result["count"] == 1  # the final dump needs one to build on
    assert result["stop"]["reason"] == "notice"
    assert "had passed" in result["stop"]["detail"]
    assert result["notice"]["deadline_passed"] is True


def test_no_notice_in_time_fails_with_the_workload_left_running(
    criu: Path, tmp_path: Path, capsys: Any
) -> None:
    with serving("azure") as fake:
        rc, result = loop(
            criu, tmp_path, fake.url, capsys, provider="azure", iterations=2,
            notice={"timeout_s": 1.5},
        )  # fmt: skip
    assert rc == 1
    assert result["msg"].startswith(f"no azure notice at {fake.url} within 1.5 s")
    assert "2 pre-dump(s) done; the workload keeps running on" in result["msg"]
    assert result["count"] == 2  # what was done is reported
    assert result["watch"]["polls"] > 5


def test_without_a_notice_the_loop_is_unchanged(criu: Path, tmp_path: Path, capsys: Any) -> None:
    rc, result = run_module(
        predump_loop,
        {"pid": 1, "images_base": str(tmp_path / "images"), "criu_bin": str(criu),
         "mode": "fixed", "iterations": 2, **POLICY},
        capsys,
    )  # fmt: skip
    assert rc == 0, result
    assert "notice" not in result and "notice" not in result["stop"]
    assert [i["migration_metrics"]["phase"] for i in result["results"]] == ["predump"] * 2
