"""`jvmail scheduler`'s jobs driven through a whole week by a fake clock, on SQLite and
PostgreSQL. The scheduler only enqueues: the tick every minute, credit every five, next week's
plan on the planning day, statements on Monday morning (and caught up after downtime), and of
two schedulers only one acts. A worker on the in-process broker carries the jobs out, with the
same results as when the scheduler did the work itself: ticks send what is due, a mailing
missed during downtime is held, next week is planned once, each statement is sent once.
Then the same with Redis and a worker process: the statements job runs there."""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dramatiq
import pytest
import redis
from dramatiq.brokers.stub import StubBroker
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from jvmail import scheduler as scheduler_package
from jvmail.broker import make_broker
from jvmail.db.models import Mailing, MailingStatus, Promotion, StatementSend
from jvmail.dispatch.actors import QUEUE, Runtime, declare
from jvmail.jobs import Enqueue, declare_jobs, plan
from jvmail.periodic import Periodic, statements_due
from jvmail.planner import mailings_in_week
from jvmail.providers.outbox import OutboxProvider
from tests.conftest import REDIS_URL, unavailable
from tests.dispatch.conftest import WHEN, Hub, build_hub, mailing, mailing_list

MONDAY = dt.datetime(2026, 11, 30, tzinfo=dt.UTC)
STEP = dt.timedelta(minutes=15)


@dataclass
class Recorder:
    """What a scheduler enqueued (statements' partners sorted), passed on to the broker."""

    inner: Enqueue
    calls: list[tuple[Any, ...]] = field(default_factory=list)

    def tick(self, now: dt.datetime) -> None:
        self.calls.append(("tick", now))
        self.inner.tick(now)

    def credit(self) -> None:
        self.calls.append(("credit",))
        self.inner.credit()

    def plan(self, monday: dt.date) -> None:
        self.calls.append(("plan", monday))
        self.inner.plan(monday)

    def statements(self, monday: dt.date, slugs: Sequence[str]) -> None:
        self.calls.append(("statements", monday, tuple(sorted(slugs))))
        self.inner.statements(monday, slugs)

    def named(self, name: str) -> list[tuple[Any, ...]]:
        return [c for c in self.calls if c[0] == name]


@dataclass
class Workers:
    """The in-process broker with one worker thread, running the pipeline and the jobs."""

    broker: StubBroker
    enqueue: Enqueue
    runtime: Runtime

    def run_all(self) -> None:
        self.broker.join(QUEUE, fail_fast=True)


@pytest.fixture
def workers(db_url: str, engine: object, tmp_path: Path) -> Iterator[Workers]:
    broker = StubBroker()
    broker.emit_after("process_boot")
    runtime = Runtime(db_url, lambda _: OutboxProvider(tmp_path), now=lambda: MONDAY)
    enqueue = Enqueue(declare(broker, runtime), declare_jobs(broker, runtime, str(tmp_path)))
    worker = dramatiq.Worker(broker, worker_threads=1, worker_timeout=10)
    worker.start()
    try:
        yield Workers(broker, enqueue, runtime)
    finally:
        worker.stop()
        broker.close()
        runtime.close()


def _scheduler(sessions: sessionmaker[Session], holder: str, workers: Workers) -> Periodic:
    return Periodic(
        sessions,
        holder=holder,
        enqueue=Recorder(workers.enqueue),
        lease_ttl=dt.timedelta(minutes=30),
    )


def _run(
    schedulers: list[Periodic], workers: Workers, start: dt.datetime, end: dt.datetime
) -> list[list[str]]:
    """Step the schedulers every STEP from ``start`` to ``end``; after each step the worker
    carries out what was enqueued, at that time."""
    done: list[list[str]] = [[] for _ in schedulers]
    now = start
    while now < end:
        workers.runtime.now = lambda at=now: at  # the workers' clock too
        for n, s in enumerate(schedulers):
            done[n] += s.step(now)
        workers.run_all()
        now += STEP
    return done


def _two_way(session: Session, hub: Hub) -> None:
    """The owner gets a list and the sender a promotion: a swap worth planning."""
    mailing_list(session, hub.owner, "owner-main", [f"o{n}@mail.example" for n in range(25)])
    session.add(
        Promotion(
            slug="sender-offer",
            partner_id=hub.sender.id,
            subject="An offer",
            html="<p>An offer</p>",
            text="An offer",
            landing_urls=["https://sender.example/"],
            window_start=WHEN.date(),
            window_end=WHEN.date() + dt.timedelta(days=14),
            niches=["web"],
            mailings_wanted=2,
            exclude_partners=[],
        )
    )
    session.flush()


def _fresh(session: Session) -> None:
    """End the test's own transaction (a SQLite reader keeps its snapshot) and reload."""
    session.commit()
    session.expire_all()


