from __future__ import annotations

import base64
import datetime as dt
import json
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from jvmail.db.models import EventType
from jvmail.tracking.events import BounceClass, Event, Rejected
from jvmail.tracking.webhooks import sendgrid
from tests.tracking.signing import (
    NOW,
    ec_key,
    fixture_names,
    load_fixture,
    sendgrid_headers,
    unix,
)

SIG = "x-twilio-email-event-webhook-signature"
TS = "x-twilio-email-event-webhook-timestamp"

# What jvmail makes of each sample in tests/fixtures/webhooks/sendgrid: (type, bounce, machine)
EXPECTED: dict[str, tuple[EventType, BounceClass, bool]] = {
    "processed.json": (EventType.QUEUED, BounceClass.NONE, False),
    "dropped.json": (EventType.REJECTED, BounceClass.HARD, False),
    "dropped_unsubscribed.json": (EventType.REJECTED, BounceClass.NONE, False),
    "delivered.json": (EventType.DELIVERED, BounceClass.NONE, False),
    "deferred.json": (EventType.DEFERRED, BounceClass.SOFT, False),
    "bounce.json": (EventType.BOUNCED, BounceClass.HARD, False),
    "blocked.json": (EventType.BOUNCED, BounceClass.SOFT, False),
    # SendGrid's own blocked example says "Invalid Address": the classification wins
    "blocked_invalid_address.json": (EventType.BOUNCED, BounceClass.HARD, False),
    "open.json": (EventType.OPENED, BounceClass.NONE, False),
    "open_machine.json": (EventType.OPENED, BounceClass.NONE, True),
    "click.json": (EventType.CLICKED, BounceClass.NONE, False),
    "spamreport.json": (EventType.COMPLAINED, BounceClass.COMPLAINT, False),
    "unsubscribe.json": (EventType.UNSUBSCRIBED, BounceClass.NONE, False),
    "group_unsubscribe.json": (EventType.UNSUBSCRIBED, BounceClass.NONE, False),
    "group_resubscribe.json": (EventType.UNKNOWN, BounceClass.NONE, False),
}
# Account events concern no message and no recipient; see the xfail test below.
ACCOUNT_EVENTS = ("account_status_change.json",)
EVENT_FILES = sorted(EXPECTED)


def sample(name: str) -> dict[str, Any]:
    return load_fixture("sendgrid", name)  # type: ignore[no-any-return]


def ev(event: str, n: int, **fields: Any) -> dict[str, Any]:
    """A variant of the delivered sample as another event."""
    item = sample("delivered.json")
    for key in ("response", "ip", "tls"):
        del item[key]
    return item | {"event": event, "sg_event_id": f"sg-event-{n}", **fields}


BATCH = [sample(name) for name in EVENT_FILES]


@pytest.fixture(scope="module")
def key() -> tuple[ec.EllipticCurvePrivateKey, str]:
    return ec_key()


@pytest.fixture
def keys(key: tuple[ec.EllipticCurvePrivateKey, str]) -> sendgrid.SendGridKeys:
    return sendgrid.SendGridKeys((key[1],))


def signed(
    private: ec.EllipticCurvePrivateKey, payload: Any, when: dt.datetime = NOW
) -> tuple[dict[str, str], bytes]:
    body = json.dumps(payload).encode()
    return sendgrid_headers(private, body, when), body


def parse_one(
    key: tuple[ec.EllipticCurvePrivateKey, str], keys: sendgrid.SendGridKeys, item: Any
) -> Event:
    headers, body = signed(key[0], [item])
    [event] = sendgrid.parse(headers, body, keys, NOW)
    return event


def test_every_sample_has_an_expectation() -> None:
    assert fixture_names("sendgrid") == sorted([*EXPECTED, *ACCOUNT_EVENTS])


@pytest.mark.parametrize("name", EVENT_FILES)
def test_each_documented_event_maps(
    key: tuple[ec.EllipticCurvePrivateKey, str], keys: sendgrid.SendGridKeys, name: str
) -> None:
    item = sample(name)
    event = parse_one(key, keys, item)
    assert (event.type, event.bounce, event.machine) == EXPECTED[name]
    assert event.provider == "sendgrid"
    assert event.event_id == item["sg_event_id"]
    assert event.recipient == "alex@example.com"
    assert event.delivery_id == 4711
    assert event.message_id == "14c5d75ce93"
    assert event.occurred_at == dt.datetime.fromtimestamp(item["timestamp"], dt.UTC)
    assert event.occurred_at.tzinfo is dt.UTC
    assert event.url == (item["url"] if event.type is EventType.CLICKED else None)
    assert event.user_agent == item.get("useragent")
    assert event.raw == item


