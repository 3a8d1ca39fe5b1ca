"""Link profiles and their shaping plans: config/link_profiles.yaml, module_utils/link_profiles.py,
module_utils/link_shaping.py, the delay stage's logic (module_utils/delay_stage.py), finding lab
hosts (module_utils/lab_links.py), the link probe, library/lab_link.py's refusals and clean-up,
the preflight's checks and metrics.json's environment.link."""

from __future__ import annotations

import json
import math
import re
import socket
import threading
from pathlib import Path
from typing import Any

import delay_stage
import lab_link
import lab_links
import link_probe
import pytest
import yaml
from experiment_plan import SETTINGS, load_setting_defaults, plan_experiment
from lab_layout import INIT_MARKER
from link_filters import link_profile
from link_profiles import (
    FIGURES,
    NO_PROFILE,
    PROFILES_FILE,
    ProfileError,
    load_profiles,
    parse_profiles,
    profile_from_dict,
    profile_names,
    profiles_markdown,
    resolve,
    sources_markdown,
)
from link_shaping import (
    FLOW_BUCKETS,
    PairLinks,
    Shape,
    apply_commands,
    ceiling_flag,
    htb_burst_bytes,
    leftover_qdiscs,
    mbit,
    netem_probe_argv,
    queue_bytes,
    remove_commands,
    shape_for,
    stage_link_name,
)
from metrics_report import PairRecord, build_metrics
from workload_registry import load_registry

REPO = Path(__file__).resolve().parents[2]
PROFILES = load_profiles()
PAIR = PairLinks("10.77.0.11", "10.77.0.12", "crlab1", "crlab2", "crlab-d1")


def figure_source(
    url: str = "https://example.org/page", says: str = "it says so"
) -> list[dict[str, str]]:
    return [{"url": url, "says": says}]


def profile_doc(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "description": "a link",
        "rtt_ms": 10.0,
        "jitter_ms": 1.0,
        "rate_mbit": 1000,
        "per_flow_mbit": 500,
        "sources": {figure: figure_source() for figure in FIGURES},
    }
    body.update(overrides)
    return {"profiles": {"test": body}}


# -- the profiles file -----------------------------------------------------------------------


def test_the_profiles_file_has_the_scopes_and_sizes_the_suite_answers_for() -> None:
    for scope in ("same_az", "cross_az", "cross_region"):
        assert scope in PROFILES
    # two instance sizes, each as baseline and burst
    for size in ("large", "xlarge2"):
        baseline, burst = PROFILES[f"{size}_baseline"], PROFILES[f"{size}_burst"]
        assert baseline.rate_mbit < burst.rate_mbit
        assert baseline.rtt_ms == burst.rtt_ms
    # round trips grow with the distance
    assert (
        PROFILES["same_az"].rtt_ms < PROFILES["cross_az"].rtt_ms < PROFILES["cross_region"].rtt_ms
    )


def test_every_figure_names_a_page_or_says_it_is_an_assumption() -> None:
    raw = yaml.safe_load(PROFILES_FILE.read_text())["profiles"]
    for name, profile in PROFILES.items():
        for figure in FIGURES:
            source = raw[name]["sources"][figure]
            if isinstance(source, dict):
                assert source["assumption"].strip(), f"{name}.{figure}"
                assert figure in profile.assumptions
            else:
                assert all(
                    entry["url"].startswith("https://") or entry["url"].startswith("http://")
                    for entry in source
                )
                assert figure not in profile.assumptions


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (
            {"sources": {f: figure_source() for f in FIGURES if f != "rtt_ms"}},
            "sources.rtt_ms: no source",
        ),
        (
            {
                "sources": {
                    **{f: figure_source() for f in FIGURES},
                    "rate_mbit": figure_source(url="ftp://x"),
                }
            },
            "not an http",
        ),
        (
            {
                "sources": {
                    **{f: figure_source() for f in FIGURES},
                    "jitter_ms": figure_source(says=""),
                }
            },
            "says is empty",
        ),
        ({"rtt_ms": "fast"}, "rtt_ms must be a number"),
        ({"rate_mbit": True}, "rate_mbit must be a number"),
        ({"rtt_ms": -1}, "rtt_ms=-1 is outside"),
        ({"bandwidth": 10}, "unknown keys bandwidth"),
        ({"sources": "the internet"}, "sources must map"),
    ],
)
def test_a_profile_without_a_usable_figure_or_source_is_refused(
    overrides: dict[str, Any], expected: str
) -> None:
    with pytest.raises(ProfileError, match=re.escape(expected)):
        parse_profiles(profile_doc(**overrides))


