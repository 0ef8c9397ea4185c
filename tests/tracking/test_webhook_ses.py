from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator
from typing import Any

import pytest

from jvmail.db.models import EventType
from jvmail.tracking.events import BounceClass, Event, Rejected
from jvmail.tracking.webhooks import ses
from tests.tracking.signing import CERT_URL, NOW, SnsSigner, fixture_names, load_fixture

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


# What jvmail makes of each sample in tests/fixtures/webhooks/ses: (type, bounce, machine);
# one event per recipient, and every sample has one.
EXPECTED: dict[str, tuple[EventType, BounceClass, bool]] = {
    "Send.json": (EventType.QUEUED, BounceClass.NONE, False),
    "Delivery.json": (EventType.DELIVERED, BounceClass.NONE, False),
    "Bounce_Permanent.json": (EventType.BOUNCED, BounceClass.HARD, False),
    "Bounce_Permanent_Suppressed.json": (EventType.BOUNCED, BounceClass.HARD, False),
    "Bounce_Transient.json": (EventType.DEFERRED, BounceClass.SOFT, False),
    "Bounce_Undetermined.json": (EventType.BOUNCED, BounceClass.SOFT, False),
    "Complaint.json": (EventType.COMPLAINED, BounceClass.COMPLAINT, False),
    "Reject.json": (EventType.REJECTED, BounceClass.NONE, False),
    "RenderingFailure.json": (EventType.REJECTED, BounceClass.NONE, False),
    "DeliveryDelay.json": (EventType.DEFERRED, BounceClass.SOFT, False),
    "Open.json": (EventType.OPENED, BounceClass.NONE, False),
    "Open_bot.json": (EventType.OPENED, BounceClass.NONE, True),
    "Click.json": (EventType.CLICKED, BounceClass.NONE, False),
    "Subscription.json": (EventType.UNSUBSCRIBED, BounceClass.NONE, False),
    "Subscription_topic_opt_in.json": (EventType.UNKNOWN, BounceClass.NONE, False),
}
# Samples the parser maps differently from EXPECTED today: parser issues, reported, not fixed here.
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


def sample(name: str) -> dict[str, Any]:
    return load_fixture("ses", name)  # type: ignore[no-any-return]


def send() -> dict[str, Any]:
    return sample("Send.json")


def with_recipients(name: str, *addresses: str) -> dict[str, Any]:
    """A bounce, complaint, delay or delivery sample naming ``addresses`` as its recipients."""
    event = sample(name)
    detail = event[DETAIL_KEYS[event["eventType"]]]
    if "recipients" in detail:
        detail["recipients"] = list(addresses)
        return event
    listed = next(k for k in detail if k.endswith("Recipients"))
    entry = detail[listed][0]
    detail[listed] = [entry | {"emailAddress": a} for a in addresses]
    return event


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


def test_every_sample_has_an_expectation() -> None:
    assert fixture_names("ses") == sorted(EXPECTED)


def _detail(event: dict[str, Any]) -> dict[str, Any]:
    return event[DETAIL_KEYS[event["eventType"]]]  # type: ignore[no-any-return]


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_each_documented_event_maps(signer: SnsSigner, keys: ses.SesKeys, name: str) -> None:
    event = sample(name)
    [parsed] = parse(signer, keys, event)
    assert (parsed.type, parsed.bounce, parsed.machine) == EXPECTED[name]
    assert parsed.provider == "ses"
    assert parsed.event_id == SNS_MESSAGE_ID
    assert parsed.recipient == "recipient@example.com"
    assert parsed.delivery_id == 4711
    assert parsed.message_id == event["mail"]["messageId"] == SES_MESSAGE_ID
    when = _detail(event).get("timestamp") or event["mail"]["timestamp"]
    assert parsed.occurred_at == dt.datetime.fromisoformat(when)
    assert parsed.occurred_at.tzinfo is dt.UTC
    clicked = parsed.type is EventType.CLICKED
    assert parsed.url == (_detail(event)["link"] if clicked else None)
    assert parsed.user_agent == _detail(event).get("userAgent")
    assert parsed.raw == event


