"""The outbox of Deliveries on SQLite and PostgreSQL: materialize, claim, start, record, expire."""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
from sqlalchemy import Engine, event, func, select, text
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from jvmail.db import make_engine, make_sessionmaker, upgrade
from jvmail.db.models import (
    Delivery,
    DeliveryStatus,
    Mailing,
    MailingStatus,
    Subscriber,
    SubscriberStatus,
    Suppression,
    SuppressionReason,
)
from jvmail.dispatch import outbox, pipeline
from jvmail.dispatch.deliveries import (
    Claimed,
    Outcome,
    batch_bounds,
    claim,
    expire,
    record,
    release,
    start,
    started,
)
from jvmail.dispatch.outbox import Made, materialize
from jvmail.dispatch.pipeline import dispatch
from jvmail.dispatch.relay import relay
from tests.dispatch.conftest import (
    GONE,
    LEASE,
    Hub,
    build_hub,
    mailing,
    set_status,
    wait_until_blocked,
)


def _made(session: Session, mailing_id: int, made: Made | None) -> int:
    """How many rows ``made`` says were made; on PostgreSQL it names their lowest and highest
    ids, which are the mailing's."""
    assert made is not None
    ids = session.scalars(select(Delivery.id).where(Delivery.mailing_id == mailing_id)).all()
    if session.get_bind().dialect.name == "postgresql":
        assert (made.first, made.last) == (min(ids), max(ids))
    return made.rows


def _statuses(session: Session, mailing_id: int) -> dict[str, int]:
    session.expire_all()
    rows = session.execute(
        select(Delivery.status, func.count())
        .where(Delivery.mailing_id == mailing_id)
        .group_by(Delivery.status)
    ).all()
    return {str(s): n for s, n in rows}


def _emails(session: Session, mailing_id: int) -> list[str]:
    return list(
        session.scalars(
            select(Subscriber.email)
            .join(Delivery, Delivery.subscriber_id == Subscriber.id)
            .where(Delivery.mailing_id == mailing_id)
            .order_by(Subscriber.email)
        )
    )


@pytest.fixture(params=[1, 3], ids=["one-statement", "three-parts"])
def parts(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> int:
    """Materialize in one statement, or (on PostgreSQL) in three parts at once: the hub's lists
    are small, so every span is allowed a part."""
    monkeypatch.setattr(outbox, "PART_SPAN", 1)
    return int(request.param)


def _count_parts(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int]]:
    spans: list[tuple[int, int]] = []
    real = outbox._part

    def part(engine: Engine, target: outbox.Target, span: tuple[int, int]) -> Made:
        spans.append(span)
        return real(engine, target, span)

    monkeypatch.setattr(outbox, "_part", part)
    return spans


