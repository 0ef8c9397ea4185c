from __future__ import annotations

import base64
import datetime as dt
import json
from typing import Any

import pytest

from jvmail.db.models import EventType
from jvmail.tracking.events import BounceClass, Event, Rejected
from jvmail.tracking.webhooks import postmark
from tests.tracking.signing import NOW, basic_auth

KEYS = postmark.PostmarkKeys((("jvmail", "test-password-1"),))
AUTH = basic_auth("jvmail", "test-password-1")
MESSAGE_ID = "883953f4-6105-42a2-a16a-77a8eac79483"
METADATA = {"jv_delivery": "5150", "mailing": "12"}


def delivery() -> dict[str, Any]:
    return {
        "RecordType": "Delivery",
        "ServerID": 23,
        "MessageStream": "outbound",
        "MessageID": MESSAGE_ID,
        "Recipient": "John@Example.com",
        "Tag": "welcome-email",
        "DeliveredAt": "2024-05-14T07:59:10.2735393-04:00",
        "Details": "Test delivery webhook details",
        "Metadata": METADATA,
    }


def bounce(kind: str, **fields: Any) -> dict[str, Any]:
    return {
        "RecordType": "Bounce",
        "ID": 4323372036854775807,
        "Type": kind,
        "TypeCode": 1,
        "Name": kind,
        "Tag": "Test",
        "MessageID": MESSAGE_ID,
        "ServerID": 23,
        "MessageStream": "outbound",
        "Description": "The server was unable to deliver your message.",
        "Details": "Test bounce details",
        "Email": "John@Example.com",
        "From": "sender@example.com",
        "BouncedAt": "2024-05-14T11:58:00Z",
        "DumpAvailable": True,
        "Inactive": True,
        "CanActivate": True,
        "Subject": "Test subject",
        "Content": "Return-Path:....",
        "Metadata": METADATA,
        **fields,
    }


def open_record() -> dict[str, Any]:
    return {
        "RecordType": "Open",
        "MessageStream": "outbound",
        "Metadata": METADATA,
        "FirstOpen": True,
        "Client": {"Name": "Chrome 35.0.1916.153", "Company": "Google", "Family": "Chrome"},
        "OS": {"Name": "OS X 10.7 Lion", "Company": "Apple Computer, Inc.", "Family": "OS X 10"},
        "Platform": "WebMail",
        "UserAgent": "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_7_5)",
        "ReadSeconds": 5,
        "Geo": {"CountryISOCode": "RS", "Country": "Serbia", "City": "Novi Sad"},
        "MessageID": MESSAGE_ID,
        "ReceivedAt": "2024-05-14T11:59:30.000Z",
        "Tag": "welcome-email",
        "Recipient": "john@example.com",
    }


def click_record() -> dict[str, Any]:
    return {
        "RecordType": "Click",
        "MessageStream": "outbound",
        "ClickLocation": "HTML",
        "Client": {"Name": "Chrome 35.0.1916.153", "Company": "Google", "Family": "Chrome"},
        "Platform": "Desktop",
        "UserAgent": "Mozilla/5.0 (Macintosh)",
        "OriginalLink": "https://partner.example/offer",
        "MessageID": MESSAGE_ID,
        "ReceivedAt": "2024-05-14T11:59:40Z",
        "Tag": "welcome-email",
        "Recipient": "john@example.com",
        "Metadata": METADATA,
    }


def spam_complaint() -> dict[str, Any]:
    return bounce("SpamComplaint", RecordType="SpamComplaint", ID=42, TypeCode=512)


def subscription(suppress: bool, reason: str | None) -> dict[str, Any]:
    return {
        "RecordType": "SubscriptionChange",
        "MessageID": MESSAGE_ID,
        "ServerID": 23,
        "MessageStream": "outbound",
        "ChangedAt": "2024-05-14T11:59:50Z",
        "Recipient": "john@example.com",
        "Origin": "Recipient",
        "SuppressSending": suppress,
        "SuppressionReason": reason,
        "Tag": "my-tag",
        "Metadata": METADATA,
    }


def parse(record: Any, headers: dict[str, str] = AUTH, keys: Any = KEYS) -> list[Event]:
    return postmark.parse(headers, json.dumps(record).encode(), keys, NOW)


