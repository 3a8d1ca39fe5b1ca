"""page_server_tls: CRIU's --tls options, the TLS material, the handshake check, the gating.

The material is made for real (library/tls_material.py, `cryptography`) and the handshake
check (library/tls_probe.py) runs against Python TLS servers on loopback that accept or
refuse as CRIU's page server does; the check against CRIU itself (GnuTLS) is in
tests/integration/test_security.py. Also here: the experiment's private file modes
(module_utils/private_files.py) and the refusal of a workload with a non-root process where
root lacks CAP_SYS_RESOURCE.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import socket
import ssl
import stat
import subprocess
import tarfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import criu
import pytest
import results_bundle
import tls_material
import tls_probe
import yaml
from criu_cli import build_criu_argv, summarize_page_server_log, tls_log_verdict
from criu_filters import criu_facts_from_probe
from experiment_plan import SETTINGS, gating_errors, migration_flags, non_root_processes
from fakes import run_ansible_module
from metrics_report import summary_text
from migration_layout import node_paths
from private_files import private_umask, umasked
from workload_registry import DeclarationError, parse_declaration

REPO = Path(__file__).resolve().parents[2]
CRIU = "/usr/local/sbin/criu"
TLS = {"tls": True, "tls_cacert": "/t/ca.pem", "tls_cert": "/t/cert.pem", "tls_key": "/t/key.pem"}
TLS_ARGS = ["--tls", "--tls-cacert", "/t/ca.pem", "--tls-cert", "/t/cert.pem"]
TLS_ARGS += ["--tls-key", "/t/key.pem"]
SOURCE, DESTINATION = "10.77.0.11", "10.77.0.12"

# What CRIU 4.2.1 (criu/tls.c) logged on this machine: a page server that accepted the
# dump's certificate, one that refused a certificate of another CA, and one whose own
# address was compared with the client's certificate (without --tls-no-cn-verify).
GOOD_LOG = """\
(00.044201) pidfile: Wrote pid 6673 to /tmp/tlsx/ps.pid (4 bytes)
(00.121307) tls: TLS handshake completed
(00.416434) page-xfer: Session over
"""
WRONG_CA_LOG = """\
(00.066611) tls: TLS handshake completed
(00.066723) Error (criu/tls.c:226): tls: Invalid certificate
(00.066749) Error (criu/tls.c:205): tls: The certificate is NOT trusted. The certificate issuer is unknown.
(00.066804) Error (criu/util.c:228): Unable to close fd 7: Bad file descriptor
"""
NAME_LOG = """\
(00.121307) tls: TLS handshake completed
(00.121763) Error (criu/tls.c:226): tls: Invalid certificate
(00.121773) Error (criu/tls.c:205): tls: The certificate is NOT trusted. The name in the certificate does not match the expected.
"""
AFTER_A_GOOD_HANDSHAKE_LOG = """\
(00.079083) tls: TLS handshake completed
(01.085097) Error (criu/tls.c:152): tls: Failed receiving data: The TLS connection was non-properly terminated.
(01.085116) Error (criu/page-xfer.c:1223): page-xfer: Can't read pagemap from socket: Input/output error
(01.085206) page-xfer: Session over
"""


# -- CRIU's argv ------------------------------------------------------------------------------


def test_the_dump_to_a_page_server_checks_the_servers_name() -> None:
    argv = build_criu_argv(
        CRIU, "dump", {"pid": 42, "images_dir": "/i", "page_server": True, "address": DESTINATION,
                       "port": 27000, **TLS},
    )  # fmt: skip
    assert argv[argv.index("--port") + 2 :] == TLS_ARGS  # no --tls-no-cn-verify: a client


def test_the_serving_ends_check_the_client_against_the_ca_only() -> None:
    """CRIU compares the peer's certificate with --address on both ends; on the serving end
    that is its own address, so the client's certificate is checked against the CA only."""
    server = build_criu_argv(
        CRIU, "page-server", {"images_dir": "/i", "address": DESTINATION, "port": 27000, **TLS}
    )
    lazy_dump = build_criu_argv(
        CRIU, "dump", {"pid": 42, "images_dir": "/i", "lazy_pages": True, "address": SOURCE,
                       "port": 27001, **TLS},
    )  # fmt: skip
    for argv in (server, lazy_dump):
        assert argv[argv.index("--port") + 2 :][:8] == [*TLS_ARGS, "--tls-no-cn-verify"]


