"""The relay: re-enqueue the batches of a queued mailing whose messages were lost, and only those.

The database is the truth and the broker is transport: a batch whose message was lost (Redis
restarted empty, the in-process broker gone with its process, a dispatcher that died half way
through enqueuing) still has rows to send, and only a new message sends them. Re-enqueuing every
batch with rows left would be harmless (claims are fenced) but would flood the queue: a
1,000,000-recipient mailing sending normally has up to 1,000 batch messages waiting their turn.

So each batch is a row (:class:`~jvmail.db.models.DeliveryBatch`) that says when a message for
it was last enqueued and when a worker last claimed rows of it. A queued mailing is stalled when
nothing shows its messages flowing:

* none of its batches was enqueued or claimed since ``before`` (progress anywhere in a mailing
  means its messages are being consumed: the rest are waiting their turn);
* no worker holds any of its rows under a live lease (a long provider call is progress too);
* it still has rows to claim (pending, or claimed by a worker whose lease ran out).

Each batch of a stalled mailing that still has rows to claim is then enqueued once more and
stamped, so it is relayed at most once per ``relay_after``. A mailing dispatched before batches
were recorded gets them recorded when it is first found stalled. (The tick also passes over a
stalled mailing whose sender's account is held by its provider's Retry-After: its batches wait
out the hold in the broker's delay queue, and a Redis that loses them loses the hold with them.)

:func:`record` is called by dispatch (a worker's claim stamps its batch claimed, in
:func:`~jvmail.dispatch.deliveries.claim`), :func:`stalled` and :func:`relay` by the tick. Nothing
here commits.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

from sqlalchemy import ColumnElement, Update, case, exists, or_, select, tuple_, update
from sqlalchemy.orm import Session, aliased
from sqlalchemy.sql.dml import ReturningUpdate

from jvmail.db.engine import insert_or_skip
from jvmail.db.models import Delivery, DeliveryBatch, DeliveryStatus, Mailing, MailingStatus
from jvmail.dispatch.deliveries import any_row, batch_bounds, has_rows

__all__ = ["record", "relay", "rewind", "stalled"]

IN_FLIGHT = (DeliveryStatus.CLAIMED, DeliveryStatus.SENDING)


def record(
    session: Session, mailing_id: int, bounds: Sequence[tuple[int, int]], now: dt.datetime
) -> None:
    """Remember the mailing's batches, their messages enqueued at ``now``."""
    if not bounds:
        return
    rows = [{"mailing_id": mailing_id, "lo": lo, "hi": hi, "enqueued_at": now} for lo, hi in bounds]
    session.execute(insert_or_skip(session, DeliveryBatch).on_conflict_do_nothing(), rows)


def _claimable(now: dt.datetime) -> ColumnElement[bool]:
    # The OR is checked per row, so a probe stops at the first match.
    return Delivery.status.in_((DeliveryStatus.PENDING, DeliveryStatus.CLAIMED)) & or_(
        Delivery.status == DeliveryStatus.PENDING, Delivery.lease_until < now
    )


def stalled(session: Session, now: dt.datetime, before: dt.datetime) -> list[tuple[int, int]]:
    """Queued mailings with rows to claim whose messages show no sign of flowing since
    ``before`` (see the module docstring): (mailing id, sender id), by mailing id.

    In two steps, cheapest first: at most a batch row per batch of each queued mailing (a
    mailing sending normally stops there, at every tick); then, for the quiet ones only, a
    probe for rows in flight (along the open batches' id ranges) and one for rows to claim."""
    batch = DeliveryBatch
    recent = exists().where(
        batch.mailing_id == Mailing.id,
        or_(batch.enqueued_at >= before, batch.claimed_at >= before),
    )
    quiet = session.execute(
        select(Mailing.id, Mailing.sender_id)
        .where(Mailing.status == MailingStatus.QUEUED, ~recent)
        .order_by(Mailing.id)
    ).all()
    if not quiet:
        return []
    return [
        (mailing_id, sender_id)
        for mailing_id, sender_id in quiet
        if not _working(session, mailing_id, now) and has_rows(session, mailing_id, _claimable(now))
    ]