def test_all_samples_in_one_signed_batch_keep_their_order(
    key: tuple[ec.EllipticCurvePrivateKey, str], keys: sendgrid.SendGridKeys
) -> None:
    headers, body = signed(key[0], BATCH)
    events = sendgrid.parse(headers, body, keys, NOW)
    assert [(e.type, e.bounce, e.machine) for e in events] == [EXPECTED[n] for n in EVENT_FILES]
    assert [e.event_id for e in events] == [item["sg_event_id"] for item in BATCH]
    assert len({e.event_id for e in events}) == len(BATCH)


def test_an_account_status_change_does_not_reject_its_batch(
    key: tuple[ec.EllipticCurvePrivateKey, str], keys: sendgrid.SendGridKeys
) -> None:
    batch = [sample("delivered.json"), sample("account_status_change.json")]
    headers, body = signed(key[0], batch)
    events = sendgrid.parse(headers, body, keys, NOW)
    assert [(e.type, e.recipient) for e in events][1] == (EventType.UNKNOWN, "")
    assert events[0].type is EventType.DELIVERED


def test_recipient_is_bare_and_lowercased(
    key: tuple[ec.EllipticCurvePrivateKey, str], keys: sendgrid.SendGridKeys
) -> None:
    assert parse_one(key, keys, ev("delivered", 1, email=" Alex@Example.com ")).recipient == (
        "alex@example.com"
    )


@pytest.mark.parametrize(
    ("bounce_type", "classification", "expected"),
    [
        ("blocked", "Invalid Address", BounceClass.HARD),
        ("bounce", "Reputation", BounceClass.SOFT),
        ("bounce", "Technical", BounceClass.SOFT),
        ("bounce", "Content", BounceClass.SOFT),
        ("bounce", "Frequency or Volume", BounceClass.SOFT),
        ("bounce", "Unclassified", BounceClass.HARD),
        ("blocked", "Mailbox Unavailable", BounceClass.SOFT),
        ("blocked", None, BounceClass.SOFT),
        (None, None, BounceClass.HARD),
    ],
)
def test_bounce_classification_decides_where_it_is_clear(
    key: tuple[ec.EllipticCurvePrivateKey, str],
    keys: sendgrid.SendGridKeys,
    bounce_type: str | None,
    classification: str | None,
    expected: BounceClass,
) -> None:
    item = sample("bounce.json")
    for field, value in (("type", bounce_type), ("bounce_classification", classification)):
        if value is None:
            del item[field]
        else:
            item[field] = value
    assert parse_one(key, keys, item).bounce is expected


@pytest.mark.parametrize(
    ("reason", "expected"),
    [
        ("Bounced Address", BounceClass.HARD),
        ("Invalid", BounceClass.HARD),
        ("Unsubscribed Address", BounceClass.NONE),
        ("Spam Reporting Address", BounceClass.NONE),
        ("Invalid SMTPAPI header", BounceClass.NONE),
    ],
)
def test_drop_reasons(
    key: tuple[ec.EllipticCurvePrivateKey, str],
    keys: sendgrid.SendGridKeys,
    reason: str,
    expected: BounceClass,
) -> None:
    event = parse_one(key, keys, sample("dropped.json") | {"reason": reason})
    assert (event.type, event.bounce) == (EventType.REJECTED, expected)


@pytest.mark.parametrize("value", ["abc", "", "-3", "12.5", None, True, "9" * 40])
def test_a_foreign_delivery_id_is_none_not_an_error(
    key: tuple[ec.EllipticCurvePrivateKey, str], keys: sendgrid.SendGridKeys, value: object
) -> None:
    assert parse_one(key, keys, ev("delivered", 1, jv_delivery=value)).delivery_id is None


def test_an_event_without_sg_event_id_gets_a_stable_digest(
    key: tuple[ec.EllipticCurvePrivateKey, str], keys: sendgrid.SendGridKeys
) -> None:
    item = ev("delivered", 1)
    del item["sg_event_id"]
    first, second = parse_one(key, keys, item), parse_one(key, keys, item)
    other = parse_one(key, keys, ev("delivered", 1, email="other@example.com") | {"sg_event_id": 0})
    assert first.event_id == second.event_id
    assert len(first.event_id) == 32
    assert other.event_id != first.event_id