def test_the_lazy_pages_daemon_fetching_pages_is_a_client() -> None:
    argv = build_criu_argv(
        CRIU, "lazy-pages", {"images_dir": "/i", "page_server": True, "address": SOURCE,
                             "port": 27001, **TLS},
    )  # fmt: skip
    assert argv[argv.index("--tls") : argv.index("--tls") + 7] == TLS_ARGS
    assert "--tls-no-cn-verify" not in argv


@pytest.mark.parametrize(
    ("action", "opts"),
    [
        ("restore", {"images_dir": "/i"}),
        ("pre-dump", {"pid": 42, "images_dir": "/i"}),
        ("dump", {"pid": 42, "images_dir": "/i"}),  # a dump to local disk
        ("lazy-pages", {"images_dir": "/i"}),  # lazy pages from the transferred images
    ],
)
def test_no_tls_where_criu_talks_no_tcp(action: str, opts: dict[str, Any]) -> None:
    assert not any(arg.startswith("--tls") for arg in build_criu_argv(CRIU, action, opts | TLS))


def test_tls_without_its_files_is_refused_before_criu_runs() -> None:
    with pytest.raises(ValueError, match="with tls needs tls_cert, tls_key"):
        build_criu_argv(
            CRIU, "page-server", {"images_dir": "/i", "address": DESTINATION, "port": 1,
                                  "tls": True, "tls_cacert": "/t/ca.pem"},
        )  # fmt: skip


def test_tls_false_adds_nothing() -> None:
    opts = {"images_dir": "/i", "address": DESTINATION, "port": 27000}
    assert build_criu_argv(CRIU, "page-server", opts | TLS | {"tls": False}) == build_criu_argv(
        CRIU, "page-server", opts
    )


# -- CRIU's TLS log lines ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("log", "handshake", "error"),
    [
        (GOOD_LOG, True, ""),
        (AFTER_A_GOOD_HANDSHAKE_LOG, True, ""),
        (WRONG_CA_LOG, True, "The certificate is NOT trusted. The certificate issuer is unknown."),
        (NAME_LOG, True, "The certificate is NOT trusted. The name in the certificate does not "
                         "match the expected."),
        ("(00.02) Error (criu/tls.c:241): tls: TLS handshake failed: Decryption has failed.\n",
         False, "TLS handshake failed: Decryption has failed."),
        ("(00.03) Error (criu/tls.c:302): tls: Failed to set certificate/private key pair: "
         "Error while reading file.\n", False,
         "Failed to set certificate/private key pair: Error while reading file."),
    ],
)  # fmt: skip
def test_tls_log_verdict(log: str, handshake: bool, error: str) -> None:
    verdict = tls_log_verdict(log)
    assert (verdict["handshake"], verdict["error"], verdict["refused"]) == (
        handshake,
        error,
        bool(error),
    )


def test_the_page_servers_summary_has_its_tls_verdict_only_with_tls() -> None:
    assert summarize_page_server_log(WRONG_CA_LOG)["tls"]["refused"] is True
    assert "tls" not in summarize_page_server_log("(00.01) page-xfer: Session over\n")


# -- settings, flags, paths, facts and the gating ---------------------------------------------


def test_page_server_tls_is_off_by_default_and_on_for_aws() -> None:
    assert SETTINGS["page_server_tls"].type == "bool"
    assert yaml.safe_load((REPO / "group_vars" / "all.yml").read_text())["page_server_tls"] is False
    assert yaml.safe_load((REPO / "group_vars" / "aws.yml").read_text())["page_server_tls"] is True
    assert "page_server_tls" not in yaml.safe_load((REPO / "group_vars" / "lab.yml").read_text())


@pytest.mark.parametrize(
    ("settings", "tls"),
    [
        ({"page_server_tls": True, "page_server": True}, True),
        ({"page_server_tls": True, "lazy_pages": True, "lazy_pages_mode": "network"}, True),
        # no page traffic of CRIU's own: the transfer is SSH already
        ({"page_server_tls": True}, False),
        ({"page_server_tls": True, "lazy_pages": True, "lazy_pages_mode": "images"}, False),
        ({"page_server_tls": False, "page_server": True}, False),
    ],
)
def test_the_tls_flag(settings: dict[str, Any], tls: bool) -> None:
    assert migration_flags(settings, None)["tls"] is tls


