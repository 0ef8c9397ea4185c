"""The hub's clock: what `jvmail scheduler` does, and when.

One long-lived process fires APScheduler cron triggers:

- every minute, ``tick``: mailings more than ``missed_grace_hours`` past their send time (the
  hub was down) are held, paused with the reason, for `jvmail resume`, never sent blindly; then
  one tick is enqueued for the workers (dispatch what is due, relay lost batches, settle
  unknown deliveries);
- every five minutes, ``credit``: the ledger is credited with what tracking measured, and
  mailings past the credit window are finalized;
- on ``plan_day`` at ``plan_hour`` (hub time), ``plan``: next week is planned and saved, unless
  it already has mailings;
- every fifteen minutes, ``statements``: each partner whose local time has reached
  ``report_day`` at ``report_hour`` gets last week's statement, once. A scheduler that was down
  catches up at its next run (the latest week; older ones stay unsent).

Exactly one scheduler acts at a time, even if several are started: each step first takes or
renews a lease row in the database (``scheduler_lease``), which another process can take only
once it has expired. Missed firings are coalesced: a trigger that fired several times while the
process was stopped runs once. The clock is passed in, so tests drive a whole week in minutes.
"""

from __future__ import annotations

import datetime as dt
import zoneinfo
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from apscheduler.triggers.cron import CronTrigger
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from jvmail.db.engine import insert_or_skip
from jvmail.db.models import (
    HubRecord,
    Mailing,
    MailingStatus,
    Partner,
    SchedulerLease,
    StatementSend,
)
from jvmail.dispatch.deliveries import SENDABLE
from jvmail.ledger.book import finalize_due
from jvmail.planner import build_problem, mailings_in_week, save_plan
from jvmail.scheduler import solve
from jvmail.tracking.credit import credit_measured

__all__ = ["LEASE_TTL", "Periodic", "hold_missed", "statements_due", "take_lease"]

LEASE = "scheduler"
LEASE_TTL = dt.timedelta(seconds=90)
DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")

# (session, week's Monday, partner slugs) -> how many statements were sent
SendStatements = Callable[[Session, dt.date, Sequence[str]], int]


def take_lease(
    session: Session, holder: str, now: dt.datetime, ttl: dt.timedelta = LEASE_TTL
) -> bool:
    """Take or renew the scheduler lease for ``holder``; False while another holds it."""
    session.execute(
        insert_or_skip(session, SchedulerLease)
        .values(name=LEASE, holder=holder, expires_at=now + ttl)
        .on_conflict_do_nothing(index_elements=["name"])
    )
    taken = session.connection().execute(
        update(SchedulerLease)
        .where(
            SchedulerLease.name == LEASE,
            (SchedulerLease.holder == holder) | (SchedulerLease.expires_at < now),
        )
        .values(holder=holder, expires_at=now + ttl)
        .execution_options(preserve_rowcount=True)
    )
    session.commit()
    return bool(taken.rowcount)


def hold_missed(session: Session, now: dt.datetime, grace: dt.timedelta) -> list[int]:
    """Pause sendable mailings more than ``grace`` late, saying why; their ids."""
    late = list(
        session.scalars(
            select(Mailing.id).where(
                Mailing.status.in_(SENDABLE), Mailing.scheduled_at < now - grace
            )
        )
    )
    if late:
        session.execute(
            update(Mailing)
            .where(Mailing.id.in_(late), Mailing.status.in_(SENDABLE))
            .values(
                status=MailingStatus.PAUSED,
                updated_at=now,
                error=(
                    f"missed its send time by more than {grace.total_seconds() / 3600:g} hours "
                    "(the hub was down): held, not sent late blindly; `jvmail resume` it to "
                    "send now, or `jvmail cancel` it"
                ),
            )
        )
    session.commit()
    return late


def _monday(day: dt.date) -> dt.date:
    return day - dt.timedelta(days=day.weekday())


