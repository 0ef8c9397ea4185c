"""Build the week's statements from the ledger and tracking: one query per section for the
whole hub, then each partner's statement assembled in memory.

A partner's week is Monday to Sunday in its own timezone: a mailing belongs to the week by its
local send day. Balances are the ledger's measured view (what tracking measured; a missed
commitment counts nothing); each mailing line shows its current value, the expected one until
it is measured.
"""

from __future__ import annotations

import bisect
import datetime as dt
import zoneinfo
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from sqlalchemy import case, distinct, func, select
from sqlalchemy.orm import Session, aliased

from jvmail.db.models import (
    Delivery,
    DeliveryStatus,
    EventType,
    HubRecord,
    LedgerKind,
    Mailing,
    MailingList,
    MailingStatus,
    Partner,
    Promotion,
    TrackingEvent,
)
from jvmail.ledger import View
from jvmail.ledger.book import load_entries
from jvmail.ledger.postings import (
    MailingValue,
    counted,
    effective_values,
    net_positions,
    reliability,
    settlements,
)
from jvmail.reports.model import (
    Ally,
    Commitment,
    CoordinatorSummary,
    MailingLine,
    PairLine,
    PartnerFigure,
    ProviderHealth,
    Statement,
    Suggestion,
    WeekPoint,
)
from jvmail.tracking.links import Keyring, review_url

__all__ = ["Hub", "build_statements", "build_summary", "load_hub"]

HISTORY_WEEKS = 12
TAKER_RATIO = 1.5  # received more than this many times what it gave: flagged, gently
_UPCOMING = (MailingStatus.PLANNED, MailingStatus.APPROVED, MailingStatus.AWAITING_APPROVAL)


@dataclass(frozen=True)
class _Partner:
    id: int
    slug: str
    name: str
    timezone: str
    categories: tuple[str, ...]
    wants_to_meet: tuple[str, ...]


@dataclass(frozen=True)
class _Mailing:
    id: int
    at: dt.datetime  # scheduled, UTC
    sender: int
    owner: int
    list_id: int
    list_name: str
    promotion_id: int
    subject: str
    status: MailingStatus
    expected: float


@dataclass(frozen=True)
class _Measure:
    delivered: int = 0
    human_clicks: int = 0
    conversions: float = 0.0


# id, owner, subject, niches, window start, window end, excluded partners
_Promo = tuple[int, int, str, tuple[str, ...], dt.date, dt.date, tuple[str, ...]]


@dataclass(frozen=True)
class Hub:
    """Everything the week's statements are made from, loaded section by section."""

    name: str
    metric: str
    base_url: str
    keys: Keyring | None
    monday: dt.date
    partners: dict[int, _Partner]
    values: dict[int, MailingValue]  # every mailing's ledger value
    scheduled: dict[int, dt.datetime]  # when each ledger mailing was scheduled (UTC)
    mailings: list[_Mailing]  # this week's and next week's (with a day's margin each side)
    measures: dict[int, _Measure]
    lists: list[tuple[int, int, str, tuple[str, ...]]]  # id, owner, name, niches
    promotions: list[_Promo]
    mailed: set[tuple[int, int]]  # (promotion, list) pairs ever mailed or planned

    @property
    def by_slug(self) -> dict[str, _Partner]:
        return {p.slug: p for p in self.partners.values()}


def _utc(at: dt.datetime) -> dt.datetime:
    return at if at.tzinfo else at.replace(tzinfo=dt.UTC)


def _local_day(at: dt.datetime, timezone: str) -> dt.date:
    return _utc(at).astimezone(zoneinfo.ZoneInfo(timezone)).date()


