"""A flood from one client: about 1,000 requests a second for a few seconds at the clicks, the
unsubscribe page and its one-click POST, and SendGrid's webhook (forged), against a real
`jvmail serve` with its default limits, while the provider posts signed webhooks from another
address (127.0.0.2: Linux routes all of 127.0.0.0/8 to loopback).

Checked once the server has stopped (writing what it buffered and draining its inbox): the
flooder got 429s on every path; every click it was answered a redirect for is stored and none
of the others; exactly the readers whose one-click POST was answered 200 are suppressed; every
signed webhook was answered 2xx and each of its events stored exactly once; no forged one
wrote anything."""

from __future__ import annotations

import datetime as dt
import http.client
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import orjson
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from sqlalchemy import func, select

from jvmail.db import make_engine, make_sessionmaker, upgrade
from jvmail.db.models import (
    Delivery,
    EventType,
    Partner,
    Subscriber,
    Suppression,
    TrackingEvent,
    WebhookInbox,
)
from jvmail.dispatch.pipeline import dispatch, send_batch
from jvmail.providers.outbox import OutboxProvider
from jvmail.tracking.links import Keyring
from jvmail.tracking.throttle import Limits
from tests.dispatch.conftest import build_hub
from tests.tracking.serving import serving
from tests.tracking.signing import ec_key, sendgrid_headers

KEYS = Keyring.from_hex(["ab" * 32])  # the link key of tests.dispatch.conftest's hub
BROWSER = {"user-agent": "Mozilla/5.0 (X11; Linux x86_64; rv:130.0) Gecko/20100101 Firefox/130"}
ONE_CLICK = BROWSER | {"content-type": "application/x-www-form-urlencoded"}
FLOOD_SECONDS = 4.0
PER_PATH = 340  # requests a second at each of the three paths: about 1,000 in all
SIGNED_EVERY = 0.1  # seconds between the provider's signed requests
EVENTS = 4  # per signed request
Request = tuple[str, str, str, bytes, dict[str, str]]  # tag, method, path, body, headers


@dataclass
class Hub:
    url: str
    mailing: int
    deliveries: dict[int, str]  # delivery id -> the reader's address


def _sent_hub(url: str, folder: Path) -> Hub:
    """The fault suite's database with a sent mailing of 25 readers, the sender's SendGrid
    account verifying webhooks with the key in SENDER_SG_HOOK."""
    engine = make_engine(url)
    upgrade(engine)
    with make_sessionmaker(engine)() as session:
        hub = build_hub(session)
        for bounds in dispatch(session, hub.mailing.id, batch_size=100):
            send_batch(session, OutboxProvider(folder), hub.mailing.id, bounds)
        sender = session.scalars(select(Partner).where(Partner.slug == "sender")).one()
        sender.provider_kind = "sendgrid"
        sender.provider = {"kind": "sendgrid", "webhook_public_key_env": "SENDER_SG_HOOK"}
        session.commit()
        rows = session.execute(
            select(Delivery.id, Subscriber.email)
            .join(Subscriber, Subscriber.id == Delivery.subscriber_id)
            .where(Delivery.mailing_id == hub.mailing.id)
        )
        deliveries: dict[int, str] = dict(rows.all())
        mailing = hub.mailing.id
    engine.dispose()
    return Hub(url, mailing, deliveries)


@dataclass
class Client:
    """Keep-alive requests from one local address, each one's status kept with its tag."""

    base: str
    source: str
    answers: list[tuple[str, int]] = field(default_factory=list)
    reconnects: int = 0

    def run(self, requests: Callable[[int], Request], every: float) -> None:
        """Send ``requests(n)`` (tag, method, path, body, headers) every ``every`` seconds
        for the flood's length."""
        host, port = self.base.removeprefix("http://").split(":")
        connection = http.client.HTTPConnection(host, int(port), source_address=(self.source, 0))
        start = time.monotonic()
        n = 0
        while (elapsed := time.monotonic() - start) < FLOOD_SECONDS:
            if n * every > elapsed:
                time.sleep(n * every - elapsed)
            tag, method, path, body, headers = requests(n)
            try:
                connection.request(method, path, body, headers)
                answer = connection.getresponse()
                answer.read()
                self.answers.append((tag, answer.status))
            except (http.client.HTTPException, OSError):
                connection.close()  # the next request opens a new connection
                self.reconnects += 1
            n += 1
        connection.close()

    def counts(self, tag: str) -> Counter[int]:
        return Counter(status for t, status in self.answers if t == tag)


