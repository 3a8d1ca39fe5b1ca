#!/usr/bin/python
"""Ansible module: an experiment's own CA and one TLS certificate per host, made on the control node."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: tls_material
short_description: Make (or remove) a per-experiment CA and a TLS certificate for each host of a pair
description:
  - C(state=present) makes, in a private folder on the control node (mode 0700, files 0600),
    the certificate of a CA made for this experiment alone, and for each host of I(hosts) a
    private key and a certificate that this CA signed, naming the host's address (an IP
    address or DNS subject alternative name) and good for TLS servers and clients both -
    each host's three files in a folder of its own, C(<dir>/<host name>/).
    CRIU's C(--tls) page traffic (C(page_server_tls)) uses them - the dump and the page
    server, the network post-copy dump and the lazy-pages daemon.
  - The CA's private key is never written anywhere - it exists in this module's memory
    while it signs the hosts' certificates, so nothing else can ever be signed by this CA.
    The result carries paths and fingerprints, never key material.
  - ECDSA P-256 keys, SHA-256 signatures; valid from an hour before now (clocks of cloud
    hosts drift) for I(valid_hours).
  - C(state=absent) removes the folder.
  - Needs the Python package C(cryptography) on the control node (in the suite's .venv).
options:
  state:
    description: C(present) makes the material, C(absent) removes I(dir).
    type: str
    choices: [present, absent]
    default: present
  dir:
    description: The private folder. With C(state=present) and no I(dir), a new folder in
      the system's temporary directory (returned as C(dir)).
    type: path
  name:
    description: The experiment's id, in the certificates' subject names.
    type: str
    default: criu-migration
  hosts:
    description: The hosts, each C(name) (inventory name) and C(address) (the address the
      other host connects to - an IP address or a DNS name).
    type: list
    elements: dict
    default: []
  valid_hours:
    description: How long the certificates are valid after the hour before now.
    type: int
    default: 48
  fault:
    description: For the suite's tests - a wrong certificate for host I(fault_host),
      C(wrong_ca) (signed by another CA) or C(wrong_name) (naming another address, 192.0.2.1).
    type: str
    choices: [none, wrong_ca, wrong_name]
    default: none
  fault_host:
    description: The host that gets the wrong certificate (I(fault)).
    type: str
  file_names:
    description: The names each host keeps the files by (its folder C(<dir>/<name>/) holds
      them, to be copied as one).
    type: dict
    default: {}
    suboptions:
      cacert:
        description: The CA's certificate.
        type: str
        default: ca.pem
      cert:
        description: The host's certificate.
        type: str
        default: cert.pem
      key:
        description: The host's private key.
        type: str
        default: key.pem
attributes:
  check_mode:
    support: none
notes:
  - Reports C(changed=true).
seealso:
  - module: tls_probe
author: CRIU migration suite
"""

EXAMPLES = r"""
- name: The experiment's CA and host certificates
  tls_material:
    name: memory_20261206_101010-ab12cd
    hosts:
      - {name: source, address: 10.77.0.11}
      - {name: destination, address: 10.77.0.12}
  delegate_to: localhost
  register: tls

- name: Remove them
  tls_material:
    state: absent
    dir: "{{ tls.dir }}"
  delegate_to: localhost
"""

RETURN = r"""
dir:
  description: The private folder.
  returned: always
  type: str
  sample: /tmp/criu-tls-1a2b3c
cacert:
  description: The CA's certificate (PEM).
  returned: state=present
  type: str
  sample: /tmp/criu-tls-1a2b3c/ca.pem
ca_fingerprint:
  description: SHA-256 fingerprint of the CA's certificate.
  returned: state=present
  type: str
  sample: 3f:0a:...
hosts:
  description: Per host name - C(dir) (its folder, to copy as one), C(cacert), C(cert),
    C(key) (paths in it), C(address), C(fingerprint).
  returned: state=present
  type: dict
  sample: {source: {dir: /tmp/criu-tls-1a2b3c/source, cacert: /tmp/criu-tls-1a2b3c/source/ca.pem, cert: /tmp/criu-tls-1a2b3c/source/cert.pem, key: /tmp/criu-tls-1a2b3c/source/key.pem, address: 10.77.0.11, fingerprint: "ab:..."}}
not_after:
  description: When the certificates expire (UTC, ISO 8601).
  returned: state=present
  type: str
  sample: "2026-12-08T10:10:10+00:00"
"""

import datetime as dt
import ipaddress
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from ansible.module_utils.basic import AnsibleModule

WRONG_NAME_ADDRESS = "192.0.2.1"  # TEST-NET-1 (RFC 5737): names no real host


def _general_name(address: str) -> Any:
    from cryptography import x509

    try:
        return x509.IPAddress(ipaddress.ip_address(address))
    except ValueError:
        return x509.DNSName(address)


def _key_usage(signs_certificates: bool) -> Any:
    """A CA signs certificates (and CRLs); a host signs its TLS handshakes (ECDSA)."""
    from cryptography import x509

    usage = dict.fromkeys(
        (
            "digital_signature", "content_commitment", "key_encipherment", "data_encipherment",
            "key_agreement", "key_cert_sign", "crl_sign", "encipher_only", "decipher_only",
        ),
        False,
    )  # fmt: skip
    if signs_certificates:
        usage.update(key_cert_sign=True, crl_sign=True)
    else:
        usage.update(digital_signature=True)
    return x509.KeyUsage(**usage)


