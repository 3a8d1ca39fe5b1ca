"""Memory images protected at rest and in transit, secrets kept out of the results, and lab
hosts that behave like separate machines (issue 17: items 3, 4, 5 and 7).

The lab tests run on a lab of their own (prefix crsec, 10.74.0.0/24), brought up by the
current lab code for this module and taken down at its end (KEEP_LAB=1 keeps it): they never
touch the default lab. Every results folder a test makes, and every run's output, goes
through the secrets grep (conftest.assert_no_secrets: key material, certificates, AWS keys,
the lab's own SSH key and S3 credentials).

- TLS page server migrations, fused and stepwise: CRIU's page traffic with --tls and the
  experiment's own CA, the TLS files removed from both hosts at the end, images and working
  directories 0700 / 0600 on both hosts and in the results;
- a wrong certificate on either end refused before the workload starts (so before any
  freeze), naming the host that refused and why; a CRIU without TLS refused with its reason;
- the TLS check against CRIU itself on this machine (no lab): GnuTLS accepts the
  experiment's certificates and refuses another CA's;
- lab hosts with their own IPC namespace and /dev/shm; a non-root process refused before the
  workload starts (declared) or before any checkpoint (undeclared), because the lab's root
  lacks CAP_SYS_RESOURCE - and the fact behind it, CRIU's "Can't get rlimit" in a lab host;
- network lazy pages over TLS on the soft-dirty guest lab (this kernel refuses network
  post-copy): test_page_server_lazy.py's guest migration runs over TLS.
"""

from __future__ import annotations

import json
import os
import re
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import (
    REPO,
    VENV_BIN,
    PlaybookRun,
    ansible_playbook,
    assert_no_secrets,
    find_secrets,
    run_playbook,
    suite_env,
)

SEC_LAB_DIR = REPO / ".cache" / "sec-lab"
SEC_LAB = {
    "lab_prefix": "crsec",
    "lab_subnet": "10.74.0.0/24",
    "lab_dir": str(SEC_LAB_DIR),
    "lab_inventory": str(SEC_LAB_DIR / "hosts.yml"),
}
INVENTORY = SEC_LAB_DIR / "hosts.yml"
ROOT = "/var/lib/criu-migration"
CRIU = "/usr/local/sbin/criu"
# A quick memory workload: a few blocks, a short look after the restore.
SMALL = {
    "workload": "memory",
    "mb_size": 32,
    "interval": 0.5,
    "max_memory": 64,
    "post_restore_capture_s": 2,
}
PAGE_SERVER_TLS = {**SMALL, "page_server": True, "page_server_tls": True}

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the lab and CRIU need root")


def lab_playbook(state: str) -> str:
    args = [f"{key}={value}" for key, value in SEC_LAB.items()]
    argv = ["playbooks/lab.yml", "-e", f"lab_state={state}"]
    for arg in args:
        argv += ["-e", arg]
    return ansible_playbook(*argv).stdout


@pytest.fixture(scope="module")
def sec_lab() -> Iterator[Path]:
    """This module's own lab, made by the current lab code (torn down at the module's end)."""
    lab_playbook("present")
    assert INVENTORY.exists()
    yield INVENTORY
    if not os.environ.get("KEEP_LAB"):
        lab_playbook("absent")


def shell(host: str, command: str, check: bool = True) -> str:
    """A shell command on a host of this module's lab; its output."""
    proc = subprocess.run(
        [str(VENV_BIN / "ansible"), "-i", str(INVENTORY), host, "-m", "shell", "-a", command],
        cwd=REPO,
        env=suite_env(),
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        check=False,
    )
    if check:
        assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout.split(">>", 1)[-1].strip()


def migrate(tmp_path: Path, **extravars: Any) -> PlaybookRun:
    return run_playbook(tmp_path, "migrate.yml", extravars, inventory=str(INVENTORY))


def checked(run: PlaybookRun) -> dict[str, Any]:
    """The run's metrics, after the secrets grep of its results and its output."""
    assert_no_secrets(run.results_root, texts=[run.stdout], inventory=INVENTORY)
    return run.metrics()


def modes(host: str, *paths: str) -> list[tuple[str, str]]:
    """(octal mode, path) of every folder and file under `paths` on a lab host."""
    out = shell(host, f"find {' '.join(paths)} -printf '%m %y %p\\n' 2>/dev/null || true")
    return [tuple(line.split(" ", 2)[::2]) for line in out.splitlines() if line.strip()]  # type: ignore[misc]


