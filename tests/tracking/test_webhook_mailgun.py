from __future__ import annotations

import datetime as dt
import json
from typing import Any

import pytest

from jvmail.db.models import EventType
from jvmail.tracking.events import BounceClass, Event, Rejected
from jvmail.tracking.webhooks import mailgun
from tests.tracking.signing import NOW, fixture_names, load_fixture, mailgun_body, unix

KEY = "test-signing-key-one"  # not a real key
OTHER_KEY = "test-signing-key-two"
KEYS = mailgun.MailgunKeys((KEY,))
TOKEN = "c6d2bd3e1f6a4dd4b6fe6a43b2bd29cf5ba0d4a86a6d7c3e10"

# What jvmail makes of each sample in tests/fixtures/webhooks/mailgun: (type, bounce, machine)
EXPECTED: dict[str, tuple[EventType, BounceClass, bool]] = {
    "accepted.json": (EventType.QUEUED, BounceClass.NONE, False),
    "rejected.json": (EventType.REJECTED, BounceClass.NONE, False),
    "delivered.json": (EventType.DELIVERED, BounceClass.NONE, False),
    "failed_temporary.json": (EventType.DEFERRED, BounceClass.SOFT, False),
    "failed_permanent.json": (EventType.BOUNCED, BounceClass.HARD, False),
    "failed_permanent_old.json": (EventType.BOUNCED, BounceClass.SOFT, False),
    "failed_permanent_suppress_bounce.json": (EventType.REJECTED, BounceClass.HARD, False),
    "failed_permanent_suppress_unsubscribe.json": (EventType.REJECTED, BounceClass.NONE, False),
    "failed_permanent_suppress_complaint.json": (EventType.REJECTED, BounceClass.NONE, False),
    "opened.json": (EventType.OPENED, BounceClass.NONE, False),
    "opened_bot.json": (EventType.OPENED, BounceClass.NONE, True),
    "clicked.json": (EventType.CLICKED, BounceClass.NONE, False),
    "unsubscribed.json": (EventType.UNSUBSCRIBED, BounceClass.NONE, False),
    "complained.json": (EventType.COMPLAINED, BounceClass.COMPLAINT, False),
}


def sample(name: str) -> dict[str, Any]:
    return load_fixture("mailgun", name)  # type: ignore[no-any-return]


def parse(data: object, key: str = KEY, keys: mailgun.MailgunKeys = KEYS) -> list[Event]:
    return mailgun.parse({}, mailgun_body(key, data, TOKEN), keys, NOW)


def test_every_sample_has_an_expectation() -> None:
    assert fixture_names("mailgun") == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_each_documented_event_maps(name: str) -> None:
    data = sample(name)
    [event] = parse(data)
    assert (event.type, event.bounce, event.machine) == EXPECTED[name]
    assert event.provider == "mailgun"
    assert event.event_id == TOKEN
    assert event.recipient == "recipient@example.com"
    assert event.delivery_id == 4711
    assert event.message_id == f"<{data['message']['headers']['message-id']}>"
    assert event.occurred_at == dt.datetime.fromtimestamp(data["timestamp"], dt.UTC)
    assert event.occurred_at.tzinfo is dt.UTC
    assert event.url == (data["url"] if event.type is EventType.CLICKED else None)
    assert event.user_agent == data.get("client-info", {}).get("user-agent")
    assert event.raw == data


@pytest.mark.parametrize(
    ("reason", "code", "expected"),
    [
        ("bounce", 550, BounceClass.HARD),
        ("generic", 550, BounceClass.HARD),
        ("generic", 421, BounceClass.SOFT),
        ("esp-block", 550, BounceClass.SOFT),
        ("old", 550, BounceClass.SOFT),
        ("bounce", None, BounceClass.HARD),
    ],
)
def test_permanent_failures_by_reason_and_code(
    reason: str, code: int | None, expected: BounceClass
) -> None:
    data = sample("failed_permanent.json") | {"reason": reason}
    data["delivery-status"]["code"] = code
    [event] = parse(data)
    assert (event.type, event.bounce) == (EventType.BOUNCED, expected)


def test_temporary_failures_are_deferred_whatever_the_reason() -> None:
    data = sample("failed_temporary.json") | {"reason": "suppress-bounce"}
    [event] = parse(data)
    assert (event.type, event.bounce) == (EventType.DEFERRED, BounceClass.SOFT)


@pytest.mark.parametrize(
    ("client", "machine"),
    [
        ({"client-type": "robot", "bot": ""}, True),
        ({"client-type": "unknown", "bot": "gmail"}, True),
        ({"client-type": "unknown", "bot": "generic"}, True),
        ({"client-type": "browser", "bot": ""}, False),
        ({"client-type": "browser", "bot": None}, False),
        ({}, False),
    ],
)
def test_machine_opens_and_clicks(client: dict[str, Any], machine: bool) -> None:
    for name in ("opened.json", "clicked.json"):
        [event] = parse(sample(name) | {"client-info": client})
        assert event.machine is machine


def test_an_unknown_event_is_kept_as_unknown() -> None:
    [event] = parse(sample("accepted.json") | {"event": "stored"})
    assert (event.type, event.bounce) == (EventType.UNKNOWN, BounceClass.NONE)


def test_an_angle_bracketed_message_id_is_kept() -> None:
    data = sample("delivered.json")
    data["message"]["headers"]["message-id"] = "<abc@mg.example.com>"
    [event] = parse(data)
    assert event.message_id == "<abc@mg.example.com>"