def _recorded(scheduler: Periodic) -> Recorder:
    assert isinstance(scheduler.enqueue, Recorder)
    return scheduler.enqueue


def test_a_week_driven_by_the_scheduler(session: Session, workers: Workers, tmp_path: Path) -> None:
    hub = build_hub(session)  # its mailing is due Tuesday 09:00 UTC
    _two_way(session, hub)  # so next week's plan has mailings
    wednesday = mailing(session, hub.promotion, hub.lists[1])
    wednesday.scheduled_at = MONDAY + dt.timedelta(days=2, hours=10)
    session.commit()
    sessions = sessionmaker(session.get_bind(), expire_on_commit=False)
    a = _scheduler(sessions, "a", workers)
    b = _scheduler(sessions, "b", workers)

    # Both run until Tuesday 08:00; only "a" acts. On Monday morning it enqueues last week's
    # statements, once: the worker sends them, so the next firings find them settled.
    logs = _run([a, b], workers, MONDAY, MONDAY + dt.timedelta(days=1, hours=8))
    assert any("statements: 2 statement(s) enqueued" in line for line in logs[0])
    assert logs[1] == []
    assert _recorded(b).calls == []
    first = _recorded(a)
    assert first.named("statements") == [("statements", dt.date(2026, 11, 23), ("owner", "sender"))]
    steps = 4 * 32  # every fifteen minutes for 32 hours
    assert len(first.named("tick")) == len(first.named("credit")) == steps  # both fire each step
    assert first.named("plan") == []
    _fresh(session)
    sent = session.execute(select(StatementSend.week, StatementSend.status)).all()
    assert sorted(sent) == [("2026-W48", "sent")] * 2

    # "a" dies; the hub is down until Tuesday 16:00, when "b" takes over once a's lease ended.
    tuesday = MONDAY + dt.timedelta(days=1, hours=16)
    later = _run([b], workers, tuesday, MONDAY + dt.timedelta(days=7, hours=6))[0]
    _fresh(session)
    held = session.get(Mailing, hub.mailing.id)
    assert held is not None
    assert held.status == MailingStatus.PAUSED  # missed by 7 hours: not sent late blindly
    assert "jvmail resume" in (held.error or "")
    assert session.get(Mailing, wednesday.id).status == MailingStatus.SENT  # type: ignore[union-attr]
    assert len(list((tmp_path / str(wednesday.id)).glob("*.eml"))) == 6
    # Thursday 09:00: next week's plan, enqueued once and carried out by the worker.
    next_week = dt.date(2026, 12, 7)
    assert _recorded(b).named("plan") == [("plan", next_week)]
    assert any("plan: plan of the week of 2026-12-07 enqueued" in line for line in later)
    planned = mailings_in_week(session, next_week)
    assert planned > 0
    assert plan(workers.runtime, next_week) == "week of 2026-12-07 already planned"
    assert mailings_in_week(session, next_week) == planned
    assert any(" credit: credit enqueued" in line for line in later)
    # The statements were due Monday 08:00, while the hub was down: caught up at 10:00, once.
    assert session.scalar(select(func.count()).select_from(StatementSend)) == 2  # last week's
    caught = _run(
        [b],
        workers,
        MONDAY + dt.timedelta(days=8, hours=10),
        MONDAY + dt.timedelta(days=8, hours=14),
    )[0]
    assert [line for line in caught if "statements: 2" in line] == [
        "2026-12-08 10:00 statements: 2 statement(s) enqueued"
    ]
    session.commit()
    rows = session.execute(select(StatementSend.week, StatementSend.status)).all()
    assert sorted(rows) == [("2026-W48", "sent")] * 2 + [("2026-W49", "sent")] * 2
    for week in ("2026-W48", "2026-W49"):
        files = sorted(p.name for p in (tmp_path / "statements" / week).glob("*.eml"))
        assert files == ["owner.eml", "sender.eml"]


def test_statements_are_due_in_each_partners_own_morning() -> None:
    partners = [("tokyo", "Asia/Tokyo"), ("paris", "Europe/Paris"), ("nyc", "America/New_York")]
    # Monday 2026-12-07 07:30 UTC: 16:30 in Tokyo, 08:30 in Paris, 02:30 in New York.
    now = dt.datetime(2026, 12, 7, 7, 30, tzinfo=dt.UTC)
    due = statements_due(partners, set(), now, "mon", 8)
    assert due == {dt.date(2026, 11, 30): ["tokyo", "paris"]}
    sent = {("tokyo", "2026-W49")}
    assert statements_due(partners, sent, now, "mon", 8) == {dt.date(2026, 11, 30): ["paris"]}
    sunday_night = dt.datetime(2026, 12, 6, 23, tzinfo=dt.UTC)  # Monday 08:00 in Tokyo
    last = {("nyc", "2026-W48"), ("paris", "2026-W48")}  # sent last Monday
    assert statements_due(partners, last, sunday_night, "mon", 8) == {
        dt.date(2026, 11, 30): ["tokyo"]
    }
    # New York never got last week's (the scheduler was down): it is still due on Sunday.
    assert statements_due(partners, set(), sunday_night, "mon", 8)[dt.date(2026, 11, 23)] == ["nyc"]