def load_hub(session: Session, monday: dt.date) -> Hub:
    """Load what the statements of the week starting ``monday`` need, one query per section."""
    hub = session.get(HubRecord, 1)
    partners = {
        p.id: _Partner(
            p.id, p.slug, p.name, p.timezone, tuple(p.categories), tuple(p.wants_to_meet)
        )
        for p in session.scalars(select(Partner))
    }
    values = effective_values(load_entries(session))
    scheduled = {
        m: _utc(at)
        for m, at in session.execute(select(Mailing.id, Mailing.scheduled_at)).all()
        if m in values
    }
    lo = dt.datetime.combine(monday - dt.timedelta(days=1), dt.time(), dt.UTC)
    mailings = _mailings(session, lo, lo + dt.timedelta(days=16))
    return Hub(
        name=hub.name if hub else "jvmail",
        metric=hub.value_metric if hub else "clicks",
        base_url=hub.base_url if hub else "",
        keys=Keyring.from_hex(hub.link_keys) if hub and hub.link_keys else None,
        monday=monday,
        partners=partners,
        values=values,
        scheduled=scheduled,
        mailings=mailings,
        measures=_measures(session, [m.id for m in mailings]),
        lists=[
            (i, o, n, tuple(ni))
            for i, o, n, ni in session.execute(
                select(
                    MailingList.id, MailingList.partner_id, MailingList.name, MailingList.niches
                ).where(MailingList.archived_at.is_(None))
            ).all()
        ],
        promotions=[
            (i, o, s, tuple(ni), a, b, tuple(ex))
            for i, o, s, ni, a, b, ex in session.execute(
                select(
                    Promotion.id,
                    Promotion.partner_id,
                    Promotion.subject,
                    Promotion.niches,
                    Promotion.window_start,
                    Promotion.window_end,
                    Promotion.exclude_partners,
                ).where(Promotion.archived_at.is_(None))
            ).all()
        ],
        mailed=set(session.execute(select(Mailing.promotion_id, Mailing.list_id)).all()),
    )


def _mailings(session: Session, lo: dt.datetime, hi: dt.datetime) -> list[_Mailing]:
    rows = session.execute(
        select(
            Mailing.id,
            Mailing.scheduled_at,
            Mailing.sender_id,
            Promotion.partner_id,
            Mailing.list_id,
            MailingList.name,
            Mailing.promotion_id,
            Promotion.subject,
            Mailing.status,
            Mailing.expected_value,
        )
        .join(Promotion, Promotion.id == Mailing.promotion_id)
        .join(MailingList, MailingList.id == Mailing.list_id)
        .where(Mailing.scheduled_at >= lo, Mailing.scheduled_at < hi)
        .order_by(Mailing.scheduled_at, Mailing.id)
    ).all()
    return [_Mailing(i, _utc(at), *rest) for i, at, *rest in rows]


def _measures(session: Session, ids: Sequence[int]) -> dict[int, _Measure]:
    """Per mailing: deliveries accepted and not bounced, unique human clicks, conversions."""
    if not ids:
        return {}
    bounced = select(TrackingEvent.delivery_id).where(
        TrackingEvent.type.in_((EventType.BOUNCED, EventType.REJECTED)),
        TrackingEvent.mailing_id.in_(ids),
    )
    delivered = dict(
        session.execute(
            select(Delivery.mailing_id, func.count())
            .where(
                Delivery.mailing_id.in_(ids),
                Delivery.status == DeliveryStatus.ACCEPTED,
                Delivery.id.not_in(bounced),
            )
            .group_by(Delivery.mailing_id)
        ).all()
    )
    e = TrackingEvent
    clicks = dict(
        session.execute(
            select(e.mailing_id, func.count(distinct(e.delivery_id)))
            .where(e.mailing_id.in_(ids), e.type == EventType.CLICKED, e.human.is_(True))
            .group_by(e.mailing_id)
        ).all()
    )
    sales: dict[int | None, float] = dict(
        session.execute(
            select(e.mailing_id, func.sum(case((e.amount < 0, -1.0), else_=1.0)))
            .where(e.mailing_id.in_(ids), e.type == EventType.CONVERTED)
            .group_by(e.mailing_id)
        ).all()
    )
    return {
        m: _Measure(int(delivered.get(m, 0)), int(clicks.get(m, 0)), float(sales.get(m) or 0.0))
        for m in ids
    }


# -- one partner's statement ------------------------------------------------------------------


def _line(hub: Hub, m: _Mailing, viewer: _Partner) -> MailingLine:
    measure = hub.measures.get(m.id, _Measure())
    value = hub.values[m.id].value if m.id in hub.values else m.expected
    return MailingLine(
        day=_local_day(m.at, viewer.timezone),
        promotion=m.subject,
        owner=hub.partners[m.owner].name,
        sender=hub.partners[m.sender].name,
        list=m.list_name,
        status=str(m.status),
        delivered=measure.delivered,
        human_clicks=measure.human_clicks,
        conversions=measure.conversions,
        value=value,
    )


def _in_week(hub: Hub, m: _Mailing, partner: _Partner, offset: int = 0) -> bool:
    """Whether ``m`` goes out in the week (``offset`` weeks after the statement's), by the
    partner's own calendar."""
    start = hub.monday + dt.timedelta(weeks=offset)
    return start <= _local_day(m.at, partner.timezone) <= start + dt.timedelta(days=6)


def _measured(hub: Hub) -> list[MailingValue]:
    return list(counted(hub.values, View.MEASURED))


def _pairs(measured: Iterable[MailingValue], slug: str, names: Mapping[str, str]) -> list[PairLine]:
    gave: dict[str, float] = defaultdict(float)
    got: dict[str, float] = defaultdict(float)
    for mv in measured:
        if mv.giver == slug:
            gave[mv.receiver] += mv.value
        elif mv.receiver == slug:
            got[mv.giver] += mv.value
    lines = [
        PairLine(names.get(o, o), gave[o], got[o], gave[o] - got[o]) for o in set(gave) | set(got)
    ]
    return sorted(lines, key=lambda p: (-abs(p.net), p.partner))


def _history(hub: Hub, measured: Iterable[MailingValue], partner: _Partner) -> list[WeekPoint]:
    ends = [hub.monday - dt.timedelta(weeks=k) for k in range(HISTORY_WEEKS - 1, -1, -1)]
    after = [monday + dt.timedelta(days=7) for monday in ends]  # each week's next Monday
    given = [0.0] * len(ends)
    received = [0.0] * len(ends)
    for mv in measured:
        if partner.slug not in (mv.giver, mv.receiver) or mv.mailing not in hub.scheduled:
            continue
        day = _local_day(hub.scheduled[mv.mailing], partner.timezone)
        target = given if mv.giver == partner.slug else received
        for k in range(bisect.bisect_right(after, day), len(ends)):  # weeks ending after it
            target[k] += mv.value
    return [
        WeekPoint(f"{m.isocalendar()[0]}-W{m.isocalendar()[1]:02d}", g, r)
        for m, g, r in zip(ends, given, received, strict=True)
    ]


def _commitment(hub: Hub, m: _Mailing, viewer: _Partner, link: bool = False) -> Commitment:
    url = None
    if link and hub.keys is not None and m.status is MailingStatus.AWAITING_APPROVAL:
        url = review_url(hub.base_url, hub.keys, m.id)
    return Commitment(
        day=_local_day(m.at, viewer.timezone),
        sender=hub.partners[m.sender].name,
        list=m.list_name,
        promotion=m.subject,
        owner=hub.partners[m.owner].name,
        status=str(m.status),
        expected_value=m.expected,
        review_url=url,
    )


def _suggestions(
    hub: Hub,
    partner: _Partner,
    net: Mapping[str, float],
    candidates: Sequence[_Promo],
    lists: Sequence[tuple[int, str, Sequence[str]]],
) -> list[Suggestion]:
    """Partners the alliance owes, or whose categories ``partner`` wants to meet, with a
    promotion of theirs that fits one of its lists next week and was never sent there."""
    start = hub.monday + dt.timedelta(days=7)
    end = start + dt.timedelta(days=6)
    own_lists = [(i, n, set(ni)) for i, n, ni in lists]
    found: list[Suggestion] = []
    seen: set[int] = set()
    for pid, owner_id, subject, niches, w_start, w_end, excluded in candidates:
        owner = hub.partners[owner_id]
        owed = net.get(owner.slug, 0.0)
        meet = set(owner.categories) & set(partner.wants_to_meet)
        if owner_id == partner.id or owner_id in seen or partner.slug in excluded:
            continue
        if w_end < start or w_start > end or (owed <= 0 and not meet):
            continue
        fit = next(
            (n for i, n, ni in own_lists if ni & set(niches) and (pid, i) not in hub.mailed), None
        )
        if fit is None:
            continue
        why = (
            f"the alliance owes {owner.name} {owed:,.0f} {hub.metric}"
            if owed > 0
            else f"you wanted to meet {', '.join(sorted(meet))} partners"
        )
        found.append(Suggestion(owner.name, max(owed, 0.0), subject, fit, why))
        seen.add(owner_id)
        if len(found) == 3:
            break
    return found


def _statement(hub: Hub, partner: _Partner, shared: _Shared) -> Statement:
    involved = shared.mailings.get(partner.id, [])
    week = [m for m in involved if _in_week(hub, m, partner)]
    nxt = [m for m in involved if _in_week(hub, m, partner, 1) and m.status in _UPCOMING]
    gave = [_line(hub, m, partner) for m in week if m.sender == partner.id]
    got = [_line(hub, m, partner) for m in week if m.owner == partner.id]
    slug = partner.slug
    mine = shared.measured.get(slug, [])
    week_ids = {m.id for m in week}
    given_total = sum(mv.value for mv in mine if mv.giver == slug)
    received_total = sum(mv.value for mv in mine if mv.receiver == slug)
    pairs = _pairs(mine, slug, shared.names)
    kept, due = shared.kept.get(slug, (0, 0))
    for_me = shared.received.get(slug, [])
    others_due = [mv for mv in for_me if mv.stage is not LedgerKind.EXPECTED]
    allies = sorted(
        ((p.partner, p.received) for p in pairs if p.received > 0), key=lambda a: (-a[1], a[0])
    )
    clicks: dict[str, int] = defaultdict(int)
    for m in week:
        if m.owner == partner.id:
            clicks[hub.partners[m.sender].name] += hub.measures.get(m.id, _Measure()).human_clicks
    net = given_total - received_total
    return Statement(
        partner_slug=slug,
        partner=partner.name,
        hub=hub.name,
        week=f"{hub.monday.isocalendar()[0]}-W{hub.monday.isocalendar()[1]:02d}",
        start=hub.monday,
        end=hub.monday + dt.timedelta(days=6),
        timezone=partner.timezone,
        metric=hub.metric,
        gave=gave,
        received=got,
        given_week=sum(mv.value for mv in mine if mv.giver == slug and mv.mailing in week_ids),
        received_week=sum(
            mv.value for mv in mine if mv.receiver == slug and mv.mailing in week_ids
        ),
        given_total=given_total,
        received_total=received_total,
        net=net,
        pairs=pairs,
        pays=list(shared.pays.get(slug, [])),
        next_week=[_commitment(hub, m, partner) for m in nxt if m.sender == partner.id],
        incoming=[_commitment(hub, m, partner) for m in nxt if m.owner == partner.id],
        pending_approvals=[
            _commitment(hub, m, partner, link=True)
            for m in involved
            if m.sender == partner.id and m.status is MailingStatus.AWAITING_APPROVAL
        ],
        kept=kept,
        due=due,
        partners_kept=sum(1 for mv in others_due if mv.stage is not LedgerKind.MISSED),
        partners_due=len(others_due),
        allies=[Ally(name, value) for name, value in allies[:3]],
        taker=net < 0 and received_total > TAKER_RATIO * given_total,
        suggestions=_suggestions(
            hub, partner, shared.net, shared.promotions, shared.lists.get(partner.id, [])
        ),
        history=_history(hub, mine, partner),
        clicks_by_partner={k: v for k, v in clicks.items() if v},
    )


@dataclass(frozen=True)
class _Shared:
    """What every statement of the hub shares, computed once and indexed by partner, so each
    statement reads only its own lines."""

    measured: dict[str, list[MailingValue]]  # slug -> measured mailings it gave or received
    received: dict[str, list[MailingValue]]  # slug -> every ledger mailing made for it
    mailings: dict[int, list[_Mailing]]  # partner id -> the loaded mailings it sends or owns
    names: dict[str, str]
    net: dict[str, float]
    kept: dict[str, tuple[int, int]]
    pays: dict[str, list[PairLine]]
    promotions: list[_Promo]  # the most owed owners' first
    lists: dict[int, list[tuple[int, str, Sequence[str]]]]  # owner id -> (id, name, niches)


def _shared(hub: Hub) -> _Shared:
    measured: dict[str, list[MailingValue]] = defaultdict(list)
    for mv in _measured(hub):
        measured[mv.giver].append(mv)
        measured[mv.receiver].append(mv)
    received: dict[str, list[MailingValue]] = defaultdict(list)
    for mv in hub.values.values():
        received[mv.receiver].append(mv)
    mailings: dict[int, list[_Mailing]] = defaultdict(list)
    for m in hub.mailings:
        mailings[m.sender].append(m)
        if m.owner != m.sender:
            mailings[m.owner].append(m)
    names = {p.slug: p.name for p in hub.partners.values()}
    net = net_positions(hub.values, View.MEASURED)
    pays: dict[str, list[PairLine]] = defaultdict(list)
    for t in settlements(net):
        pays[t.debtor].append(PairLine(names.get(t.creditor, t.creditor), 0.0, 0.0, -t.value))
        pays[t.creditor].append(PairLine(names.get(t.debtor, t.debtor), 0.0, 0.0, t.value))
    promotions = sorted(
        hub.promotions, key=lambda p: (-net.get(hub.partners[p[1]].slug, 0.0), p[0])
    )
    lists: dict[int, list[tuple[int, str, Sequence[str]]]] = defaultdict(list)
    for list_id, owner, name, niches in hub.lists:
        lists[owner].append((list_id, name, niches))
    return _Shared(
        dict(measured),
        dict(received),
        dict(mailings),
        names,
        net,
        reliability(hub.values),
        dict(pays),
        promotions,
        dict(lists),
    )


def build_statements(
    session: Session, monday: dt.date, partners: Sequence[str] | None = None
) -> list[Statement]:
    """The statements of the week starting ``monday``, for ``partners`` (slugs) or all partners
    that are not archived, by partner id."""
    hub = load_hub(session, monday)
    shared = _shared(hub)
    archived = set(session.scalars(select(Partner.id).where(Partner.archived_at.is_not(None))))
    chosen = [
        p
        for p in sorted(hub.partners.values(), key=lambda p: p.slug)
        if (partners is None and p.id not in archived) or (partners and p.slug in partners)
    ]
    return [_statement(hub, p, shared) for p in chosen]


def build_summary(session: Session, monday: dt.date) -> CoordinatorSummary:
    """The coordinator's view of the week (UTC days): totals, balance extremes, missed
    commitments, and each sending account's bounce and complaint rates."""
    hub = load_hub(session, monday)
    start = dt.datetime.combine(monday, dt.time(), dt.UTC)
    week = [m for m in hub.mailings if start <= m.at < start + dt.timedelta(days=7)]
    ids = [m.id for m in week]
    measures = [hub.measures.get(i, _Measure()) for i in ids]
    net = net_positions(hub.values, View.MEASURED)
    names = {p.slug: p.name for p in hub.partners.values()}
    given: dict[str, float] = defaultdict(float)
    received: dict[str, float] = defaultdict(float)
    for mv in counted(hub.values, View.MEASURED):
        if mv.mailing in set(ids):
            given[mv.giver] += mv.value
            received[mv.receiver] += mv.value
    figures = sorted(
        (PartnerFigure(names.get(s, s), v, given[s], received[s]) for s, v in net.items()),
        key=lambda f: (abs(f.net), f.partner),
    )
    missed = sorted(
        {
            names.get(hub.values[i].giver, hub.values[i].giver)
            for i in ids
            if i in hub.values and hub.values[i].stage is LedgerKind.MISSED
        }
    )
    return CoordinatorSummary(
        hub=hub.name,
        week=f"{monday.isocalendar()[0]}-W{monday.isocalendar()[1]:02d}",
        metric=hub.metric,
        mailings=len(week),
        delivered=sum(m.delivered for m in measures),
        human_clicks=sum(m.human_clicks for m in measures),
        value=sum(hub.values[i].value for i in ids if i in hub.values),
        most_balanced=figures[:3],
        least_balanced=list(reversed(figures[-3:])),
        missed=missed,
        providers=_provider_health(session, ids, hub),
    )


def _provider_health(session: Session, ids: Sequence[int], hub: Hub) -> list[ProviderHealth]:
    if not ids:
        return []
    sender = aliased(Partner)
    sent = dict(
        session.execute(
            select(Mailing.sender_id, func.count())
            .join(Delivery, Delivery.mailing_id == Mailing.id)
            .where(Mailing.id.in_(ids), Delivery.status == DeliveryStatus.ACCEPTED)
            .group_by(Mailing.sender_id)
        ).all()
    )
    e = TrackingEvent
    rows = session.execute(
        select(Mailing.sender_id, e.type, func.count(distinct(e.delivery_id)))
        .join(Mailing, Mailing.id == e.mailing_id)
        .where(e.mailing_id.in_(ids), e.type.in_((EventType.BOUNCED, EventType.COMPLAINED)))
        .group_by(Mailing.sender_id, e.type)
    ).all()
    counts: dict[tuple[int, EventType], int] = {(s, t): n for s, t, n in rows}
    kinds = dict(session.execute(select(sender.id, sender.provider_kind)).all())
    return [
        ProviderHealth(
            hub.partners[s].name,
            str(kinds.get(s, "")),
            int(n),
            counts.get((s, EventType.BOUNCED), 0),
            counts.get((s, EventType.COMPLAINED), 0),
        )
        for s, n in sorted(sent.items())
    ]
