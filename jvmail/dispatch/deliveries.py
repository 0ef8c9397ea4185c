"""The outbox of Deliveries: the database rows that make sending exactly-once.

A Delivery is one message of one mailing to one subscriber. Its life:

    pending --claim--> claimed --start--> sending --record--> accepted | failed
       ^                  |                  |
       +--lease expired---+                  +--lease expired--> unknown (reconciled, never resent)
    claimed --claim or start finds the address suppressed--> suppressed

* :func:`~jvmail.dispatch.outbox.materialize` creates a mailing's rows in bulk, before anything
  is enqueued.
* :func:`claim` takes up to ``limit`` rows of a batch (an id range) in one statement: pending
  ones, or claimed ones whose lease ran out (their worker died before the provider call). The
  claim stamps every row it takes with one new ``fence``, different from any fence these rows
  had; the worker holds (id, fence) pairs from then on, and its later statements find its rows
  by that fence and their id range. In the same statement the rows whose address was
  suppressed meanwhile become ``suppressed``: a suppression committed before the claim is
  honoured.
* :func:`start` moves the worker's rows to ``sending`` just before the provider call, only where
  the fence still matches: a worker that lost its lease learns it here and calls nothing. It
  checks the addresses again: one unsubscribed or suppressed since the claim (while the batch
  waited for its account's pace, say) becomes ``suppressed`` and does not go out.
* :func:`record` stores each outcome where the fence still matches and the row is ``sending``:
  a stale worker's late commit changes nothing. The common case (every row accepted, one
  answer per request) is a few range UPDATEs; the rest go row by row.
* :func:`expire` turns ``sending`` rows past their lease into ``unknown``: the provider may have
  them, so only its webhooks or event log may resolve them; they are never sent again.

No index names a row's status (each of the three steps is then a heap-only update that touches
no index): the rows of a mailing in some state are found along its batches' id ranges
(:class:`~jvmail.db.models.DeliveryBatch`). A claim opens its batch; :func:`close_batches`
closes those whose rows are all final. So a row not yet final is in an open batch or in one
never claimed: :func:`expire` and the reconciler read open batches only, and
:func:`has_rows` those and the never-claimed ones, however many deliveries the table holds.

Nothing here commits: the caller owns the transaction, one per step.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from operator import itemgetter
from typing import Any, NamedTuple, cast

from sqlalchemy import (
    ColumnElement,
    Table,
    Update,
    and_,
    bindparam,
    case,
    exists,
    func,
    or_,
    select,
    true,
    tuple_,
    update,
)
from sqlalchemy.orm import Session, aliased
from sqlalchemy.sql import Select
from sqlalchemy.sql.dml import ReturningUpdate
from sqlalchemy.sql.selectable import ScalarSelect

from jvmail.db.engine import begin_writing, bind, insert_or_skip, param
from jvmail.db.models import (
    Delivery,
    DeliveryBatch,
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
    "UNFINISHED",
    "Claim",
    "Claimed",
    "Outcome",
    "any_row",
    "batch_bounds",
    "claim",
    "claimed",
    "close_batches",
    "expire",
    "fail_unsent",
    "has_rows",
    "in_open_batches",
    "record",
    "recorded",
    "release",
    "start",
    "started",
    "tally",
    "unclaim",
    "unfail",
    "unfinished",
]

SENDABLE = (MailingStatus.PLANNED, MailingStatus.APPROVED)
FINAL = (DeliveryStatus.ACCEPTED, DeliveryStatus.FAILED, DeliveryStatus.SUPPRESSED)
UNFINISHED = (DeliveryStatus.PENDING, DeliveryStatus.CLAIMED, DeliveryStatus.SENDING)
# A claimed batch stays open while any of its rows is one of these: not yet final.
UNSETTLED = (*UNFINISHED, DeliveryStatus.UNKNOWN)


class Claimed(NamedTuple):  # a tuple: a batch makes a thousand of them
    """A row a worker holds: send only while ``fence`` is still the row's."""

    delivery_id: int
    fence: int
    email: str
    first_name: str
    subscriber_id: int  # the send guard's name for the recipient (stable across a restore)