def statements_due(
    partners: Sequence[tuple[str, str]],
    sent: set[tuple[str, str]],
    now: dt.datetime,
    report_day: str,
    report_hour: int,
) -> dict[dt.date, list[str]]:
    """Week's Monday -> the partners (slug, timezone) whose statement of last week is due now
    and not yet sent (``sent`` holds (slug, ISO week) pairs)."""
    due: dict[dt.date, list[str]] = {}
    for slug, timezone in partners:
        local = now.astimezone(zoneinfo.ZoneInfo(timezone))
        this_monday = _monday(local.date())
        release = dt.datetime.combine(
            this_monday + dt.timedelta(days=DAYS.index(report_day)),
            dt.time(report_hour),
            local.tzinfo,
        )
        if local < release:  # last week's statement is not due yet
            continue
        week = this_monday - dt.timedelta(days=7)
        label = f"{week.isocalendar()[0]}-W{week.isocalendar()[1]:02d}"
        if (slug, label) not in sent:
            due.setdefault(week, []).append(slug)
    return due


@dataclass
class Periodic:
    """The scheduler's jobs against one database; ``step(now)`` runs those due at ``now``."""

    sessions: sessionmaker[Session]
    holder: str
    enqueue_tick: Callable[[dt.datetime], None]
    send_statements: SendStatements
    lease_ttl: dt.timedelta = LEASE_TTL  # longer than the time between steps
    next_run: dict[str, dt.datetime] = field(default_factory=dict)
    log: list[str] = field(default_factory=list)

    def triggers(self, hub: HubRecord) -> dict[str, CronTrigger]:
        return {
            "tick": CronTrigger(minute="*", timezone="UTC"),
            "credit": CronTrigger(minute="*/5", timezone="UTC"),
            "plan": CronTrigger(
                day_of_week=hub.plan_day, hour=hub.plan_hour, minute=0, timezone=hub.timezone
            ),
            "statements": CronTrigger(minute="*/15", timezone="UTC"),
        }

    def step(self, now: dt.datetime) -> list[str]:
        """Run every job whose trigger fired since its last run (once, however many times it
        fired); nothing unless this process holds the lease. Returns what it did."""
        with self.sessions() as session:
            if not take_lease(session, self.holder, now, self.lease_ttl):
                return []
            hub = session.get(HubRecord, 1)
            if hub is None:
                return []
            done: list[str] = []
            for name, trigger in self.triggers(hub).items():
                due = self.next_run.get(name)
                if due is None:  # first step: a job fires at its first time from now on
                    due = trigger.get_next_fire_time(None, now)
                if due is not None and due <= now:
                    what = self._jobs()[name](session, now, hub)
                    done.append(f"{now:%Y-%m-%d %H:%M} {name}: {what}")
                    due = trigger.get_next_fire_time(None, now + dt.timedelta(seconds=1))
                self.next_run[name] = due
            self.log += done
            return done

    def _jobs(self) -> dict[str, Callable[[Session, dt.datetime, HubRecord], str]]:
        return {
            "tick": self._tick,
            "credit": self._credit,
            "plan": self._plan,
            "statements": self._statements,
        }

    def _tick(self, session: Session, now: dt.datetime, hub: HubRecord) -> str:
        held = hold_missed(session, now, dt.timedelta(hours=hub.missed_grace_hours))
        self.enqueue_tick(now)
        return f"tick enqueued; {len(held)} late mailing(s) held"

    def _credit(self, session: Session, now: dt.datetime, hub: HubRecord) -> str:
        credited = credit_measured(session)
        final = finalize_due(session, now, hub.credit_window_days)
        session.commit()
        return f"{credited} credited, {final} finalized"

    def _plan(self, session: Session, now: dt.datetime, hub: HubRecord) -> str:
        local = now.astimezone(zoneinfo.ZoneInfo(hub.timezone)).date()
        monday = _monday(local) + dt.timedelta(days=7)
        if mailings_in_week(session, monday):
            return f"week of {monday} already planned"
        problem = build_problem(session, monday)
        saved = save_plan(session, problem, solve(problem))
        session.commit()
        return f"week of {monday} planned: {len(saved.mailings)} mailing(s)"

    def _statements(self, session: Session, now: dt.datetime, hub: HubRecord) -> str:
        partners = [
            (p.slug, p.timezone)
            for p in session.scalars(select(Partner).where(Partner.archived_at.is_(None)))
        ]
        sent = {
            (slug, week)
            for slug, week in session.execute(
                select(Partner.slug, StatementSend.week).join(
                    Partner, Partner.id == StatementSend.partner_id
                )
            ).all()
        }
        due = statements_due(partners, sent, now, hub.report_day, hub.report_hour)
        count = sum(self.send_statements(session, week, slugs) for week, slugs in due.items())
        return f"{count} statement(s) sent"
