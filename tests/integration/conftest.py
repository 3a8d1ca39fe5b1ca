"""Integration fixtures: the local lab and the soft-dirty guest lab, each brought up once
per test session (and taken down at its end if the session made it, unless KEEP_LAB=1),
and playbook runs via ansible-runner.

`make test` runs the suite on two pytest-xdist workers (`-n 2 --dist loadfile`: a module's
tests, and so its module-scoped fixtures, stay on one worker). Each worker has a namespaces
lab of its own (WorkerLab); they share the guest lab, one test at a time
(`pytest_runtest_protocol`). A lab is brought up under a file lock by the first
test that needs it, and the controlling process - the one that outlives every worker -
takes down at the end each lab this session made (tests/conftest.py)."""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pytest
from filelock import FileLock

# tests/integration/helpers.py holds checks the tests share: pytest shows their values too.
pytest.register_assert_rewrite("helpers")

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = REPO / ".venv" / "bin"


@dataclass(frozen=True)
class WorkerLab:
    """The namespaces lab of one pytest-xdist worker. Each worker has its own, so that two
    workers never run experiments on the same hosts: one experiment per host at a time is
    the suite's own rule (a second run towards busy hosts is refused), and a fault test takes
    a host's link down or shrinks its disk. Worker gw0 - or a run without xdist - has the
    default lab (`make lab-up`: prefix crlab, 10.77.0.0/24, inventories/lab/hosts.yml);
    worker gwN (N >= 1) has prefix crlw<a, b, ...>, 10.76.N.0/24, its state and inventory
    in .cache/lab-gwN (or where lab_state_dir puts a checkout under a private mount)."""

    worker: str
    prefix: str
    subnet: str
    dir: Path
    inventory: Path
    default: bool = False  # the lab `make lab-up` makes

    @classmethod
    def of(cls, worker: str) -> WorkerLab:
        from lab_layout import DEFAULT_PREFIX, DEFAULT_SUBNET, lab_state_dir

        number = int(worker.removeprefix("gw") or 0)
        if number == 0:
            return cls(
                worker, DEFAULT_PREFIX, DEFAULT_SUBNET, REPO / ".lab",
                REPO / "inventories" / "lab" / "hosts.yml", default=True,
            )  # fmt: skip
        assert number <= 26, f"{worker}: at most 27 workers have a lab of their own"
        folder = Path(lab_state_dir(str(REPO / ".cache" / f"lab-{worker}")))
        return cls(
            worker, f"crlw{chr(ord('a') + number - 1)}", f"10.76.{number}.0/24", folder,
            folder / "hosts.yml",
        )  # fmt: skip

    @property
    def playbook_vars(self) -> list[str]:
        """lab.yml's -e arguments for this lab (none for the default lab)."""
        if self.default:
            return []
        values = {
            "lab_prefix": self.prefix,
            "lab_subnet": self.subnet,
            "lab_dir": self.dir,
            "lab_inventory": self.inventory,
        }
        return [arg for key, value in values.items() for arg in ("-e", f"{key}={value}")]

    def address(self, side: str) -> str:
        """The address of `source`, `destination` or `bridge` (the control node's side)."""
        from lab_layout import bridge_address, lab_hosts

        if side == "bridge":
            return bridge_address(self.subnet).split("/")[0]
        return {host.name: host.address for host in lab_hosts(1, self.subnet, self.prefix)}[side]


LAB = WorkerLab.of(os.environ.get("PYTEST_XDIST_WORKER", "gw0"))
LAB_INVENTORY = LAB.inventory
# Whatever a test runs without naming an inventory (ansible, ansible-playbook, run_playbook,
# run_experiment.py) goes to this worker's lab: the environment beats ansible.cfg's
# `inventory`, an explicit -i beats both.
os.environ["ANSIBLE_INVENTORY"] = str(LAB_INVENTORY)
GUEST_INVENTORY = REPO / "inventories" / "lab_guest" / "hosts.yml"
# Where the suite keeps its node-side folders on a lab host (migration_root in
# group_vars/all.yml), and the per-host experiment lock there (lock_file in
# module_utils/migration_layout.py).
MIGRATION_ROOT = "/var/lib/criu-migration"
LOCK_FILE = f"{MIGRATION_ROOT}/experiment.lock"
GUEST_LAB_DIR = REPO / ".lab" / "guest"


def suite_env() -> dict[str, str]:
    """Environment for ansible commands run by the tests: the suite's config and venv."""
    env = dict(os.environ)
    env["ANSIBLE_CONFIG"] = str(REPO / "ansible.cfg")
    env["PATH"] = f"{VENV_BIN}:{env.get('PATH', '')}"
    env["ANSIBLE_NOCOLOR"] = "1"
    return env


