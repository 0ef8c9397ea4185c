"""Signed provider webhooks through the real app, on SQLite and PostgreSQL: committed to the
inbox before the answer, then stored once by the drain and acted on once (suppression policy,
unknown deliveries), and nothing written for a forged request."""

from __future__ import annotations

import datetime as dt
import secrets
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from sqlalchemy import func, select
from sqlalchemy.orm import Session
from starlette.testclient import TestClient

from jvmail.db.models import (
    Delivery,
    DeliveryStatus,
    Partner,
    Subscriber,
    Suppression,
    SuppressionReason,
    TrackingEvent,
    WebhookInbox,
)
from jvmail.dispatch.pipeline import dispatch, send_batch
from jvmail.providers.outbox import OutboxProvider
from jvmail.tracking.accounts import SnsPolicy
from jvmail.tracking.app import Settings, Tracker, create_app
from jvmail.tracking.inbox import Drained, Drainer, drain
from jvmail.tracking.webhooks import ses
from tests.dispatch.conftest import Hub, build_hub
from tests.tracking.signing import (
    SnsSigner,
    basic_auth,
    ec_key,
    mailgun_body,
    sendgrid_headers,
    unix,
)

NOW = dt.datetime.now(dt.UTC)


@dataclass
class Webhooks:
    client: TestClient
    session: Session
    hub: Hub
    deliveries: dict[str, int]
    key: ec.EllipticCurvePrivateKey  # the sender's SendGrid signing key
    env: dict[str, str]  # the accounts' webhook keys

    def post(
        self, events: list[dict[str, Any]], *, account: str = "sender", key: Any = None
    ) -> Any:
        body = orjson.dumps(events)
        headers = sendgrid_headers(key or self.key, body, NOW)
        return self.client.post(f"/webhooks/sendgrid/{account}", content=body, headers=headers)

    def event(
        self, kind: str, email: str, n: int, at: dt.datetime = NOW, **fields: Any
    ) -> dict[str, Any]:
        return {
            "email": email,
            "timestamp": unix(at),
            "event": kind,
            "sg_event_id": f"ev-{n}",
            "sg_message_id": "msg.filter0001",
            "jv_delivery": str(self.deliveries[email]),
            **fields,
        }

    def deliver(self, events: list[dict[str, Any]]) -> Drained:
        """Post ``events`` (answered 200 with all accepted), then drain the inbox."""
        answer = self.post(events)
        assert answer.status_code == 200, answer.text
        assert answer.json() == {"accepted": len(events), "confirmed": False}
        return self.drain()

    def drain(self) -> Drained:
        tracker: Tracker = self.client.app.state.tracker  # type: ignore[attr-defined]
        done = drain(tracker.sessions)
        self.session.commit()  # a new transaction sees what the drain wrote
        return done

    def inbox(self) -> list[tuple[int, str, int]]:
        """(partner id, provider, events) per inbox row, oldest first."""
        self.session.commit()
        rows = self.session.execute(
            select(WebhookInbox.partner_id, WebhookInbox.provider, WebhookInbox.count).order_by(
                WebhookInbox.id
            )
        )
        return [(p, k, n) for p, k, n in rows]

    def stored(self) -> int:
        self.session.commit()
        return int(self.session.scalar(select(func.count()).select_from(TrackingEvent)) or 0)

    def suppressed(self) -> dict[str, SuppressionReason]:
        self.session.commit()
        rows = self.session.execute(select(Suppression.email, Suppression.reason)).all()
        return dict(rows)


def _account(session: Session, slug: str, provider: dict[str, Any]) -> None:
    partner = session.scalars(select(Partner).where(Partner.slug == slug)).one()
    partner.provider_kind = provider["kind"]
    partner.provider = provider
    session.commit()


@pytest.fixture
def hooks(db_url: str, session: Session, tmp_path: Path) -> Iterator[Webhooks]:
    hub = build_hub(session)
    for bounds in dispatch(session, hub.mailing.id, batch_size=100):
        send_batch(session, OutboxProvider(tmp_path), hub.mailing.id, bounds)
    rows = session.execute(
        select(Subscriber.email, Delivery.id)
        .join(Delivery, Delivery.subscriber_id == Subscriber.id)
        .where(Delivery.mailing_id == hub.mailing.id)
    )
    deliveries = dict(rows.all())
    sender_key, sender_public = ec_key()
    _, owner_public = ec_key()
    sendgrid = {"kind": "sendgrid", "api_key_env": "SG_API"}
    _account(session, "sender", sendgrid | {"webhook_public_key_env": "SENDER_SG_HOOK"})
    _account(session, "owner", sendgrid | {"webhook_public_key_env": "OWNER_SG_HOOK"})
    env = {"SENDER_SG_HOOK": f"{ec_key()[1]},{sender_public}", "OWNER_SG_HOOK": owner_public}
    # The tests drain the inbox themselves, to see it between a request and its storing.
    with TestClient(create_app(Settings(db_url, env=env, drain=False))) as client:
        yield Webhooks(client, session, hub, deliveries, sender_key, env)


