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
from transfer_backends import request_from_options, ssh_command


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


def lazy_network_facts(probe: dict[str, Any] | None) -> dict[str, Any]:
    """The network post-copy facts from a `criu action=check probe=lazy_pages_network` result.

    lazy_pages_network: the probe's round trip worked; _side: which end failed (dump = the
    source's, lazy-pages / restore = the destination's, setup = neither); _reason: CRIU's words.
    """
    if not probe or probe.get("skipped") or "probe" not in probe:
        return {
            "lazy_pages_network": False,
            "lazy_pages_network_side": "setup",
            "lazy_pages_network_reason": "network post-copy was not probed on this host "
            "(criu_probe_lazy_pages_network=false, or `criu check` failed)",
        }
    verdict = probe["probe"]
    return {
        "lazy_pages_network": bool(verdict.get("ok")),
        "lazy_pages_network_side": verdict.get("side", ""),
        "lazy_pages_network_reason": verdict.get("reason", ""),
    }


def criu_facts_from_probe(
    probe: dict[str, Any],
    iptables_restore: str = "",
    lazy_network_probe: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Reduce a `criu action=check` result (and the network post-copy probe's, when it ran) to
    the facts the strategies are gated on."""
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
        # CRIU takes --tls (built with GnuTLS), and why not
        "tls": bool((probe.get("tls") or {}).get("ok")),
        "tls_reason": (probe.get("tls") or {}).get("reason", ""),
        # root here may read another user's rlimits (criu dump of a non-root process)
        "cap_sys_resource": bool(probe.get("cap_sys_resource")),
        **lazy_network_facts(lazy_network_probe),
    }


def criu_pages_pull_argv(images_dir: str, link: dict[str, Any]) -> list[str]:
    """rsync argv, run on the source, that fetches the pages a page server received on the
    destination back into the same images folder (the rollback restores from it).

    `link`: the pair's transfer options (migration_pair.transfer) - the same SSH trust as
    the transfer (source -> destination), pulling instead of pushing.
    """
    request = request_from_options(link, [images_dir])
    if not str(images_dir).startswith("/") or any(ch.isspace() for ch in str(images_dir)):
        raise ValueError(f"images_dir {images_dir!r} must be absolute and without spaces")
    argv = [
        "rsync",
        "--archive",
        "--whole-file",
        "--sparse",
        "--rsh",
        " ".join(ssh_command(request)),
    ]
    if request.user != "root":
        argv += ["--rsync-path", "sudo rsync"]
    remote = f"{request.user}@{request.destination}:{images_dir.rstrip('/')}"
    return [*argv, f"{remote}/pagemap-*.img", f"{remote}/pages-*.img", f"{images_dir.rstrip('/')}/"]


class FilterModule:
    def filters(self) -> dict[str, Any]:
        return {
            "criu_version_at_least": criu_version_at_least,
            "criu_apt_candidate": criu_apt_candidate,
            "criu_install_reason": criu_install_reason,
            "criu_facts_from_probe": criu_facts_from_probe,
            "criu_pages_pull_argv": criu_pages_pull_argv,
        }