class Outcome(NamedTuple):
    """What the provider said about one recipient."""

    delivery_id: int
    fence: int
    status: DeliveryStatus  # accepted or failed
    provider_message_id: str | None = None
    error: str | None = None


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


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
    """Claim the batch's sendable rows (see the module docstring); returns the ones to send,
    by id, all under the claim's one new fence. One statement on PostgreSQL (claim, suppression
    re-check and the addresses); on SQLite the addresses are read by that fence after it."""
    return claimed(session, mailing_id, bounds, lease=lease, limit=limit).held


@dataclass(frozen=True)
class Claim:
    held: list[Claimed]  # to send, by id
    suppressed: int  # found unsubscribed or suppressed by the claim: never sent


def claimed(
    session: Session,
    mailing_id: int,
    bounds: tuple[int, int],
    *,
    lease: dt.timedelta,
    limit: int,
) -> Claim:
    """:func:`claim`, and how many rows it found suppressed."""
    now = _now()
    lo, hi = bounds
    if session.get_bind().dialect.name == "postgresql":
        params = bind(m=mailing_id, lo=lo, hi=hi, now=now, limit=limit, until=now + lease)
        got = _claim_postgres(session, params)
    else:
        free = _free(mailing_id, lo, hi, now, limit)
        got = _claim_sqlite(
            session, free, _owner(mailing_id), mailing_id, bounds, lease_until=now + lease, now=now
        )
    if got.held:
        _open(session, mailing_id, bounds, now)
    return got


