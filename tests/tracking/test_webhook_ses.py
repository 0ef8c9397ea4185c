from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator
from typing import Any

import pytest

from jvmail.db.models import EventType
from jvmail.tracking.events import BounceClass, Event, Rejected
from jvmail.tracking.webhooks import ses
from tests.tracking.signing import CERT_URL, NOW, SnsSigner

TOPIC = "arn:aws:sns:eu-west-1:123456789012:jvmail-ses-events"
SNS_MESSAGE_ID = "22b80b92-fdea-4c2c-8f9d-bdfb0c7bf324"
SES_MESSAGE_ID = "010001812a2a7b8f-7b5a8e1c-3c8f-4f0a-9c2e-5f8d8b0f8e1a-000000"
SUBSCRIBE = (
    "https://sns.eu-west-1.amazonaws.com/?Action=ConfirmSubscription"
    f"&TopicArn={TOPIC}&Token=2336412f37fb687f5d51e6e2425dacbba"
)


@pytest.fixture(scope="module")
def signer() -> SnsSigner:
    return SnsSigner.create()


class Fetcher:
    """The test's certificate source: records every URL it is asked for."""

    def __init__(self, pem: bytes) -> None:
        self.pem = pem
        self.urls: list[str] = []

    def __call__(self, url: str) -> bytes:
        self.urls.append(url)
        return self.pem


@pytest.fixture(autouse=True)
def _fresh_cache() -> Iterator[None]:
    ses.clear_certificate_cache()
    yield
    ses.clear_certificate_cache()


@pytest.fixture
def fetch(signer: SnsSigner) -> Fetcher:
    return Fetcher(signer.pem)


@pytest.fixture
def keys(fetch: Fetcher) -> ses.SesKeys:
    return ses.SesKeys(frozenset({TOPIC}), fetch=fetch)


def mail(**fields: Any) -> dict[str, Any]:
    return {
        "timestamp": "2024-05-14T11:58:00.012Z",
        "source": "Sender Name <sender@example.com>",
        "sourceArn": "arn:aws:ses:eu-west-1:123456789012:identity/sender@example.com",
        "sendingAccountId": "123456789012",
        "messageId": SES_MESSAGE_ID,
        "destination": ["Recipient@Example.com"],
        "headersTruncated": False,
        "headers": [{"name": "From", "value": "Sender Name <sender@example.com>"}],
        "commonHeaders": {"from": ["Sender Name <sender@example.com>"], "subject": "Offer"},
        "tags": {
            "ses:configuration-set": ["jvmail"],
            "ses:source-ip": ["192.0.2.0"],
            "jv_delivery": ["31337"],
        },
        **fields,
    }


# the key of each event type's own object, as in SES's published examples
DETAIL_KEYS = {
    "Send": "send",
    "Delivery": "delivery",
    "Reject": "reject",
    "Rendering Failure": "failure",
    "DeliveryDelay": "deliveryDelay",
    "Bounce": "bounce",
    "Complaint": "complaint",
    "Open": "open",
    "Click": "click",
    "Subscription": "subscription",
}


def ses_event(event_type: str, detail: dict[str, Any] | None = None, **mail_fields: Any) -> Any:
    event: dict[str, Any] = {"eventType": event_type, "mail": mail(**mail_fields)}
    if detail is not None:
        event[DETAIL_KEYS[event_type]] = detail
    return event


def bounce(kind: str, *addresses: str) -> dict[str, Any]:
    return ses_event(
        "Bounce",
        {
            "bounceType": kind,
            "bounceSubType": "General",
            "bouncedRecipients": [
                {"emailAddress": a, "action": "failed", "status": "5.1.1"} for a in addresses
            ],
            "timestamp": "2024-05-14T11:59:02.669Z",
            "feedbackId": "01000157c44f053b-61b59c11-9236-11e6-8f96-7be8aexample-000000",
            "reportingMTA": "dsn; mta.example.com",
        },
    )


def notification(event: Any, when: dt.datetime = NOW, **fields: Any) -> dict[str, Any]:
    return {
        "Type": "Notification",
        "MessageId": SNS_MESSAGE_ID,
        "TopicArn": TOPIC,
        "Message": json.dumps(event),
        "Timestamp": when.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "UnsubscribeURL": "https://sns.eu-west-1.amazonaws.com/?Action=Unsubscribe&x=1",
        **fields,
    }