def _working(session: Session, mailing_id: int, now: dt.datetime) -> bool:
    """Whether a worker holds rows of the mailing under a live lease (only an open batch can)."""
    live = (Delivery.status.in_(IN_FLIGHT), Delivery.lease_until >= now)
    return has_rows(session, mailing_id, *live, open_only=True)


def relay(
    session: Session, mailing_ids: Sequence[int], now: dt.datetime, size: int
) -> list[tuple[int, int, int]]:
    """The batches of these (stalled) mailings that still have rows to claim, stamped enqueued
    at ``now``: (mailing id, lo, hi), in order. A mailing without recorded batches gets its
    unfinished rows cut into batches of ``size`` and recorded."""
    if not mailing_ids:
        return []
    stamped = session.execute(_stamp(mailing_ids, now)).all()
    found = [(m, lo, hi) for m, lo, hi in stamped]
    batch = DeliveryBatch
    known = set(session.scalars(select(batch.mailing_id).where(batch.mailing_id.in_(mailing_ids))))
    for mailing_id in mailing_ids:
        if mailing_id not in known:
            bounds = batch_bounds(session, mailing_id, size)
            record(session, mailing_id, bounds, now)
            found += [(mailing_id, lo, hi) for lo, hi in bounds]
    return sorted(found)


LONG_AGO = dt.datetime(2000, 1, 1, tzinfo=dt.UTC)  # before any relay_after


def rewind(mailing_id: int) -> Update:
    """A resumed mailing's batches: their messages were dropped while it stood still, so they
    count as quiet since long ago (the next tick relays those with rows to claim rather than
    waiting out ``relay_after``), and open, so the rows a failed mailing's resume made pending
    again are looked at (a closed batch's rows are not). A batch another transaction holds is
    passed over: a worker is on it, and it waits for this one's lock on the mailing (a wait
    here would close the circle)."""
    batch = DeliveryBatch
    return (
        update(batch)
        .where(batch.mailing_id == mailing_id, _unheld([mailing_id]))
        .values(
            enqueued_at=LONG_AGO,
            claimed_at=case((batch.claimed_at.is_(None), None), else_=LONG_AGO),
            open=True,
        )
    )


def _unheld(mailing_ids: Sequence[int]) -> ColumnElement[bool]:
    """Whether a batch of these mailings is one no other transaction holds (those are locked
    by this one as they are found, on PostgreSQL; SQLite has one writer at a time)."""
    batch, free = DeliveryBatch, aliased(DeliveryBatch)
    found = (
        select(free.mailing_id, free.lo)
        .where(free.mailing_id.in_(list(mailing_ids)))
        .with_for_update(skip_locked=True)
    )
    return tuple_(batch.mailing_id, batch.lo).in_(found)


def _stamp(mailing_ids: Sequence[int], now: dt.datetime) -> ReturningUpdate[int, int, int]:
    """Stamp the batches that have rows to claim: one probe per batch, along its id range (at
    most a batch of rows, stopping at the first one left to claim). A batch another
    transaction holds is passed over: a worker is claiming it (or recording its answers) right
    now, or froze doing so (its process stopped), and the tick must not wait for it to wake."""
    batch = DeliveryBatch
    left = any_row(
        Delivery.id.between(batch.lo, batch.hi),
        Delivery.mailing_id == batch.mailing_id,
        _claimable(now),
    )
    return (
        update(batch)
        .where(
            batch.mailing_id.in_(list(mailing_ids)),
            _unheld(mailing_ids),
            left,
        )
        .values(enqueued_at=now)
        .returning(batch.mailing_id, batch.lo, batch.hi)
    )