class Authority:
    """A CA that signs host certificates; its key lives in this object only."""

    def __init__(self, common_name: str, not_before: dt.datetime, not_after: dt.datetime) -> None:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID

        self.not_before, self.not_after = not_before, not_after
        self._key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self._key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before)
            .not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(_key_usage(signs_certificates=True), critical=True)
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(self._key.public_key()), critical=False
            )
            .sign(self._key, hashes.SHA256())
        )

    def issue(self, common_name: str, address: str) -> tuple[Any, Any]:
        """(private key, certificate) for a host reached at `address`."""
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

        key = ec.generate_private_key(ec.SECP256R1())
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(self.not_before)
            .not_valid_after(self.not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_key_usage(signs_certificates=False), critical=True)
            # each host serves (page server, post-copy dump) or connects (dump, lazy-pages)
            .add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
                ),
                critical=False,
            )
            .add_extension(x509.SubjectAlternativeName([_general_name(address)]), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self._key.public_key()),
                critical=False,
            )
            .sign(self._key, hashes.SHA256())
        )
        return key, cert


def fingerprint(cert: Any) -> str:
    from cryptography.hazmat.primitives import hashes

    return cert.fingerprint(hashes.SHA256()).hex(":")


def write_private(path: Path, data: bytes) -> None:
    """Write `data` to a new file readable by its owner only (0600 from its creation)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)


def make(params: dict[str, Any]) -> dict[str, Any]:
    from cryptography.hazmat.primitives import serialization

    hosts = params["hosts"]
    names = [str(host.get("name") or "") for host in hosts]
    if not hosts or any(
        not name or not host.get("address") for name, host in zip(names, hosts, strict=True)
    ):
        raise ValueError("every host needs a name and an address")
    if len(set(names)) != len(names):
        raise ValueError(f"host names must differ: {', '.join(names)}")
    if params["fault"] != "none" and params["fault_host"] not in names:
        raise ValueError(f"fault_host {params['fault_host']!r} is not one of {', '.join(names)}")
    folder = Path(params["dir"] or tempfile.mkdtemp(prefix="criu-tls-"))
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    folder.chmod(0o700)
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    not_before = now - dt.timedelta(hours=1)
    not_after = now + dt.timedelta(hours=int(params["valid_hours"]))
    ca = Authority(f"criu-migration CA {params['name']}", not_before, not_after)
    other_ca = Authority(f"another CA {params['name']}", not_before, not_after)
    cacert = folder / "ca.pem"
    write_private(cacert, ca.cert.public_bytes(serialization.Encoding.PEM))
    issued: dict[str, Any] = {}
    for name, host in zip(names, hosts, strict=True):
        address = str(host["address"])
        fault = params["fault"] if name == params["fault_host"] else "none"
        signer = other_ca if fault == "wrong_ca" else ca
        named = WRONG_NAME_ADDRESS if fault == "wrong_name" else address
        key, cert = signer.issue(f"{name} {params['name']}", named)
        # what the host gets, under the names it keeps them by: one folder to copy
        bundle = folder / name
        bundle.mkdir(mode=0o700)
        files = {role: bundle / params["file_names"][role] for role in ("cacert", "cert", "key")}
        write_private(files["cacert"], cacert.read_bytes())
        cert_path, key_path = files["cert"], files["key"]
        write_private(cert_path, cert.public_bytes(serialization.Encoding.PEM))
        write_private(
            key_path,
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            ),
        )
        issued[name] = {
            "dir": str(bundle),
            "cacert": str(files["cacert"]),
            "cert": str(cert_path),
            "key": str(key_path),
            "address": address,
            "fingerprint": fingerprint(cert),
            **({"fault": fault} if fault != "none" else {}),
        }
    return {
        "changed": True,
        "dir": str(folder),
        "cacert": str(cacert),
        "ca_fingerprint": fingerprint(ca.cert),
        "hosts": issued,
        "not_after": not_after.isoformat(),
    }


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "state": {"type": "str", "default": "present", "choices": ["present", "absent"]},
            "dir": {"type": "path"},
            "name": {"type": "str", "default": "criu-migration"},
            "hosts": {"type": "list", "elements": "dict", "default": []},
            "valid_hours": {"type": "int", "default": 48},
            "fault": {
                "type": "str",
                "default": "none",
                "choices": ["none", "wrong_ca", "wrong_name"],
            },
            "fault_host": {"type": "str"},
            "file_names": {
                "type": "dict",
                "default": {},
                "options": {
                    "cacert": {"type": "str", "default": "ca.pem"},
                    "cert": {"type": "str", "default": "cert.pem"},
                    "key": {"type": "str", "default": "key.pem"},
                },
            },
        },
        required_if=[("state", "absent", ("dir",))],
        supports_check_mode=False,
    )
    params = module.params
    if params["state"] == "absent":
        folder = Path(params["dir"])
        existed = folder.exists()
        shutil.rmtree(folder, ignore_errors=True)
        module.exit_json(changed=existed, dir=str(folder))
    try:
        import cryptography  # noqa: F401
    except ImportError:
        module.fail_json(
            msg="tls_material needs the Python package cryptography on the control node "
            "(the suite's .venv has it: run ansible-playbook from .venv/bin)"
        )
    old_umask = os.umask(0o077)
    try:
        module.exit_json(**make(params))
    except ValueError as exc:
        module.fail_json(msg=f"tls_material: {exc}")
    finally:
        os.umask(old_umask)


if __name__ == "__main__":
    main()
