"""Faults on the tracking side, each against a real `jvmail serve` (:mod:`tests.faults.serving`):
webhooks duplicated and retried after a forced 500, events out of order, forged and replayed
webhooks, tampered click tokens. The invariants: I3 events conserved (every event answered 2xx
stored exactly once, and those answered with an error once after the provider's retries), and
I4 isolation (nothing about partner A names partner B's canary subscribers)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest
import requests
from sqlalchemy import Engine, select, text, update

from jvmail.db.models import Delivery, DeliveryStatus, EventType, TrackingEvent
from jvmail.tracking.credit import measured_values
from jvmail.tracking.links import Keyring
from jvmail.tracking.store import recipient_hash
from tests.faults.harness import until
from tests.faults.serving import (
    CERT_URL,
    KEYS,
    Server,
    TrackingHub,
    click_token,
    mailgun_request,
    mailing_links,
    postmark_request,
    sendgrid_event,
    sendgrid_request,
    server_backends,
    serving,
    ses_notification,
    tracking_hub,
)
from tests.tracking.signing import SnsSigner, basic_auth

STORED_AS = {  # SendGrid's event names, and the event types they are stored as
    "delivered": "delivered",
    "open": "opened",
    "click": "clicked",
    "bounce": "bounced",
    "deferred": "deferred",
    "dropped": "rejected",
    "spamreport": "complained",
    "unsubscribe": "unsubscribed",
}
DRAINED = 60.0  # seconds for the server to drain what it answered; generous for a busy machine


def _scenario(*marks: pytest.MarkDecorator) -> Callable[[Callable[..., None]], Callable[..., None]]:
    def mark(test: Callable[..., None]) -> Callable[..., None]:
        for m in (pytest.mark.slow, pytest.mark.postgres, *marks):
            test = m(test)
        return test

    return mark


@pytest.fixture
def hub(pg_url: str, tmp_path: Path) -> Iterator[TrackingHub]:
    with tracking_hub(pg_url, tmp_path) as hub:
        yield hub


@pytest.fixture
def server(hub: TrackingHub, pg_url: str, tmp_path: Path) -> Iterator[Server]:
    with serving(hub, pg_url, tmp_path) as server:
        yield server


def _drained(hub: TrackingHub) -> None:
    until("the server drained its webhook inbox", lambda: hub.inbox() == 0, DRAINED)


def _once(hub: TrackingHub, expected: set[tuple[str, str, str, str]]) -> None:
    """I3: the stored events are exactly ``expected`` (provider, event id, type, recipient
    hash), each once."""
    stored = [(p, e, t, h) for p, e, t, h, _ in hub.stored()]
    assert len(stored) == len(set(stored)), "I3: an event stored twice"
    assert set(stored) == expected, "I3: stored events differ from those answered"


def _isolated(hub: TrackingHub, server: Server) -> None:
    """I4: no line of the server's log names one of partner B's canary subscribers (every
    request of these scenarios is about partner A's account or mailing)."""
    lines = server.lines()
    assert not [line for line in lines if any(c in line for c in hub.b.canaries)], "I4: log"


def _key(provider: str, event_id: str, kind: str, email: str) -> tuple[str, str, str, str]:
    return provider, event_id, kind, recipient_hash(email)


def _terminate_waiting(admin: Engine, server: Server, table: str) -> None:
    """Terminate the server's connection once it waits on a lock to insert into ``table``."""
    statement = f"INSERT INTO {table}".upper()

    def waiting() -> list[int]:
        return [
            pid
            for pid, wait, query in server_backends(admin, server.app_name)
            if wait == "Lock" and query.lstrip().upper().startswith(statement)
        ]

    until(f"the server's insert into {table} waiting on the lock", lambda: bool(waiting()), 30)
    with admin.connect() as conn:
        for pid in waiting():
            conn.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})


@contextmanager
def _locked(hub: TrackingHub, table: str) -> Iterator[None]:
    """A test transaction holding ``table`` locked until the block ends."""
    with hub.engine.connect() as conn:
        conn.execute(text(f"LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE"))
        try:
            yield
        finally:
            conn.rollback()