def test_delivery_gives_one_event_per_recipient(signer: SnsSigner, keys: ses.SesKeys) -> None:
    event = with_recipients("Delivery.json", "Recipient@Example.com", " second@example.com")
    events = parse(signer, keys, event)
    assert [e.recipient for e in events] == ["recipient@example.com", "second@example.com"]
    assert {e.type for e in events} == {EventType.DELIVERED}
    assert {e.event_id for e in events} == {SNS_MESSAGE_ID}
    assert {e.delivery_id for e in events} == {4711}
    assert {e.message_id for e in events} == {SES_MESSAGE_ID}
    assert events[0].occurred_at == dt.datetime(2024, 5, 14, 11, 55, 14, 133000, tzinfo=dt.UTC)
    assert events[0].raw == event


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("Bounce_Permanent.json", (EventType.BOUNCED, BounceClass.HARD)),
        ("Bounce_Transient.json", (EventType.DEFERRED, BounceClass.SOFT)),
        ("Bounce_Undetermined.json", (EventType.BOUNCED, BounceClass.SOFT)),
        ("Complaint.json", (EventType.COMPLAINED, BounceClass.COMPLAINT)),
        ("DeliveryDelay.json", (EventType.DEFERRED, BounceClass.SOFT)),
    ],
)
def test_one_event_per_listed_recipient_not_per_destination(
    signer: SnsSigner, keys: ses.SesKeys, name: str, expected: tuple[EventType, BounceClass]
) -> None:
    event = with_recipients(name, "a@example.com", "B@example.com")
    event["mail"]["destination"] = ["a@example.com", "b@example.com", "c@example.com"]
    events = parse(signer, keys, event)
    assert [(e.recipient, e.type, e.bounce) for e in events] == [
        ("a@example.com", *expected),
        ("b@example.com", *expected),
    ]


def test_other_types_give_one_event_per_destination(signer: SnsSigner, keys: ses.SesKeys) -> None:
    event = sample("Open.json")
    event["mail"]["destination"] = ["a@example.com", "b@example.com"]
    assert [e.recipient for e in parse(signer, keys, event)] == ["a@example.com", "b@example.com"]


def test_an_unknown_event_type_is_kept_as_unknown(signer: SnsSigner, keys: ses.SesKeys) -> None:
    event = {"eventType": "SomethingNew", "mail": sample("Send.json")["mail"]}
    [parsed] = parse(signer, keys, event)
    assert (parsed.type, parsed.bounce) == (EventType.UNKNOWN, BounceClass.NONE)


def test_a_topic_opt_in_alone_is_not_an_unsubscribe(signer: SnsSigner, keys: ses.SesKeys) -> None:
    event = sample("Subscription.json")
    event["subscription"]["newTopicPreferences"] = {
        "unsubscribeAll": False,
        "topicSubscriptionStatus": [{"topicName": "Offers", "subscriptionStatus": "OptIn"}],
    }
    [parsed] = parse(signer, keys, event)
    assert parsed.type is EventType.UNKNOWN


def test_a_topic_opt_out_is_an_unsubscribe(signer: SnsSigner, keys: ses.SesKeys) -> None:
    event = sample("Subscription.json")
    event["subscription"]["newTopicPreferences"]["unsubscribeAll"] = False
    old = event["subscription"]["oldTopicPreferences"]["topicSubscriptionStatus"]
    old[0]["subscriptionStatus"] = "OptIn"
    [parsed] = parse(signer, keys, event)
    assert parsed.type is EventType.UNSUBSCRIBED


def test_send_without_timestamp_uses_the_mail_time(signer: SnsSigner, keys: ses.SesKeys) -> None:
    [sent] = parse(signer, keys, send())
    assert sent.occurred_at == dt.datetime(2024, 5, 14, 11, 55, 2, 12000, tzinfo=dt.UTC)


def test_identity_notification_without_configuration_set(
    signer: SnsSigner, keys: ses.SesKeys
) -> None:
    """Feedback notifications set on the identity say notificationType and carry no tags."""
    event = sample("Bounce_Permanent.json")
    event["notificationType"] = event.pop("eventType")
    del event["mail"]["tags"]
    [parsed] = parse(signer, keys, event)
    assert (parsed.type, parsed.bounce, parsed.delivery_id) == (
        EventType.BOUNCED,
        BounceClass.HARD,
        None,
    )
    assert parsed.message_id == SES_MESSAGE_ID


