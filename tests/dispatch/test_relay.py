"""The tick relays only what is lost, on SQLite and PostgreSQL.

Two queued mailings of one sender, dispatched ten minutes ago in batches of 5: the first is
sending (a worker just claimed one of its batches), the second has not moved since. The tick's
messages are read off the in-process broker's queue.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import dramatiq
import pytest
from dramatiq.brokers.stub import StubBroker
from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from jvmail.db.models import Delivery, DeliveryBatch
from jvmail.dispatch.actors import QUEUE, Actors, Runtime, declare
from jvmail.dispatch.control import pause, resume
from jvmail.dispatch.deliveries import claim
from jvmail.dispatch.limits import account_key
from jvmail.dispatch.pipeline import dispatch, send_batch
from tests.dispatch.conftest import Hub, second_mailing
from tests.dispatch.test_pipeline import Recording

AGO = dt.timedelta(minutes=10)
RELAY_AFTER = dt.timedelta(minutes=2)


@dataclass
class Relay:
    session: Session
    runtime: Runtime
    provider: Recording
    broker: StubBroker
    actors: Actors
    sending: int  # the mailing whose messages flow
    stalled: int  # the one whose messages were lost
    batches: dict[int, list[tuple[int, int]]]  # mailing -> its batches
    now: dt.datetime

    def tick(self, at: dt.datetime | None = None) -> list[tuple[int, int, int]]:
        """Run one tick at ``at`` (default: now); the batches it enqueued."""
        self.session.rollback()  # ends the test's read transaction: SQLite's WAL keeps one
        self.runtime.now = lambda: at or self.now
        self.actors.tick.fn(None)
        self.session.rollback()  # ... and a fresh snapshot after the tick's commit
        queue = self.broker.queues[QUEUE]
        messages = [dramatiq.Message.decode(queue.get_nowait()) for _ in range(queue.qsize())]
        assert {m.actor_name for m in messages} <= {"jv_send"}
        return [(m.args[0], m.args[1], m.args[2]) for m in messages]

    def of(self, mailing_id: int, *picked: int) -> list[tuple[int, int, int]]:
        """The batches of ``mailing_id`` (those at ``picked`` positions, or all)."""
        bounds = self.batches[mailing_id]
        chosen = [bounds[n] for n in picked] if picked else bounds
        return [(mailing_id, lo, hi) for lo, hi in chosen]


@pytest.fixture
def relay(session: Session, hub: Hub, db_url: str, tmp_path: Path) -> Iterator[Relay]:
    other = second_mailing(session, hub)
    batches = {m: dispatch(session, m, 5) for m in (hub.mailing.id, other.id)}
    then = dt.datetime.now(dt.UTC) - AGO  # what dispatch stamped, ten minutes back
    session.execute(update(DeliveryBatch).values(enqueued_at=then))
    session.execute(update(Delivery).values(updated_at=then))
    session.commit()
    provider = Recording(tmp_path)
    report = send_batch(session, provider, hub.mailing.id, batches[hub.mailing.id][0])
    assert report.sent == 5  # a worker took the first mailing's first batch just now
    runtime = Runtime(db_url, lambda _: provider, relay_after=RELAY_AFTER, batch=5)
    broker = StubBroker()
    try:
        yield Relay(
            session,
            runtime,
            provider,
            broker,
            declare(broker, runtime),
            hub.mailing.id,
            other.id,
            batches,
            dt.datetime.now(dt.UTC),
        )
    finally:
        runtime.close()
        broker.close()


def test_a_mailing_sending_normally_is_not_relayed_while_a_stalled_one_is(relay: Relay) -> None:
    assert len(relay.of(relay.sending)) == 5
    assert relay.tick() == relay.of(relay.stalled)  # both of its batches, once
    assert relay.tick() == []  # relayed just now: not again within relay_after
    # Nothing moved for longer than relay_after: the first mailing's messages are lost too
    # (its first batch is done), and the second's relayed ones were lost again.
    later = relay.now + RELAY_AFTER + dt.timedelta(seconds=1)
    assert relay.tick(later) == relay.of(relay.sending, 1, 2, 3, 4) + relay.of(relay.stalled)
    assert relay.tick(later) == []


def test_progress_in_any_batch_keeps_the_whole_mailing_from_being_relayed(relay: Relay) -> None:
    # The stalled mailing's messages were enqueued ...
    assert relay.tick() == relay.of(relay.stalled)
    relay.session.execute(  # ... long ago
        update(DeliveryBatch)
        .where(DeliveryBatch.mailing_id == relay.stalled)
        .values(enqueued_at=relay.now - AGO)
    )
    relay.session.commit()
    assert relay.tick() == relay.of(relay.stalled)  # lost again: relayed again
    second = relay.batches[relay.stalled][1]
    assert send_batch(relay.session, relay.provider, relay.stalled, second).sent == 1
    relay.session.execute(  # ... long ago again; but its second batch was just claimed
        update(DeliveryBatch)
        .where(DeliveryBatch.mailing_id == relay.stalled)
        .values(enqueued_at=relay.now - AGO)
    )
    relay.session.commit()
    assert relay.tick() == []


def test_rows_held_under_a_live_lease_are_progress_until_the_lease_ends(relay: Relay) -> None:
    # A worker holds the stalled mailing's first batch (a long provider call): not relayed...
    held = claim(
        relay.session,
        relay.stalled,
        relay.batches[relay.stalled][0],
        lease=dt.timedelta(minutes=10),
        limit=5,
    )
    relay.session.execute(  # ... claimed long ago
        update(DeliveryBatch)
        .where(DeliveryBatch.mailing_id == relay.stalled)
        .values(claimed_at=relay.now - AGO)
    )
    relay.session.commit()
    assert len(held) == 5
    assert relay.tick() == []
    # ... until its lease ends without an answer: its worker died; the batch is claimable.
    after = relay.now + dt.timedelta(minutes=11)
    assert relay.tick(after) == relay.of(relay.sending, 1, 2, 3, 4) + relay.of(relay.stalled)


def test_a_held_account_is_not_relayed_until_its_hold_ends(relay: Relay, hub: Hub) -> None:
    # Its batches wait out the hold in the broker's delay queue (dramatiq's retry).
    ends = relay.now + dt.timedelta(minutes=5)
    key = account_key(hub.sender.id)
    relay.runtime.limiter.hold(key, ends.timestamp(), now=relay.now.timestamp())
    assert relay.tick() == []
    assert relay.tick(ends + dt.timedelta(seconds=1)) == relay.of(
        relay.sending, 1, 2, 3, 4
    ) + relay.of(relay.stalled)


def test_a_mailing_dispatched_without_batch_rows_has_them_recorded_and_relayed(
    relay: Relay,
) -> None:
    relay.session.execute(delete(DeliveryBatch).where(DeliveryBatch.mailing_id == relay.stalled))
    relay.session.commit()
    assert relay.tick() == relay.of(relay.stalled)
    stamps = relay.session.scalars(
        select(DeliveryBatch.enqueued_at).where(DeliveryBatch.mailing_id == relay.stalled)
    ).all()
    assert len(stamps) == 2
    assert relay.tick() == []


def test_a_resumed_mailing_is_relayed_at_the_next_tick(relay: Relay) -> None:
    # Paused just after a worker took its first batch: the messages of the others were
    # dropped while it stood still. Once resumed, the next tick sends them, not relay_after on.
    pause(relay.session, [relay.sending], relay.now)
    relay.session.commit()
    assert relay.tick() == relay.of(relay.stalled)  # the paused one: nothing
    resume(relay.session, [relay.sending], relay.now)
    relay.session.commit()
    assert relay.tick() == relay.of(relay.sending, 1, 2, 3, 4)
    assert relay.tick() == []  # relayed once: not again within relay_after