# -- 12. duplicates and retries -------------------------------------------------------------------


@_scenario(pytest.mark.quick)
def test_a_webhook_three_times_at_once_and_retried_after_a_500_and_a_timeout(
    hub: TrackingHub, server: Server, pg_admin: Engine
) -> None:
    a = hub.a
    now = dt.datetime.now(dt.UTC)
    readers = sorted(a.deliveries)
    url = f"/webhooks/sendgrid/{a.slug}"
    kinds = ["delivered", "open", "click", "delivered", "bounce", "spamreport"]
    expected: set[tuple[str, str, str, str]] = set()

    def batch(first: int, count: int) -> tuple[bytes, dict[str, str]]:
        events = []
        for n in range(first, first + count):
            kind, email = kinds[n % len(kinds)], readers[n]
            events.append(sendgrid_event(a, kind, email, n, now))
            expected.add(_key("sendgrid", f"{a.slug}-ev-{n}", STORED_AS[kind], email))
        return sendgrid_request(a.sendgrid, events)

    # The same signed request three times at once: all answered 200, stored once.
    body, headers = batch(0, 8)
    with ThreadPoolExecutor(3) as pool:
        answers = list(pool.map(lambda _: server.post(url, body, headers), range(3)))
    assert [r.status_code for r in answers] == [200] * 3
    assert all(r.json() == {"accepted": 8, "confirmed": False} for r in answers)

    # A 500: the database drops the server's connection while its inbox insert waits on a lock.
    body, headers = batch(8, 6)
    with ThreadPoolExecutor(1) as pool, _locked(hub, "webhook_inbox"):
        answer: Future[requests.Response] = pool.submit(server.post, url, body, headers)
        _terminate_waiting(pg_admin, server, "webhook_inbox")
        assert answer.result(timeout=60).status_code == 500
    retried = server.post(url, body, headers)  # the provider retries
    assert retried.status_code == 200, retried.text

    # A timeout: the answer is too late for the provider, which retries; the server committed
    # the first request once the lock was gone.
    body, headers = batch(14, 6)
    with ThreadPoolExecutor(1) as pool, _locked(hub, "webhook_inbox"):
        late = pool.submit(server.post, url, body, headers, 1.0)
        with pytest.raises(requests.Timeout):
            late.result(timeout=60)
    assert server.post(url, body, headers).status_code == 200

    # The drain's connection terminated while it stores a request's events: its step is rolled
    # back, and a later one stores them, once.
    _drained(hub)
    body, headers = batch(20, 4)
    with _locked(hub, "tracking_event"):
        assert server.post(url, body, headers).status_code == 200
        _terminate_waiting(pg_admin, server, "tracking_event")

    _drained(hub)
    _once(hub, expected)
    _isolated(hub, server)


@_scenario()
def test_a_mailgun_webhook_retried_after_a_500_is_not_refused_as_a_replay(
    hub: TrackingHub, server: Server, pg_admin: Engine
) -> None:
    a = hub.a
    hub.account(a, "mailgun")
    email = sorted(a.deliveries)[0]
    body = mailgun_request(a, "failed", email, "t" * 50, severity="permanent")
    url = f"/webhooks/mailgun/{a.slug}"
    with ThreadPoolExecutor(1) as pool, _locked(hub, "webhook_inbox"):
        answer = pool.submit(server.post, url, body)
        _terminate_waiting(pg_admin, server, "webhook_inbox")
        assert answer.result(timeout=60).status_code == 500
    # Its token was rolled back with its events: the retry is taken, a replay after it is not.
    assert server.post(url, body).status_code == 200
    assert server.post(url, body).status_code == 406
    _drained(hub)
    _once(hub, {_key("mailgun", "t" * 50, "bounced", email)})
    assert hub.suppressed() == {(a.id, email): "bounced"}


# -- 14. forged and replayed webhooks -------------------------------------------------------------