def test_an_assumption_is_accepted_and_marked_in_the_docs_table() -> None:
    sources = {
        **{f: figure_source() for f in FIGURES},
        "jitter_ms": {"assumption": "a guess, from the spread"},
    }
    profiles = parse_profiles(profile_doc(sources=sources))
    assert profiles["test"].assumptions == ["jitter_ms"]
    table = profiles_markdown(profiles)
    assert "| `test` | 10 | 1 (assumption) | 1000 | 500 | a link |" in table
    assert "jitter_ms 1 ms: **assumption** - a guess, from the spread" in sources_markdown(profiles)


def test_the_reserved_name_none_and_a_file_without_profiles_are_refused() -> None:
    with pytest.raises(ProfileError, match="reserved"):
        parse_profiles({"profiles": {"none": profile_doc()["profiles"]["test"]}})
    with pytest.raises(ProfileError, match="profiles:"):
        parse_profiles({"links": []})


def test_an_unknown_profile_is_refused_naming_the_known_ones() -> None:
    with pytest.raises(ProfileError) as caught:
        resolve("cross-az", PROFILES)
    message = str(caught.value)
    assert "cross-az" in message and "none" in message
    for name in PROFILES:
        assert name in message
    with pytest.raises(ProfileError, match="cross_az"):
        link_profile("moon")


def test_a_profile_survives_the_trip_to_the_module_as_a_dict() -> None:
    data = link_profile("cross_region")
    assert data["name"] == "cross_region" and data["rtt_ms"] == PROFILES["cross_region"].rtt_ms
    assert profile_from_dict(data) == PROFILES["cross_region"]
    with pytest.raises(ProfileError, match="rtt_ms"):
        profile_from_dict({**data, "rtt_ms": None})


def test_the_docs_show_the_profiles_table_as_generated() -> None:
    docs = (REPO / "docs" / "links.md").read_text()
    assert profiles_markdown(PROFILES) in docs, (
        "docs/links.md: scripts/link_profiles_table.py --write"
    )
    assert sources_markdown(PROFILES) in docs


# -- the setting -----------------------------------------------------------------------------

REGISTRY = load_registry(str(REPO / "workloads"))
DEFAULTS = load_setting_defaults()
LAB = {"source": ["source"], "destination": ["destination"], "lab": ["source", "destination"]}
HOSTVARS = {"source": {"ansible_host": "10.77.0.11"}, "destination": {"ansible_host": "10.77.0.12"}}


def plan_errors(variables: dict[str, Any], groups: dict[str, list[str]]) -> list[str]:
    return plan_experiment(
        variables, REGISTRY, groups, lambda host, name: HOSTVARS.get(host, {}).get(name), DEFAULTS
    ).errors


def test_the_setting_takes_none_and_every_profile_with_none_by_default() -> None:
    assert (
        SETTINGS["lab_link_profile"].choices == profile_names() == (NO_PROFILE, *sorted(PROFILES))
    )
    assert DEFAULTS["lab_link_profile"] == NO_PROFILE
    assert plan_errors({}, LAB) == []
    assert plan_errors({"lab_link_profile": "cross_az"}, LAB) == []


def test_the_preflight_refuses_an_unknown_profile_naming_the_known_ones() -> None:
    errors = plan_errors({"lab_link_profile": "mars"}, LAB)
    assert (
        len(errors) == 1 and "mars" in errors[0] and "cross_az" in errors[0] and "none" in errors[0]
    )


def test_the_preflight_refuses_a_profile_on_hosts_that_are_not_lab_hosts() -> None:
    cloud = {"source": ["source"], "destination": ["destination"], "aws": ["source", "destination"]}
    errors = plan_errors({"lab_link_profile": "cross_az"}, cloud)
    assert len(errors) == 1
    assert (
        "never a real network" in errors[0] and "destination, source are not lab hosts" in errors[0]
    )
    assert plan_errors({"lab_link_profile": "none"}, cloud) == []


