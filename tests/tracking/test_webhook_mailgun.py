from __future__ import annotations

import datetime as dt
import json
from typing import Any

import pytest

from jvmail.db.models import EventType
from jvmail.tracking.events import BounceClass, Rejected
from jvmail.tracking.webhooks import mailgun
from tests.tracking.signing import NOW, mailgun_body, unix

KEY = "test-signing-key-one"  # not a real key
OTHER_KEY = "test-signing-key-two"
KEYS = mailgun.MailgunKeys((KEY,))
TOKEN = "c6d2bd3e1f6a4dd4b6fe6a43b2bd29cf5ba0d4a86a6d7c3e10"


def event_data(event: str, **fields: Any) -> dict[str, Any]:
    return {
        "id": "CPgfbmQMTCKtHW6uIWtuVe",
        "timestamp": unix(NOW) - 30.25,
        "log-level": "info",
        "event": event,
        "envelope": {"transport": "smtp", "sender": "bob@mg.example.com", "targets": "x"},
        "message": {
            "headers": {
                "to": "Alice <alice@example.com>",
                "message-id": "20240514115930.1.ABCDEF@mg.example.com",
                "from": "Bob <bob@mg.example.com>",
                "subject": "An offer from our partner",
            },
            "attachments": [],
            "size": 4211,
        },
        "recipient": "Alice@Example.com",
        "recipient-domain": "example.com",
        "tags": [],
        "user-variables": {"jv_delivery": "77"},
        **fields,
    }


def parse(data: dict[str, Any], key: str = KEY, keys: mailgun.MailgunKeys = KEYS) -> Any:
    return mailgun.parse({}, mailgun_body(key, data, TOKEN), keys, NOW)


CASES = [
    (event_data("accepted"), EventType.QUEUED, BounceClass.NONE, False),
    (event_data("rejected", reject={"reason": "x"}), EventType.REJECTED, BounceClass.NONE, False),
    (
        event_data("delivered", **{"delivery-status": {"code": 250, "message": "OK"}}),
        EventType.DELIVERED,
        BounceClass.NONE,
        False,
    ),
    (
        event_data(
            "failed",
            severity="temporary",
            reason="generic",
            **{"delivery-status": {"code": 452, "message": "mailbox full", "attempt-no": 1}},
        ),
        EventType.DEFERRED,
        BounceClass.SOFT,
        False,
    ),
    (
        event_data(
            "failed",
            severity="permanent",
            reason="bounce",
            **{"delivery-status": {"code": 550, "message": "5.1.1 no such user"}},
        ),
        EventType.BOUNCED,
        BounceClass.HARD,
        False,
    ),
    (
        event_data("failed", severity="permanent", reason="old"),
        EventType.BOUNCED,
        BounceClass.SOFT,
        False,
    ),
    (
        event_data(
            "failed",
            severity="permanent",
            reason="generic",
            **{"delivery-status": {"code": 421, "message": "try later"}},
        ),
        EventType.BOUNCED,
        BounceClass.SOFT,
        False,
    ),
    (
        event_data("failed", severity="permanent", reason="suppress-bounce"),
        EventType.REJECTED,
        BounceClass.HARD,
        False,
    ),
    (
        event_data("failed", severity="permanent", reason="suppress-unsubscribe"),
        EventType.REJECTED,
        BounceClass.NONE,
        False,
    ),
    (
        event_data("opened", **{"client-info": {"client-type": "unknown", "bot": "apple"}}),
        EventType.OPENED,
        BounceClass.NONE,
        True,
    ),
    (
        event_data("opened", **{"client-info": {"client-type": "robot", "bot": ""}}),
        EventType.OPENED,
        BounceClass.NONE,
        True,
    ),
    (
        event_data("opened", **{"client-info": {"client-type": "browser", "bot": ""}}),
        EventType.OPENED,
        BounceClass.NONE,
        False,
    ),
    (event_data("complained"), EventType.COMPLAINED, BounceClass.COMPLAINT, False),
    (event_data("unsubscribed"), EventType.UNSUBSCRIBED, BounceClass.NONE, False),
    (event_data("stored"), EventType.UNKNOWN, BounceClass.NONE, False),
]


@pytest.mark.parametrize(("data", "kind", "bounce", "machine"), CASES)
def test_genuine_events_map(
    data: dict[str, Any], kind: EventType, bounce: BounceClass, machine: bool
) -> None:
    [event] = parse(data)
    assert (event.type, event.bounce, event.machine) == (kind, bounce, machine)
    assert event.provider == "mailgun"
    assert event.recipient == "alice@example.com"
    assert event.delivery_id == 77
    assert event.message_id == "<20240514115930.1.ABCDEF@mg.example.com>"
    assert event.occurred_at == NOW - dt.timedelta(seconds=30.25)
    assert event.occurred_at.tzinfo is dt.UTC
    assert event.raw == data


