from __future__ import annotations

import base64
import datetime as dt
import json
from typing import Any

import pytest

from jvmail.db.models import EventType
from jvmail.tracking.events import BounceClass, Event, Rejected
from jvmail.tracking.webhooks import postmark
from tests.tracking.signing import FIXTURES, NOW, basic_auth, fixture_names, load_fixture

KEYS = postmark.PostmarkKeys((("jvmail", "test-password-1"),))
AUTH = basic_auth("jvmail", "test-password-1")

_HARD = (EventType.BOUNCED, BounceClass.HARD, False)
_SOFT = (EventType.BOUNCED, BounceClass.SOFT, False)
_DEFERRED = (EventType.DEFERRED, BounceClass.SOFT, False)
_NOT_SENT = (EventType.REJECTED, BounceClass.NONE, False)
_UNKNOWN = (EventType.UNKNOWN, BounceClass.NONE, False)
_UNSUBSCRIBED = (EventType.UNSUBSCRIBED, BounceClass.NONE, False)
_COMPLAINED = (EventType.COMPLAINED, BounceClass.COMPLAINT, False)

# What jvmail makes of each sample in tests/fixtures/webhooks/postmark: (type, bounce, machine);
# Postmark has no machine-open flag.
EXPECTED: dict[str, tuple[EventType, BounceClass, bool]] = {
    "Delivery.json": (EventType.DELIVERED, BounceClass.NONE, False),
    "Open.json": (EventType.OPENED, BounceClass.NONE, False),
    "Click.json": (EventType.CLICKED, BounceClass.NONE, False),
    "SpamComplaint.json": _COMPLAINED,
    "Bounce_HardBounce.json": _HARD,
    "Bounce_BadEmailAddress.json": _HARD,
    "Bounce_ManuallyDeactivated.json": _HARD,
    "Bounce_Transient.json": _DEFERRED,
    "Bounce_ChallengeVerification.json": _DEFERRED,
    "Bounce_SoftBounce.json": _SOFT,
    "Bounce_DnsError.json": _SOFT,
    "Bounce_Blocked.json": _SOFT,
    "Bounce_VirusNotification.json": _SOFT,
    "Bounce_DMARCPolicy.json": _SOFT,
    "Bounce_Unknown.json": _SOFT,
    "Bounce_SpamNotification.json": _SOFT,  # the receiving filter, not the recipient
    "Bounce_SpamComplaint.json": _COMPLAINED,
    "Bounce_Unsubscribe.json": _UNSUBSCRIBED,
    "Bounce_SMTPApiError.json": _NOT_SENT,
    "Bounce_TemplateRenderingFailed.json": _NOT_SENT,
    "Bounce_Unconfirmed.json": _NOT_SENT,
    "Bounce_AutoResponder.json": _UNKNOWN,
    "Bounce_AddressChange.json": _UNKNOWN,
    "Bounce_Subscribe.json": _UNKNOWN,
    "Bounce_OpenRelayTest.json": _UNKNOWN,
    "Bounce_InboundError.json": _UNKNOWN,
    "SubscriptionChange.json": _UNKNOWN,  # a HardBounce suppression: the Bounce reports it
    "SubscriptionChange_ManualSuppression.json": _UNSUBSCRIBED,
    "SubscriptionChange_SpamComplaint.json": _UNKNOWN,
    "SubscriptionChange_Reactivated.json": _UNKNOWN,
}
_TIME_FIELDS = ("DeliveredAt", "ReceivedAt", "BouncedAt", "ChangedAt")


def sample(name: str) -> dict[str, Any]:
    return load_fixture("postmark", name)  # type: ignore[no-any-return]


def parse(record: Any, headers: dict[str, str] = AUTH, keys: Any = KEYS) -> list[Event]:
    return postmark.parse(headers, json.dumps(record).encode(), keys, NOW)


def test_every_sample_has_an_expectation() -> None:
    assert fixture_names("postmark") == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_each_documented_record_maps(name: str) -> None:
    record = sample(name)
    [event] = parse(record)
    assert (event.type, event.bounce, event.machine) == EXPECTED[name]
    assert event.provider == "postmark"
    assert event.recipient == "john@example.com"
    assert event.delivery_id == 4711
    assert event.message_id == record["MessageID"]
    [when] = [record[field] for field in _TIME_FIELDS if field in record]
    assert event.occurred_at == dt.datetime.fromisoformat(when).astimezone(dt.UTC)
    assert event.occurred_at.tzinfo is dt.UTC
    if "ID" in record:
        assert event.event_id == str(record["ID"])
    else:
        assert len(event.event_id) == 32
    assert event.url == (record["OriginalLink"] if event.type is EventType.CLICKED else None)
    assert event.user_agent == record.get("UserAgent")
    assert event.raw == record


def test_the_body_is_read_as_sent() -> None:
    """Postmark signs nothing: the file's own bytes are what the parser reads."""
    body = (FIXTURES / "postmark" / "Delivery.json").read_bytes()
    [event] = postmark.parse(AUTH, body, KEYS, NOW)
    assert event.type is EventType.DELIVERED


def test_times_are_converted_to_utc() -> None:
    [event] = parse(sample("Delivery.json"))  # 07:55:10.2735393-04:00
    assert event.occurred_at == dt.datetime(2024, 5, 14, 11, 55, 10, 273539, tzinfo=dt.UTC)