def confirmation(kind: str = "SubscriptionConfirmation", **fields: Any) -> dict[str, Any]:
    return {
        "Type": kind,
        "MessageId": "165545c9-2a5c-472c-8df2-7ff2be2b3b1b",
        "Token": "2336412f37fb687f5d51e6e2425dacbba",
        "TopicArn": TOPIC,
        "Message": f"You have chosen to subscribe to the topic {TOPIC}.",
        "SubscribeURL": SUBSCRIBE,
        "Timestamp": "2024-05-14T11:59:30.000Z",
        **fields,
    }


def body(message: dict[str, Any]) -> bytes:
    return json.dumps(message).encode()


def parse(signer: SnsSigner, keys: ses.SesKeys, event: Any, version: str = "2") -> list[Event]:
    return ses.parse({}, body(signer.sign(notification(event), version)), keys, NOW)


def rejected(keys: ses.SesKeys, message: dict[str, Any]) -> Rejected:
    with pytest.raises(Rejected) as info:
        ses.parse_sns({}, body(message), keys, NOW)
    return info.value


def test_delivery_gives_one_event_per_recipient(signer: SnsSigner, keys: ses.SesKeys) -> None:
    detail = {
        "timestamp": "2024-05-14T11:58:01.123Z",
        "processingTimeMillis": 546,
        "recipients": ["Recipient@Example.com", " second@example.com"],
        "smtpResponse": "250 ok",
        "reportingMTA": "a8-70.smtp-out.amazonses.com",
    }
    event = ses_event("Delivery", detail)
    events = parse(signer, keys, event)
    assert [e.recipient for e in events] == ["recipient@example.com", "second@example.com"]
    assert {e.type for e in events} == {EventType.DELIVERED}
    assert {e.event_id for e in events} == {SNS_MESSAGE_ID}
    assert {e.delivery_id for e in events} == {31337}
    assert {e.message_id for e in events} == {SES_MESSAGE_ID}
    assert {e.provider for e in events} == {"ses"}
    assert events[0].occurred_at == dt.datetime(2024, 5, 14, 11, 58, 1, 123000, tzinfo=dt.UTC)
    assert events[0].raw == event


@pytest.mark.parametrize(
    ("kind", "expected"),
    [
        ("Permanent", (EventType.BOUNCED, BounceClass.HARD)),
        ("Transient", (EventType.DEFERRED, BounceClass.SOFT)),
        ("Undetermined", (EventType.BOUNCED, BounceClass.SOFT)),
    ],
)
def test_bounces_by_type_one_event_per_bounced_recipient(
    signer: SnsSigner, keys: ses.SesKeys, kind: str, expected: tuple[EventType, BounceClass]
) -> None:
    events = parse(signer, keys, bounce(kind, "a@example.com", "B@example.com"))
    assert [(e.recipient, e.type, e.bounce) for e in events] == [
        ("a@example.com", *expected),
        ("b@example.com", *expected),
    ]
    assert events[0].occurred_at == dt.datetime(2024, 5, 14, 11, 59, 2, 669000, tzinfo=dt.UTC)


COMPLAINT = {
    "complainedRecipients": [{"emailAddress": "recipient@example.com"}],
    "timestamp": "2024-05-14T12:00:00Z",
    "feedbackId": "01000157c4533c4f-feedback-000000",
    "userAgent": "Mozilla/5.0",
    "complaintFeedbackType": "abuse",
}
OPEN = {"ipAddress": "192.0.2.1", "timestamp": "2024-05-14T11:59:00Z", "userAgent": "Mail/1.0"}
CLICK = {
    "ipAddress": "192.0.2.1",
    "link": "https://partner.example/offer",
    "linkTags": {"samplekey0": ["samplevalue0"]},
    "timestamp": "2024-05-14T11:59:10Z",
    "userAgent": "Mozilla/5.0 (Windows NT 10.0)",
}
DELAY = {
    "delayType": "TransientCommunicationFailure",
    "expirationTime": "2024-05-15T11:58:00Z",
    "delayedRecipients": [{"emailAddress": "recipient@example.com", "status": "4.4.1"}],
    "timestamp": "2024-05-14T11:59:20Z",
}
UNSUBSCRIBE_ALL = {
    "contactList": "jvmail",
    "timestamp": "2024-05-14T11:59:40Z",
    "source": "UnsubscribeHeader",
    "newTopicPreferences": {"unsubscribeAll": True, "topicSubscriptionStatus": []},
    "oldTopicPreferences": {"unsubscribeAll": False, "topicSubscriptionStatus": []},
}
TOPIC_CHANGE = UNSUBSCRIBE_ALL | {
    "newTopicPreferences": {
        "unsubscribeAll": False,
        "topicSubscriptionStatus": [{"topicName": "offers", "subscriptionStatus": "OptIn"}],
    }
}