def test_the_tls_files_lie_outside_the_checkpoint_folder() -> None:
    paths = node_paths("/var/lib/criu-migration", "e1", "source", {"transfer": "rsync"})
    assert paths["tls_dir"] == "/var/lib/criu-migration/tls/e1"
    assert [paths[k] for k in ("tls_cacert", "tls_cert", "tls_key")] == [
        f"/var/lib/criu-migration/tls/e1/{name}" for name in ("ca.pem", "cert.pem", "key.pem")
    ]
    assert not paths["tls_dir"].startswith(paths["checkpoint_dir"])
    assert not paths["tls_dir"].startswith(paths["working_dir"])


def test_facts_say_whether_criu_takes_tls_and_root_may_dump_another_user() -> None:
    facts = criu_facts_from_probe(
        {"tls": {"ok": False, "reason": "criu check --tls: CRIU was built without TLS support"},
         "cap_sys_resource": True},
    )  # fmt: skip
    assert (facts["tls"], facts["cap_sys_resource"]) == (False, True)
    assert facts["tls_reason"] == "criu check --tls: CRIU was built without TLS support"


def facts(**overrides: Any) -> dict[str, Any]:
    probe = {"check": {"ok": True}, "kernel": "6.18", "tls": {"ok": True, "reason": ""}}
    return {**criu_facts_from_probe(probe, "/usr/sbin/iptables-restore"), **overrides}


MEMORY = {"name": "memory", "criu": {"tcp_established": False}}
PAGE_SERVER_TLS = {"page_server": True, "page_server_tls": True, "checkpoint_strategy": "full"}


def test_a_criu_without_tls_is_refused_on_both_hosts_with_its_reason() -> None:
    no_tls = facts(tls=False, tls_reason="criu check --tls: CRIU was built without TLS support")
    for role in ("source", "destination"):
        errors = gating_errors(no_tls, role, role, PAGE_SERVER_TLS, MEMORY)
        assert len(errors) == 1
        assert errors[0].startswith("page_server_tls=true (the page traffic over TLS) needs a ")
        assert "CRIU built with TLS support (GnuTLS), which " + role in errors[0]
        assert "CRIU was built without TLS support" in errors[0]
        assert "page_server_tls=false" in errors[0]


def test_no_tls_needed_without_page_traffic() -> None:
    no_tls = facts(tls=False)
    settings = {"page_server_tls": True, "checkpoint_strategy": "full"}
    assert gating_errors(no_tls, "source", "source", settings, MEMORY) == []
    assert gating_errors(facts(), "source", "source", PAGE_SERVER_TLS, MEMORY) == []


NON_ROOT = {"name": "pg", "criu": {"runs_as": {"postgres": "postgres", "pg_ctl": "root"}}}


def test_a_non_root_process_is_refused_where_root_lacks_cap_sys_resource() -> None:
    errors = gating_errors(facts(cap_sys_resource=False), "src", "source", {}, NON_ROOT)
    assert errors == [
        "workload pg runs postgres as postgres (criu.runs_as), and criu dump reads the rlimits "
        "of every process it dumps, which for a process of another user needs "
        "CAP_SYS_RESOURCE: root on src lacks it (the dump would fail with \"Can't get rlimit "
        '0: Operation not permitted"); run postgres as root, or migrate from hosts whose root '
        "has CAP_SYS_RESOURCE (docs/lab.md)"
    ]


def test_a_non_root_process_passes_with_cap_sys_resource_and_never_gates_the_restore() -> None:
    assert gating_errors(facts(cap_sys_resource=True), "src", "source", {}, NON_ROOT) == []
    # the restore of a non-root process works without the capability (docs/lab.md)
    assert gating_errors(facts(cap_sys_resource=False), "dst", "destination", {}, NON_ROOT) == []
    assert non_root_processes({"runs_as": {"a": "root", "b": 0, "c": 1000}}) == [("c", "1000")]


def test_runs_as_must_map_processes_to_users() -> None:
    base = {"name": "x", "script": "x.py", "params": {}}
    parse_declaration({**base, "criu": {"runs_as": {"postgres": "postgres"}}})
    for bad in (["postgres"], {"postgres": ""}, {"postgres": None}):
        with pytest.raises(DeclarationError, match=r"criu\.runs_as maps process names"):
            parse_declaration({**base, "criu": {"runs_as": bad}})


def test_capability_bits_are_read_from_capeff(tmp_path: Path) -> None:
    status = tmp_path / "status"
    status.write_text("Name:\tx\nCapEff:\t000001fffeffffff\n")  # this machine's root
    assert criu.has_capability(criu.CAP_SYS_RESOURCE, str(status)) is False
    assert criu.has_capability(21, str(status)) is True  # CAP_SYS_ADMIN
    status.write_text("CapEff:\t000001ffffffffff\n")
    assert criu.has_capability(criu.CAP_SYS_RESOURCE, str(status)) is True
    assert criu.has_capability(24, str(tmp_path / "missing")) is False


