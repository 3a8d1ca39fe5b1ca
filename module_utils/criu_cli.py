"""Pure helpers around the `criu` command line: argv building and output parsing.

Shared by `library/criu.py` (on the nodes) and the unit tests. Standard library only.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

ACTIONS = ("check", "dump", "pre-dump", "restore", "page-server", "lazy-pages")

# The kernel features the suite gates strategies on (names as `criu check --feature`).
FEATURE_SOFT_DIRTY = "mem_dirty_track"
FEATURE_UFFD = "uffd"
FEATURE_UFFD_NONCOOP = "uffd-noncoop"
FEATURE_NFT_LOCK = "network_lock_nftables"

_VERSION_RE = re.compile(r"^Version:\s*(\d+)\.(\d+)(?:\.(\d+))?", re.MULTILINE)
_DEBIAN_VERSION_RE = re.compile(r"^(?:\d+:)?(\d+)\.(\d+)(?:\.(\d+))?")


def parse_criu_version(text: str) -> tuple[int, int, int] | None:
    """Return (major, minor, patch) from `criu --version` output, or None."""
    match = _VERSION_RE.search(text or "")
    if not match:
        return None
    return int(match.group(1)), int(match.group(2)), int(match.group(3) or 0)


def parse_debian_version(text: str) -> tuple[int, int, int] | None:
    """Return (major, minor, patch) from a Debian package version such as `3.17.1-2+deb12u1`."""
    match = _DEBIAN_VERSION_RE.match((text or "").strip())
    if not match:
        return None
    return int(match.group(1)), int(match.group(2)), int(match.group(3) or 0)


def version_string(version: tuple[int, int, int] | None) -> str:
    return "" if version is None else ".".join(str(part) for part in version)


def version_at_least(version: tuple[int, int, int] | None, minimum: str) -> bool:
    """True when `version` >= `minimum` (a dotted string such as "4.2")."""
    if version is None:
        return False
    wanted = tuple(int(part) for part in minimum.split("."))
    wanted = wanted + (0,) * (3 - len(wanted))
    return version >= wanted


@dataclass
class CheckResult:
    """What `criu check` said, reduced to what the suite decides on."""

    ok: bool
    summary: str
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


# Printed on every run on hosts without CAP_SYS_RESOURCE; harmless (LAB.md).
_HARMLESS = (re.compile(r"rlimit: Can't setup RLIMIT_NOFILE"),)


def parse_check_output(rc: int, output: str) -> CheckResult:
    """Interpret `criu check` (rc + combined stdout/stderr)."""
    lines = [line.strip() for line in (output or "").splitlines() if line.strip()]
    relevant = [line for line in lines if not any(p.search(line) for p in _HARMLESS)]
    errors = [line for line in relevant if line.startswith("Error") or "Error (" in line]
    warnings = [line for line in relevant if line.startswith("Warn")]
    ok = rc == 0 and any("Looks good" in line for line in relevant)
    if ok:
        summary = "Looks good." + (f" ({len(warnings)} warnings)" if warnings else "")
    else:
        # CRIU's first complaint is usually the cause; later lines are consequences.
        summary = (
            errors[0] if errors else (relevant or [f"criu check exited {rc} without output"])[-1]
        )
    return CheckResult(ok=ok, summary=summary, errors=errors, warnings=warnings)


def build_criu_argv(criu_bin: str, action: str, opts: dict[str, Any]) -> list[str]:
    """Build the argv of one CRIU call from the module's options.

    `opts` uses the module's option names; options that do not apply to `action` are
    ignored, so a caller can pass one dict for a whole migration.
    """
    if action not in ACTIONS:
        raise ValueError(f"unknown CRIU action {action!r}; valid: {', '.join(ACTIONS)}")
    argv = [criu_bin, action]
    if action == "check":
        if opts.get("feature"):
            argv += ["--feature", str(opts["feature"])]
        return argv

    images_dir = opts.get("images_dir")
    if not images_dir:
        raise ValueError(f"criu {action} needs images_dir")
    argv += ["--images-dir", str(images_dir)]
    if opts.get("work_dir"):
        argv += ["--work-dir", str(opts["work_dir"])]
    if opts.get("log_file"):
        argv += ["--log-file", str(opts["log_file"])]
    argv += [f"-v{int(opts.get('log_level', 4))}"]

    if action in ("dump", "pre-dump"):
        pid = opts.get("pid")
        if not pid:
            raise ValueError(f"criu {action} needs the pid of the process tree")
        argv += ["--tree", str(int(pid))]
        if opts.get("prev_images_dir"):
            argv += ["--prev-images-dir", str(opts["prev_images_dir"])]
        if opts.get("track_mem"):
            argv.append("--track-mem")
        if opts.get("page_server"):
            argv += _address_port(opts, "--page-server")
        if action == "dump":
            if opts.get("leave_running"):
                argv.append("--leave-running")
            if opts.get("lazy_pages"):
                # network post-copy: the dump serves pages to the destination's lazy-pages
                argv += ["--lazy-pages", *_address_port(opts)]
    elif action == "restore":
        if opts.get("restore_detached", True):
            argv.append("--restore-detached")
        if opts.get("pidfile"):
            argv += ["--pidfile", str(opts["pidfile"])]
        if opts.get("lazy_pages"):
            argv.append("--lazy-pages")
    elif action == "page-server":
        argv += _address_port(opts)
        if opts.get("prev_images_dir"):
            argv += ["--prev-images-dir", str(opts["prev_images_dir"])]
        if opts.get("lazy_pages"):
            argv.append("--lazy-pages")
    elif action == "lazy-pages" and opts.get("page_server"):
        argv += _address_port(opts, "--page-server")

    if action in ("page-server", "lazy-pages"):
        if opts.get("daemon", True):
            argv.append("--daemon")
        if opts.get("pidfile"):
            argv += ["--pidfile", str(opts["pidfile"])]

    if action in ("dump", "pre-dump", "restore"):
        if opts.get("shell_job"):
            argv.append("--shell-job")
        if opts.get("ext_unix_sk"):
            argv.append("--ext-unix-sk")
        if opts.get("file_locks"):
            argv.append("--file-locks")
        if opts.get("link_remap"):
            argv.append("--link-remap")
        if opts.get("manage_cgroups"):
            argv.append(f"--manage-cgroups={opts['manage_cgroups']}")
    if action in ("dump", "restore"):
        if opts.get("tcp_established"):
            argv.append("--tcp-established")
        if opts.get("network_lock"):
            argv += ["--network-lock", str(opts["network_lock"])]
    argv += [str(arg) for arg in opts.get("extra_args") or []]
    return argv


def _address_port(opts: dict[str, Any], flag: str | None = None) -> list[str]:
    argv = [flag] if flag else []
    if opts.get("address"):
        argv += ["--address", str(opts["address"])]
    if opts.get("port"):
        argv += ["--port", str(int(opts["port"]))]
    return argv


def log_tail(text: str, lines: int = 25) -> str:
    """The last `lines` lines of a CRIU log: where CRIU says why it failed."""
    return "\n".join((text or "").splitlines()[-lines:])


def first_error(text: str) -> str:
    """The first `Error` line of a CRIU log (CRIU's first complaint is usually the cause).

    Lines CRIU prints on every run of this kind of host (_HARMLESS) are skipped.
    """
    for line in (text or "").splitlines():
        if "Error" in line and not any(p.search(line) for p in _HARMLESS):
            return line.strip()
    return ""
