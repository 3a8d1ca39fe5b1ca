"""Each provider's notice protocol (module_utils/spot_notice.py) against its fake server
(scripts/fake_metadata.py): AWS IMDSv2's token and its expiry, 404 until the notice then its
JSON, the rebalance recommendation; GCP's header and wait_for_change; Azure's Scheduled
Events document and acknowledgement; the watcher's faults and timeouts; the notice_at
arithmetic. Everything on 127.0.0.1: nothing contacts a real metadata service.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
import spot_notice
from notice_fakes import closed_port_url, fake_metadata, serving
from spot_notice import (
    AWS_ACTION_PATH,
    AWS_TOKEN_HEADER,
    AWS_TOKEN_PATH,
    AWS_TTL_HEADER,
    AZURE_PATH,
    GCP_PREEMPTED_PATH,
    Answer,
    AwsImds,
    AzureScheduledEvents,
    GcpMetadata,
    MetadataError,
    Notice,
    NoticeThread,
    NoticeTimeout,
    NoticeWatcher,
    http_request,
    parse_aws_instance_action,
    parse_azure_events,
    parse_gcp_preempted,
    parse_rfc1123,
)


def answer(body: bytes | str, status: int = 200, **headers: str) -> Answer:
    data = body.encode() if isinstance(body, str) else body
    return Answer(status, "OK", dict(headers), data)


# -- notice_at arithmetic --------------------------------------------------------------------


def test_aws_notice_is_issued_two_minutes_before_its_action_time() -> None:
    notice = parse_aws_instance_action(
        answer('{"action": "terminate", "time": "2026-11-26T05:10:00Z"}'), seen_at=1795669683.5
    )
    action_at = 1795669800.0  # 2026-11-26T05:10:00Z
    assert notice.deadline_at == action_at
    assert notice.notice_at == action_at - 120
    assert notice.notice_length_s == 120
    assert notice.detection_delay_s == pytest.approx(3.5)
    assert not notice.notice_at_estimated and not notice.deadline_passed
    assert notice.notice_at_from == "the action time minus 120 s"


def test_aws_hibernation_gives_no_two_minutes() -> None:
    notice = parse_aws_instance_action(
        answer('{"action": "hibernate", "time": "2026-11-26T05:10:00Z"}'), seen_at=1795669800.2
    )
    assert notice.notice_at == notice.deadline_at == 1795669800.0
    assert notice.notice_length_s == 0 and notice.deadline_passed


def test_azure_notice_is_not_before_minus_the_preempt_notice() -> None:
    document = (
        '{"DocumentIncarnation": 3, "Events": [{"EventId": "A", "EventType": "Freeze", '
        '"NotBefore": "Thu, 26 Nov 2026 05:30:00 GMT"}, {"EventId": "B", "EventType": "Preempt", '
        '"EventStatus": "Scheduled", "NotBefore": "Thu, 26 Nov 2026 05:10:00 GMT"}]}'
    )
    incarnation, notice = parse_azure_events(answer(document), seen_at=1795669771.0)
    assert incarnation == 3
    assert notice is not None and notice.event_id == "B"  # the Freeze event is not a notice
    assert notice.deadline_at == 1795669800.0
    assert notice.notice_at == 1795669800.0 - 30
    assert notice.detection_delay_s == pytest.approx(1.0)
    assert parse_rfc1123("Thu, 26 Nov 2026 05:10:00 GMT") == 1795669800.0


def test_azure_document_without_preempt_is_no_notice() -> None:
    assert parse_azure_events(answer('{"DocumentIncarnation": 1, "Events": []}'), 0.0) == (1, None)


def test_gcp_gives_no_issue_time_so_the_time_seen_is_used_and_flagged() -> None:
    headers = {"Metadata-Flavor": "Google"}
    assert parse_gcp_preempted(answer("FALSE", **headers), 5.0) is None
    notice = parse_gcp_preempted(answer("TRUE", **headers), 5.0)
    assert notice is not None
    assert notice.notice_at == notice.seen_at == 5.0 and notice.notice_at_estimated
    assert notice.deadline_at == 35.0 and notice.detection_delay_s == 0
    assert "GCP gives no issue time" in notice.notice_at_from


@pytest.mark.parametrize(
    ("parse", "body", "headers"),
    [
        (parse_aws_instance_action, "<html>portal</html>", {}),
        (parse_aws_instance_action, '{"action": "reboot", "time": "x"}', {}),
        (parse_gcp_preempted, "maybe", {"Metadata-Flavor": "Google"}),
        (parse_gcp_preempted, "TRUE", {}),  # not a GCP server: no Metadata-Flavor
        (parse_azure_events, '{"Events": "none"}', {}),
    ],
)
def test_garbage_is_named_as_such(parse: Any, body: str, headers: dict[str, str]) -> None:
    with pytest.raises(MetadataError) as excinfo:
        parse(answer(body, **headers), 0.0)
    assert excinfo.value.kind == "garbage"


def test_a_notice_record_round_trips() -> None:
    notice = parse_aws_instance_action(
        answer('{"action": "stop", "time": "2026-11-26T05:10:00Z"}'), seen_at=1795669900.0
    )
    record = notice.record()
    assert record["deadline_passed"] is True and "had passed 100.0 s" in record["message"]
    assert Notice.from_record(record) == notice


# -- AWS IMDSv2 --------------------------------------------------------------------------------


def test_aws_fake_speaks_imdsv2() -> None:
    with serving("aws") as fake:
        url = fake.url
        # no token: 401 (IMDSv1 is off); a token needs a TTL of 1 s to 6 h; no proxies
        assert http_request("GET", url + AWS_ACTION_PATH).status == 401
        assert http_request("PUT", url + AWS_TOKEN_PATH).status == 400
        for ttl in ("0", "21601", "x"):
            assert http_request("PUT", url + AWS_TOKEN_PATH, {AWS_TTL_HEADER: ttl}).status == 400
        forwarded = {AWS_TTL_HEADER: "60", "X-Forwarded-For": "1.2.3.4"}
        assert http_request("PUT", url + AWS_TOKEN_PATH, forwarded).status == 403
        token = http_request("PUT", url + AWS_TOKEN_PATH, {AWS_TTL_HEADER: "60"})
        assert token.status == 200 and token.header(AWS_TTL_HEADER) == "60"
        with_token = {AWS_TOKEN_HEADER: token.body.decode()}
        assert http_request("GET", url + AWS_ACTION_PATH, with_token).status == 404
        assert (
            http_request("GET", url + AWS_ACTION_PATH, {AWS_TOKEN_HEADER: "forged"}).status == 401
        )


def test_aws_404_until_the_notice_then_its_json() -> None:
    with serving("aws") as fake:
        client = AwsImds(fake.url)
        assert client.poll() is None
        issued = fake.notice(in_s=0)
        time.sleep(max(0.0, issued["publish_at"] - time.time()) + 0.05)
        notice = client.poll()
        assert notice is not None and notice.action == "terminate"
        # the fake stamps whole seconds, as AWS does: notice_at is exactly the issue
        assert notice.notice_at == issued["issued_at"]
        assert 0 <= notice.detection_delay_s < 0.5
        assert client.tokens == 1  # one token for both polls


def test_aws_token_expiry_gets_a_new_token() -> None:
    # the fake lets tokens live 1 s whatever was asked: the client's 6 h token expires early,
    # the GET gets a 401, the client asks for a new token and the poll goes through
    with serving("aws", token_ttl_cap_s=1) as fake:
        client = AwsImds(fake.url)
        assert client.poll() is None
        time.sleep(1.2)
        assert client.poll() is None
        assert client.tokens == 2
        statuses = [r["status"] for r in fake.requests("/latest/meta-data/")]
        assert statuses == [404, 401, 404]


def test_aws_client_renews_its_token_before_the_ttl_runs_out() -> None:
    with serving("aws") as fake:
        client = AwsImds(fake.url, token_ttl_s=2)
        client.poll()
        time.sleep(1.7)  # past the TTL minus its margin (a quarter of it)
        client.poll()
        assert client.tokens == 2
        assert all(r["status"] != 401 for r in fake.requests("/latest/meta-data/"))


def test_aws_refused_token_is_a_clear_error() -> None:
    with serving("aws") as fake:
        fake.fault("refuse_token")
        with pytest.raises(MetadataError) as excinfo:
            AwsImds(fake.url).probe()
        assert excinfo.value.kind == "refused"
        assert "IMDSv2 session token request (PUT /latest/api/token) was refused: HTTP 403" in str(
            excinfo.value
        )


def test_aws_rebalance_recommendation_only_when_asked() -> None:
    with serving("aws") as fake:
        issued = fake.notice(kind="rebalance")
        time.sleep(max(0.0, issued["publish_at"] - time.time()) + 0.05)
        assert AwsImds(fake.url).poll() is None  # no interruption notice
        notice = AwsImds(fake.url, rebalance=True).poll()
        assert notice is not None and notice.kind == "rebalance" and notice.deadline_at is None
        assert notice.notice_at == issued["issued_at"] and notice.notice_length_s == 120


# -- GCP ----------------------------------------------------------------------------------------


def test_gcp_fake_needs_the_metadata_flavor_header() -> None:
    with serving("gcp") as fake:
        assert http_request("GET", fake.url + GCP_PREEMPTED_PATH).status == 403
        ok = http_request("GET", fake.url + GCP_PREEMPTED_PATH, {"Metadata-Flavor": "Google"})
        assert ok.status == 200 and ok.body == b"FALSE"
        assert ok.header("Metadata-Flavor") == "Google" and ok.header("ETag")


def test_gcp_wait_for_change_returns_when_the_value_changes() -> None:
    with serving("gcp") as fake:
        client = GcpMetadata(fake.url)
        assert client.poll() is None and client.etag  # the first answer's ETag
        timer = threading.Timer(0.5, lambda: fake.notice(in_s=0))
        timer.start()
        started = time.monotonic()
        notice = client.poll(wait_s=8)  # held open until the change
        took = time.monotonic() - started
        timer.join()
        assert notice is not None and notice.action == "preempted"
        assert 0.4 < took < 2.5, took  # the change, not the timeout, ended it
        waits = fake.requests(GCP_PREEMPTED_PATH + "?wait_for_change=true")
        assert len(waits) == 1 and "last_etag=" in waits[0]["path"]


def test_gcp_wait_for_change_times_out_with_the_same_value() -> None:
    with serving("gcp") as fake:
        client = GcpMetadata(fake.url)
        client.poll()
        started = time.monotonic()
        assert client.poll(wait_s=1) is None
        assert 0.9 < time.monotonic() - started < 2.5


def test_gcp_last_etag_that_differs_answers_at_once() -> None:
    with serving("gcp") as fake:
        client = GcpMetadata(fake.url)
        client.poll()
        issued = fake.notice(in_s=0)
        time.sleep(max(0.0, issued["publish_at"] - time.time()) + 0.05)
        started = time.monotonic()
        assert client.poll(wait_s=8) is not None  # changed since the ETag: no wait at all
        assert time.monotonic() - started < 1


def test_gcp_server_without_the_flavor_header_is_not_gcp() -> None:
    with serving("gcp") as fake:
        fake.fault("no_flavor")
        with pytest.raises(MetadataError, match="not a GCP metadata server"):
            GcpMetadata(fake.url).probe()


# -- Azure --------------------------------------------------------------------------------------


def test_azure_fake_speaks_scheduled_events() -> None:
    with serving("azure") as fake:
        url = fake.url + AZURE_PATH
        assert http_request("GET", url + "?api-version=2020-07-01").status == 400  # no header
        assert http_request("GET", url, {"Metadata": "true"}).status == 400  # no api-version
        ok = http_request("GET", url + "?api-version=2020-07-01", {"Metadata": "true"})
        assert ok.status == 200 and b'"DocumentIncarnation": 1' in ok.body


def test_azure_preempt_event_and_its_acknowledgement() -> None:
    with serving("azure") as fake:
        client = AzureScheduledEvents(fake.url)
        assert client.poll() is None
        before = client.incarnation
        issued = fake.notice(in_s=0)
        time.sleep(max(0.0, issued["publish_at"] - time.time()) + 0.05)
        notice = client.poll()
        assert notice is not None and notice.action == "Preempt" and notice.event_id
        assert notice.notice_at == issued["issued_at"]
        assert notice.deadline_at == issued["issued_at"] + 30
        assert client.incarnation != before  # the document changed
        with pytest.raises(MetadataError, match="acknowledging event NOPE"):
            client.acknowledge("NOPE")
        ack = client.acknowledge(notice.event_id)
        assert ack["acknowledged"] is True
        state = fake.snapshot()
        assert state["acks"][0]["event_ids"] == [notice.event_id]
        posted = [r for r in state["requests"] if r["method"] == "POST"]
        assert posted[-1]["headers"]["Metadata"] == "true"
        assert client.poll().raw["EventStatus"] == "Started"  # type: ignore[union-attr]


# -- the watcher --------------------------------------------------------------------------------


@pytest.mark.parametrize("provider", ["aws", "gcp", "azure"])
def test_the_watcher_waits_for_the_notice(provider: str) -> None:
    with serving(provider) as fake:
        client = spot_notice.client_for(provider, fake.url)
        watcher = NoticeWatcher(client, poll_s=0.1, timeout_s=10)
        issued = fake.notice(in_s=0.5)
        notice = watcher.watch()
        assert notice.provider == provider
        assert notice.seen_at >= issued["publish_at"]
        assert notice.detection_delay_s < 0.6  # one poll interval, plus the request
        assert watcher.record()["polls"] == watcher.polls >= 1


def test_the_watcher_keeps_polling_through_faults_and_reports_them() -> None:
    with serving("aws") as fake:
        fake.fault("garbage")
        watcher = NoticeWatcher(AwsImds(fake.url), poll_s=0.05, timeout_s=10)
        thread = NoticeThread(watcher).start()
        time.sleep(0.4)
        fake.fault("error500")
        time.sleep(0.3)
        fake.fault("none")
        fake.notice(in_s=0)
        assert thread.wait(5) and thread.notice is not None
        kinds = {e["kind"]: e for e in watcher.errors}
        assert set(kinds) == {"garbage", "http"}
        assert kinds["garbage"]["count"] > 1  # one entry per distinct error, counted
        assert "<html>" in kinds["garbage"]["message"]


def test_the_watcher_gives_up_after_its_timeout_saying_what_it_got() -> None:
    with serving("azure") as fake:
        watcher = NoticeWatcher(AzureScheduledEvents(fake.url), poll_s=0.1, timeout_s=0.5)
        with pytest.raises(NoticeTimeout) as excinfo:
            watcher.watch()
        text = str(excinfo.value)
        assert "no azure notice" in text and "within 0.5 s" in text
        assert '"Events": []' in text  # the last answer


def test_an_endpoint_that_does_not_answer() -> None:
    client = AwsImds(closed_port_url(), timeout_s=0.5)
    with pytest.raises(MetadataError) as excinfo:
        client.probe()
    assert excinfo.value.kind == "unreachable"
    assert "refused" in str(excinfo.value).lower()


def test_a_notice_whose_deadline_passed_is_flagged() -> None:
    with serving("aws") as fake:
        issued = fake.notice(in_s=0, issued_ago_s=130)  # the action time was 10 s ago
        time.sleep(max(0.0, issued["publish_at"] - time.time()) + 0.05)
        notice = NoticeWatcher(AwsImds(fake.url), poll_s=0.1, timeout_s=5).watch()
        assert notice.deadline_passed
        assert notice.remaining_s(notice.seen_at) < -9
        assert "had passed" in notice.message() and "migrating at once" in notice.message()


def test_the_fake_cli_issues_a_notice() -> None:
    with serving("gcp") as fake:
        assert fake_metadata.main(["notice", "--url", fake.url, "--in", "0"]) == 0
        assert fake.snapshot()["notice"]["kind"] == "interruption"