def ansible_playbook(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [str(VENV_BIN / "ansible-playbook"), *args],
        cwd=REPO,
        env=suite_env(),
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        check=False,
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"ansible-playbook {' '.join(args)} failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-2000:]}"
        )
    return proc


def on_host(host: str, command: str) -> subprocess.CompletedProcess[str]:
    """Run a shell command on a lab host through Ansible (real SSH)."""
    return subprocess.run(
        [str(VENV_BIN / "ansible"), host, "-m", "shell", "-a", command, "-o"],
        cwd=REPO,
        env=suite_env(),
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        check=False,
    )


@dataclass
class PlaybookRun:
    rc: int
    status: str
    stdout: str
    events: list[dict[str, Any]] = field(default_factory=list)
    results_root: Path | None = None

    def results_dirs(self) -> list[Path]:
        assert self.results_root is not None
        return sorted(p for p in self.results_root.iterdir() if p.is_dir())

    def only_results_dir(self) -> Path:
        dirs = self.results_dirs()
        assert len(dirs) == 1, f"expected one results folder, found {dirs}"
        return dirs[0]

    def metrics(self) -> dict[str, Any]:
        return json.loads((self.only_results_dir() / "metrics.json").read_text())

    def hosts_touched(self) -> set[str]:
        """Hosts any task ran on (runner_on_* events)."""
        hosts: set[str] = set()
        for event in self.events:
            data = event.get("event_data", {})
            if event.get("event", "").startswith("runner_on_") and data.get("host"):
                hosts.add(data["host"])
                if data.get("delegate_to") if isinstance(data.get("delegate_to"), str) else False:
                    hosts.add(data["delegate_to"])
        return hosts


def run_playbook(
    tmp_path: Path, playbook: str, extravars: dict[str, Any], inventory: str | None = None
) -> PlaybookRun:
    """Run one of the suite's playbooks through ansible-runner (the suite's CI interface)."""
    import ansible_runner

    results_root = tmp_path / "results"
    extravars = {"results_root": str(results_root), **extravars}
    private = tmp_path / "runner"
    private.mkdir(parents=True, exist_ok=True)
    env = {
        "ANSIBLE_CONFIG": str(REPO / "ansible.cfg"),
        # ansible-runner sets its own callback path; keep ours on it.
        "ANSIBLE_CALLBACK_PLUGINS": str(REPO / "callback_plugins"),
        # ansible-runner puts SSH control sockets under ~/.ansible/cp unless told otherwise.
        "ANSIBLE_SSH_CONTROL_PATH_DIR": str(REPO / ".ansible" / "cp"),
        "PATH": f"{VENV_BIN}:{os.environ.get('PATH', '')}",
        "ANSIBLE_NOCOLOR": "1",
    }
    kwargs: dict[str, Any] = {}
    if inventory:
        kwargs["inventory"] = inventory
    runner = ansible_runner.run(
        private_data_dir=str(private),
        project_dir=str(REPO),
        playbook=playbook,
        extravars=extravars,
        envvars=env,
        quiet=True,
        **kwargs,
    )
    stdout = runner.stdout.read() if runner.stdout else ""
    return PlaybookRun(
        rc=runner.rc,
        status=runner.status,
        stdout=stdout,
        events=list(runner.events),
        results_root=results_root if results_root.exists() else None,
    )


# The lock around a lab's bring-up, and a mark for each lab this session made: the
# controlling process takes those down at its end (tests/conftest.py, pytest_sessionfinish).
SESSION_DIR = REPO / ".cache" / "test-session"


@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Iterator[None]:
    """A test that asks for the guest lab (directly or through another fixture) has the two
    guests to itself, from before its setup to after its teardown: under TCG each guest is a
    core's worth of work already, and the guest tests time pre-dumps against deadlines. This
    wraps pytest-timeout's own wrapper, so the wait for the other worker's guest test does
    not count against the test's timeout. The namespaces labs need no lock: each worker has
    its own (WorkerLab)."""
    if "guest_lab" not in getattr(item, "fixturenames", ()):
        yield
        return
    SESSION_DIR.mkdir(parents=True, exist_ok=True)
    with FileLock(str(SESSION_DIR / "guest-lab-in-use.lock")):
        yield


def lab_host_inits(inventory: Path = LAB_INVENTORY) -> dict[str, int]:
    """Each lab host's init - PID 1 of its namespaces - from the lab's state file. A host's
    own file system, its private mounts included, is `/proc/<init>/root` on the control node."""
    import yaml

    top = yaml.safe_load(Path(inventory).read_text())["all"]["vars"]
    state = json.loads((Path(top["migration_ssh_key"]).parent / "state.json").read_text())
    return {name: int(host["init_pid"]) for name, host in state["hosts"].items()}


