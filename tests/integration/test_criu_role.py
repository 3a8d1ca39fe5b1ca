"""The `criu` role and the `criu_source` module (issue 2), run for real against localhost.

- the role's `criu_facts` agree with what `criu` itself says, and a second run changes
  nothing (CRIU 4.2.1 is already installed at /usr/local/sbin/criu by `make setup`);
- bad input: a `criu_source_sha256` mismatch (the module, and the role on its way to a
  build), a CRIU older than 4.2 that may not be replaced (a stand-in for Debian's 3.17.1,
  tests/fixtures/criu_role/criu-3.17.1, as `criu_install_path`).

None of these runs may touch /usr/local/sbin/criu or the real tarball cache (.cache/criu/):
tarballs are copied to a temporary folder and served from 127.0.0.1, and every run that
could reach a build points its cache, URL and build folder at temporary places.

The tarball the tests serve is a copy of the cached one (`make setup` fetches it when it
builds CRIU); where CRIU was installed before, the module fetches it from Debian first.
"""

from __future__ import annotations

import functools
import hashlib
import http.server
import json
import os
import re
import shutil
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BIN = REPO / ".venv" / "bin"
CRIU = Path("/usr/local/sbin/criu")
CACHED_TARBALL = REPO / ".cache" / "criu" / "criu_4.2.1.orig.tar.xz"
# roles/criu/defaults/main.yml's criu_source_sha256 (Debian's copy of the 4.2.1 release)
TARBALL_SHA256 = "29ec0ee09e296479fe7048c80980e8ef1d0684d0b0204c2b101dfea19f6725b9"
WRONG_SHA256 = hashlib.sha256(b"not the CRIU tarball").hexdigest()
OLD_CRIU = REPO / "tests" / "fixtures" / "criu_role" / "criu-3.17.1"
# Nothing listens on port 9 (discard) here: a run that tries to download fails at once.
DEAD_URL = "http://127.0.0.1:9/criu_4.2.1.orig.tar.xz"

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="the criu role runs as root"),
    pytest.mark.skipif(
        not (BIN / "ansible-playbook").exists(), reason="no .venv: run `make setup` first"
    ),
    pytest.mark.skipif(not CRIU.exists(), reason=f"no {CRIU}: run `make setup` first"),
]

PLAY = """\
- name: The criu role against this machine
  hosts: localhost
  connection: local
  gather_facts: false
  vars:
    ansible_python_interpreter: /usr/bin/python3
  roles:
    - criu
  post_tasks:
    - name: Hand criu_facts to the test
      ansible.builtin.copy:
        content: "{{ criu_facts | to_nice_json }}"
        dest: "{{ facts_out }}"
        mode: "0644"
      changed_when: false
"""


def ansible_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANSIBLE_")}
    env.update(
        ANSIBLE_CONFIG=str(REPO / "ansible.cfg"),
        ANSIBLE_ROLES_PATH=str(REPO / "roles"),
        ANSIBLE_CALLBACK_RESULT_FORMAT="json",
        ANSIBLE_NOCOLOR="1",
        no_proxy="127.0.0.1,localhost",
        NO_PROXY="127.0.0.1,localhost",
    )
    return env


@dataclass
class RoleRun:
    returncode: int
    output: str
    facts: dict | None

    @property
    def recap(self) -> dict[str, int]:
        match = re.search(r"^localhost\s*:\s*(.*)$", self.output, re.MULTILINE)
        assert match, self.output[-3000:]
        return {key: int(value) for key, value in re.findall(r"(\w+)=(\d+)", match.group(1))}

    @property
    def failure(self) -> dict:
        """The failed task's result (`fatal: [localhost]: FAILED! => {...}`)."""
        for line in self.output.splitlines():
            if line.startswith("fatal: [localhost]"):
                return json.loads(line.split("=> ", 1)[1])
        raise AssertionError(f"no failed task in:\n{self.output[-3000:]}")

    @property
    def message(self) -> str:
        return " ".join(str(self.failure.get("msg", "")).split())


