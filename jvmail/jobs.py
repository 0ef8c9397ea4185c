"""The hub's periodic jobs as dramatiq actors: `jvmail scheduler` decides when, any worker does
the work (:mod:`jvmail.periodic` enqueues them; the tick is the pipeline's own ``jv_tick``).

* ``jv_credit()``: credit the ledger with what tracking measured, and finalize the mailings
  past the credit window.
* ``jv_plan(monday)``: plan the week starting ``monday`` (ISO date) and save it, unless it
  already has mailings. The solve runs without a lock; the save checks again under it, so two
  plan jobs at once save one plan.
* ``jv_statements(monday, slugs)``: send those partners' statements of that week through the
  hub's own account (:mod:`jvmail.reports.send`: each (partner, week) once, whoever runs it).
  When one was refused for now (429, 5xx), the job is retried after the provider's wait or with
  backoff; the statements already sent are skipped by their claims.

Credit and plan run one at a time across every worker: each holds a database lock while it
writes (a PostgreSQL advisory lock; on SQLite the write lock). Jobs are declared on a broker by
:func:`declare_jobs`, with the pipeline's :class:`~jvmail.dispatch.actors.Runtime` (the database
and the clock); the same code runs on the in-process broker and on Redis.
"""

from __future__ import annotations

import datetime as dt
import logging
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import dramatiq
from sqlalchemy import text
from sqlalchemy.orm import Session

from jvmail.db.models import HubRecord
from jvmail.dispatch.actors import QUEUE, Actors, Runtime, TryLater
from jvmail.providers.base import ProviderError

__all__ = ["Enqueue", "Jobs", "credit", "declare_jobs", "plan", "statements"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Jobs:
    credit: dramatiq.Actor[[], None]
    plan: dramatiq.Actor[[str], None]
    statements: dramatiq.Actor[[str, list[str]], None]


@dataclass(frozen=True)
class Enqueue:
    """What the scheduler enqueues: the pipeline's tick and the jobs, as messages on their
    broker (:class:`jvmail.periodic.Enqueuer`)."""

    actors: Actors
    jobs: Jobs

    def tick(self, now: dt.datetime) -> None:
        self.actors.tick.send(None)  # the worker's own clock decides what is due

    def credit(self) -> None:
        self.jobs.credit.send()

    def plan(self, monday: dt.date) -> None:
        self.jobs.plan.send(monday.isoformat())

    def statements(self, monday: dt.date, slugs: Sequence[str]) -> None:
        self.jobs.statements.send(monday.isoformat(), list(slugs))


def _locked(runtime: Runtime, name: str) -> Session:
    """A session whose transaction holds the lock ``name`` until it ends: PostgreSQL's advisory
    lock on a key made from the name, or SQLite's write lock (others wait, then go on)."""
    session = runtime.session()
    conn = session.connection(execution_options={"sqlite_begin": "BEGIN IMMEDIATE"})
    if conn.dialect.name == "postgresql":
        key = zlib.crc32(f"jvmail:{name}".encode())
        conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": key})
    return session


def credit(runtime: Runtime) -> str:
    """Credit what tracking measured; finalize what is past the credit window."""
    from jvmail.ledger.book import finalize_due
    from jvmail.tracking.credit import credit_measured
    from jvmail.tracking.inbox import drain

    drain(runtime.sessions())  # what the servers accepted and have not stored yet counts too
    with _locked(runtime, "credit") as session:
        hub = session.get(HubRecord, 1)
        if hub is None:
            return "no hub synced yet"
        credited = credit_measured(session)
        final = finalize_due(session, runtime.now(), hub.credit_window_days)
        session.commit()
    return f"{credited} credited, {final} finalized"


def plan(runtime: Runtime, monday: dt.date) -> str:
    """Plan and save the week starting ``monday`` unless it has mailings already."""
    from jvmail.planner import build_problem, mailings_in_week, save_plan
    from jvmail.scheduler import solve

    with runtime.session() as session:
        if mailings_in_week(session, monday):
            return f"week of {monday} already planned"
        problem = build_problem(session, monday)
    chosen = solve(problem)
    with _locked(runtime, "plan") as session:
        if mailings_in_week(session, monday):  # another plan job saved it meanwhile
            return f"week of {monday} already planned"
        saved = save_plan(session, problem, chosen)
        session.commit()
    return f"week of {monday} planned: {len(saved.mailings)} mailing(s)"


def statements(runtime: Runtime, monday: dt.date, slugs: Sequence[str], outbox: Path | None) -> str:
    """Send those partners' statements of the week through the hub's account.

    Raises:
        ProviderError: the hub's account cannot be built (a secret is not set), or it refused
            its credentials: the statements not sent wait for the next run.
        TryLater: a statement was refused for now; the job is worth running again.
    """
    from jvmail.reports.send import hub_provider, send_statements

    with runtime.session() as session:
        hub = session.get(HubRecord, 1)
        if hub is None:
            return "no hub synced yet"
        provider = hub_provider(hub, outbox=outbox)
        done = send_statements(session, monday, slugs, provider, now=runtime.now())
    if done.stopped is not None:
        raise done.stopped
    if done.retry:
        wait = done.retry_after
        raise TryLater(done.summary(), None if wait is None else int(wait * 1000))
    return done.summary()


def declare_jobs(broker: dramatiq.Broker, runtime: Runtime, outbox: str | None = None) -> Jobs:
    """Declare the jobs on ``broker``; ``outbox`` (a folder) sends the statements there instead
    of through the hub's account, as ``JVMAIL_OUTBOX`` does for the mailings."""
    folder = Path(outbox) if outbox else None

    def jv_credit() -> None:
        logger.info("credit: %s", credit(runtime))

    def jv_plan(monday: str) -> None:
        logger.info("plan: %s", plan(runtime, dt.date.fromisoformat(monday)))

    def jv_statements(monday: str, slugs: list[str]) -> None:
        try:
            done = statements(runtime, dt.date.fromisoformat(monday), slugs, folder)
        except ProviderError as exc:  # not worth a retry now: the next run tries again
            logger.error("statements of the week of %s: %s (fix: %s)", monday, exc.message, exc.fix)
            return
        logger.info("statements of the week of %s: %s", monday, done)

    return Jobs(
        dramatiq.actor(actor_name="jv_credit", broker=broker, queue_name=QUEUE, max_retries=0)(
            jv_credit
        ),
        dramatiq.actor(
            actor_name="jv_plan",
            broker=broker,
            queue_name=QUEUE,
            max_retries=3,
            min_backoff=60_000,
        )(jv_plan),
        dramatiq.actor(
            actor_name="jv_statements",
            broker=broker,
            queue_name=QUEUE,
            min_backoff=60_000,
            max_backoff=900_000,
            retry_when=_worth_retrying,
        )(jv_statements),
    )


def _worth_retrying(retries: int, exc: BaseException) -> bool:
    return isinstance(exc, TryLater) and retries < 5
