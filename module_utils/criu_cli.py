"""Pure helpers around the `criu` command line: argv building and output parsing.

Shared by `library/criu.py` (on the nodes) and the unit tests. Standard library only.
"""

from __future__ import annotations

import re
from collections.abc import Callable
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


# Printed on every run on hosts without CAP_SYS_RESOURCE; harmless (docs/lab.md).
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


@dataclass(frozen=True)
class OptionFormat:
    """How one option of the `criu` module becomes CRIU arguments.

    `flag` takes the option's value (`--tree 42`), or is given alone when the option is true
    (`switch=True`), or formats the value into itself (`joined=True`: `-v4`). `default` is
    used when the option is absent; `when` further limits it to some option combinations.
    """

    option: str
    flag: str
    actions: tuple[str, ...]
    switch: bool = False
    joined: bool = False
    default: Any = None
    when: Callable[[str, dict[str, Any]], bool] | None = None


def _talks_tcp(action: str, opts: dict[str, Any]) -> bool:
    """Whether the call serves or fetches pages over TCP (--address / --port apply)."""
    return (
        action == "page-server"
        or (action in ("dump", "pre-dump", "lazy-pages") and bool(opts.get("page_server")))
        or (action == "dump" and bool(opts.get("lazy_pages")))
    )


def _talks_tls(action: str, opts: dict[str, Any]) -> bool:
    """Whether the call's page traffic goes over TLS (CRIU's --tls: tls=true on a TCP call)."""
    return bool(opts.get("tls")) and _talks_tcp(action, opts)


def _serves_tls(action: str, opts: dict[str, Any]) -> bool:
    """A TLS call that serves pages (page-server; a network post-copy dump). CRIU checks the
    peer's certificate against --address on both ends, which on the serving end is its own
    address: the client's certificate is checked against the experiment's CA only there
    (--tls-no-cn-verify), the server's name on the client (docs/lab.md, TLS)."""
    serving = action == "page-server" or (action == "dump" and bool(opts.get("lazy_pages")))
    return serving and _talks_tls(action, opts)


_IMAGE_ACTIONS = ("dump", "pre-dump", "restore", "page-server", "lazy-pages")
_TREE_ACTIONS = ("dump", "pre-dump", "restore")

# Every option, in argv order. CRIU takes its options in any order; one order keeps argv
# comparable between calls (the fused critical path's and the benchmark floor's).
ARGV_FORMAT: tuple[OptionFormat, ...] = (
    OptionFormat("images_dir", "--images-dir", _IMAGE_ACTIONS),
    OptionFormat("work_dir", "--work-dir", _IMAGE_ACTIONS),
    OptionFormat("log_file", "--log-file", _IMAGE_ACTIONS),
    OptionFormat("log_level", "-v{}", _IMAGE_ACTIONS, joined=True, default=4),
    OptionFormat("pid", "--tree", ("dump", "pre-dump")),
    OptionFormat("prev_images_dir", "--prev-images-dir", ("dump", "pre-dump", "page-server")),
    OptionFormat("track_mem", "--track-mem", ("dump", "pre-dump"), switch=True),
    OptionFormat("leave_running", "--leave-running", ("dump",), switch=True),
    # the dumped tree stays on the source, stopped, until the destination confirms the restore
    OptionFormat("leave_stopped", "--leave-stopped", ("dump",), switch=True),
    OptionFormat("page_server", "--page-server", ("dump", "pre-dump", "lazy-pages"), switch=True),
    # restore: pages come from the lazy-pages daemon; dump: network post-copy (serve pages);
    # page-server: serve them lazily
    OptionFormat("lazy_pages", "--lazy-pages", ("dump", "restore", "page-server"), switch=True),
    OptionFormat("address", "--address", _IMAGE_ACTIONS, when=_talks_tcp),
    OptionFormat("port", "--port", _IMAGE_ACTIONS, when=_talks_tcp),
    # page traffic over TLS, with the experiment's CA and this host's certificate and key
    OptionFormat("tls", "--tls", _IMAGE_ACTIONS, switch=True, when=_talks_tls),
    OptionFormat("tls_cacert", "--tls-cacert", _IMAGE_ACTIONS, when=_talks_tls),
    OptionFormat("tls_cert", "--tls-cert", _IMAGE_ACTIONS, when=_talks_tls),
    OptionFormat("tls_key", "--tls-key", _IMAGE_ACTIONS, when=_talks_tls),
    OptionFormat(
        "tls_no_cn_verify",
        "--tls-no-cn-verify",
        _IMAGE_ACTIONS,
        switch=True,
        default=True,
        when=_serves_tls,
    ),
    OptionFormat("restore_detached", "--restore-detached", ("restore",), switch=True, default=True),
    OptionFormat("daemon", "--daemon", ("page-server", "lazy-pages"), switch=True, default=True),
    OptionFormat("pidfile", "--pidfile", ("restore", "page-server", "lazy-pages")),
    OptionFormat("shell_job", "--shell-job", _TREE_ACTIONS, switch=True),
    OptionFormat("ext_unix_sk", "--ext-unix-sk", _TREE_ACTIONS, switch=True),
    OptionFormat("file_locks", "--file-locks", _TREE_ACTIONS, switch=True),
    OptionFormat("link_remap", "--link-remap", _TREE_ACTIONS, switch=True),
    OptionFormat("manage_cgroups", "--manage-cgroups={}", _TREE_ACTIONS, joined=True),
    OptionFormat("tcp_established", "--tcp-established", ("dump", "restore"), switch=True),
    OptionFormat("network_lock", "--network-lock", ("dump", "restore")),
    # a script CRIU runs at each stage (inject_fault=dump_fails / dump_crashes)
    OptionFormat("action_script", "--action-script", _TREE_ACTIONS),
)
# Options a call cannot do without.
_REQUIRED = {"images_dir": _IMAGE_ACTIONS, "pid": ("dump", "pre-dump")}
# What a TLS call needs besides tls=true: the experiment's CA, this host's certificate, its key.
TLS_FILES = ("tls_cacert", "tls_cert", "tls_key")


