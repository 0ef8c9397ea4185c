"""A provider's Retry-After holds the sender's whole account: every batch of it, of every mailing,
in every worker (one limiter shared by threads, or two clients of one Redis namespace).

The batches go through SendGrid's API at the local fake server, which answers the first request
429 with Retry-After and records when each request reached it, by the clock the pipeline books
and waits with: a clock of the test's, so a hold of minutes passes at once and the times are
exact.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest
import redis
from dramatiq.brokers.stub import StubBroker
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from jvmail.db.models import Delivery, Partner
from jvmail.dispatch.actors import Runtime, TryLater, declare
from jvmail.dispatch.control import pause, resume
from jvmail.dispatch.limits import Clock, Limiter, MemoryLimiter, account_key
from jvmail.dispatch.pipeline import MAX_PACE_WAIT, BatchReport, dispatch, send_batch
from jvmail.providers.base import ProviderError
from jvmail.providers.sendgrid import SendGridProvider
from tests.dispatch.conftest import Hub, Limiters, second_mailing
from tests.dispatch.test_pipeline import Recording
from tests.providers.fakes import Fake, Scripted, sendgrid_handler, serve

KEY = "SG.hold"
START = 1_796_115_600.0  # 2026-12-01T09:00:00Z


@dataclass
class StillClock:
    """The time stands still until the pipeline waits; then it moves on by that much."""

    t: float = START
    slept: list[float] = field(default_factory=list)
    meanwhile: Callable[[], None] | None = None  # what other workers do while one waits

    def now(self) -> float:
        return self.t

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        if self.meanwhile is not None:
            self.meanwhile()
        self.t += seconds

    def clock(self) -> Clock:
        return Clock(now=self.now, sleep=self.sleep)


@dataclass
class SendGrid:
    fake: Fake
    provider: SendGridProvider
    arrivals: list[float]  # the test clock's time at each request


@pytest.fixture
def time_() -> StillClock:
    return StillClock()


@pytest.fixture
def sendgrid(time_: StillClock, request: pytest.FixtureRequest) -> Iterator[SendGrid]:
    wait: int | None = request.param  # the first request's Retry-After; None: no refusal
    refusal = Scripted(429, {"Retry-After": str(wait)}, _errors("too many requests"))
    fake = Fake(script=[] if wait is None else [refusal])
    arrivals: list[float] = []
    handle = sendgrid_handler(fake, KEY)

    def timed(h: BaseHTTPRequestHandler) -> None:
        arrivals.append(time_.t)
        handle(h)

    with serve(timed, fake):
        provider = SendGridProvider(KEY, from_addr="team@s.example", from_name="S", api=fake.url)
        yield SendGrid(fake, provider, arrivals)


def _errors(message: str) -> dict[str, object]:
    return {"errors": [{"message": message}]}


def _pending(session: Session) -> int:
    session.expire_all()
    return int(session.scalar(select(func.count()).where(Delivery.status == "pending")) or 0)


Batch = tuple[int, tuple[int, int]]  # (mailing id, bounds)


@dataclass
class Scene:
    """The sender's two mailings cut into batches of 5, its account, the fake SendGrid."""

    session: Session
    first: Batch
    rest: list[Batch]
    sendgrid: SendGrid
    time: StillClock

    def send(self, batch: Batch, limiter: Limiter) -> BatchReport:
        """What a worker does with the batch, booking through ``limiter``."""
        mailing_id, bounds = batch
        return send_batch(
            self.session,
            self.sendgrid.provider,
            mailing_id,
            bounds,
            limiter=limiter,
            clock=self.time.clock(),
        )


@pytest.fixture(params=[{}, {"max_per_second": 1000}], ids=["no-limits", "paced"])
def scene(
    request: pytest.FixtureRequest,
    session: Session,
    hub: Hub,
    sendgrid: SendGrid,
    time_: StillClock,
) -> Scene:
    session.execute(
        update(Partner)
        .where(Partner.id == hub.sender.id)
        .values(provider={"kind": "sendgrid", "api_key_env": "X", **request.param})
    )
    session.commit()
    first, *rest = [(hub.mailing.id, b) for b in dispatch(session, hub.mailing.id, 5)]
    second = second_mailing(session, hub)
    rest += [(second.id, b) for b in dispatch(session, second.id, 5)]
    return Scene(session, first, rest, sendgrid, time_)


@pytest.mark.parametrize("sendgrid", [20], indirect=True)
def test_a_short_retry_after_is_sat_out_by_every_batch_of_the_account(
    scene: Scene, limiters: Limiters
) -> None:
    refused = scene.send(scene.first, limiters.one)
    assert (refused.retry, refused.retry_after, refused.sent) == (True, 20.0, 0)
    assert scene.sendgrid.arrivals == [START]  # answered 429 with Retry-After: 20
    for batch in scene.rest:  # in another worker: it waits for the hold, then sends
        report = scene.send(batch, limiters.other)
        assert (report.error, report.sent) == ("", report.claimed)
    assert scene.time.slept[0] == pytest.approx(20.0)  # the first of them sat the hold out
    assert scene.send(scene.first, limiters.other).sent == 5  # dramatiq's retry

    arrivals = scene.sendgrid.arrivals
    assert len(arrivals) == 1 + len(scene.rest) + 1
    assert min(arrivals[1:]) >= START + 20  # none before the hold ended
    _each_reader_once(scene)