@pytest.mark.parametrize("tag", [["not-a-number"], [], "4711", None])
def test_foreign_delivery_tags_are_none(signer: SnsSigner, keys: ses.SesKeys, tag: object) -> None:
    event = send()
    event["mail"]["tags"]["jv_delivery"] = tag
    [parsed] = parse(signer, keys, event)
    assert parsed.delivery_id is None


@pytest.mark.parametrize("version", ["1", "2"])
def test_both_signature_versions_verify(
    signer: SnsSigner, keys: ses.SesKeys, fetch: Fetcher, version: str
) -> None:
    events = parse(signer, keys, send(), version)
    assert [e.type for e in events] == [EventType.QUEUED]
    assert fetch.urls == [CERT_URL]


def test_subject_is_part_of_the_signed_string(signer: SnsSigner, keys: ses.SesKeys) -> None:
    message = signer.sign(notification(send(), Subject="Amazon SES Email Event"))
    assert len(ses.parse({}, body(message), keys, NOW)) == 1
    message["Subject"] = "Another subject"
    assert rejected(keys, message).status == 403


def test_certificates_are_cached_by_url(
    signer: SnsSigner, keys: ses.SesKeys, fetch: Fetcher
) -> None:
    for _ in range(3):
        parse(signer, keys, send())
    assert fetch.urls == [CERT_URL]


def test_china_regions_are_allowed(signer: SnsSigner, keys: ses.SesKeys, fetch: Fetcher) -> None:
    url = "https://sns.cn-north-1.amazonaws.com.cn/SimpleNotificationService-abc.pem"
    message = signer.sign(notification(send()), cert_url=url)
    assert len(ses.parse({}, body(message), keys, NOW)) == 1
    assert fetch.urls == [url]


@pytest.mark.parametrize("version", ["3", "", None, 2])
def test_unknown_signature_versions_are_refused(
    signer: SnsSigner, keys: ses.SesKeys, fetch: Fetcher, version: object
) -> None:
    message = signer.sign(notification(send()))
    message["SignatureVersion"] = version
    assert rejected(keys, message).status == 403
    assert fetch.urls == []


def test_tampered_message_is_refused(signer: SnsSigner, keys: ses.SesKeys) -> None:
    message = signer.sign(notification(send()))
    message["Message"] = message["Message"].replace("4711", "4712")
    assert rejected(keys, message).status == 403


def test_signature_version_must_match_the_algorithm(signer: SnsSigner, keys: ses.SesKeys) -> None:
    message = signer.sign(notification(send()), "1")
    message["SignatureVersion"] = "2"
    assert rejected(keys, message).status == 403


def test_certificate_of_another_key_is_refused(signer: SnsSigner) -> None:
    keys = ses.SesKeys(frozenset({TOPIC}), fetch=Fetcher(SnsSigner.create().pem))
    assert rejected(keys, signer.sign(notification(send()))).status == 403


