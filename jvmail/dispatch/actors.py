"""The dramatiq actors of the send pipeline. Messages carry ids and batch bounds, never bodies.

* ``jv_tick(until=None, only=None)`` (the periodic job): store the events left in the webhook
  inbox (:func:`~jvmail.tracking.inbox.drain`: a server that stopped before storing what it
  accepted), mark in-flight rows past their lease ``unknown`` and settle the unknown ones the
  provider has reported on (:mod:`jvmail.dispatch.reconcile`), dispatch what is due (by
  ``until``, an ISO time, or now; of the mailings ``only``, when given), and relay
  (:mod:`jvmail.dispatch.relay`): re-enqueue the batches that still have rows to send of queued
  mailings that show no progress for ``relay_after`` (their messages were lost: Redis restarted
  empty, or the in-process broker went with its process), at most once per ``relay_after``, and
  not while the sender's account is held (its batches wait out the hold in the broker). A
  relayed batch that someone else is sending finds nothing to claim and returns at once, so
  relaying twice is harmless, if wasteful.
* ``jv_dispatch(mailing_id)``: materialize the mailing's deliveries, commit, then enqueue one
  ``jv_send`` per batch.
* ``jv_send(mailing_id, lo, hi)``: :func:`~jvmail.dispatch.pipeline.send_batch`. When the
  provider refused a request for a passing reason (429, 5xx), the rows went back to pending;
  the actor raises :class:`TryLater` so dramatiq retries the batch with backoff, or after
  the wait the provider or the account's limits named. A batch that lost its database
  connection is retried with backoff too (its claimed rows stay leased: never sent twice).

Actors are declared on a broker by :func:`declare`, with a :class:`Runtime` that says where the
database is and which provider sends: the same code runs in `jvmail run` (in-process broker,
one worker thread pool) and in `jvmail worker` processes on Redis.
"""

from __future__ import annotations

import datetime as dt
import gc
from collections.abc import Callable
from dataclasses import dataclass, field

import dramatiq
from sqlalchemy import Engine
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from jvmail.db import make_engine, make_sessionmaker
from jvmail.dispatch.deliveries import close_batches, expire
from jvmail.dispatch.guard import SendGuard
from jvmail.dispatch.limits import Limiter, MemoryLimiter, account_key
from jvmail.dispatch.outbox import PARTS
from jvmail.dispatch.pipeline import (
    LEASE,
    dispatch,
    due_mailings,
    fail_mailing,
    finish_settled,
    pause_mailing,
    send_batch,
)
from jvmail.dispatch.reconcile import reconcile
from jvmail.dispatch.relay import relay, stalled
from jvmail.providers.base import Provider, ProviderError
from jvmail.tracking.inbox import drain

__all__ = ["Actors", "Runtime", "TryLater", "declare", "settle_heap"]

QUEUE = "jvmail"
BATCH = 1000
RELAY_AFTER = dt.timedelta(minutes=2)


def settle_heap() -> None:
    """For a worker process, once its modules are loaded: what exists by now (modules, the
    schema, the broker: some 100,000 objects) lives as long as the process, so the collector's
    full passes leave it out, and it collects young objects ten times less often. A batch
    makes some 15,000 short-lived containers (a dict or two per recipient); each pass of the
    old generation otherwise walked everything, a sixth of a worker's time."""
    gc.freeze()
    gc.set_threshold(7000, 10, 10)


class TryLater(dramatiq.Retry):
    """The provider asked us to wait: dramatiq retries the batch later, after the provider's
    Retry-After when it gave one (``delay``, milliseconds), else with backoff."""


@dataclass
class Runtime:
    """Where the database is, and the provider for a mailing (by its id)."""

    database_url: str
    provider: Callable[[int], Provider]
    now: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC)
    lease: dt.timedelta = LEASE  # how long a claimed batch is a worker's alone
    limiter: Limiter = field(default_factory=MemoryLimiter)  # the accounts' pace, quota, holds
    guard: SendGuard | None = None  # who was handed over, outside the database (Redis)
    relay_after: dt.timedelta = RELAY_AFTER  # a queued mailing this still is re-enqueued
    batch: int = BATCH  # deliveries per batch message
    parts: int = PARTS  # connections a large mailing's deliveries are made on at once
    _engine: Engine | None = field(default=None, repr=False)
    _maker: sessionmaker[Session] | None = field(default=None, repr=False)

    def sessions(self) -> sessionmaker[Session]:
        if self._maker is None:
            self._engine = make_engine(self.database_url)
            self._maker = make_sessionmaker(self._engine)
        return self._maker

    def session(self) -> Session:
        return self.sessions()()

    def close(self) -> None:
        if self._engine is not None:
            self._engine.dispose()
            self._engine, self._maker = None, None


