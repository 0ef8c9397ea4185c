"""A due mailing's outbox: its Delivery rows, made in bulk before anything is enqueued.

:func:`materialize` makes them with a set-based ``INSERT ... SELECT``: the subscribed,
unarchived addresses of the list, minus the owner's suppressions, and minus addresses the owner
already has a delivery of the same promotion for (one message per address even when it is on
several of the owner's lists). The mailing is taken (moved to ``queued``) in the caller's
transaction, so a second dispatcher finds it gone and makes nothing.

On PostgreSQL a large list is made in ``parts``. One statement runs on one core, and most of a
row's cost is the check of its two foreign keys, row by row (about 5 of 9 s for 1,000,000
rows); so the list's span of subscriber ids is cut into ranges, each inserted on its own
connection at the same time. Meanwhile the caller's transaction holds the mailing's row
(``FOR NO KEY UPDATE``, which the parts' foreign-key checks do not wait for, with no idle
timeout however the server is set), and takes the
mailing only once every part has committed. A dispatcher that dies between the two leaves rows
behind for a mailing still waiting to be sent, in no batch: nothing claims them (workers claim
along batches), and the next attempt removes them before it starts.
"""

from __future__ import annotations

import datetime as dt
import zlib
from concurrent.futures import ThreadPoolExecutor, wait
from typing import NamedTuple, cast

