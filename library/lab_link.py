#!/usr/bin/python
"""Ansible module: shape (or unshape) a local lab pair's link after a cloud link profile."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: lab_link
short_description: Shape a local lab pair's link like a cloud link (RTT, jitter, rates)
description:
  - Runs on the control node, where the local lab's bridge and the control-side ends of its
    veths are. Finds the two lab hosts by their addresses (a lab init's network namespace
    with the address on its eth0, on a veth of a lab bridge) and refuses any address that is
    not such a host - it never shapes a real network.
  - C(present) applies the profile to both directions of the pair, only to the pair's own
    packets - the rate with htb (per flow too, by a u32 hash of the source port) on the
    receiving link's egress, the delay with netem where the kernel has it (probed in a
    throwaway network namespace), else with the userspace delay stage
    (module_utils/delay_stage.py) on a TAP (module_utils/link_shaping.py). Any earlier shaping
    of the same links is removed first. The stage's own throughput ceiling is measured once
    per lab (C(measure_ceiling)) and a profile above it is flagged. A short measurement of
    the shaped link follows (C(verify)). On any failure everything applied is removed
    again and the module fails with the reason.
  - C(absent) removes the shaping of the pair's links (or, with only I(lab_dir), every
    shaping recorded for that lab, and its stray delay-stage TAPs) and checks that no qdisc
    or delay stage is left.
options:
  state:
    description: C(present) to shape, C(absent) to remove the shaping.
    type: str
    choices: [present, absent]
    default: present
  profile:
    description:
      - The link profile (module_utils/link_profiles.py LinkProfile.as_dict) - name,
        rtt_ms, jitter_ms, rate_mbit, per_flow_mbit and the sources of each figure.
      - Required with C(present).
    type: dict
  source_address:
    description: The pair's source address (its migration traffic's address).
    type: str
  destination_address:
    description: The pair's destination address.
    type: str
  lab_dir:
    description:
      - With C(absent) and no addresses - the lab whose recorded shaping is all removed
        (playbooks/lab.yml, when the lab comes up or goes down).
    type: path
  prefix:
    description:
      - With I(lab_dir) - the lab's link prefix; the TAPs of its delay stages
        (C(<prefix>-d<n>)) are removed even without a record.
    type: str
    default: ""
  owner:
    description: Who shapes (the experiment's id), recorded in the lab's link state.
    type: str
    default: ""
  measure_ceiling:
    description:
      - C(auto) - measure the delay stage's throughput ceiling when this lab has no measured
        value yet; C(always) - measure it now; C(never) - use what is known, if anything.
    type: str
    choices: [auto, always, never]
    default: auto
  verify:
    description:
      - Measure the shaped link before returning - 10 TCP round trips and a 1 s bulk TCP
        stream (module_utils/link_probe.py), reported under C(verified).
    type: bool
    default: true
  seed:
    description: Seed of the delay stage's jitter draws (reproducible runs).
    type: int
attributes:
  check_mode:
    support: none
notes:
  - Needs root, C(tc) and C(ip) (iproute2), C(nsenter) and C(unshare) (util-linux); the delay
    stage needs C(/dev/net/tun).
author: CRIU migration suite
"""

EXAMPLES = r"""
- name: Shape the pair's link (cross-AZ)
  lab_link:
    state: present
    profile: "{{ 'cross_az' | link_profile }}"
    source_address: 10.77.0.11
    destination_address: 10.77.0.12
  connection: local

- name: Remove it
  lab_link:
    state: absent
    source_address: 10.77.0.11
    destination_address: 10.77.0.12
  connection: local
"""

RETURN = r"""
link:
  description: What was applied (present) or removed (absent).
  returned: always
  type: dict
  sample: {profile: cross_az, method: stage, applied: {rtt_ms: 1.33, rate_mbit: 10000}}
migration_metrics:
  description: What the metrics callback records (environment.link in metrics.json).
  returned: always
  type: dict
  sample: {phase: link, data: {profile: cross_az}}
"""

