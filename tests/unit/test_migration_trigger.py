"""When to migrate: the preflight's trigger rules (module_utils/migration_trigger.py), the
trigger=ready conditions (module_utils/trigger_conditions.py, library/workload_conditions.py)
and the notice_watch module's states, each against a real process or a fake metadata service.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import notice_watch
import pytest
import workload_conditions
from experiment_plan import SETTINGS, load_setting_defaults, plan_experiment
from migration_trigger import inventory_provider, plan_trigger
from notice_fakes import closed_port_url, run_module, serving
from trigger_conditions import Conditions, Reading, all_held, track, waiting_for
from workload_registry import load_registry

REPO = Path(__file__).resolve().parents[2]
DEFAULTS = load_setting_defaults()
LAB = {"lab": ["source", "destination"], "source": ["source"], "destination": ["destination"]}
AWS = {"aws": ["n0", "n1"], "source": ["n0"], "destination": ["n1"]}


def settings(**overrides: Any) -> dict[str, Any]:
    names = (
        "trigger",
        "migrate_after_s",
        "migrate_after_lines",
        "migrate_at_rss_mb",
        "notice_provider",
        "notice_endpoint",
    )
    return {**{name: DEFAULTS[name] for name in names}, **overrides}


# -- the settings ---------------------------------------------------------------------------


def test_the_trigger_settings_have_their_defaults_and_rules() -> None:
    for name in (
        "trigger", "migrate_after_s", "migrate_after_lines", "migrate_at_rss_mb",
        "notice_provider", "notice_endpoint", "notice_poll_s", "notice_timeout_s",
        "notice_rebalance",
    ):  # fmt: skip
        assert name in SETTINGS and name in DEFAULTS, name
    assert DEFAULTS["trigger"] == "ready"  # today's behaviour
    assert DEFAULTS["notice_provider"] == DEFAULTS["notice_endpoint"] == "auto"
    assert SETTINGS["trigger"].choices == ("ready", "notice")
    assert SETTINGS["notice_provider"].choices == ("auto", "aws", "gcp", "azure")


def test_the_labs_point_the_endpoint_at_the_fake() -> None:
    import yaml

    for name, address in (("lab", "10.77.0.1"), ("lab_guest", "10.79.0.1")):
        data = yaml.safe_load((REPO / "group_vars" / f"{name}.yml").read_text())
        assert data["notice_endpoint"].startswith(f"http://{address}:"), name


# -- the preflight ---------------------------------------------------------------------------


def test_auto_provider_comes_from_the_inventory() -> None:
    assert inventory_provider(AWS)[0] == "aws"
    assert inventory_provider({"aws_spot": ["x"]})[0] == "aws"
    assert inventory_provider({"gcp": ["x"]})[0] == "gcp"
    assert inventory_provider({"azure_eu": ["x"]})[0] == "azure"
    assert inventory_provider({"aws": []})[0] is None  # empty groups name nothing
    assert inventory_provider({"awsome": ["x"]})[0] is None
    provider, reason = inventory_provider({"aws": ["a"], "gcp": ["b"]})
    assert provider is None and "several clouds (aws, gcp)" in reason


def test_notice_on_aws_resolves_provider_and_endpoint() -> None:
    values = settings(trigger="notice")
    assert plan_trigger(values, AWS) == []
    assert values["notice_provider"] == "aws"
    assert values["notice_endpoint"] == "http://169.254.169.254"


def test_auto_provider_in_the_lab_is_refused_with_the_reason() -> None:
    errors = plan_trigger(settings(trigger="notice"), LAB)
    assert len(errors) == 1
    assert errors[0].startswith("notice_provider=auto: the inventory names no cloud")
    assert "notice_provider=aws|gcp|azure" in errors[0]


@pytest.mark.parametrize(
    "endpoint",
    [
        "auto",
        "http://169.254.169.254",
        "http://metadata.google.internal/",
        "http://[fd00:ec2::254]",
    ],
)
def test_a_lab_never_uses_the_real_metadata_service(endpoint: str) -> None:
    errors = plan_trigger(
        settings(trigger="notice", notice_provider="gcp", notice_endpoint=endpoint), LAB
    )
    assert len(errors) == 1 and "a lab inventory (lab) must never contact" in errors[0]


def test_the_fake_in_the_lab_is_fine() -> None:
    values = settings(
        trigger="notice", notice_provider="azure", notice_endpoint="http://10.77.0.1:18169"
    )
    assert plan_trigger(values, LAB) == []


@pytest.mark.parametrize(
    ("endpoint", "expected"),
    [
        ("10.77.0.1:18169", "is not an http:// URL"),
        ("ftp://10.77.0.1", "is not an http:// URL"),
        ("http://10.77.0.1:99999", "invalid port"),
        ("http://10.77.0.1:1?x=1", "without ? or #"),
    ],
)
def test_bad_endpoints_are_refused(endpoint: str, expected: str) -> None:
    errors = plan_trigger(
        settings(trigger="notice", notice_provider="aws", notice_endpoint=endpoint), AWS
    )
    assert any(expected in error for error in errors), errors


def test_conditions_apply_to_trigger_ready_only() -> None:
    errors = plan_trigger(
        settings(trigger="notice", notice_provider="aws", migrate_after_s=5, migrate_at_rss_mb=64),
        AWS,
    )
    assert errors == [
        "migrate_after_s=5, migrate_at_rss_mb=64 applies to trigger=ready; with trigger=notice "
        "the notice decides when to migrate (set them to 0)"
    ]


def test_a_memory_size_the_workload_never_reaches_is_refused() -> None:
    errors = plan_trigger(settings(migrate_at_rss_mb=600), LAB, {"max_memory": 512})
    assert errors == [
        "migrate_at_rss_mb=600 MB would never hold: the workload stops growing at max_memory=512 MB"
    ]
    assert plan_trigger(settings(migrate_at_rss_mb=500), LAB, {"max_memory": 512}) == []


def test_the_preflight_runs_the_trigger_rules() -> None:
    registry = load_registry(REPO / "workloads")
    plan = plan_experiment(
        {"trigger": "notice", "notice_provider": "auto"}, registry, LAB, lambda h, n: None
    )
    assert any(
        e.startswith("notice_provider=auto: the inventory names no cloud") for e in plan.errors
    )
    plan = plan_experiment({"trigger": "whenever"}, registry, LAB, lambda h, n: None)
    assert any("trigger='whenever' is not one of: ready, notice" in e for e in plan.errors)


# -- the trigger=ready conditions -------------------------------------------------------------


def test_each_condition_is_recorded_when_it_first_holds() -> None:
    conditions = Conditions(after_s=2.0, after_lines=5, at_rss_mb=100)
    held: dict[str, Any] = {}
    track(conditions, Reading(at=10.0, after_ready_s=1.0, lines=6, rss_anon_kb=50 * 1024), held)
    assert set(held) == {"migrate_after_lines"} and held["migrate_after_lines"]["at"] == 10.0
    assert waiting_for(conditions, Reading(10.0, 1.0, 6, 50 * 1024), held) == [
        "migrate_after_s=2.0 (now 1.0 s)",
        "migrate_at_rss_mb=100 (now 50.0 MB)",
    ]
    track(conditions, Reading(at=11.5, after_ready_s=2.5, lines=8, rss_anon_kb=120 * 1024), held)
    assert all_held(conditions, held)
    assert held["migrate_after_lines"]["at"] == 10.0  # the first time, not the last
    assert held["migrate_at_rss_mb"] == {"wanted": 100, "reached": 120.0, "at": 11.5}
    assert not Conditions().active and all_held(Conditions(), {})


GROWER = textwrap.dedent(
    """\
    import os, sys, time
    work = sys.argv[1]
    blocks = []
    with open(os.path.join(work, ".ready.tmp"), "w") as f:
        f.write(f"ready:{os.getpid()}")
    os.rename(os.path.join(work, ".ready.tmp"), os.path.join(work, "checkpoint_ready"))
    log = open(os.path.join(work, "progress.log"), "a", buffering=1)
    for seq in range(1000):
        blocks.append(bytearray(b"x" * (8 << 20)))  # 8 MB of anonymous memory per line
        log.write(f'{{"seq": {seq}}}\\n')
        time.sleep(0.1)
    """
)


@pytest.fixture
def grower(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    """A small workload that writes a progress line and 8 MB of memory every 0.1 s."""
    script = tmp_path / "grower.py"
    script.write_text(GROWER)
    work = tmp_path / "work"
    work.mkdir()
    proc = subprocess.Popen([sys.executable, str(script), str(work)])
    deadline = time.monotonic() + 10
    while not (work / "checkpoint_ready").exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    yield proc.pid, work
    proc.kill()
    proc.wait()


def test_workload_conditions_waits_for_lines_and_memory(
    grower: tuple[int, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    pid, work = grower
    rc, result = run_module(
        workload_conditions,
        {"pid": pid, "working_dir": str(work), "after_lines": 5, "at_rss_mb": 48, "timeout_s": 20},
        capsys,
    )
    assert rc == 0, result
    held = result["held"]
    assert held["migrate_after_lines"]["reached"] >= 5
    assert held["migrate_at_rss_mb"]["reached"] >= 48
    data = result["migration_metrics"]["data"]
    assert result["migration_metrics"]["phase"] == "trigger"
    assert data["kind"] == "ready"
    assert data["conditions"] == {
        "migrate_after_s": 0.0,
        "migrate_after_lines": 5,
        "migrate_at_rss_mb": 48,
    }
    assert data["held_at"] == max(h["at"] for h in held.values())
    assert data["after_ready_s"] > 0.3  # 5 lines at 0.1 s each, after checkpoint_ready


def test_workload_conditions_runs_the_time_from_checkpoint_ready(
    grower: tuple[int, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    pid, work = grower
    started = time.time()
    rc, result = run_module(
        workload_conditions, {"pid": pid, "working_dir": str(work), "after_s": 0.8}, capsys
    )
    assert rc == 0, result
    ready_at = (work / "checkpoint_ready").stat().st_mtime
    held = result["held"]["migrate_after_s"]
    assert held["reached"] >= 0.8 and held["at"] >= ready_at + 0.8
    assert time.time() - started < 3


def test_workload_conditions_fails_saying_where_the_workload_stands(
    grower: tuple[int, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    pid, work = grower
    rc, result = run_module(
        workload_conditions,
        {"pid": pid, "working_dir": str(work), "at_rss_mb": 100000, "timeout_s": 0.5},
        capsys,
    )
    assert rc == 1
    assert result["msg"].startswith("the workload did not reach migrate_at_rss_mb=100000 (now ")
    assert "within 0.5 s; it keeps running on the source" in result["msg"]


def test_workload_conditions_in_check_mode_does_not_wait(
    grower: tuple[int, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    pid, work = grower
    rc, result = run_module(
        workload_conditions,
        {"pid": pid, "working_dir": str(work), "after_s": 600},
        capsys,
        check_mode=True,
    )
    assert rc == 0 and "migration_metrics" not in result
    assert result["msg"].startswith("check mode: not waiting; migrate_after_s=600.0 (now ")


def test_workload_conditions_fails_when_the_workload_ends(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    work = tmp_path / "work"
    work.mkdir()
    (work / "checkpoint_ready").write_text("ready:1")
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    rc, result = run_module(
        workload_conditions, {"pid": proc.pid, "working_dir": str(work), "after_lines": 3}, capsys
    )
    assert (
        rc == 1 and "ended while waiting for migrate_after_lines=3 (now 0 lines)" in result["msg"]
    )


# -- the notice_watch module ------------------------------------------------------------------


def test_notice_watch_returns_the_notice_for_the_metrics(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with serving("azure") as fake:
        fake.notice(in_s=0.3)
        rc, result = run_module(
            notice_watch,
            {"provider": "azure", "endpoint": fake.url, "poll_s": 0.1, "timeout_s": 10},
            capsys,
        )
    assert rc == 0, result
    notice = result["notice"]
    assert notice["provider"] == "azure" and notice["event_id"]
    metrics = result["migration_metrics"]
    assert metrics["phase"] == "notice"
    assert metrics["data"]["notice_at"] == notice["notice_at"]
    assert metrics["data"]["watch"]["polls"] >= 1
    assert metrics["data"]["seen_during"] == "the wait"


def test_notice_watch_times_out_with_what_it_got(capsys: pytest.CaptureFixture[str]) -> None:
    with serving("gcp") as fake:
        rc, result = run_module(
            notice_watch,
            {"provider": "gcp", "endpoint": fake.url, "poll_s": 0.1, "timeout_s": 1},
            capsys,
        )
    assert rc == 1
    assert result["msg"].startswith(f"no gcp notice at {fake.url} within 1 s")
    assert result["msg"].endswith("the workload keeps running where it is")


def test_notice_watch_warns_when_the_deadline_had_passed(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    warned: list[str] = []
    monkeypatch.setattr(notice_watch.AnsibleModule, "warn", lambda self, text: warned.append(text))
    with serving("aws") as fake:
        fake.notice(in_s=0, issued_ago_s=125)
        rc, result = run_module(
            notice_watch, {"provider": "aws", "endpoint": fake.url, "poll_s": 0.1}, capsys
        )
    assert rc == 0
    assert result["notice"]["deadline_passed"] is True
    assert "migrating at once" in result["msg"]
    assert warned == [result["notice"]["message"]]


@pytest.mark.parametrize(
    ("provider", "fault", "expected"),
    [
        ("aws", "refuse_token", "refuses the request: the IMDSv2 session token request"),
        ("aws", "garbage", "answers something that is not the protocol"),
        ("gcp", "no_flavor", "not a GCP metadata server"),
        ("azure", "error500", "answers with an unexpected status"),
    ],
)
def test_notice_watch_probe_refuses_a_bad_endpoint_clearly(
    provider: str, fault: str, expected: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with serving(provider) as fake:
        fake.fault(fault)
        rc, result = run_module(
            notice_watch, {"state": "probed", "provider": provider, "endpoint": fake.url}, capsys
        )
    assert rc == 1
    assert result["msg"].startswith(f"the {provider} metadata service at {fake.url} ")
    assert expected in result["msg"]
    assert f"scripts/fake_metadata.py serve --provider {provider}" in result["msg"]


def test_notice_watch_probe_of_an_endpoint_that_does_not_answer(
    capsys: pytest.CaptureFixture[str],
) -> None:
    url = closed_port_url()
    rc, result = run_module(
        notice_watch,
        {"state": "probed", "provider": "aws", "endpoint": url, "request_timeout_s": 0.5},
        capsys,
    )
    assert rc == 1 and f"at {url} does not answer" in result["msg"]


def test_notice_watch_probe_and_check_mode(capsys: pytest.CaptureFixture[str]) -> None:
    with serving("aws") as fake:
        rc, probed = run_module(
            notice_watch, {"state": "probed", "provider": "aws", "endpoint": fake.url}, capsys
        )
        rc2, checked = run_module(
            notice_watch, {"provider": "aws", "endpoint": fake.url}, capsys, check_mode=True
        )
    assert rc == rc2 == 0
    assert probed["probe"]["pending_notice"] is None
    assert "HTTP 404" in probed["probe"]["answer"]
    assert probed["migration_metrics"]["phase"] == "notice_probe"
    assert checked["msg"] == "check mode: probed once, not waiting for a notice"


def test_notice_watch_acknowledges_an_azure_event(capsys: pytest.CaptureFixture[str]) -> None:
    with serving("azure") as fake:
        fake.notice(in_s=0)
        _, watched = run_module(
            notice_watch, {"provider": "azure", "endpoint": fake.url, "poll_s": 0.1}, capsys
        )
        event = watched["notice"]["event_id"]
        rc, result = run_module(
            notice_watch,
            {"state": "acknowledged", "provider": "azure", "endpoint": fake.url, "event_id": event},
            capsys,
        )
        acks = fake.snapshot()["acks"]
    assert rc == 0 and result["changed"] is True
    assert result["migration_metrics"]["phase"] == "notice_ack"
    assert acks[0]["event_ids"] == [event]
