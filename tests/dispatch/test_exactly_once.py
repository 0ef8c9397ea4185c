"""Exactly-once under failures: Redis losing its queue, provider storms, a provider that hangs.

Each test runs a 3,000-reader mailing on PostgreSQL with two real `dramatiq` worker processes
(tests/dispatch/fault_worker.py: production's boot, sending through SendGrid's API) at a local
fake SendGrid server that validates every request and records each recipient it accepted. The
test enqueues ticks (what `jvmail tick` does from cron) until no delivery is pending, claimed or
sending. Then: every delivery is final, and the fake took each recipient at most once: exactly
once for the accepted ones, and the recipients it took are the accepted deliveries (plus, when
the provider's answer never came, the ones left ``unknown``, which are never resent).
"""

from __future__ import annotations

import datetime as dt
import io
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest
import redis
from dramatiq.brokers.stub import StubBroker
from sqlalchemy import func, insert, select, update
from sqlalchemy.orm import Session

from jvmail.broker import make_broker
from jvmail.db import make_engine, make_sessionmaker, upgrade
from jvmail.db.models import (
    Delivery,
    DeliveryStatus,
    EventType,
    Mailing,
    MailingStatus,
    Partner,
    Subscriber,
    TrackingEvent,
)
from jvmail.dispatch.actors import QUEUE, Actors, Runtime, declare
from jvmail.dispatch.pipeline import LEASE, dispatch, send_batch
from jvmail.providers.base import (
    Capabilities,
    OutboundBatch,
    Provider,
    ProviderError,
    Recipient,
    Result,
)
from jvmail.tracking.store import store_events
from jvmail.tracking.webhooks.sendgrid import SendGridKeys, parse
from tests.conftest import REDIS_URL, unavailable
from tests.dispatch.conftest import WHEN, Hub, build_hub
from tests.providers.fakes import Fake, Scripted, sendgrid_handler, serve
from tests.tracking.signing import ec_key, sendgrid_headers

READERS = 3_000
KEY = "SG.exactly-once"
ROOT = Path(__file__).resolve().parents[2]
UNFINISHED = (DeliveryStatus.PENDING, DeliveryStatus.CLAIMED, DeliveryStatus.SENDING)
DEADLINE = 150.0  # seconds for a mailing to settle; a few times what it takes on a busy laptop

# Atomically: how many messages wait in the namespace's queue, unfetched by any worker; then
# every key of the namespace goes (queue, messages, acks, delayed retries, pace bookings): for
# this hub, Redis restarted empty. (Not FLUSHDB: other tests may share the database.)
_DROP_NAMESPACE = """
local queued = redis.call('LLEN', ARGV[1] .. ':' .. ARGV[2])
for _, key in ipairs(redis.call('KEYS', ARGV[1] .. ':*')) do redis.call('DEL', key) end
return queued
"""


@pytest.fixture
def redis_client() -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(REDIS_URL)
    try:
        client.ping()
    except redis.RedisError as exc:
        unavailable("Redis", exc)
    yield client
    client.close()


def _with_workers(test: Callable[..., None]) -> Callable[..., None]:
    """The marks of a test that runs worker processes on PostgreSQL and Redis."""
    for mark in (pytest.mark.slow, pytest.mark.postgres, pytest.mark.redis):
        test = mark(test)
    return test


@dataclass
class World:
    session: Session
    hub: Hub
    pg_url: str


@pytest.fixture
def world(pg_url: str) -> Iterator[World]:
    engine = make_engine(pg_url)
    upgrade(engine)
    with make_sessionmaker(engine)() as session:
        hub = build_hub(session)
        session.execute(
            insert(Subscriber),
            [
                {"list_id": hub.lists[0].id, "email": f"bulk{n}@mail.example", "attributes": {}}
                for n in range(READERS - 25)
            ],
        )
        session.commit()
        yield World(session, hub, pg_url)
    engine.dispose()


def _sendgrid_account(world: World, **limits: float) -> None:
    """The sender's account is a SendGrid one, with these limits (max_per_second, ...)."""
    account = {"kind": "sendgrid", "api_key_env": "JV_SENDGRID_KEY", **limits}
    world.session.execute(
        update(Partner)
        .where(Partner.id == world.hub.sender.id)
        .values(provider_kind="sendgrid", provider=account)
    )
    world.session.commit()