def assert_private(entries: list[tuple[str, str]], where: str) -> None:
    """Folders 0700 and files 0600, every one."""
    assert entries, f"nothing found {where}"
    loose = [(mode, path) for mode, path in entries if mode not in ("700", "600")]
    assert not loose, f"not private {where}: {loose}"


def assert_results_private(results: Path) -> int:
    """The results folder, its source/ and dest/: folders 0700, files 0600; the file count."""
    count = 0
    for path in [results, *results.rglob("*")]:
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode == (0o700 if path.is_dir() else 0o600), (oct(mode), path)
        count += path.is_file()
    return count


def end_experiment(metrics: dict[str, Any]) -> None:
    """What a keep_running / keep_images run leaves: the workload on the destination (ended
    by removing its flag), the images and working directories on both hosts."""
    eid = metrics["experiment"]["id"]
    shell("destination", f"rm -f {ROOT}/work/{eid}/checkpoint_flag", check=False)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and f"work/{eid}" in shell(
        "destination", "pgrep -af standalone.py || true"
    ):
        time.sleep(0.3)
    for host in ("source", "destination"):
        shell(host, f"rm -rf {ROOT}/images/{eid} {ROOT}/work/{eid}", check=False)


# -- TLS page server migrations -----------------------------------------------------------------


@pytest.mark.lab
def test_tls_page_server_fused_keeps_every_image_private(sec_lab: Path, tmp_path: Path) -> None:
    """Fused path, page server over TLS; keep_images and keep_running leave the images and
    the working directories on both hosts: every folder 0700, every file 0600 there and in
    the results; the TLS files are gone from both hosts."""
    run = migrate(tmp_path, **PAGE_SERVER_TLS, keep_images=True, keep_running=True)
    assert run.rc == 0, run.stdout[-3000:]
    metrics = checked(run)
    try:
        eid = metrics["experiment"]["id"]
        dump = metrics["phases"]["final_dump"]["cmd"]
        tls_dir = f"{ROOT}/tls/{eid}"
        assert dump[dump.index("--tls") :][:7] == [
            "--tls", "--tls-cacert", f"{tls_dir}/ca.pem", "--tls-cert", f"{tls_dir}/cert.pem",
            "--tls-key", f"{tls_dir}/key.pem",
        ]  # fmt: skip
        page_server = metrics["phases"]["restore"]["page_server"]
        assert page_server["session_complete"] is True
        assert page_server["tls"] == {"handshake": True, "refused": False, "error": ""}
        assert page_server["pages_received"] > 8000  # 32 MiB and more, over TLS
        assert metrics["critical_path"]["path"] == "fused"
        assert metrics["verification"]["state_continuous"] is True
        assert "Page traffic: TLS" in run.stdout and "Page images: KEPT" in run.stdout
        for host in ("source", "destination"):
            assert shell(host, f"ls -A {ROOT}/tls/ 2>/dev/null || true") == "", host
        # the images on both hosts, the working directory where the workload runs now
        assert_private(modes("source", f"{ROOT}/images/{eid}"), "on the source")
        assert_private(
            modes("destination", f"{ROOT}/images/{eid}", f"{ROOT}/work/{eid}"),
            "on the destination",
        )
        pages = [p for _m, p in modes("destination", f"{ROOT}/images/{eid}") if "pages-" in p]
        assert pages, "the page server's pages are on the destination"
        results = run.only_results_dir()
        assert sorted(results.glob("dest/*/pages-*.img")), "keep_images: pages in the results"
        assert assert_results_private(results) > 20
    finally:
        end_experiment(metrics)


@pytest.mark.lab
def test_tls_page_server_stepwise_leaves_nothing_behind(sec_lab: Path, tmp_path: Path) -> None:
    run = migrate(tmp_path, **PAGE_SERVER_TLS, critical_path="stepwise")
    assert run.rc == 0, run.stdout[-3000:]
    metrics = checked(run)
    eid = metrics["experiment"]["id"]
    assert metrics["critical_path"]["path"] == "stepwise"
    assert "--tls" in metrics["phases"]["final_dump"]["cmd"]
    assert metrics["phases"]["restore"]["page_server"]["tls"]["handshake"] is True
    assert "Page images" not in run.stdout  # not kept
    for host in ("source", "destination"):
        left = shell(host, f"ls -d {ROOT}/tls/{eid} {ROOT}/images/{eid} 2>/dev/null || true")
        assert left == "", (host, left)
    results = run.only_results_dir()
    assert not sorted(results.rglob("pages-*.img"))
    assert_results_private(results)