def test_a_signed_batch_keeps_its_readable_events_and_says_why_others_were_left_out(
    hooks: Webhooks,
) -> None:
    broken = hooks.event("bounce", "reader2@mail.example", 2) | {"timestamp": "soon"}
    answer = hooks.post([hooks.event("delivered", "reader1@mail.example", 1), broken])
    assert answer.status_code == 200
    assert answer.json()["accepted"] == 1
    assert answer.json()["skipped"] == ["event 1: timestamp 'soon' is not unix seconds"]
    assert hooks.inbox() == [(hooks.hub.sender.id, "sendgrid", 1)]
    assert hooks.post([broken]).status_code == 400  # nothing readable: refused as a whole
    assert hooks.inbox() == [(hooks.hub.sender.id, "sendgrid", 1)]


def test_a_signed_batch_is_stored_once_even_sent_three_times_at_once(hooks: Webhooks) -> None:
    events = [
        hooks.event("delivered", "reader1@mail.example", 1),
        hooks.event("bounce", "reader2@mail.example", 2, type="bounce", status="5.1.1"),
        hooks.event("spamreport", "reader3@mail.example", 3),
        hooks.event("open", "reader4@mail.example", 4, sg_machine_open=True),
    ]
    with ThreadPoolExecutor(3) as pool:
        answers = list(pool.map(lambda _: hooks.post(events), range(3)))
    assert [a.status_code for a in answers] == [200, 200, 200]
    assert [a.json() for a in answers] == [{"accepted": 4, "confirmed": False}] * 3
    assert hooks.inbox() == [(hooks.hub.sender.id, "sendgrid", 4)] * 3
    assert hooks.stored() == 0  # answered once safe in the inbox, not once stored
    done = hooks.drain()
    assert (done.rows, done.events, done.new, done.duplicate) == (3, 12, 4, 8)
    assert done.suppressed == 2
    assert hooks.inbox() == []
    assert hooks.stored() == 4
    assert hooks.suppressed() == {
        "reader2@mail.example": SuppressionReason.BOUNCED,
        "reader3@mail.example": SuppressionReason.COMPLAINED,
    }
    machine = hooks.session.scalars(
        select(TrackingEvent.human).where(TrackingEvent.provider_event_id == "ev-4")
    ).one()
    assert machine is False


def test_an_answered_request_is_in_the_inbox_or_stored_never_neither(
    db_url: str, hooks: Webhooks, monkeypatch: pytest.MonkeyPatch
) -> None:
    readers = sorted(hooks.deliveries)[:15]
    with TestClient(create_app(Settings(db_url, env=hooks.env))) as client:
        drained = threading.Event()
        until_empty = Drainer.until_empty

        def watched(drainer: Drainer, upto: int | None = None) -> Drained:
            done = until_empty(drainer, upto)
            drained.set()
            return done

        monkeypatch.setattr(Drainer, "until_empty", watched)
        for n in range(5):
            events = [hooks.event("delivered", e, n * 3 + i) for i, e in enumerate(readers[:3])]
            readers = readers[3:]
            body = orjson.dumps(events)
            answer = client.post(
                "/webhooks/sendgrid/sender",
                content=body,
                headers=sendgrid_headers(hooks.key, body, NOW),
            )
            assert answer.json() == {"accepted": 3, "confirmed": False}
            # The background drain may have stored them already: one transaction moves them,
            # and one statement (one snapshot) counts both sides.
            hooks.session.commit()
            waiting = select(func.coalesce(func.sum(WebhookInbox.count), 0)).scalar_subquery()
            stored = select(func.count()).select_from(TrackingEvent).scalar_subquery()
            assert hooks.session.scalar(select(waiting + stored)) == 3 * (n + 1)
        while hooks.stored() < 15:  # this server drains by itself, woken by its requests
            assert drained.wait(10), "no drain within 10 s of a request"
            drained.clear()
        assert hooks.inbox() == []


