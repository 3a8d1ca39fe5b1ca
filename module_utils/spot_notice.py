"""Spot interruption notices: each provider's metadata protocol, and a watcher that polls it.

Standard library only (urllib, no proxy): it runs on the source node, which has no extra
packages. Every request goes to the experiment's `notice_endpoint`; the lab and the tests
point it at scripts/fake_metadata.py, never at the real link-local address.

The protocols, as documented by each provider:

- **AWS, IMDSv2** (https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/instance-metadata-v2-how-it-works.html):
  a session token from ``PUT /latest/api/token`` with the header
  ``X-aws-ec2-metadata-token-ttl-seconds`` (1 s to 6 h), sent back on every request as
  ``X-aws-ec2-metadata-token``; an expired or missing token gets ``401``, after which a new
  token is requested. The interruption notice
  (https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/spot-instance-termination-notices.html)
  is ``GET /latest/meta-data/spot/instance-action``: ``404`` until there is one, then
  ``{"action": "terminate" | "stop" | "hibernate", "time": "2017-09-18T08:22:00Z"}``, issued
  two minutes before `time` (hibernation starts at once, without the two minutes); AWS
  recommends checking every 5 seconds. The rebalance recommendation
  (https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/rebalance-recommendations.html), an
  optional earlier signal, is ``GET /latest/meta-data/events/recommendations/rebalance``:
  ``404``, then ``{"noticeTime": "..."}``.
- **GCP** (https://cloud.google.com/compute/docs/metadata/querying-metadata,
  https://cloud.google.com/compute/docs/instances/create-use-spot): ``GET
  /computeMetadata/v1/instance/preempted`` with ``Metadata-Flavor: Google`` (``403``
  without it; the answer carries the same header) answers ``FALSE`` or ``TRUE``;
  ``?wait_for_change=true`` (with ``last_etag`` and ``timeout_sec``) holds the request until
  the value changes. A Spot VM is stopped 30 s after the preemption notice. GCP gives no
  issue time: the notice's time is when it was seen, flagged as such.
- **Azure Scheduled Events**
  (https://learn.microsoft.com/en-us/azure/virtual-machines/linux/scheduled-events):
  ``GET /metadata/scheduledevents?api-version=2020-07-01`` with ``Metadata: true`` answers
  ``{"DocumentIncarnation": n, "Events": [...]}``; a Spot eviction is an event of
  ``EventType`` ``Preempt`` with ``NotBefore`` (RFC 1123, at least 30 s after the event is
  issued); ``POST`` of ``{"StartRequests": [{"EventId": ...}]}`` acknowledges it (lets it
  start at once), which the suite does only once the workload has left the source.
"""

from __future__ import annotations

import calendar
import contextlib
import datetime as dt
import email.utils
import http.client
import json
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

PROVIDERS = ("aws", "gcp", "azure")
# The providers' own metadata services (notice_endpoint=auto). Never contacted by the lab or
# the tests: the preflight refuses them for a lab inventory.
ENDPOINTS = {
    "aws": "http://169.254.169.254",
    "gcp": "http://metadata.google.internal",
    "azure": "http://169.254.169.254",
}
REAL_METADATA_HOSTS = ("169.254.169.254", "metadata.google.internal", "metadata", "fd00:ec2::254")
# The notice's length: AWS 2 minutes, GCP Spot 30 s, Azure Spot (Preempt) at least 30 s.
NOTICE_LENGTH_S = {"aws": 120.0, "gcp": 30.0, "azure": 30.0}

AWS_TOKEN_PATH = "/latest/api/token"
AWS_ACTION_PATH = "/latest/meta-data/spot/instance-action"
AWS_REBALANCE_PATH = "/latest/meta-data/events/recommendations/rebalance"
AWS_TTL_HEADER = "X-aws-ec2-metadata-token-ttl-seconds"
AWS_TOKEN_HEADER = "X-aws-ec2-metadata-token"
AWS_ACTIONS = ("terminate", "stop", "hibernate")
AWS_MAX_TTL_S = 21600
GCP_PREEMPTED_PATH = "/computeMetadata/v1/instance/preempted"
GCP_HEADER = ("Metadata-Flavor", "Google")
# A wait_for_change request is held at most this long, so a watcher that must stop does
# not hang in one for minutes.
GCP_WAIT_MAX_S = 10.0
AZURE_PATH = "/metadata/scheduledevents"
AZURE_API_VERSION = "2020-07-01"
AZURE_HEADER = ("Metadata", "true")
AZURE_EVENT = "Preempt"

