"""Settle deliveries left ``unknown``: the provider call may or may not have sent them.

Never by a blind resend. In order:

1. **Events.** Any event the provider reported about the delivery, or a click or open on its
   signed links, proves the message left: ``accepted``; a provider rejection: ``failed``. (A
   webhook that arrives after the row became ``unknown`` settles it at once; this catches those
   that arrived while it was still ``sending``.)
2. **The outbox journal**, when the mailings went to an outbox: a delivery in the journal, or
   whose .eml file exists, was written (``accepted``); one in neither was certainly not, and goes
   back to ``pending`` to be sent (its mailing is queued again).
3. **Giving up.** Rows still unknown after ``give_up`` (default 3 days: providers report within
   hours) become ``dead`` with a reason that says where to look; they are never resent.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from jvmail.db.models import (
    Delivery,
    DeliveryStatus,
    EventType,
    Mailing,
    MailingStatus,
    TrackingEvent,
)
from jvmail.dispatch.deliveries import in_open_batches

__all__ = ["GIVE_UP", "Reconciled", "reconcile"]

GIVE_UP = dt.timedelta(days=3)
_CHUNK = 5000
_NOT_EVIDENCE = (EventType.UNKNOWN, EventType.CONVERTED)
DEAD_REASON = (
    "the provider never reported on this message within {days} days of an interrupted send; "
    "it was not resent: look it up in the provider's log"
)


@dataclass
class Reconciled:
    accepted: int = 0
    failed: int = 0
    resent: int = 0  # back to pending: the outbox shows it was never written
    dead: int = 0
    waiting: int = 0  # still unknown, within the give-up period


def _chunks(ids: Sequence[int]) -> Iterable[Sequence[int]]:
    for start in range(0, len(ids), _CHUNK):
        yield ids[start : start + _CHUNK]


def _evidence(session: Session, ids: Sequence[int]) -> dict[int, bool]:
    """Delivery id -> True when an event shows it left, False when the provider rejected it."""
    seen: dict[int, bool] = {}
    for chunk in _chunks(ids):
        rows = session.execute(
            select(TrackingEvent.delivery_id, TrackingEvent.type).where(
                TrackingEvent.delivery_id.in_(chunk), TrackingEvent.type.not_in(_NOT_EVIDENCE)
            )
        )
        for delivery, kind in rows:
            if delivery is not None:
                seen[delivery] = seen.get(delivery, False) or kind != EventType.REJECTED
    return seen


def _journal(outbox: Path) -> set[tuple[int, int]]:
    path = outbox / "journal.log"
    if not path.exists():
        return set()
    written = set()
    for line in path.read_text("ascii").splitlines():
        mailing, _, delivery = line.partition(" ")
        if mailing.isdigit() and delivery.isdigit():
            written.add((int(mailing), int(delivery)))
    return written


def _settle(session: Session, ids: Sequence[int], status: DeliveryStatus, error: str | None) -> int:
    done = 0
    for chunk in _chunks(ids):
        result = session.connection().execute(
            update(Delivery)
            .where(Delivery.id.in_(chunk), Delivery.status == DeliveryStatus.UNKNOWN)
            .values(
                status=status, error=error, lease_until=None, updated_at=dt.datetime.now(dt.UTC)
            )
            .execution_options(preserve_rowcount=True)
        )
        done += result.rowcount
    return done


def reconcile(
    session: Session,
    now: dt.datetime,
    *,
    outbox: Path | None = None,
    give_up: dt.timedelta = GIVE_UP,
) -> Reconciled:
    """Settle what can be settled of the ``unknown`` deliveries; the caller commits."""
    report = Reconciled()
    in_doubt = in_open_batches(session, Delivery.status == DeliveryStatus.UNKNOWN)  # only there
    rows = session.execute(
        select(Delivery.id, Delivery.mailing_id, Delivery.updated_at).where(
            Delivery.id.in_(in_doubt)
        )
    ).all()
    if not rows:
        return report
    seen = _evidence(session, [r.id for r in rows])
    report.accepted = _settle(
        session, [d for d, left in seen.items() if left], DeliveryStatus.ACCEPTED, None
    )
    report.failed = _settle(
        session,
        [d for d, left in seen.items() if not left],
        DeliveryStatus.FAILED,
        "rejected by the provider",
    )
    rest = [r for r in rows if r.id not in seen]
    if outbox is not None:
        written = _journal(outbox)
        on_disk = [
            r.id
            for r in rest
            if (r.mailing_id, r.id) in written
            or (outbox / str(r.mailing_id) / f"{r.id}.eml").exists()
        ]
        never = [r for r in rest if r.id not in set(on_disk)]
        report.accepted += _settle(session, on_disk, DeliveryStatus.ACCEPTED, None)
        report.resent = _settle(session, [r.id for r in never], DeliveryStatus.PENDING, None)
        session.execute(
            update(Mailing)
            .where(
                Mailing.id.in_(sorted({r.mailing_id for r in never})),
                Mailing.status == MailingStatus.SENT,
            )
            .values(status=MailingStatus.QUEUED, updated_at=now)
        )
        return report
    cutoff = now - give_up
    old = [r.id for r in rest if _utc(r.updated_at) < cutoff]
    report.dead = _settle(
        session, old, DeliveryStatus.DEAD, DEAD_REASON.format(days=give_up.days or 1)
    )
    report.waiting = len(rest) - report.dead
    return report


def _utc(at: dt.datetime) -> dt.datetime:
    return at if at.tzinfo else at.replace(tzinfo=dt.UTC)