def _refused(
    hub: TrackingHub, server: Server, kind: str, body: bytes, headers: dict[str, str] | None
) -> requests.Response:
    """Post on partner A's URL for ``kind``; its answer must be a 4xx naming none of partner
    B's subscribers (I4)."""
    answer = server.post(f"/webhooks/{kind}/{hub.a.slug}", body, headers)
    assert 400 <= answer.status_code < 500, (kind, answer.status_code, answer.text)
    assert answer.status_code != 429, "throttled: the refusals' budget is too small to test"
    assert not [c for c in hub.b.canaries if c in answer.text], "I4: B's reader in A's answer"
    return answer


@_scenario(pytest.mark.quick)
def test_forged_stale_replayed_and_misdirected_webhooks_of_every_provider_write_nothing(
    hub: TrackingHub, server: Server
) -> None:
    a, b = hub.a, hub.b
    now = dt.datetime.now(dt.UTC)
    a_reader, b_reader = sorted(a.deliveries)[0], b.canaries[0]
    # What each forgery carries: A's deliveries (their ids and message ids) and B's canaries.
    b_events = [sendgrid_event(b, "bounce", c, n, now) for n, c in enumerate(b.canaries)]
    a_events = [sendgrid_event(a, "bounce", a_reader, 100, now, type="bounce")]
    a_ids = {k: a_events[0][k] for k in ("jv_delivery", "sg_message_id")}
    mixed = [e | a_ids for e in b_events] + a_events
    a_tag = {"jv_delivery": str(a.deliveries[a_reader])}

    # SendGrid: B's key on A's URL, a tampered body, stale and future timestamps, no signature.
    body, headers = sendgrid_request(b.sendgrid, mixed)
    _refused(hub, server, "sendgrid", body, headers)
    body, headers = sendgrid_request(a.sendgrid, a_events)
    _refused(hub, server, "sendgrid", body.replace(b"bounce", b"spamreport"), headers)
    for skew in (dt.timedelta(hours=-26), dt.timedelta(hours=26)):
        _refused(hub, server, "sendgrid", *sendgrid_request(a.sendgrid, a_events, now + skew))
    _refused(hub, server, "sendgrid", body, None)

    # Mailgun: B's key, a stale signature, a tampered signature; a replayed token (its event
    # swapped for another), once the genuine request was taken.
    hub.account(a, "mailgun")
    forged = mailgun_request(b, "complained", b_reader, "b" * 50, **{"user-variables": a_tag})
    _refused(hub, server, "mailgun", forged, None)
    stale = dt.datetime.now(dt.UTC) - dt.timedelta(hours=10)
    _refused(
        hub, server, "mailgun", mailgun_request(a, "complained", a_reader, "s" * 50, stale), None
    )
    genuine = mailgun_request(a, "delivered", a_reader, "g" * 50)
    signed = orjson.loads(genuine)["signature"]["signature"]
    _refused(hub, server, "mailgun", genuine.replace(signed.encode(), b"0" * len(signed)), None)
    assert server.post(f"/webhooks/mailgun/{a.slug}", genuine).status_code == 200
    _drained(hub)
    before = (hub.stored(), hub.suppressed())
    assert len(before[0]) == 1
    assert before[1] == {}
    _refused(hub, server, "mailgun", genuine, None)
    _refused(hub, server, "mailgun", genuine.replace(b'"delivered"', b'"complained"'), None)

    # Postmark: B's credentials, a wrong password, none.
    hub.account(a, "postmark")
    body, auth = postmark_request(b, b_reader, 1)
    _refused(hub, server, "postmark", orjson.dumps(orjson.loads(body) | {"Metadata": a_tag}), auth)
    body, auth = postmark_request(a, a_reader, 2)
    _refused(hub, server, "postmark", body, basic_auth(a.slug, b.postmark))
    _refused(hub, server, "postmark", body, None)

    hub.account(a, "ses")
    _forged_sns(hub, server, a_reader, b_reader, a_tag)

    # Nothing written by any of them; and the server's log names none of B's readers.
    assert hub.inbox() == 0
    assert (hub.stored(), hub.suppressed()) == before
    _isolated(hub, server)
    assert not [line for line in server.lines() if "evil.example" in line], "a URL was fetched"