@pytest.fixture(autouse=True)
def no_experiment_lock_left(request: pytest.FixtureRequest) -> Iterator[None]:
    """After each default-lab test (and its own clean-up), no host may still hold an
    experiment lock: a run that leaks one would have every later test on the lab refused as
    busy. The leak fails the test that made it; the lock is removed so the others still run."""
    yield
    if "lab" not in request.fixturenames or not LAB_INVENTORY.exists():
        return
    left = {}
    for name, init in lab_host_inits().items():
        lock = Path(f"/proc/{init}/root") / LOCK_FILE.lstrip("/")
        if lock.exists():
            left[name] = lock.read_text(errors="replace")
            lock.unlink(missing_ok=True)
    assert not left, f"an experiment lock left on the lab after this test (removed now): {left}"


def _bring_up(flavour: str, *extra: str) -> subprocess.CompletedProcess[str]:
    """lab.yml present for a flavour (with `extra` -e arguments), once at a time; marks the
    lab as this session's when this call created it: the mark holds the arguments that take
    it down again (tests/conftest.py, pytest_sessionfinish)."""
    SESSION_DIR.mkdir(parents=True, exist_ok=True)
    name = flavour if not extra else f"{flavour}-{LAB.worker}"
    with FileLock(str(SESSION_DIR / f"{name}.lock")):
        proc = ansible_playbook(
            "playbooks/lab.yml", "-e", f"lab_flavour={flavour}", "-e", "lab_state=present", *extra
        )
        if "created: none" not in proc.stdout:
            (SESSION_DIR / f"made-{name}").write_text(
                json.dumps(["-e", f"lab_flavour={flavour}", *extra])
            )
    return proc


@pytest.fixture(scope="session")
def lab() -> Iterator[Path]:
    """This worker's namespaces lab (WorkerLab), up for the whole session (torn down at its
    end if this session made it)."""
    _bring_up("namespaces", *LAB.playbook_vars)
    assert LAB_INVENTORY.exists()
    yield LAB_INVENTORY


def _say_guest_lab(message: str) -> None:
    print(f"[guest lab] {message}", flush=True)


@pytest.fixture(scope="session")
def guest_lab() -> Iterator[Path]:
    """The soft-dirty guest lab's two QEMU guests, up for the whole session, shared by every
    test that asks for it: the image is built first when not cached (`make guest-image`,
    1-2 minutes cold), the guests booted unless already running. When this session booted
    them it takes them down at its end and checks that nothing is left behind (no QEMU
    process, tap, bridge or overlay); KEEP_LAB=1 leaves them up."""
    t0 = time.monotonic()
    proc = _bring_up("guest")
    built = "image built in" in proc.stdout
    created = "created: none" not in proc.stdout
    _say_guest_lab(
        f"up in {time.monotonic() - t0:.1f} s (image {'built' if built else 'cached'}, "
        f"guests {'booted' if created else 'already running'})"
    )
    assert GUEST_INVENTORY.exists()
    yield GUEST_INVENTORY


# -- the fault matrix: every fault test's own end-state check, summed up (issue 17) -------------

# The key of a fault test's outcome on its teardown report; tests/conftest.py sums them up in
# the session's summary (`N faults, 0 workloads lost`), from pytest-xdist workers too.
FAULT_OUTCOME = "fault_outcome"


@dataclass
class FaultOutcome:
    """One fault a test made happen for real, and what its end-state check found."""

    fault: str
    path: str  # the critical path it ran on (fused, the default, or stepwise)
    checked: bool = False  # the test reached its end-state check
    lost: bool = False  # the check found the workload on no host, on both, or stuck
    where: str = ""


@pytest.fixture
def fault_matrix(request: pytest.FixtureRequest) -> Iterator[Any]:
    """Registers the test's fault when it starts; its end-state check says whether the
    workload was lost (`outcome.lost`, `outcome.where`; `outcome.checked` once it ran). A test
    that ends before its check counts as unchecked in the session's summary."""
    outcomes: list[FaultOutcome] = []

    def register(fault: str, path: str = "fused") -> FaultOutcome:
        outcome = FaultOutcome(fault, path)
        outcomes.append(outcome)
        return outcome

    yield register
    for outcome in outcomes:  # on the teardown report, which reaches the controlling process
        request.node.user_properties.append((FAULT_OUTCOME, asdict(outcome)))


# -- secrets: never in a results folder, a log or metrics.json (issue 17) ---------------------