@pytest.mark.lab
@pytest.mark.parametrize(
    ("side", "refusal"),
    [
        # the dump's end refuses the page server's certificate (OpenSSL's words)...
        ("destination", "source refused the certificate of destination (unable to get local "
                        "issuer certificate)"),
        # ...and CRIU's page server (GnuTLS) the dump's
        ("source", "criu page-server on destination refused the certificate of source (The "
                   "certificate is NOT trusted. The certificate issuer is unknown.)"),
    ],
)  # fmt: skip
def test_a_wrong_certificate_is_refused_before_the_workload_starts(
    sec_lab: Path, tmp_path: Path, side: str, refusal: str
) -> None:
    run = migrate(tmp_path, **PAGE_SERVER_TLS, criu_tls_fault="wrong_ca", criu_tls_fault_side=side)
    assert run.rc != 0
    metrics = checked(run)
    assert metrics["status"] == "failed"
    assert metrics["failure"]["phase"] == "criu_tls" or "TLS check" in metrics["failure"]["task"]
    message = " ".join(metrics["failure"]["msg"].split())
    assert message.startswith(
        "page_server_tls: the TLS check between source and destination (10.74.0.12:27000) "
        "failed before the workload started: "
    )
    assert refusal in message
    # nothing ran, so nothing was frozen: no workload, no dump, no progress
    assert "workload_start" not in {t["role"] for t in metrics["tasks"]}
    assert "final_dump" not in metrics["phases"]
    assert not list(run.only_results_dir().rglob("progress.log"))
    eid = metrics["experiment"]["id"]
    for host in ("source", "destination"):
        assert shell(host, f"ls -d {ROOT}/tls/{eid} 2>/dev/null || true") == "", host
        assert f"work/{eid}" not in shell(host, "pgrep -af standalone.py || true")


@pytest.mark.lab
def test_a_criu_without_tls_is_refused_with_its_reason(sec_lab: Path, tmp_path: Path) -> None:
    """A CRIU built without GnuTLS answers --tls with "CRIU was built without TLS support"
    (criu/config.c); the stand-in replays that and runs the real CRIU otherwise."""
    stand_in = REPO / "tests" / "fixtures" / "criu_role" / "criu-without-tls"
    run = migrate(tmp_path, **PAGE_SERVER_TLS, criu_install_path=str(stand_in))
    assert run.rc != 0
    metrics = checked(run)
    message = " ".join(metrics["failure"]["msg"].split())
    # both hosts run the stand-in: whichever refused first names itself
    assert re.search(
        r"page_server_tls=true \(the page traffic over TLS\) needs a CRIU built with TLS "
        r"support \(GnuTLS\), which (source|destination) \(kernel",
        message,
    ), message
    assert "criu check --tls: CRIU was built without TLS support" in message
    assert "set page_server_tls=false" in message
    assert "workload_start" not in {t["role"] for t in metrics["tasks"]}


@pytest.mark.lab
def test_without_page_traffic_page_server_tls_changes_nothing(
    sec_lab: Path, tmp_path: Path
) -> None:
    """page_server_tls=true (the aws default) with rsync alone: the transfer is SSH already,
    no TLS material is made."""
    run = migrate(tmp_path, **SMALL, page_server_tls=True)
    assert run.rc == 0, run.stdout[-3000:]
    metrics = checked(run)
    assert not any("criu_tls" in (t["role"] or "") for t in metrics["tasks"])
    assert "--tls" not in metrics["phases"]["final_dump"]["cmd"]
    assert "Page traffic" not in run.stdout
    assert_results_private(run.only_results_dir())


# -- the TLS check against CRIU itself, on this machine -------------------------------------------


def free_port(address: str) -> int:
    with socket.socket() as sock:
        sock.bind((address, 0))
        return int(sock.getsockname()[1])


def module(name: str, args: dict[str, Any], tmp_path: Path) -> dict[str, Any]:
    """A library/ module run on this machine the way Ansible runs it (its JSON result)."""
    proc = subprocess.run(
        [str(VENV_BIN / "ansible"), "localhost", "-m", name, "-a", json.dumps(args), "-o"],
        cwd=REPO,
        env={**suite_env(), "ANSIBLE_PYTHON_INTERPRETER": sys.executable},
        capture_output=True,
        text=True,
        check=False,
    )
    out = proc.stdout
    return json.loads(out[out.index("{") :]) if "{" in out else {"failed": True, "msg": out}