@pytest.mark.parametrize(
    ("event", "expected"),
    [
        (ses_event("Send", {}), (EventType.QUEUED, BounceClass.NONE)),
        (ses_event("Reject", {"reason": "Bad content"}), (EventType.REJECTED, BounceClass.NONE)),
        (
            ses_event("Rendering Failure", {"errorMessage": "x", "templateName": "t"}),
            (EventType.REJECTED, BounceClass.NONE),
        ),
        (ses_event("Complaint", COMPLAINT), (EventType.COMPLAINED, BounceClass.COMPLAINT)),
        (ses_event("Open", OPEN), (EventType.OPENED, BounceClass.NONE)),
        (ses_event("Click", CLICK), (EventType.CLICKED, BounceClass.NONE)),
        (ses_event("DeliveryDelay", DELAY), (EventType.DEFERRED, BounceClass.SOFT)),
        (ses_event("Subscription", UNSUBSCRIBE_ALL), (EventType.UNSUBSCRIBED, BounceClass.NONE)),
        (ses_event("Subscription", TOPIC_CHANGE), (EventType.UNKNOWN, BounceClass.NONE)),
        ({"eventType": "SomethingNew", "mail": mail()}, (EventType.UNKNOWN, BounceClass.NONE)),
    ],
)
def test_other_event_types_map(
    signer: SnsSigner, keys: ses.SesKeys, event: Any, expected: tuple[EventType, BounceClass]
) -> None:
    [parsed] = parse(signer, keys, event)
    assert (parsed.type, parsed.bounce) == expected
    assert parsed.recipient == "recipient@example.com"
    assert parsed.machine is False
    assert parsed.delivery_id == 31337


def test_click_and_open_details(signer: SnsSigner, keys: ses.SesKeys) -> None:
    [click] = parse(signer, keys, ses_event("Click", CLICK))
    [opened] = parse(signer, keys, ses_event("Open", OPEN))
    assert (click.url, click.user_agent) == ("https://partner.example/offer", CLICK["userAgent"])
    assert (opened.url, opened.user_agent) == (None, "Mail/1.0")
    assert click.occurred_at == dt.datetime(2024, 5, 14, 11, 59, 10, tzinfo=dt.UTC)


def test_send_without_timestamp_uses_the_mail_time(signer: SnsSigner, keys: ses.SesKeys) -> None:
    [sent] = parse(signer, keys, ses_event("Send", {}))
    assert sent.occurred_at == dt.datetime(2024, 5, 14, 11, 58, 0, 12000, tzinfo=dt.UTC)


def test_identity_notification_without_configuration_set(
    signer: SnsSigner, keys: ses.SesKeys
) -> None:
    event = bounce("Permanent", "recipient@example.com")
    event["notificationType"] = event.pop("eventType")
    del event["mail"]["tags"]
    [parsed] = parse(signer, keys, event)
    assert (parsed.type, parsed.bounce, parsed.delivery_id) == (
        EventType.BOUNCED,
        BounceClass.HARD,
        None,
    )
    assert parsed.message_id == SES_MESSAGE_ID


@pytest.mark.parametrize("tag", [["not-a-number"], [], "31337", None])
def test_foreign_delivery_tags_are_none(signer: SnsSigner, keys: ses.SesKeys, tag: object) -> None:
    event = ses_event("Send", {})
    event["mail"]["tags"]["jv_delivery"] = tag
    [parsed] = parse(signer, keys, event)
    assert parsed.delivery_id is None


@pytest.mark.parametrize("version", ["1", "2"])
def test_both_signature_versions_verify(
    signer: SnsSigner, keys: ses.SesKeys, fetch: Fetcher, version: str
) -> None:
    events = parse(signer, keys, ses_event("Send", {}), version)
    assert [e.type for e in events] == [EventType.QUEUED]
    assert fetch.urls == [CERT_URL]