@dataclass
class Traffic:
    """The requests the flooder and the provider send: the n-th of each kind."""

    hub: Hub
    provider_key: ec.EllipticCurvePrivateKey
    forger_key: ec.EllipticCurvePrivateKey
    now: dt.datetime = field(default_factory=lambda: dt.datetime.now(dt.UTC))

    def delivery(self, n: int) -> int:
        ids = sorted(self.hub.deliveries)
        return ids[n % len(ids)]

    def click(self, n: int) -> Request:
        token = KEYS.sign(self.hub.mailing, self.delivery(n), 1)
        return "click", "GET", f"/c/{token}", b"", BROWSER

    def unsubscribe(self, n: int) -> Request:
        """The page nine times in ten, then the one-click POST (tagged with its delivery)."""
        delivery = self.delivery(n // 10)
        path = f"/u/{KEYS.sign(self.hub.mailing, delivery, 0)}"
        if n % 10:
            return "page", "GET", path, b"", BROWSER
        return f"post:{delivery}", "POST", path, b"List-Unsubscribe=One-Click", ONE_CLICK

    def forged(self, n: int) -> Request:
        body = self.events(n, "forged")
        headers = sendgrid_headers(self.forger_key, body, self.now)
        return "forged", "POST", "/webhooks/sendgrid/sender", body, headers

    def signed(self, n: int) -> Request:
        body = self.events(n, "signed")
        headers = sendgrid_headers(self.provider_key, body, self.now)
        return "signed", "POST", "/webhooks/sendgrid/sender", body, headers

    def events(self, n: int, kind: str) -> bytes:
        stamp = int(self.now.timestamp())
        return orjson.dumps(
            [
                {
                    "event": "open",
                    "email": "reader@mail.example",
                    "timestamp": stamp,
                    "sg_event_id": f"{kind}-{n}-{k}",
                    "jv_delivery": str(self.delivery(n * EVENTS + k)),
                }
                for k in range(EVENTS)
            ]
        )


def _flood(base: str, traffic: Traffic) -> tuple[list[Client], Client, float]:
    """The flooder's three clients on 127.0.0.1 (clicks, unsubscribes, forged webhooks) and the
    provider's on 127.0.0.2, all at once: (flooder, provider, seconds taken)."""
    flooder = [Client(base, "127.0.0.1") for _ in range(3)]
    provider = Client(base, "127.0.0.2")
    plan = [
        (flooder[0], traffic.click, 1 / PER_PATH),
        (flooder[1], traffic.unsubscribe, 1 / PER_PATH),
        (flooder[2], traffic.forged, 1 / PER_PATH),
        (provider, traffic.signed, SIGNED_EVERY),
    ]
    threads = [threading.Thread(target=c.run, args=(r, every)) for c, r, every in plan]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return flooder, provider, time.monotonic() - started


@dataclass
class Stored:
    clicks: int
    sendgrid: tuple[int, int]  # events, distinct event ids
    suppressed: set[str]
    waiting: int  # inbox rows


def _stored(url: str) -> Stored:
    engine = make_engine(url)
    with make_sessionmaker(engine)() as session:
        clicks = session.scalar(select(func.count()).where(TrackingEvent.type == EventType.CLICKED))
        events, distinct = session.execute(
            select(func.count(), func.count(TrackingEvent.provider_event_id.distinct())).where(
                TrackingEvent.provider == "sendgrid"
            )
        ).one()
        suppressed = set(session.scalars(select(Suppression.email)))
        waiting = session.scalar(select(func.count()).select_from(WebhookInbox))
    engine.dispose()
    return Stored(clicks or 0, (events, distinct), suppressed, waiting or 0)


@pytest.mark.slow
@pytest.mark.postgres
@pytest.mark.quick
def test_a_flood_from_one_client_is_slowed_while_signed_webhooks_get_through(
    pg_url: str, tmp_path: Path
) -> None:
    hub = _sent_hub(pg_url, tmp_path / "outbox")
    provider_key, public = ec_key()
    traffic = Traffic(hub, provider_key, ec_key()[0])
    limits = Limits()  # the defaults, whatever this environment sets
    with serving(pg_url, {"SENDER_SG_HOOK": public} | limits.env()) as (base, output):
        (clicks, unsub, forgeries), provider, took = _flood(base, traffic)
    assert output[-1] in ("exit 0", "exit -15"), output
    sent = sum(len(c.answers) + c.reconnects for c in (clicks, unsub, forgeries))
    posts = [(int(t[5:]), s) for t, s in unsub.answers if t.startswith("post:")]
    print(
        f"\nflood: {sent:,} requests in {took:.1f} s ({sent / took:,.0f}/s) from 127.0.0.1: "
        f"clicks {dict(clicks.counts('click'))}, unsubscribe pages {dict(unsub.counts('page'))}, "
        f"one-click POSTs {dict(Counter(s for _, s in posts))}, forged webhooks "
        f"{dict(forgeries.counts('forged'))}; signed webhooks from 127.0.0.2: "
        f"{dict(provider.counts('signed'))}"
    )
    # Slowed on every path: nothing beyond the burst and the refill, all the rest 429.
    redirects = clicks.counts("click")[302]
    assert clicks.counts("click")[429] > 0
    assert redirects <= limits.clicks.burst + limits.clicks.per_second * took
    assert unsub.counts("page")[429] > 0
    assert {s for _, s in posts} == {200, 429}
    assert set(forgeries.counts("forged")) == {403, 429}
    # The provider was never refused.
    assert set(provider.counts("signed")) == {200}
    assert provider.reconnects == 0

    stored = _stored(pg_url)
    assert stored.clicks == redirects  # the 429s recorded nothing
    assert stored.suppressed == {hub.deliveries[d] for d, s in posts if s == 200}
    signed = len(provider.answers) * EVENTS
    assert stored.sendgrid == (signed, signed)  # each event once, none of the forged ones
    assert stored.waiting == 0