@pytest.mark.parametrize("variables", [{}, {"jv_delivery": "abc"}, {"jv_delivery": 0}, None, []])
def test_foreign_or_missing_delivery_id_is_none(variables: object) -> None:
    [event] = parse(sample("delivered.json") | {"user-variables": variables})
    assert event.delivery_id is None


def test_numeric_user_variable_is_accepted() -> None:
    [event] = parse(sample("delivered.json") | {"user-variables": {"jv_delivery": 91}})
    assert event.delivery_id == 91


def test_second_signing_key_verifies() -> None:
    keys = mailgun.MailgunKeys((KEY, OTHER_KEY))
    [event] = parse(sample("delivered.json"), OTHER_KEY, keys)
    assert event.type is EventType.DELIVERED


def test_wrong_key_is_406() -> None:
    with pytest.raises(Rejected) as info:
        parse(sample("delivered.json"), OTHER_KEY)
    assert info.value.status == 406


def test_event_id_is_the_signature_token_for_replay_refusal() -> None:
    """The signature covers timestamp and token only: a captured signature block replayed with
    another event verifies, so every such request carries the same event_id (the token) and the
    caller refuses all but the first (tests/tracking/test_webhooks_app.py)."""
    captured = json.loads(mailgun_body(KEY, sample("delivered.json"), TOKEN))
    swapped = {"signature": captured["signature"], "event-data": sample("complained.json")}
    [first] = mailgun.parse({}, json.dumps(captured).encode(), KEYS, NOW)
    [replayed] = mailgun.parse({}, json.dumps(swapped).encode(), KEYS, NOW)
    assert first.event_id == replayed.event_id == TOKEN


def _resigned(change: dict[str, str]) -> bytes:
    payload = json.loads(mailgun_body(KEY, sample("delivered.json"), TOKEN))
    payload["signature"].update(change)
    return json.dumps(payload).encode()


@pytest.mark.parametrize(
    "change",
    [
        {"token": TOKEN[:-1] + "1"},
        {"timestamp": str(unix(NOW) - 1)},
        {"signature": "0" * 64},
        {"signature": ""},
        {"signature": "é" * 64},
        {"signature": "not hex at all"},
        {"token": ""},
        {"timestamp": ""},
        {"timestamp": "soon"},
    ],
)
def test_tampered_signature_fields_are_406(change: dict[str, str]) -> None:
    with pytest.raises(Rejected) as info:
        mailgun.parse({}, _resigned(change), KEYS, NOW)
    assert info.value.status == 406


def test_uppercase_hex_signature_is_406() -> None:
    payload = json.loads(mailgun_body(KEY, sample("delivered.json"), TOKEN))
    payload["signature"]["signature"] = payload["signature"]["signature"].upper()
    with pytest.raises(Rejected) as info:
        mailgun.parse({}, json.dumps(payload).encode(), KEYS, NOW)
    assert info.value.status == 406


def test_truncated_signature_is_406() -> None:
    payload = json.loads(mailgun_body(KEY, sample("delivered.json"), TOKEN))
    payload["signature"]["signature"] = payload["signature"]["signature"][:32]
    with pytest.raises(Rejected) as info:
        mailgun.parse({}, json.dumps(payload).encode(), KEYS, NOW)
    assert info.value.status == 406


@pytest.mark.parametrize("signature", [None, "x", {}, {"timestamp": "1", "token": "t"}])
def test_missing_signature_block_is_406(signature: object) -> None:
    body = json.dumps({"signature": signature, "event-data": sample("delivered.json")}).encode()
    with pytest.raises(Rejected) as info:
        mailgun.parse({}, body, KEYS, NOW)
    assert info.value.status == 406


def test_a_body_without_signature_is_406() -> None:
    body = json.dumps({"event-data": sample("delivered.json")}).encode()
    with pytest.raises(Rejected) as info:
        mailgun.parse({}, body, KEYS, NOW)
    assert info.value.status == 406


@pytest.mark.parametrize(
    "offset", [dt.timedelta(hours=-9, minutes=-1), dt.timedelta(hours=9, minutes=1)]
)
def test_stale_and_future_timestamps_are_406(offset: dt.timedelta) -> None:
    body = mailgun_body(KEY, sample("delivered.json"), TOKEN, NOW + offset)
    with pytest.raises(Rejected) as info:
        mailgun.parse({}, body, KEYS, NOW)
    assert info.value.status == 406


def test_max_age_covers_the_retry_schedule_and_is_configurable() -> None:
    body = mailgun_body(KEY, sample("delivered.json"), TOKEN, NOW - dt.timedelta(hours=8))
    assert len(mailgun.parse({}, body, KEYS, NOW)) == 1  # Mailgun's last retry
    keys = mailgun.MailgunKeys((KEY,), max_age=dt.timedelta(hours=1))
    with pytest.raises(Rejected):
        mailgun.parse({}, body, keys, NOW)


def test_malformed_json_is_400() -> None:
    with pytest.raises(Rejected) as info:
        mailgun.parse({}, b'{"signature": ', KEYS, NOW)
    assert info.value.status == 400


def _without(name: str, field: str) -> dict[str, Any]:
    data = sample(name)
    del data[field]
    return data


@pytest.mark.parametrize(
    "data",
    [
        "not an object",
        None,
        _without("delivered.json", "recipient"),
        _without("delivered.json", "event"),
        _without("delivered.json", "timestamp"),
        sample("delivered.json") | {"timestamp": "yesterday"},
        sample("delivered.json") | {"recipient": "no address"},
    ],
)
def test_signed_but_malformed_event_is_400(data: object) -> None:
    body = mailgun_body(KEY, data, TOKEN)
    with pytest.raises(Rejected) as info:
        mailgun.parse({}, body, KEYS, NOW)
    assert info.value.status == 400