@dataclass(frozen=True)
class Actors:
    # (until, only), ``only`` given by `jvmail run` alone: a tick from the scheduler is one
    # argument, which a worker of any version takes.
    tick: dramatiq.Actor[..., None]
    dispatch: dramatiq.Actor[[int], None]
    send: dramatiq.Actor[[int, int, int], None]


def declare(broker: dramatiq.Broker, runtime: Runtime) -> Actors:
    """Declare the pipeline's actors on ``broker``."""

    def jv_send(mailing_id: int, lo: int, hi: int) -> None:
        with runtime.session() as session:
            try:
                provider = runtime.provider(mailing_id)
            except ProviderError as exc:
                why = f"{exc.message} (fix: {exc.fix})"
                (pause_mailing if exc.auth else fail_mailing)(session, mailing_id, why)
                session.commit()
                return
            report = send_batch(
                session,
                provider,
                mailing_id,
                (lo, hi),
                limit=runtime.batch,
                lease=runtime.lease,
                limiter=runtime.limiter,
                guard=runtime.guard,
            )
            if report.error and report.retry:
                wait = report.retry_after
                raise TryLater(report.error, None if wait is None else int(wait * 1000))

    def jv_dispatch(mailing_id: int) -> None:
        with runtime.session() as session:
            bounds = dispatch(session, mailing_id, runtime.batch, runtime.parts)
        for lo, hi in bounds:
            send.send(mailing_id, lo, hi)

    def jv_tick(until: str | None = None, only: list[int] | None = None) -> None:
        now = runtime.now()
        drain(runtime.sessions())  # events a server took and could not store yet settle too
        with runtime.session() as session:
            expire(session, now)
            reconcile(session, now)
            finish_settled(session)
            session.commit()
            close_batches(session)
            due = due_mailings(session, dt.datetime.fromisoformat(until) if until else now)
            if only is not None:
                wanted = set(only)
                due = [m for m in due if m in wanted]
            relayed = relay(session, _lost(session, runtime, now), now, runtime.batch)
            session.commit()
        for mailing_id in due:
            dispatch_.send(mailing_id)
        for mailing_id, lo, hi in relayed:
            send.send(mailing_id, lo, hi)

    send = dramatiq.actor(
        actor_name="jv_send",
        broker=broker,
        queue_name=QUEUE,
        min_backoff=1_000,
        max_backoff=300_000,
        retry_when=_worth_retrying,
    )(jv_send)
    dispatch_ = dramatiq.actor(
        actor_name="jv_dispatch", broker=broker, queue_name=QUEUE, max_retries=3
    )(jv_dispatch)
    tick = dramatiq.actor(actor_name="jv_tick", broker=broker, queue_name=QUEUE, max_retries=0)(
        jv_tick
    )
    return Actors(tick, dispatch_, send)


def _worth_retrying(retries: int, exc: Exception) -> bool:
    """A refusal for now, or the database lost mid-batch (a connection reset, a failover, a
    lock wait given up): the batch is tried again with backoff. Safe whatever step failed: rows
    claimed before the failure stay under their lease, so the retry cannot send them again."""
    passing = isinstance(exc, TryLater | OperationalError | InterfaceError)
    return passing and retries < 20


def _lost(session: Session, runtime: Runtime, now: dt.datetime) -> list[int]:
    """Stalled mailings whose sender's account is not held: their messages were lost."""
    moment = now.timestamp()
    return [
        mailing_id
        for mailing_id, sender_id in stalled(session, now, now - runtime.relay_after)
        if runtime.limiter.held_until(account_key(sender_id), moment) is None
    ]