MAX_BODY = 65536
# How many distinct errors a watcher keeps (each with its count).
MAX_ERRORS = 10


class MetadataError(Exception):
    """A metadata endpoint that does not answer, refuses, or answers something else.

    kind: unreachable (no answer), refused (token or header rules), garbage (an answer
    that is not the provider's protocol), http (an unexpected status).
    """

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


@dataclass(frozen=True)
class Answer:
    status: int
    reason: str
    headers: dict[str, str]
    body: bytes

    def header(self, name: str) -> str | None:
        lowered = {k.lower(): v for k, v in self.headers.items()}
        return lowered.get(name.lower())

    def describe(self) -> str:
        text = self.body[:120].decode("utf-8", "replace").strip().replace("\n", " ")
        return f"HTTP {self.status} {self.reason}" + (f": {text!r}" if text else "")


def http_request(
    method: str,
    url: str,
    headers: dict[str, str] | None = None,
    timeout_s: float = 2.0,
    data: bytes | None = None,
) -> Answer:
    """One HTTP exchange, never through a proxy; any HTTP status is an Answer, no answer
    at all is MetadataError(unreachable)."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    request = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    try:
        with opener.open(request, timeout=timeout_s) as response:
            return Answer(
                response.status, response.reason, dict(response.headers), response.read(MAX_BODY)
            )
    except urllib.error.HTTPError as exc:
        body = b""
        with contextlib.suppress(OSError, http.client.HTTPException):
            body = exc.read(MAX_BODY)
        return Answer(exc.code, str(exc.reason), dict(exc.headers or {}), body)
    except urllib.error.URLError as exc:
        raise MetadataError("unreachable", f"{method} {url}: {exc.reason}") from exc
    except (OSError, http.client.HTTPException, ValueError) as exc:
        raise MetadataError("unreachable", f"{method} {url}: {exc}") from exc


def iso_utc(epoch: float | None) -> str | None:
    if epoch is None:
        return None
    stamp = dt.datetime.fromtimestamp(epoch, tz=dt.UTC).isoformat(timespec="milliseconds")
    return stamp.replace("+00:00", "Z")


def parse_aws_time(text: str) -> float:
    """AWS's `time` (ISO 8601 UTC, `2017-09-18T08:22:00Z`) as epoch seconds."""
    value = str(text).strip()
    if value.endswith("Z"):
        value = value[:-1] + "+00:00"
    stamp = dt.datetime.fromisoformat(value)
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=dt.UTC)
    return stamp.timestamp()


