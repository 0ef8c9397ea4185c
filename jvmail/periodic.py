"""The hub's clock: what `jvmail scheduler` does, and when.

One long-lived process fires APScheduler cron triggers, and each firing enqueues a job for the
workers (dramatiq messages: the tick of :mod:`jvmail.dispatch.actors`, the rest from
:mod:`jvmail.jobs`); the work itself is done wherever a worker takes it:

- every minute, ``tick``: mailings more than ``missed_grace_hours`` past their send time (the
  hub was down) are held here, paused with the reason, for `jvmail resume`, never sent blindly;
  then one tick is enqueued (dispatch what is due, relay lost batches, settle unknown
  deliveries);
- every five minutes, ``credit``: the ledger is to be credited with what tracking measured, and
  mailings past the credit window finalized;
- on ``plan_day`` at ``plan_hour`` (hub time), ``plan``: next week is to be planned and saved,
  unless it already has mailings (checked here, and again by the job);
- every fifteen minutes, ``statements``: each partner whose local time has reached
  ``report_day`` at ``report_hour`` and whose statement of last week is not settled (sent, being
  sent, failed or in doubt; one left to retry is not) gets a job to send it. A scheduler that
  was down catches up at its next run (the latest week; older ones stay unsent).

Exactly one scheduler acts at a time, even if several are started: each step first takes or
renews a lease row in the database (``scheduler_lease``), which another process can take only
once it has expired. Missed firings are coalesced: a trigger that fired several times while the
process was stopped runs once. A new process's first step runs the jobs that fire within the
current minute (so `jvmail scheduler --once` from cron does each minute's work). The clock is
passed in, so tests drive a whole week in minutes.
"""

from __future__ import annotations

import datetime as dt
import zoneinfo
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from apscheduler.triggers.cron import CronTrigger
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from jvmail.db.engine import insert_or_skip
from jvmail.db.models import HubRecord, Mailing, MailingStatus, Partner, SchedulerLease
from jvmail.dispatch.deliveries import SENDABLE
from jvmail.planner import mailings_in_week
from jvmail.reports.send import settled, week_label

__all__ = ["LEASE_TTL", "Enqueuer", "Periodic", "hold_missed", "statements_due", "take_lease"]

LEASE = "scheduler"
LEASE_TTL = dt.timedelta(seconds=90)
DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


class Enqueuer(Protocol):
    """Where the scheduler's jobs go (:class:`jvmail.jobs.Enqueue` puts them on the broker)."""

    def tick(self, now: dt.datetime) -> None: ...

    def credit(self) -> None: ...

    def plan(self, monday: dt.date) -> None: ...

    def statements(self, monday: dt.date, slugs: Sequence[str]) -> None: ...


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
    and not settled yet (``sent`` holds the settled (slug, ISO week) pairs)."""
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
        if (slug, week_label(week)) not in sent:
            due.setdefault(week, []).append(slug)
    return due


@dataclass
class Periodic:
    """The scheduler's jobs against one database; ``step(now)`` enqueues those due at ``now``."""

    sessions: sessionmaker[Session]
    holder: str
    enqueue: Enqueuer
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
        """Enqueue every job whose trigger fired since its last run (once, however many times
        it fired); nothing unless this process holds the lease. Returns what it did."""
        with self.sessions() as session:
            if not take_lease(session, self.holder, now, self.lease_ttl):
                return []
            hub = session.get(HubRecord, 1)
            if hub is None:
                return []
            done: list[str] = []
            for name, trigger in self.triggers(hub).items():
                due = self.next_run.get(name)
                if due is None:  # first step: what fires from the start of this minute on
                    start = now.replace(second=0, microsecond=0)
                    due = trigger.get_next_fire_time(None, start)
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
        self.enqueue.tick(now)
        return f"tick enqueued; {len(held)} late mailing(s) held"

    def _credit(self, session: Session, now: dt.datetime, hub: HubRecord) -> str:
        self.enqueue.credit()
        return "credit enqueued"

    def _plan(self, session: Session, now: dt.datetime, hub: HubRecord) -> str:
        local = now.astimezone(zoneinfo.ZoneInfo(hub.timezone)).date()
        monday = _monday(local) + dt.timedelta(days=7)
        if mailings_in_week(session, monday):
            return f"week of {monday} already planned"
        self.enqueue.plan(monday)
        return f"plan of the week of {monday} enqueued"

    def _statements(self, session: Session, now: dt.datetime, hub: HubRecord) -> str:
        partners = [
            (p.slug, p.timezone)
            for p in session.scalars(select(Partner).where(Partner.archived_at.is_(None)))
        ]
        due = statements_due(partners, settled(session), now, hub.report_day, hub.report_hour)
        for week, slugs in sorted(due.items()):
            self.enqueue.statements(week, slugs)
        count = sum(len(slugs) for slugs in due.values())
        return f"{count} statement(s) enqueued"