def test_subject_is_part_of_the_signed_string(signer: SnsSigner, keys: ses.SesKeys) -> None:
    message = signer.sign(notification(ses_event("Send", {}), Subject="Amazon SES Email Event"))
    assert len(ses.parse({}, body(message), keys, NOW)) == 1
    message["Subject"] = "Another subject"
    assert rejected(keys, message).status == 403


def test_certificates_are_cached_by_url(
    signer: SnsSigner, keys: ses.SesKeys, fetch: Fetcher
) -> None:
    for _ in range(3):
        parse(signer, keys, ses_event("Send", {}))
    assert fetch.urls == [CERT_URL]


def test_china_regions_are_allowed(signer: SnsSigner, keys: ses.SesKeys, fetch: Fetcher) -> None:
    url = "https://sns.cn-north-1.amazonaws.com.cn/SimpleNotificationService-abc.pem"
    message = signer.sign(notification(ses_event("Send", {})), cert_url=url)
    assert len(ses.parse({}, body(message), keys, NOW)) == 1
    assert fetch.urls == [url]


@pytest.mark.parametrize("version", ["3", "", None, 2])
def test_unknown_signature_versions_are_refused(
    signer: SnsSigner, keys: ses.SesKeys, fetch: Fetcher, version: object
) -> None:
    message = signer.sign(notification(ses_event("Send", {})))
    message["SignatureVersion"] = version
    assert rejected(keys, message).status == 403
    assert fetch.urls == []


def test_tampered_message_is_refused(signer: SnsSigner, keys: ses.SesKeys) -> None:
    message = signer.sign(notification(ses_event("Send", {})))
    message["Message"] = message["Message"].replace("31337", "31338")
    assert rejected(keys, message).status == 403


def test_signature_version_must_match_the_algorithm(signer: SnsSigner, keys: ses.SesKeys) -> None:
    message = signer.sign(notification(ses_event("Send", {})), "1")
    message["SignatureVersion"] = "2"
    assert rejected(keys, message).status == 403


def test_certificate_of_another_key_is_refused(signer: SnsSigner) -> None:
    keys = ses.SesKeys(frozenset({TOPIC}), fetch=Fetcher(SnsSigner.create().pem))
    assert rejected(keys, signer.sign(notification(ses_event("Send", {})))).status == 403


