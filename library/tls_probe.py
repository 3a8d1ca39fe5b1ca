#!/usr/bin/python
"""Ansible module: a TLS client handshake with this host's certificate, as CRIU's page traffic will make it."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: tls_probe
short_description: Try a TLS handshake to a peer with this host's certificate (before the freeze)
description:
  - Connects to I(address):I(port) - where a C(criu page-server --tls) with the peer's
    certificate listens, started for the probe - and makes the TLS handshake CRIU's client
    end will make (C(dump --page-server), C(lazy-pages --page-server)) - this host's
    certificate and key, and the server's certificate checked against the experiment's CA
    and against I(address), as CRIU checks it.
  - Python's C(ssl) module (OpenSSL) plays the client; the server is CRIU itself (GnuTLS),
    whose log says whether it accepted this host's certificate (M(criu_daemon)
    C(state=stopped) reports it). Together they refuse a wrong certificate on either end
    before the workload is frozen - a TLS failure in the dump would come after the freeze
    for network post-copy, and CRIU 4.2.1's dump even crashes on one (docs/lab.md).
  - Never fails by itself - C(ok) and C(reason) say what happened; the caller refuses.
  - Standard library only.
options:
  address:
    description: The server's address (IP address or DNS name), also the name its
      certificate must carry.
    type: str
    required: true
  port:
    description: The server's TCP port.
    type: int
    required: true
  cacert:
    description: The experiment's CA certificate (PEM).
    type: path
    required: true
  cert:
    description: This host's certificate (PEM).
    type: path
    required: true
  key:
    description: This host's private key (PEM).
    type: path
    required: true
  timeout:
    description: Seconds to keep trying to connect (the server may still be starting), and
      for the handshake.
    type: float
    default: 10
attributes:
  check_mode:
    support: full
    details: The handshake changes nothing; it runs in check mode too.
notes:
  - Reports C(changed=false).
seealso:
  - module: tls_material
  - module: criu_daemon
author: CRIU migration suite
"""

EXAMPLES = r"""
- name: Handshake with the destination's probe page server
  tls_probe:
    address: 10.77.0.12
    port: 27000
    cacert: /var/lib/criu-migration/tls/e1/ca.pem
    cert: /var/lib/criu-migration/tls/e1/cert.pem
    key: /var/lib/criu-migration/tls/e1/key.pem
  register: tls_client
"""

RETURN = r"""
ok:
  description: The handshake completed and the server's certificate was accepted.
  returned: always
  type: bool
  sample: true
reason:
  description: Why not, in OpenSSL's words (empty when ok).
  returned: always
  type: str
  sample: unable to get local issuer certificate
refused_server:
  description: This host refused the server's certificate (C(reason) says why); false when
    the handshake failed otherwise.
  returned: always
  type: bool
  sample: false
server_closed:
  description: The server closed the connection right after the handshake - with TLS 1.3
    a server that refuses the client's certificate does that; its log says why.
  returned: when the handshake completed
  type: bool
  sample: false
version:
  description: The TLS version negotiated.
  returned: when the handshake completed
  type: str
  sample: TLSv1.3
cipher:
  description: The cipher suite negotiated.
  returned: when the handshake completed
  type: str
  sample: TLS_AES_256_GCM_SHA384
duration_s:
  description: Seconds from the first connection attempt to the end of the handshake.
  returned: always
  type: float
  sample: 0.012
"""

import socket
import ssl
import time
from typing import Any

from ansible.module_utils.basic import AnsibleModule

# How long to wait, after the handshake, for a server that refuses this host's certificate
# to close the connection (CRIU checks it right after its handshake).
CLOSE_WAIT_S = 0.5


def connect(address: str, port: int, timeout_s: float) -> socket.socket:
    """A TCP connection, retried until `timeout_s` (the probe server may be starting)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return socket.create_connection((address, port), timeout=timeout_s)
        except OSError:
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.05)


def handshake(params: dict[str, Any]) -> dict[str, Any]:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_verify_locations(params["cacert"])
        context.load_cert_chain(params["cert"], params["key"])
    except (OSError, ssl.SSLError) as exc:
        return {
            "ok": False,
            "refused_server": False,
            "reason": f"this host's TLS files cannot be used: {exc}",
        }
    context.check_hostname = True  # the server's certificate must name `address`
    started = time.monotonic()
    try:
        raw = connect(params["address"], params["port"], float(params["timeout"]))
    except OSError as exc:
        return {
            "ok": False,
            "refused_server": False,
            "reason": f"cannot connect to {params['address']}:{params['port']}: {exc}",
        }
    with raw:
        try:
            tls = context.wrap_socket(raw, server_hostname=params["address"])
        except ssl.SSLCertVerificationError as exc:
            return {
                "ok": False,
                "refused_server": True,
                "reason": str(exc.verify_message),
                "duration_s": round(time.monotonic() - started, 6),
            }
        except (ssl.SSLError, OSError) as exc:
            return {
                "ok": False,
                "refused_server": False,
                "reason": f"TLS handshake failed: {exc}",
                "duration_s": round(time.monotonic() - started, 6),
            }
        with tls:
            duration = round(time.monotonic() - started, 6)
            tls.settimeout(CLOSE_WAIT_S)
            try:
                closed = tls.recv(1) == b""
            except TimeoutError:
                closed = False
            except (ssl.SSLError, OSError):
                closed = True
            cipher = tls.cipher()
            return {
                "ok": True,
                "refused_server": False,
                "reason": "",
                "server_closed": closed,
                "version": tls.version() or "",
                "cipher": cipher[0] if cipher else "",
                "duration_s": duration,
            }


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "address": {"type": "str", "required": True},
            "port": {"type": "int", "required": True},
            "cacert": {"type": "path", "required": True},
            "cert": {"type": "path", "required": True},
            "key": {"type": "path", "required": True, "no_log": False},
            "timeout": {"type": "float", "default": 10},
        },
        supports_check_mode=True,
    )
    module.exit_json(changed=False, **handshake(module.params))


if __name__ == "__main__":
    main()
