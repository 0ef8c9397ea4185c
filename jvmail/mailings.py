"""Saved mailings after planning: list a week's, and approve or decline those awaiting approval.

A partner with ``approve_mailings = true`` reviews each mailing planned onto its lists. Approving
makes it ``approved``; the send pipeline sends ``planned`` and ``approved`` mailings. Declining
makes it ``declined`` and appends a ``correction`` entry that cancels its ``expected`` value, so
projected balances drop it; a declined mailing was never a commitment, so it is not missed and
does not count against the sender's reliability. Approving or declining a mailing that is not
awaiting approval is a :class:`~jvmail.errors.UsageError`, raised before anything changes.
Nothing here commits.
"""

from __future__ import annotations

import datetime as dt
import zoneinfo
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from sqlalchemy import ColumnElement, func, select, text
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, aliased

from jvmail.db.models import (
    Delivery,
    DeliveryStatus,
    LedgerKind,
    Mailing,
    MailingList,
    MailingStatus,
    Partner,
    Promotion,
)
from jvmail.errors import Busy, UsageError
from jvmail.ledger import post
from jvmail.ledger.book import load_entries
from jvmail.ledger.postings import effective_values

__all__ = [
    "FIND_IDS",
    "MAX_REASON",
    "MailingRow",
    "approve",
    "awaiting_approval",
    "decline",
    "mailings_in",
    "rows_of",
    "week_mailings",
]

MAX_REASON = 400  # characters of a decline reason kept on the mailing and in the ledger note
FIND_IDS = "find ids with `jvmail mailings --week YYYY-Www`"


@dataclass(frozen=True)
class MailingRow:
    """One saved mailing as people see it. Times are local to the sender (the list's owner)."""

    id: int
    day: dt.date
    send_time: str  # e.g. "Tue 01 Dec 09:00"
    local_time: dt.datetime  # the same, with the sender's UTC offset
    sender: str
    list: str
    promotion: str
    owner: str  # the promotion's owner, who receives the value
    status: MailingStatus
    expected_value: float
    review_note: str
    sent: int = 0  # messages the provider accepted so far
    total: int = 0  # deliveries made for it (0 until it is dispatched)
    error: str = ""  # why it failed or was paused


_Sender, _Owner = aliased(Partner), aliased(Partner)


def _query_rows(session: Session, *criteria: ColumnElement[bool]) -> list[MailingRow]:
    """The mailings meeting ``criteria``, by send time, with the names people know them by."""
    query = (
        select(Mailing, _Sender.slug, _Sender.timezone, MailingList.slug, Promotion.slug)
        .add_columns(_Owner.slug)
        .join(_Sender, Mailing.sender_id == _Sender.id)
        .join(MailingList, Mailing.list_id == MailingList.id)
        .join(Promotion, Mailing.promotion_id == Promotion.id)
        .join(_Owner, Promotion.partner_id == _Owner.id)
        .where(*criteria)
        .order_by(Mailing.scheduled_at, MailingList.slug, Mailing.id)
    )
    found = list(session.execute(query))
    progress = _progress(session, [m.id for m, *_ in found])
    rows = []
    for m, sender, timezone, lst, promo, owner in found:
        local = _local(m.scheduled_at, timezone)
        rows.append(
            MailingRow(
                id=m.id,
                day=local.date(),
                send_time=f"{local:%a %d %b %H:%M}",
                local_time=local,
                sender=sender,
                list=lst,
                promotion=promo,
                owner=owner,
                status=m.status,
                expected_value=m.expected_value,
                review_note=m.review_note,
                sent=progress.get((m.id, True), 0),
                total=progress.get((m.id, True), 0) + progress.get((m.id, False), 0),
                error=m.error or "",
            )
        )
    return rows


def _progress(session: Session, ids: list[int]) -> dict[tuple[int, bool], int]:
    """(mailing, accepted?) -> deliveries."""
    if not ids:
        return {}
    accepted = Delivery.status == DeliveryStatus.ACCEPTED
    query = (
        select(Delivery.mailing_id, accepted, func.count())
        .where(Delivery.mailing_id.in_(ids))
        .group_by(Delivery.mailing_id, accepted)
    )
    return {(m, bool(a)): n for m, a, n in session.execute(query)}


def _local(at: dt.datetime, timezone: str) -> dt.datetime:
    # SQLite hands timestamps back without a zone; they are stored in UTC.
    aware = at if at.tzinfo else at.replace(tzinfo=dt.UTC)
    return aware.astimezone(zoneinfo.ZoneInfo(timezone))


def week_mailings(
    session: Session,
    week_start: dt.date,
    *,
    partner: str | None = None,
    status: MailingStatus | None = None,
) -> list[MailingRow]:
    """Mailings whose local send day falls in the week starting ``week_start``, by send time.

    ``partner`` keeps those it sends or whose promotion it owns; ``status`` keeps one status.
    """
    # A day of slack either side in UTC, then the exact week in each sender's own time zone.
    start = dt.datetime.combine(week_start, dt.time(), dt.UTC) - dt.timedelta(days=1)
    criteria = [Mailing.scheduled_at >= start, Mailing.scheduled_at < start + dt.timedelta(days=9)]
    if status is not None:
        criteria.append(Mailing.status == status)
    if partner is not None:
        criteria.append((_Sender.slug == partner) | (_Owner.slug == partner))
    end = week_start + dt.timedelta(days=7)
    return [r for r in _query_rows(session, *criteria) if week_start <= r.day < end]


