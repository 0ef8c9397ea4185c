"""The outbox of Deliveries: the database rows that make sending exactly-once.

A Delivery is one message of one mailing to one subscriber. Its life:

    pending --claim--> claimed --start--> sending --record--> accepted | failed
       ^                  |                  |
       +--lease expired---+                  +--lease expired--> unknown (reconciled, never resent)
    claimed --claim finds the address suppressed--> suppressed

* :func:`materialize` creates a mailing's rows in one set-based statement, before anything is
  enqueued: subscribed, unarchived addresses of the list, minus the owner's suppressions, and
  minus addresses the owner already has a delivery of the same promotion for (one message per
  address even when it is on several of the owner's lists).
* :func:`claim` takes up to ``limit`` rows of a batch (an id range) in one statement: pending
  ones, or claimed ones whose lease ran out (their worker died before the provider call). Each
  row's ``fence`` goes up by one; the worker holds (id, fence) pairs from then on. In the same
  transaction the claimed rows whose address was suppressed meanwhile become ``suppressed``:
  a suppression committed before the claim is honoured.
* :func:`start` moves the worker's rows to ``sending`` just before the provider call, only where
  the fence still matches: a worker that lost its lease learns it here and calls nothing.
* :func:`record` stores each outcome where the fence still matches and the row is ``sending``:
  a stale worker's late commit changes nothing.
* :func:`expire` turns ``sending`` rows past their lease into ``unknown``: the provider may have
  them, so only its webhooks or event log may resolve them; they are never sent again.

Nothing here commits: the caller owns the transaction, one per step.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from typing import cast

from sqlalchemy import (
    Table,
    and_,
    bindparam,
    exists,
    func,
    insert,
    literal,
    or_,
    select,
    tuple_,
    update,
)
from sqlalchemy.orm import Session, aliased

from jvmail.db.models import (
    Delivery,
    DeliveryStatus,
    Mailing,
    MailingList,
    MailingStatus,
    Subscriber,
    SubscriberStatus,
    Suppression,
)

__all__ = [
    "SENDABLE",
    "Claimed",
    "Outcome",
    "batch_bounds",
    "claim",
    "expire",
    "materialize",
    "record",
    "release",
    "start",
    "unclaim",
]

SENDABLE = (MailingStatus.PLANNED, MailingStatus.APPROVED)
FINAL = (DeliveryStatus.ACCEPTED, DeliveryStatus.FAILED, DeliveryStatus.SUPPRESSED)


@dataclass(frozen=True)
class Claimed:
    """A row a worker holds: send only while ``fence`` is still the row's."""

    delivery_id: int
    fence: int
    email: str
    first_name: str


@dataclass(frozen=True)
class Outcome:
    """What the provider said about one recipient."""

    delivery_id: int
    fence: int
    status: DeliveryStatus  # accepted or failed
    provider_message_id: str | None = None
    error: str | None = None


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def materialize(session: Session, mailing_id: int) -> int | None:
    """Create the mailing's Delivery rows; the number created, or None when the mailing is not
    (or no longer) waiting to be sent, e.g. because another dispatcher took it first."""
    taken = session.execute(
        update(Mailing)
        .where(Mailing.id == mailing_id, Mailing.status.in_(SENDABLE))
        .values(status=MailingStatus.QUEUED, updated_at=_now())
        .returning(Mailing.promotion_id, Mailing.sender_id, Mailing.list_id)
    ).first()
    if taken is None:
        return None
    promotion_id, sender_id, list_id = taken
    sub = Subscriber
    other_sub, other_delivery, other_mailing = (
        aliased(Subscriber),
        aliased(Delivery),
        aliased(Mailing),
    )
    suppressed = exists().where(Suppression.partner_id == sender_id, Suppression.email == sub.email)
    already = exists().where(
        other_delivery.subscriber_id == other_sub.id,
        other_delivery.mailing_id == other_mailing.id,
        other_mailing.promotion_id == promotion_id,
        other_mailing.sender_id == sender_id,
        other_sub.email == sub.email,
    )
    rows = (
        select(
            literal(mailing_id),
            sub.id,
            literal(DeliveryStatus.PENDING.value),
            literal(0),
            literal(0),
            literal(_now()),
        )
        .where(
            sub.list_id == list_id,
            sub.status == SubscriberStatus.SUBSCRIBED,
            sub.archived_at.is_(None),
            ~suppressed,
            ~already,
        )
        .order_by(sub.id)
    )
    cols = ["mailing_id", "subscriber_id", "status", "attempts", "fence", "updated_at"]
    table = cast(Table, Delivery.__table__)
    stmt = insert(table).from_select(cols, rows).execution_options(preserve_rowcount=True)
    return session.connection().execute(stmt).rowcount


def batch_bounds(session: Session, mailing_id: int, size: int) -> list[tuple[int, int]]:
    """The mailing's unfinished deliveries cut into id ranges of at most ``size`` rows."""
    numbered = (
        select(Delivery.id, func.row_number().over(order_by=Delivery.id).label("n"))
        .where(Delivery.mailing_id == mailing_id, Delivery.status.not_in(FINAL))
        .subquery()
    )
    ids = list(
        session.scalars(
            select(numbered.c.id).where((numbered.c.n - 1) % size == 0).order_by(numbered.c.id)
        )
    )
    last = session.scalar(
        select(func.max(Delivery.id)).where(
            Delivery.mailing_id == mailing_id, Delivery.status.not_in(FINAL)
        )
    )
    if not ids or last is None:
        return []
    ends = [b - 1 for b in ids[1:]] + [int(last)]
    return list(zip(ids, ends, strict=True))