def test_each_lab_inventory_swaps_only_the_profile() -> None:
    for scope in ("same_az", "cross_az", "cross_region"):
        folder = REPO / "inventories" / f"lab_{scope}"
        assert (folder / "hosts.yml").is_symlink()
        assert (folder / "hosts.yml").readlink() == Path("../lab/hosts.yml")
        assert yaml.safe_load((folder / "group_vars" / "lab.yml").read_text()) == {
            "lab_link_profile": scope
        }


# -- the plans -------------------------------------------------------------------------------


def test_the_delay_is_half_the_round_trip_each_way_less_what_the_path_takes() -> None:
    profile = PROFILES["cross_region"]
    shape = shape_for(profile)
    assert shape.delay_ms == pytest.approx(profile.rtt_ms / 2)
    assert shape.jitter_ms == pytest.approx(profile.jitter_ms / math.sqrt(2))
    assert shape_for(profile, 0.7).delay_ms == pytest.approx((profile.rtt_ms - 0.7) / 2)
    assert shape_for(PROFILES["same_az"], 5.0).delay_ms == 0.0
    assert not shape.split_flows  # 5000 Mbit/s per flow over a 1250 Mbit/s link: nothing to split
    assert shape_for(PROFILES["large_burst"]).split_flows


def test_stage_plan_rates_the_receiving_links_and_redirects_both_directions_through_the_tap() -> (
    None
):
    shape = Shape(delay_ms=0.6, jitter_ms=0.05, rate_mbit=1250, per_flow_mbit=5000)
    commands = [" ".join(argv) for argv in apply_commands("tc", PAIR, shape, "stage")]
    # htb on each receiving link, its class at the rate, only the peer's packets classified
    for receiver, sender in (("crlab2", "10.77.0.11"), ("crlab1", "10.77.0.12")):
        assert f"tc qdisc add dev {receiver} root handle 1: htb r2q 1000" in commands
        assert any(
            f"class add dev {receiver} parent 1: classid 1:1 htb rate 1250000kbit ceil 1250000kbit"
            in c
            for c in commands
        )
        assert (
            f"tc filter add dev {receiver} parent 1: prio 1 protocol ip u32 match ip src {sender}/32 flowid 1:1"
            in commands
        )
        assert any(
            c.startswith(f"tc qdisc add dev {receiver} parent 1:1 handle 10: bfifo limit ")
            for c in commands
        )
    # the pair's packets into the stage, and out of it by destination
    assert (
        "tc filter add dev crlab1 parent ffff: prio 1 protocol ip u32 match ip src 10.77.0.11/32 "
        "match ip dst 10.77.0.12/32 action mirred egress redirect dev crlab-d1"
    ) in commands
    assert (
        "tc filter add dev crlab-d1 parent ffff: prio 1 protocol ip u32 match ip dst 10.77.0.12/32 "
        "action mirred egress redirect dev crlab2"
    ) in commands
    assert (
        "tc filter add dev crlab-d1 parent ffff: prio 1 protocol ip u32 match ip dst 10.77.0.11/32 "
        "action mirred egress redirect dev crlab1"
    ) in commands
    for link in ("crlab1", "crlab2", "crlab-d1"):
        assert f"tc qdisc add dev {link} ingress" in commands
    assert not any("netem" in c for c in commands)


def test_netem_plan_delays_under_each_leaf_and_needs_no_stage() -> None:
    shape = Shape(delay_ms=17.35, jitter_ms=0.04, rate_mbit=1250, per_flow_mbit=None)
    commands = [" ".join(argv) for argv in apply_commands("tc", PAIR, shape, "netem")]
    leaves = [c for c in commands if "netem" in c]
    assert len(leaves) == 2
    assert all("netem limit 100000 delay 17.350ms 0.040ms distribution normal" in c for c in leaves)
    assert not any("mirred" in c or "ingress" in c for c in commands)
    no_jitter = Shape(delay_ms=1.0, jitter_ms=0.0, rate_mbit=None, per_flow_mbit=None)
    assert "distribution" not in " ".join(apply_commands("tc", PAIR, no_jitter, "netem")[2])
    with pytest.raises(ValueError, match="unknown shaping method"):
        apply_commands("tc", PAIR, shape, "iptables")


