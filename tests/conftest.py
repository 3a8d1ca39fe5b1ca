"""Shared test set-up: import paths for the repo's plugin folders, and the skip rules.

Skips under CI (CI=true in the environment, as .ci/run runs `make test`): a test that CI
believes ran must not skip silently. A skip of a test marked `lab` or `guest`, or of any
test under tests/integration/ (they need the lab, root or a tool such as terraform, strace
or the cached CRIU tarball), is turned into a failure that carries the skip's reason -
whether the skip came from a `skipif` mark, a fixture or the test itself. The one
exception is a capability skip: the machine lacks (or has) a kernel or CRIU feature the
test is about, so there is nothing the suite could install to run it. Such a skip must say
so explicitly: its reason starts with `capability: ` (CAPABILITY_PREFIX), e.g.
`pytest.skip("capability: this kernel can do network post-copy: nothing to refuse")`.
A missing tool, cache, lab or privilege is never a capability.

Every run's terminal summary has a line counting the skipped tests (and the skips CI=true
turned into failures), then one line per reason with its count.
"""

from __future__ import annotations

import importlib
import ipaddress
import json
import os
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent
INTEGRATION = REPO / "tests" / "integration"
# A skip whose reason starts with this is a genuine capability skip (see the docstring).
CAPABILITY_PREFIX = "capability: "
# The markers of tests that need a lab (pyproject.toml's [tool.pytest.ini_options]).
LAB_MARKERS = ("lab", "guest")
# user_properties key of a report whose skip was turned into a failure under CI.
SKIP_FAILED_IN_CI = "skip_failed_under_ci"

for folder in ("module_utils", "library", "filter_plugins", "callback_plugins"):
    path = str(REPO / folder)
    if path not in sys.path:
        sys.path.insert(0, path)


def _alias_module_utils() -> None:
    """Make `ansible.module_utils.<name>` resolve to the repo's module_utils/<name>.py.

    Ansible does this when it bundles a module for a node; the alias lets unit tests import
    library/*.py directly. Modules that import each other through `ansible.module_utils`
    need their dependencies aliased first, so failed imports are retried until every file
    is in.
    """
    import ansible.module_utils as ansible_module_utils

    pending = [
        p.stem for p in sorted((REPO / "module_utils").glob("*.py")) if not p.stem.startswith("_")
    ]
    while pending:
        failed: list[str] = []
        for name in pending:
            try:
                module = importlib.import_module(name)
            except ImportError:
                failed.append(name)
                continue
            sys.modules[f"ansible.module_utils.{name}"] = module
            setattr(ansible_module_utils, name, module)
        if len(failed) == len(pending):
            importlib.import_module(failed[0])  # raise the real error
        pending = failed


_alias_module_utils()


@pytest.fixture(autouse=True)
def _restore_umask() -> Iterator[None]:
    """A node module run in-process sets the experiment's private umask for its whole
    process (module_utils/private_files.py): every test starts with the session's."""
    session_umask = os.umask(0o022)
    os.umask(session_umask)
    yield
    os.umask(session_umask)


def in_ci() -> bool:
    """CI=true (or 1/yes) in the environment: the run is the one CI trusts."""
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


def skip_reason(report: pytest.TestReport | pytest.CollectReport) -> str:
    """A skipped report's reason, without pytest's "Skipped: " prefix."""
    longrepr = report.longrepr
    reason = longrepr[2] if isinstance(longrepr, tuple) else str(longrepr)
    return reason.removeprefix("Skipped: ")


def must_not_skip_in_ci(path: Path, markers: set[str]) -> bool:
    """Lab and guest tests, and everything under tests/integration/, must run under CI."""
    return bool(markers & set(LAB_MARKERS)) or INTEGRATION in Path(path).parents