from sqlalchemy import (
    ColumnElement,
    Connection,
    Delete,
    Engine,
    Table,
    Update,
    delete,
    exists,
    func,
    insert,
    literal,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.orm import Session, aliased

from jvmail.db.models import (
    Delivery,
    DeliveryBatch,
    DeliveryStatus,
    Mailing,
    MailingStatus,
    Subscriber,
    SubscriberStatus,
    Suppression,
)
from jvmail.dispatch.deliveries import SENDABLE
from jvmail.faults import fault

__all__ = ["PARTS", "PART_SPAN", "Made", "dispatched", "leftovers", "materialize", "why_nobody"]

PARTS = 2  # connections a large list's rows are made on at once, by default
PART_SPAN = 100_000  # subscriber ids a part spans at least: a smaller list is one statement


class Made(NamedTuple):
    """What :func:`materialize` made: how many rows, and on PostgreSQL their lowest and highest
    ids (None elsewhere, and when it made none)."""

    rows: int
    first: int | None = None
    last: int | None = None

    def batches(self, size: int) -> list[tuple[int, int]] | None:
        """The rows cut into id ranges of ``size``, when their ids are known to be one unbroken
        run (no other mailing's rows were made between them): what
        :func:`~jvmail.dispatch.deliveries.batch_bounds` would read from the table; else None."""
        if self.first is None or self.last is None or self.last - self.first + 1 != self.rows:
            return None
        last = self.last
        return [(lo, min(lo + size - 1, last)) for lo in range(self.first, last + 1, size)]


class Target(NamedTuple):
    """What a mailing's rows are made from."""

    mailing_id: int
    sender_id: int
    list_id: int
    others: list[int]  # the sender's other mailings of the same promotion


def materialize(session: Session, mailing_id: int, parts: int = 1) -> Made | None:
    """Create the mailing's Delivery rows, in up to ``parts`` statements at once on PostgreSQL;
    what was made, or None when the mailing is not (or no longer) waiting to be sent,
    e.g. because another dispatcher took it first. Commits nothing in ``session``."""
    engine = session.get_bind()
    if parts < 2 or not isinstance(engine, Engine) or engine.dialect.name != "postgresql":
        taken = session.execute(_take(mailing_id).returning(*_TARGET)).first()
        if taken is None:
            return None
        session.execute(leftovers(mailing_id))
        return _insert(session.connection(), _target(session, mailing_id, *taken))
    # The hold outlives the statements: it waits, idle in its transaction, while the parts
    # run, which a server's idle_in_transaction_session_timeout must not end.
    session.execute(text("SET LOCAL idle_in_transaction_session_timeout = 0"))
    held = session.execute(
        select(*_TARGET)
        .where(Mailing.id == mailing_id, Mailing.status.in_(SENDABLE))
        # FOR NO KEY UPDATE: the parts' key checks pass. SKIP LOCKED: a second dispatcher of
        # the mailing (the tick sends one while it waits) returns at once, not holding a
        # connection the parts may need.
        .with_for_update(key_share=True, skip_locked=True)
    ).first()
    if held is None:
        return None
    target = _target(session, mailing_id, *held)
    spans = _spans(session, target.list_id, parts)
    if len(spans) < 2:
        session.execute(leftovers(mailing_id))
        created = _insert(session.connection(), target)
    else:
        created = _in_parts(engine, target, spans)
        fault("dispatch:after-parts")  # a crash here leaves rows the next attempt removes
    session.execute(_take(mailing_id))
    return created


_TARGET = (Mailing.promotion_id, Mailing.sender_id, Mailing.list_id)
_LOCKS = 0x6A766F62  # the class of this module's advisory locks (two-key: their own space)


def _take(mailing_id: int) -> Update:
    return (
        update(Mailing)
        .where(Mailing.id == mailing_id, Mailing.status.in_(SENDABLE))
        .values(status=MailingStatus.QUEUED, updated_at=dt.datetime.now(dt.UTC))
    )


def _target(
    session: Session, mailing_id: int, promotion_id: int, sender_id: int, list_id: int
) -> Target:
    # The owner's other mailings of this promotion, looked up first: most mailings have none,
    # and then the statement has no probe of the delivery table at all. When they exist, the
    # probe names them, so it never walks the rows this statement is inserting (a plan that
    # rescans the table per subscriber would otherwise grow quadratic in the list's size).
    others = list(
        session.scalars(
            select(Mailing.id).where(
                Mailing.promotion_id == promotion_id,
                Mailing.sender_id == sender_id,
                Mailing.id != mailing_id,
            )
        )
    )
    if others and session.get_bind().dialect.name == "postgresql":
        # Each of these mailings' rows leave out the addresses the others' rows already have:
        # two made at once would not see each other's. So they are made one at a time (SQLite
        # writes one at a time anyway), each seeing what the one before committed.
        key = zlib.crc32(f"jvmail:outbox:{sender_id}:{promotion_id}".encode()) - 2**31
        session.execute(text("SELECT pg_advisory_xact_lock(:c, :k)"), {"c": _LOCKS, "k": key})
    return Target(mailing_id, sender_id, list_id, others)


def _spans(session: Session, list_id: int, parts: int) -> list[tuple[int, int]]:
    """The list's subscriber ids cut into at most ``parts`` ranges of ``PART_SPAN`` or more."""
    lo, hi = session.execute(
        select(func.min(Subscriber.id), func.max(Subscriber.id)).where(
            Subscriber.list_id == list_id
        )
    ).one()
    if lo is None:
        return []
    count = max(1, min(parts, (hi - lo + 1) // PART_SPAN))
    width = -(-(hi - lo + 1) // count)
    return [(a, min(a + width - 1, hi)) for a in range(lo, hi + 1, width)]


def _in_parts(engine: Engine, target: Target, spans: list[tuple[int, int]]) -> Made:
    _clear(engine, target.mailing_id)  # what an attempt that died half way left
    with ThreadPoolExecutor(len(spans), thread_name_prefix="jvmail-materialize") as pool:
        made = [pool.submit(_part, engine, target, span) for span in spans]
        wait(made)
    try:
        return _together([part.result() for part in made])
    except BaseException:
        _clear(engine, target.mailing_id)  # the parts that did commit: the mailing still waits
        raise


def _together(parts: list[Made]) -> Made:
    firsts = [p.first for p in parts if p.first is not None]
    lasts = [p.last for p in parts if p.last is not None]
    rows = sum(p.rows for p in parts)
    return Made(rows, min(firsts) if firsts else None, max(lasts) if lasts else None)


def _part(engine: Engine, target: Target, span: tuple[int, int]) -> Made:
    with engine.begin() as conn:
        return _insert(conn, target, span)


def _clear(engine: Engine, mailing_id: int) -> None:
    with engine.begin() as conn:
        conn.execute(leftovers(mailing_id))


def leftovers(mailing_id: int) -> Delete:
    """Removes what an attempt that died half way left: the mailing's pending rows (one probe
    of an index when there are none). A row that went further is never removed: then the
    insert meets it on the unique key and fails, loudly."""
    return delete(Delivery).where(
        Delivery.mailing_id == mailing_id, Delivery.status == DeliveryStatus.PENDING
    )


def dispatched(session: Session, mailing_id: int) -> bool:
    """Whether the mailing was dispatched: its batches were recorded (with its move to queued),
    or a row of it went further than pending (a mailing dispatched before batches were
    recorded). Pending rows alone may be an attempt's :func:`leftovers`."""
    batches = exists().where(DeliveryBatch.mailing_id == mailing_id)
    handled = exists().where(
        Delivery.mailing_id == mailing_id, Delivery.status != DeliveryStatus.PENDING
    )
    return bool(session.scalar(select(or_(batches, handled))))


_SUBSCRIBED = Subscriber.status == SubscriberStatus.SUBSCRIBED


def _on_list(list_id: int) -> tuple[ColumnElement[bool], ...]:
    """A subscriber row of the list, not archived."""
    return (Subscriber.list_id == list_id, Subscriber.archived_at.is_(None))


def _suppressed(sender_id: int) -> ColumnElement[bool]:
    """Whether the subscriber's address is on the sender's suppression list."""
    return exists().where(
        Suppression.partner_id == sender_id, Suppression.email == Subscriber.email
    )


def _insert(conn: Connection, target: Target, span: tuple[int, int] | None = None) -> Made:
    """Insert the rows of ``target`` (of subscribers whose id is in ``span``, when given)."""
    sub = Subscriber
    wanted = [*_on_list(target.list_id), _SUBSCRIBED, ~_suppressed(target.sender_id)]
    if span is not None:
        wanted.append(sub.id.between(*span))
    if target.others:
        other_sub, other_delivery = aliased(Subscriber), aliased(Delivery)
        already = exists().where(
            other_delivery.mailing_id.in_(target.others),
            other_delivery.subscriber_id == other_sub.id,
            other_sub.email == sub.email,
        )
        wanted.append(~already)
    rows = (
        select(
            literal(target.mailing_id),
            sub.id,
            literal(DeliveryStatus.PENDING.value),
            literal(0),
            literal(0),
            literal(dt.datetime.now(dt.UTC)),
        )
        .where(*wanted)
        .order_by(sub.id)
    )
    cols = ["mailing_id", "subscriber_id", "status", "attempts", "fence", "updated_at"]
    table = cast(Table, Delivery.__table__)
    stmt = insert(table).from_select(cols, rows)
    if conn.dialect.name != "postgresql":
        return Made(conn.execute(stmt.execution_options(preserve_rowcount=True)).rowcount)
    made = stmt.returning(table.c.id).cte("made")
    count, first, last = conn.execute(
        select(func.count(), func.min(made.c.id), func.max(made.c.id))
    ).one()
    return Made(count, first, last)


def why_nobody(session: Session, mailing_id: int) -> str:
    """Why the mailing made no rows, in figures: what its list holds and what kept each address
    out. Called in the transaction that made none: an address subscribed and not suppressed was
    kept out by the one condition left, a row of the sender's other mailing of the promotion."""
    sender_id, list_id = session.execute(
        select(Mailing.sender_id, Mailing.list_id).where(Mailing.id == mailing_id)
    ).one()
    total, gone, held = session.execute(
        select(
            func.count(),
            func.count().filter(~_SUBSCRIBED),
            func.count().filter(_SUBSCRIBED, _suppressed(sender_id)),
        ).where(*_on_list(list_id))
    ).one()
    if not total:
        return (
            "nobody to mail: the list holds no addresses (its subscribers CSV, then `jvmail sync`)"
        )
    had = total - gone - held
    kept = [
        f"{gone:,} unsubscribed, bounced or complained" if gone else "",
        f"{held:,} on the sender's suppression list" if held else "",
        f"{had:,} already sent this promotion through another of the sender's lists" if had else "",
    ]
    return f"nobody to mail: of the list's {total:,} addresses, " + "; ".join(k for k in kept if k)