def claim(
    session: Session,
    mailing_id: int,
    bounds: tuple[int, int],
    *,
    lease: dt.timedelta,
    limit: int,
) -> list[Claimed]:
    """Claim the batch's sendable rows (see the module docstring); returns the ones to send."""
    now = _now()
    lo, hi = bounds
    running = exists().where(
        Mailing.id == mailing_id, Mailing.status.in_((MailingStatus.QUEUED, MailingStatus.SENDING))
    )
    free = (
        select(Delivery.id)
        .where(
            running,  # a pause or cancel committed before this claim is honoured by it
            Delivery.mailing_id == mailing_id,
            Delivery.id.between(lo, hi),
            or_(
                Delivery.status == DeliveryStatus.PENDING,
                and_(Delivery.status == DeliveryStatus.CLAIMED, Delivery.lease_until < now),
            ),
        )
        .order_by(Delivery.id)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    taken = session.execute(
        update(Delivery)
        .where(Delivery.id.in_(free.scalar_subquery()))
        .values(
            status=DeliveryStatus.CLAIMED,
            fence=Delivery.fence + 1,
            lease_until=now + lease,
            updated_at=now,
        )
        .returning(Delivery.id, Delivery.fence, Delivery.subscriber_id)
    ).all()
    if not taken:
        return []
    ids = [row.id for row in taken]
    owner = (
        select(MailingList.partner_id)
        .join(Mailing, Mailing.list_id == MailingList.id)
        .where(Mailing.id == mailing_id)
        .scalar_subquery()
    )
    blocked = or_(
        Subscriber.status != SubscriberStatus.SUBSCRIBED,
        exists().where(Suppression.partner_id == owner, Suppression.email == Subscriber.email),
    )
    gone = set(
        session.scalars(
            update(Delivery)
            .where(
                Delivery.id.in_(ids),
                exists().where(Subscriber.id == Delivery.subscriber_id, blocked),
            )
            .values(status=DeliveryStatus.SUPPRESSED, lease_until=None, updated_at=now)
            .returning(Delivery.id)
        )
    )
    fences = {row.id: row.fence for row in taken if row.id not in gone}
    people = session.execute(
        select(Delivery.id, Subscriber.email, Subscriber.first_name)
        .join(Subscriber, Subscriber.id == Delivery.subscriber_id)
        .where(Delivery.id.in_(list(fences)))
        .order_by(Delivery.id)
    ).all()
    return [Claimed(d, fences[d], email, first) for d, email, first in people]


def start(session: Session, held: Sequence[Claimed]) -> list[Claimed]:
    """Mark the rows ``sending`` where the fence still holds; only those may go out."""
    if not held:
        return []
    now = _now()
    pairs = [(c.delivery_id, c.fence) for c in held]
    moved = set(
        session.scalars(
            update(Delivery)
            .where(
                tuple_(Delivery.id, Delivery.fence).in_(pairs),
                Delivery.status == DeliveryStatus.CLAIMED,
            )
            .values(status=DeliveryStatus.SENDING, attempts=Delivery.attempts + 1, updated_at=now)
            .returning(Delivery.id)
        )
    )
    return [c for c in held if c.delivery_id in moved]


def unclaim(session: Session, held: Sequence[Claimed]) -> int:
    """Give claimed rows back (fenced) without sending them: they are pending again."""
    return _back_to_pending(session, held, DeliveryStatus.CLAIMED)


def release(session: Session, held: Sequence[Claimed]) -> int:
    """Put in-flight rows back to ``pending`` (fenced): the provider refused the request as a
    whole and answered so, so nothing left; a later batch may send them."""
    return _back_to_pending(session, held, DeliveryStatus.SENDING)


def _back_to_pending(session: Session, held: Sequence[Claimed], now: DeliveryStatus) -> int:
    if not held:
        return 0
    stmt = (
        update(Delivery)
        .where(
            tuple_(Delivery.id, Delivery.fence).in_([(c.delivery_id, c.fence) for c in held]),
            Delivery.status == now,
        )
        .values(status=DeliveryStatus.PENDING, lease_until=None, updated_at=_now())
        .execution_options(preserve_rowcount=True)
    )
    return session.connection().execute(stmt).rowcount


def record(session: Session, outcomes: Sequence[Outcome]) -> int:
    """Store outcomes where the row is still ``sending`` under the same fence; returns how many
    were stored (the rest belonged to a worker that lost its lease)."""
    if not outcomes:
        return 0
    t = cast(Table, Delivery.__table__)
    stmt = (
        update(t)
        .where(
            t.c.id == bindparam("b_id"),
            t.c.fence == bindparam("b_fence"),
            t.c.status == DeliveryStatus.SENDING,
        )
        .values(
            status=bindparam("b_status"),
            provider_message_id=bindparam("b_message"),
            error=bindparam("b_error"),
            lease_until=None,
            updated_at=_now(),
        )
    )
    params = [
        {
            "b_id": o.delivery_id,
            "b_fence": o.fence,
            "b_status": o.status,
            "b_message": o.provider_message_id,
            "b_error": o.error[:1000] if o.error else None,
        }
        for o in outcomes
    ]
    return int(session.connection().execute(stmt, params).rowcount)


def expire(session: Session, now: dt.datetime | None = None) -> int:
    """``sending`` rows past their lease become ``unknown``; returns how many."""
    moment = now or _now()
    result = session.connection().execute(
        update(Delivery)
        .where(Delivery.status == DeliveryStatus.SENDING, Delivery.lease_until < moment)
        .values(status=DeliveryStatus.UNKNOWN, updated_at=moment)
    )
    return result.rowcount
