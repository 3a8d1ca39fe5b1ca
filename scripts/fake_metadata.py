#!/usr/bin/env python3
"""Fake cloud metadata services for the lab and the tests: AWS IMDSv2, GCP, Azure Scheduled Events.

Each speaks its provider's documented protocol (module_utils/spot_notice.py cites the
pages): headers, token rules with TTL expiry, error codes, and the interruption notice. A
notice is issued at a chosen time through an admin endpoint on the same server, which the
watcher never calls. Standard library only.

    scripts/fake_metadata.py serve --provider aws [--bind 10.77.0.1] [--port 18169]
    scripts/fake_metadata.py notice --url http://10.77.0.1:18169 [--in 5] [--issued-ago 0]
    scripts/fake_metadata.py fault --url http://10.77.0.1:18169 --fault garbage
    scripts/fake_metadata.py state --url http://10.77.0.1:18169

It binds the lab bridge's control-side address (10.77.0.1; the namespaces lab's hosts reach
it there, their own loopback is their namespace's; the guest lab's bridge is 10.79.0.1).
Nothing here ever contacts a real metadata service.

Admin endpoints (JSON):
  POST /_admin/notice  {"in_s": 0, "issued_ago_s": 0, "action": "terminate", "kind":
                        "interruption" | "rebalance", "event_type": "Preempt"}
                       The notice appears at the next whole second after in_s (AWS and
                       Azure stamp whole seconds), issued issued_ago_s before that (a
                       deadline already passed: issued_ago_s > the notice's length).
  POST /_admin/fault   {"fault": "none" | "refuse_token" | "garbage" | "error500" |
                        "no_flavor" | "hang", "seconds": 5}
  POST /_admin/reset   back to no notice, no fault
  GET  /_admin/state   requests seen, tokens, the notice, acknowledgements
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import secrets
import sys
import threading
import time
import urllib.parse
import urllib.request
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "module_utils"))

from spot_notice import (
    AWS_ACTION_PATH,
    AWS_MAX_TTL_S,
    AWS_REBALANCE_PATH,
    AWS_TOKEN_HEADER,
    AWS_TOKEN_PATH,
    AWS_TTL_HEADER,
    AZURE_PATH,
    GCP_PREEMPTED_PATH,
    NOTICE_LENGTH_S,
    PROVIDERS,
    format_aws_time,
    format_rfc1123,
)

DEFAULT_BIND = "10.77.0.1"
DEFAULT_PORT = 18169
FAULTS = ("none", "refuse_token", "garbage", "error500", "no_flavor", "hang")
AZURE_API_VERSIONS = ("2017-08-01", "2017-11-01", "2019-01-01", "2019-08-01", "2020-07-01")
GARBAGE = b"<html><body>captive portal</body></html>"
# A wait_for_change request without timeout_sec is held at most this long.
GCP_DEFAULT_WAIT_S = 300.0
KEEP_REQUESTS = 1000


class State:
    """What the fake knows: tokens, the scheduled notice, the fault, the requests seen."""

    def __init__(self, provider: str, token_ttl_cap_s: float | None = None) -> None:
        self.provider = provider
        self.token_ttl_cap_s = token_ttl_cap_s
        self.lock = threading.Condition()
        self.tokens: dict[str, float] = {}  # token -> expiry (epoch)
        self.tokens_issued = 0
        self.notice: dict[str, Any] | None = None
        self.fault = "none"
        self.fault_seconds = 5.0
        self.requests: list[dict[str, Any]] = []
        self.acks: list[dict[str, Any]] = []
        self.incarnation = 1
        self.event_id = str(uuid.uuid4()).upper()
        self.event_status = "Scheduled"

    # -- the notice ------------------------------------------------------------------
    def schedule(self, spec: dict[str, Any]) -> dict[str, Any]:
        now = time.time()
        publish_at = float(math.ceil(now + float(spec.get("in_s", 0.0))))
        notice = {
            "kind": spec.get("kind", "interruption"),
            "action": spec.get("action", "terminate"),
            "event_type": spec.get("event_type", "Preempt"),
            "publish_at": publish_at,
            "issued_at": publish_at - float(spec.get("issued_ago_s", 0.0)),
        }
        with self.lock:
            self.notice = notice
            self.event_id = str(uuid.uuid4()).upper()
            self.event_status = "Scheduled"
            self.lock.notify_all()
        return notice

    def published(self, now: float | None = None) -> dict[str, Any] | None:
        now = time.time() if now is None else now
        if self.notice and now >= self.notice["publish_at"]:
            return self.notice
        return None

    def record(self, handler: BaseHTTPRequestHandler, status: int) -> None:
        with self.lock:
            self.requests.append(
                {
                    "at": time.time(),
                    "client": handler.client_address[0],
                    "method": handler.command,
                    "path": handler.path,
                    "status": status,
                    "headers": {k: v for k, v in handler.headers.items() if k.lower() != "host"},
                }
            )
            del self.requests[:-KEEP_REQUESTS]

    def snapshot(self) -> dict[str, Any]:
        with self.lock:
            return {
                "provider": self.provider,
                "notice": self.notice,
                "published": self.published() is not None,
                "fault": self.fault,
                "tokens_issued": self.tokens_issued,
                "acks": list(self.acks),
                "event_id": self.event_id,
                "incarnation": self.incarnation,
                "requests": list(self.requests),
            }


class Handler(BaseHTTPRequestHandler):
    server_version = "FakeMetadata/1.0"
    protocol_version = "HTTP/1.1"
    state: State  # set on the class made per server

    def log_message(self, format: str, *args: Any) -> None:
        pass

    # -- plumbing ------------------------------------------------------------------------
    def send(
        self, status: int, body: bytes | str = b"", headers: dict[str, str] | None = None
    ) -> None:
        data = body.encode() if isinstance(body, str) else body
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)
        self.state.record(self, status)

    def json(self, status: int, data: Any, headers: dict[str, str] | None = None) -> None:
        self.send(status, json.dumps(data), {"Content-Type": "application/json", **(headers or {})})

    def body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def split(self) -> tuple[str, dict[str, list[str]]]:
        parsed = urllib.parse.urlsplit(self.path)
        return parsed.path, urllib.parse.parse_qs(parsed.query)

    def faulted(self) -> bool:
        """Apply the fault to a metadata request; True when it answered."""
        fault = self.state.fault
        if fault == "hang":
            time.sleep(self.state.fault_seconds)
            return False
        if fault == "garbage":
            self.send(200, GARBAGE, {"Content-Type": "text/html"})
            return True
        if fault == "error500":
            self.send(500, "Internal Server Error")
            return True
        return False

    # -- verbs ---------------------------------------------------------------------------
    def do_GET(self) -> None:
        self.dispatch("GET")

    def do_PUT(self) -> None:
        self.dispatch("PUT")

    def do_POST(self) -> None:
        self.dispatch("POST")

    def dispatch(self, method: str) -> None:
        path, query = self.split()
        if path.startswith("/_admin/"):
            self.admin(method, path)
            return
        handler = getattr(self, f"{self.state.provider}_request")
        handler(method, path, query)

    # -- admin ---------------------------------------------------------------------------
    def admin(self, method: str, path: str) -> None:
        state = self.state
        if method == "GET" and path == "/_admin/state":
            self.json(200, state.snapshot())
            return
        if method != "POST":
            self.send(405, "Method Not Allowed")
            return
        try:
            spec = json.loads(self.body() or b"{}")
        except ValueError:
            self.json(400, {"error": "not JSON"})
            return
        if path == "/_admin/notice":
            self.json(200, state.schedule(spec))
        elif path == "/_admin/fault":
            fault = spec.get("fault", "none")
            if fault not in FAULTS:
                self.json(400, {"error": f"fault {fault!r}; valid: {', '.join(FAULTS)}"})
                return
            state.fault, state.fault_seconds = fault, float(spec.get("seconds", 5.0))
            self.json(200, {"fault": fault})
        elif path == "/_admin/reset":
            with state.lock:
                state.notice, state.fault, state.acks = None, "none", []
                state.event_status = "Scheduled"
                state.lock.notify_all()
            self.json(200, {"reset": True})
        else:
            self.send(404, "Not Found")

    # -- AWS IMDSv2 ----------------------------------------------------------------------
    def aws_request(self, method: str, path: str, query: dict[str, list[str]]) -> None:
        state = self.state
        if self.headers.get("X-Forwarded-For"):
            self.send(403, "Forbidden")  # IMDSv2 refuses requests that went through a proxy
            return
        if path == AWS_TOKEN_PATH:
            if method != "PUT":
                self.send(405, "Method Not Allowed")
                return
            if state.fault == "refuse_token":
                self.send(403, "Forbidden")
                return
            try:
                ttl = int(self.headers.get(AWS_TTL_HEADER, ""))
            except ValueError:
                ttl = 0
            if not 1 <= ttl <= AWS_MAX_TTL_S:
                self.send(400, "Bad Request")
                return
            token = secrets.token_urlsafe(32)
            life = min(ttl, state.token_ttl_cap_s) if state.token_ttl_cap_s else ttl
            with state.lock:
                state.tokens[token] = time.time() + life
                state.tokens_issued += 1
            self.send(200, token, {AWS_TTL_HEADER: str(ttl), "Content-Type": "text/plain"})
            return
        if not path.startswith("/latest/"):
            self.send(404, "Not Found")
            return
        if method != "GET":
            self.send(405, "Method Not Allowed")
            return
        token = self.headers.get(AWS_TOKEN_HEADER)
        expiry = state.tokens.get(token or "")
        if expiry is None or time.time() >= expiry:
            self.send(401, "Unauthorized")  # http-tokens=required: IMDSv1 is off
            return
        if self.faulted():
            return
        notice = state.published()
        if path == AWS_ACTION_PATH and notice and notice["kind"] == "interruption":
            length = 0.0 if notice["action"] == "hibernate" else NOTICE_LENGTH_S["aws"]
            self.json(
                200,
                {"action": notice["action"], "time": format_aws_time(notice["issued_at"] + length)},
            )
        elif path == AWS_REBALANCE_PATH and notice:
            # an interruption notice comes with (or after) the rebalance recommendation
            self.json(200, {"noticeTime": format_aws_time(notice["issued_at"])})
        elif path in ("/latest/meta-data", "/latest/meta-data/"):
            self.send(200, "events/\ninstance-id\nspot/\n", {"Content-Type": "text/plain"})
        else:
            self.send(404, "Not Found")

    # -- GCP -----------------------------------------------------------------------------
    def gcp_value(self) -> str:
        notice = self.state.published()
        return "TRUE" if notice and notice["kind"] == "interruption" else "FALSE"

    def gcp_request(self, method: str, path: str, query: dict[str, list[str]]) -> None:
        state = self.state
        if self.headers.get("Metadata-Flavor") != "Google" or self.headers.get("X-Forwarded-For"):
            self.send(403, "Missing Metadata-Flavor:Google header.", {"Content-Type": "text/html"})
            return
        if not path.startswith("/computeMetadata/v1/"):
            self.send(404, "Not Found")
            return
        if method != "GET":
            self.send(405, "Method Not Allowed")
            return
        if path != GCP_PREEMPTED_PATH:
            self.send(404, "Not Found", {"Metadata-Flavor": "Google"})
            return
        if self.faulted():
            return
        value = self.gcp_value()
        if query.get("wait_for_change", [""])[0].lower() == "true":
            last = query.get("last_etag", [None])[0]
            try:
                timeout = float(query.get("timeout_sec", [GCP_DEFAULT_WAIT_S])[0])
            except ValueError:
                self.send(400, "Bad Request", {"Metadata-Flavor": "Google"})
                return
            start_value = value
            until = time.monotonic() + timeout
            with state.lock:
                while True:
                    value = self.gcp_value()
                    changed = value != start_value if last is None else etag(value) != last
                    left = until - time.monotonic()
                    if changed or left <= 0:
                        break
                    state.lock.wait(min(0.05, left))
        headers = {
            "Metadata-Flavor": "Google",
            "ETag": etag(value),
            "Content-Type": "application/text",
        }
        if state.fault == "no_flavor":
            del headers["Metadata-Flavor"]
        self.send(200, value, headers)

    # -- Azure ---------------------------------------------------------------------------
    def azure_document(self) -> dict[str, Any]:
        state = self.state
        notice = state.published()
        events = []
        if notice:
            events.append(
                {
                    "EventId": state.event_id,
                    "EventStatus": state.event_status,
                    "EventType": notice["event_type"],
                    "ResourceType": "VirtualMachine",
                    "Resources": ["source"],
                    "NotBefore": format_rfc1123(notice["issued_at"] + NOTICE_LENGTH_S["azure"]),
                    "Description": "Virtual machine is being preempted.",
                    "EventSource": "Platform",
                    "DurationInSeconds": -1,
                }
            )
        # the incarnation changes whenever the document does
        incarnation = state.incarnation + (1 if notice else 0) + len(state.acks)
        return {"DocumentIncarnation": incarnation, "Events": events}

    def azure_request(self, method: str, path: str, query: dict[str, list[str]]) -> None:
        state = self.state
        if path != AZURE_PATH:
            self.send(404, "Not Found")
            return
        if self.headers.get("Metadata", "").lower() != "true":
            self.json(400, {"error": "Bad request. Required metadata header not specified"})
            return
        version = query.get("api-version", [""])[0]
        if not version:
            self.json(400, {"error": "Bad request. api-version was not specified in the request"})
            return
        if version not in AZURE_API_VERSIONS:
            self.json(
                400,
                {"error": "Bad request. api-version is invalid", "newest-versions": ["2020-07-01"]},
            )
            return
        if self.faulted():
            return
        if method == "GET":
            self.json(200, self.azure_document())
            return
        if method != "POST":
            self.send(405, "Method Not Allowed")
            return
        try:
            requests = json.loads(self.body() or b"{}").get("StartRequests")
            ids = [str(item["EventId"]) for item in requests]
        except (ValueError, TypeError, KeyError, AttributeError):
            self.json(400, {"error": "Bad request. StartRequests with EventId expected"})
            return
        if not state.published() or any(event_id != state.event_id for event_id in ids):
            self.json(400, {"error": f"Bad request. Unknown event {ids}"})
            return
        with state.lock:
            state.event_status = "Started"
            state.acks.append({"at": time.time(), "event_ids": ids})
        self.send(200)


def etag(value: str) -> str:
    return hashlib.md5(value.encode()).hexdigest()[:16]


def make_server(
    provider: str,
    bind: str = DEFAULT_BIND,
    port: int = DEFAULT_PORT,
    token_ttl_cap_s: float | None = None,
) -> ThreadingHTTPServer:
    """A server for `provider` (not yet serving: call serve_forever); state on .state."""
    if provider not in PROVIDERS:
        raise ValueError(f"provider {provider!r}; valid: {', '.join(PROVIDERS)}")
    state = State(provider, token_ttl_cap_s)
    handler = type(f"{provider.capitalize()}Handler", (Handler,), {"state": state})
    server = ThreadingHTTPServer((bind, port), handler)
    server.daemon_threads = True
    server.state = state  # type: ignore[attr-defined]
    return server


def admin(url: str, path: str, data: dict[str, Any] | None = None) -> Any:
    """Call the fake's admin endpoint (POST with data, else GET)."""
    body = None if data is None else json.dumps(data).encode()
    request = urllib.request.Request(
        url.rstrip("/") + path, data=body, method="POST" if body else "GET"
    )
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(request, timeout=10) as response:
        return json.loads(response.read() or b"null")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run a fake metadata service")
    serve.add_argument("--provider", choices=PROVIDERS, required=True)
    serve.add_argument("--bind", default=DEFAULT_BIND)
    serve.add_argument("--port", type=int, default=DEFAULT_PORT, help="0: any free port")
    serve.add_argument("--token-ttl-cap", type=float, help="AWS: tokens expire after at most this")
    serve.add_argument(
        "--notice-in", type=float, help="issue a notice this many seconds after start"
    )
    serve.add_argument("--issued-ago", type=float, default=0.0)
    serve.add_argument("--ready-file", help="written with the URL once listening")
    notice = sub.add_parser("notice", help="issue a notice on a running fake")
    notice.add_argument("--url", default=f"http://{DEFAULT_BIND}:{DEFAULT_PORT}")
    notice.add_argument("--in", dest="in_s", type=float, default=0.0)
    notice.add_argument("--issued-ago", type=float, default=0.0)
    notice.add_argument("--action", default="terminate", choices=("terminate", "stop", "hibernate"))
    notice.add_argument("--rebalance", action="store_true", help="AWS: a rebalance recommendation")
    fault = sub.add_parser("fault", help="make a running fake misbehave")
    fault.add_argument("--url", default=f"http://{DEFAULT_BIND}:{DEFAULT_PORT}")
    fault.add_argument("--fault", choices=FAULTS, required=True)
    fault.add_argument("--seconds", type=float, default=5.0)
    state = sub.add_parser("state", help="what a running fake saw")
    state.add_argument("--url", default=f"http://{DEFAULT_BIND}:{DEFAULT_PORT}")
    args = parser.parse_args(argv)

    if args.command == "serve":
        server = make_server(args.provider, args.bind, args.port, args.token_ttl_cap)
        host, port = server.server_address[:2]
        url = f"http://{host}:{port}"
        if args.notice_in is not None:
            server.state.schedule({"in_s": args.notice_in, "issued_ago_s": args.issued_ago})  # type: ignore[attr-defined]
        if args.ready_file:
            tmp = f"{args.ready_file}.tmp{os.getpid()}"
            Path(tmp).write_text(url + "\n")
            os.replace(tmp, args.ready_file)
        print(f"fake {args.provider} metadata service on {url}", flush=True)
        try:
            server.serve_forever(poll_interval=0.2)
        except KeyboardInterrupt:
            pass
        finally:
            server.server_close()
        return 0
    if args.command == "notice":
        spec = {
            "in_s": args.in_s,
            "issued_ago_s": args.issued_ago,
            "action": args.action,
            "kind": "rebalance" if args.rebalance else "interruption",
        }
        print(json.dumps(admin(args.url, "/_admin/notice", spec)))
        return 0
    if args.command == "fault":
        print(
            json.dumps(
                admin(args.url, "/_admin/fault", {"fault": args.fault, "seconds": args.seconds})
            )
        )
        return 0
    print(json.dumps(admin(args.url, "/_admin/state"), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
