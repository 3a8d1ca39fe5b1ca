"""Jinja filters for the criu role: version checks and the facts it records."""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "module_utils"))

from criu_cli import (
    FEATURE_NFT_LOCK,
    FEATURE_SOFT_DIRTY,
    FEATURE_UFFD,
    FEATURE_UFFD_NONCOOP,
    parse_criu_version,
    parse_debian_version,
    version_at_least,
)


def criu_version_at_least(version: str | None, minimum: str) -> bool:
    """`"4.2.1" | criu_version_at_least("4.2")` -> True; empty or unparsable -> False."""
    parsed = parse_criu_version(f"Version: {version}") if version else None
    return version_at_least(parsed, str(minimum))


def criu_apt_candidate(policy_output: str) -> str:
    """The upstream version of `apt-cache policy criu`'s candidate ("" when none)."""
    match = re.search(r"Candidate:\s*(\S+)", policy_output or "")
    if not match or match.group(1) == "(none)":
        return ""
    parsed = parse_debian_version(match.group(1))
    return ".".join(map(str, parsed)) if parsed else ""


def criu_install_reason(probe: dict[str, Any] | None, minimum: str) -> str:
    """Why an installed CRIU was not kept, in words."""
    if not probe or probe.get("skipped") or "check" not in probe:
        return "no criu binary found"
    version = probe.get("version") or "unknown version"
    if not criu_version_at_least(probe.get("version"), minimum):
        return f"{probe.get('criu_bin')} is {version}, older than {minimum}"
    return f"{probe.get('criu_bin')} ({version}): criu check says {probe['check'].get('summary')}"


def criu_facts_from_probe(probe: dict[str, Any], iptables_restore: str = "") -> dict[str, Any]:
    """Reduce a `criu action=check` result to the facts the strategies are gated on."""
    features = probe.get("features", {})
    if features.get(FEATURE_NFT_LOCK):
        network_lock = "nftables"
    elif iptables_restore:
        network_lock = "iptables"
    else:
        network_lock = ""
    return {
        "bin": probe.get("criu_bin", ""),
        "version": probe.get("version", ""),
        "usable": bool(probe.get("check", {}).get("ok")),
        "check_summary": probe.get("check", {}).get("summary", ""),
        "kernel": probe.get("kernel", ""),
        "soft_dirty": bool(features.get(FEATURE_SOFT_DIRTY)),
        "uffd": bool(features.get(FEATURE_UFFD)),
        "lazy_pages": bool(features.get(FEATURE_UFFD_NONCOOP)),
        "network_lock": network_lock,
        "features": features,
    }


class FilterModule:
    def filters(self) -> dict[str, Any]:
        return {
            "criu_version_at_least": criu_version_at_least,
            "criu_apt_candidate": criu_apt_candidate,
            "criu_install_reason": criu_install_reason,
            "criu_facts_from_probe": criu_facts_from_probe,
        }