@pytest.mark.parametrize(
    "mangle", [lambda s: s[:-12], lambda s: s[: len(s) // 2] + "==", lambda s: "*" * 20]
)
def test_truncated_or_garbled_signature_is_refused(
    signer: SnsSigner, keys: ses.SesKeys, mangle: Any
) -> None:
    message = signer.sign(notification(send()))
    message["Signature"] = mangle(message["Signature"])
    assert rejected(keys, message).status == 403


@pytest.mark.parametrize(
    "signature",
    [
        "not base64 at all!",
        "c2lnbmF0dXJl-_w==",  # URL-safe alphabet, not the standard one
        "c2ln bmF0",
        "%%%%",
        "",
    ],
)
def test_a_signature_that_is_not_base64_is_refused(
    signer: SnsSigner, keys: ses.SesKeys, signature: str
) -> None:
    message = signer.sign(notification(send()))
    message["Signature"] = signature
    assert rejected(keys, message).status == 403


@pytest.mark.parametrize("field", ["Signature", "SigningCertURL", "SignatureVersion"])
def test_missing_signature_fields_are_refused(
    signer: SnsSigner, keys: ses.SesKeys, fetch: Fetcher, field: str
) -> None:
    message = signer.sign(notification(send()))
    del message[field]
    assert rejected(keys, message).status == 403
    assert fetch.urls == []


@pytest.mark.parametrize("field", ["Signature", "SigningCertURL"])
def test_signature_fields_that_are_not_strings_are_refused(
    signer: SnsSigner, keys: ses.SesKeys, field: str
) -> None:
    message = signer.sign(notification(send()))
    message[field] = ["x"]
    assert rejected(keys, message).status == 403


def test_a_signature_of_another_message_is_refused(signer: SnsSigner, keys: ses.SesKeys) -> None:
    message = signer.sign(notification(send()))
    other = signer.sign(notification(sample("Bounce_Permanent.json")))
    assert rejected(keys, message | {"Signature": other["Signature"]}).status == 403


def test_a_redelivered_notification_keeps_its_event_id(
    signer: SnsSigner, keys: ses.SesKeys
) -> None:
    """SNS retries resend the same MessageId and Timestamp: stored once, not refused."""
    message = signer.sign(notification(sample("Bounce_Permanent.json")))
    [first] = ses.parse({}, body(message), keys, NOW)
    [again] = ses.parse({}, body(message), keys, NOW + dt.timedelta(minutes=30))
    assert first.event_id == again.event_id == SNS_MESSAGE_ID


def test_wrong_topic_is_refused_before_fetching(
    signer: SnsSigner, keys: ses.SesKeys, fetch: Fetcher
) -> None:
    other = "arn:aws:sns:eu-west-1:999999999999:someone-else"
    message = signer.sign(notification(send(), TopicArn=other))
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
    message = signer.sign(notification(send()), cert_url=url)
    assert rejected(keys, message).status == 403
    assert fetch.urls == []


@pytest.mark.parametrize("offset", [dt.timedelta(minutes=-61), dt.timedelta(minutes=61)])
def test_stale_and_future_timestamps_are_refused(
    signer: SnsSigner, keys: ses.SesKeys, fetch: Fetcher, offset: dt.timedelta
) -> None:
    message = signer.sign(notification(send(), NOW + offset))
    assert rejected(keys, message).status == 403
    assert fetch.urls == []


def test_a_retry_inside_the_window_passes(signer: SnsSigner, keys: ses.SesKeys) -> None:
    message = signer.sign(notification(send(), NOW - dt.timedelta(minutes=59)))
    assert len(ses.parse({}, body(message), keys, NOW)) == 1


def test_unreachable_certificate_is_503(signer: SnsSigner) -> None:
    def down(url: str) -> bytes:
        raise ConnectionError(url)

    keys = ses.SesKeys(frozenset({TOPIC}), fetch=down)
    assert rejected(keys, signer.sign(notification(send()))).status == 503


def test_a_fetched_non_certificate_is_refused(signer: SnsSigner) -> None:
    keys = ses.SesKeys(frozenset({TOPIC}), fetch=Fetcher(b"<html>not a cert</html>"))
    assert rejected(keys, signer.sign(notification(send()))).status == 403


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


def _without_detail_field(name: str, field: str) -> dict[str, Any]:
    event = sample(name)
    del event[DETAIL_KEYS[event["eventType"]]][field]
    return event


@pytest.mark.parametrize(
    "message",
    [
        {"Type": "Unheard", "TopicArn": TOPIC},
        {"TopicArn": TOPIC},
        notification("x") | {"Message": "{not json"},
        notification([1, 2]),
        notification({"eventType": "Send", "send": {}}),
        notification({"mail": send()["mail"], "send": {}}),
        notification(_without_detail_field("Delivery.json", "recipients")),
        notification(_without_detail_field("Bounce_Permanent.json", "bouncedRecipients")),
        notification(with_recipients("Bounce_Permanent.json", "not-an-address")),
        notification(send() | {"mail": send()["mail"] | {"destination": []}}),
        notification(send() | {"mail": send()["mail"] | {"timestamp": "yesterday"}}),
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