# -- the material -----------------------------------------------------------------------------


def make_material(tmp_path: Path, capsys: pytest.CaptureFixture[str], **extra: Any) -> dict:
    rc, result = run_ansible_module(
        tls_material,
        {
            "dir": str(tmp_path / "tls"),
            "name": "memory_20261206_101010-ab12cd",
            "hosts": [{"name": "source", "address": "127.0.0.1"},
                      {"name": "destination", "address": "127.0.0.2"}],
            **extra,
        },
        capsys,
    )  # fmt: skip
    assert rc == 0, result
    return result


def load_cert(path: str) -> Any:
    from cryptography import x509

    return x509.load_pem_x509_certificate(Path(path).read_bytes())


def test_the_material_is_private_and_the_ca_key_is_written_nowhere(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    result = make_material(tmp_path, capsys)
    folder = Path(result["dir"])
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    files = sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))
    assert files == [
        "ca.pem", "destination", "destination/ca.pem", "destination/cert.pem",
        "destination/key.pem", "source", "source/ca.pem", "source/cert.pem", "source/key.pem",
    ]  # fmt: skip
    for path in folder.rglob("*"):
        assert stat.S_IMODE(path.stat().st_mode) == (0o700 if path.is_dir() else 0o600), path
    private = [
        str(p.relative_to(folder))
        for p in folder.rglob("*.pem")
        if b"PRIVATE KEY" in p.read_bytes()
    ]
    assert sorted(private) == ["destination/key.pem", "source/key.pem"]  # no CA key anywhere
    assert result["hosts"]["source"]["key"] == str(folder / "source" / "key.pem")
    assert (folder / "source" / "ca.pem").read_bytes() == Path(result["cacert"]).read_bytes()
    # the result carries paths and fingerprints, never key material
    assert "PRIVATE" not in str(result) and "BEGIN" not in str(result)


def test_each_certificate_names_its_host_and_chains_to_the_experiments_ca(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from cryptography import x509
    from cryptography.x509.oid import ExtendedKeyUsageOID

    result = make_material(tmp_path, capsys)
    ca = load_cert(result["cacert"])
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is True
    for name, address in (("source", "127.0.0.1"), ("destination", "127.0.0.2")):
        cert = load_cert(result["hosts"][name]["cert"])
        cert.verify_directly_issued_by(ca)
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert names.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address(address)]
        usage = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        assert set(usage) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
        assert cert.not_valid_before_utc <= dt.datetime.now(dt.UTC) - dt.timedelta(minutes=59)
        assert result["hosts"][name]["address"] == address


def test_the_faults_give_one_host_a_wrong_certificate(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from cryptography import x509

    wrong_ca = make_material(tmp_path / "a", capsys, fault="wrong_ca", fault_host="destination")
    ca = load_cert(wrong_ca["cacert"])
    load_cert(wrong_ca["hosts"]["source"]["cert"]).verify_directly_issued_by(ca)
    with pytest.raises(ValueError):  # signed by another CA
        load_cert(wrong_ca["hosts"]["destination"]["cert"]).verify_directly_issued_by(ca)
    wrong_name = make_material(tmp_path / "b", capsys, fault="wrong_name", fault_host="source")
    cert = load_cert(wrong_name["hosts"]["source"]["cert"])
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("192.0.2.1")]


def test_absent_removes_the_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    result = make_material(tmp_path, capsys)
    rc, gone = run_ansible_module(tls_material, {"state": "absent", "dir": result["dir"]}, capsys)
    assert (rc, gone["changed"], Path(result["dir"]).exists()) == (0, True, False)


def test_bad_hosts_are_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, result = run_ansible_module(
        tls_material, {"dir": str(tmp_path), "hosts": [{"name": "a"}]}, capsys
    )
    assert rc == 1 and "every host needs a name and an address" in result["msg"]


# -- the handshake check against servers that accept or refuse --------------------------------