def awaiting_approval(
    session: Session, *, sender: str | None = None, week_start: dt.date | None = None
) -> list[int]:
    """Ids of the mailings awaiting approval, optionally only ``sender``'s or one week's."""
    if week_start is not None:
        rows = week_mailings(session, week_start, status=MailingStatus.AWAITING_APPROVAL)
        return [r.id for r in rows if sender is None or r.sender == sender]
    criteria = [Mailing.status == MailingStatus.AWAITING_APPROVAL]
    if sender is not None:
        criteria.append(_Sender.slug == sender)
    return [r.id for r in _query_rows(session, *criteria)]


def approve(session: Session, ids: Iterable[int], now: dt.datetime) -> list[MailingRow]:
    """Mark the mailings ``approved``.

    Raises:
        UsageError: an id is unknown or its mailing is not awaiting approval; nothing changed.
    """
    mailings = _awaiting(session, ids, verb="approve")
    for m in mailings:
        m.status = MailingStatus.APPROVED
        m.reviewed_at = m.updated_at = now
    session.flush()
    return rows_of(session, mailings)


def decline(
    session: Session, ids: Iterable[int], now: dt.datetime, reason: str = ""
) -> list[MailingRow]:
    """Mark the mailings ``declined`` and cancel each one's expected value with a correction.

    Raises:
        UsageError: an id is unknown or its mailing is not awaiting approval; nothing changed.
    """
    if len(reason) > MAX_REASON:
        raise UsageError(
            f"the reason is {len(reason)} characters long; at most {MAX_REASON} are kept",
            "shorten --reason",
        )
    mailings = _awaiting(session, ids, verb="decline")
    values = effective_values(load_entries(session, [m.id for m in mailings]))
    note = f"declined by the sender: {reason}" if reason else "declined by the sender"
    for m in mailings:
        m.status = MailingStatus.DECLINED
        m.reviewed_at = m.updated_at = now
        m.review_note = reason
        sender = session.get(Partner, m.sender_id)
        assert sender is not None, "a mailing always has a sender"
        current = values[m.id].value if m.id in values else 0.0
        post(
            session, mailing=m, giver=sender, kind=LedgerKind.CORRECTION, value=-current, note=note
        )
    session.flush()
    return rows_of(session, mailings)


def _awaiting(session: Session, ids: Iterable[int], *, verb: str) -> list[Mailing]:
    return mailings_in(
        session, ids, (MailingStatus.AWAITING_APPROVAL,), verb=verb, what="awaiting approval"
    )


def mailings_in(
    session: Session,
    ids: Iterable[int],
    states: Sequence[MailingStatus],
    *,
    verb: str,
    what: str,
) -> list[Mailing]:
    """The mailings ``ids``, all in one of ``states`` (described to people as ``what``).

    Raises:
        UsageError: an id is unknown or its mailing is in another state; nothing changed.
        Busy: a worker stopped while it held one of them; nothing changed.
    """
    wanted = sorted(set(ids))
    found = {m.id: m for m in _locked(session, wanted, verb)}
    missing = [i for i in wanted if i not in found]
    if missing:
        raise UsageError(f"no mailing with id {_ids(missing)}", FIND_IDS)
    done = [found[i] for i in wanted if found[i].status not in states]
    if done:
        if len(done) == 1:
            shown = f"mailing {done[0].id}: it is {done[0].status.value}"
        else:
            shown = "mailings " + ", ".join(f"{m.id} ({m.status.value})" for m in done)
        listed = f" --status {states[0].value}" if len(states) == 1 else ""
        raise UsageError(
            f"cannot {verb} {shown}; nothing was changed",
            f"`jvmail {verb}` takes mailings {what}: "
            f"find them with `jvmail mailings --week YYYY-Www{listed}`",
        )
    return [found[i] for i in wanted]


LOCK_WAIT_MS = 10_000  # how long a step waits for a worker holding one of its mailings
LOCK_NOT_AVAILABLE = "55P03"  # PostgreSQL's SQLSTATE for a lock_timeout that ran out


def _locked(session: Session, ids: list[int], verb: str) -> Sequence[Mailing]:
    """The mailings ``ids``, locked as an update locks them and read as they are once locked:
    a worker giving rows back to one of them meanwhile finishes first, and then sees what this
    step does. A worker holds a mailing for milliseconds; one that holds it longer has stopped
    in the middle (SIGSTOP, a paused VM): after ``LOCK_WAIT_MS`` the step gives up, changing
    nothing, rather than hang with it."""
    query = (
        select(Mailing)
        .where(Mailing.id.in_(ids))
        .order_by(Mailing.id)
        .with_for_update(key_share=True)
        .execution_options(populate_existing=True)
    )
    if session.get_bind().dialect.name != "postgresql":
        return session.scalars(query).all()  # SQLite: one writer at a time, which waits
    session.execute(text(f"SET LOCAL lock_timeout = {int(LOCK_WAIT_MS)}"))
    try:
        found = session.scalars(query).all()
    except OperationalError as exc:
        if getattr(exc.orig, "sqlstate", None) != LOCK_NOT_AVAILABLE:
            raise
        session.rollback()
        raise Busy(
            f"cannot {verb} mailing {_ids(ids)} now: another process has held it for "
            f"{LOCK_WAIT_MS / 1000:g} s (a worker stopped half way?); nothing was changed",
            "try again in a minute; if it goes on, look for a stopped or hung `jvmail worker`",
        ) from None
    session.execute(text("SET LOCAL lock_timeout = DEFAULT"))
    return found


def _ids(ids: Sequence[int]) -> str:
    return ", ".join(str(i) for i in ids)


def rows_of(session: Session, mailings: list[Mailing]) -> list[MailingRow]:
    return rows_by_id(session, [m.id for m in mailings])


def rows_by_id(session: Session, ids: Sequence[int]) -> list[MailingRow]:
    return _query_rows(session, Mailing.id.in_(list(ids)))