def test_a_per_flow_limit_below_the_rate_splits_the_flows_over_hashed_leaves() -> None:
    shape = Shape(delay_ms=0.6, jitter_ms=0.0, rate_mbit=10000, per_flow_mbit=5000)
    commands = [" ".join(argv) for argv in apply_commands("tc", PAIR, shape, "stage")]
    leaves = [c for c in commands if "dev crlab2 parent 1:1 classid" in c]
    assert len(leaves) == FLOW_BUCKETS
    assert all("ceil 5000000kbit" in c for c in leaves)
    assert "classid 1:10 " in leaves[0] and "classid 1:1f " in leaves[-1]
    assert (
        "tc filter add dev crlab2 parent 1: prio 1 handle 2: protocol ip u32 divisor 16" in commands
    )
    assert (
        "tc filter add dev crlab2 parent 1: prio 1 protocol ip u32 ht 800:: match ip src 10.77.0.11/32 "
        "hashkey mask 0x000f0000 at 20 link 2:"
    ) in commands
    assert (
        "tc filter add dev crlab2 parent 1: prio 1 protocol ip u32 ht 2:f: match u32 0 0 flowid 1:1f"
        in commands
    )


def test_removal_deletes_both_qdiscs_of_both_links_and_the_netem_probe_stays_in_a_throwaway_namespace() -> (
    None
):
    assert remove_commands("tc", ["crlab1", "crlab2"]) == [
        ["tc", "qdisc", "del", "dev", "crlab1", "root"],
        ["tc", "qdisc", "del", "dev", "crlab1", "ingress"],
        ["tc", "qdisc", "del", "dev", "crlab2", "root"],
        ["tc", "qdisc", "del", "dev", "crlab2", "ingress"],
    ]
    assert netem_probe_argv("unshare", "tc")[:3] == ["unshare", "--net", "tc"]
    assert "lo" in netem_probe_argv("unshare", "tc")


def test_leftovers_are_any_qdisc_but_a_bare_veths_noqueue() -> None:
    assert leftover_qdiscs("qdisc noqueue 0: root refcnt 2 \n") == []
    shown = "qdisc htb 1: root refcnt 2 r2q 1000\nqdisc bfifo 10: parent 1:1 limit 1Mb\nqdisc ingress ffff: parent ffff:fff1\n"
    assert leftover_qdiscs(shown) == ["htb", "bfifo", "ingress"]


def test_sizes_names_and_the_ceiling_flag() -> None:
    assert mbit(0.75) == "750kbit" and mbit(1250) == "1250000kbit"
    assert queue_bytes(1) == 256 * 1024 and queue_bytes(10_000) == 12_500_000
    assert htb_burst_bytes(1) == 128 * 1024 and htb_burst_bytes(10_000) == 2_500_000
    assert stage_link_name("crlab", 1) == "crlab-d1"
    assert stage_link_name("crshape", 12) == "crshape-d12"
    with pytest.raises(ValueError, match="15"):
        stage_link_name("abcdefghijklm", 100)
    assert ceiling_flag(10_000, 3000.0) is True
    assert ceiling_flag(750, 3000.0) is False
    assert ceiling_flag(750, None) is None


# -- the delay stage's logic -----------------------------------------------------------------


def test_the_delay_line_holds_each_frame_for_its_delay_in_arrival_order() -> None:
    line = delay_stage.DelayLine(delay_s=0.010)
    line.push(0.000, b"a")
    line.push(0.001, b"b")
    assert line.next_release() == pytest.approx(0.010)
    assert line.pop_due(0.0099) == []
    assert line.pop_due(0.0105) == [b"a"]
    assert line.pop_due(0.020) == [b"b"]
    assert line.next_release() is None and line.held_bytes == 0