@pytest.mark.parametrize("sendgrid", [120], indirect=True)
def test_a_long_retry_after_gives_every_batch_of_the_account_back_until_it_ends(
    scene: Scene, limiters: Limiters
) -> None:
    assert MAX_PACE_WAIT < 120  # longer than a worker waits for its account: given back
    assert scene.send(scene.first, limiters.one).retry_after == 120.0
    scene.time.t += 30  # other workers take the account's other batches meanwhile
    for batch in scene.rest:
        report = scene.send(batch, limiters.other)
        assert (report.claimed > 0, report.sent, report.retry) == (True, 0, True)
        assert report.retry_after == pytest.approx(90.0)  # dramatiq retries it when the hold ends
        assert "Retry-After" in report.error
    assert scene.sendgrid.arrivals == [START]  # nothing reached the provider during the hold
    assert scene.time.slept == []
    assert _pending(scene.session) == 25 + 6  # given back unsent

    scene.time.t = START + 120  # the retries come due
    for batch in [scene.first, *scene.rest]:
        scene.send(batch, limiters.other)
    assert min(scene.sendgrid.arrivals[1:]) >= START + 120
    _each_reader_once(scene)


@pytest.mark.parametrize("scene", [{"max_per_second": 5}], indirect=True)
@pytest.mark.parametrize("sendgrid", [None], indirect=True)
def test_a_hold_booked_while_a_batch_waits_for_its_pace_gives_it_back(
    scene: Scene, limiters: Limiters, hub: Hub
) -> None:
    assert scene.send(scene.first, limiters.one).sent == 5  # 5 at 5/s: the next waits 1 s
    key = account_key(hub.sender.id)
    scene.time.meanwhile = lambda: limiters.other.hold(key, START + 60, now=scene.time.t)
    report = scene.send(scene.rest[0], limiters.one)
    assert scene.time.slept == [pytest.approx(1.0)]
    assert (report.sent, report.retry, report.retry_after) == (0, True, pytest.approx(59.0))
    assert scene.sendgrid.arrivals == [START]
    assert _pending(scene.session) == 20 + 6


@pytest.mark.parametrize("scene", [{"max_per_second": 5}], indirect=True)
@pytest.mark.parametrize("sendgrid", [None], indirect=True)
def test_a_pause_committed_while_a_batch_waits_for_its_pace_gives_it_back(
    scene: Scene, limiters: Limiters, hub: Hub
) -> None:
    assert scene.send(scene.first, limiters.one).sent == 5  # 5 at 5/s: the next waits 1 s

    def coordinator_pauses() -> None:
        pause(scene.session, [hub.mailing.id], dt.datetime.now(dt.UTC))
        scene.session.commit()

    scene.time.meanwhile = coordinator_pauses
    report = scene.send(scene.rest[0], limiters.one)
    assert scene.time.slept == [pytest.approx(1.0)]
    assert (report.claimed, report.sent, report.error) == (5, 0, "")
    assert scene.sendgrid.arrivals == [START]  # the claimed batch never left
    assert _pending(scene.session) == 20 + 6  # given back unsent: resume sends it

    scene.time.meanwhile = None
    resume(scene.session, [hub.mailing.id], dt.datetime.now(dt.UTC))
    scene.session.commit()
    assert scene.send(scene.rest[0], limiters.one).sent == 5


def _each_reader_once(scene: Scene) -> None:
    assert _pending(scene.session) == 0
    taken = Counter(delivery for _, delivery in scene.sendgrid.fake.accepted)
    assert len(taken) == 25 + 6
    assert set(taken.values()) == {1}


def test_a_worker_given_back_a_held_batch_retries_it_when_the_hold_ends(
    session: Session, hub: Hub, db_url: str, tmp_path: Path
) -> None:
    # What the actor makes of it: TryLater with dramatiq's delay set to the rest of the hold.
    provider = Recording(tmp_path)
    provider.fail = ProviderError("429 Too Many Requests", "wait", transient=True, retry_after=120)
    runtime = Runtime(db_url, lambda _: provider)
    try:
        actors = declare(StubBroker(), runtime)
        first, second = dispatch(session, hub.mailing.id, 15)
        with pytest.raises(TryLater) as refused:
            actors.send.fn(hub.mailing.id, *first)
        provider.fail = None
        before = dt.datetime.now(dt.UTC)
        with pytest.raises(TryLater) as held:
            actors.send.fn(hub.mailing.id, *second)
        took = (dt.datetime.now(dt.UTC) - before).total_seconds()
    finally:
        runtime.close()
    assert refused.value.delay == 120_000
    assert held.value.delay is not None
    assert 120_000 - (took + 1) * 1000 <= held.value.delay <= 120_000
    assert provider.calls == 1  # the second batch never reached the provider
    assert _pending(session) == 25


class HoldLost(MemoryLimiter):
    """Books as the memory limiter does; its Redis went away before the hold could be set."""

    def hold(self, key: str, until: float, *, now: float) -> None:
        raise redis.ConnectionError("Error 111 connecting to 127.0.0.1:6379. Connection refused.")


@pytest.mark.parametrize("sendgrid", [20], indirect=True)
def test_a_hold_that_cannot_be_set_costs_the_hold_not_the_answers(scene: Scene) -> None:
    # SendGrid refused the request (429); the limiter could not record the hold: the rows
    # are still given back, to be sent later, not left in flight to become unknown.
    report = scene.send(scene.first, HoldLost())
    assert report.retry
    assert report.retry_after == 20.0
    assert _pending(scene.session) == 25 + 6
    assert not scene.sendgrid.fake.accepted
