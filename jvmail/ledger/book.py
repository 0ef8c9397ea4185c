"""The ledger in the database: append entries, read them back, summarize balances.

Entries are only ever inserted; every figure here is derived from them by
:mod:`jvmail.ledger.postings`, so `jvmail ledger` can always be checked against the raw lines.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Collection
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session, aliased

from jvmail.db.models import LedgerEntry, LedgerKind, Mailing, Partner, Promotion
from jvmail.ledger.postings import (
    Entry,
    Transfer,
    View,
    counted,
    effective_values,
    net_positions,
    pair_balances,
    reliability,
    settlements,
)

__all__ = ["PartnerBalance", "Summary", "finalize_due", "load_entries", "post", "summarize"]


def post(
    session: Session,
    *,
    mailing: Mailing,
    giver: Partner,
    kind: LedgerKind,
    value: float,
    note: str = "",
) -> LedgerEntry:
    """Append one entry for ``mailing``, whose promotion's owner is the receiver."""
    entry = LedgerEntry(
        mailing_id=mailing.id,
        giver_id=giver.id,
        receiver_id=_owner_id(session, mailing),
        kind=kind,
        value=value,
        note=note,
    )
    session.add(entry)
    session.flush()
    return entry


def _owner_id(session: Session, mailing: Mailing) -> int:
    owner = session.scalar(select(Promotion.partner_id).where(Promotion.id == mailing.promotion_id))
    assert owner is not None, "a mailing always has a promotion"
    return owner


def finalize_due(session: Session, now: dt.datetime, window_days: int) -> int:
    """Post a ``final`` entry for each measured mailing older than the credit window.

    The final value is the mailing's current measured value (its latest ``pending`` entry; any
    corrections stay separate entries and keep applying). Returns how many were finalized;
    running it again posts nothing new.
    """
    cutoff = now - dt.timedelta(days=window_days)
    values = effective_values(load_entries(session))
    due = [mv for mv in values.values() if mv.stage is LedgerKind.PENDING]
    if not due:
        return 0
    rows = session.execute(
        select(Mailing.id, Mailing.scheduled_at).where(Mailing.id.in_([mv.mailing for mv in due]))
    )
    sent = {mailing_id: _aware(at) for mailing_id, at in rows}
    pending = _latest_pending(session)
    posted = 0
    for mv in due:
        if sent[mv.mailing] <= cutoff:
            session.add(
                LedgerEntry(
                    mailing_id=mv.mailing,
                    giver_id=pending[mv.mailing].giver_id,
                    receiver_id=pending[mv.mailing].receiver_id,
                    kind=LedgerKind.FINAL,
                    value=pending[mv.mailing].value,
                    note=f"credit window of {window_days} days closed",
                )
            )
            posted += 1
    session.flush()
    return posted


def _latest_pending(session: Session) -> dict[int, LedgerEntry]:
    query = (
        select(LedgerEntry).where(LedgerEntry.kind == LedgerKind.PENDING).order_by(LedgerEntry.id)
    )
    return {e.mailing_id: e for e in session.scalars(query) if e.mailing_id is not None}


def _aware(at: dt.datetime) -> dt.datetime:
    # SQLite hands timestamps back without a zone; they are stored in UTC.
    return at if at.tzinfo else at.replace(tzinfo=dt.UTC)


def load_entries(session: Session, mailings: Collection[int] | None = None) -> list[Entry]:
    """Every ledger line (or only those of ``mailings``), with partner slugs, in insertion order."""
    giver, receiver = aliased(Partner), aliased(Partner)
    query = (  # columns, not entities: a hub's whole ledger is loaded at once
        select(
            LedgerEntry.id,
            LedgerEntry.mailing_id,
            giver.slug,
            receiver.slug,
            LedgerEntry.kind,
            LedgerEntry.value,
        )
        .join(giver, LedgerEntry.giver_id == giver.id)
        .join(receiver, LedgerEntry.receiver_id == receiver.id)
        .order_by(LedgerEntry.id)
    )
    if mailings is not None:
        query = query.where(LedgerEntry.mailing_id.in_(sorted(mailings)))
    return [
        Entry(id_, mailing or 0, g, r, kind, value)
        for id_, mailing, g, r, kind, value in session.execute(query)
    ]


@dataclass(frozen=True)
class PartnerBalance:
    partner: str
    given: float
    received: float
    net: float  # given - received: positive means the hub owes this partner
    kept: int  # commitments kept
    due: int  # commitments due


@dataclass(frozen=True)
class Summary:
    view: View
    partners: list[PartnerBalance]
    pairs: dict[tuple[str, str], float]
    transfers: list[Transfer]


def summarize(session: Session, view: View = View.MEASURED) -> Summary:
    """Balances of every partner that ever traded, pair balances and the netted transfers."""
    values = effective_values(load_entries(session))
    given: dict[str, float] = {}
    received: dict[str, float] = {}
    for mv in counted(values, view):
        given[mv.giver] = given.get(mv.giver, 0.0) + mv.value
        received[mv.receiver] = received.get(mv.receiver, 0.0) + mv.value
    net = net_positions(values, view)
    kept = reliability(values)
    partners = [
        PartnerBalance(
            p, given.get(p, 0.0), received.get(p, 0.0), net.get(p, 0.0), *kept.get(p, (0, 0))
        )
        for p in sorted(set(net) | set(kept))
    ]
    return Summary(view, partners, pair_balances(values, view), settlements(net))