def _fail_the_skip(report: pytest.TestReport | pytest.CollectReport) -> None:
    reason = skip_reason(report)
    report.outcome = "failed"
    report.longrepr = (
        f"skipped under CI=true, which fails the run (only a reason starting with "
        f"{CAPABILITY_PREFIX!r} may skip; see tests/conftest.py): {reason}"
    )
    if isinstance(report, pytest.TestReport):  # collect reports have no properties
        report.user_properties.append((SKIP_FAILED_IN_CI, reason))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[Any]:
    report: pytest.TestReport = yield
    if (
        report.skipped
        and not hasattr(report, "wasxfail")
        and in_ci()
        and must_not_skip_in_ci(item.path, {mark.name for mark in item.iter_markers()})
        and not skip_reason(report).startswith(CAPABILITY_PREFIX)
    ):
        _fail_the_skip(report)
    return report


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(collector: pytest.Collector) -> Iterator[Any]:
    """A whole module skipped at import (`pytest.skip(allow_module_level=True)`,
    `importorskip`) follows the same rule."""
    report: pytest.CollectReport = yield
    if (
        report.skipped
        and in_ci()
        and must_not_skip_in_ci(collector.path, {mark.name for mark in collector.iter_markers()})
        and not skip_reason(report).startswith(CAPABILITY_PREFIX)
    ):
        _fail_the_skip(report)
    return report


def pytest_report_teststatus(
    report: pytest.TestReport | pytest.CollectReport, config: pytest.Config
) -> Any:
    """A skip turned into a failure counts as failed (not as a setup error)."""
    properties = getattr(report, "user_properties", ())
    if report.failed and any(key == SKIP_FAILED_IN_CI for key, _ in properties):
        return "failed", "F", "FAILED"
    return None


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    """The number of skipped tests and why (pytest's -ra lists them one by one), and how
    many skips CI=true turned into failures."""
    skipped = terminalreporter.stats.get("skipped", [])
    reasons = Counter(skip_reason(report) for report in skipped)
    failed = [
        reason
        for report in terminalreporter.stats.get("failed", [])
        for key, reason in getattr(report, "user_properties", [])
        if key == SKIP_FAILED_IN_CI
    ]
    line = f"{len(skipped)} skipped"
    if failed:
        line += f", {len(failed)} more skipped under CI=true and counted as failed"
    terminalreporter.write_sep("-", line)
    for reason, count in reasons.most_common():
        terminalreporter.write_line(f"{count} skipped: {reason}")
    for reason, count in Counter(failed).most_common():
        terminalreporter.write_line(f"{count} failed (skipped under CI=true): {reason}")
    fault_matrix_summary(terminalreporter)


# The fault matrix (tests/integration/test_faults.py, issue 17): the `fault_matrix` fixture puts
# each fault test's end-state check on the test's teardown report under this key.
FAULT_OUTCOME = "fault_outcome"


def fault_matrix_summary(terminalreporter: Any) -> None:
    """`N faults, 0 workloads lost`, from the fault tests' own end-state checks (when any ran),
    read from the reports - so a pytest-xdist worker's tests count too."""
    outcomes = [
        value
        for reports in terminalreporter.stats.values()
        for report in reports
        if getattr(report, "when", None) == "teardown"
        for key, value in getattr(report, "user_properties", [])
        if key == FAULT_OUTCOME
    ]
    if not outcomes:
        return
    lost = [o for o in outcomes if o["checked"] and o["lost"]]
    unchecked = [o for o in outcomes if not o["checked"]]
    for outcome in lost + unchecked:
        state = (
            f"LOST ({outcome['where']})"
            if outcome["checked"]
            else "not checked (the test ended first)"
        )
        terminalreporter.write_line(f"fault {outcome['fault']} ({outcome['path']} path): {state}")
    line = f"{len(outcomes)} faults, {len(lost)} workloads lost"
    if unchecked:
        line += f", {len(unchecked)} not checked"
    terminalreporter.write_sep("-", line)


# -- no test, and no process a test starts, may ask the cloud metadata service ----------------
# (169.254.169.254 and the rest of the link-local range, EC2's IPv6 fd00:ec2::254): boto3 in
# this process and in every subprocess (ansible-playbook, the modules it runs here) is told
# not to look there, and a connection attempt from this process fails the test that made it.
METADATA_NETWORKS = (
    ipaddress.ip_network("169.254.0.0/16"),
    ipaddress.ip_network("fd00:ec2::/32"),
)
os.environ["AWS_EC2_METADATA_DISABLED"] = "true"


class MetadataGuard:
    """Connection attempts to the metadata networks made by this test session."""

    def __init__(self) -> None:
        self.attempts: list[str] = []

    @staticmethod
    def forbidden(address: Any) -> bool:
        host = address[0] if isinstance(address, tuple) and address else None
        try:
            ip = ipaddress.ip_address(str(host).split("%")[0])
        except ValueError:
            return False
        return any(ip in network for network in METADATA_NETWORKS)


