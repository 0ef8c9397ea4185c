"""Unknown deliveries are settled from events or the outbox journal, never by a blind resend."""

from __future__ import annotations

import datetime as dt
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
from jvmail.dispatch.pipeline import dispatch, send_batch
from jvmail.dispatch.reconcile import reconcile
from jvmail.providers.outbox import OutboxProvider
from tests.dispatch.conftest import Hub

NOW = dt.datetime(2026, 12, 2, 9, tzinfo=dt.UTC)


def _sent(session: Session, hub: Hub, outbox: Path) -> list[int]:
    for bounds in dispatch(session, hub.mailing.id, batch_size=100):
        send_batch(session, OutboxProvider(outbox), hub.mailing.id, bounds)
    return list(
        session.scalars(
            select(Delivery.id).where(Delivery.mailing_id == hub.mailing.id).order_by(Delivery.id)
        )
    )


def _make_unknown(session: Session, ids: list[int], at: dt.datetime) -> None:
    session.execute(
        update(Delivery)
        .where(Delivery.id.in_(ids))
        .values(status=DeliveryStatus.UNKNOWN, updated_at=at)
    )
    session.commit()


def _statuses(session: Session, ids: list[int]) -> list[DeliveryStatus]:
    session.expire_all()
    return [session.get(Delivery, d).status for d in ids]  # type: ignore[union-attr]


def _event(session: Session, delivery: int, kind: EventType, n: int) -> None:
    session.add(
        TrackingEvent(
            delivery_id=delivery,
            type=kind,
            provider="sendgrid",
            provider_event_id=f"e{n}",
            occurred_at=NOW,
            raw={},
        )
    )


def test_events_settle_unknown_rows_and_the_rest_wait_then_die(
    session: Session, hub: Hub, tmp_path: Path
) -> None:
    ids = _sent(session, hub, tmp_path)[:4]
    _make_unknown(session, ids[:3], NOW - dt.timedelta(hours=2))
    _make_unknown(session, ids[3:], NOW - dt.timedelta(days=4))
    _event(session, ids[0], EventType.DELIVERED, 1)  # arrived while the row was in flight
    _event(session, ids[1], EventType.REJECTED, 2)
    _event(session, ids[1], EventType.CONVERTED, 3)  # says nothing about the send
    session.commit()
    done = reconcile(session, NOW)
    session.commit()
    assert (done.accepted, done.failed, done.dead, done.waiting, done.resent) == (1, 1, 1, 1, 0)
    assert _statuses(session, ids) == [
        DeliveryStatus.ACCEPTED,
        DeliveryStatus.FAILED,
        DeliveryStatus.UNKNOWN,  # within the give-up period: a webhook may still come
        DeliveryStatus.DEAD,
    ]
    dead = session.get(Delivery, ids[3])
    assert dead is not None
    assert "not resent" in (dead.error or "")
    again = reconcile(session, NOW)
    assert (again.accepted, again.failed, again.dead, again.waiting) == (0, 0, 0, 1)


def test_the_outbox_journal_settles_what_was_written_and_requeues_what_was_not(
    session: Session, hub: Hub, tmp_path: Path
) -> None:
    ids = _sent(session, hub, tmp_path)
    assert session.get(Mailing, hub.mailing.id).status == MailingStatus.SENT  # type: ignore[union-attr]
    journal = tmp_path / "journal.log"
    lines = journal.read_text().splitlines()
    # A crash: the last delivery's line never reached the journal, but its file did; the one
    # before it reached neither (it was never written).
    kept = [line for line in lines if not line.endswith((f" {ids[-1]}", f" {ids[-2]}"))]
    journal.write_text("".join(f"{line}\n" for line in kept))
    (tmp_path / str(hub.mailing.id) / f"{ids[-2]}.eml").unlink()
    _make_unknown(session, ids[-3:], NOW - dt.timedelta(days=10))
    done = reconcile(session, NOW, outbox=tmp_path)
    session.commit()
    assert (done.accepted, done.resent, done.dead) == (2, 1, 0)
    assert _statuses(session, ids[-3:]) == [
        DeliveryStatus.ACCEPTED,
        DeliveryStatus.PENDING,
        DeliveryStatus.ACCEPTED,
    ]
    assert session.get(Mailing, hub.mailing.id).status == MailingStatus.QUEUED  # type: ignore[union-attr]