def test_the_server_drains_the_inbox_at_startup_and_as_it_stops(
    db_url: str, hooks: Webhooks
) -> None:
    # `hooks.client` only fills the inbox (drain=False), as a server of a fleet may.
    first = [hooks.event("delivered", "reader1@mail.example", 1)]
    second = [hooks.event("spamreport", "reader2@mail.example", 2)]
    assert hooks.post(first).status_code == 200
    assert len(hooks.inbox()) == 1
    settings = Settings(db_url, env=hooks.env, drain_seconds=3600)
    with TestClient(create_app(settings)):
        assert hooks.inbox() == []  # drained before it served
        assert hooks.stored() == 1
        assert hooks.post(second).status_code == 200
        assert len(hooks.inbox()) == 1  # not its request, and its timer is an hour away
    assert hooks.inbox() == []
    assert hooks.stored() == 2
    assert hooks.suppressed() == {"reader2@mail.example": SuppressionReason.COMPLAINED}


def test_forged_stale_and_misdirected_webhooks_write_nothing(hooks: Webhooks) -> None:
    events = [hooks.event("bounce", "reader2@mail.example", 1, type="bounce")]
    stranger, _ = ec_key()
    assert hooks.post(events, key=stranger).status_code == 403
    body = orjson.dumps(events)
    headers = sendgrid_headers(hooks.key, body, NOW)
    tampered = body.replace(b"reader2", b"reader9")
    answer = hooks.client.post("/webhooks/sendgrid/sender", content=tampered, headers=headers)
    assert answer.status_code == 403
    stale = sendgrid_headers(hooks.key, body, NOW - dt.timedelta(days=3))
    assert (
        hooks.client.post("/webhooks/sendgrid/sender", content=body, headers=stale).status_code
        == 403
    )
    assert hooks.client.post("/webhooks/sendgrid/sender", content=body).status_code == 401
    assert hooks.client.post("/webhooks/mailgun/sender", content=body).status_code == 404
    assert hooks.client.post("/webhooks/sendgrid/nobody", content=body).status_code == 404
    # A genuine request of the sender's account, posted on the owner's URL: the owner's key
    # does not verify it.
    assert hooks.post(events, account="owner").status_code == 403
    assert hooks.inbox() == []
    assert hooks.drain().took == 0
    assert hooks.stored() == 0
    assert hooks.suppressed() == {}


def test_events_about_another_accounts_deliveries_are_ignored(hooks: Webhooks) -> None:
    owner_key, owner_public = ec_key()
    hooks.client.app.state.tracker.settings.env["OWNER_SG_HOOK"] = owner_public  # type: ignore[attr-defined]
    events = [hooks.event("bounce", "reader2@mail.example", 1, type="bounce")]
    answer = hooks.post(events, account="owner", key=owner_key)
    assert answer.status_code == 200
    assert answer.json() == {"accepted": 1, "confirmed": False}
    assert hooks.inbox() == [(hooks.hub.owner.id, "sendgrid", 1)]
    done = hooks.drain()
    assert (done.rows, done.new, done.foreign) == (1, 0, 1)
    assert hooks.inbox() == []
    assert hooks.stored() == 0
    assert hooks.suppressed() == {}


def test_soft_bounces_on_three_distinct_days_suppress_and_a_delivery_resets_them(
    hooks: Webhooks,
) -> None:
    email = "reader5@mail.example"
    day = dt.timedelta(days=1)
    start = NOW - 6 * day

    def soft(n: int, at: dt.datetime) -> dict[str, Any]:
        return hooks.event("bounce", email, n, at, type="blocked", reason="554 try later")

    hooks.deliver([soft(1, start), soft(2, start + dt.timedelta(hours=1)), soft(3, start + day)])
    assert hooks.suppressed() == {}  # two days (two bounces on the first)
    hooks.deliver([hooks.event("delivered", email, 4, start + 1.5 * day)])
    hooks.deliver([soft(5, start + 2 * day), soft(6, start + 3 * day)])
    hooks.deliver([soft(5, start + 2 * day), soft(6, start + 3 * day)])  # duplicates count once
    assert hooks.suppressed() == {}  # two days since the delivery
    hooks.deliver([soft(7, start + 4 * day)])
    assert hooks.suppressed() == {email: SuppressionReason.BOUNCED}