def _forged_sns(
    hub: TrackingHub, server: Server, a_reader: str, b_reader: str, a_tag: dict[str, str]
) -> None:
    """SES through SNS on A's URL: B's topic, another key, a tampered message, a stale one,
    certificate URLs on http or look-alike hosts, and a subscription to confirm elsewhere."""
    a, b, now = hub.a, hub.b, dt.datetime.now(dt.UTC)
    of_b = ses_notification(b, b_reader, 1)
    event = orjson.loads(of_b["Message"])
    event["mail"]["tags"] = {k: [v] for k, v in a_tag.items()}
    of_b["Message"] = orjson.dumps(event).decode()
    _refused(hub, server, "ses", orjson.dumps(hub.sns.sign(of_b, cert_url=CERT_URL)), None)
    note = ses_notification(a, a_reader, 2)
    _refused(
        hub, server, "ses", orjson.dumps(SnsSigner.create().sign(note, cert_url=CERT_URL)), None
    )
    tampered = hub.sns.sign(note, cert_url=CERT_URL)
    tampered["Message"] = tampered["Message"].replace("Permanent", "Transient")
    _refused(hub, server, "ses", orjson.dumps(tampered), None)
    old = ses_notification(a, a_reader, 3, now - dt.timedelta(hours=2))
    _refused(hub, server, "ses", orjson.dumps(hub.sns.sign(old, cert_url=CERT_URL)), None)
    for cert in (
        CERT_URL.replace("https://", "http://"),
        "https://sns.eu-west-1.amazonaws.com.evil.example/SimpleNotificationService-x.pem",
        "https://sns.eu-west-1.amazonaws.com@evil.example/SimpleNotificationService-x.pem",
        "https://evil.example/sns.eu-west-1.amazonaws.com/SimpleNotificationService-x.pem",
        "https://sns.eu-west-1.amazonaws.com:8443/SimpleNotificationService-x.pem",
    ):
        _refused(hub, server, "ses", orjson.dumps(hub.sns.sign(note, cert_url=cert)), None)
    confirm = {
        "Type": "SubscriptionConfirmation",
        "MessageId": "m-c",
        "Token": "t",
        "TopicArn": a.topic,
        "Message": "You have chosen to subscribe",
        "SubscribeURL": "https://evil.example/?Action=ConfirmSubscription",
        "Timestamp": now.strftime("%Y-%m-%dT%H:%M:%S.000Z"),
    }
    _refused(hub, server, "ses", orjson.dumps(hub.sns.sign(confirm, cert_url=CERT_URL)), None)


# -- 16. tampered click tokens ---------------------------------------------------------------------


def _hits(hub: TrackingHub) -> list[tuple[str, int | None, int | None, int | None]]:
    """(type, mailing, delivery, link index) of every click and open stored."""
    hub.session.rollback()
    rows = hub.session.execute(
        select(
            TrackingEvent.type,
            TrackingEvent.mailing_id,
            TrackingEvent.delivery_id,
            TrackingEvent.link_index,
        )
        .where(TrackingEvent.type.in_((EventType.CLICKED, EventType.OPENED)))
        .order_by(TrackingEvent.id)
    )
    return [(str(t), m, d, i) for t, m, d, i in rows]