class Server:
    """A TLS server on loopback that requires a client certificate, as CRIU's page server
    does: it closes the connection when it refuses the client's certificate."""

    def __init__(self, cert: str, key: str, client_ca: str) -> None:
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(cert, key)
        self.context.load_verify_locations(client_ca)
        self.context.verify_mode = ssl.CERT_REQUIRED
        self.sock = socket.create_server(("127.0.0.2", 0))
        self.port = self.sock.getsockname()[1]
        self.accepted: list[bool] = []
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self) -> None:
        conn, _ = self.sock.accept()
        try:
            with self.context.wrap_socket(conn, server_side=True) as tls:
                self.accepted.append(True)
                tls.settimeout(3)
                tls.recv(1)
        except (ssl.SSLError, OSError):
            self.accepted.append(False)
        finally:
            self.sock.close()


@pytest.fixture
def material(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    return make_material(tmp_path, capsys)


def probe(material: dict[str, Any], port: int, capsys: pytest.CaptureFixture[str]) -> dict:
    rc, result = run_ansible_module(
        tls_probe,
        {
            "address": "127.0.0.2",
            "port": port,
            "cacert": material["cacert"],
            "cert": material["hosts"]["source"]["cert"],
            "key": material["hosts"]["source"]["key"],
            "timeout": 3,
        },
        capsys,
    )
    assert rc == 0 and result["changed"] is False
    return result


def test_a_good_pair_shakes_hands(material: dict[str, Any], capsys: Any) -> None:
    dest = material["hosts"]["destination"]
    server = Server(dest["cert"], dest["key"], material["cacert"])
    result = probe(material, server.port, capsys)
    server.thread.join(5)
    assert (result["ok"], result["server_closed"], result["version"]) == (True, False, "TLSv1.3")
    assert server.accepted == [True]


def test_a_server_certificate_of_another_ca_is_refused(
    tmp_path: Path, material: dict[str, Any], capsys: Any
) -> None:
    other = make_material(tmp_path / "other", capsys)["hosts"]["destination"]
    server = Server(other["cert"], other["key"], material["cacert"])
    result = probe(material, server.port, capsys)
    assert (result["ok"], result["refused_server"]) == (False, True)
    assert result["reason"] == "unable to get local issuer certificate"


def test_a_server_certificate_naming_another_address_is_refused(
    tmp_path: Path, capsys: Any
) -> None:
    material = make_material(tmp_path, capsys, fault="wrong_name", fault_host="destination")
    dest = material["hosts"]["destination"]
    server = Server(dest["cert"], dest["key"], material["cacert"])
    result = probe(material, server.port, capsys)
    assert (result["ok"], result["refused_server"]) == (False, True)
    assert "IP address mismatch" in result["reason"]


def test_a_server_that_refuses_this_hosts_certificate_closes_at_once(
    tmp_path: Path, material: dict[str, Any], capsys: Any
) -> None:
    other_ca = make_material(tmp_path / "other", capsys)["cacert"]
    dest = material["hosts"]["destination"]
    server = Server(dest["cert"], dest["key"], other_ca)  # trusts another CA's clients
    result = probe(material, server.port, capsys)
    server.thread.join(5)
    # TLS 1.3: the client's handshake is done before the server judged its certificate
    assert (result["ok"], result["server_closed"]) == (True, True)
    assert server.accepted == [False]


def test_nobody_listening_is_a_reason(material: dict[str, Any], capsys: Any) -> None:
    sock = socket.create_server(("127.0.0.2", 0))
    port = sock.getsockname()[1]
    sock.close()
    result = probe(material, port, capsys)
    assert result["ok"] is False and result["reason"].startswith(
        f"cannot connect to 127.0.0.2:{port}"
    )


# -- the experiment's private files -----------------------------------------------------------


def test_private_umask_makes_0700_folders_and_0600_files(tmp_path: Path) -> None:
    private_umask()  # tests/conftest.py gives the next test the session's umask back
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "f").write_text("x")
    subprocess.run(["touch", str(tmp_path / "g")], check=True)  # a child inherits it
    assert stat.S_IMODE((tmp_path / "d").stat().st_mode) == 0o700
    assert stat.S_IMODE((tmp_path / "d" / "f").stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "g").stat().st_mode) == 0o600


