"""Between the database and the pure scheduler: build a week's problem, save the chosen plan.

The scheduler sees only a :class:`~jvmail.scheduler.Problem`; this module is where the registry,
subscriber counts and ledger balances are read, and where a plan becomes Mailing rows and
``expected`` ledger entries. Nothing here commits.
"""

from __future__ import annotations

import datetime as dt
import re
import zoneinfo
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from jvmail.db.models import (
    HubRecord,
    LedgerKind,
    Mailing,
    MailingList,
    MailingStatus,
    Partner,
    Promotion,
    Subscriber,
    SubscriberStatus,
)
from jvmail.errors import UsageError
from jvmail.ledger import View, post
from jvmail.ledger.book import load_entries
from jvmail.ledger.postings import effective_values, net_positions
from jvmail.scheduler import ListSpec, Plan, Problem, PromotionSpec, Settings

__all__ = ["PlannedWeek", "build_problem", "mailings_in_week", "parse_week", "save_plan"]

_WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_ISO_WEEK = re.compile(r"^(\d{4})-W(\d{2})$")


def parse_week(text: str) -> dt.date:
    """``2026-W49`` -> that ISO week's Monday.

    Raises:
        UsageError: not an ISO week.
    """
    match = _ISO_WEEK.match(text.strip())
    try:
        if match is None:
            raise ValueError(text)
        return dt.date.fromisocalendar(int(match[1]), int(match[2]), 1)
    except ValueError:
        raise UsageError(
            f"not an ISO week: {text!r}", "write the week as YYYY-Www, e.g. 2026-W49"
        ) from None


def build_problem(
    session: Session, week_start: dt.date, settings: Settings | None = None
) -> Problem:
    """The week's problem from the live (not archived) registry and the measured ledger."""
    sizes = dict(
        session.execute(
            select(Subscriber.list_id, func.count())
            .where(
                Subscriber.status == SubscriberStatus.SUBSCRIBED, Subscriber.archived_at.is_(None)
            )
            .group_by(Subscriber.list_id)
        ).all()
    )
    week = [week_start + dt.timedelta(days=n) for n in range(7)]
    lists = [
        ListSpec(
            id=lst.slug,
            owner=lst.partner.slug,
            size=int(sizes.get(lst.id, 0)),
            click_rate=lst.click_rate,
            niches=tuple(lst.niches),
            weekly_cap=lst.max_sends_per_week,
            daily_slots=2 if lst.digest else 1,
            days=tuple(
                d
                for d in week
                if _WEEKDAYS[d.weekday()] in lst.send_days
                and d.isoformat() not in lst.blackout_dates
            ),
            send_hour=lst.send_hour,
            overlap=dict(lst.overlap),
        )
        for lst in session.scalars(
            select(MailingList).where(MailingList.archived_at.is_(None)).order_by(MailingList.slug)
        )
        if lst.partner.archived_at is None
    ]
    promotions = [
        PromotionSpec(
            id=p.slug,
            owner=p.partner.slug,
            niches=tuple(p.niches),
            start=p.window_start,
            end=p.window_end,
            wanted=p.mailings_wanted,
            exclude=tuple(p.exclude_partners),
        )
        for p in session.scalars(
            select(Promotion).where(Promotion.archived_at.is_(None)).order_by(Promotion.slug)
        )
        if p.partner.archived_at is None and p.window_start <= week[-1] and p.window_end >= week[0]
    ]
    balances = net_positions(effective_values(load_entries(session)), View.MEASURED)
    configured = _configured(session)
    groups = configured.pop("niche_groups", {})
    return Problem(
        week_start=week_start,
        lists=tuple(lists),
        promotions=tuple(promotions),
        balances={k: round(v, 6) for k, v in sorted(balances.items())},
        niche_groups=dict(sorted(groups.items())),
        settings=settings or Settings(**configured),
    )


def _configured(session: Session) -> dict[str, Any]:
    """The hub's `[scheduler]` settings as synced (defaults before the first sync)."""
    record = session.get(HubRecord, 1)
    return dict(record.scheduler) if record is not None else {}


def mailings_in_week(session: Session, week_start: dt.date) -> int:
    """How many mailings (not cancelled) are scheduled in the week starting ``week_start``."""
    # A day of slack either side: mailings are stored in UTC, weeks are local to each partner.
    start = dt.datetime.combine(week_start, dt.time(), dt.UTC) - dt.timedelta(days=1)
    end = start + dt.timedelta(days=9)
    count = session.scalar(
        select(func.count())
        .select_from(Mailing)
        .where(Mailing.scheduled_at >= start, Mailing.scheduled_at < end)
        .where(Mailing.status != MailingStatus.CANCELLED)
    )
    return int(count or 0)


@dataclass(frozen=True)
class PlannedWeek:
    mailings: list[Mailing]


def save_plan(session: Session, problem: Problem, plan: Plan) -> PlannedWeek:
    """Store each assignment as a planned Mailing with an ``expected`` ledger entry.

    Raises:
        UsageError: the week already has mailings (planning a week again is not supported yet).
    """
    existing = mailings_in_week(session, problem.week_start)
    if existing:
        raise UsageError(
            f"the week of {problem.week_start} already has {existing} mailings",
            "use --dry-run to preview; re-planning a week that has mailings is not supported yet",
        )
    lists = {lst.slug: lst for lst in session.scalars(select(MailingList))}
    promos = {p.slug: p for p in session.scalars(select(Promotion))}
    partners = {p.id: p for p in session.scalars(select(Partner))}
    mailings: list[Mailing] = []
    for a in plan.assignments:
        lst, promo = lists[a.list], promos[a.promotion]
        sender = partners[lst.partner_id]
        local = dt.datetime.combine(
            a.day, dt.time(lst.send_hour), zoneinfo.ZoneInfo(sender.timezone)
        )
        mailing = Mailing(
            promotion_id=promo.id,
            sender_id=sender.id,
            list_id=lst.id,
            scheduled_at=local.astimezone(dt.UTC),
            status=MailingStatus.PLANNED,
            expected_value=a.value,
        )
        session.add(mailing)
        session.flush()
        post(session, mailing=mailing, giver=sender, kind=LedgerKind.EXPECTED, value=a.value)
        mailings.append(mailing)
    return PlannedWeek(mailings)
