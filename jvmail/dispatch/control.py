"""Pause, resume and cancel mailings, at any time.

* **pause**: a mailing waiting or being sent stops: no batch is claimed for it any more (the
  claim itself checks, so a pause committed before a claim is honoured by it). Batches already
  handed to the provider finish.
* **resume**: a paused mailing goes on where it stopped: only deliveries not yet sent go out
  (the next tick dispatches it, or relays its batches). One paused before it was dispatched
  waits again for its sender's approval when the sender reviews mailings and had not approved.
  A failed mailing (a broken template, a missing secret) is resumed the same way once the
  cause is fixed: its deliveries that failed with it are pending again; those the provider
  refused, each for its own reason, stay failed.
* **cancel**: the mailing will not be sent: its deliveries not yet handed over end ``failed``
  with the reason, and if nothing went out its expected value leaves the projected balances (a
  ``correction`` entry, as for a declined mailing). A cancelled mailing is not a missed
  commitment. A failed mailing can be cancelled too, to take its value off the balances.

Each raises :class:`~jvmail.errors.UsageError` before changing anything when an id is unknown
or its mailing cannot take that step. Nothing here commits.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable

from sqlalchemy import select
from sqlalchemy.orm import Session

from jvmail.db.models import (
    Delivery,
    DeliveryStatus,
    LedgerKind,
    Mailing,
    MailingStatus,
    Partner,
)
from jvmail.dispatch.deliveries import any_row, fail_unsent, unfail
from jvmail.dispatch.outbox import dispatched, leftovers
from jvmail.dispatch.relay import rewind
from jvmail.ledger import post
from jvmail.ledger.book import load_entries
from jvmail.ledger.postings import effective_values
from jvmail.mailings import MailingRow, mailings_in, rows_of

__all__ = ["CANCELLABLE", "PAUSABLE", "cancel", "pause", "resume"]

PAUSABLE = (
    MailingStatus.PLANNED,
    MailingStatus.APPROVED,
    MailingStatus.AWAITING_APPROVAL,
    MailingStatus.QUEUED,
    MailingStatus.SENDING,
)
# A failed mailing can be cancelled (its expected value then leaves the balances too), or
# resumed once its cause (a template, a secret) is fixed.
CANCELLABLE = (*PAUSABLE, MailingStatus.PAUSED, MailingStatus.FAILED)
RESUMABLE = (MailingStatus.PAUSED, MailingStatus.FAILED)


def pause(session: Session, ids: Iterable[int], now: dt.datetime) -> list[MailingRow]:
    """Pause the mailings; one paused already stays as it is (with its own reason)."""
    mailings = mailings_in(
        session,
        ids,
        (*PAUSABLE, MailingStatus.PAUSED),
        verb="pause",
        what="waiting, being sent or paused",
    )
    for m in mailings:
        if m.status is MailingStatus.PAUSED:
            continue
        m.status, m.updated_at = MailingStatus.PAUSED, now
        m.error = "paused by the coordinator"
    session.flush()
    return rows_of(session, mailings)


def resume(session: Session, ids: Iterable[int], now: dt.datetime) -> list[MailingRow]:
    mailings = mailings_in(
        session, ids, RESUMABLE, verb="resume", what="paused or failed (once the cause is fixed)"
    )
    for m in mailings:
        if m.status is MailingStatus.FAILED:
            session.execute(unfail(m.id, m.error or "the mailing failed", now))
        if dispatched(session, m.id):
            m.status = MailingStatus.QUEUED
            session.execute(rewind(m.id))
        else:
            m.status = _waiting(session, m)
        m.error, m.updated_at = None, now
    session.flush()
    return rows_of(session, mailings)


def _waiting(session: Session, m: Mailing) -> MailingStatus:
    """Where a paused mailing that was never dispatched goes back to: approved when its sender
    approved it; awaiting approval when its sender reviews mailings and has not yet (a pause
    is no way around the review); else planned."""
    if m.reviewed_at:
        return MailingStatus.APPROVED
    sender = session.get(Partner, m.sender_id)
    if sender is not None and sender.approve_mailings:
        return MailingStatus.AWAITING_APPROVAL
    return MailingStatus.PLANNED


def cancel(
    session: Session, ids: Iterable[int], now: dt.datetime, reason: str = ""
) -> list[MailingRow]:
    mailings = mailings_in(
        session, ids, CANCELLABLE, verb="cancel", what="waiting, being sent, paused or failed"
    )
    values = effective_values(load_entries(session, [m.id for m in mailings]))
    why = f"mailing cancelled: {reason}" if reason else "mailing cancelled"
    for m in mailings:
        m.status, m.error, m.updated_at = MailingStatus.CANCELLED, why[:1000], now
        if not dispatched(session, m.id):
            # Rows a dispatcher that died half way left: never sent, and not to stand in the
            # way of the sender's other mailings of the promotion (one message per address).
            session.execute(leftovers(m.id))
        else:
            session.execute(fail_unsent(m.id, why, now))
        # Gone out, or maybe: handed to the provider and not yet settled (the first found).
        went = session.scalar(
            select(
                any_row(
                    Delivery.mailing_id == m.id,
                    Delivery.status.in_(
                        (DeliveryStatus.ACCEPTED, DeliveryStatus.SENDING, DeliveryStatus.UNKNOWN)
                    ),
                )
            )
        )
        current = values[m.id].value if m.id in values else 0.0
        if not went and current:
            sender = session.get(Partner, m.sender_id)
            assert sender is not None, "a mailing always has a sender"
            post(
                session,
                mailing=m,
                giver=sender,
                kind=LedgerKind.CORRECTION,
                value=-current,
                note=why,
            )
    session.flush()
    return rows_of(session, mailings)