@pytest.mark.parametrize(
    "mangle", [lambda s: s[:-12], lambda s: s[: len(s) // 2] + "==", lambda s: "*" * 20]
)
def test_truncated_or_garbled_signature_is_refused(
    signer: SnsSigner, keys: ses.SesKeys, mangle: Any
) -> None:
    message = signer.sign(notification(ses_event("Send", {})))
    message["Signature"] = mangle(message["Signature"])
    assert rejected(keys, message).status == 403


def test_wrong_topic_is_refused_before_fetching(
    signer: SnsSigner, keys: ses.SesKeys, fetch: Fetcher
) -> None:
    other = "arn:aws:sns:eu-west-1:999999999999:someone-else"
    message = signer.sign(notification(ses_event("Send", {}), TopicArn=other))
    assert rejected(keys, message).status == 403
    assert fetch.urls == []


@pytest.mark.parametrize(
    "url",
    [
        "http://sns.eu-west-1.amazonaws.com/SimpleNotificationService-abc.pem",
        "https://evil.example.com/SimpleNotificationService-abc.pem",
        "https://sns.amazonaws.com.evil.com/SimpleNotificationService-abc.pem",
        "https://sns.eu-west-1.amazonaws.com.evil.com/SimpleNotificationService-abc.pem",
        "https://sns.eu-west-1.amazonaws.com@evil.com/SimpleNotificationService-abc.pem",
        "https://evil.com/sns.eu-west-1.amazonaws.com/SimpleNotificationService-abc.pem",
        "https://sns.eu-west-1.amazonaws.com/SimpleNotificationService-abc.pem?x=.pem",
        "https://sns.eu-west-1.amazonaws.com/../evil/x.pem",
        "https://sns.eu-west-1.amazonaws.com/SimpleNotificationService-abc.txt",
        "https://sns.eu-west-1.amazonaws.com:8443/SimpleNotificationService-abc.pem",
        "https://sqs.eu-west-1.amazonaws.com/SimpleNotificationService-abc.pem",
    ],
)
def test_disallowed_certificate_urls_are_never_fetched(
    signer: SnsSigner, keys: ses.SesKeys, fetch: Fetcher, url: str
) -> None:
    message = signer.sign(notification(ses_event("Send", {})), cert_url=url)
    assert rejected(keys, message).status == 403
    assert fetch.urls == []


@pytest.mark.parametrize("offset", [dt.timedelta(minutes=-61), dt.timedelta(minutes=61)])
def test_stale_and_future_timestamps_are_refused(
    signer: SnsSigner, keys: ses.SesKeys, fetch: Fetcher, offset: dt.timedelta
) -> None:
    message = signer.sign(notification(ses_event("Send", {}), NOW + offset))
    assert rejected(keys, message).status == 403
    assert fetch.urls == []


def test_a_retry_inside_the_window_passes(signer: SnsSigner, keys: ses.SesKeys) -> None:
    message = signer.sign(notification(ses_event("Send", {}), NOW - dt.timedelta(minutes=59)))
    assert len(ses.parse({}, body(message), keys, NOW)) == 1


def test_unreachable_certificate_is_503(signer: SnsSigner) -> None:
    def down(url: str) -> bytes:
        raise ConnectionError(url)

    keys = ses.SesKeys(frozenset({TOPIC}), fetch=down)
    assert rejected(keys, signer.sign(notification(ses_event("Send", {})))).status == 503


def test_a_fetched_non_certificate_is_refused(signer: SnsSigner) -> None:
    keys = ses.SesKeys(frozenset({TOPIC}), fetch=Fetcher(b"<html>not a cert</html>"))
    assert rejected(keys, signer.sign(notification(ses_event("Send", {})))).status == 403


@pytest.mark.parametrize("version", ["1", "2"])
def test_subscription_confirmation_returns_the_url_to_confirm(
    signer: SnsSigner, keys: ses.SesKeys, version: str
) -> None:
    message = signer.sign(confirmation(), version)
    assert ses.parse_sns({}, body(message), keys, NOW) == ([], SUBSCRIBE)
    assert ses.parse({}, body(message), keys, NOW) == []


def test_unsubscribe_confirmation_asks_nothing(signer: SnsSigner, keys: ses.SesKeys) -> None:
    message = signer.sign(confirmation("UnsubscribeConfirmation"))
    assert ses.parse_sns({}, body(message), keys, NOW) == ([], None)


@pytest.mark.parametrize(
    "url",
    [
        "https://evil.example.com/?Action=ConfirmSubscription&Token=x",
        "http://sns.eu-west-1.amazonaws.com/?Action=ConfirmSubscription&Token=x",
        "https://sns.us-east-1.amazonaws.com/?Action=ConfirmSubscription&Token=x",
        "https://sns.eu-west-1.amazonaws.com/redirect?Action=ConfirmSubscription",
        "https://sns.eu-west-1.amazonaws.com/?Action=Publish&Token=x",
        "https://sns.eu-west-1.amazonaws.com@evil.com/?Action=ConfirmSubscription",
    ],
)
def test_subscribe_urls_off_the_sns_host_are_refused(
    signer: SnsSigner, keys: ses.SesKeys, url: str
) -> None:
    message = signer.sign(confirmation(SubscribeURL=url))
    assert rejected(keys, message).status == 403


def test_tampered_subscribe_url_is_refused(signer: SnsSigner, keys: ses.SesKeys) -> None:
    message = signer.sign(confirmation())
    message["SubscribeURL"] = SUBSCRIBE.replace("Token=", "Token=0")
    assert rejected(keys, message).status == 403


@pytest.mark.parametrize(
    "message",
    [
        {"Type": "Unheard", "TopicArn": TOPIC},
        {"TopicArn": TOPIC},
        notification("x") | {"Message": "{not json"},
        notification([1, 2]),
        notification({"eventType": "Send", "send": {}}),
        notification(ses_event("Delivery", {"timestamp": "2024-05-14T11:58:01Z"})),
        notification(bounce("Permanent", "not-an-address")),
        notification(ses_event("Send", {}, destination=[])),
    ],
)
def test_malformed_messages_are_400(
    signer: SnsSigner, keys: ses.SesKeys, message: dict[str, Any]
) -> None:
    signed = signer.sign(message) if "Message" in message else message
    assert rejected(keys, signed).status == 400


def test_malformed_json_body_is_400(keys: ses.SesKeys) -> None:
    with pytest.raises(Rejected) as info:
        ses.parse({}, b"{not json", keys, NOW)
    assert info.value.status == 400