def test_umasked_runs_a_command_under_the_private_umask(tmp_path: Path) -> None:
    os.umask(0o022)
    out = subprocess.run(
        umasked(["sh", "-c", "umask; touch \"$1\"", "sh", str(tmp_path / "f")]),
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert out.stdout.strip() == "0077"
    assert stat.S_IMODE((tmp_path / "f").stat().st_mode) == 0o600


def test_the_results_bundle_stores_every_member_root_only(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    os.umask(0o022)
    images = tmp_path / "ck" / "1"
    images.mkdir(parents=True)
    for name in ("pages-1.img", "pagemap-1.img", "stats-dump"):
        (images / name).write_text(name)
    (tmp_path / "ck" / "criu-dump.log").write_text("log")
    (tmp_path / "w").mkdir()
    (tmp_path / "w" / "progress.log").write_text("{}")
    rc, _result = run_ansible_module(
        results_bundle,
        {"checkpoint_dir": str(tmp_path / "ck"), "working_dir": str(tmp_path / "w"),
         "dest": str(tmp_path / "b.tgz"), "keep_images": True},
        capsys,
    )  # fmt: skip
    assert rc == 0
    assert stat.S_IMODE((tmp_path / "b.tgz").stat().st_mode) == 0o600
    with tarfile.open(tmp_path / "b.tgz") as tar:
        modes = {m.name: (m.isdir(), stat.S_IMODE(m.mode)) for m in tar.getmembers()}
    assert modes == {
        "1": (True, 0o700),
        "1/pagemap-1.img": (False, 0o600),
        "1/pages-1.img": (False, 0o600),
        "1/stats-dump": (False, 0o600),
        "criu-dump.log": (False, 0o600),
        "progress.log": (False, 0o600),
    }
    out = tmp_path / "unpacked"
    out.mkdir(mode=0o700)
    subprocess.run(["tar", "-xzf", str(tmp_path / "b.tgz"), "-C", str(out)], check=True)
    assert stat.S_IMODE((out / "1").stat().st_mode) == 0o700
    assert stat.S_IMODE((out / "1" / "pages-1.img").stat().st_mode) == 0o600


def summary_of(strategy: dict[str, Any]) -> str:
    metrics = {
        "experiment": {"name": "e", "duration_s": 1.0, "results_dir": "/r"},
        "workload": {"type": "memory"},
        "hosts": {"source": "s", "destination": "d"},
        "status": "ok",
        "phases": {},
        "downtime_s": None,
        "orchestration_gap_s": None,
        "critical_path": {"path": "fused"},
        "app_downtime_s": None,
        "app_downtime": {"strace_s": None},
        "migration_s": None,
        "deadlines": {},
        "strategy": strategy,
    }
    return summary_text(metrics)


def test_the_summary_says_when_page_images_are_kept_and_when_pages_went_over_tls() -> None:
    kept = summary_of({"keep_images": True, "page_server": True, "page_server_tls": True})
    assert "Page images: KEPT in these results and on both hosts (keep_images=true)" in kept
    assert "Page traffic: TLS (page_server_tls: the experiment's own CA)" in kept
    plain = summary_of({"keep_images": False, "page_server": False, "page_server_tls": True})
    assert "Page images" not in plain and "Page traffic" not in plain


def walk(node: Any) -> Iterator[dict[str, Any]]:
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from walk(value)
    elif isinstance(node, list):
        for value in node:
            yield from walk(value)


def test_every_task_that_copies_a_private_key_has_no_log() -> None:
    """The TLS keys never reach a log: the task copying them has no_log (and no diff)."""
    tasks = yaml.safe_load((REPO / "roles" / "criu_tls" / "tasks" / "main.yml").read_text())
    copies = [
        task
        for task in walk(tasks)
        if "ansible.builtin.copy" in task and "tls_dir" in str(task["ansible.builtin.copy"])
    ]
    assert copies and all(t.get("no_log") is True and t.get("diff") is False for t in copies)


def test_the_processes_of_another_user_in_a_tree(tmp_path: Path) -> None:
    """proc_status.non_root_processes over a /proc of three processes: root's workload, its
    database as uid 105 (the real, effective or saved uid counts), a root helper."""
    from proc_status import non_root_processes as tree_non_root

    for pid, name, uid, children in (
        (10, "python3", "0\t0\t0\t0", "11 12"),
        (11, "postgres", "105\t105\t105\t105", ""),
        (12, "helper", "0\t0\t1000\t0", ""),
    ):
        folder = tmp_path / str(pid)
        (folder / "task" / str(pid)).mkdir(parents=True)
        (folder / "stat").write_text(f"{pid} ({name}) S 1 0 0")
        (folder / "status").write_text(f"Name:\t{name}\nUid:\t{uid}\n")
        (folder / "task" / str(pid) / "children").write_text(children)
    assert tree_non_root(10, str(tmp_path)) == [
        {"pid": 11, "name": "postgres", "uids": [105, 105, 105]},
        {"pid": 12, "name": "helper", "uids": [0, 0, 1000]},
    ]