def test_second_key_in_the_tuple_verifies(
    key: tuple[ec.EllipticCurvePrivateKey, str],
) -> None:
    old = ec_key()[1]
    headers, body = signed(key[0], [sample("processed.json")])
    events = sendgrid.parse(headers, body, sendgrid.SendGridKeys((old, key[1])), NOW)
    assert [e.type for e in events] == [EventType.QUEUED]


def test_wrong_key_is_refused(key: tuple[ec.EllipticCurvePrivateKey, str]) -> None:
    headers, body = signed(key[0], BATCH)
    with pytest.raises(Rejected) as info:
        sendgrid.parse(headers, body, sendgrid.SendGridKeys((ec_key()[1],)), NOW)
    assert info.value.status == 403


def test_tampered_body_is_refused(
    key: tuple[ec.EllipticCurvePrivateKey, str], keys: sendgrid.SendGridKeys
) -> None:
    headers, body = signed(key[0], BATCH)
    assert b'"4711"' in body
    with pytest.raises(Rejected) as info:
        sendgrid.parse(headers, body.replace(b'"4711"', b'"4712"'), keys, NOW)
    assert info.value.status == 403


def test_a_signature_moved_to_another_body_is_refused(
    key: tuple[ec.EllipticCurvePrivateKey, str], keys: sendgrid.SendGridKeys
) -> None:
    headers, _ = signed(key[0], [sample("delivered.json")])
    _, other = signed(key[0], [sample("spamreport.json")])
    with pytest.raises(Rejected) as info:
        sendgrid.parse(headers, other, keys, NOW)
    assert info.value.status == 403


def test_tampered_timestamp_is_refused(
    key: tuple[ec.EllipticCurvePrivateKey, str], keys: sendgrid.SendGridKeys
) -> None:
    headers, body = signed(key[0], BATCH)
    headers[TS] = str(int(headers[TS]) + 1)
    with pytest.raises(Rejected) as info:
        sendgrid.parse(headers, body, keys, NOW)
    assert info.value.status == 403


@pytest.mark.parametrize("missing", [SIG, TS])
def test_missing_headers_are_401(
    key: tuple[ec.EllipticCurvePrivateKey, str], keys: sendgrid.SendGridKeys, missing: str
) -> None:
    headers, body = signed(key[0], BATCH)
    del headers[missing]
    with pytest.raises(Rejected) as info:
        sendgrid.parse(headers, body, keys, NOW)
    assert info.value.status == 401


@pytest.mark.parametrize("offset_s", [-25 * 3600 - 1, 25 * 3600 + 1, -7 * 86400])
def test_stale_and_future_timestamps_are_refused(
    key: tuple[ec.EllipticCurvePrivateKey, str], keys: sendgrid.SendGridKeys, offset_s: int
) -> None:
    headers, body = signed(key[0], BATCH, NOW + dt.timedelta(seconds=offset_s))
    with pytest.raises(Rejected) as info:
        sendgrid.parse(headers, body, keys, NOW)
    assert info.value.status == 403


@pytest.mark.parametrize("timestamp", ["soon", "", "1e400", "nan"])
def test_a_timestamp_header_that_is_not_unix_seconds_is_refused(
    key: tuple[ec.EllipticCurvePrivateKey, str], keys: sendgrid.SendGridKeys, timestamp: str
) -> None:
    headers, body = signed(key[0], BATCH)
    headers[TS] = timestamp
    with pytest.raises(Rejected) as info:
        sendgrid.parse(headers, body, keys, NOW)
    assert info.value.status in (401, 403)


@pytest.mark.parametrize("offset_s", [-24 * 3600, 299])
def test_timestamps_inside_the_window_pass(
    key: tuple[ec.EllipticCurvePrivateKey, str], keys: sendgrid.SendGridKeys, offset_s: int
) -> None:
    headers, body = signed(key[0], BATCH[:2], NOW + dt.timedelta(seconds=offset_s))
    assert len(sendgrid.parse(headers, body, keys, NOW)) == 2