def test_a_late_delivery_between_soft_bounces_lifts_their_suppression(hooks: Webhooks) -> None:
    lifted, kept = "reader5@mail.example", "reader6@mail.example"
    day = dt.timedelta(days=1)
    start = NOW - 6 * day
    n = iter(range(100))

    def soft(email: str, at: dt.datetime) -> dict[str, Any]:
        return hooks.event("bounce", email, next(n), at, type="blocked", reason="554 try later")

    for email in (lifted, kept):
        hooks.deliver([soft(email, start), soft(email, start + day), soft(email, start + 2 * day)])
    hooks.deliver([hooks.event("unsubscribe", kept, next(n), start + 2.5 * day)])
    assert hooks.suppressed() == {lifted: SuppressionReason.BOUNCED, kept: "unsubscribed"}
    # Each address's delivery on the second day arrives last: it came in between.
    hooks.deliver([hooks.event("delivered", e, next(n), start + 1.5 * day) for e in (lifted, kept)])
    assert hooks.suppressed() == {kept: SuppressionReason.UNSUBSCRIBED}
    statuses = dict(
        hooks.session.execute(
            select(Subscriber.email, Subscriber.status).where(
                Subscriber.list_id == hooks.hub.lists[0].id, Subscriber.email == lifted
            )
        ).all()
    )
    assert statuses == {lifted: "subscribed"}


def test_an_event_after_a_rejection_accepts_the_delivery_it_failed(hooks: Webhooks) -> None:
    email = "reader6@mail.example"
    row = hooks.session.get(Delivery, hooks.deliveries[email])
    assert row is not None
    row.status = DeliveryStatus.UNKNOWN
    hooks.session.commit()
    hooks.deliver([hooks.event("dropped", email, 1, reason="Spam Content")])
    hooks.session.expire_all()
    assert hooks.session.get(Delivery, row.id).status == DeliveryStatus.FAILED  # type: ignore[union-attr]
    hooks.deliver([hooks.event("delivered", email, 2)])  # as if both had come in one request
    hooks.session.expire_all()
    assert hooks.session.get(Delivery, row.id).status == DeliveryStatus.ACCEPTED  # type: ignore[union-attr]


def test_soft_bounces_drained_together_count_as_if_drained_one_by_one(hooks: Webhooks) -> None:
    email = "reader5@mail.example"
    day = dt.timedelta(days=1)
    start = NOW - 6 * day
    for n in range(3):  # three requests, one inbox row each, one drain for all
        answer = hooks.post([hooks.event("bounce", email, n, start + n * day, type="blocked")])
        assert answer.status_code == 200
    assert hooks.suppressed() == {}
    done = hooks.drain()
    assert (done.rows, done.new, done.suppressed) == (3, 3, 1)
    assert hooks.suppressed() == {email: SuppressionReason.BOUNCED}


def test_an_unknown_delivery_is_resolved_by_its_webhook(hooks: Webhooks) -> None:
    ids = [hooks.deliveries["reader6@mail.example"], hooks.deliveries["reader7@mail.example"]]
    for delivery_id in ids:
        row = hooks.session.get(Delivery, delivery_id)
        assert row is not None
        row.status = DeliveryStatus.UNKNOWN
    hooks.session.commit()
    hooks.deliver(
        [
            hooks.event("delivered", "reader6@mail.example", 1),
            hooks.event("dropped", "reader7@mail.example", 2, reason="Invalid"),
        ]
    )
    hooks.session.expire_all()
    statuses = [hooks.session.get(Delivery, d).status for d in ids]  # type: ignore[union-attr]
    assert statuses == [DeliveryStatus.ACCEPTED, DeliveryStatus.FAILED]


def test_a_replayed_mailgun_request_is_refused(hooks: Webhooks) -> None:
    _account(
        hooks.session,
        "sender",
        {
            "kind": "mailgun",
            "domain": "mg.sender.example",
            "api_key_env": "MG_API",
            "webhook_signing_key_env": "MG_HOOK",
        },
    )
    key = secrets.token_hex(16)
    hooks.client.app.state.tracker.settings.env["MG_HOOK"] = key  # type: ignore[attr-defined]
    data = {
        "event": "failed",
        "severity": "permanent",
        "id": "abc",
        "timestamp": unix(NOW),
        "recipient": "reader8@mail.example",
        "user-variables": {"jv_delivery": str(hooks.deliveries["reader8@mail.example"])},
        "delivery-status": {"code": 550, "message": "no such user"},
    }
    body = mailgun_body(key, data, secrets.token_hex(25), NOW)
    first = hooks.client.post("/webhooks/mailgun/sender", content=body)
    assert first.status_code == 200
    assert first.json() == {"accepted": 1, "confirmed": False}
    # Refused while the first is still in the inbox: the token is committed with it.
    assert hooks.client.post("/webhooks/mailgun/sender", content=body).status_code == 406
    assert hooks.inbox() == [(hooks.hub.sender.id, "mailgun", 1)]
    assert hooks.drain().new == 1
    assert hooks.client.post("/webhooks/mailgun/sender", content=body).status_code == 406
    assert hooks.inbox() == []
    assert hooks.stored() == 1
    assert hooks.suppressed() == {"reader8@mail.example": SuppressionReason.BOUNCED}