def run_role(
    tmp_path: Path, extra_vars: dict | None = None, kv: list[str] | None = None
) -> RoleRun:
    """ansible-playbook of PLAY; `extra_vars` typed (JSON file), `kv` as `-e key=value`."""
    play = tmp_path / "criu_role.yml"
    play.write_text(PLAY)
    facts_out = tmp_path / "criu_facts.json"
    facts_out.unlink(missing_ok=True)
    variables = tmp_path / "extra_vars.json"
    variables.write_text(json.dumps({"facts_out": str(facts_out), **(extra_vars or {})}))
    argv = [str(BIN / "ansible-playbook"), "-i", "localhost,", str(play), "-e", f"@{variables}"]
    for item in kv or []:
        argv += ["-e", item]
    proc = subprocess.run(
        argv, cwd=REPO, env=ansible_env(), capture_output=True, text=True, timeout=300, check=False
    )
    facts = json.loads(facts_out.read_text()) if facts_out.exists() else None
    return RoleRun(proc.returncode, proc.stdout + proc.stderr, facts)


def run_criu_source(tmp_path: Path, args: str) -> dict:
    """`ansible localhost -m criu_source -a ARGS`; the module's result."""
    tree = tmp_path / f"tree-{len(list(tmp_path.glob('tree-*')))}"
    proc = subprocess.run(
        [
            str(BIN / "ansible"), "localhost", "-i", "localhost,", "-c", "local",
            "-e", "ansible_python_interpreter=/usr/bin/python3",
            "-m", "criu_source", "-a", args, "-t", str(tree),
        ],
        cwd=REPO, env=ansible_env(), capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    result_file = tree / "localhost"
    assert result_file.exists(), proc.stdout + proc.stderr
    result = json.loads(result_file.read_text())
    result["_rc"] = proc.returncode
    return result


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def criu(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(CRIU), *args], capture_output=True, text=True, timeout=120, check=False
    )


def distro_offer() -> str:
    """What the role should say the distro offers: apt-cache policy criu's candidate."""
    policy = subprocess.run(
        ["apt-cache", "policy", "criu"],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "LC_ALL": "C"},
    ).stdout
    match = re.search(r"Candidate:\s*(\S+)", policy)
    if not match or match.group(1) == "(none)":
        return "no criu package"
    return match.group(1).split(":")[-1].rsplit("-", 1)[0]


@pytest.fixture(scope="module", autouse=True)
def installed_criu_untouched() -> Iterator[None]:
    """No test here may replace or modify /usr/local/sbin/criu."""
    before = CRIU.stat()
    digest = sha256_of(CRIU)
    yield
    after = CRIU.stat()
    assert (after.st_mtime_ns, after.st_size, after.st_ino) == (
        before.st_mtime_ns,
        before.st_size,
        before.st_ino,
    ), f"{CRIU} was modified"
    assert sha256_of(CRIU) == digest


@pytest.fixture
def old_criu(tmp_path: Path) -> Path:
    path = tmp_path / "criu"
    shutil.copy(OLD_CRIU, path)
    path.chmod(0o755)
    return path


def no_build_vars(tmp_path: Path) -> dict:
    """Where a run that wrongly heads for a build fails first, touching nothing real."""
    return {
        "criu_source_url": DEAD_URL,
        "criu_source_cache_dir": str(tmp_path / "cache"),
        "criu_build_dir": str(tmp_path / "build"),
    }


class _Handler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # quiet
        self.server.requests.append(self.path)  # type: ignore[attr-defined]


@dataclass
class TarballServer:
    url: str
    tarball: Path
    requests: list[str]


