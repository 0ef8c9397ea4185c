"""Between the database and the pure scheduler: build a week's problem, save the chosen plan.

The scheduler sees only a :class:`~jvmail.scheduler.Problem`; this module is where the registry,
subscriber counts and ledger balances are read, and where a plan becomes Mailing rows and
``expected`` ledger entries. Nothing here commits.
"""

from __future__ import annotations

import datetime as dt
import re
import zoneinfo
from collections import defaultdict
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from jvmail.config import SchedulerSettings, ValueMetric
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
from jvmail.ledger.history import (
    MEASURED_STAGES,
    Measured,
    age_weight,
    decayed,
    rate_from_history,
)
from jvmail.ledger.postings import MailingValue, effective_values, net_positions
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
    """The week's problem from the live (not archived) registry and the ledger.

    Each list's ``click_rate`` in the problem is its per-recipient rate in the hub's value
    metric: the prior from config (clicks: the list's ``click_rate``; delivered: 1.0;
    conversions: ``click_rate`` x ``[scheduler] conversion_rate``), shrunk towards what the
    list's mailings scheduled before ``week_start`` measured (stages pending and final; see
    :mod:`jvmail.ledger.history`). Carried balances are the measured ledger's, each mailing's
    value weighted by ``(1 - [scheduler] debt_decay) ** weeks`` from its scheduled time to
    ``week_start``. ``settings`` replaces the hub's solver settings when given.
    """
    hub = _hub_config(session)
    week = [week_start + dt.timedelta(days=n) for n in range(7)]
    values = effective_values(load_entries(session))
    start = _utc_midnight(week_start)
    history = _history(session, values, before=start)
    weights = _decay_weights(session, start, hub.scheduler.debt_decay)
    solver = hub.scheduler.model_dump(exclude=_PLANNER_KEYS)
    return Problem(
        week_start=week_start,
        lists=tuple(_list_specs(session, week, hub, history)),
        promotions=tuple(_promotion_specs(session, week)),
        balances=_balances(decayed(values, weights)),
        niche_groups=dict(sorted(hub.scheduler.niche_groups.items())),
        settings=settings or Settings(**solver),
    )


# [scheduler] keys the planner uses itself; the rest are the solver's Settings.
_PLANNER_KEYS = {"niche_groups", "conversion_rate", "debt_decay"}

_PRIORS: dict[ValueMetric, Callable[[float, float], float]] = {
    ValueMetric.CLICKS: lambda click_rate, _conversion: click_rate,
    ValueMetric.DELIVERED: lambda _click_rate, _conversion: 1.0,
    ValueMetric.CONVERSIONS: lambda click_rate, conversion: click_rate * conversion,
}


@dataclass(frozen=True)
class _HubConfig:
    metric: ValueMetric
    scheduler: SchedulerSettings

    def prior(self, lst: MailingList) -> float:
        """The list's per-recipient rate in the value metric before it has history."""
        return _PRIORS[self.metric](lst.click_rate, self.scheduler.conversion_rate)


def _hub_config(session: Session) -> _HubConfig:
    """The hub's value metric and `[scheduler]` settings as synced (defaults before a sync)."""
    record = session.get(HubRecord, 1)
    if record is None:
        return _HubConfig(ValueMetric.CLICKS, SchedulerSettings())
    return _HubConfig(
        ValueMetric(record.value_metric), SchedulerSettings.model_validate(record.scheduler)
    )


def _utc_midnight(day: dt.date) -> dt.datetime:
    return dt.datetime.combine(day, dt.time(), dt.UTC)


def _aware(at: dt.datetime) -> dt.datetime:
    # SQLite hands timestamps back without a zone; they are stored in UTC.
    return at if at.tzinfo else at.replace(tzinfo=dt.UTC)


@dataclass(frozen=True)
class _Sent:
    """A measured mailing of a list, as the rate estimate needs it."""

    expected: float
    planned_rate: float | None  # None: planned before rates were recorded
    measured: float


