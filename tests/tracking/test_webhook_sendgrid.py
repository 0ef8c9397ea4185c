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
from tests.tracking.signing import NOW, ec_key, sendgrid_headers, unix

SIG = "x-twilio-email-event-webhook-signature"
TS = "x-twilio-email-event-webhook-timestamp"
SG_MESSAGE_ID = "14c5d75ce93.dfd.64b469.filter0001.16648.5515E0B88.0"


@pytest.fixture(scope="module")
def key() -> tuple[ec.EllipticCurvePrivateKey, str]:
    return ec_key()


@pytest.fixture
def keys(key: tuple[ec.EllipticCurvePrivateKey, str]) -> sendgrid.SendGridKeys:
    return sendgrid.SendGridKeys((key[1],))


def ev(event: str, n: int, **fields: Any) -> dict[str, Any]:
    return {
        "email": "Example@Test.com ",
        "timestamp": unix(NOW) - 60,
        "smtp-id": "<14c5d75ce93.dfd.64b469@ismtpd-555>",
        "event": event,
        "category": ["cat facts"],
        "sg_event_id": f"sg-event-{n}",
        "sg_message_id": SG_MESSAGE_ID,
        "jv_delivery": "1234",
        **fields,
    }


BATCH = [
    ev("processed", 1),
    ev("dropped", 2, reason="Bounced Address", status="5.0.0"),
    ev("dropped", 3, reason="Unsubscribed Address", status="5.0.0"),
    ev("delivered", 4, response="250 OK"),
    ev("deferred", 5, response="400 try again later", attempt="5"),
    ev("bounce", 6, type="bounce", status="5.0.0", reason="550 no such user"),
    ev("bounce", 7, type="blocked", status="5.0.0", reason="554 blocked"),
    ev("open", 8, sg_machine_open=True, useragent="Mozilla/5.0", ip="255.255.255.255"),
    ev("open", 9, sg_machine_open=False, useragent="Mozilla/4.0 (compatible; MSIE 6.1)"),
    ev("click", 10, url="https://partner.example/offer", useragent="Mozilla/5.0"),
    ev("spamreport", 11),
    ev("unsubscribe", 12),
    ev("group_unsubscribe", 13, asm_group_id=10),
    ev("group_resubscribe", 14, asm_group_id=10),
]
EXPECTED = [
    (EventType.QUEUED, BounceClass.NONE, False),
    (EventType.REJECTED, BounceClass.HARD, False),
    (EventType.REJECTED, BounceClass.NONE, False),
    (EventType.DELIVERED, BounceClass.NONE, False),
    (EventType.DEFERRED, BounceClass.SOFT, False),
    (EventType.BOUNCED, BounceClass.HARD, False),
    (EventType.BOUNCED, BounceClass.SOFT, False),
    (EventType.OPENED, BounceClass.NONE, True),
    (EventType.OPENED, BounceClass.NONE, False),
    (EventType.CLICKED, BounceClass.NONE, False),
    (EventType.COMPLAINED, BounceClass.COMPLAINT, False),
    (EventType.UNSUBSCRIBED, BounceClass.NONE, False),
    (EventType.UNSUBSCRIBED, BounceClass.NONE, False),
    (EventType.UNKNOWN, BounceClass.NONE, False),
]


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


def test_genuine_batch_maps_every_event(
    key: tuple[ec.EllipticCurvePrivateKey, str], keys: sendgrid.SendGridKeys
) -> None:
    headers, body = signed(key[0], BATCH)
    events = sendgrid.parse(headers, body, keys, NOW)
    assert [(e.type, e.bounce, e.machine) for e in events] == EXPECTED
    assert [e.event_id for e in events] == [f"sg-event-{n}" for n in range(1, 15)]
    assert {e.recipient for e in events} == {"example@test.com"}
    assert {e.delivery_id for e in events} == {1234}
    assert {e.message_id for e in events} == {"14c5d75ce93"}
    assert {e.occurred_at for e in events} == {NOW - dt.timedelta(seconds=60)}
    assert all(e.occurred_at.tzinfo is dt.UTC and e.provider == "sendgrid" for e in events)
    assert [e.raw for e in events] == BATCH
    assert events[9].url == "https://partner.example/offer"
    assert events[8].user_agent == "Mozilla/4.0 (compatible; MSIE 6.1)"
    assert events[7].url is None


@pytest.mark.parametrize(
    ("bounce_type", "classification", "expected"),
    [
        ("blocked", "Invalid Address", BounceClass.HARD),
        ("bounce", "Reputation", BounceClass.SOFT),
        ("bounce", "Technical", BounceClass.SOFT),
        ("bounce", "Unclassified", BounceClass.HARD),
        ("blocked", "Mailbox Unavailable", BounceClass.SOFT),
    ],
)
def test_bounce_classification_decides_where_it_is_clear(
    key: tuple[ec.EllipticCurvePrivateKey, str],
    keys: sendgrid.SendGridKeys,
    bounce_type: str,
    classification: str,
    expected: BounceClass,
) -> None:
    item = ev("bounce", 1, type=bounce_type, bounce_classification=classification)
    assert parse_one(key, keys, item).bounce is expected


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
    other = parse_one(key, keys, ev("delivered", 1, email="other@test.com") | {"sg_event_id": 0})
    assert first.event_id == second.event_id
    assert len(first.event_id) == 32
    assert other.event_id != first.event_id


def test_second_key_in_the_tuple_verifies(
    key: tuple[ec.EllipticCurvePrivateKey, str],
) -> None:
    old = ec_key()[1]
    headers, body = signed(key[0], BATCH[:1])
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
    with pytest.raises(Rejected) as info:
        sendgrid.parse(headers, body.replace(b"1234", b"1235"), keys, NOW)
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


@pytest.mark.parametrize("offset_s", [-24 * 3600, 299])
def test_timestamps_inside_the_window_pass(
    key: tuple[ec.EllipticCurvePrivateKey, str], keys: sendgrid.SendGridKeys, offset_s: int
) -> None:
    headers, body = signed(key[0], BATCH[:2], NOW + dt.timedelta(seconds=offset_s))
    assert len(sendgrid.parse(headers, body, keys, NOW)) == 2


@pytest.mark.parametrize(
    "mangle",
    [
        lambda s: base64.b64encode(base64.b64decode(s)[:-4]).decode(),  # truncated
        lambda s: s[:-8],  # truncated base64
        lambda s: "not base64 at all!",
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
        b'[{"event": "delivered", "email": "a@b.c", "timestamp": 1715688000}, 3]',
        b'[{"event": "delivered", "timestamp": 1715688000}]',
        b'[{"event": "delivered", "email": "a@b.c", "timestamp": "soon"}]',
        b'[{"email": "a@b.c", "timestamp": 1715688000}]',
    ],
)
def test_malformed_bodies_are_400_as_a_whole(
    key: tuple[ec.EllipticCurvePrivateKey, str], keys: sendgrid.SendGridKeys, body: bytes
) -> None:
    with pytest.raises(Rejected) as info:
        sendgrid.parse(sendgrid_headers(key[0], body), body, keys, NOW)
    assert info.value.status == 400


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