def build_criu_argv(criu_bin: str, action: str, opts: dict[str, Any]) -> list[str]:
    """Build the argv of one CRIU call from the module's options (ARGV_FORMAT).

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
    for option, actions in _REQUIRED.items():
        if action in actions and not opts.get(option):
            what = "the pid of the process tree" if option == "pid" else option
            raise ValueError(f"criu {action} needs {what}")
    missing_tls = [name for name in TLS_FILES if not opts.get(name)]
    if _talks_tls(action, opts) and missing_tls:
        # without them CRIU would trust the system's CAs and read /etc/pki/criu
        raise ValueError(f"criu {action} with tls needs {', '.join(missing_tls)}")
    for fmt in ARGV_FORMAT:
        if action not in fmt.actions or (fmt.when is not None and not fmt.when(action, opts)):
            continue
        value = opts.get(fmt.option)
        if value is None:
            value = fmt.default
        if fmt.switch:
            argv += [fmt.flag] if value else []
        elif value is None or value == "":
            continue
        elif fmt.joined:
            argv.append(fmt.flag.format(int(value) if fmt.option == "log_level" else value))
        else:
            argv += [fmt.flag, str(int(value) if fmt.option in ("pid", "port") else value)]
    argv += [str(arg) for arg in opts.get("extra_args") or []]
    return argv


# -- CRIU's logs: what the daemons did, and how long they took -----------------------------

# Every line of a CRIU log starts with "(SS.uuuuuu)": seconds since that CRIU process started.
_LOG_TS_RE = re.compile(r"^\((\d+\.\d+)\)", re.MULTILINE)
_ERROR_PREFIX_RE = re.compile(r"^(?:\(\d+\.\d+\)\s*)?Error \([^)]*\):\s*")
# lazy-pages (criu/uffd.c): one line per restored task when its pages are all in.
_UFFD_TOTAL_RE = re.compile(r"uffd: (\d+)-\d+: Found (\d+) pages to be handled by UFFD")
_UFFD_DONE_RE = re.compile(r"uffd: (\d+)-\d+: UFFD transferred pages: \((\d+)/(\d+)\)")
_UFFD_PID_RE = re.compile(r"uffd: Received PID: (\d+)")

# A dump with --lazy-pages (network post-copy) has written every image but the pages and
# waits for the destination's lazy-pages daemon once it logs this (criu/cr-dump.c).
LAZY_DUMP_SERVING = "Starting lazy pages server"
DUMP_FINISHED = "Dumping finished successfully"


def log_timestamps(text: str) -> list[float]:
    """The "(SS.uuuuuu)" stamps of a CRIU log, in order (seconds since CRIU started)."""
    return [float(stamp) for stamp in _LOG_TS_RE.findall(text or "")]


def _stamp_of(text: str, needle: str, last: bool = False) -> float | None:
    """The stamp of the first (or last) log line containing `needle`."""
    lines = [line for line in (text or "").splitlines() if needle in line]
    if not lines:
        return None
    match = _LOG_TS_RE.match(lines[-1] if last else lines[0])
    return float(match.group(1)) if match else None


def error_message(line: str) -> str:
    """A CRIU error line without its stamp and source location: what it says."""
    return _ERROR_PREFIX_RE.sub("", (line or "").strip())


def summarize_lazy_pages_log(text: str) -> dict[str, Any]:
    """What a `criu lazy-pages` daemon's log says about the pages it served.

    pages_lazy_total: pages the restored tasks left to the daemon; pages_lazy_served: pages
    it copied in (on fault or in the background); complete: every task got all its pages;
    serving_s: from the restore's connection to the last task's last page (log stamps).
    """
    totals = {int(pid): int(n) for pid, n in _UFFD_TOTAL_RE.findall(text or "")}
    done = {int(pid): (int(a), int(b)) for pid, a, b in _UFFD_DONE_RE.findall(text or "")}
    connected = _stamp_of(text, "uffd: Received PID:")
    finished = _stamp_of(text, "UFFD transferred pages:", last=True)
    stamps = log_timestamps(text)
    summary: dict[str, Any] = {
        "tasks": sorted(int(pid) for pid in _UFFD_PID_RE.findall(text or "")),
        "pages_lazy_total": sum(totals.values()),
        "pages_lazy_served": sum(a for a, _ in done.values()),
        "complete": bool(totals)
        and all(pid in done and done[pid][0] == done[pid][1] for pid in totals),
        "serving_s": round(finished - connected, 6)
        if connected is not None and finished is not None
        else None,
        "lifetime_s": stamps[-1] if stamps else None,
        "error": error_message(first_error(text)),
    }
    return summary


# criu/tls.c: what a TLS peer logs once the handshake is through, and the errors that mean
# the other end's certificate (or this end's own files) were refused. After a good handshake
# "Failed receiving data" only says the peer went away.
TLS_HANDSHAKE_DONE = "tls: TLS handshake completed"
_TLS_REFUSALS = (
    "NOT trusted",
    "Invalid certificate",
    "Unable to verify TLS peer",
    "TLS handshake failed",
    "Failed to set certificate/private key pair",
    "No trusted CA certificates added",
    "Failed to load default trusted CAs",
    "Can't read certificate revocation list",
)


def tls_log_verdict(text: str) -> dict[str, Any]:
    """What a CRIU log says about its TLS session: handshake done, and why it refused the
    peer (or its own files) - CRIU's words, its most telling line first ("The certificate is
    NOT trusted. The certificate issuer is unknown." over "Invalid certificate")."""
    refusals = [
        error_message(line)
        for line in (text or "").splitlines()
        if "Error" in line and any(needle in line for needle in _TLS_REFUSALS)
    ]
    refusals.sort(key=lambda line: "NOT trusted" not in line)
    return {
        "handshake": TLS_HANDSHAKE_DONE in (text or ""),
        "refused": bool(refusals),
        "error": refusals[0].removeprefix("tls: ").strip() if refusals else "",
    }