def format_aws_time(epoch: float) -> str:
    return dt.datetime.fromtimestamp(epoch, tz=dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_rfc1123(text: str) -> float:
    """Azure's NotBefore (`Mon, 19 Sep 2016 18:29:47 GMT`) as epoch seconds."""
    parsed = email.utils.parsedate_tz(str(text).strip())
    if parsed is None:
        raise ValueError(f"not an RFC 1123 date: {text!r}")
    return float(calendar.timegm(parsed[:9]) - (parsed[9] or 0))


def format_rfc1123(epoch: float) -> str:
    return email.utils.formatdate(epoch, usegmt=True)


@dataclass
class Notice:
    """An interruption notice (or AWS's rebalance recommendation) as the watcher saw it."""

    provider: str
    kind: str  # interruption | rebalance
    action: str  # terminate, stop, hibernate (AWS) | preempted (GCP) | Preempt (Azure) | rebalance
    notice_at: float  # when the provider issued it (epoch s, the provider's clock)
    notice_at_from: str  # how notice_at was obtained
    notice_at_estimated: bool  # True: the provider gives no issue time (GCP): it is seen_at
    notice_length_s: float  # the time the notice gives (the adaptive rule's default budget)
    deadline_at: float | None  # when the instance goes (None: a rebalance recommendation)
    seen_at: float  # when the watcher saw it (the source's clock)
    raw: Any = None
    event_id: str | None = None
    incarnation: int | None = None

    @property
    def detection_delay_s(self) -> float:
        return round(self.seen_at - self.notice_at, 6)

    @property
    def deadline_passed(self) -> bool:
        return self.deadline_at is not None and self.seen_at >= self.deadline_at

    def remaining_s(self, now: float) -> float:
        """Seconds left of the notice's budget at `now` (negative: passed)."""
        return self.notice_length_s - (now - self.notice_at)

    def message(self) -> str:
        what = f"{self.provider} {self.action}"
        if self.deadline_passed:
            assert self.deadline_at is not None
            return (
                f"the {what} notice's deadline ({iso_utc(self.deadline_at)}) had passed "
                f"{self.seen_at - self.deadline_at:.1f} s before it was seen: migrating at once"
            )
        return (
            f"{what} notice issued {iso_utc(self.notice_at)} ({self.notice_at_from}), seen "
            f"{iso_utc(self.seen_at)}: detection delay {self.detection_delay_s:.3f} s"
        )

    def record(self) -> dict[str, Any]:
        """What metrics.json keeps (epoch stamps; the metrics code formats them)."""
        data = asdict(self)
        data.update(
            detection_delay_s=self.detection_delay_s,
            deadline_passed=self.deadline_passed,
            message=self.message(),
        )
        return data

    @classmethod
    def from_record(cls, data: dict[str, Any]) -> Notice:
        names = cls.__dataclass_fields__
        return cls(**{k: v for k, v in data.items() if k in names})


# -- what each provider answers ----------------------------------------------------------


def _json(answer: Answer, what: str) -> Any:
    try:
        return json.loads(answer.body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise MetadataError("garbage", f"{what} is not JSON: {answer.describe()}") from exc


def parse_aws_instance_action(answer: Answer, seen_at: float) -> Notice:
    """`spot/instance-action`'s JSON: the notice is issued 120 s before `time` (hibernation:
    at `time`, without the two minutes)."""
    data = _json(answer, "spot/instance-action")
    if not isinstance(data, dict) or data.get("action") not in AWS_ACTIONS or "time" not in data:
        raise MetadataError(
            "garbage",
            f"spot/instance-action is not {{action: {'|'.join(AWS_ACTIONS)}, time}}: "
            f"{answer.describe()}",
        )
    try:
        at = parse_aws_time(data["time"])
    except ValueError as exc:
        raise MetadataError("garbage", f"spot/instance-action time: {exc}") from exc
    hibernate = data["action"] == "hibernate"
    length = 0.0 if hibernate else NOTICE_LENGTH_S["aws"]
    return Notice(
        provider="aws",
        kind="interruption",
        action=data["action"],
        notice_at=at - length,
        notice_at_from="the action time (hibernation starts at once)"
        if hibernate
        else "the action time minus 120 s",
        notice_at_estimated=False,
        notice_length_s=length,
        deadline_at=at,
        seen_at=seen_at,
        raw=data,
    )


def parse_aws_rebalance(answer: Answer, seen_at: float) -> Notice:
    """The rebalance recommendation: no deadline of its own; the adaptive rule's budget is
    the 120 s of the interruption notice that may follow."""
    data = _json(answer, "events/recommendations/rebalance")
    if not isinstance(data, dict) or "noticeTime" not in data:
        raise MetadataError(
            "garbage", f"events/recommendations/rebalance has no noticeTime: {answer.describe()}"
        )
    try:
        at = parse_aws_time(data["noticeTime"])
    except ValueError as exc:
        raise MetadataError("garbage", f"rebalance noticeTime: {exc}") from exc
    return Notice(
        provider="aws",
        kind="rebalance",
        action="rebalance",
        notice_at=at,
        notice_at_from="the rebalance recommendation's noticeTime",
        notice_at_estimated=False,
        notice_length_s=NOTICE_LENGTH_S["aws"],
        deadline_at=None,
        seen_at=seen_at,
        raw=data,
    )


def parse_gcp_preempted(answer: Answer, seen_at: float) -> Notice | None:
    """`instance/preempted`: FALSE, or TRUE (the time it was seen, flagged)."""
    if answer.header(GCP_HEADER[0]) != GCP_HEADER[1]:
        raise MetadataError(
            "garbage",
            f"the answer lacks '{GCP_HEADER[0]}: {GCP_HEADER[1]}': not a GCP metadata server "
            f"({answer.describe()})",
        )
    value = answer.body.decode("utf-8", "replace").strip()
    if value == "FALSE":
        return None
    if value != "TRUE":
        raise MetadataError(
            "garbage", f"instance/preempted is neither TRUE nor FALSE: {answer.describe()}"
        )
    return Notice(
        provider="gcp",
        kind="interruption",
        action="preempted",
        notice_at=seen_at,
        notice_at_from="the time seen: GCP gives no issue time",
        notice_at_estimated=True,
        notice_length_s=NOTICE_LENGTH_S["gcp"],
        deadline_at=seen_at + NOTICE_LENGTH_S["gcp"],
        seen_at=seen_at,
        raw=value,
    )


def parse_azure_events(answer: Answer, seen_at: float) -> tuple[int, Notice | None]:
    """Scheduled Events' document: (DocumentIncarnation, the first Preempt event or None).

    notice_at is NotBefore minus the Preempt notice's 30 s; an event without NotBefore is
    timed when seen, flagged."""
    data = _json(answer, "scheduledevents")
    if (
        not isinstance(data, dict)
        or not isinstance(data.get("DocumentIncarnation"), int)
        or not isinstance(data.get("Events"), list)
    ):
        raise MetadataError(
            "garbage",
            f"scheduledevents is not {{DocumentIncarnation, Events}}: {answer.describe()}",
        )
    incarnation = data["DocumentIncarnation"]
    for event in data["Events"]:
        if not isinstance(event, dict) or event.get("EventType") != AZURE_EVENT:
            continue
        length = NOTICE_LENGTH_S["azure"]
        not_before = str(event.get("NotBefore") or "")
        try:
            deadline = parse_rfc1123(not_before) if not_before else None
        except ValueError as exc:
            raise MetadataError("garbage", f"Preempt event NotBefore: {exc}") from exc
        return incarnation, Notice(
            provider="azure",
            kind="interruption",
            action=AZURE_EVENT,
            notice_at=(deadline - length) if deadline is not None else seen_at,
            notice_at_from="NotBefore minus the Preempt notice's 30 s"
            if deadline is not None
            else "the time seen: the event has no NotBefore",
            notice_at_estimated=deadline is None,
            notice_length_s=length,
            deadline_at=deadline if deadline is not None else seen_at + length,
            seen_at=seen_at,
            raw=event,
            event_id=str(event.get("EventId") or "") or None,
            incarnation=incarnation,
        )
    return incarnation, None


# -- the clients ---------------------------------------------------------------------------


class MetadataClient:
    """One provider's metadata service at `endpoint`."""

    provider = ""
    # True: poll() may hold the request until the value changes (GCP's wait_for_change)
    long_poll = False

    def __init__(
        self,
        endpoint: str,
        rebalance: bool = False,
        timeout_s: float = 2.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.endpoint = endpoint.rstrip("/")
        self.rebalance = rebalance
        self.timeout_s = timeout_s
        self.clock = clock
        self.last_answer = ""

    def url(self, path: str, query: dict[str, str] | None = None) -> str:
        return self.endpoint + path + ("?" + urllib.parse.urlencode(query) if query else "")

    def request(self, method: str, url: str, headers: dict[str, str], **kw: Any) -> Answer:
        answer = http_request(method, url, headers, kw.pop("timeout_s", self.timeout_s), **kw)
        self.last_answer = f"{method} {url.removeprefix(self.endpoint)}: {answer.describe()}"
        return answer

    def poll(self, wait_s: float = 0.0) -> Notice | None:
        raise NotImplementedError

    def probe(self) -> dict[str, Any]:
        """One poll, checked against the protocol: what the endpoint answered, and a notice
        already pending. MetadataError when it does not answer or answers otherwise."""
        notice = self.poll()
        return {
            "provider": self.provider,
            "endpoint": self.endpoint,
            "answer": self.last_answer,
            "pending_notice": notice.record() if notice else None,
        }

    def acknowledge(self, event_id: str) -> dict[str, Any]:
        return {"acknowledged": False, "reason": f"{self.provider} notices take no acknowledgement"}


class AwsImds(MetadataClient):
    """IMDSv2: session token (renewed before it expires, and again after a 401)."""

    provider = "aws"

    def __init__(self, endpoint: str, token_ttl_s: int = AWS_MAX_TTL_S, **kw: Any) -> None:
        super().__init__(endpoint, **kw)
        self.token_ttl_s = int(token_ttl_s)
        self._token: str | None = None
        self._token_until = 0.0
        self.tokens = 0  # tokens requested (renewals show here)

    def token(self) -> str:
        now = time.monotonic()
        if self._token is not None and now < self._token_until:
            return self._token
        answer = self.request(
            "PUT", self.url(AWS_TOKEN_PATH), {AWS_TTL_HEADER: str(self.token_ttl_s)}
        )
        if answer.status != 200:
            raise MetadataError(
                "refused",
                f"the IMDSv2 session token request (PUT {AWS_TOKEN_PATH}) was refused: "
                f"{answer.describe()}",
            )
        token = answer.body.decode("utf-8", "replace").strip()
        if not token or any(ch in token for ch in "\r\n\0") or len(token) > 4096:
            raise MetadataError(
                "garbage", f"PUT {AWS_TOKEN_PATH} answered no usable token: {answer.describe()}"
            )
        self.tokens += 1
        # renewed a little before the TTL runs out (the request takes time too)
        margin = min(60.0, self.token_ttl_s / 4)
        self._token, self._token_until = token, now + self.token_ttl_s - margin
        return token

    def get(self, path: str) -> Answer:
        for attempt in (1, 2):
            answer = self.request("GET", self.url(path), {AWS_TOKEN_HEADER: self.token()})
            if answer.status != 401:
                return answer
            self._token = None  # expired or revoked: a new one, once
            if attempt == 2:
                raise MetadataError(
                    "refused", f"GET {path} refused a fresh IMDSv2 token: {answer.describe()}"
                )
        raise AssertionError("unreachable")

    def _optional(self, path: str, parse: Callable[[Answer, float], Notice]) -> Notice | None:
        answer = self.get(path)
        if answer.status == 404:
            return None
        if answer.status != 200:
            raise MetadataError("http", f"GET {path}: {answer.describe()}")
        return parse(answer, self.clock())

    def poll(self, wait_s: float = 0.0) -> Notice | None:
        notice = self._optional(AWS_ACTION_PATH, parse_aws_instance_action)
        if notice is None and self.rebalance:
            notice = self._optional(AWS_REBALANCE_PATH, parse_aws_rebalance)
        return notice


class GcpMetadata(MetadataClient):
    """`instance/preempted`, held open with wait_for_change (and last_etag, so a change
    between two requests is not missed)."""

    provider = "gcp"
    long_poll = True

    def __init__(self, endpoint: str, **kw: Any) -> None:
        super().__init__(endpoint, **kw)
        self.etag: str | None = None

    def poll(self, wait_s: float = 0.0) -> Notice | None:
        query: dict[str, str] = {}
        if wait_s > 0 and self.etag:
            query = {
                "wait_for_change": "true",
                "last_etag": self.etag,
                "timeout_sec": str(max(1, int(wait_s))),
            }
        answer = self.request(
            "GET",
            self.url(GCP_PREEMPTED_PATH, query),
            {GCP_HEADER[0]: GCP_HEADER[1]},
            timeout_s=self.timeout_s + (max(1, int(wait_s)) if query else 0),
        )
        if answer.status == 403:
            raise MetadataError("refused", f"GET {GCP_PREEMPTED_PATH}: {answer.describe()}")
        if answer.status != 200:
            raise MetadataError("http", f"GET {GCP_PREEMPTED_PATH}: {answer.describe()}")
        notice = parse_gcp_preempted(answer, self.clock())
        self.etag = answer.header("ETag") or self.etag
        return notice


class AzureScheduledEvents(MetadataClient):
    """Scheduled Events: the first Preempt event; acknowledged by StartRequests."""

    provider = "azure"

    def __init__(self, endpoint: str, **kw: Any) -> None:
        super().__init__(endpoint, **kw)
        self.incarnation: int | None = None

    def poll(self, wait_s: float = 0.0) -> Notice | None:
        answer = self.request(
            "GET",
            self.url(AZURE_PATH, {"api-version": AZURE_API_VERSION}),
            {AZURE_HEADER[0]: AZURE_HEADER[1]},
        )
        if answer.status != 200:
            kind = "refused" if answer.status in (400, 401, 403) else "http"
            raise MetadataError(kind, f"GET {AZURE_PATH}: {answer.describe()}")
        self.incarnation, notice = parse_azure_events(answer, self.clock())
        return notice

    def acknowledge(self, event_id: str) -> dict[str, Any]:
        body = json.dumps({"StartRequests": [{"EventId": event_id}]}).encode()
        answer = self.request(
            "POST",
            self.url(AZURE_PATH, {"api-version": AZURE_API_VERSION}),
            {AZURE_HEADER[0]: AZURE_HEADER[1], "Content-Type": "application/json"},
            data=body,
        )
        if answer.status != 200:
            raise MetadataError(
                "refused" if answer.status in (400, 401, 403) else "http",
                f"acknowledging event {event_id} (POST {AZURE_PATH}): {answer.describe()}",
            )
        return {"acknowledged": True, "event_id": event_id, "at": self.clock()}


CLIENTS: dict[str, type[MetadataClient]] = {
    "aws": AwsImds,
    "gcp": GcpMetadata,
    "azure": AzureScheduledEvents,
}


def client_for(provider: str, endpoint: str, **kw: Any) -> MetadataClient:
    if provider not in CLIENTS:
        raise ValueError(f"unknown provider {provider!r}; valid: {', '.join(PROVIDERS)}")
    return CLIENTS[provider](endpoint, **kw)


# -- watching ------------------------------------------------------------------------------


class NoticeTimeout(Exception):
    """No notice within the watcher's timeout."""


class NoticeStopped(Exception):
    """The watcher was asked to stop before a notice came."""


@dataclass
class NoticeWatcher:
    """Polls a client until a notice comes; an error does not stop it (it is counted,
    with what the endpoint answered, and polling goes on)."""

    client: MetadataClient
    poll_s: float = 1.0
    timeout_s: float = 3600.0
    polls: int = 0
    errors: list[dict[str, Any]] = field(default_factory=list)
    started_at: float | None = None

    def _error(self, exc: MetadataError) -> None:
        now = time.time()
        message = str(exc)
        for known in self.errors:
            if known["message"] == message:
                known["count"] += 1
                known["last_at"] = now
                return
        if len(self.errors) < MAX_ERRORS:
            self.errors.append(
                {"kind": exc.kind, "message": message, "count": 1, "first_at": now, "last_at": now}
            )

    def watch(self, stop: threading.Event | None = None) -> Notice:
        """The notice; NoticeTimeout after timeout_s, NoticeStopped when `stop` is set."""
        self.started_at = time.time()
        deadline = time.monotonic() + self.timeout_s
        while True:
            if stop is not None and stop.is_set():
                raise NoticeStopped(self.summary())
            remaining = deadline - time.monotonic()
            wait = min(GCP_WAIT_MAX_S, remaining) if self.client.long_poll else 0.0
            failed = False
            try:
                notice = self.client.poll(wait_s=max(0.0, wait))
            except MetadataError as exc:
                notice, failed = None, True
                self._error(exc)
            self.polls += 1
            if notice is not None:
                return notice
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise NoticeTimeout(self.summary())
            if self.client.long_poll and not failed and wait >= 1:
                continue  # the held request was the wait
            pause = min(self.poll_s, remaining)
            if stop is not None:
                stop.wait(pause)
            else:
                time.sleep(pause)

    def summary(self) -> str:
        text = (
            f"no {self.client.provider} notice at {self.client.endpoint} within "
            f"{self.timeout_s:g} s ({self.polls} polls every {self.poll_s:g} s; last answer: "
            f"{self.client.last_answer or 'none'})"
        )
        if self.errors:
            text += "; errors: " + "; ".join(f"{e['message']} (x{e['count']})" for e in self.errors)
        return text

    def record(self) -> dict[str, Any]:
        return {
            "provider": self.client.provider,
            "endpoint": self.client.endpoint,
            "poll_s": self.poll_s,
            "timeout_s": self.timeout_s,
            "polls": self.polls,
            "watch_started_at": self.started_at,
            "last_answer": self.client.last_answer,
            "errors": [dict(e) for e in self.errors],
            "tokens": getattr(self.client, "tokens", None),
            "document_incarnation": getattr(self.client, "incarnation", None),
        }


class NoticeThread:
    """A watcher in a daemon thread (library/predump_loop.py runs one beside the pre-dumps):
    `event` is set when the notice came or the watcher gave up."""

    def __init__(self, watcher: NoticeWatcher) -> None:
        self.watcher = watcher
        self.event = threading.Event()
        self.stop = threading.Event()
        self.notice: Notice | None = None
        self.error: str | None = None
        self.thread = threading.Thread(target=self._run, name="notice-watch", daemon=True)

    def start(self) -> NoticeThread:
        self.thread.start()
        return self

    def _run(self) -> None:
        try:
            self.notice = self.watcher.watch(self.stop)
        except (NoticeTimeout, NoticeStopped) as exc:
            self.error = str(exc)
        except Exception as exc:  # a bug must not hang the loop waiting for the event
            self.error = f"the notice watcher crashed: {exc!r}"
        finally:
            self.event.set()

    def wait(self, timeout_s: float | None) -> bool:
        """Wait up to timeout_s for the notice (or the watcher giving up); whether it ended."""
        return self.event.wait(timeout_s)

    def close(self) -> None:
        self.stop.set()