def test_materialize_takes_subscribed_addresses_minus_suppressions_once(
    session: Session, hub: Hub, parts: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    spans = _count_parts(monkeypatch)
    main = hub.lists[0]
    set_status(session, main, "reader1@mail.example", SubscriberStatus.UNSUBSCRIBED)
    session.add(
        Suppression(
            partner_id=hub.sender.id, email="reader2@mail.example", reason=SuppressionReason.BOUNCED
        )
    )
    sub = session.query(Subscriber).filter_by(list_id=main.id, email="reader3@mail.example").one()
    sub.archived_at = dt.datetime.now(dt.UTC)
    session.commit()
    assert _made(session, hub.mailing.id, materialize(session, hub.mailing.id, parts)) == 22
    session.commit()
    parallel = parts > 1 and session.get_bind().dialect.name == "postgresql"
    assert len(spans) == (3 if parallel else 0)
    emails = _emails(session, hub.mailing.id)
    assert len(emails) == 22
    assert not {"reader1@mail.example", "reader2@mail.example", "reader3@mail.example"} & set(
        emails
    )
    assert session.get(Mailing, hub.mailing.id).status == MailingStatus.QUEUED  # type: ignore[union-attr]
    # Taken once: a second dispatcher finds nothing to do and adds nothing.
    assert materialize(session, hub.mailing.id, parts) is None
    assert _statuses(session, hub.mailing.id) == {"pending": 22}


def test_one_message_per_address_across_the_owners_lists(
    session: Session, hub: Hub, parts: int
) -> None:
    assert _made(session, hub.mailing.id, materialize(session, hub.mailing.id, parts)) == 25
    second = mailing(session, hub.promotion, hub.lists[1])
    session.commit()
    # The extra list shares five addresses with the main one: only its own address is new.
    assert _made(session, second.id, materialize(session, second.id, parts)) == 1
    session.commit()
    assert _emails(session, second.id) == ["solo@mail.example"]


def test_two_lists_mailings_of_one_promotion_made_at_once_share_no_address(
    pg_sessions: sessionmaker[Session], monkeypatch: pytest.MonkeyPatch, parts: int
) -> None:
    # Both of the sender's lists get the promotion, both due at once, each dispatched by its
    # own worker: the second must wait for the first's rows, then leave out their addresses.
    with pg_sessions() as first, pg_sessions() as second, pg_sessions() as watch:
        built = build_hub(first)
        extra = mailing(first, built.promotion, built.lists[1])
        first.commit()
        assert _made(first, built.mailing.id, materialize(first, built.mailing.id, parts)) == 25
        pid = second.scalar(text("SELECT pg_backend_pid()"))
        with ThreadPoolExecutor(1) as pool:
            making = pool.submit(materialize, second, extra.id, parts)
            wait_until_blocked(watch, pid, making, "the second mailing's rows were made at once")
            first.commit()
            made = making.result()
        second.commit()
        assert _made(second, extra.id, made) == 1
        assert _emails(watch, extra.id) == ["solo@mail.example"]


def test_a_mailing_not_due_is_not_materialized(session: Session, hub: Hub) -> None:
    hub.mailing.status = MailingStatus.AWAITING_APPROVAL
    session.commit()
    assert materialize(session, hub.mailing.id) is None
    assert _statuses(session, hub.mailing.id) == {}


def test_rows_a_dead_attempt_left_are_replaced_not_doubled(
    session: Session, hub: Hub, parts: int
) -> None:
    # A dispatcher that died after its parts committed, before it took the mailing: rows of a
    # mailing still planned, in no batch (one of them for a reader who has left since).
    main = hub.lists[0]
    subscribers = session.scalars(select(Subscriber).where(Subscriber.list_id == main.id)).all()
    session.add_all(
        Delivery(mailing_id=hub.mailing.id, subscriber_id=s.id, updated_at=dt.datetime.now(dt.UTC))
        for s in subscribers[:7]
    )
    session.commit()
    set_status(session, main, subscribers[0].email, SubscriberStatus.UNSUBSCRIBED)
    session.commit()
    assert _made(session, hub.mailing.id, materialize(session, hub.mailing.id, parts)) == 24
    session.commit()
    emails = _emails(session, hub.mailing.id)
    assert len(emails) == len(set(emails)) == 24
    assert subscribers[0].email not in emails


@pytest.fixture
def pg_sessions(pg_url: str) -> Iterator[sessionmaker[Session]]:
    """Sessions on a PostgreSQL schema of the test's own, for tests of several connections at
    once (SQLite has one writer at a time)."""
    engine = make_engine(pg_url)
    upgrade(engine)
    yield make_sessionmaker(engine)
    engine.dispose()


def test_rows_that_went_further_than_pending_are_never_removed(
    session: Session, hub: Hub, parts: int
) -> None:
    # A waiting mailing with a row already sent (which no dispatcher leaves): the materialize
    # meets it on the unique key and fails, and removes nothing.
    main = hub.lists[0]
    first = session.scalars(select(Subscriber.id).where(Subscriber.list_id == main.id)).first()
    assert first is not None
    sent = Delivery(
        mailing_id=hub.mailing.id,
        subscriber_id=first,
        status=DeliveryStatus.ACCEPTED,
        updated_at=dt.datetime.now(dt.UTC),
    )
    session.add(sent)
    session.commit()
    with pytest.raises(IntegrityError):
        materialize(session, hub.mailing.id, parts)
    session.rollback()
    assert _statuses(session, hub.mailing.id) == {"accepted": 1}
    assert session.get(Mailing, hub.mailing.id).status == MailingStatus.PLANNED  # type: ignore[union-attr]


def test_a_part_that_fails_leaves_the_mailing_waiting_and_no_rows(
    pg_sessions: sessionmaker[Session], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(outbox, "PART_SPAN", 1)
    real = outbox._part
    calls: list[tuple[int, int]] = []

    def part(engine: Engine, target: outbox.Target, span: tuple[int, int]) -> Made:
        calls.append(span)
        if len(calls) == 2:
            raise OperationalError("INSERT", {}, Exception("connection lost"))
        return real(engine, target, span)

    with pg_sessions() as session:
        built = build_hub(session)
        monkeypatch.setattr(outbox, "_part", part)
        with pytest.raises(OperationalError, match="connection lost"):
            materialize(session, built.mailing.id, 3)
        session.rollback()
        assert len(calls) == 3
        # The parts that committed were taken back; the mailing waits for the next attempt.
        assert _statuses(session, built.mailing.id) == {}
        status = session.scalar(select(Mailing.status).where(Mailing.id == built.mailing.id))
        assert status == MailingStatus.PLANNED
        monkeypatch.setattr(outbox, "_part", real)
        assert _made(session, built.mailing.id, materialize(session, built.mailing.id, 3)) == 25
        session.commit()
        assert _statuses(session, built.mailing.id) == {"pending": 25}


def test_the_hold_outlasts_a_servers_idle_in_transaction_timeout(
    pg_sessions: sessionmaker[Session], monkeypatch: pytest.MonkeyPatch
) -> None:
    # A server that ends transactions idle for 50 ms, and parts that take longer than that:
    # the dispatcher's hold, idle meanwhile, must survive to take the mailing.
    monkeypatch.setattr(outbox, "PART_SPAN", 1)
    real = outbox._in_parts

    def slow(engine: Engine, target: outbox.Target, spans: list[tuple[int, int]]) -> Made:
        time.sleep(0.3)
        return real(engine, target, spans)

    monkeypatch.setattr(outbox, "_in_parts", slow)
    with pg_sessions() as session:
        built = build_hub(session)
        session.execute(text("SET idle_in_transaction_session_timeout = 50"))
        assert _made(session, built.mailing.id, materialize(session, built.mailing.id, 3)) == 25
        session.commit()
        assert _statuses(session, built.mailing.id) == {"pending": 25}
        status = session.scalar(select(Mailing.status).where(Mailing.id == built.mailing.id))
        assert status == MailingStatus.QUEUED


def test_two_dispatchers_in_parts_make_the_rows_once(
    pg_sessions: sessionmaker[Session], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(outbox, "PART_SPAN", 1)

    def dispatcher(mailing_id: int) -> int | None:
        with pg_sessions() as session:
            made = materialize(session, mailing_id, 3)
            session.commit()
            return None if made is None else made.rows

    with pg_sessions() as session:
        built = build_hub(session)
    with ThreadPoolExecutor(2) as pool:
        made = list(pool.map(dispatcher, [built.mailing.id] * 2))
    # Whichever came second waited for the first's commit and found the mailing taken.
    assert sorted(made, key=lambda n: n is None) == [25, None]
    with pg_sessions() as session:
        assert _statuses(session, built.mailing.id) == {"pending": 25}


def test_batch_bounds_cover_every_unfinished_row_once(session: Session, hub: Hub) -> None:
    materialize(session, hub.mailing.id)
    session.commit()
    bounds = batch_bounds(session, hub.mailing.id, 10)
    ids = list(session.scalars(select(Delivery.id).where(Delivery.mailing_id == hub.mailing.id)))
    covered = [[i for i in ids if lo <= i <= hi] for lo, hi in bounds]
    assert [len(c) for c in covered] == [10, 10, 5]
    assert sorted(i for c in covered for i in c) == sorted(ids)


def test_dispatch_cuts_the_batches_batch_bounds_would_read(
    session: Session, hub: Hub, parts: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    read: list[int] = []
    real = pipeline.batch_bounds

    def reading(session: Session, mailing_id: int, size: int) -> list[tuple[int, int]]:
        read.append(mailing_id)
        return real(session, mailing_id, size)

    monkeypatch.setattr(pipeline, "batch_bounds", reading)
    bounds = pipeline.dispatch(session, hub.mailing.id, 10, parts)
    assert bounds == real(session, hub.mailing.id, 10)
    assert len(bounds) == 3
    # PostgreSQL reports the ids it made, one unbroken run here: nothing is read back.
    assert read == ([] if session.get_bind().dialect.name == "postgresql" else [hub.mailing.id])


def test_made_rows_are_cut_only_when_their_ids_are_one_run() -> None:
    assert Made(25, 101, 125).batches(10) == [(101, 110), (111, 120), (121, 125)]
    assert Made(20, 101, 120).batches(10) == [(101, 110), (111, 120)]
    assert Made(24, 101, 125).batches(10) is None  # another mailing's row among them
    assert Made(25).batches(10) is None  # ids not reported (SQLite)
    assert Made(0).batches(10) is None


def test_claims_are_disjoint_and_leases_protect_them(session: Session, hub: Hub) -> None:
    materialize(session, hub.mailing.id)
    session.commit()
    (whole,) = batch_bounds(session, hub.mailing.id, 100)
    first = claim(session, hub.mailing.id, whole, lease=LEASE, limit=10)
    session.commit()
    second = claim(session, hub.mailing.id, whole, lease=LEASE, limit=100)
    session.commit()
    assert len(first) == 10
    assert len(second) == 15
    assert not {c.delivery_id for c in first} & {c.delivery_id for c in second}
    # Everything is held under a live lease: nothing more to claim.
    assert claim(session, hub.mailing.id, whole, lease=LEASE, limit=100) == []


def test_a_worker_that_lost_its_lease_sends_nothing_and_records_nothing(
    session: Session, hub: Hub
) -> None:
    materialize(session, hub.mailing.id)
    session.commit()
    (whole,) = batch_bounds(session, hub.mailing.id, 100)
    stale = claim(session, hub.mailing.id, whole, lease=GONE, limit=3)
    session.commit()
    fresh = claim(session, hub.mailing.id, whole, lease=LEASE, limit=3)
    session.commit()
    assert [c.delivery_id for c in fresh] == [c.delivery_id for c in stale]
    # One fence per claim, a new one: the stale holder's fence matches none of the rows.
    assert len({c.fence for c in stale}) == len({c.fence for c in fresh}) == 1
    assert fresh[0].fence != stale[0].fence
    assert (
        start(session, stale, lease=LEASE) == []
    )  # the stale holder learns it before any provider call
    assert start(session, fresh, lease=LEASE) == fresh
    session.commit()
    late = [Outcome(c.delivery_id, c.fence, DeliveryStatus.ACCEPTED, "stale") for c in stale]
    assert record(session, late) == 0
    done = [Outcome(c.delivery_id, c.fence, DeliveryStatus.ACCEPTED, f"m{c.fence}") for c in fresh]
    assert record(session, done) == 3
    session.commit()
    assert _statuses(session, hub.mailing.id) == {"accepted": 3, "pending": 22}
    assert record(session, done) == 0  # recorded once: a replay changes nothing


def _two_readers_leave(session: Session, hub: Hub, how: SubscriberStatus) -> None:
    """reader4 lands on the owner's suppression list; reader5's status becomes ``how``."""
    session.add(
        Suppression(
            partner_id=hub.sender.id,
            email="reader4@mail.example",
            reason=SuppressionReason.UNSUBSCRIBED,
        )
    )
    set_status(session, hub.lists[0], "reader5@mail.example", how)
    session.commit()


def test_a_suppression_committed_before_the_claim_is_honoured(session: Session, hub: Hub) -> None:
    materialize(session, hub.mailing.id)
    session.commit()
    _two_readers_leave(session, hub, SubscriberStatus.COMPLAINED)
    (whole,) = batch_bounds(session, hub.mailing.id, 100)
    held = claim(session, hub.mailing.id, whole, lease=LEASE, limit=100)
    session.commit()
    assert len(held) == 23
    assert not {"reader4@mail.example", "reader5@mail.example"} & {c.email for c in held}
    assert _statuses(session, hub.mailing.id) == {"claimed": 23, "suppressed": 2}


def test_a_suppression_committed_after_the_claim_is_honoured_at_start(
    session: Session, hub: Hub
) -> None:
    # A claimed batch may wait for its account's pace before it goes out: a reader who
    # unsubscribes or complains meanwhile must not be sent to.
    materialize(session, hub.mailing.id)
    session.commit()
    (whole,) = batch_bounds(session, hub.mailing.id, 100)
    held = claim(session, hub.mailing.id, whole, lease=LEASE, limit=100)
    session.commit()
    assert len(held) == 25
    _two_readers_leave(session, hub, SubscriberStatus.UNSUBSCRIBED)
    moved = started(session, held, lease=LEASE)
    session.commit()
    assert moved.suppressed == 2
    assert len(moved.going) == 23
    assert not {"reader4@mail.example", "reader5@mail.example"} & {c.email for c in moved.going}
    assert _statuses(session, hub.mailing.id) == {"sending": 23, "suppressed": 2}
    attempts = session.scalars(
        select(Delivery.attempts).where(Delivery.status == DeliveryStatus.SUPPRESSED)
    ).all()
    assert attempts == [0, 0]  # never tried


def test_rows_in_flight_past_their_lease_become_unknown_never_pending(
    session: Session, hub: Hub
) -> None:
    materialize(session, hub.mailing.id)
    session.commit()
    (whole,) = batch_bounds(session, hub.mailing.id, 100)
    held = start(session, claim(session, hub.mailing.id, whole, lease=GONE, limit=4), lease=GONE)
    session.commit()
    assert len(held) == 4
    # In flight: even with the lease gone, nobody may claim them again.
    again = claim(session, hub.mailing.id, whole, lease=LEASE, limit=100)
    assert {c.delivery_id for c in held}.isdisjoint(c.delivery_id for c in again)
    session.commit()
    assert expire(session) == 4
    session.commit()
    late = [Outcome(c.delivery_id, c.fence, DeliveryStatus.ACCEPTED) for c in held]
    assert record(session, late) == 0  # the stale worker's late commit is refused
    assert _statuses(session, hub.mailing.id)["unknown"] == 4


def test_start_gives_the_rows_in_flight_a_lease_of_their_own(session: Session, hub: Hub) -> None:
    # The claim's lease ran out while the batch waited for its account's pace: the provider
    # call that follows gets a whole lease, or the tick would take its rows for lost mid-call.
    materialize(session, hub.mailing.id)
    session.commit()
    (whole,) = batch_bounds(session, hub.mailing.id, 100)
    held = start(session, claim(session, hub.mailing.id, whole, lease=GONE, limit=4), lease=LEASE)
    session.commit()
    assert len(held) == 4
    assert expire(session) == 0
    assert _statuses(session, hub.mailing.id) == {"sending": 4, "pending": 21}
    later = dt.datetime.now(dt.UTC) + LEASE + dt.timedelta(seconds=1)
    assert expire(session, later) == 4


@pytest.mark.parametrize("late", ["recorded", "released"])
def test_expire_passes_over_rows_a_worker_is_settling(
    pg_sessions: sessionmaker[Session], late: str
) -> None:
    # A worker past its lease stores its outcome (or gives its rows back), and has not yet
    # committed; it may be frozen there (SIGSTOP, a paused VM). The tick's expire must not
    # wait for it, which would hold up every mailing's relay until it wakes, and once the
    # worker commits, must leave the rows as the worker left them. (The lock timeout only
    # turns such a wait into a failure here.)
    with pg_sessions() as worker, pg_sessions() as tick:
        built = build_hub(worker)
        materialize(worker, built.mailing.id)
        worker.commit()
        (whole,) = batch_bounds(worker, built.mailing.id, 100)
        held = start(
            worker, claim(worker, built.mailing.id, whole, lease=GONE, limit=4), lease=GONE
        )
        worker.commit()
        if late == "recorded":
            outcomes = [Outcome(c.delivery_id, c.fence, DeliveryStatus.ACCEPTED) for c in held]
            assert record(worker, outcomes) == 4
        else:
            assert release(worker, held) == 4
        tick.execute(text("SET lock_timeout = '5s'"))
        assert expire(tick) == 0
        tick.commit()
        worker.commit()
        assert expire(tick) == 0
        tick.commit()
        left = {"accepted": 4, "pending": 21} if late == "recorded" else {"pending": 25}
        assert _statuses(tick, built.mailing.id) == left


def test_concurrent_claims_skip_each_others_rows(pg_sessions: sessionmaker[Session]) -> None:
    # PostgreSQL only: SQLite has one writer at a time, so its claims cannot overlap.
    with pg_sessions() as session:
        built = build_hub(session)
        materialize(session, built.mailing.id)
        session.commit()
        (whole,) = batch_bounds(session, built.mailing.id, 100)
    with pg_sessions() as a, pg_sessions() as b, ThreadPoolExecutor(1) as pool:
        mine = claim(a, built.mailing.id, whole, lease=LEASE, limit=10)  # not committed
        # The second claim passes over the first one's rows (it does not wait for them);
        # then it waits at the batch, which both claims stamp open, for the first's commit.
        later = pool.submit(claim, b, built.mailing.id, whole, lease=LEASE, limit=10)
        a.commit()
        theirs = later.result(timeout=60)
        assert len(mine) == len(theirs) == 10
        assert not {c.delivery_id for c in mine} & {c.delivery_id for c in theirs}
        b.commit()


def test_a_claim_stamps_one_new_fence_on_rows_whose_fences_differed(
    session: Session, hub: Hub
) -> None:
    materialize(session, hub.mailing.id)
    session.commit()
    (whole,) = batch_bounds(session, hub.mailing.id, 100)
    first = claim(session, hub.mailing.id, whole, lease=GONE, limit=3)
    session.commit()
    second = claim(session, hub.mailing.id, whole, lease=GONE, limit=5)
    session.commit()
    everything = claim(session, hub.mailing.id, whole, lease=LEASE, limit=100)
    session.commit()
    assert len(everything) == 25  # the two lapsed claims' rows, and the 17 never claimed
    (fence,) = {c.fence for c in everything}
    assert fence not in {first[0].fence, second[0].fence}
    stored = set(
        session.scalars(select(Delivery.fence).where(Delivery.mailing_id == hub.mailing.id))
    )
    assert stored == {fence}


def test_start_refuses_part_of_a_claim(session: Session, hub: Hub) -> None:
    materialize(session, hub.mailing.id)
    session.commit()
    (whole,) = batch_bounds(session, hub.mailing.id, 100)
    held = claim(session, hub.mailing.id, whole, lease=LEASE, limit=10)
    session.commit()
    with pytest.raises(ValueError, match="whole claims"):
        start(session, held[::2], lease=LEASE)  # the rows between would go out unsent
    session.rollback()
    assert _statuses(session, hub.mailing.id) == {"claimed": 10, "pending": 15}


def _updates(session: Session) -> list[tuple[str, bool]]:
    """(statement, executemany) of each UPDATE the session runs from now on."""
    seen: list[tuple[str, bool]] = []

    def note(_c: object, _cur: object, sql: str, _p: object, _ctx: object, many: bool) -> None:
        if sql.lstrip().upper().startswith("UPDATE"):
            seen.append((sql, many))

    event.listen(session.get_bind(), "before_cursor_execute", note)
    return seen


def _answers(held: list[Claimed]) -> list[Outcome]:
    """Two requests' answers (message ids m1, m2), one recipient refused in the second."""
    half = len(held) // 2
    return [Outcome(c.delivery_id, c.fence, DeliveryStatus.ACCEPTED, "m1") for c in held[:half]] + [
        Outcome(
            c.delivery_id,
            c.fence,
            DeliveryStatus.FAILED if n == 1 else DeliveryStatus.ACCEPTED,
            None if n == 1 else "m2",
            "mailbox full" if n == 1 else None,
        )
        for n, c in enumerate(held[half:])
    ]


def _rows(session: Session, held: list[Claimed]) -> list[tuple[object, ...]]:
    session.expire_all()
    return [
        tuple(row)
        for row in session.execute(
            select(
                Delivery.status, Delivery.provider_message_id, Delivery.error, Delivery.lease_until
            )
            .where(Delivery.id.in_([c.delivery_id for c in held]))
            .order_by(Delivery.id)
        )
    ]


def test_recording_a_whole_claim_by_ranges_stores_what_row_by_row_does(
    session: Session, hub: Hub
) -> None:
    materialize(session, hub.mailing.id)
    session.commit()
    (whole,) = batch_bounds(session, hub.mailing.id, 100)
    ranged = start(
        session, claim(session, hub.mailing.id, whole, lease=LEASE, limit=10), lease=LEASE
    )
    each = start(session, claim(session, hub.mailing.id, whole, lease=LEASE, limit=10), lease=LEASE)
    session.commit()
    updates = _updates(session)
    assert record(session, _answers(ranged), held=ranged) == 10
    # Four runs (m1; m2; the refusal; m2 again), one UPDATE each, none row by row.
    assert [many for _, many in updates] == [False] * 4
    assert record(session, _answers(each)) == 10
    session.commit()
    assert _rows(session, ranged) == _rows(session, each)
    assert _statuses(session, hub.mailing.id) == {"accepted": 18, "failed": 2, "pending": 5}


def test_outcomes_for_part_of_a_claim_touch_only_their_rows(session: Session, hub: Hub) -> None:
    materialize(session, hub.mailing.id)
    session.commit()
    (whole,) = batch_bounds(session, hub.mailing.id, 100)
    held = start(session, claim(session, hub.mailing.id, whole, lease=LEASE, limit=10), lease=LEASE)
    session.commit()
    some = [Outcome(c.delivery_id, c.fence, DeliveryStatus.ACCEPTED, "m1") for c in held[:4]]
    assert record(session, some, held=held) == 4
    session.commit()
    assert _statuses(session, hub.mailing.id) == {"accepted": 4, "sending": 6, "pending": 15}


def test_a_stale_claims_whole_record_is_refused(session: Session, hub: Hub) -> None:
    materialize(session, hub.mailing.id)
    session.commit()
    (whole,) = batch_bounds(session, hub.mailing.id, 100)
    stale = start(session, claim(session, hub.mailing.id, whole, lease=GONE, limit=5), lease=GONE)
    session.commit()
    assert expire(session) == 5  # the stale worker's lease ended mid-call: unknown
    session.commit()
    late = [Outcome(c.delivery_id, c.fence, DeliveryStatus.ACCEPTED, "m1") for c in stale]
    assert record(session, late, held=stale) == 0
    session.commit()
    assert _statuses(session, hub.mailing.id) == {"unknown": 5, "pending": 20}


def test_the_relay_passes_over_a_batch_a_frozen_worker_is_claiming(
    pg_sessions: sessionmaker[Session],
) -> None:
    # A worker stopped half way through claiming a batch of a mailing whose other batches'
    # messages were lost: the relay sends those and must not wait for the worker to wake.
    with pg_sessions() as frozen, pg_sessions() as tick:
        built = build_hub(frozen)
        first, second, third = dispatch(frozen, built.mailing.id, batch_size=10)
        assert len(claim(frozen, built.mailing.id, second, lease=LEASE, limit=10)) == 10
        tick.execute(text("SET lock_timeout = '5s'"))
        relayed = relay(tick, [built.mailing.id], dt.datetime.now(dt.UTC), 10)
        tick.commit()
        assert relayed == [(built.mailing.id, *first), (built.mailing.id, *third)]
        frozen.commit()
        assert _statuses(tick, built.mailing.id) == {"claimed": 10, "pending": 15}