@_scenario()
def test_tampered_swapped_truncated_and_redirecting_click_tokens(
    hub: TrackingHub, server: Server
) -> None:
    a, b = hub.a, hub.b
    a_links, b_links = mailing_links(hub.session, a.mailing), mailing_links(hub.session, b.mailing)
    assert len(a_links) == 1
    assert len(b_links) == 2
    reader, other = sorted(a.deliveries)[:2]
    a_delivery, b_delivery = a.deliveries[reader], b.deliveries[b.canaries[0]]
    genuine = click_token(a, reader, 1)
    b_genuine = click_token(b, b.canaries[0], 2)
    payload, signature = genuine.split(".")
    stranger = Keyring.from_hex(["cd" * 32])  # a key the hub never had (or retired)
    # A's token with the link index of B's other link: the payload re-encoded, A's signature.
    relinked = stranger.sign(a.mailing, a_delivery, 2).split(".")[0] + "." + signature
    invalid = {
        "truncated": genuine[:-1],
        "half": genuine[: len(genuine) // 2],
        "payload only": payload,
        "signature changed": genuine[:-1] + ("A" if genuine[-1] != "A" else "B"),
        "signatures swapped": payload + "." + b_genuine.split(".")[1],
        "payloads swapped": b_genuine.split(".")[0] + "." + signature,
        "another mailing's link index": relinked,
        "another key": stranger.sign(a.mailing, a_delivery, 1),
        "no such link": KEYS.sign(a.mailing, a_delivery, 2),
        "no such link of B": KEYS.sign(b.mailing, b_delivery, 3),
        "the unsubscribe token": KEYS.sign(a.mailing, a_delivery, 0),
        "no such mailing": KEYS.sign(a.mailing + b.mailing, a_delivery, 1),
        "B's delivery in A's mailing": KEYS.sign(a.mailing, b_delivery, 1),
        "an outside URL": "https:%2F%2Fevil.example%2Foffer",
        "a token then a URL": genuine + "https:%2F%2Fevil.example",
        "a token then @": genuine + "@evil.example",
    }
    for what, token in invalid.items():
        answer = server.get(f"/c/{token}")
        # 404, or a redirect to no other URL than one registered for A's mailing.
        redirect = (answer.status_code, answer.headers.get("location")) == (302, a_links[0])
        assert answer.status_code == 404 or redirect, (what, answer.status_code, answer.headers)
        assert not [c for c in b.canaries if c in answer.text], "I4"
    crossed = (KEYS.sign(a.mailing, b_delivery, 0), invalid["B's delivery in A's mailing"])
    for token in crossed:
        assert server.get(f"/o/{token}.gif").status_code in (200, 404)
        page = server.get(f"/u/{token}")
        assert page.status_code == 404
        assert not [c for c in b.canaries if c in page.text], "I4: B's reader on A's page"
    # The genuine tokens redirect to their own mailing's registered URL, whatever else the
    # request names.
    valid = {
        f"/c/{genuine}": a_links[0],
        f"/c/{genuine}?url=https://evil.example/": a_links[0],
        f"/c/{genuine}?next=%2F%2Fevil.example#https://evil.example": a_links[0],
        f"/c/{b_genuine}": b_links[1],
        f"/c/{click_token(a, other, 1)}": a_links[0],
    }
    for path, url in valid.items():
        answer = server.get(path)
        assert answer.status_code == 302, (path, answer.status_code)
        assert answer.headers["location"] == url
    # Stored once the server wrote its buffer: the genuine clicks, nothing for the others.
    want = [("clicked", a.mailing, a_delivery, 1)] * 3 + [
        ("clicked", b.mailing, b_delivery, 2),
        ("clicked", a.mailing, a.deliveries[other], 1),
    ]
    until("the clicks written", lambda: len(_hits(hub)) >= len(want), DRAINED)
    assert sorted(_hits(hub), key=str) == sorted(want, key=str)
    _isolated(hub, server)


# -- 13. events out of order -----------------------------------------------------------------------


@dataclass(frozen=True)
class Story:
    """What happened to one message, in the order it happened: (SendGrid event, hours after
    the send, fields); ``arrival`` is the order the provider's requests arrive in instead. Its
    outcome whatever the order: the delivery's status, the address's suppression, and whether
    a person clicked (the credit)."""

    events: list[tuple[str, float, dict[str, Any]]]
    arrival: list[int]
    status: str
    suppressed: str | None = None
    clicked: bool = False
    unknown: bool = True  # the send left the delivery unknown (the events settle it)


HARD = {"type": "bounce", "status": "5.1.1"}
SOFT = {"type": "blocked", "status": "4.7.1"}
STORIES = {
    "delivered after bounced": Story(
        [("delivered", 0.1, {}), ("bounce", 0.2, HARD)], [1, 0], "accepted", "bounced"
    ),
    "opened and clicked before delivered": Story(
        [("delivered", 0.1, {}), ("open", 2, {}), ("click", 2.1, {"url": "x"})],
        [2, 1, 0],
        "accepted",
        clicked=True,
    ),
    "a machine's open before delivered": Story(
        [("delivered", 0.1, {}), ("open", 0.2, {"sg_machine_open": True})], [1, 0], "accepted"
    ),
    "rejected, then delivered after all": Story(
        [("dropped", 0.1, {"reason": "Spam Content"}), ("delivered", 0.2, {})],
        [1, 0],
        "accepted",
    ),
    "unsubscribed before delivered": Story(
        [("delivered", 0.1, {}), ("unsubscribe", 3, {})], [1, 0], "accepted", "unsubscribed"
    ),
    "soft bounces with a delivery in between": Story(
        [("bounce", 0, SOFT), ("bounce", 24, SOFT), ("delivered", 36, {}), ("bounce", 48, SOFT)],
        [0, 1, 3, 2],
        "accepted",
        unknown=False,
    ),
    "an unsubscribe after soft bounces, then a late delivery": Story(
        [
            ("bounce", 0, SOFT),
            ("bounce", 24, SOFT),
            ("delivered", 36, {}),
            ("bounce", 48, SOFT),
            ("unsubscribe", 50, {}),
        ],
        [0, 1, 3, 4, 2],
        "accepted",
        "unsubscribed",
        unknown=False,
    ),
    "soft bounces on three days after a delivery": Story(
        [("delivered", 0, {}), ("bounce", 24, SOFT), ("bounce", 48, SOFT), ("bounce", 72, SOFT)],
        [3, 2, 1, 0],
        "accepted",
        "bounced",
        unknown=False,
    ),
}


@_scenario()
def test_events_out_of_order_end_as_the_rules_say(hub: TrackingHub, server: Server) -> None:
    a = hub.a
    sent = dt.datetime.now(dt.UTC) - dt.timedelta(days=5)
    readers = iter(sorted(a.deliveries))
    # Two readers per story: one's events arrive in the order they happened, the other's in
    # the story's arrival order.
    plans: list[tuple[str, str, list[int]]] = []
    for name, story in STORIES.items():
        plans.append((name, next(readers), list(range(len(story.events)))))
        plans.append((name, next(readers), story.arrival))
    hub.session.execute(
        update(Delivery)
        .where(Delivery.id.in_([a.deliveries[r] for n, r, _ in plans if STORIES[n].unknown]))
        .values(status=DeliveryStatus.UNKNOWN)
    )
    hub.session.commit()
    expected: set[tuple[str, str, str, str]] = set()
    counter = iter(range(1000, 10_000))
    for turn in range(max(len(s.events) for s in STORIES.values())):
        events = []
        for name, reader, order in plans:
            if turn < len(order):
                kind, hours, fields = STORIES[name].events[order[turn]]
                n = next(counter)
                at = sent + dt.timedelta(hours=hours)
                events.append(sendgrid_event(a, kind, reader, n, at, **fields))
                expected.add(_key("sendgrid", f"{a.slug}-ev-{n}", STORED_AS[kind], reader))
        answer = server.post(f"/webhooks/sendgrid/{a.slug}", *sendgrid_request(a.sendgrid, events))
        assert answer.status_code == 200, answer.text
        _drained(hub)  # each turn stored before the next one arrives
    _once(hub, expected)
    statuses, suppressed = hub.statuses(), hub.suppressed()
    clicked = {d for kind, _, d, _ in _hits(hub) if kind == "clicked"}
    outcomes = {
        (name, reader): (
            statuses[a.deliveries[reader]],
            suppressed.get((a.id, reader)),
            a.deliveries[reader] in clicked,
        )
        for name, reader, _ in plans
    }
    want = {
        (name, reader): (STORIES[name].status, STORIES[name].suppressed, STORIES[name].clicked)
        for name, reader, _ in plans
    }
    assert outcomes == want
    assert measured_values(hub.session, "clicks", [a.mailing]) == {a.mailing: 2.0}