def _history(
    session: Session, values: Mapping[int, MailingValue], before: dt.datetime
) -> dict[int, list[_Sent]]:
    """Per list id: its mailings scheduled before ``before`` that were sent and measured."""
    measured = {m: mv for m, mv in values.items() if mv.stage in MEASURED_STAGES}
    if not measured:
        return {}
    query = select(
        Mailing.id,
        Mailing.list_id,
        Mailing.scheduled_at,
        Mailing.expected_value,
        Mailing.planned_rate,
    ).order_by(Mailing.id)
    found: dict[int, list[_Sent]] = defaultdict(list)
    for mailing_id, list_id, at, expected, rate in session.execute(query):
        mv = measured.get(mailing_id)
        if mv is not None and _aware(at) < before and expected > 0:
            found[list_id].append(_Sent(expected, rate, mv.value))
    return dict(found)


def _decay_weights(session: Session, week_start: dt.datetime, decay: float) -> dict[int, float]:
    """Per mailing id: how much of its value still counts in the carried balances."""
    if decay <= 0:
        return {}
    rows = session.execute(select(Mailing.id, Mailing.scheduled_at))
    return {m: age_weight(_aware(at), week_start, decay) for m, at in rows}


def _list_rate(prior: float, sent: list[_Sent]) -> float:
    history = [Measured(s.expected / (s.planned_rate or prior), s.measured) for s in sent]
    return round(rate_from_history(prior, history), 10)


def _sizes(session: Session) -> dict[int, int]:
    query = (
        select(Subscriber.list_id, func.count())
        .where(Subscriber.status == SubscriberStatus.SUBSCRIBED, Subscriber.archived_at.is_(None))
        .group_by(Subscriber.list_id)
    )
    return {int(list_id): int(n) for list_id, n in session.execute(query)}


def _list_specs(
    session: Session, week: list[dt.date], hub: _HubConfig, history: Mapping[int, list[_Sent]]
) -> Iterator[ListSpec]:
    sizes = _sizes(session)
    query = select(MailingList).where(MailingList.archived_at.is_(None)).order_by(MailingList.slug)
    for lst in session.scalars(query):
        if lst.partner.archived_at is not None:
            continue
        yield ListSpec(
            id=lst.slug,
            owner=lst.partner.slug,
            size=sizes.get(lst.id, 0),
            click_rate=_list_rate(hub.prior(lst), history.get(lst.id, [])),
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


def _promotion_specs(session: Session, week: list[dt.date]) -> Iterator[PromotionSpec]:
    query = select(Promotion).where(Promotion.archived_at.is_(None)).order_by(Promotion.slug)
    for p in session.scalars(query):
        if p.partner.archived_at is None and p.window_start <= week[-1] and p.window_end >= week[0]:
            yield PromotionSpec(
                id=p.slug,
                owner=p.partner.slug,
                niches=tuple(p.niches),
                start=p.window_start,
                end=p.window_end,
                wanted=p.mailings_wanted,
                exclude=tuple(p.exclude_partners),
            )


def _balances(values: Mapping[int, MailingValue]) -> dict[str, float]:
    """Carried net per partner (given - received) from the measured ``values``."""
    net = net_positions(values, View.MEASURED)
    return {k: round(v, 6) for k, v in sorted(net.items())}


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

    @property
    def awaiting_approval(self) -> int:
        """How many of the saved mailings wait for their sender's approval."""
        return sum(m.status is MailingStatus.AWAITING_APPROVAL for m in self.mailings)


def save_plan(session: Session, problem: Problem, plan: Plan) -> PlannedWeek:
    """Store each assignment as a Mailing with an ``expected`` ledger entry.

    The mailing is ``planned``, or ``awaiting_approval`` when its sender (the list's owner)
    approves each mailing (``approve_mailings = true``).

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
    rates = {spec.id: spec.click_rate for spec in problem.lists}
    mailings: list[Mailing] = []
    for a in plan.assignments:
        lst, promo = lists[a.list], promos[a.promotion]
        sender = partners[lst.partner_id]
        local = dt.datetime.combine(a.day, dt.time(a.hour), zoneinfo.ZoneInfo(sender.timezone))
        mailing = Mailing(
            promotion_id=promo.id,
            sender_id=sender.id,
            list_id=lst.id,
            scheduled_at=local.astimezone(dt.UTC),
            status=MailingStatus.AWAITING_APPROVAL
            if sender.approve_mailings
            else MailingStatus.PLANNED,
            expected_value=a.value,
            planned_rate=rates[a.list],
        )
        session.add(mailing)
        session.flush()
        post(session, mailing=mailing, giver=sender, kind=LedgerKind.EXPECTED, value=a.value)
        mailings.append(mailing)
    return PlannedWeek(mailings)