def test_a_statement_left_to_retry_is_enqueued_again(
    session: Session, workers: Workers, tmp_path: Path
) -> None:
    hub = build_hub(session)
    session.add(StatementSend(partner_id=hub.owner.id, week="2026-W48", status="retry"))
    session.add(StatementSend(partner_id=hub.sender.id, week="2026-W48", status="unknown"))
    session.commit()
    scheduler = _scheduler(sessionmaker(session.get_bind()), "a", workers)
    start = MONDAY + dt.timedelta(hours=8)
    _run([scheduler], workers, start, start + dt.timedelta(minutes=30))
    # The one left to retry goes again (the same row); the one in doubt is never resent.
    assert _recorded(scheduler).named("statements") == [
        ("statements", dt.date(2026, 11, 23), ("owner",))
    ]
    _fresh(session)
    rows = session.execute(select(StatementSend.partner_id, StatementSend.status)).all()
    assert sorted(rows) == sorted([(hub.owner.id, "sent"), (hub.sender.id, "unknown")])
    assert [p.name for p in (tmp_path / "statements" / "2026-W48").iterdir()] == ["owner.eml"]


def test_two_plan_jobs_at_once_save_one_plan(
    session: Session, workers: Workers, monkeypatch: pytest.MonkeyPatch
) -> None:
    hub = build_hub(session)
    _two_way(session, hub)
    session.commit()
    next_week = dt.date(2026, 12, 7)
    solve = scheduler_package.solve
    others: list[str] = []

    def solve_while_another_job_plans(problem: Any) -> Any:
        if not others:  # the other job starts, solves and saves while this one solves
            others.append("started")
            others.append(plan(workers.runtime, next_week))
        return solve(problem)

    monkeypatch.setattr(scheduler_package, "solve", solve_while_another_job_plans)
    assert plan(workers.runtime, next_week) == "week of 2026-12-07 already planned"
    assert others[1].startswith("week of 2026-12-07 planned: ")
    planned = int(others[1].split(": ")[1].split()[0])
    assert planned > 0
    _fresh(session)
    assert mailings_in_week(session, next_week) == planned


@pytest.fixture
def redis_url() -> str:
    try:
        redis.Redis.from_url(REDIS_URL).ping()
    except redis.RedisError as exc:
        unavailable("Redis", exc)
    return REDIS_URL


def test_the_statements_job_is_carried_out_by_a_worker_process(
    pg_url: str, redis_url: str, tmp_path: Path
) -> None:
    from jvmail.db import make_engine, make_sessionmaker, upgrade

    engine = make_engine(pg_url)
    upgrade(engine)
    sessions = make_sessionmaker(engine)
    with sessions() as session:
        build_hub(session)
    namespace = f"jvmail-test-{uuid.uuid4().hex[:8]}"
    broker = make_broker(redis_url, namespace=namespace)
    runtime = Runtime(pg_url, lambda _: pytest.fail("this process only enqueues"))
    scheduler = Periodic(
        sessions,
        holder="scheduler",
        enqueue=Recorder(Enqueue(declare(broker, runtime), declare_jobs(broker, runtime))),
    )
    start = MONDAY + dt.timedelta(hours=8)  # statements of 2026-W48 are due
    scheduler.step(start)
    assert _recorded(scheduler).named("statements") == [
        ("statements", dt.date(2026, 11, 23), ("owner", "sender"))
    ]
    with sessions() as session:  # enqueued, not done: nothing is sent by the scheduler
        assert session.scalar(select(func.count()).select_from(StatementSend)) == 0
    env = os.environ | {
        "JVMAIL_DATABASE_URL": pg_url,
        "JVMAIL_REDIS_URL": redis_url,
        "JVMAIL_REDIS_NAMESPACE": namespace,
        "JVMAIL_OUTBOX": str(tmp_path),
    }
    command = [sys.executable, "-m", "dramatiq", "jvmail.dispatch.boot"]
    command += ["--processes", "1", "--threads", "2", "--queues", QUEUE]
    proc = subprocess.Popen(
        command,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        broker.join(QUEUE, timeout=90_000)  # the worker process has taken and acked them
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        broker.close()
    with sessions() as session:
        rows = session.execute(select(StatementSend.week, StatementSend.status)).all()
    engine.dispose()
    assert sorted(rows) == [("2026-W48", "sent")] * 2
    files = sorted(p.name for p in (tmp_path / "statements" / "2026-W48").iterdir())
    assert files == ["owner.eml", "sender.eml"]