# What must never reach a result, whoever's secret it is (bytes: every file is read raw).
SECRET_PATTERNS = {
    "a PEM private key": rb"-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----",
    "a PEM certificate": rb"-----BEGIN CERTIFICATE-----",
    "an AWS access key id": rb"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b",
    "an AWS secret key variable with a value": rb"(?i)aws_secret_access_key[\"' ]*[:=][\"' ]*[A-Za-z0-9/+]{16}",
}
# Literal secrets shorter than this are not looked for (they would match by chance).
MIN_SECRET_LEN = 12


def secret_literals(*paths: Path | str) -> list[bytes]:
    """The secret strings in key and credential files, as they could leak: each base64 line
    of a PEM or OpenSSH key (a leak escapes the newlines between them), each value of a JSON
    credentials file (the lab's moto keys), or the whole content of anything else."""
    found: list[bytes] = []
    for path in map(Path, paths):
        try:
            data = path.read_bytes()
        except OSError:
            continue
        if data.lstrip().startswith(b"{"):
            values = json.loads(data).values()
            found += [str(value).encode() for value in values if isinstance(value, str)]
        elif b"-----BEGIN" in data:
            found += [line.strip() for line in data.splitlines() if not line.startswith(b"-----")]
        else:
            found.append(data.strip())
    return [secret for secret in found if len(secret) >= MIN_SECRET_LEN]


def lab_secrets(inventory: Path = LAB_INVENTORY) -> list[bytes]:
    """The lab's own secrets, from its inventory: the SSH private key Ansible and the
    transfers use, and the credentials of its S3 / EC2 stand-in (when it has one)."""
    import yaml

    top = (yaml.safe_load(Path(inventory).read_text()) or {}).get("all", {}).get("vars", {})
    files = [top.get(name) for name in ("ansible_ssh_private_key_file", "migration_ssh_key")]
    files.append(top.get("lab_aws_credentials_file"))
    return secret_literals(*[path for path in files if path])


def find_secrets(
    folder: Path | None, secrets: Any = (), texts: Any = (), chunk: int = 8 << 20
) -> list[str]:
    """Where a secret shows up: every file under `folder` (binary ones too) and each of
    `texts` (a run's output), against SECRET_PATTERNS and the literal `secrets` (str or
    bytes). CRIU's page images (keep_images) are the workload's own memory, which may hold
    certificates of its own (a CA bundle a library loaded): only the literal secrets are
    looked for there. One line per finding: where, and what (never the secret itself)."""
    import re

    literals = [s.encode() if isinstance(s, str) else bytes(s) for s in secrets]
    literals = [s for s in literals if len(s) >= MIN_SECRET_LEN]
    checks = [(what, re.compile(pattern)) for what, pattern in SECRET_PATTERNS.items()]
    checks += [
        (f"secret #{n} given ({len(s)} bytes)", re.compile(re.escape(s)))
        for n, s in enumerate(literals, 1)
    ]
    overlap = max([len(s) for s in literals] + [200])

    def scan(where: str, blocks: Iterator[bytes], memory: bool = False) -> list[str]:
        hits: list[str] = []
        tail = b""
        wanted = checks[len(SECRET_PATTERNS) :] if memory else checks
        for block in blocks:
            data = tail + block
            hits += [f"{where}: {what}" for what, rx in wanted if rx.search(data)]
            tail = data[-overlap:]
        return sorted(set(hits))

    def blocks_of(path: Path) -> Iterator[bytes]:
        with path.open("rb") as handle:
            while block := handle.read(chunk):
                yield block

    found: list[str] = []
    if folder is not None and Path(folder).exists():
        for path in sorted(Path(folder).rglob("*")):
            if path.is_file() and not path.is_symlink():
                page_image = path.name.startswith("pages-") and path.suffix == ".img"
                found += scan(str(path), blocks_of(path), memory=page_image)
    for index, text in enumerate(texts):
        found += scan(f"output #{index + 1}", iter([text.encode(errors="replace")]))
    return found


def assert_no_secrets(
    folder: Path | None, secrets: Any = (), texts: Any = (), inventory: Path | None = None
) -> int:
    """Fail, naming the file and what was found, when a secret is in a results folder or a
    run's output: key material, certificates, AWS keys, the given `secrets`, and with
    `inventory` the lab's own (its SSH key, its S3 stand-in's credentials). Returns how many
    files were read. Use it on every results folder a test makes:

        run = run_playbook(tmp_path, "migrate.yml", {...})
        assert_no_secrets(run.results_root, texts=[run.stdout], inventory=LAB_INVENTORY)
    """
    literals = [*secrets, *(lab_secrets(inventory) if inventory is not None else [])]
    found = find_secrets(folder, literals, texts)
    assert not found, "secrets in the results or the output:\n" + "\n".join(found)
    return sum(1 for p in Path(folder).rglob("*") if p.is_file()) if folder else 0