@pytest.mark.parametrize(
    ("record", "kind", "bounce_class"),
    [
        (delivery(), EventType.DELIVERED, BounceClass.NONE),
        (open_record(), EventType.OPENED, BounceClass.NONE),
        (click_record(), EventType.CLICKED, BounceClass.NONE),
        (spam_complaint(), EventType.COMPLAINED, BounceClass.COMPLAINT),
        (bounce("HardBounce"), EventType.BOUNCED, BounceClass.HARD),
        (bounce("BadEmailAddress"), EventType.BOUNCED, BounceClass.HARD),
        (bounce("ManuallyDeactivated"), EventType.BOUNCED, BounceClass.HARD),
        (bounce("Transient"), EventType.DEFERRED, BounceClass.SOFT),
        (bounce("SoftBounce"), EventType.BOUNCED, BounceClass.SOFT),
        (bounce("DnsError"), EventType.BOUNCED, BounceClass.SOFT),
        (bounce("Blocked"), EventType.BOUNCED, BounceClass.SOFT),
        (bounce("SpamNotification"), EventType.BOUNCED, BounceClass.SOFT),
        (bounce("SpamComplaint"), EventType.COMPLAINED, BounceClass.COMPLAINT),
        (bounce("Unsubscribe"), EventType.UNSUBSCRIBED, BounceClass.NONE),
        (bounce("AutoResponder"), EventType.UNKNOWN, BounceClass.NONE),
        (bounce("SomethingNew"), EventType.UNKNOWN, BounceClass.NONE),
        (subscription(True, "ManualSuppression"), EventType.UNSUBSCRIBED, BounceClass.NONE),
        (subscription(True, "HardBounce"), EventType.UNKNOWN, BounceClass.NONE),
        (subscription(False, None), EventType.UNKNOWN, BounceClass.NONE),
        (delivery() | {"RecordType": "InboundNew"}, EventType.UNKNOWN, BounceClass.NONE),
    ],
)
def test_genuine_records_map(
    record: dict[str, Any], kind: EventType, bounce_class: BounceClass
) -> None:
    [event] = parse(record)
    assert (event.type, event.bounce) == (kind, bounce_class)
    assert event.provider == "postmark"
    assert event.recipient == "john@example.com"
    assert event.delivery_id == 5150
    assert event.message_id == MESSAGE_ID
    assert event.machine is False
    assert event.occurred_at.tzinfo is dt.UTC
    assert event.raw == record


def test_times_are_converted_to_utc() -> None:
    [event] = parse(delivery())
    assert event.occurred_at == dt.datetime(2024, 5, 14, 11, 59, 10, 273539, tzinfo=dt.UTC)


def test_click_and_open_details() -> None:
    [click] = parse(click_record())
    [opened] = parse(open_record())
    assert click.url == "https://partner.example/offer"
    assert opened.url is None
    assert opened.user_agent == "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_7_5)"


def test_bounces_use_their_own_id() -> None:
    [event] = parse(bounce("HardBounce"))
    assert event.event_id == "4323372036854775807"


def test_records_without_id_get_a_stable_digest() -> None:
    [first] = parse(delivery())
    [again] = parse(delivery())
    [other_recipient] = parse(delivery() | {"Recipient": "jane@example.com"})
    [other_time] = parse(delivery() | {"DeliveredAt": "2024-05-14T08:00:00-04:00"})
    [opened] = parse(open_record() | {"ReceivedAt": delivery()["DeliveredAt"]})
    assert first.event_id == again.event_id
    assert len(first.event_id) == 32
    assert len({first.event_id, other_recipient.event_id, other_time.event_id}) == 3
    assert opened.event_id != first.event_id


@pytest.mark.parametrize("metadata", [{}, {"jv_delivery": "x1"}, None, {"jv_delivery": ""}])
def test_foreign_delivery_ids_are_none(metadata: object) -> None:
    [event] = parse(delivery() | {"Metadata": metadata})
    assert event.delivery_id is None


def test_second_credential_is_accepted() -> None:
    keys = postmark.PostmarkKeys((("jvmail", "old-password"), ("jvmail", "test-password-1")))
    assert [e.type for e in parse(delivery(), AUTH, keys)] == [EventType.DELIVERED]


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"authorization": ""},
        basic_auth("jvmail", "wrong"),
        basic_auth("someone", "test-password-1"),
        basic_auth("jvmail", "test-password-1x"),
        {"authorization": AUTH["authorization"].replace("Basic", "Bearer")},
        {"authorization": "Basic"},
        {"authorization": "Basic !!!not-base64!!!"},
        {"authorization": "Basic " + base64.b64encode(b"jvmail").decode()},
    ],
)
def test_missing_or_wrong_credentials_are_401(headers: dict[str, str]) -> None:
    with pytest.raises(Rejected) as info:
        parse(delivery(), headers)
    assert info.value.status == 401


def test_scheme_is_case_insensitive() -> None:
    headers = {"authorization": AUTH["authorization"].replace("Basic", "basic")}
    assert len(parse(delivery(), headers)) == 1


def test_credentials_are_checked_before_the_body() -> None:
    with pytest.raises(Rejected) as info:
        postmark.parse(basic_auth("jvmail", "wrong"), b"{not json", KEYS, NOW)
    assert info.value.status == 401


@pytest.mark.parametrize(
    "body",
    [
        b"{not json",
        b"[]",
        json.dumps({k: v for k, v in delivery().items() if k != "Recipient"}).encode(),
        json.dumps({k: v for k, v in delivery().items() if k != "DeliveredAt"}).encode(),
        json.dumps({k: v for k, v in delivery().items() if k != "RecordType"}).encode(),
        json.dumps(delivery() | {"DeliveredAt": "last tuesday"}).encode(),
    ],
)
def test_malformed_records_are_400(body: bytes) -> None:
    with pytest.raises(Rejected) as info:
        postmark.parse(AUTH, body, KEYS, NOW)
    assert info.value.status == 400
