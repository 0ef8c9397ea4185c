"""`jvmail scheduler`'s jobs driven through a whole week by a fake clock, on SQLite and
PostgreSQL: ticks send what is due, a mailing missed during downtime is held, next week is
planned on the planning day, statements go out once on Monday morning (and are caught up after
downtime), and of two schedulers only one acts."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from jvmail.db.models import Mailing, MailingStatus, StatementSend
from jvmail.dispatch.pipeline import dispatch, due_mailings, send_batch
from jvmail.periodic import Periodic, statements_due
from jvmail.providers.outbox import OutboxProvider
from jvmail.reports.send import OutboxCourier, send_statements
from tests.dispatch.conftest import build_hub, mailing

MONDAY = dt.datetime(2026, 11, 30, tzinfo=dt.UTC)
STEP = dt.timedelta(minutes=10)


def _scheduler(sessions: sessionmaker[Session], holder: str, outbox: Path) -> Periodic:
    def tick(now: dt.datetime) -> None:  # what the workers do with a tick
        with sessions() as session:
            for mailing_id in due_mailings(session, now):
                for bounds in dispatch(session, mailing_id, batch_size=100):
                    send_batch(session, OutboxProvider(outbox), mailing_id, bounds)

    courier = OutboxCourier(outbox)
    return Periodic(
        sessions,
        holder=holder,
        enqueue_tick=tick,
        send_statements=lambda s, monday, slugs: send_statements(s, monday, slugs, courier),
        lease_ttl=dt.timedelta(minutes=30),
    )


def _run(schedulers: list[Periodic], start: dt.datetime, end: dt.datetime) -> list[list[str]]:
    done: list[list[str]] = [[] for _ in schedulers]
    now = start
    while now < end:
        for n, s in enumerate(schedulers):
            done[n] += s.step(now)
        now += STEP
    return done


def test_a_week_driven_by_the_scheduler(session: Session, engine: object, tmp_path: Path) -> None:
    hub = build_hub(session)  # its mailing is due Tuesday 09:00 UTC
    wednesday = mailing(session, hub.promotion, hub.lists[1])
    wednesday.scheduled_at = MONDAY + dt.timedelta(days=2, hours=10)
    session.commit()
    sessions = sessionmaker(session.get_bind(), expire_on_commit=False)
    a = _scheduler(sessions, "a", tmp_path)
    b = _scheduler(sessions, "b", tmp_path)

    # Both run until Tuesday 08:00; only "a" acts. On Monday morning it sends last week's
    # statements.
    logs = _run([a, b], MONDAY, MONDAY + dt.timedelta(days=1, hours=8))
    assert any("statements: 2 statement(s) sent" in line for line in logs[0])
    assert logs[1] == []
    # "a" dies; the hub is down until Tuesday 16:00, when "b" takes over once a's lease ended.
    tuesday = MONDAY + dt.timedelta(days=1, hours=16)
    later = _run([b], tuesday, MONDAY + dt.timedelta(days=7, hours=6))[0]
    session.expire_all()
    held = session.get(Mailing, hub.mailing.id)
    assert held is not None
    assert held.status == MailingStatus.PAUSED  # missed by 7 hours: not sent late blindly
    assert "jvmail resume" in (held.error or "")
    assert session.get(Mailing, wednesday.id).status == MailingStatus.SENT  # type: ignore[union-attr]
    assert len(list((tmp_path / str(wednesday.id)).glob("*.eml"))) == 6
    assert any("plan: week of 2026-12-07 planned" in line for line in later)
    assert any(" credit: " in line for line in later)
    # The statements were due Monday 08:00, while the hub was down: caught up at 10:00, once.
    assert session.scalar(select(func.count()).select_from(StatementSend)) == 2  # last week's
    caught = _run(
        [b], MONDAY + dt.timedelta(days=8, hours=10), MONDAY + dt.timedelta(days=8, hours=14)
    )[0]
    assert any("statements: 2 statement(s) sent" in line for line in caught)
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