@pytest.mark.parametrize(
    ("server_ca", "client_ca", "client_ok", "server_error"),
    [
        ("ours", "ours", True, ""),
        ("other", "ours", False, ""),  # the client refuses the server
        ("ours", "other", True, "The certificate is NOT trusted. The certificate issuer is unknown."),
    ],
)  # fmt: skip
def test_the_tls_check_against_criu_page_server(
    tmp_path: Path, server_ca: str, client_ca: str, client_ok: bool, server_error: str
) -> None:
    """criu page-server --tls (GnuTLS) with one end's files, tls_probe (OpenSSL) with the
    other's: what the role's check decides on."""
    hosts = [{"name": "source", "address": "127.0.0.1"}, {"name": "dest", "address": "127.0.0.2"}]
    ours = module("tls_material", {"dir": str(tmp_path / "ours"), "hosts": hosts}, tmp_path)
    other = module("tls_material", {"dir": str(tmp_path / "other"), "hosts": hosts}, tmp_path)
    pick = {"ours": ours, "other": other}
    server = {**pick[server_ca]["hosts"]["dest"], "cacert": ours["cacert"]}
    client = {**pick[client_ca]["hosts"]["source"], "cacert": ours["cacert"]}
    port = free_port("127.0.0.2")
    images = tmp_path / "probe"
    started = module(
        "criu_daemon",
        {"daemon": "page-server", "criu_bin": CRIU, "images_dir": str(images),
         "address": "127.0.0.2", "port": port, "tls": True, "tls_cacert": server["cacert"],
         "tls_cert": server["cert"], "tls_key": server["key"],
         "pidfile": str(images / "ps.pid"), "log_file": str(images / "ps.log")},
        tmp_path,
    )  # fmt: skip
    assert not started.get("failed"), started
    assert "--tls-no-cn-verify" in started["cmd"]
    probe = module(
        "tls_probe",
        {"address": "127.0.0.2", "port": port, "cacert": client["cacert"],
         "cert": client["cert"], "key": client["key"], "timeout": 5},
        tmp_path,
    )  # fmt: skip
    stopped = module(
        "criu_daemon",
        {"daemon": "page-server", "state": "stopped", "pidfile": str(images / "ps.pid"),
         "wait_s": 1},
        tmp_path,
    )  # fmt: skip
    assert probe["ok"] is client_ok, probe
    assert probe.get("server_closed", False) is bool(server_error), probe
    verdict = stopped["summary"].get("tls", {})
    if client_ok:
        assert verdict["handshake"] is True
        assert verdict["error"] == server_error
    else:
        assert probe["refused_server"] is True
        assert probe["reason"] == "unable to get local issuer certificate"
    assert find_secrets(images) == []  # CRIU's log names the files, never their content


# -- lab hosts like separate machines -------------------------------------------------------------


@pytest.mark.lab
def test_lab_hosts_have_their_own_ipc_namespace_and_shared_memory(sec_lab: Path) -> None:
    control = os.readlink("/proc/self/ns/ipc")
    ns = {host: shell(host, "readlink /proc/self/ns/ipc") for host in ("source", "destination")}
    assert control not in ns.values() and ns["source"] != ns["destination"], ns
    name = f"crsec-{os.getpid()}"
    shm = shell(
        "source",
        f"dd if=/dev/zero of=/dev/shm/{name} bs=4096 count=1 2>/dev/null; "
        f"ipcmk -M 4096 | awk '{{print $NF}}'",
    )
    shmid = shm.split()[-1]
    try:
        # POSIX shared memory (/dev/shm) and SysV shared memory stay on the source
        assert name in shell("source", "ls /dev/shm")
        assert f" {shmid} " in f" {shell('source', 'ipcs -m')} "
        assert name not in shell("destination", "ls /dev/shm")
        assert not Path(f"/dev/shm/{name}").exists()
        for ipcs in (
            shell("destination", "ipcs -m"),
            subprocess.run(["ipcs", "-m"], capture_output=True, text=True).stdout,
        ):
            assert all(line.split()[1] != shmid for line in ipcs.splitlines()[3:] if line.split())
        mounts = shell("source", "findmnt -n -o FSTYPE --mountpoint /dev/shm")
        assert mounts == "tmpfs"  # the host's own, and only it
    finally:
        shell("source", f"rm -f /dev/shm/{name}; ipcrm -m {shmid}", check=False)


