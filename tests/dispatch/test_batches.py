"""Open batches: where the tick looks for ended leases and rows in doubt, and heap-only updates."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from sqlalchemy import func, select, text, update
from sqlalchemy.orm import Session

from jvmail.db import make_engine, make_sessionmaker, upgrade
from jvmail.db.models import Delivery, DeliveryBatch, DeliveryStatus, SubscriberStatus
from jvmail.dispatch.deliveries import (
    Outcome,
    claim,
    claimed,
    close_batches,
    expire,
    has_rows,
    record,
    recorded,
    start,
    tally,
    unfinished,
)
from jvmail.dispatch.pipeline import dispatch, finish_settled, send_batch
from jvmail.dispatch.reconcile import reconcile
from jvmail.providers.outbox import OutboxProvider
from tests.dispatch.conftest import GONE, LEASE, Hub, build_hub, set_status


def _open(session: Session, mailing_id: int) -> dict[int, bool]:
    session.expire_all()
    query = select(DeliveryBatch.lo, DeliveryBatch.open).where(
        DeliveryBatch.mailing_id == mailing_id
    )
    return {int(lo): bool(is_open) for lo, is_open in session.execute(query)}


def test_a_claim_opens_its_batch_and_the_tick_closes_it_once_settled(
    session: Session, hub: Hub, tmp_path: Path
) -> None:
    first, second, third = dispatch(session, hub.mailing.id, batch_size=10)
    assert _open(session, hub.mailing.id) == {first[0]: False, second[0]: False, third[0]: False}
    report = send_batch(session, OutboxProvider(tmp_path), hub.mailing.id, first)
    assert report.sent == 10
    held = claim(session, hub.mailing.id, second, lease=LEASE, limit=10)
    session.commit()
    assert len(held) == 10
    assert _open(session, hub.mailing.id) == {first[0]: True, second[0]: True, third[0]: False}
    # The first batch is all accepted: closed. The second is claimed: it stays open.
    assert close_batches(session) == 1
    assert _open(session, hub.mailing.id) == {first[0]: False, second[0]: True, third[0]: False}
    start(session, held, lease=LEASE)
    record(session, [Outcome(c.delivery_id, c.fence, DeliveryStatus.ACCEPTED) for c in held])
    session.commit()
    assert close_batches(session) == 1
    assert _open(session, hub.mailing.id) == {first[0]: False, second[0]: False, third[0]: False}
    assert close_batches(session) == 0


def test_expire_and_reconcile_read_open_batches_only(session: Session, hub: Hub) -> None:
    (whole,) = dispatch(session, hub.mailing.id, batch_size=100)
    held = start(session, claim(session, hub.mailing.id, whole, lease=GONE, limit=5), lease=GONE)
    session.commit()
    assert close_batches(session) == 0  # rows not yet final keep it open
    assert expire(session) == 5
    session.commit()
    assert close_batches(session) == 0  # rows in doubt keep it open too
    # A batch closed by mistake would hide its rows from expire and reconcile: that is what
    # the open flag is for, so a closed batch's rows are not read at all.
    session.execute(update(DeliveryBatch).values(open=False))
    session.commit()
    now = dt.datetime.now(dt.UTC) + dt.timedelta(days=30)  # past giving up on every row
    assert reconcile(session, now).dead == 0
    session.execute(update(DeliveryBatch).values(open=True))
    session.commit()
    assert reconcile(session, now).dead == 5
    session.commit()
    assert {c.delivery_id for c in held} == set(
        session.scalars(select(Delivery.id).where(Delivery.status == DeliveryStatus.DEAD))
    )
    assert close_batches(session) == 0  # its other rows are still pending: open until final


def test_unfinished_and_finish_settled_follow_the_batches(
    session: Session, hub: Hub, tmp_path: Path
) -> None:
    bounds = dispatch(session, hub.mailing.id, batch_size=10)
    assert unfinished(session, hub.mailing.id)
    for batch in bounds[:-1]:
        send_batch(session, OutboxProvider(tmp_path), hub.mailing.id, batch)
    # Only the last batch's rows are left: found, wherever they are among the batches.
    assert unfinished(session, hub.mailing.id)
    assert finish_settled(session) == 0
    pending = Delivery.status == DeliveryStatus.PENDING
    assert has_rows(session, hub.mailing.id, pending)
    assert not has_rows(session, hub.mailing.id, pending, open_only=True)
    held = start(
        session, claim(session, hub.mailing.id, bounds[-1], lease=LEASE, limit=100), lease=LEASE
    )
    session.commit()
    assert unfinished(session, hub.mailing.id)  # in flight
    record(session, [Outcome(c.delivery_id, c.fence, DeliveryStatus.ACCEPTED) for c in held])
    session.commit()
    assert not unfinished(session, hub.mailing.id)
    assert finish_settled(session) == 1


def test_a_claim_rewrites_rows_in_their_pages(pg_url: str) -> None:
    """No index names a column a send changes, and the fill factor leaves room: PostgreSQL
    counts the updates as heap-only (no index entry written). Counted within the claim's
    transaction (pg_stat_xact_user_tables), where the first update of fresh rows always finds
    room in its page."""
    engine = make_engine(pg_url)
    upgrade(engine)
    try:
        with make_sessionmaker(engine)() as session:
            hub = build_hub(session)
            (whole,) = dispatch(session, hub.mailing.id, batch_size=100)
            held = claim(session, hub.mailing.id, whole, lease=LEASE, limit=100)
            counts = session.execute(
                text(
                    "SELECT n_tup_upd, n_tup_hot_upd FROM pg_stat_xact_user_tables"
                    " WHERE relid = 'delivery'::regclass"
                )
            ).one()
            assert len(held) == 25
            assert tuple(counts) == (25, 25)
    finally:
        engine.dispose()


def test_a_claim_wider_than_its_recorded_batch_widens_it(session: Session, hub: Hub) -> None:
    (lo, hi), _, _ = dispatch(session, hub.mailing.id, batch_size=10)
    held = claim(session, hub.mailing.id, (lo, hi + 5), lease=LEASE, limit=15)
    session.commit()
    assert len(held) == 15
    recorded = session.scalar(
        select(DeliveryBatch.hi).where(
            DeliveryBatch.mailing_id == hub.mailing.id, DeliveryBatch.lo == lo
        )
    )
    # Every row the claim took is within an open batch's range: expire would find it.
    assert recorded == hi + 5


def _tallies(session: Session, mailing_id: int, lo: int) -> tuple[int, int]:
    session.expire_all()
    row = session.execute(
        select(DeliveryBatch.accepted, DeliveryBatch.refused).where(
            DeliveryBatch.mailing_id == mailing_id, DeliveryBatch.lo == lo
        )
    ).one()
    return int(row.accepted), int(row.refused)


def test_the_tallies_add_what_was_stored_once(session: Session, hub: Hub) -> None:
    """Row by row (answers that alternate) and by runs (all alike), a batch's tallies add what
    its workers stored, and a stale worker's outcomes, stored by nobody, add nothing."""
    (whole,) = dispatch(session, hub.mailing.id, batch_size=100)
    set_status(session, hub.lists[0], "reader3@mail.example", SubscriberStatus.UNSUBSCRIBED)
    session.commit()
    got = claimed(session, hub.mailing.id, whole, lease=LEASE, limit=11)
    session.commit()
    assert (len(got.held), got.suppressed) == (10, 1)
    going = start(session, got.held, lease=LEASE)
    answers = [
        Outcome(c.delivery_id, c.fence, DeliveryStatus.FAILED if n % 2 else DeliveryStatus.ACCEPTED)
        for n, c in enumerate(going)
    ]
    stored = recorded(session, answers, held=going)
    assert stored == {DeliveryStatus.ACCEPTED: 5, DeliveryStatus.FAILED: 5}
    tally(session, hub.mailing.id, whole[0], stored)
    session.commit()
    assert _tallies(session, hub.mailing.id, whole[0]) == (5, 5)
    again = recorded(session, answers, held=going)  # those rows are final: nothing stored
    tally(session, hub.mailing.id, whole[0], again)
    session.commit()
    assert sum(again.values()) == 0
    rest = start(
        session, claim(session, hub.mailing.id, whole, lease=LEASE, limit=100), lease=LEASE
    )
    alike = [Outcome(c.delivery_id, c.fence, DeliveryStatus.ACCEPTED, "m1") for c in rest]
    tally(session, hub.mailing.id, whole[0], recorded(session, alike, held=rest))
    session.commit()
    accepted = session.scalar(
        select(func.count()).where(Delivery.status == DeliveryStatus.ACCEPTED)
    )
    assert _tallies(session, hub.mailing.id, whole[0]) == (accepted, 5) == (19, 5)