METADATA_GUARD = MetadataGuard()
_socket_connect = socket.socket.connect
_socket_connect_ex = socket.socket.connect_ex


def _guarded(real: Any) -> Any:
    def connect(self: socket.socket, address: Any) -> Any:
        if METADATA_GUARD.forbidden(address):
            METADATA_GUARD.attempts.append(f"{address}")
            raise ConnectionRefusedError(
                f"tests/conftest.py: a connection to the cloud metadata address {address} was "
                "attempted; no test may ever query it"
            )
        return real(self, address)

    return connect


socket.socket.connect = _guarded(_socket_connect)  # type: ignore[method-assign]
socket.socket.connect_ex = _guarded(_socket_connect_ex)  # type: ignore[method-assign]


@pytest.fixture
def metadata_guard() -> MetadataGuard:
    """The session's guard, for a test that checks it (and clears what it recorded)."""
    return METADATA_GUARD


@pytest.fixture(autouse=True)
def _no_metadata_access() -> Iterator[None]:
    before = len(METADATA_GUARD.attempts)
    yield
    made = METADATA_GUARD.attempts[before:]
    if made:
        del METADATA_GUARD.attempts[before:]
        pytest.fail(f"the test connected (or tried to) to the cloud metadata address: {made}")


# -- the labs' end: once per session, after every worker ----------------------------------------
# tests/integration/conftest.py brings the labs up, from whichever pytest-xdist worker needs
# one first, and marks each lab it made in SESSION_DIR. The controlling process (the only
# one without xdist) outlives the workers, so it takes them down here.
SESSION_DIR = REPO / ".cache" / "test-session"
GUEST_LAB_DIR = REPO / ".lab" / "guest"
GUEST_INVENTORY = REPO / "inventories" / "lab_guest" / "hosts.yml"


def _is_worker(config: pytest.Config) -> bool:
    return hasattr(config, "workerinput")


def pytest_sessionstart(session: pytest.Session) -> None:
    if not _is_worker(session.config):
        SESSION_DIR.mkdir(parents=True, exist_ok=True)
        for mark in SESSION_DIR.glob("made-*"):
            mark.unlink()


def _lab_down(*extra: str) -> None:
    subprocess.run(
        [str(REPO / ".venv" / "bin" / "ansible-playbook"), "playbooks/lab.yml",
         "-e", "lab_state=absent", *extra],
        cwd=REPO,
        env={**os.environ, "ANSIBLE_CONFIG": str(REPO / "ansible.cfg")},
        capture_output=True,
        stdin=subprocess.DEVNULL,
        check=False,
    )  # fmt: skip


def guest_lab_leftovers() -> list[str]:
    """QEMU processes, links and disks of the guest lab that are still there."""
    left: list[str] = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                argv = (entry / "cmdline").read_bytes().decode(errors="replace").split("\0")
            except OSError:
                continue
            if any(arg.startswith(str(GUEST_LAB_DIR / "hosts")) for arg in argv):
                left.append(f"process {entry.name}: {' '.join(argv)[:120]}")
    links = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True).stdout
    left += [
        f"link {line.split(':')[1].strip()}"
        for line in links.splitlines()
        if line.split(":")[1].strip().split("@")[0].startswith("crlabg")
    ]
    left += [
        f"file {path}"
        for pattern in ("hosts/*/disk.qcow2", "hosts/*/config.tar", "state.json")
        for path in GUEST_LAB_DIR.glob(pattern)
    ]
    if GUEST_INVENTORY.exists():
        left.append(f"file {GUEST_INVENTORY}")
    return left


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """The labs this session made go down (unless KEEP_LAB=1); the guest lab must leave
    nothing behind (no QEMU process, tap, bridge or overlay)."""
    if _is_worker(session.config) or os.environ.get("KEEP_LAB"):
        return
    # each pytest-xdist worker's namespaces lab, with the lab.yml arguments its mark holds
    for mark in sorted(SESSION_DIR.glob("made-namespaces*")):
        _lab_down(*json.loads(mark.read_text()))
    if (SESSION_DIR / "made-guest").exists():
        t0 = time.monotonic()
        _lab_down("-e", "lab_flavour=guest")
        left = guest_lab_leftovers()
        print(
            f"\n[guest lab] down in {time.monotonic() - t0:.1f} s; left behind: {left or 'nothing'}"
        )
        if left:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED
