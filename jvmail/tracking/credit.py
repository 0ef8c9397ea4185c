"""Credit the ledger with what tracking measured: a ``pending`` entry per sent mailing.

A mailing's measured value, in the hub's value metric:

- ``clicks``: unique human clicks, that is, deliveries with at least one click not flagged as a
  machine's (a scanner's sweep or a bot's request counts for nothing);
- ``delivered``: deliveries the provider reported delivered;
- ``conversions``: conversions reported by postback, less refunds.

Each run posts a new ``pending`` entry only for mailings whose measured value changed since the
last one, and none for mailings whose credit window has closed (their value is final).
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import Select, case, distinct, func, select
from sqlalchemy.orm import Session

from jvmail.db.models import (
    EventType,
    HubRecord,
    LedgerEntry,
    LedgerKind,
    Mailing,
    MailingStatus,
    Partner,
    TrackingEvent,
)
from jvmail.ledger.book import post

__all__ = ["credit_measured", "measured_values"]

CREDITED = (MailingStatus.SENT,)  # measured once it has gone out; until then: expected


def _measure(metric: str) -> Select[int | None, Any]:
    e = TrackingEvent
    if metric == "conversions":
        signed = case((e.amount < 0, -1.0), else_=1.0)
        return select(e.mailing_id, func.sum(signed)).where(e.type == EventType.CONVERTED)
    wanted = EventType.DELIVERED if metric == "delivered" else EventType.CLICKED
    query = select(e.mailing_id, func.count(distinct(e.delivery_id))).where(e.type == wanted)
    return query.where(e.human.is_(True)) if wanted is EventType.CLICKED else query


def measured_values(session: Session, metric: str, mailings: list[int]) -> dict[int, float]:
    """Mailing id -> its measured value (0 for a mailing with nothing measured yet)."""
    values = dict.fromkeys(mailings, 0.0)
    if mailings:
        query = _measure(metric).where(TrackingEvent.mailing_id.in_(mailings))
        for row in session.execute(query.group_by(TrackingEvent.mailing_id)):
            if row[0] is not None:
                values[row[0]] = float(row[1] or 0.0)
    return values


def credit_measured(session: Session) -> int:
    """Post ``pending`` entries for sent mailings whose measured value changed; returns how many.
    The caller commits."""
    hub = session.get(HubRecord, 1)
    if hub is None:
        return 0
    closed = select(LedgerEntry.mailing_id).where(
        LedgerEntry.kind.in_((LedgerKind.FINAL, LedgerKind.MISSED)),
        LedgerEntry.mailing_id.is_not(None),
    )
    open_mailings = list(
        session.scalars(
            select(Mailing)
            .where(Mailing.status.in_(CREDITED), Mailing.id.not_in(closed))
            .order_by(Mailing.id)
        )
    )
    if not open_mailings:
        return 0
    ids = [m.id for m in open_mailings]
    values = measured_values(session, hub.value_metric, ids)
    latest: dict[int | None, float] = dict(
        session.execute(
            select(LedgerEntry.mailing_id, LedgerEntry.value)
            .where(LedgerEntry.kind == LedgerKind.PENDING, LedgerEntry.mailing_id.in_(ids))
            .order_by(LedgerEntry.id)
        ).all()
    )
    posted = 0
    stamp = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    for mailing in open_mailings:
        value = values[mailing.id]
        if mailing.id in latest and abs(latest[mailing.id] - value) < 1e-9:
            continue
        giver = session.get(Partner, mailing.sender_id)
        assert giver is not None, "a mailing always has a sender"
        post(
            session,
            mailing=mailing,
            giver=giver,
            kind=LedgerKind.PENDING,
            value=value,
            note=f"measured {value:g} {hub.value_metric} by {stamp}",
        )
        posted += 1
    return posted