def test_every_bounce_type_code_matches_its_type() -> None:
    """The samples carry the documented TypeCode; the parser decides on Type alone."""
    codes = {sample(n)["Type"]: sample(n)["TypeCode"] for n in EXPECTED if n.startswith("Bounce")}
    assert codes["HardBounce"] == 1
    assert codes["Transient"] == 2
    assert codes["SpamNotification"] == 512
    assert codes["SoftBounce"] == 4096
    assert codes["DMARCPolicy"] == 100009
    assert len(codes) == len(set(codes.values())) == 22


def test_a_bounce_type_postmark_adds_later_is_unknown() -> None:
    [event] = parse(sample("Bounce_HardBounce.json") | {"Type": "SomethingNew"})
    assert (event.type, event.bounce) == (EventType.UNKNOWN, BounceClass.NONE)


def test_a_record_type_postmark_adds_later_is_unknown() -> None:
    [event] = parse(sample("Delivery.json") | {"RecordType": "InboundNew"})
    assert (event.type, event.bounce) == (EventType.UNKNOWN, BounceClass.NONE)


def test_a_manual_suppression_without_reason_is_an_unsubscribe() -> None:
    [event] = parse(
        sample("SubscriptionChange_ManualSuppression.json") | {"SuppressionReason": None}
    )
    assert event.type is EventType.UNSUBSCRIBED


def test_records_without_id_get_a_stable_digest() -> None:
    delivery = sample("Delivery.json")
    [first] = parse(delivery)
    [again] = parse(sample("Delivery.json"))
    [other_recipient] = parse(delivery | {"Recipient": "jane@example.com"})
    [other_time] = parse(delivery | {"DeliveredAt": "2024-05-14T08:00:00-04:00"})
    [opened] = parse(sample("Open.json") | {"ReceivedAt": delivery["DeliveredAt"]})
    assert first.event_id == again.event_id
    assert len(first.event_id) == 32
    assert len({first.event_id, other_recipient.event_id, other_time.event_id}) == 3
    assert opened.event_id != first.event_id


@pytest.mark.parametrize("metadata", [{}, {"jv_delivery": "x1"}, None, {"jv_delivery": ""}])
def test_foreign_delivery_ids_are_none(metadata: object) -> None:
    [event] = parse(sample("Delivery.json") | {"Metadata": metadata})
    assert event.delivery_id is None


def test_second_credential_is_accepted() -> None:
    keys = postmark.PostmarkKeys((("jvmail", "old-password"), ("jvmail", "test-password-1")))
    assert [e.type for e in parse(sample("Delivery.json"), AUTH, keys)] == [EventType.DELIVERED]


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"authorization": ""},
        basic_auth("jvmail", "wrong"),
        basic_auth("someone", "test-password-1"),
        basic_auth("jvmail", "test-password-1x"),
        basic_auth("jvmail", ""),
        {"authorization": AUTH["authorization"].replace("Basic", "Bearer")},
        {"authorization": "Basic"},
        {"authorization": "Basic !!!not-base64!!!"},
        {"authorization": "Basic " + base64.urlsafe_b64encode(b"jvmail:?>?>").decode()},  # URL-safe
        {"authorization": "Basic " + base64.b64encode(b"jvmail").decode()},
    ],
)
def test_missing_or_wrong_credentials_are_401(headers: dict[str, str]) -> None:
    with pytest.raises(Rejected) as info:
        parse(sample("Delivery.json"), headers)
    assert info.value.status == 401


def test_scheme_is_case_insensitive() -> None:
    headers = {"authorization": AUTH["authorization"].replace("Basic", "basic")}
    assert len(parse(sample("Delivery.json"), headers)) == 1


def test_credentials_are_checked_before_the_body() -> None:
    with pytest.raises(Rejected) as info:
        postmark.parse(basic_auth("jvmail", "wrong"), b"{not json", KEYS, NOW)
    assert info.value.status == 401


def test_a_redelivered_record_keeps_its_event_id() -> None:
    """Postmark retries with the same record: stored once, whichever id it carries."""
    for name in ("Delivery.json", "Bounce_HardBounce.json", "Open.json"):
        [first], [again] = parse(sample(name)), parse(sample(name))
        assert first.event_id == again.event_id


def _without(name: str, field: str) -> bytes:
    record = sample(name)
    del record[field]
    return json.dumps(record).encode()


@pytest.mark.parametrize(
    "body",
    [
        b"{not json",
        b"[]",
        _without("Delivery.json", "Recipient"),
        _without("Delivery.json", "DeliveredAt"),
        _without("Delivery.json", "RecordType"),
        _without("Bounce_HardBounce.json", "Email"),
        _without("Bounce_HardBounce.json", "BouncedAt"),
        json.dumps(sample("Delivery.json") | {"DeliveredAt": "last tuesday"}).encode(),
        json.dumps(sample("Delivery.json") | {"Recipient": "no address"}).encode(),
    ],
)
def test_malformed_records_are_400(body: bytes) -> None:
    with pytest.raises(Rejected) as info:
        postmark.parse(AUTH, body, KEYS, NOW)
    assert info.value.status == 400