def test_jitter_never_reorders_and_is_reproducible_from_its_seed() -> None:
    def releases(seed: int) -> list[float]:
        line = delay_stage.DelayLine(delay_s=0.005, jitter_s=0.004, seed=seed)
        for index in range(500):
            line.push(index * 0.0001, b"x")
        return [release for release, _frame in line.queue]

    first = releases(7)
    assert first == sorted(first)
    assert first == releases(7) and first != releases(8)
    assert min(first[i] - i * 0.0001 for i in range(500)) >= 0.0


def test_a_full_delay_line_drops_and_counts() -> None:
    line = delay_stage.DelayLine(delay_s=0.001, max_bytes=10)
    assert line.push(0.0, b"123456")
    assert not line.push(0.0, b"123456")
    for frame in line.pop_due(1.0):
        line.released(frame)
    assert line.counters == {
        "frames_in": 2, "frames_out": 1, "bytes_out": 6, "dropped": 1, "max_held_bytes": 6,
    }  # fmt: skip
    with pytest.raises(ValueError, match="negative"):
        delay_stage.DelayLine(delay_s=-1)


# -- finding lab hosts -----------------------------------------------------------------------


def fake_proc(tmp_path: Path, inits: dict[int, list[str]]) -> str:
    for pid, argv in inits.items():
        (tmp_path / str(pid)).mkdir()
        (tmp_path / str(pid) / "cmdline").write_bytes(b"\0".join(a.encode() for a in argv) + b"\0")
    (tmp_path / "self").mkdir()
    return str(tmp_path)


REAPER = ["/usr/bin/python3", "-c", "reaper", INIT_MARKER]


def fake_runner(addresses: dict[int, str], peers: dict[int, int], links: str):
    calls: list[list[str]] = []

    def run(argv: list[str]) -> tuple[int, str, str]:
        calls.append(argv)
        if argv[:3] == ["ip", "-o", "link"]:
            return 0, links, ""
        pid = int(re.search(r"--net=.*/(\d+)/ns/net", argv[1]).group(1))
        if "addr" in argv:
            return 0, f"2: eth0    inet {addresses[pid]}/24 brd 10.77.0.255 scope global eth0\n", ""
        return 0, f"2: eth0@if{peers[pid]}: <BROADCAST,UP> mtu 1500 qdisc noqueue\n", ""

    return run, calls


LINKS = (
    "5: crlab0: <BROADCAST,UP> mtu 1500 qdisc noqueue state UP\n"
    "7: crlab1@if6: <BROADCAST,UP> mtu 1500 qdisc noqueue master crlab0 state UP\n"
    "9: crlab2@if8: <BROADCAST,UP> mtu 1500 qdisc noqueue master crlab0 state UP\n"
    "11: eth9: <BROADCAST,UP> mtu 1500 qdisc fq state UP\n"
)


def test_lab_hosts_are_found_by_their_namespace_address_and_veth(tmp_path: Path) -> None:
    proc = fake_proc(
        tmp_path,
        {
            100: [*REAPER, "/work/.lab", "source", "init"],
            200: [*REAPER, "/work/.lab", "destination", "init"],
            300: ["sleep", "100"],
        },
    )
    run, _calls = fake_runner({100: "10.77.0.11", 200: "10.77.0.12"}, {100: 7, 200: 9}, LINKS)
    found, errors = lab_links.find_lab_hosts(
        ["10.77.0.11", "10.77.0.12"], run, "nsenter", "ip", proc
    )
    assert errors == []
    source = found["10.77.0.11"]
    assert (source.name, source.link, source.bridge, source.prefix, source.index) == (
        "source",
        "crlab1",
        "crlab0",
        "crlab",
        1,
    )
    assert source.lab_dir == "/work/.lab" and source.netns == "/proc/100/ns/net"
    assert found["10.77.0.12"].link == "crlab2"


def test_an_address_no_lab_namespace_has_is_no_lab_host(tmp_path: Path) -> None:
    proc = fake_proc(tmp_path, {100: [*REAPER, "/work/.lab", "source", "init"]})
    run, _calls = fake_runner(
        {100: "10.77.0.11"}, {100: 11}, LINKS
    )  # its veth is not on a lab bridge
    found, errors = lab_links.find_lab_hosts(
        ["10.77.0.11", "192.0.2.7"], run, "nsenter", "ip", proc
    )
    assert found == {}
    assert len(errors) == 2 and all("is not a host of a local lab" in e for e in errors)