def _free(mailing: Any, lo: Any, hi: Any, now: Any, limit: Any) -> Select[Any]:
    """The batch's rows a claim may take (values, or parameters bound later), locked."""
    running = exists().where(
        Mailing.id == mailing, Mailing.status.in_((MailingStatus.QUEUED, MailingStatus.SENDING))
    )
    return (
        select(Delivery.id)
        .where(
            running,  # a pause or cancel committed before this claim is honoured by it
            Delivery.mailing_id == mailing,
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


def _open(session: Session, mailing_id: int, bounds: tuple[int, int], now: dt.datetime) -> None:
    """Stamp the batch claimed (the relay's sign that the mailing's messages flow) and open (the
    tick's sign to look at its rows): in the claim's transaction, so no row is claimed in a
    batch the tick may pass over. A batch not recorded yet is recorded."""
    params = bind(m=mailing_id, lo=bounds[0], hi=bounds[1], now=now)
    session.connection().execute(_open_statement(session.get_bind().dialect.name), params)


@cache
def _open_statement(dialect: str) -> Any:
    """:func:`_open`'s upsert in ``dialect``, by parameters ``m``, ``lo``, ``hi`` and ``now``."""
    batch = DeliveryBatch
    now = param("now", batch.claimed_at)
    stmt = insert_or_skip(dialect, batch).values(
        mailing_id=param("m", batch.mailing_id),
        lo=param("lo", batch.lo),
        hi=param("hi", batch.hi),
        enqueued_at=now,
        claimed_at=now,
        open=True,
    )
    # The recorded range grows to cover the claim's, should a message carry a wider one.
    widest = func.greatest if dialect == "postgresql" else func.max
    return stmt.on_conflict_do_update(
        index_elements=[batch.mailing_id, batch.lo],
        set_={"claimed_at": now, "open": True, "hi": widest(batch.hi, stmt.excluded.hi)},
    )


def _claim_sqlite(
    session: Session,
    free: Select[int],
    owner: ScalarSelect[int],
    mailing_id: int,
    bounds: tuple[int, int],
    *,
    lease_until: dt.datetime,
    now: dt.datetime,
) -> Claim:
    """The claim on SQLite: the rows updated, then their addresses read by the claim's fence."""
    lo, hi = bounds
    # Locked once, then joined by primary key: a plan that holds even while the statistics
    # still count a fresh mailing's table as empty (an IN (subquery) was then planned as a scan
    # of the whole table, locking the batch again for each row).
    taken = free.cte("taken").prefix_with("MATERIALIZED")
    blocked = _blocked(owner)
    stmt = (
        update(Delivery)
        .where(Delivery.id == taken.c.id, Delivery.id.between(lo, hi))
        .values(
            # A suppression committed before this statement is seen by it: honoured at once.
            status=case((blocked, DeliveryStatus.SUPPRESSED), else_=DeliveryStatus.CLAIMED),
            fence=_new_fence(mailing_id, bounds),
            lease_until=case((blocked, None), else_=lease_until),
            updated_at=now,
        )
    )
    # SQLite's RETURNING sees only the updated table: the addresses are read after.
    fences = list(session.connection().execute(stmt.returning(Delivery.fence)).scalars())
    if not fences:
        return Claim([], 0)
    (fence,) = set(fences)
    found = session.execute(
        select(Delivery.id, Subscriber.email, Subscriber.first_name, Subscriber.id)
        .join(Subscriber, Subscriber.id == Delivery.subscriber_id)
        .where(*_held(fence, bounds), Delivery.status == DeliveryStatus.CLAIMED)
        .order_by(Delivery.id)
    ).all()
    held = [Claimed(d, fence, email, first, sub) for d, email, first, sub in found]
    return Claim(held, len(fences) - len(held))


def _claim_postgres(session: Session, params: dict[str, Any]) -> Claim:
    """The claim as one statement (:func:`_claim_statement`), its parameters bound."""
    rows = session.connection().execute(_claim_statement(), params).all()
    held = [
        Claimed(d, fence, email, first, sub)
        for d, fence, blocked, email, first, sub in rows
        if not blocked
    ]
    return Claim(held, len(rows) - len(held))


@cache
def _claim_statement() -> Select[Any]:
    """The claim on PostgreSQL, by parameters ``m`` (the mailing), ``lo`` and ``hi`` (the
    batch), ``now``, ``until`` (the lease's end) and ``limit``: the free rows locked once
    (``taken``), each one's subscriber read by primary key once (a lateral probe, so the plan
    stays a probe per row even while the statistics still count a fresh mailing's tables as
    empty) with whether it is blocked, then the rows updated by primary key and returned with
    the addresses, in id order (sorted by PostgreSQL, the status as whether it is blocked: no
    enum to convert per row)."""
    mailing, now = param("m", Delivery.mailing_id), param("now", Delivery.updated_at)
    lo, hi = param("lo", Delivery.id), param("hi", Delivery.id)
    free = _free(mailing, lo, hi, now, param("limit", Delivery.id))
    taken = free.add_columns(Delivery.subscriber_id).cte("taken").prefix_with("MATERIALIZED")
    person = (
        select(
            Subscriber.email,
            Subscriber.first_name,
            _refused(_owner(mailing)).label("blocked"),
        )
        .where(Subscriber.id == taken.c.subscriber_id)
        .offset(0)  # a LATERAL subquery is otherwise pulled up into a join: a hash join that
        .lateral("person")  # reads every subscriber when the statistics lag the table
    )
    who = (
        select(taken.c.id, person.c.email, person.c.first_name, person.c.blocked)
        .select_from(taken.join(person, true()))
        .cte("who")
        .prefix_with("MATERIALIZED")
    )
    moved = (
        update(Delivery)
        .where(Delivery.id == who.c.id, Delivery.id.between(lo, hi))
        .values(
            # A suppression committed before this statement is seen by it: honoured at once.
            status=case((who.c.blocked, DeliveryStatus.SUPPRESSED), else_=DeliveryStatus.CLAIMED),
            fence=select(func.nextval("delivery_fence")).scalar_subquery(),
            lease_until=case((who.c.blocked, None), else_=param("until", Delivery.lease_until)),
            updated_at=now,
        )
        .returning(
            Delivery.id,
            Delivery.fence,
            who.c.blocked,
            who.c.email,
            who.c.first_name,
            Delivery.subscriber_id,
        )
        .cte("moved")
    )
    return select(moved).order_by(moved.c.id)


def _owner(mailing_id: Any) -> ScalarSelect[int]:
    """The partner whose list the mailing goes to: whose suppressions apply (computed once per
    statement)."""
    return (
        select(MailingList.partner_id)
        .join(Mailing, Mailing.list_id == MailingList.id)
        .where(Mailing.id == mailing_id)
        .scalar_subquery()
    )


def _refused(owner: ScalarSelect[int]) -> ColumnElement[bool]:
    """Whether the subscriber's address may not be sent to: unsubscribed, or on ``owner``'s
    suppression list."""
    return or_(
        Subscriber.status != SubscriberStatus.SUBSCRIBED,
        exists().where(Suppression.partner_id == owner, Suppression.email == Subscriber.email),
    )


def _blocked(owner: ScalarSelect[int]) -> ColumnElement[bool]:
    """Whether the delivery's address may not be sent to (:func:`_refused`). Each row looks its
    subscriber up by primary key (a correlated probe, not a join): the plan stays a probe per
    row even when the statistics lag a fresh mailing."""
    return exists().where(Subscriber.id == Delivery.subscriber_id, _refused(owner))


def _new_fence(mailing_id: int, bounds: tuple[int, int]) -> ColumnElement[int]:
    """A SQLite claim's fence, computed once per statement: SQLite's writers take turns, so one
    more than the largest fence of the batch's rows is above every fence any earlier claim of
    these rows held. (PostgreSQL takes the next value of the ``delivery_fence`` sequence.)"""
    other = aliased(Delivery)
    return (
        select(func.coalesce(func.max(other.fence), 0) + 1)
        .where(other.mailing_id == mailing_id, other.id.between(*bounds))
        .scalar_subquery()
    )


def _held(fence: Any, bounds: tuple[Any, Any]) -> tuple[ColumnElement[bool], ...]:
    """The rows of the claim with this fence within ``bounds`` (its first and last id): a fence
    is one claim's alone, the bounds let the primary key find them."""
    return (Delivery.fence == fence, Delivery.id.between(*bounds))


def _claims(held: Sequence[Claimed]) -> dict[int, list[int]]:
    """Fence -> the held ids of that claim."""
    by_fence: dict[int, list[int]] = {}
    for c in held:
        by_fence.setdefault(c.fence, []).append(c.delivery_id)
    return by_fence


def start(session: Session, held: Sequence[Claimed], *, lease: dt.timedelta) -> list[Claimed]:
    """Mark the rows ``sending`` where the fence still holds; only those may go out. ``held``
    is whole claims, as :func:`claim` returned them: a claim's rows are matched by its fence.
    Rows whose address was unsubscribed or suppressed since the claim become ``suppressed``.
    The rows' lease starts again, for ``lease``: it covers the provider call, not the time the
    batch waited for its account's pace since the claim."""
    return started(session, held, lease=lease).going


@dataclass(frozen=True)
class Started:
    going: list[Claimed]  # in flight: to send now
    suppressed: int  # found unsubscribed or suppressed since the claim: never sent


def started(session: Session, held: Sequence[Claimed], *, lease: dt.timedelta) -> Started:
    """:func:`start`, and how many rows it found suppressed."""
    if not held:
        return Started([], 0)
    now = _now()
    until = now + lease
    moved: dict[int, DeliveryStatus] = {}
    connection = session.connection()
    suppress, send = _start_statements()
    for fence, ids in _claims(held).items():
        params = bind(fence=fence, lo=min(ids), hi=max(ids), first=ids[0], now=now, until=until)
        for d in connection.execute(suppress, params).scalars():
            moved[d] = DeliveryStatus.SUPPRESSED
        for d in connection.execute(send, params).scalars():
            moved[d] = DeliveryStatus.SENDING
    mine = {c.delivery_id for c in held}
    if not set(moved) <= mine:
        # Part of a claim was passed: its other rows would be in flight and never sent.
        raise ValueError("start() takes whole claims: rows of the claim were left out")
    going = [c for c in held if moved.get(c.delivery_id) is DeliveryStatus.SENDING]
    suppressed = sum(1 for status in moved.values() if status is DeliveryStatus.SUPPRESSED)
    return Started(going, suppressed)


@cache
def _start_statements() -> tuple[ReturningUpdate[int], ReturningUpdate[int]]:
    """:func:`started`'s two statements, by parameters ``fence``, ``lo`` and ``hi`` (one
    claim's rows), ``first`` (one of its ids), ``now`` and ``until`` (the new lease's end):
    those of the rows found blocked become ``suppressed``, then the rest ``sending``; two
    statements, so that each row's address is judged once. Core, as there are no ORM objects
    to keep in step."""
    fence, now = param("fence", Delivery.fence), param("now", Delivery.updated_at)
    bounds = (param("lo", Delivery.id), param("hi", Delivery.id))
    rows = (*_held(fence, bounds), Delivery.status == DeliveryStatus.CLAIMED)
    # A claim's rows are one mailing's: its owner is looked up once, by the first row.
    first = aliased(Delivery)
    mailing = (
        select(first.mailing_id).where(first.id == param("first", Delivery.id)).scalar_subquery()
    )
    suppress = (
        update(Delivery)
        .where(*rows, _blocked(_owner(mailing)))
        .values(status=DeliveryStatus.SUPPRESSED, lease_until=None, updated_at=now)
        .returning(Delivery.id)
    )
    send = (
        update(Delivery)
        .where(*rows)
        .values(
            status=DeliveryStatus.SENDING,
            attempts=Delivery.attempts + 1,
            lease_until=param("until", Delivery.lease_until),
            updated_at=now,
        )
        .returning(Delivery.id)
    )
    return suppress, send


def unclaim(session: Session, held: Sequence[Claimed]) -> int:
    """Give claimed rows back (fenced) without sending them: they are pending again."""
    return _back_to_pending(session, held, DeliveryStatus.CLAIMED)


def release(session: Session, held: Sequence[Claimed]) -> int:
    """Put in-flight rows back to ``pending`` (fenced): the provider refused the request as a
    whole and answered so, so nothing left; a later batch may send them."""
    return _back_to_pending(session, held, DeliveryStatus.SENDING)


def fail_unsent(mailing_id: int, why: str, now: dt.datetime) -> Update:
    """The mailing's rows not handed to the provider (pending, or claimed and not yet in
    flight) end ``failed`` with ``why``: the mailing was cancelled or cannot be sent."""
    return (
        update(Delivery)
        .where(
            Delivery.mailing_id == mailing_id,
            Delivery.status.in_((DeliveryStatus.PENDING, DeliveryStatus.CLAIMED)),
        )
        .values(status=DeliveryStatus.FAILED, error=why[:1000], lease_until=None, updated_at=now)
    )


def unfail(mailing_id: int, why: str, now: dt.datetime) -> Update:
    """Undo :func:`fail_unsent` of a failed mailing being resumed: its rows that failed with the
    mailing's own reason ``why`` (never handed to the provider) are pending again. Rows the
    provider refused, each with its own answer, stay failed."""
    return (
        update(Delivery)
        .where(
            Delivery.mailing_id == mailing_id,
            Delivery.status == DeliveryStatus.FAILED,
            Delivery.error == why[:1000],
        )
        .values(status=DeliveryStatus.PENDING, error=None, lease_until=None, updated_at=now)
    )


def _back_to_pending(session: Session, held: Sequence[Claimed], now: DeliveryStatus) -> int:
    count = 0
    for fence, ids in _claims(held).items():
        stmt = (
            update(Delivery)
            .where(
                *_held(fence, (min(ids), max(ids))),
                Delivery.id.in_(ids),
                Delivery.status == now,
            )
            .values(status=DeliveryStatus.PENDING, lease_until=None, updated_at=_now())
            .execution_options(preserve_rowcount=True)
        )
        count += session.connection().execute(stmt).rowcount
    return count


_RUNS = 8  # at most this many range UPDATEs for a claim's outcomes; more: one per row


def record(session: Session, outcomes: Sequence[Outcome], *, held: Sequence[Claimed] = ()) -> int:
    """Store outcomes where the row is still ``sending`` under the same fence; returns how many
    were stored (the rest belonged to a worker that lost its lease).

    ``held``: the rows that went out (whole claims, as :func:`start` returned them). When the
    outcomes are exactly those rows and fall into a few runs of the same answer (a batch API's
    one message id per request, all accepted), each run is stored by one UPDATE of its fence
    and id range; otherwise row by row."""
    return sum(recorded(session, outcomes, held=held).values())


def recorded(
    session: Session, outcomes: Sequence[Outcome], *, held: Sequence[Claimed] = ()
) -> dict[DeliveryStatus, int]:
    """:func:`record`, and how many rows it stored of each status."""
    stored: dict[DeliveryStatus, int] = {}
    if not outcomes:
        return stored
    runs = _runs(outcomes, held)
    if runs is None:
        return _record_each(session, outcomes)
    now = _now()
    connection = session.connection()
    for first, last in runs:
        params = bind(
            fence=first.fence,
            lo=first.delivery_id,
            hi=last.delivery_id,
            status=first.status,
            message=first.provider_message_id,
            error=first.error[:1000] if first.error else None,
            now=now,
        )
        count = connection.execute(_record_statement(), params).rowcount
        stored[first.status] = stored.get(first.status, 0) + count
    return stored


@cache
def _record_statement() -> Update:
    """One run of outcomes alike stored, by parameters ``fence``, ``lo``, ``hi``, ``status``,
    ``message``, ``error`` and ``now``."""
    bounds = (param("lo", Delivery.id), param("hi", Delivery.id))
    return (
        update(Delivery)
        .where(
            *_held(param("fence", Delivery.fence), bounds),
            Delivery.status == DeliveryStatus.SENDING,
        )
        .values(
            status=param("status", Delivery.status),
            provider_message_id=param("message", Delivery.provider_message_id),
            error=param("error", Delivery.error),
            lease_until=None,
            updated_at=param("now", Delivery.updated_at),
        )
        .execution_options(preserve_rowcount=True)
    )


def _runs(
    outcomes: Sequence[Outcome], held: Sequence[Claimed]
) -> list[tuple[Outcome, Outcome]] | None:
    """(first, last) of each run of outcomes alike (fence, status, message id, error) in id
    order, when the outcomes are the held rows one each and the runs are few; else None. A run
    is then every held row between its first and last id, so its range matches it alone."""
    if len(outcomes) != len(held):
        return None
    ordered = sorted(outcomes, key=itemgetter(0))  # by delivery id
    # The same (id, fence) pairs, each once: held ids are distinct, so a repeat differs.
    if [o[:2] for o in ordered] != sorted(c[:2] for c in held):
        return None
    runs: list[tuple[Outcome, Outcome]] = []
    for o in ordered:
        if runs and _alike(runs[-1][1], o):
            runs[-1] = (runs[-1][0], o)
        else:
            if len(runs) == _RUNS:
                return None
            runs.append((o, o))
    return runs


def _alike(a: Outcome, b: Outcome) -> bool:
    """Same fence, status, message id and error."""
    return a[1:] == b[1:]


def _record_each(session: Session, outcomes: Sequence[Outcome]) -> dict[DeliveryStatus, int]:
    """Outcomes stored row by row: a batch of statements per status, so that what each stored
    is known by status."""
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
    by_status: dict[DeliveryStatus, list[dict[str, object]]] = {}
    for o in outcomes:
        by_status.setdefault(o.status, []).append(
            {
                "b_id": o.delivery_id,
                "b_fence": o.fence,
                "b_status": o.status,
                "b_message": o.provider_message_id,
                "b_error": o.error[:1000] if o.error else None,
            }
        )
    connection = session.connection()
    return {
        status: int(connection.execute(stmt, params).rowcount)
        for status, params in by_status.items()
    }


def expire(session: Session, now: dt.datetime | None = None) -> int:
    """``sending`` rows past their lease become ``unknown``; returns how many. Only open batches
    can hold such rows: their id ranges are all that is read."""
    moment = now or _now()
    over = (Delivery.status == DeliveryStatus.SENDING, Delivery.lease_until < moment)
    # Rows another transaction holds are passed over until a later tick: a worker recording
    # them right now, or one frozen half way (its process stopped), which must not stop the
    # tick, and with it every mailing's relay, until it wakes.
    ended = in_open_batches(session, *over, skip_locked=True)
    result = session.connection().execute(
        update(Delivery)
        # Judged again on the row itself: a worker may have recorded or released it since the
        # subquery read it.
        .where(Delivery.id.in_(ended), *over)
        .values(status=DeliveryStatus.UNKNOWN, updated_at=moment)
        .execution_options(preserve_rowcount=True)
    )
    return result.rowcount


def in_open_batches(
    session: Session, *where: ColumnElement[bool], skip_locked: bool = False
) -> Select[Any]:
    """The ids of the rows matching ``where`` among those of the open batches, read along each
    open batch's id range: a probe of the primary key per batch, never a scan of the table.
    (On PostgreSQL a lateral subquery kept as such, so the plan stays so even when the
    statistics expect no match: a join was then planned as a scan of every delivery.) With
    ``skip_locked``, the rows are locked as they are found, and those another transaction
    holds are left out (PostgreSQL; SQLite has one writer at a time)."""
    batch = DeliveryBatch
    in_range = (Delivery.id.between(batch.lo, batch.hi), Delivery.mailing_id == batch.mailing_id)
    if session.get_bind().dialect.name != "postgresql":
        return select(Delivery.id).join(batch, and_(batch.open, *in_range)).where(*where)
    # OFFSET 0: the planner may not pull the subquery up into a join.
    found = select(Delivery.id).where(*in_range, *where).offset(0)
    if skip_locked:
        found = found.with_for_update(skip_locked=True)
    rows = found.lateral("rows")
    return select(rows.c.id).select_from(batch).join(rows, true()).where(batch.open)


def close_batches(session: Session) -> int:
    """Close the open batches whose rows are all final; returns how many. Its own transaction
    (what the session has open is committed first): the batches that look settled are locked,
    then exactly those are judged again by a statement that sees every claim committed before
    it got the locks; a claim that comes after waits for this transaction's end and opens its
    batch again. A batch another transaction holds is passed over until a later tick: a tick
    frozen half way (its process stopped) must not stop every later one."""
    begin_writing(session)
    batch = DeliveryBatch
    busy = any_row(
        Delivery.id.between(batch.lo, batch.hi),
        Delivery.mailing_id == batch.mailing_id,
        Delivery.status.in_(UNSETTLED),
    )
    settled = session.execute(
        select(batch.mailing_id, batch.lo)
        .where(batch.open, ~busy)
        .with_for_update(skip_locked=True)
    ).all()
    if not settled:
        session.commit()
        return 0
    result = session.connection().execute(
        update(batch)
        .where(
            tuple_(batch.mailing_id, batch.lo).in_([tuple(row) for row in settled]),
            batch.open,
            ~busy,
        )
        .values(open=False)
        .execution_options(preserve_rowcount=True)
    )
    session.commit()
    return result.rowcount


def any_row(*where: ColumnElement[bool]) -> ColumnElement[bool]:
    """Whether a delivery matches: a probe per outer row that stops at the first match. (A
    scalar subquery with LIMIT 1, not EXISTS: PostgreSQL turns an EXISTS into a semi-join, and
    on a misestimate joins every pending row of a 1,000,000-row mailing to each of its
    batches.)"""
    return select(Delivery.id).where(*where).limit(1).scalar_subquery().is_not(None)


def has_rows(
    session: Session, mailing_id: int, *where: ColumnElement[bool], open_only: bool = False
) -> bool:
    """Whether a row of the mailing not yet final matches ``where``: probed batch by batch
    along their id ranges, those never claimed first, then the open ones (only those, with
    ``open_only``), the most recently claimed first, stopping at the first match. A mailing
    under way answers at its first batch, and a settled one reads only the rows of the batches
    the tick has not closed yet. A mailing without recorded batches is read directly."""
    return _probe(session, mailing_id, _probes(where, open_only=open_only), open_only=open_only)


def unfinished(session: Session, mailing_id: int) -> bool:
    """Whether a row of the mailing is still to be sent or in flight."""
    return _probe(session, mailing_id, _unfinished_probes(), open_only=False)


Probes = tuple[Select[Any], Select[Any], Select[Any]]


def _probe(session: Session, mailing_id: int, probes: Probes, *, open_only: bool) -> bool:
    along, any_batch, direct = probes
    connection, params = session.connection(), bind(m=mailing_id)
    if connection.execute(along, params).scalar() is not None:
        return True
    if open_only or connection.execute(any_batch, params).scalar():
        return False
    # A mailing whose batches were never recorded (the relay records them): its rows, read.
    return bool(connection.execute(direct, params).scalar())


def _probes(where: Sequence[ColumnElement[bool]], *, open_only: bool) -> Probes:
    """:func:`has_rows`' statements, by parameter ``m`` (the mailing): along its batches' id
    ranges, whether it has batches, and along its rows."""
    batch = DeliveryBatch
    mailing = param("m", batch.mailing_id)
    batches = select(batch.lo, batch.hi).where(batch.mailing_id == mailing)
    # A closed batch that was claimed has only final rows: never read.
    batches = batches.where(
        batch.open if open_only else or_(batch.open, batch.claimed_at.is_(None))
    )
    ranges = (
        batches.order_by(batch.claimed_at.desc().nulls_first(), batch.lo)
        .offset(0)  # keeps the order: the probe below is not pushed under the sort
        .subquery()
    )
    match = any_row(
        Delivery.id.between(ranges.c.lo, ranges.c.hi), Delivery.mailing_id == mailing, *where
    )
    return (
        select(ranges.c.lo).where(match).limit(1),
        select(exists().where(batch.mailing_id == mailing)),
        select(any_row(Delivery.mailing_id == mailing, *where)),
    )


@cache
def _unfinished_probes() -> Probes:
    return _probes((Delivery.status.in_(UNFINISHED),), open_only=False)


def tally(session: Session, mailing_id: int, lo: int, stored: Mapping[DeliveryStatus, int]) -> None:
    """Add the outcomes a worker just stored (:func:`recorded`, in its transaction) to its
    batch's accepted and refused tallies: a mailing's refusal share is then a sum over its
    batches, and no row is read to keep it. (What webhooks and the reconciler settle later is
    not counted here.)"""
    accepted = stored.get(DeliveryStatus.ACCEPTED, 0)
    refused = stored.get(DeliveryStatus.FAILED, 0)
    if not accepted and not refused:
        return
    params = bind(m=mailing_id, lo=lo, accepted=accepted, refused=refused)
    session.connection().execute(_tally_statement(), params)


@cache
def _tally_statement() -> Update:
    batch = DeliveryBatch
    return (
        update(batch)
        .where(batch.mailing_id == param("m", batch.mailing_id), batch.lo == param("lo", batch.lo))
        .values(
            accepted=batch.accepted + param("accepted", batch.accepted),
            refused=batch.refused + param("refused", batch.refused),
        )
    )