@pytest.fixture(scope="module")
def tarball_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TarballServer]:
    """A copy of the CRIU tarball, served over HTTP on 127.0.0.1 (a free port).

    The copy comes from the real cache when `make setup` built CRIU; where CRIU was already
    installed, setup never fetched the tarball, so the module takes it from Debian's source
    package into a temporary cache (the real cache stays untouched).
    """
    folder = tmp_path_factory.mktemp("criu-src")
    tarball = folder / CACHED_TARBALL.name
    if CACHED_TARBALL.exists():
        shutil.copy(CACHED_TARBALL, tarball)
    else:
        fetch_cache = tmp_path_factory.mktemp("criu-fetch")
        fetched = run_criu_source(
            fetch_cache, f"version=4.2.1 sha256={TARBALL_SHA256} cache_dir={fetch_cache}/cache"
        )
        assert fetched["_rc"] == 0 and fetched.get("origin") == "debian-source", fetched
        shutil.copy(fetched["path"], tarball)
    assert sha256_of(tarball) == TARBALL_SHA256
    handler = functools.partial(_Handler, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.requests = []  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield TarballServer(
            f"http://127.0.0.1:{server.server_port}/{tarball.name}",
            tarball,
            server.requests,  # type: ignore[attr-defined]
        )
    finally:
        server.shutdown()
        server.server_close()


# -- the facts -------------------------------------------------------------------------------


def test_role_facts_match_criu_check_and_a_second_run_changes_nothing(tmp_path: Path):
    first = run_role(tmp_path)
    assert first.returncode == 0, first.output[-3000:]
    assert first.recap["changed"] == 0, "CRIU is installed: nothing to change"
    facts = first.facts
    assert facts is not None

    version = re.search(r"^Version:\s*(\S+)", criu("--version").stdout, re.MULTILINE)
    assert version
    check = criu("check")
    feature = {
        name: criu("check", "--feature", name).returncode == 0
        for name in ("mem_dirty_track", "uffd", "uffd-noncoop", "network_lock_nftables")
    }
    iptables = shutil.which("iptables-restore")

    assert facts["bin"] == str(CRIU)
    assert facts["version"] == version.group(1)
    assert check.returncode == 0
    assert facts["usable"] is True
    assert facts["kernel"] == os.uname().release
    assert facts["soft_dirty"] is feature["mem_dirty_track"]
    assert facts["uffd"] is feature["uffd"]
    assert facts["lazy_pages"] is feature["uffd-noncoop"]
    if feature["network_lock_nftables"]:
        assert facts["network_lock"] == "nftables"
    else:
        assert facts["network_lock"] == ("iptables" if iptables else "")
    for name, present in feature.items():
        assert facts["features"][name] is present, name
    print(
        f"\n[criu facts] {facts['version']} soft_dirty={facts['soft_dirty']} "
        f"lazy_pages={facts['lazy_pages']} network_lock={facts['network_lock']}"
    )

    second = run_role(tmp_path)
    assert second.returncode == 0, second.output[-3000:]
    assert second.recap["changed"] == 0, second.output[-3000:]
    assert second.facts == facts


# -- bad input: the source tarball's checksum ----------------------------------------------


def test_source_sha256_mismatch_fails_with_both_checksums(
    tmp_path: Path, tarball_server: TarballServer
):
    cache = tmp_path / "cache"
    result = run_criu_source(
        tmp_path,
        f"version=4.2.1 sha256={WRONG_SHA256} cache_dir={cache} source_url={tarball_server.url}",
    )
    assert result["_rc"] != 0, result
    message = result["msg"]
    assert "mismatch" in message
    assert WRONG_SHA256 in message, "the expected checksum"
    assert TARBALL_SHA256 in message, "the actual checksum"
    assert "criu_source_sha256" in message, "what to set"
    assert list(cache.iterdir()) == [], "a tarball that failed its checksum was kept"


def test_source_right_sha256_is_cached_and_reused(tmp_path: Path, tarball_server: TarballServer):
    cache = tmp_path / "cache"
    args = f"version=4.2.1 sha256={TARBALL_SHA256} cache_dir={cache}"
    requests_before = len(tarball_server.requests)

    first = run_criu_source(tmp_path, f"{args} source_url={tarball_server.url}")
    assert first["_rc"] == 0, first
    assert first["changed"] is True and first["origin"] == "url"
    cached = Path(first["path"])
    assert cached.parent == cache and cached.name == tarball_server.tarball.name
    assert sha256_of(cached) == TARBALL_SHA256 == first["sha256"]
    assert [p.name for p in cache.iterdir()] == [cached.name], "temporary files left"
    assert len(tarball_server.requests) == requests_before + 1

    second = run_criu_source(tmp_path, f"{args} source_url={tarball_server.url}")
    assert second["_rc"] == 0, second
    assert second["changed"] is False and second["origin"] == "cache"
    assert second["path"] == str(cached)
    assert len(tarball_server.requests) == requests_before + 1, "downloaded again"
    # a cache hit needs no network at all
    offline = run_criu_source(tmp_path, f"{args} source_url={DEAD_URL}")
    assert offline["_rc"] == 0 and offline["origin"] == "cache", offline


def test_source_url_with_the_file_scheme(tmp_path: Path, tarball_server: TarballServer):
    """fetch_url reads file:// URLs; the module must take them or refuse them plainly."""
    cache = tmp_path / "cache"
    result = run_criu_source(
        tmp_path,
        f"version=4.2.1 sha256={TARBALL_SHA256} cache_dir={cache} "
        f"source_url=file://{tarball_server.tarball}",
    )
    if result["_rc"] == 0:
        assert result["origin"] == "url" and sha256_of(Path(result["path"])) == TARBALL_SHA256
        return
    assert ": OK (" not in result["msg"], (
        f"file:// read fine but is reported as a failed download: {result['msg']!r} "
        f"(status={result.get('status')!r})"
    )
    assert "file" in result["msg"] and "http" in result["msg"], result["msg"]


def test_role_stops_at_a_source_checksum_mismatch(
    tmp_path: Path, old_criu: Path, tarball_server: TarballServer
):
    """On its way to a build (old CRIU, builds allowed) the role fetches the tarball and
    stops there when the checksum is wrong: nothing is built or installed."""
    old_digest = sha256_of(old_criu)
    run = run_role(
        tmp_path,
        {
            **no_build_vars(tmp_path),
            "criu_install_path": str(old_criu),
            "criu_install": True,
            "criu_allow_build": True,
            "criu_source_url": tarball_server.url,
            "criu_source_sha256": WRONG_SHA256,
        },
    )
    assert run.returncode != 0
    assert "mismatch" in run.message and WRONG_SHA256 in run.message, run.message
    assert TARBALL_SHA256 in run.message, run.message
    assert not (tmp_path / "build").exists()
    assert list((tmp_path / "cache").iterdir()) == []
    assert sha256_of(old_criu) == old_digest
    assert run.facts is None


# -- bad input: a CRIU older than 4.2 that cannot be replaced --------------------------------


def assert_old_criu_refused(run: RoleRun, old_criu: Path, tmp_path: Path) -> None:
    assert run.returncode != 0, run.output[-3000:]
    assert run.facts is None
    assert sha256_of(old_criu) == sha256_of(OLD_CRIU), "the old CRIU was replaced"
    assert not (tmp_path / "build").exists(), "a build was started"


PROBE_ONLY_MESSAGE = ("localhost", "3.17.1", "older than 4.2", "make setup", "bootstrap")


def builds_disabled_message() -> tuple[str, ...]:
    return (
        "localhost",
        "3.17.1",
        "criu_allow_build is false",
        f"the distro offers {distro_offer()}",
        "criu_allow_build=true",
    )


def test_old_criu_when_only_probing(tmp_path: Path, old_criu: Path):
    run = run_role(
        tmp_path,
        {**no_build_vars(tmp_path), "criu_install_path": str(old_criu), "criu_install": False},
    )
    assert_old_criu_refused(run, old_criu, tmp_path)
    for part in PROBE_ONLY_MESSAGE:
        assert part in run.message, (part, run.message)
    assert str(old_criu) in run.message


def test_old_criu_when_builds_are_disabled(tmp_path: Path, old_criu: Path):
    run = run_role(
        tmp_path,
        {
            **no_build_vars(tmp_path),
            "criu_install_path": str(old_criu),
            "criu_install": True,
            "criu_allow_build": False,
        },
    )
    assert_old_criu_refused(run, old_criu, tmp_path)
    for part in builds_disabled_message():
        assert part in run.message, (part, run.message)


@pytest.mark.parametrize(
    ("kv", "expected"),
    [
        (["criu_install=false"], "probe-only"),
        (["criu_install=true", "criu_allow_build=false"], "builds-disabled"),
    ],
    ids=["criu_install=false", "criu_allow_build=false"],
)
def test_old_criu_with_switches_given_as_key_value(
    tmp_path: Path, old_criu: Path, kv: list[str], expected: str
):
    """`-e criu_install=false` on the command line is the string "false": the role must
    read it as false, as it does a YAML/JSON false."""
    run = run_role(tmp_path, {**no_build_vars(tmp_path), "criu_install_path": str(old_criu)}, kv)
    assert_old_criu_refused(run, old_criu, tmp_path)
    parts = PROBE_ONLY_MESSAGE if expected == "probe-only" else builds_disabled_message()
    for part in parts:
        assert part in run.message, (
            f"{' '.join(f'-e {item}' for item in kv)} was not obeyed; the role went on "
            f"towards a build and failed with: {run.message}"
        )