@dataclass
class Recorder:
    """The fake SendGrid server, and when each request reached it with how many recipients."""

    fake: Fake
    arrivals: list[tuple[float, int]] = field(default_factory=list)

    def wrap(
        self, handle: Callable[[BaseHTTPRequestHandler], None]
    ) -> Callable[[BaseHTTPRequestHandler], None]:
        def timed(h: BaseHTTPRequestHandler) -> None:
            at = time.monotonic()
            raw = h.rfile.read(int(h.headers.get("Content-Length", "0")))
            people = len(json.loads(raw).get("personalizations", []))
            self.arrivals.append((at, people))
            h.rfile = io.BytesIO(raw)  # the fake reads the body again
            handle(h)

        return timed


@contextmanager
def fake_sendgrid(script: list[Scripted] | None = None) -> Iterator[Recorder]:
    recorder = Recorder(Fake(script=list(script or [])))
    with serve(recorder.wrap(sendgrid_handler(recorder.fake, KEY)), recorder.fake):
        yield recorder


@dataclass
class Run:
    actors: Actors
    namespace: str
    workers: list[subprocess.Popen[bytes]]


@contextmanager
def workers(
    world: World, client: redis.Redis, fake: Fake, *, lease: float, **env: str
) -> Iterator[Run]:
    """Two worker processes on a Redis namespace of their own, and a broker to enqueue ticks."""
    namespace = f"jvmail-test-{uuid.uuid4().hex[:8]}"
    environ = os.environ | {
        "JVMAIL_DATABASE_URL": world.pg_url,
        "JVMAIL_REDIS_URL": REDIS_URL,
        "JVMAIL_REDIS_NAMESPACE": namespace,
        "JVMAIL_LEASE_SECONDS": str(lease),
        "JVMAIL_TEST_SENDGRID_API": fake.url,
        "JVMAIL_TEST_SENDGRID_KEY": KEY,
        **env,
    }
    environ.pop("JVMAIL_FAULT", None)
    environ.pop("JVMAIL_OUTBOX", None)
    command = [sys.executable, "-m", "dramatiq", "tests.dispatch.fault_worker"]
    command += ["--processes", "1", "--threads", "1", "--queues", QUEUE]
    broker = make_broker(REDIS_URL, namespace=namespace)
    actors = declare(
        broker, Runtime(world.pg_url, lambda _: pytest.fail("this process only enqueues"))
    )
    # Each in a process group of its own: killing dramatiq's main process alone would leave its
    # worker process running on (and holding the test's output open).
    procs = [
        subprocess.Popen(
            command,
            env=environ,
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        for _ in range(2)
    ]
    try:
        yield Run(actors, namespace, procs)
    finally:
        for proc in procs:
            with suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        broker.close()
        client.eval(_DROP_NAMESPACE, 0, namespace, QUEUE)  # retries still delayed, and the rest


def _counts(session: Session) -> dict[DeliveryStatus, int]:
    session.rollback()  # ends the read transaction: a fresh snapshot (SQLite WAL keeps one)
    rows = session.execute(select(Delivery.status, func.count()).group_by(Delivery.status))
    return dict(rows.all())


def _alive(run: Run) -> None:
    for proc in run.workers:
        if proc.poll() is not None:
            pytest.fail(f"a worker exited ({proc.returncode}): does fault_worker still boot?")


def _until(run: Run, what: str, done: Callable[[], bool], deadline: float) -> None:
    """Wait for ``done`` (polled every tenth of a second), the workers being alive."""
    while time.monotonic() < deadline:
        _alive(run)
        if done():
            return
        time.sleep(0.1)  # waiting for other processes, not ordering a race
    pytest.fail(f"gave up waiting: {what}")


def _until_quiet(world: World, run: Run, deadline: float) -> dict[DeliveryStatus, int]:
    """Tick every half second until no delivery is unfinished; the final counts."""
    counts: dict[DeliveryStatus, int] = {}
    while time.monotonic() < deadline:
        _alive(run)
        run.actors.tick.send(WHEN.isoformat())
        counts = _counts(world.session)
        if counts and not any(counts.get(s) for s in UNFINISHED):
            return counts
        time.sleep(0.5)  # waiting for other processes to finish, not ordering a race
    pytest.fail(f"deliveries still unfinished: {counts}")


def _deliveries(session: Session) -> dict[int, tuple[str, DeliveryStatus]]:
    """Delivery id -> (address, status)."""
    session.rollback()  # ends the read transaction: a fresh snapshot
    rows = session.execute(
        select(Delivery.id, Subscriber.email, Delivery.status).join(
            Subscriber, Subscriber.id == Delivery.subscriber_id
        )
    )
    return {d: (email, status) for d, email, status in rows}


def _check_handed_once(
    world: World, fake: Fake, also: frozenset[DeliveryStatus] = frozenset()
) -> dict[int, tuple[str, DeliveryStatus]]:
    """The fake took each recipient once, and took exactly the accepted deliveries (and those in
    ``also``), each at its own address."""
    rows = _deliveries(world.session)
    assert len(rows) == READERS
    assert not [d for d, (_, status) in rows.items() if status in UNFINISHED]
    handed = Counter((email, int(delivery)) for email, delivery in fake.accepted)
    twice = {k: n for k, n in handed.items() if n > 1}
    assert not twice, f"{len(twice)} recipients handed to the provider more than once"
    wanted = {DeliveryStatus.ACCEPTED, *also}
    expected = {(email, d) for d, (email, status) in rows.items() if status in wanted}
    assert set(handed) == expected
    return rows


@_with_workers
def test_redis_emptied_mid_mailing_the_relay_sends_the_lost_batches_once(
    world: World, redis_client: redis.Redis
) -> None:
    # A paced account (500/s, 100-reader batches) keeps the mailing going for several seconds,
    # so most of its 30 batch messages still wait in Redis when Redis loses them.
    _sendgrid_account(world, max_per_second=500)
    with (
        fake_sendgrid() as sendgrid,
        workers(world, redis_client, sendgrid.fake, lease=10, JVMAIL_TEST_BATCH="100") as run,
    ):
        run.actors.tick.send(WHEN.isoformat())  # dispatches: one jv_send per batch
        _until(
            run,
            "two batches accepted",
            lambda: _counts(world.session).get(DeliveryStatus.ACCEPTED, 0) >= 200,
            time.monotonic() + DEADLINE,
        )
        lost = redis_client.eval(_DROP_NAMESPACE, 0, run.namespace, QUEUE)
        assert isinstance(lost, int)
        assert lost > 0, "every batch message had been fetched: nothing was lost"
        counts = _until_quiet(world, run, time.monotonic() + DEADLINE)
    assert counts == {DeliveryStatus.ACCEPTED: READERS}
    _check_handed_once(world, sendgrid.fake)


def _pace_breaches(
    arrivals: list[tuple[float, int]], per_second: float, batch: int, slack: float
) -> list[tuple[float, int, int]]:
    """Windows of requests carrying more recipients than the account's pace allows.

    The limiter books each batch's recipients (``batch`` at most) back to back at ``per_second``
    before its request goes: requests reaching the fake between t0 and t1 were booked between
    t0 - ``slack`` (the longest a request takes from its booked time to the fake) and t1, so
    they carry at most per_second * (t1 - t0 + slack) + batch recipients. Breaches:
    (window length, recipients, allowed)."""
    ordered = sorted(arrivals)
    breaches = []
    for i, (start, _) in enumerate(ordered):
        carried = 0
        for at, people in ordered[i:]:
            carried += people
            allowed = per_second * (at - start + slack) + batch
            if carried > allowed:
                breaches.append((round(at - start, 3), carried, round(allowed)))
    return breaches


@_with_workers
def test_503_then_429_storms_every_recipient_accepted_once_at_the_accounts_pace(
    world: World, redis_client: redis.Redis
) -> None:
    pace, batch, refusals = 400, 200, 4
    storm = [Scripted(503, body={"errors": [{"message": "service unavailable"}]})] * refusals
    storm += [
        Scripted(429, {"Retry-After": "1"}, {"errors": [{"message": "too many requests"}]})
    ] * refusals
    _sendgrid_account(world, max_per_second=pace)
    with (
        fake_sendgrid(storm) as sendgrid,
        workers(world, redis_client, sendgrid.fake, lease=10, JVMAIL_TEST_BATCH=str(batch)) as run,
    ):
        counts = _until_quiet(world, run, time.monotonic() + DEADLINE)
    assert counts == {DeliveryStatus.ACCEPTED: READERS}
    _check_handed_once(world, sendgrid.fake)
    # The storms struck (every scripted refusal was answered), and each request is accounted
    # for: refused as a whole (its recipients sent later), or accepted.
    assert sendgrid.fake.script == []
    assert len(sendgrid.arrivals) == 2 * refusals + len(sendgrid.fake.bodies)
    # Never faster than the account's max_per_second, refused requests included (slack: a
    # request may reach the fake up to 2.5 s after its booked time on a busy machine).
    assert _pace_breaches(sendgrid.arrivals, pace, batch, slack=2.5) == []


@_with_workers
def test_provider_that_takes_a_batch_then_hangs_leaves_it_unknown_never_resent(
    world: World, redis_client: redis.Redis
) -> None:
    # The first request is taken, but answered only after the client's 3 s read timeout.
    hang = Scripted(202, {"X-Message-Id": "sg-late"}, hang=6.0)
    _sendgrid_account(world)
    with (
        fake_sendgrid([hang]) as sendgrid,
        workers(
            world,
            redis_client,
            sendgrid.fake,
            lease=8,
            JVMAIL_TEST_BATCH="500",
            JVMAIL_TEST_SENDGRID_TIMEOUT="3",
        ) as run,
    ):
        counts = _until_quiet(world, run, time.monotonic() + DEADLINE)
        _until(  # the hung request is recorded once its (late) answer is written
            run,
            "the fake recorded every request",
            lambda: len(sendgrid.fake.accepted) >= READERS,
            time.monotonic() + DEADLINE,
        )
    assert counts == {DeliveryStatus.ACCEPTED: READERS - 500, DeliveryStatus.UNKNOWN: 500}
    rows = _check_handed_once(world, sendgrid.fake, also=frozenset({DeliveryStatus.UNKNOWN}))
    unknown = {d for d, (_, status) in rows.items() if status is DeliveryStatus.UNKNOWN}
    taken = [
        {int(p["custom_args"]["jv_delivery"]) for p in b["personalizations"]}
        for b in sendgrid.fake.bodies
    ]
    assert unknown in taken  # exactly the batch of the request whose answer never came

    # SendGrid reports them delivered, in a signed event webhook: they settle accepted.
    private, public = ec_key()
    now = dt.datetime.now(dt.UTC)
    body = json.dumps(
        [
            {
                "email": rows[d][0],
                "timestamp": int(now.timestamp()),
                "event": "delivered",
                "sg_event_id": f"delivered-{d}",
                "sg_message_id": "sg-late.filter0001",
                "jv_delivery": str(d),
                "jv_mailing": str(world.hub.mailing.id),
            }
            for d in sorted(unknown)
        ]
    ).encode()
    events = parse(sendgrid_headers(private, body, now), body, SendGridKeys((public,)), now)
    stored = store_events(world.session, events, sender_id=world.hub.sender.id, soft_bounce_days=3)
    world.session.commit()
    assert (stored.new, stored.foreign) == (500, 0)
    assert _counts(world.session) == {DeliveryStatus.ACCEPTED: READERS}
    _check_handed_once(world, sendgrid.fake)


class _TakesThenHangs(Provider):
    """A provider whose every request times out after sending: its recipients are in doubt."""

    name = "hangs"
    capabilities = Capabilities(max_batch=1000, substitution=True, metadata=True)

    def _send(self, batch: OutboundBatch, recipients: Sequence[Recipient]) -> list[Result]:
        raise ProviderError(
            "hangs: no answer within 3 s after sending",
            "the provider may have taken these messages",
            transient=True,
            maybe_sent=True,
        )


def test_a_mailing_whose_last_batch_ended_in_doubt_is_sent_once_it_settles(
    session: Session, hub: Hub, db_url: str
) -> None:
    # What the hang test above runs into when the hung batch is the last one to finish: its
    # rows are still `sending` when the mailing's last batch ends; the tick that settles them
    # finishes the mailing.
    (bounds,) = dispatch(session, hub.mailing.id, 1000)
    report = send_batch(session, _TakesThenHangs(), hub.mailing.id, bounds)
    assert (report.claimed, report.retry) == (25, False)
    later = dt.datetime.now(dt.UTC) + LEASE + dt.timedelta(minutes=1)
    runtime = Runtime(db_url, lambda _: _TakesThenHangs(), now=lambda: later)
    try:
        declare(StubBroker(), runtime).tick.fn(None)  # the lease is over: unknown
        assert _counts(session) == {DeliveryStatus.UNKNOWN: 25}
        for d in session.scalars(select(Delivery.id)):
            session.add(
                TrackingEvent(
                    delivery_id=d,
                    type=EventType.DELIVERED,
                    provider="sendgrid",
                    provider_event_id=f"e{d}",
                    occurred_at=later,
                    raw={},
                )
            )
        session.commit()
        declare(StubBroker(), runtime).tick.fn(None)  # the provider's events settle them
    finally:
        runtime.close()
    assert _counts(session) == {DeliveryStatus.ACCEPTED: 25}
    mailing = session.get(Mailing, hub.mailing.id)
    assert mailing is not None
    assert mailing.status == MailingStatus.SENT