def test_ses_through_sns_confirms_its_subscription_and_stores_bounces(
    db_url: str, hooks: Webhooks
) -> None:
    topic = "arn:aws:sns:eu-west-1:123456789012:jv-sender"
    _account(
        hooks.session, "sender", {"kind": "ses", "region": "eu-west-1", "sns_topic_arn": topic}
    )
    signer = SnsSigner.create()
    ses.clear_certificate_cache()  # another test's signer used the same certificate URL
    fetched: list[str] = []
    confirmed: list[str] = []

    def fetch(url: str) -> bytes:
        fetched.append(url)
        return signer.pem

    sns = SnsPolicy(fetch=fetch, confirm=confirmed.append)
    stamp = NOW.strftime("%Y-%m-%dT%H:%M:%S.000Z")
    subscribe_url = (
        "https://sns.eu-west-1.amazonaws.com/?Action=ConfirmSubscription"
        f"&TopicArn={topic}&Token=abc"
    )
    with TestClient(create_app(Settings(db_url, sns=sns))) as client:
        confirm = signer.sign(
            {
                "Type": "SubscriptionConfirmation",
                "MessageId": "m-0",
                "Token": "abc",
                "TopicArn": topic,
                "Message": "You have chosen to subscribe",
                "SubscribeURL": subscribe_url,
                "Timestamp": stamp,
            }
        )
        answer = client.post("/webhooks/ses/sender", content=orjson.dumps(confirm))
        assert answer.status_code == 200, answer.text
        assert answer.json()["confirmed"] is True
        assert confirmed == [subscribe_url]
        email = "reader9@mail.example"
        ses_event = {
            "eventType": "Bounce",
            "bounce": {
                "bounceType": "Permanent",
                "bounceSubType": "General",
                "bouncedRecipients": [{"emailAddress": email}],
                "timestamp": stamp,
                "feedbackId": "f-1",
            },
            "mail": {
                "timestamp": stamp,
                "messageId": "ses-1",
                "destination": [email],
                "tags": {"jv_delivery": [str(hooks.deliveries[email])]},
            },
        }
        note = signer.sign(
            {
                "Type": "Notification",
                "MessageId": "m-1",
                "TopicArn": topic,
                "Message": orjson.dumps(ses_event).decode(),
                "Timestamp": stamp,
            }
        )
        for _ in range(2):  # SNS retries with the same MessageId: stored once
            assert (
                client.post("/webhooks/ses/sender", content=orjson.dumps(note)).status_code == 200
            )
        other_topic = signer.sign(note | {"TopicArn": topic + "-other"})
        assert (
            client.post("/webhooks/ses/sender", content=orjson.dumps(other_topic)).status_code
            == 403
        )
    # This server drains its own inbox, in the background and once more as it stops.
    assert hooks.inbox() == []
    assert fetched
    assert all(u.startswith("https://sns.eu-west-1.amazonaws.com/") for u in fetched)
    assert hooks.stored() == 1
    assert hooks.suppressed() == {email: SuppressionReason.BOUNCED}


def test_postmark_needs_its_basic_auth(db_url: str, hooks: Webhooks) -> None:
    _account(
        hooks.session,
        "sender",
        {
            "kind": "postmark",
            "server_token_env": "PM",
            "webhook_username": "jv",
            "webhook_password_env": "PM_HOOK",
        },
    )
    env = {"PM_HOOK": "old-secret,new-secret"}
    email = "reader10@mail.example"
    record = {
        "RecordType": "SpamComplaint",
        "ID": 42,
        "Type": "SpamComplaint",
        "Email": email,
        "MessageID": "pm-1",
        "BouncedAt": NOW.isoformat(),
        "Metadata": {"jv_delivery": str(hooks.deliveries[email])},
    }
    body = orjson.dumps(record)
    with TestClient(create_app(Settings(db_url, env=env))) as client:
        url = "/webhooks/postmark/sender"
        assert client.post(url, content=body).status_code == 401
        assert client.post(url, content=body, headers=basic_auth("jv", "wrong")).status_code == 401
        assert hooks.stored() == 0
        assert (
            client.post(url, content=body, headers=basic_auth("jv", "old-secret")).status_code
            == 200
        )
        assert (
            client.post(url, content=body, headers=basic_auth("jv", "new-secret")).status_code
            == 200
        )
    assert hooks.inbox() == []  # drained by this server, which stopped
    assert hooks.stored() == 1
    assert hooks.suppressed() == {email: SuppressionReason.COMPLAINED}