def test_ip_outputs_are_parsed() -> None:
    assert lab_links.parse_addresses("2: eth0    inet 10.77.0.11/24 brd x scope global eth0") == [
        "10.77.0.11"
    ]
    assert lab_links.parse_peer_index("2: eth0@if45: <BROADCAST> mtu 1500") == 45
    assert lab_links.parse_peer_index("1: lo: <LOOPBACK> mtu 65536") is None
    assert lab_links.parse_links(LINKS)[7] == ("crlab1", "crlab0")
    assert lab_links.parse_links(LINKS)[5] == ("crlab0", "")


# -- the module: refusals and clean-up -------------------------------------------------------


class FakeModule:
    def __init__(self, **params: Any) -> None:
        self.params = {
            "measure_ceiling": "auto",
            "verify": False,
            "seed": None,
            "owner": "t",
            **params,
        }

    def get_bin_path(self, name: str, opt_dirs: list[str] | None = None) -> str:
        return name


def host(address: str, link: str, index: int, lab_dir: str) -> lab_links.LabHostLink:
    return lab_links.LabHostLink(
        name=link,
        lab_dir=lab_dir,
        init_pid=1,
        address=address,
        link=link,
        bridge="crlab0",
        prefix="crlab",
        index=index,
    )


def test_the_module_refuses_addresses_that_are_not_lab_hosts(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(
        lab_link, "find_lab_hosts", lambda *a, **k: ({}, ["192.0.2.7 is not a host of a local lab"])
    )
    shaper = lab_link.Shaper(FakeModule())
    with pytest.raises(
        lab_link.ShapingError, match=re.escape("never a real network: 192.0.2.7 is not a host")
    ):
        shaper.present(PROFILES["cross_az"], "192.0.2.7", "192.0.2.8")


@pytest.fixture
def pair_shaper(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> lab_link.Shaper:
    """A Shaper whose lab is one pair, 10.77.0.11 (crlab1) and 10.77.0.12 (crlab2), its
    state under tmp_path."""
    hosts = {
        "10.77.0.11": host("10.77.0.11", "crlab1", 1, str(tmp_path)),
        "10.77.0.12": host("10.77.0.12", "crlab2", 2, str(tmp_path)),
    }
    monkeypatch.setattr(lab_link, "find_lab_hosts", lambda *a, **k: (hosts, []))
    return lab_link.Shaper(FakeModule())


def test_a_shaping_that_fails_midway_is_removed_again(
    pair_shaper: lab_link.Shaper, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ran: list[str] = []

    def run(argv: list[str], timeout: float = 30.0) -> tuple[int, str, str]:
        ran.append(" ".join(argv))
        if argv[:3] == ["unshare", "--net", "tc"]:
            return 0, "", ""  # this fake kernel has netem
        if "filter" in argv and "crlab1" in argv:
            return 2, "", "RTNETLINK answers: Invalid argument"
        return 0, "", ""

    monkeypatch.setattr(pair_shaper, "run", run)
    with pytest.raises(
        lab_link.ShapingError, match=r"failed and was removed again.*Invalid argument"
    ):
        pair_shaper.present(PROFILES["cross_region"], "10.77.0.11", "10.77.0.12")
    failed_at = next(i for i, c in enumerate(ran) if "filter" in c and "crlab1" in c)
    after = ran[failed_at + 1 :]
    for link in ("crlab1", "crlab2"):
        assert (
            f"tc qdisc del dev {link} root" in after and f"tc qdisc del dev {link} ingress" in after
        )
    assert not (tmp_path / "link" / "pair-crlab1.json").exists()


def test_without_netem_or_a_tun_device_the_shaping_is_refused_with_the_reason(
    pair_shaper: lab_link.Shaper, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(lab_link.delay_stage, "TUN_DEVICE", str(tmp_path / "no-tun"))
    monkeypatch.setattr(
        pair_shaper,
        "run",
        lambda argv, timeout=30.0: (
            (2, "", "Error: Specified qdisc kind is unknown.") if "netem" in argv else (0, "", "")
        ),
    )
    with pytest.raises(lab_link.ShapingError) as caught:
        pair_shaper.present(PROFILES["cross_az"], "10.77.0.11", "10.77.0.12")
    assert "no netem (Error: Specified qdisc kind is unknown.)" in str(caught.value)
    assert "no-tun, which does not exist" in str(caught.value)


def test_the_module_needs_tc(monkeypatch: pytest.MonkeyPatch) -> None:
    module = FakeModule()
    monkeypatch.setattr(
        module, "get_bin_path", lambda name, opt_dirs=None: None if name == "tc" else name
    )
    with pytest.raises(lab_link.ShapingError, match="needs tc"):
        lab_link.Shaper(module)


# -- the probe -------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.parametrize("mode", ["stream", "rtt"])
def test_the_link_probe_measures_a_stream_and_round_trips_on_loopback(mode: str) -> None:
    port = free_port()
    served: dict[str, Any] = {}
    server = threading.Thread(
        target=lambda: served.update(link_probe.serve("127.0.0.1", port, 10.0))
    )
    server.start()
    if mode == "stream":
        result = link_probe.stream("127.0.0.1", port, 0.2, timeout_s=10.0)
        assert result["bytes"] > 0 and result["mbit_s"] > 0
    else:
        result = link_probe.rtt("127.0.0.1", port, 5, timeout_s=10.0)
        assert (
            result["count"] == 5 and 0 < result["min_ms"] <= result["median_ms"] <= result["max_ms"]
        )
        assert result["median_ms"] <= result["p90_ms"] <= result["max_ms"]
    server.join(10)
    assert served["mode"] == ("stream" if mode == "stream" else "echo")


# -- metrics.json ----------------------------------------------------------------------------


def test_metrics_environment_records_the_profile_what_was_applied_and_its_removal() -> None:
    pair = PairRecord("source", "destination", "/tmp/r")
    pair.add(
        "link", {"profile": "cross_az", "method": "stage", "applied": {"rtt_ms": 1.33}}, "source"
    )
    pair.add("link_removed", {"removed": True, "leftovers": []}, "source")
    environment = build_metrics({}, pair, 0.0, 1.0)["environment"]
    assert environment["link"]["profile"] == "cross_az"
    assert environment["link"]["applied"] == {"rtt_ms": 1.33}
    assert environment["link"]["removed"] == {"removed": True, "leftovers": []}
    assert "host" not in environment["link"]
    bare = build_metrics({}, PairRecord("source", "destination", "/tmp/r"), 0.0, 1.0)["environment"]
    assert "link" not in bare
    json.dumps(environment)


def test_lab_up_and_down_remove_every_recorded_shaping_and_stray_tap(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    state_dir = tmp_path / "link"
    state_dir.mkdir()
    (state_dir / "pair-crlab1.json").write_text(
        json.dumps({"links": ["crlab1", "crlab2"], "profile": "cross_az", "stage": None})
    )
    shaper = lab_link.Shaper(FakeModule())
    ran: list[str] = []

    def run(argv: list[str], timeout: float = 30.0) -> tuple[int, str, str]:
        ran.append(" ".join(argv))
        if argv[:3] == ["ip", "-o", "link"]:
            return 0, LINKS + "12: crlab-d3: <UP> mtu 1500\n13: crlabx-d1: <UP> mtu 1500\n", ""
        return 0, "", ""

    monkeypatch.setattr(shaper, "run", run)
    result = shaper.absent_lab(str(tmp_path), "crlab")
    assert result["removed"] == [
        {"links": ["crlab1", "crlab2"], "profile": "cross_az", "stage_link": ""}
    ]
    assert result["stray_stage_links"] == ["crlab-d3"]
    assert "ip link del dev crlab-d3" in ran and not any(
        "crlabx-d1" in c and "del" in c for c in ran
    )
    for link in ("crlab1", "crlab2"):
        assert f"tc qdisc del dev {link} root" in ran
    assert not (state_dir / "pair-crlab1.json").exists()
    assert shaper.absent_lab(str(tmp_path / "never-shaped")) == {
        "removed": [],
        "stray_stage_links": [],
    }