def summarize_page_server_log(text: str) -> dict[str, Any]:
    """What a `criu page-server` daemon's log says: was the dump's session complete, and how long.

    session_s: from the dump's connection to "Session over" (log stamps).
    """
    accepted = _stamp_of(text, "Accepted connection from")
    over = _stamp_of(text, "page-xfer: Session over")
    stamps = log_timestamps(text)
    summary = {
        "connected": accepted is not None,
        "session_complete": over is not None,
        "session_s": round(over - accepted, 6)
        if accepted is not None and over is not None
        else None,
        "lifetime_s": stamps[-1] if stamps else None,
        "error": error_message(first_error(text)),
    }
    if "tls: " in (text or ""):  # --tls: the handshake, and why a certificate was refused
        summary["tls"] = tls_log_verdict(text)
    return summary


def summarize_lazy_dump_log(text: str) -> dict[str, Any]:
    """Where a `criu dump --lazy-pages` (network post-copy) is: serving, finished or failed.

    serving_at_s: when every image but the pages was written and CRIU began serving pages;
    finished_at_s: "Dumping finished successfully" (every page fetched by the destination).
    """
    serving = _stamp_of(text, LAZY_DUMP_SERVING)
    finished = _stamp_of(text, DUMP_FINISHED)
    error = error_message(first_error(text))
    return {
        "serving": serving is not None,
        "serving_at_s": serving,
        "finished": finished is not None,
        "finished_at_s": finished,
        "failed": bool(error) and finished is None,
        "error": error,
    }


def lazy_network_probe_verdict(logs: dict[str, str], restored_ok: bool) -> dict[str, Any]:
    """Judge the network lazy-pages probe from the logs of its three CRIU calls.

    `logs` maps "dump", "lazy-pages", "restore" to their log text (missing when that step
    never ran); `restored_ok`: the restored throwaway process read its memory back intact.
    Returns ok, the failing side (the dump serves pages: a source-side failure; lazy-pages or
    restore: a destination-side one) and the reason in CRIU's own words.
    """
    if restored_ok:
        return {"ok": True, "side": "", "reason": ""}
    # The dump side first: when it cannot serve, the others only see the connection drop.
    for side, what in (
        ("dump", "criu dump --lazy-pages (serving pages)"),
        ("lazy-pages", "criu lazy-pages --page-server (fetching pages)"),
        ("restore", "criu restore --lazy-pages"),
    ):
        error = error_message(first_error(logs.get(side, "")))
        if error:
            return {"ok": False, "side": side, "reason": f"{what} failed: {error}"}
    return {
        "ok": False,
        "side": "",
        "reason": "the restored probe process did not read its memory back (no CRIU error logged)",
    }


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