def test_a_replayed_batch_gives_the_same_event_ids(
    key: tuple[ec.EllipticCurvePrivateKey, str], keys: sendgrid.SendGridKeys
) -> None:
    """A replay inside the window verifies, but is stored once: its sg_event_ids repeat."""
    headers, body = signed(key[0], BATCH)
    first = sendgrid.parse(headers, body, keys, NOW)
    again = sendgrid.parse(headers, body, keys, NOW + dt.timedelta(hours=1))
    assert [e.event_id for e in again] == [e.event_id for e in first]


@pytest.mark.parametrize(
    "signature",
    [
        "not base64 at all!",
        "MEUCIQ-_abc==",  # URL-safe alphabet, not the standard one
        "MEUCIQ C2ln",
        "%%%%",
    ],
)
def test_a_signature_that_is_not_base64_is_403(
    key: tuple[ec.EllipticCurvePrivateKey, str], keys: sendgrid.SendGridKeys, signature: str
) -> None:
    headers, body = signed(key[0], BATCH)
    headers[SIG] = signature
    with pytest.raises(Rejected) as info:
        sendgrid.parse(headers, body, keys, NOW)
    assert info.value.status == 403


@pytest.mark.parametrize(
    "mangle",
    [
        lambda s: base64.b64encode(base64.b64decode(s)[:-4]).decode(),  # truncated DER
        lambda s: s[:-8],  # truncated base64
        lambda s: base64.b64encode(b"\x30\x06\x02\x01\x01\x02\x01\x01").decode(),  # r = s = 1
        lambda s: "",
    ],
)
def test_mangled_signatures_are_refused(
    key: tuple[ec.EllipticCurvePrivateKey, str], keys: sendgrid.SendGridKeys, mangle: Any
) -> None:
    headers, body = signed(key[0], BATCH)
    headers[SIG] = mangle(headers[SIG])
    with pytest.raises(Rejected) as info:
        sendgrid.parse(headers, body, keys, NOW)
    assert info.value.status in (401, 403)


@pytest.mark.parametrize(
    "body",
    [
        b"[{not json",
        b'{"event": "delivered"}',
        b'[3, {"event": "delivered", "timestamp": 1715688000}]',
        b'[{"event": "delivered", "timestamp": 1715688000}]',
        b'[{"event": "delivered", "email": "a@example.com", "timestamp": "soon"}]',
        b'[{"email": "a@example.com", "timestamp": 1715688000}]',
        b'[{"event": "delivered", "email": "no address", "timestamp": 1715688000}]',
    ],
)
def test_malformed_bodies_are_400_as_a_whole(
    key: tuple[ec.EllipticCurvePrivateKey, str], keys: sendgrid.SendGridKeys, body: bytes
) -> None:
    with pytest.raises(Rejected) as info:
        sendgrid.parse(sendgrid_headers(key[0], body), body, keys, NOW)
    assert info.value.status == 400


def test_unreadable_events_are_left_out_of_a_signed_batch_with_why(
    key: tuple[ec.EllipticCurvePrivateKey, str], keys: sendgrid.SendGridKeys
) -> None:
    good = {"event": "delivered", "email": "a@example.com", "timestamp": 1715688000}
    body = json.dumps(
        [3, good, {"event": "delivered", "email": "no address", "timestamp": 1}]
    ).encode()
    batch = sendgrid.parse_batch(sendgrid_headers(key[0], body), body, keys, NOW)
    assert [e.recipient for e in batch.events] == ["a@example.com"]
    assert [why.split(":")[0] for why in batch.skipped] == ["event 0", "event 2"]
    assert "not an address" in batch.skipped[1]


def test_a_configured_key_that_is_not_p256_is_a_configuration_error(
    key: tuple[ec.EllipticCurvePrivateKey, str],
) -> None:
    headers, body = signed(key[0], BATCH)
    with pytest.raises(ValueError, match="P-256"):
        sendgrid.parse(headers, body, sendgrid.SendGridKeys((_p384(),)), NOW)


def _p384() -> str:
    public = ec.generate_private_key(ec.SECP384R1()).public_key()
    der = public.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return base64.b64encode(der).decode()


def test_signing_time_is_independent_of_event_time(
    key: tuple[ec.EllipticCurvePrivateKey, str], keys: sendgrid.SendGridKeys
) -> None:
    """SendGrid retries for a day: an old event in a freshly signed request is accepted."""
    item = sample("delivered.json") | {"timestamp": unix(NOW - dt.timedelta(days=2))}
    assert parse_one(key, keys, item).occurred_at == NOW - dt.timedelta(days=2)