@pytest.mark.lab
def test_a_host_made_before_the_ipc_namespace_is_outdated(sec_lab: Path) -> None:
    """What lab-up replaces, like a broken host: a host without its own ipc namespace and
    private mounts (as hosts were made before), never one made now."""
    from local_lab import isolation_problems

    state = json.loads((SEC_LAB_DIR / "state.json").read_text())
    for host in ("source", "destination"):
        assert isolation_problems(int(state["hosts"][host]["init_pid"])) == [], host
    old_style = subprocess.Popen(
        ["unshare", "--pid", "--mount", "--uts", "--net", "--fork", "--mount-proc",
         "--propagation", "private", "sleep", "30"],
        stdin=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 5
        children = Path(f"/proc/{old_style.pid}/task/{old_style.pid}/children")
        while not children.read_text().split() and time.monotonic() < deadline:
            time.sleep(0.02)
        init = int(children.read_text().split()[0])
        problems = isolation_problems(init)
        os.kill(init, 9)  # the pid namespace's init: its end ends the namespace
        assert problems[0] == "no ipc namespace of its own"
        assert "/dev/shm is this machine's" in problems
        assert not any("pid" in p or "net" in p for p in problems)
    finally:
        old_style.kill()
        old_style.wait()


@pytest.mark.lab
def test_the_labs_root_cannot_dump_a_non_root_process(sec_lab: Path) -> None:
    """The fact behind the refusals: root in a lab host lacks CAP_SYS_RESOURCE, and CRIU
    cannot dump a process of another user without it."""
    caps = int(shell("source", "awk '/^CapEff/ {print $2}' /proc/self/status"), 16)
    if caps >> 24 & 1:
        pytest.skip("capability: root here has CAP_SYS_RESOURCE, so CRIU dumps any process")
    folder = f"{ROOT}/images/crsec-nonroot-{os.getpid()}"
    script = (
        f"mkdir -p {folder}; "
        "setsid setpriv --reuid 65534 --regid 65534 --clear-groups "
        "python3 -c 'import os, time; os.closerange(3, 1024); time.sleep(60)' "
        "</dev/null >/dev/null 2>&1 & pid=$!; sleep 0.5; "
        f"{CRIU} dump --tree $pid --images-dir {folder} --log-file {folder}/dump.log -v4 "
        "--shell-job; echo rc=$?; kill $pid; "
        f'grep -o "Can\'t get rlimit 0: Operation not permitted" {folder}/dump.log; '
        f"rm -rf {folder}"
    )
    out = shell("source", script, check=False)
    assert "rc=1" in out, out
    assert "Can't get rlimit 0: Operation not permitted" in out, out


NONROOT_SCRIPT = '''\
#!/usr/bin/env python3
"""A workload whose tree runs a process as nobody (a database that refuses to run as root)."""
import argparse, json, os, socket, sys, time

parser = argparse.ArgumentParser()
parser.add_argument("--working-dir", required=True)
parser.add_argument("--interval", type=float, default=0.5)
args = parser.parse_args()
work = args.working_dir
child = os.fork()
if child == 0:  # the "database": nobody
    os.setgid(65534)
    os.setuid(65534)
    while True:
        time.sleep(1)
with open(os.path.join(work, "checkpoint_ready.tmp"), "w") as f:
    f.write(f"ready:{os.getpid()}")
os.replace(os.path.join(work, "checkpoint_ready.tmp"), os.path.join(work, "checkpoint_ready"))
seq = 0
with open(os.path.join(work, "progress.log"), "a") as log:
    while os.path.exists(os.path.join(work, "checkpoint_flag")):
        seq += 1
        log.write(json.dumps({"seq": seq, "ts": time.time(), "host": socket.gethostname()}) + "\\n")
        log.flush()
        time.sleep(args.interval)
os.kill(child, 9)
print("restore completed")
'''


def nonroot_suite(tmp_path: Path, runs_as: dict[str, str] | None) -> dict[str, str]:
    """A workloads folder with the `nonroot` workload (declared with `runs_as` or not), and
    the variables that point a run at it."""
    folder = tmp_path / "suite" / "workloads"
    folder.mkdir(parents=True)
    (folder / "nonroot_standalone.py").write_text(NONROOT_SCRIPT)
    criu = {"tcp_established": False, "process_tree": ["nonroot-db"]}
    if runs_as is not None:
        criu["runs_as"] = runs_as
    declaration = {
        "name": "nonroot",
        "description": "a process tree with a process that runs as nobody",
        "script": "nonroot_standalone.py",
        "params": {"interval": {"type": "float", "default": 0.5, "min": 0.01}},
        "deps": {"apt": [], "python": [], "pip": []},
        "criu": criu,
        "continuity": {"equal": [], "close": {}, "increasing": []},
    }
    (folder / "nonroot.yml").write_text(json.dumps(declaration))
    return {
        "workload": "nonroot",
        "workload_declarations_dir": str(folder),
        "suite_dir": str(folder.parent),
        # the lab's sizes name the suite's workloads, which this folder does not have
        "workload_defaults": {},
    }


@pytest.mark.lab
def test_a_declared_non_root_process_is_refused_before_the_workload_starts(
    sec_lab: Path, tmp_path: Path
) -> None:
    run = migrate(tmp_path, **nonroot_suite(tmp_path, {"nonroot-db": "nobody"}))
    assert run.rc != 0
    metrics = checked(run)
    message = " ".join(metrics["failure"]["msg"].split())
    assert "workload nonroot runs nonroot-db as nobody (criu.runs_as)" in message
    assert "needs CAP_SYS_RESOURCE: root on source lacks it" in message
    assert "workload_start" not in {t["role"] for t in metrics["tasks"]}


@pytest.mark.lab
def test_an_undeclared_non_root_process_is_refused_before_any_checkpoint(
    sec_lab: Path, tmp_path: Path
) -> None:
    run = migrate(tmp_path, **nonroot_suite(tmp_path, None))
    assert run.rc != 0
    metrics = checked(run)
    message = " ".join(metrics["failure"]["msg"].split())
    assert message.startswith(
        "the workload's process tree runs processes of another user than root - python3 (pid "
    )
    assert ", uid 65534) - and root on source lacks CAP_SYS_RESOURCE" in message
    assert "Declare them in the workload's criu.runs_as" in message
    assert "final_dump" not in metrics["phases"]  # never frozen
    # a failed run leaves the workload where it runs: on the source, never checkpointed
    eid = metrics["experiment"]["id"]
    assert f"work/{eid}" in shell("source", "pgrep -af nonroot_standalone || true")
    shell("source", f"rm -f {ROOT}/work/{eid}/checkpoint_flag")  # it ends, and its child
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and f"work/{eid}" in shell(
        "source", "pgrep -af nonroot_standalone || true"
    ):
        time.sleep(0.3)
    for host in ("source", "destination"):
        shell(host, f"rm -rf {ROOT}/work/{eid} {ROOT}/images/{eid}", check=False)


# -- network lazy pages over TLS, on the guest lab --------------------------------------------------


# Network lazy pages over TLS on the soft-dirty guest lab (this kernel refuses network
# post-copy): tests/integration/test_page_server_lazy.py runs its guest migration over TLS.


def test_the_secrets_grep_finds_what_it_looks_for(tmp_path: Path) -> None:
    """The helper itself: a key, a certificate, an AWS key id and a given secret are found
    (in a log, in binary data); a page image's own certificates are the workload's."""
    (tmp_path / "a.log").write_text("x -----BEGIN EC PRIVATE KEY----- y")
    (tmp_path / "b.json").write_text('{"id": "AKIAABCDEFGHIJKLMNOP"}')
    (tmp_path / "c.bin").write_bytes(b"\0\1-----BEGIN CERTIFICATE-----\0s3cr3t-value-1234\0")
    (tmp_path / "pages-1.img").write_bytes(b"-----BEGIN CERTIFICATE-----")
    found = find_secrets(tmp_path, ["s3cr3t-value-1234"], ["AKIAQRSTUVWXYZABCDEF"])
    assert found == [
        f"{tmp_path}/a.log: a PEM private key",
        f"{tmp_path}/b.json: an AWS access key id",
        f"{tmp_path}/c.bin: a PEM certificate",
        f"{tmp_path}/c.bin: secret #1 given (17 bytes)",
        "output #1: an AWS access key id",
    ]
    with pytest.raises(AssertionError, match="secrets in the results"):
        assert_no_secrets(tmp_path)