import contextlib
import inspect
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from ansible.module_utils import delay_stage, link_probe
from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.lab_links import LabHostLink, find_lab_hosts, parse_links
from ansible.module_utils.link_profiles import LinkProfile, ProfileError, profile_from_dict
from ansible.module_utils.link_shaping import (
    PairLinks,
    Shape,
    apply_commands,
    ceiling_flag,
    leftover_qdiscs,
    netem_probe_argv,
    remove_commands,
    shape_for,
    stage_commands,
    stage_link_name,
)
from ansible.module_utils.processes import cmdline, is_alive, start_detached, terminate, wait_until

PROBE_PORT = 5299
CEILING_SECONDS = 2.0
VERIFY_ROUND_TRIPS = 10
VERIFY_STREAM_S = 1.0
STAGE_READY_S = 10.0


class ShapingError(Exception):
    """Shaping that cannot be applied or removed, with the reason."""


def iso(epoch: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


class Shaper:
    def __init__(self, module: AnsibleModule) -> None:
        self.module = module
        self.bins: dict[str, str] = {}
        missing = []
        for name in ("tc", "ip", "nsenter", "unshare"):
            path = module.get_bin_path(name, opt_dirs=["/usr/sbin", "/sbin"])
            if path:
                self.bins[name] = path
            else:
                missing.append(name)
        if missing:
            raise ShapingError(
                f"shaping the lab's link needs {', '.join(missing)} on the control node "
                "(tc and ip: iproute2; nsenter, unshare: util-linux)"
            )
        self.python = sys.executable or "/usr/bin/python3"

    # -- commands ----------------------------------------------------------------------
    def run(self, argv: list[str], timeout: float = 30.0) -> tuple[int, str, str]:
        try:
            proc = subprocess.run(
                argv, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=timeout,
                check=False,
            )  # fmt: skip
        except (OSError, subprocess.TimeoutExpired) as exc:
            return 127, "", str(exc)
        return proc.returncode, proc.stdout, proc.stderr

    def run_all(self, commands: list[list[str]]) -> None:
        for argv in commands:
            rc, out, err = self.run(argv)
            if rc:
                raise ShapingError(f"`{' '.join(argv)}` failed (rc={rc}): {(err or out).strip()}")

    # -- the pair ----------------------------------------------------------------------
    def hosts(self, source: str, destination: str) -> tuple[LabHostLink, LabHostLink]:
        found, errors = find_lab_hosts(
            [source, destination], self.run, self.bins["nsenter"], self.bins["ip"]
        )
        if errors:
            raise ShapingError(
                "lab_link shapes only the local lab's links, never a real network: "
                + "; ".join(errors)
            )
        src, dst = found[source], found[destination]
        if src.bridge != dst.bridge:
            raise ShapingError(
                f"{source} ({src.name}) and {destination} ({dst.name}) are on different lab "
                f"bridges ({src.bridge}, {dst.bridge}): not one lab pair"
            )
        return src, dst

    @staticmethod
    def pair_links(src: LabHostLink, dst: LabHostLink) -> PairLinks:
        return PairLinks(
            source=src.address,
            destination=dst.address,
            source_link=src.link,
            destination_link=dst.link,
            stage_link=stage_link_name(src.prefix, src.index),
        )

    @staticmethod
    def state_dir(lab_dir: str) -> Path:
        return Path(lab_dir) / "link"

    def state_file(self, src: LabHostLink) -> Path:
        return self.state_dir(src.lab_dir) / f"pair-{src.link}.json"

    def programs(self, state_dir: Path) -> dict[str, str]:
        """The delay stage and the probe as files (they come inside this module's payload)."""
        bin_dir = state_dir / "bin"
        bin_dir.mkdir(parents=True, exist_ok=True)
        paths = {}
        for name, mod in (("delay_stage", delay_stage), ("link_probe", link_probe)):
            path = bin_dir / f"{name}.py"
            source = inspect.getsource(mod)
            if not path.exists() or path.read_text() != source:
                tmp = path.with_suffix(".tmp")
                tmp.write_text(source)
                tmp.replace(path)
            paths[name] = str(path)
        return paths

    # -- netem or the stage ------------------------------------------------------------
    def netem_available(self) -> tuple[bool, str]:
        rc, out, err = self.run(netem_probe_argv(self.bins["unshare"], self.bins["tc"]))
        return rc == 0, (err or out).strip()

    def start_stage(
        self, program: str, link: str, shape: Shape, state_dir: Path, seed: int | None
    ) -> dict[str, Any]:
        stats = state_dir / f"{link}.stats.json"
        stats.unlink(missing_ok=True)
        argv = [
            self.python, program, "--tap", link, "--delay-ms", f"{shape.delay_ms:.6f}",
            "--jitter-ms", f"{shape.jitter_ms:.6f}", "--stats", str(stats), "--ip", self.bins["ip"],
        ]  # fmt: skip
        if seed is not None:
            argv += ["--seed", str(seed)]
        pid = start_detached(argv, output=state_dir / f"{link}.log")
        wait_until(lambda: stats.exists() or not is_alive(pid), STAGE_READY_S)
        info = self.read_json(stats)
        if not info.get("ready"):
            self.stop_stage({"pid": pid, "link": link, "stats": str(stats)})
            log = (
                (state_dir / f"{link}.log").read_text(errors="replace")[-500:]
                if (state_dir / f"{link}.log").exists()
                else ""
            )
            raise ShapingError(
                f"the delay stage did not start on {link}: "
                f"{info.get('error') or log.strip() or 'no answer within 10 s'}"
            )
        return {"pid": pid, "link": link, "stats": str(stats), "program": program}

    def stop_stage(self, stage: dict[str, Any]) -> dict[str, Any]:
        """Stop a delay stage (only the process that is that stage) and read its counters."""
        pid = int(stage.get("pid") or 0)
        link = str(stage.get("link") or "")
        args = cmdline(pid) if pid else []
        if pid and is_alive(pid) and any("delay_stage" in a for a in args) and link in args:
            terminate(pid, grace_s=5.0)
        if link and self.run([self.bins["ip"], "link", "show", "dev", link])[0] == 0:
            # the TAP outlived its stage (a stage killed without its descriptor closing)
            self.run([self.bins["ip"], "link", "del", "dev", link])
        return self.read_json(Path(stage["stats"])) if stage.get("stats") else {}

    @staticmethod
    def read_json(path: Path) -> dict[str, Any]:
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    # -- measuring ---------------------------------------------------------------------
    def probe(
        self, probe: str, src: LabHostLink, dst: LabHostLink, mode: str, *args: str
    ) -> dict[str, Any]:
        """One link_probe session: its server in the destination's namespace, its client in
        the source's."""
        nsenter = self.bins["nsenter"]
        server = subprocess.Popen(
            [nsenter, f"--net={dst.netns}", "--", self.python, probe, "serve", "--bind",
             dst.address, "--port", str(PROBE_PORT), "--timeout", "20"],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        try:
            rc, out, err = self.run(
                [nsenter, f"--net={src.netns}", "--", self.python, probe, mode, "--host",
                 dst.address, "--port", str(PROBE_PORT), "--timeout", "20", *args],
                timeout=60,
            )  # fmt: skip
        finally:
            try:
                server.wait(timeout=25)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()
        if rc:
            raise ShapingError(
                f"link probe {mode} {src.address} -> {dst.address} failed: {err.strip()}"
            )
        return json.loads(out.strip().splitlines()[-1])

    def measure_ceiling(
        self,
        paths: dict[str, str],
        pair: PairLinks,
        src: LabHostLink,
        dst: LabHostLink,
        state_dir: Path,
    ) -> dict[str, Any]:
        """The delay stage's own throughput: no delay, no rate, one bulk TCP stream."""
        stage = self.start_stage(
            paths["delay_stage"], pair.stage_link, Shape(0.0, 0.0, None, None), state_dir, None
        )
        try:
            self.run_all(stage_commands(self.bins["tc"], pair))
            stream = self.probe(
                paths["link_probe"], src, dst, "stream", "--seconds", str(CEILING_SECONDS)
            )
            floor = self.probe(paths["link_probe"], src, dst, "rtt", "--count", "20")
        finally:
            self.unshape([pair.source_link, pair.destination_link])
            self.stop_stage(stage)
        ceiling = {
            "mbit_s": round(float(stream["mbit_s"]), 1),
            # the round trip through the stage with no delay added: the lowest it can give
            "floor_rtt_ms": round(float(floor["median_ms"]), 3),
            "measured_at": iso(time.time()),
            "seconds": CEILING_SECONDS,
            "how": "one bulk TCP stream and 20 TCP round trips (module_utils/link_probe.py) "
            "through the stage, no delay, no rate",
        }
        (state_dir / "stage_ceiling.json").write_text(json.dumps(ceiling))
        return ceiling

    def verify(self, probe: str, src: LabHostLink, dst: LabHostLink) -> dict[str, Any]:
        """The shaped link measured: TCP round trips, then one bulk stream (source ->
        destination)."""

        def rounded(data: dict[str, Any]) -> dict[str, Any]:
            return {k: round(v, 3) if isinstance(v, float) else v for k, v in data.items()}

        rtt = self.probe(probe, src, dst, "rtt", "--count", str(VERIFY_ROUND_TRIPS))
        stream = self.probe(probe, src, dst, "stream", "--seconds", str(VERIFY_STREAM_S))
        return {"rtt": rounded(rtt), "stream": rounded(stream)}

    # -- removing ----------------------------------------------------------------------
    def unshape(self, links: list[str]) -> None:
        for argv in remove_commands(self.bins["tc"], links):
            self.run(argv)

    def leftovers(self, links: list[str], stage_link: str) -> list[str]:
        left = []
        for link in links:
            rc, out, _err = self.run([self.bins["tc"], "qdisc", "show", "dev", link])
            if rc == 0:
                left += [f"{kind} qdisc on {link}" for kind in leftover_qdiscs(out)]
        if stage_link and self.run([self.bins["ip"], "link", "show", "dev", stage_link])[0] == 0:
            left.append(f"delay stage link {stage_link}")
        return left

    def remove_recorded(
        self, state_file: Path, links: list[str], stage_link: str
    ) -> dict[str, Any]:
        state = self.read_json(state_file)
        # the filters first (nothing is redirected to a stage that is going), then the stage
        self.unshape(links)
        counters = self.stop_stage(state["stage"]) if state.get("stage") else {}
        if not state.get("stage") and stage_link:
            self.stop_stage({"link": stage_link})
        state_file.unlink(missing_ok=True)
        left = self.leftovers(links, stage_link)
        if left:
            raise ShapingError(f"shaping still in place after removal: {', '.join(left)}")
        return {
            "removed": True,
            "profile": state.get("profile"),
            "owner": state.get("owner"),
            "links": links,
            "stage_counters": {
                k: counters[k]
                for k in ("frames_in", "frames_out", "bytes_out", "dropped", "max_held_bytes")
                if k in counters
            },
            "leftovers": [],
        }

    def absent_pair(self, source: str, destination: str) -> dict[str, Any]:
        src, dst = self.hosts(source, destination)
        pair = self.pair_links(src, dst)
        return self.remove_recorded(
            self.state_file(src), [pair.source_link, pair.destination_link], pair.stage_link
        )

    def absent_lab(self, lab_dir: str, prefix: str = "") -> dict[str, Any]:
        """Every shaping recorded for a lab, and (with its link prefix) any TAP of a delay
        stage of that lab left without a record."""
        state_dir = self.state_dir(lab_dir)
        removed = []
        for state_file in sorted(state_dir.glob("pair-*.json")) if state_dir.is_dir() else []:
            state = self.read_json(state_file)
            links = [link for link in state.get("links", []) if isinstance(link, str)]
            stage_link = str(
                (state.get("stage") or {}).get("link") or state.get("stage_link") or ""
            )
            self.unshape(links)
            if state.get("stage"):
                self.stop_stage(state["stage"])
            state_file.unlink(missing_ok=True)
            removed.append(
                {"links": links, "profile": state.get("profile"), "stage_link": stage_link}
            )
        # a TAP whose stage outlived its state (its stage ends when the TAP goes)
        strays = []
        if prefix:
            _rc, out, _err = self.run([self.bins["ip"], "-o", "link", "show"])
            for name, _master in parse_links(out).values():
                if re.fullmatch(rf"{re.escape(prefix)}-d\d+", name):
                    self.run([self.bins["ip"], "link", "del", "dev", name])
                    strays.append(name)
        return {"removed": removed, "stray_stage_links": strays}

    # -- applying ----------------------------------------------------------------------
    def present(self, profile: LinkProfile, source: str, destination: str) -> dict[str, Any]:
        params = self.module.params
        src, dst = self.hosts(source, destination)
        pair = self.pair_links(src, dst)
        links = [pair.source_link, pair.destination_link]
        state_dir = self.state_dir(src.lab_dir)
        state_dir.mkdir(parents=True, exist_ok=True)
        paths = self.programs(state_dir)
        earlier = self.read_json(self.state_file(src))
        self.unshape(links)
        if earlier.get("stage"):
            self.stop_stage(earlier["stage"])
        self.stop_stage({"link": pair.stage_link})  # a TAP of a killed stage, if any
        self.state_file(src).unlink(missing_ok=True)
        netem, netem_says = self.netem_available()
        method = "netem" if netem else "stage"
        ceiling: dict[str, Any] = {}
        if method == "stage":
            if not os.path.exists(delay_stage.TUN_DEVICE):
                raise ShapingError(
                    f"cannot shape the link: this kernel has no netem ({netem_says or 'tc refused it'}) "
                    f"and the delay stage needs {delay_stage.TUN_DEVICE}, which does not exist"
                )
            cached = self.read_json(state_dir / "stage_ceiling.json")
            wanted = params["measure_ceiling"]
            if wanted == "always" or (wanted == "auto" and not cached.get("mbit_s")):
                try:
                    ceiling = self.measure_ceiling(paths, pair, src, dst, state_dir)
                except ShapingError as exc:
                    raise ShapingError(
                        f"cannot shape the link: this kernel has no netem ({netem_says or 'tc refused it'}) "
                        f"and the delay stage does not work: {exc}"
                    ) from exc
            else:
                ceiling = cached
        floor_rtt = ceiling.get("floor_rtt_ms") if method == "stage" else None
        shape = shape_for(profile, floor_rtt)
        stage: dict[str, Any] = {}
        try:
            if method == "stage":
                stage = self.start_stage(
                    paths["delay_stage"], pair.stage_link, shape, state_dir, params["seed"]
                )
            self.run_all(apply_commands(self.bins["tc"], pair, shape, method))
            if stage and not is_alive(int(stage["pid"])):
                raise ShapingError(
                    f"the delay stage on {pair.stage_link} ended right after it started"
                )
            verified = self.verify(paths["link_probe"], src, dst) if params["verify"] else {}
        except (ShapingError, OSError, ValueError, KeyError) as exc:
            self.unshape(links)
            if stage:
                self.stop_stage(stage)
            self.stop_stage({"link": pair.stage_link})
            raise ShapingError(
                f"shaping {profile.name} failed and was removed again: {exc}"
            ) from exc
        ceiling_mbit = ceiling.get("mbit_s") if method == "stage" else None
        record = {
            "profile": profile.name,
            "description": profile.description,
            "figures": {
                k: getattr(profile, k)
                for k in ("rtt_ms", "jitter_ms", "rate_mbit", "per_flow_mbit")
            },
            "assumptions": profile.assumptions,
            "method": method,
            "applied": {
                "rtt_ms": profile.rtt_ms,
                # the stage's own round trip (measured with the ceiling), taken off the delay
                "stage_floor_rtt_ms": floor_rtt,
                "below_stage_floor": floor_rtt is not None and profile.rtt_ms < floor_rtt,
                "jitter_ms": profile.jitter_ms,
                "one_way_delay_ms": round(shape.delay_ms, 6),
                "one_way_jitter_ms": round(shape.jitter_ms, 6),
                "rate_mbit": profile.rate_mbit,
                "per_flow_mbit": profile.per_flow_mbit if shape.split_flows else None,
                "directions": [f"{s} -> {r}" for s, r, _sl, _rl in pair.directions()],
            },
            "how": {
                "rate": f"htb on the egress of {pair.destination_link} and {pair.source_link} "
                "(the receiving links), the pair's packets only"
                + (
                    ", 16 per-flow leaves by a u32 hash of the source port"
                    if shape.split_flows
                    else ""
                ),
                "delay": (
                    "netem under each htb leaf (normal jitter)"
                    if method == "netem"
                    else f"userspace delay stage on TAP {pair.stage_link} (module_utils/delay_stage.py; "
                    "normal jitter, order kept)"
                ),
                "netem_probe": "available" if netem else f"unavailable: {netem_says}",
            },
            "links": {
                "source": pair.source_link,
                "destination": pair.destination_link,
                "bridge": src.bridge,
            },
            "hosts": {"source": src.name, "destination": dst.name},
            "lab_dir": src.lab_dir,
            "stage": (
                {
                    "link": pair.stage_link,
                    "pid": stage.get("pid"),
                    "ceiling_mbit": ceiling_mbit,
                    "ceiling_measured_at": ceiling.get("measured_at"),
                }
                if method == "stage"
                else None
            ),
            "above_stage_ceiling": ceiling_flag(profile.rate_mbit, ceiling_mbit),
            "verified": verified or None,
            "owner": params["owner"],
            "applied_at": iso(time.time()),
        }
        state = {
            "owner": params["owner"],
            "profile": profile.name,
            "method": method,
            "links": links,
            "stage": stage or None,
            "stage_link": pair.stage_link,
            "record": record,
        }
        self.state_file(src).write_text(json.dumps(state, indent=1))
        return record


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "state": {"type": "str", "default": "present", "choices": ["present", "absent"]},
            "profile": {"type": "dict"},
            "source_address": {"type": "str"},
            "destination_address": {"type": "str"},
            "lab_dir": {"type": "path"},
            "prefix": {"type": "str", "default": ""},
            "owner": {"type": "str", "default": ""},
            "measure_ceiling": {
                "type": "str",
                "default": "auto",
                "choices": ["auto", "always", "never"],
            },
            "verify": {"type": "bool", "default": True},
            "seed": {"type": "int"},
        },
        required_if=[("state", "present", ("profile", "source_address", "destination_address"))],
        required_together=[("source_address", "destination_address")],
        supports_check_mode=False,
    )
    params = module.params
    if os.geteuid() != 0:
        module.fail_json(msg="shaping the lab's link needs root (tc, nsenter)")
    if params["state"] == "absent" and not params["source_address"] and not params["lab_dir"]:
        module.fail_json(msg="state=absent needs the pair's addresses or lab_dir")
    started = time.monotonic()
    try:
        shaper = Shaper(module)
        if params["state"] == "present":
            profile = profile_from_dict(params["profile"])
            record = shaper.present(
                profile, params["source_address"], params["destination_address"]
            )
            phase = "link"
        elif params["source_address"]:
            record = shaper.absent_pair(params["source_address"], params["destination_address"])
            phase = "link_removed"
        else:
            record = shaper.absent_lab(params["lab_dir"], params["prefix"])
            phase = "link_removed"
    except (ShapingError, ProfileError) as exc:
        module.fail_json(msg=str(exc))
    record["duration_s"] = round(time.monotonic() - started, 3)
    with contextlib.suppress(Exception):
        record = json.loads(json.dumps(record))
    module.exit_json(
        changed=params["state"] == "present" or bool(record.get("removed")),
        link=record,
        migration_metrics={"phase": phase, "data": record},
    )


if __name__ == "__main__":
    main()
