"""How a link profile is applied to a lab pair's links: the `tc` plans, pure functions.

The local lab's hosts hang on a bridge in the control node's namespace, each by a veth whose
control-side end (`<prefix><n>`) is there too (docs/lab.md). Packets from the source to the
destination enter the bridge at the source's link and leave it at the destination's, so
everything is shaped on the control node, once per direction, and only the pair's own
packets (source address -> destination address and back): the control node's SSH to the
hosts (Ansible) and other pairs pass untouched.

Rate (every kernel with htb and u32, like this one): the receiving link's egress gets an htb
root whose class 1:1 carries the pair's traffic at `rate_mbit`; with `per_flow_mbit` below
the rate, 16 leaf classes, each capped at the per-flow rate and chosen by a u32 hash of the
source port (flows whose source ports share the low 4 bits share a leaf); a bfifo queue of
about 10 ms at the rate under each leaf. Unclassified packets (anyone else's) bypass htb.

Delay, two ways:
- `netem` where the kernel has it: the leaves are netem queues (delay rtt/2, normal jitter),
  after the rate;
- `stage` (this machine's kernel has no netem): the userspace delay stage
  (module_utils/delay_stage.py) on a TAP device `<prefix>-d<n>`. An ingress filter on the
  sending link redirects the pair's packets to the TAP, the stage hands each back after its
  delay, and an ingress filter on the TAP redirects it, by destination address, out of the
  receiving link - through its htb. Nothing is bridged twice and the bridge never sees the
  TAP. If the stage stops, the pair's packets are dropped (fail closed), never undelayed.

Removal deletes the root and ingress qdiscs of both links (and the stage ends its TAP).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

METHODS = ("netem", "stage")
# Leaves of the per-flow split (the u32 hash table's divisor; at most 256, a power of 2).
FLOW_BUCKETS = 16
# Queue under each leaf, in time at the class's rate, and its floor (two 64 KiB GSO packets).
QUEUE_MS = 10.0
MIN_QUEUE_BYTES = 256 * 1024
# htb's token bucket: enough for one 64 KiB GSO packet and 2 ms at the rate (a qdisc's
# "burst" is this, milliseconds - not a cloud's burst credit, which is a profile of its own).
MIN_HTB_BURST_BYTES = 128 * 1024
HTB_BURST_MS = 2.0
# netem's queue length in packets (its default, 1000, drops at a few MB in flight).
NETEM_LIMIT = 100_000
# Without a rate (the stage's ceiling measurement) the htb class is just a classifier.
UNLIMITED_MBIT = 100_000.0


@dataclass(frozen=True)
class PairLinks:
    """One lab pair as the shaping sees it: addresses and control-side link names."""

    source: str  # address
    destination: str
    source_link: str  # control-side veth of the source host
    destination_link: str
    stage_link: str  # the TAP of the delay stage (method stage)

    def directions(self) -> tuple[tuple[str, str, str, str], ...]:
        """(sender, receiver, sender's link, receiver's link) for both directions."""
        return (
            (self.source, self.destination, self.source_link, self.destination_link),
            (self.destination, self.source, self.destination_link, self.source_link),
        )


@dataclass(frozen=True)
class Shape:
    """What is applied: one-way delay and jitter (ms), rates (Mbit/s, None: unlimited)."""

    delay_ms: float
    jitter_ms: float
    rate_mbit: float | None
    per_flow_mbit: float | None

    @property
    def split_flows(self) -> bool:
        rate = self.rate_mbit or UNLIMITED_MBIT
        return self.per_flow_mbit is not None and self.per_flow_mbit < rate


def shape_for(profile: Any, floor_rtt_ms: float | None = None) -> Shape:
    """What to apply for a profile (rtt_ms, jitter_ms, rate_mbit, per_flow_mbit): half the
    round trip each way, less half of what the path already takes without any delay
    (`floor_rtt_ms`: the delay stage's own round trip, measured), never below zero; the
    jitter split over both directions (two independent draws of sigma make a round trip of
    sigma * sqrt(2))."""
    floor = max(0.0, float(floor_rtt_ms or 0.0))
    return Shape(
        delay_ms=max(0.0, (float(profile.rtt_ms) - floor) / 2.0),
        jitter_ms=float(profile.jitter_ms) / math.sqrt(2.0),
        rate_mbit=float(profile.rate_mbit) if profile.rate_mbit is not None else None,
        per_flow_mbit=float(profile.per_flow_mbit) if profile.per_flow_mbit is not None else None,
    )


def stage_link_name(prefix: str, index: int) -> str:
    """The delay stage's TAP for the pair whose source has link index `index` (<= 15 chars;
    never a lab's own link name, which is letters and digits only)."""
    name = f"{prefix}-d{index}"
    if len(name) > 15:
        raise ValueError(f"link name {name} is longer than 15 characters")
    return name


def mbit(value: float) -> str:
    """A tc rate (kbit resolution)."""
    return f"{max(1, round(value * 1000))}kbit"


def queue_bytes(rate_mbit: float) -> int:
    return max(MIN_QUEUE_BYTES, int(rate_mbit * 1e6 / 8 * QUEUE_MS / 1000))


def htb_burst_bytes(rate_mbit: float) -> int:
    return max(MIN_HTB_BURST_BYTES, int(rate_mbit * 1e6 / 8 * HTB_BURST_MS / 1000))


def netem_leaf(shape: Shape) -> list[str]:
    """The netem queue that delays one direction (its jitter drawn from a normal law)."""
    leaf = ["netem", "limit", str(NETEM_LIMIT), "delay", f"{shape.delay_ms:.3f}ms"]
    if shape.jitter_ms > 0:
        leaf += [f"{shape.jitter_ms:.3f}ms", "distribution", "normal"]
    return leaf


def _leaf(shape: Shape, method: str, rate_mbit: float) -> list[str]:
    if method == "netem":
        return netem_leaf(shape)
    return ["bfifo", "limit", str(queue_bytes(rate_mbit))]


def htb_commands(tc: str, link: str, sender: str, shape: Shape, method: str) -> list[list[str]]:
    """The receiving link's egress: the pair's packets (from `sender`) rated, per flow too."""
    rate = shape.rate_mbit or UNLIMITED_MBIT
    burst = str(htb_burst_bytes(rate))
    dev = ["dev", link]
    commands = [
        # default 0: unclassified packets (the control node's, other pairs') bypass htb
        [tc, "qdisc", "add", *dev, "root", "handle", "1:", "htb", "r2q", "1000"],
        [tc, "class", "add", *dev, "parent", "1:", "classid", "1:1", "htb",
         "rate", mbit(rate), "ceil", mbit(rate), "burst", burst, "cburst", burst],
    ]  # fmt: skip
    if not shape.split_flows:
        commands += [
            [tc, "qdisc", "add", *dev, "parent", "1:1", "handle", "10:", *_leaf(shape, method, rate)],
            [tc, "filter", "add", *dev, "parent", "1:", "prio", "1", "protocol", "ip",
             "u32", "match", "ip", "src", f"{sender}/32", "flowid", "1:1"],
        ]  # fmt: skip
        return commands
    per_flow = float(shape.per_flow_mbit or rate)
    share = rate / FLOW_BUCKETS
    for bucket in range(FLOW_BUCKETS):
        classid = f"1:{0x10 + bucket:x}"
        commands += [
            [tc, "class", "add", *dev, "parent", "1:1", "classid", classid, "htb",
             "rate", mbit(share), "ceil", mbit(per_flow), "burst", burst, "cburst", burst],
            [tc, "qdisc", "add", *dev, "parent", classid, *_leaf(shape, method, per_flow)],
        ]  # fmt: skip
    commands.append(
        [tc, "filter", "add", *dev, "parent", "1:", "prio", "1", "handle", "2:",
         "protocol", "ip", "u32", "divisor", str(FLOW_BUCKETS)]
    )  # fmt: skip
    for bucket in range(FLOW_BUCKETS):
        commands.append(
            [tc, "filter", "add", *dev, "parent", "1:", "prio", "1", "protocol", "ip", "u32",
             "ht", f"2:{bucket:x}:", "match", "u32", "0", "0", "flowid", f"1:{0x10 + bucket:x}"]
        )  # fmt: skip
    # the word after a 20-byte IP header is source port | destination port: hash the low
    # 4 bits of the source port (the ephemeral one of the connecting side)
    commands.append(
        [tc, "filter", "add", *dev, "parent", "1:", "prio", "1", "protocol", "ip", "u32",
         "ht", "800::", "match", "ip", "src", f"{sender}/32",
         "hashkey", "mask", f"0x{FLOW_BUCKETS - 1:04x}0000", "at", "20", "link", "2:"]
    )  # fmt: skip
    return commands


def stage_commands(tc: str, pair: PairLinks) -> list[list[str]]:
    """The redirects through the delay stage's TAP (which the stage has created)."""
    commands = [
        [tc, "qdisc", "add", "dev", link, "ingress"]
        for link in (pair.source_link, pair.destination_link, pair.stage_link)
    ]
    for sender, receiver, sender_link, receiver_link in pair.directions():
        commands.append(
            [tc, "filter", "add", "dev", sender_link, "parent", "ffff:", "prio", "1",
             "protocol", "ip", "u32", "match", "ip", "src", f"{sender}/32",
             "match", "ip", "dst", f"{receiver}/32",
             "action", "mirred", "egress", "redirect", "dev", pair.stage_link]
        )  # fmt: skip
        commands.append(
            [tc, "filter", "add", "dev", pair.stage_link, "parent", "ffff:", "prio", "1",
             "protocol", "ip", "u32", "match", "ip", "dst", f"{receiver}/32",
             "action", "mirred", "egress", "redirect", "dev", receiver_link]
        )  # fmt: skip
    return commands


def apply_commands(tc: str, pair: PairLinks, shape: Shape, method: str) -> list[list[str]]:
    """Every tc command that shapes both directions of the pair (the links start bare)."""
    if method not in METHODS:
        raise ValueError(f"unknown shaping method {method!r}; valid: {', '.join(METHODS)}")
    commands: list[list[str]] = []
    for sender, _receiver, _sender_link, receiver_link in pair.directions():
        commands += htb_commands(tc, receiver_link, sender, shape, method)
    if method == "stage":
        commands += stage_commands(tc, pair)
    return commands


def remove_commands(tc: str, links: Sequence[str]) -> list[list[str]]:
    """What undoes any shaping of these links (errors for what is not there are expected)."""
    return [
        [tc, "qdisc", "del", "dev", link, kind] for link in links for kind in ("root", "ingress")
    ]


def netem_probe_argv(unshare: str, tc: str) -> list[str]:
    """Whether this kernel has netem: a netem qdisc on the loopback of a throwaway network
    namespace (nothing of this machine's network is touched)."""
    return [unshare, "--net", tc, "qdisc", "add", "dev", "lo", "root", "netem", "delay", "1ms"]


def leftover_qdiscs(tc_show_output: str) -> list[str]:
    """The qdiscs of `tc qdisc show dev X` that shaping would have added (not the defaults
    a bare veth or bridge port has: noqueue, or none)."""
    kinds = []
    for line in tc_show_output.splitlines():
        fields = line.split()
        if len(fields) >= 2 and fields[0] == "qdisc" and fields[1] not in ("noqueue",):
            kinds.append(fields[1])
    return kinds


def ceiling_flag(rate_mbit: float | None, ceiling_mbit: float | None) -> bool | None:
    """Whether a profile asks for more than the delay stage was measured to carry (None:
    not known)."""
    if rate_mbit is None or ceiling_mbit is None or not math.isfinite(ceiling_mbit):
        return None
    return rate_mbit > ceiling_mbit