def test_event_id_is_the_signature_token_for_replay_refusal() -> None:
    [event] = parse(event_data("delivered"))
    assert event.event_id == TOKEN


def test_click_carries_url_and_user_agent() -> None:
    client = {"client-type": "browser", "user-agent": "Mozilla/5.0 (X11)", "bot": ""}
    data = event_data("clicked", url="https://partner.example/offer", **{"client-info": client})
    [event] = parse(data)
    assert (event.type, event.url, event.user_agent) == (
        EventType.CLICKED,
        "https://partner.example/offer",
        "Mozilla/5.0 (X11)",
    )


@pytest.mark.parametrize("variables", [{}, {"jv_delivery": "abc"}, {"jv_delivery": 0}, None])
def test_foreign_or_missing_delivery_id_is_none(variables: object) -> None:
    [event] = parse(event_data("delivered", **{"user-variables": variables}))
    assert event.delivery_id is None


def test_numeric_user_variable_is_accepted() -> None:
    [event] = parse(event_data("delivered", **{"user-variables": {"jv_delivery": 91}}))
    assert event.delivery_id == 91


def test_second_signing_key_verifies() -> None:
    [event] = parse(event_data("delivered"), OTHER_KEY, mailgun.MailgunKeys((KEY, OTHER_KEY)))
    assert event.type is EventType.DELIVERED


def test_wrong_key_is_406() -> None:
    with pytest.raises(Rejected) as info:
        parse(event_data("delivered"), OTHER_KEY)
    assert info.value.status == 406


def _resigned(change: dict[str, str]) -> bytes:
    payload = json.loads(mailgun_body(KEY, event_data("delivered"), TOKEN))
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
    ],
)
def test_tampered_signature_fields_are_406(change: dict[str, str]) -> None:
    with pytest.raises(Rejected) as info:
        mailgun.parse({}, _resigned(change), KEYS, NOW)
    assert info.value.status == 406


def test_truncated_signature_is_406() -> None:
    payload = json.loads(mailgun_body(KEY, event_data("delivered"), TOKEN))
    payload["signature"]["signature"] = payload["signature"]["signature"][:32]
    with pytest.raises(Rejected) as info:
        mailgun.parse({}, json.dumps(payload).encode(), KEYS, NOW)
    assert info.value.status == 406


@pytest.mark.parametrize("signature", [None, "x", {}, {"timestamp": "1", "token": "t"}])
def test_missing_signature_block_is_406(signature: object) -> None:
    body = json.dumps({"signature": signature, "event-data": event_data("delivered")}).encode()
    with pytest.raises(Rejected) as info:
        mailgun.parse({}, body, KEYS, NOW)
    assert info.value.status == 406


@pytest.mark.parametrize(
    "offset", [dt.timedelta(hours=-9, minutes=-1), dt.timedelta(hours=9, minutes=1)]
)
def test_stale_and_future_timestamps_are_406(offset: dt.timedelta) -> None:
    body = mailgun_body(KEY, event_data("delivered"), TOKEN, NOW + offset)
    with pytest.raises(Rejected) as info:
        mailgun.parse({}, body, KEYS, NOW)
    assert info.value.status == 406


def test_max_age_covers_the_retry_schedule_and_is_configurable() -> None:
    body = mailgun_body(KEY, event_data("delivered"), TOKEN, NOW - dt.timedelta(hours=8))
    assert len(mailgun.parse({}, body, KEYS, NOW)) == 1  # Mailgun's last retry
    keys = mailgun.MailgunKeys((KEY,), max_age=dt.timedelta(hours=1))
    with pytest.raises(Rejected):
        mailgun.parse({}, body, keys, NOW)


def test_malformed_json_is_400() -> None:
    with pytest.raises(Rejected) as info:
        mailgun.parse({}, b'{"signature": ', KEYS, NOW)
    assert info.value.status == 400


@pytest.mark.parametrize(
    "data",
    [
        "not an object",
        {key: v for key, v in event_data("delivered").items() if key != "recipient"},
        {key: v for key, v in event_data("delivered").items() if key != "event"},
        event_data("delivered", timestamp="yesterday"),
        event_data("delivered", recipient="no address"),
    ],
)
def test_signed_but_malformed_event_is_400(data: object) -> None:
    body = mailgun_body(KEY, data, TOKEN)
    with pytest.raises(Rejected) as info:
        mailgun.parse({}, body, KEYS, NOW)
    assert info.value.status == 400
