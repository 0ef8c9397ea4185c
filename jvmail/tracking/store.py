"""Store tracking events in bulk, once each, and act on the new ones.

Every event is inserted with ON CONFLICT DO NOTHING on (provider, event id, recipient, type), so
a webhook delivered twice, or three times at once, is stored once and acted on once: only the
rows the insert returns are new. For new events, in the same transaction:

- a delivery left ``unknown`` by the send pipeline is resolved: any event about it proves the
  provider took the message (``accepted``), a provider rejection fails it; never a resend;
- the suppression policy runs: an unsubscribe, a complaint or a hard bounce suppresses the
  address for the list owner at once; soft bounces on ``soft_bounce_days`` distinct days do,
  unless a delivery came in between (see :func:`_soft_bounce_days`);
- clicks that swept every link of a message within seconds are flagged machine-made.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
from sqlalchemy import BigInteger, Row, any_, bindparam, select, update
from sqlalchemy.dialects import postgresql
from sqlalchemy.orm import Session

from jvmail.db.engine import insert_or_skip
from jvmail.db.models import (
    Delivery,
    DeliveryStatus,
    EventType,
    Mailing,
    MailingList,
    Subscriber,
    SubscriberStatus,
    Suppression,
    SuppressionReason,
    TrackingEvent,
    WebhookNonce,
)
from jvmail.dispatch.pipeline import finish_settled
from jvmail.tracking.events import BounceClass, Event
from jvmail.tracking.human import SWEEP_SECONDS

__all__ = [
    "Stored",
    "flag_link_sweeps",
    "recipient_hash",
    "refuse_replay",
    "store_events",
    "store_rows",
    "suppress",
]

SOFT_BOUNCE_DAYS = 3

# What an event says about a delivery the send pipeline could not confirm.
_REFUSED = frozenset({EventType.REJECTED})
_SAYS_NOTHING = frozenset({EventType.UNKNOWN, EventType.CONVERTED})

_SUPPRESS_BY_TYPE = {
    EventType.UNSUBSCRIBED: SuppressionReason.UNSUBSCRIBED,
    EventType.COMPLAINED: SuppressionReason.COMPLAINED,
}
_SUBSCRIBER_STATUS = {
    SuppressionReason.UNSUBSCRIBED: SubscriberStatus.UNSUBSCRIBED,
    SuppressionReason.COMPLAINED: SubscriberStatus.COMPLAINED,
    SuppressionReason.BOUNCED: SubscriberStatus.BOUNCED,
    SuppressionReason.MANUAL: SubscriberStatus.UNSUBSCRIBED,
}


def recipient_hash(email: str) -> str:
    return hashlib.sha256(email.strip().lower().encode()).hexdigest()[:32]


@dataclass
class Stored:
    new: int = 0
    duplicate: int = 0
    foreign: int = 0  # about a delivery this account did not send: not stored
    suppressed: list[str] = field(default_factory=list)  # "partner-id:reason" per new suppression


@dataclass(frozen=True)
class _Target:
    delivery: int
    mailing: int
    sender: int
    email: str
    status: DeliveryStatus


def _targets(session: Session, delivery_ids: Iterable[int]) -> dict[int, _Target]:
    ids = sorted(set(delivery_ids))
    if not ids:
        return {}
    rows = session.execute(
        select(
            Delivery.id, Delivery.mailing_id, Mailing.sender_id, Subscriber.email, Delivery.status
        )
        .join(Mailing, Mailing.id == Delivery.mailing_id)
        .join(Subscriber, Subscriber.id == Delivery.subscriber_id)
        .where(_among(session, Delivery.id, ids))
    )
    return {r[0]: _Target(*r) for r in rows}


def _among(session: Session, column: Any, ids: list[int]) -> Any:
    """``column IN ids``; on PostgreSQL one array parameter (``= ANY``), not one per id: the
    statement stays short, and is converted and planned once."""
    if session.get_bind().dialect.name == "postgresql":
        return column == any_(bindparam("ids", ids, type_=postgresql.ARRAY(BigInteger)))
    return column.in_(ids)


def store_events(
    session: Session, events: Sequence[Event], *, sender_id: int, soft_bounce_days: int
) -> Stored:
    """Store a verified webhook's events for the account of partner ``sender_id``; acts on the
    new ones. The caller commits."""
    targets = _targets(session, (e.delivery_id for e in events if e.delivery_id is not None))
    rows: list[dict[str, Any]] = []
    foreign = 0
    for e in events:
        target = targets.get(e.delivery_id) if e.delivery_id is not None else None
        if e.delivery_id is not None and (target is None or target.sender != sender_id):
            foreign += 1  # another account's delivery, or none at all: never trusted
            continue
        rows.append(
            {
                "delivery_id": e.delivery_id,
                "mailing_id": target.mailing if target else None,
                "type": e.type,
                "provider": e.provider,
                "provider_event_id": e.event_id[:255],
                "recipient_hash": recipient_hash(e.recipient),
                "human": not e.machine,
                "bounce": e.bounce.value,
                "occurred_at": e.occurred_at,
                "raw": dict(e.raw),
            }
        )
    stored = store_rows(session, rows, soft_bounce_days=soft_bounce_days, targets=targets)
    stored.foreign = foreign
    return stored


def store_rows(
    session: Session,
    rows: Sequence[Mapping[str, Any]],
    *,
    soft_bounce_days: int = SOFT_BOUNCE_DAYS,
    targets: Mapping[int, _Target] | None = None,
) -> Stored:
    """Insert event rows (TrackingEvent columns), skipping those already stored, and act on the
    new ones. The caller commits."""
    stored = Stored()
    if not rows:
        return stored
    stmt = (
        insert_or_skip(session, TrackingEvent)
        .on_conflict_do_nothing(
            index_elements=["provider", "provider_event_id", "recipient_hash", "type"]
        )
        .returning(
            TrackingEvent.delivery_id,
            TrackingEvent.type,
            TrackingEvent.bounce,
            TrackingEvent.occurred_at,
        )
    )
    new: Sequence[Any] = (
        _insert_pg(session, rows)
        if session.get_bind().dialect.name == "postgresql"
        else session.execute(stmt, [dict(r) for r in rows]).all()
    )
    stored.new, stored.duplicate = len(new), len(rows) - len(new)
    about = [r for r in new if r.delivery_id is not None]
    if not about:
        return stored
    if targets is None:
        targets = _targets(session, (r.delivery_id for r in about))
    _resolve_unknown(session, about, targets)
    _apply_policy(session, about, targets, soft_bounce_days, stored)
    return stored


_PG_COLUMNS: tuple[tuple[str, str, object], ...] = (
    ("delivery_id", "bigint", None),
    ("mailing_id", "bigint", None),
    ("type", "varchar", None),
    ("provider", "varchar", None),
    ("provider_event_id", "varchar", None),
    ("recipient_hash", "varchar", ""),
    ("human", "boolean", True),
    ("bounce", "varchar", "none"),
    ("link_index", "integer", None),
    ("amount", "float8", None),
    ("occurred_at", "timestamptz", None),
    ("raw", "json", {}),
)
_PG_INSERT = (
    "INSERT INTO tracking_event ("
    + ", ".join(c for c, _, _ in _PG_COLUMNS)
    + ") SELECT * FROM unnest("
    + ", ".join(f"%b::{t}[]" for _, t, _ in _PG_COLUMNS)
    + ") ON CONFLICT (provider, provider_event_id, recipient_hash, type) DO NOTHING"
    " RETURNING delivery_id, type, bounce, occurred_at"
)


def _insert_pg(session: Session, rows: Sequence[Mapping[str, Any]]) -> list[Any]:
    """One statement for the whole batch: the columns as arrays, unnested by the server."""
    arrays: list[list[Any]] = [[] for _ in _PG_COLUMNS]
    for r in rows:
        for values, (name, _, default) in zip(arrays, _PG_COLUMNS, strict=True):
            values.append(r.get(name, default))
    arrays[2] = [str(t) for t in arrays[2]]
    arrays[11] = [orjson.dumps(v).decode() for v in arrays[11]]
    driver = session.connection().connection.driver_connection
    with driver.cursor(binary=True) as cursor:  # type: ignore[union-attr]
        cursor.execute(_PG_INSERT, tuple(arrays))
        got = cursor.fetchall()
    return [_New(d, EventType(t), b, at) for d, t, b, at in got]


@dataclass(frozen=True)
class _New:
    delivery_id: int | None
    type: EventType
    bounce: str
    occurred_at: dt.datetime


def _resolve_unknown(
    session: Session, new: Sequence[Row[Any]], targets: Mapping[int, _Target]
) -> None:
    """A delivery whose provider call ended in doubt is settled by what the provider reports."""
    verdict: dict[int, DeliveryStatus] = {}
    for r in new:
        target = targets.get(r.delivery_id)
        if target is None or target.status is not DeliveryStatus.UNKNOWN:
            continue
        if r.type in _REFUSED:
            verdict.setdefault(r.delivery_id, DeliveryStatus.FAILED)
        elif r.type not in _SAYS_NOTHING:
            verdict[r.delivery_id] = DeliveryStatus.ACCEPTED
    now = dt.datetime.now(dt.UTC)
    for status in (DeliveryStatus.ACCEPTED, DeliveryStatus.FAILED):
        ids = [d for d, s in verdict.items() if s is status]
        if ids:
            session.execute(
                update(Delivery)
                .where(Delivery.id.in_(ids), Delivery.status == DeliveryStatus.UNKNOWN)
                .values(
                    status=status,
                    error=None if status is DeliveryStatus.ACCEPTED else "rejected by the provider",
                    updated_at=now,
                )
            )
    if verdict:  # a mailing whose last batch was in doubt may be complete now
        finish_settled(session, sorted({targets[d].mailing for d in verdict}))


def _apply_policy(
    session: Session,
    new: Sequence[Any],
    targets: Mapping[int, _Target],
    soft_bounce_days: int,
    stored: Stored,
) -> None:
    hits: dict[tuple[int, SuppressionReason], dict[str, str]] = {}
    soft: dict[int, set[str]] = {}
    for r in new:
        target = targets.get(r.delivery_id)
        if target is None:
            continue
        reason = _SUPPRESS_BY_TYPE.get(r.type)
        if reason is None and r.bounce == BounceClass.COMPLAINT:
            reason = SuppressionReason.COMPLAINED
        if reason is None and r.bounce == BounceClass.HARD:
            reason = SuppressionReason.BOUNCED
        if reason is not None:
            hits.setdefault((target.sender, reason), {}).setdefault(target.email, str(r.type))
        elif r.bounce == BounceClass.SOFT:
            soft.setdefault(target.sender, set()).add(target.email)
    for (owner, reason), emails in sorted(hits.items()):
        stored.suppressed += [f"{owner}:{reason}"] * len(
            suppress_many(session, owner, emails, reason)
        )
    for owner, addresses in sorted(soft.items()):
        days = _soft_bounce_days(session, owner, sorted(addresses))
        over = {e: "soft bounces" for e, n in days.items() if n >= soft_bounce_days}
        for _ in suppress_many(session, owner, over, SuppressionReason.BOUNCED):
            stored.suppressed.append(f"{owner}:{SuppressionReason.BOUNCED}")


def _soft_bounce_days(session: Session, owner: int, emails: Sequence[str]) -> dict[str, int]:
    """Per address: distinct UTC days with a soft bounce on ``owner``'s mail since the last
    delivery to it (a delivery in between starts the count again), for all in one query that
    reaches the subscribers through the (list_id, email) key of the owner's lists."""
    lists = select(MailingList.id).where(MailingList.partner_id == owner)
    of_addresses = (
        select(
            Subscriber.email, TrackingEvent.occurred_at, TrackingEvent.type, TrackingEvent.bounce
        )
        .join(Delivery, Delivery.id == TrackingEvent.delivery_id)
        .join(Mailing, Mailing.id == Delivery.mailing_id)
        .join(Subscriber, Subscriber.id == Delivery.subscriber_id)
        .where(
            Mailing.sender_id == owner,
            Subscriber.list_id.in_(lists),
            Subscriber.email.in_(emails),
            TrackingEvent.type.in_((EventType.DELIVERED, EventType.BOUNCED, EventType.DEFERRED)),
        )
    )
    by_email: dict[str, list[Any]] = {}
    for e in session.execute(of_addresses):
        by_email.setdefault(e.email, []).append(e)
    counts = {}
    for email, events in by_email.items():
        delivered = [_utc(e.occurred_at) for e in events if e.type == EventType.DELIVERED]
        since = max(delivered, default=None)
        counts[email] = len(
            {
                _utc(e.occurred_at).date()
                for e in events
                if e.bounce == BounceClass.SOFT and (since is None or _utc(e.occurred_at) > since)
            }
        )
    return counts


def suppress_many(
    session: Session, owner: int, emails: Mapping[str, str], reason: SuppressionReason
) -> list[str]:
    """Suppress several addresses (address -> source) for ``owner``, all its lists, in two
    statements; returns those that are new."""
    if not emails:
        return []
    rows = [
        {"partner_id": owner, "email": e.strip().lower(), "reason": reason, "source": s[:64]}
        for e, s in emails.items()
    ]
    inserted = (
        session.execute(
            insert_or_skip(session, Suppression)
            .values(rows)
            .on_conflict_do_nothing(index_elements=["partner_id", "email"])
            .returning(Suppression.email)
        )
        .scalars()
        .all()
    )
    lists = select(MailingList.id).where(MailingList.partner_id == owner)
    now = dt.datetime.now(dt.UTC)
    session.execute(
        update(Subscriber)
        .where(
            Subscriber.list_id.in_(lists),
            Subscriber.email.in_([r["email"] for r in rows]),
            Subscriber.status == SubscriberStatus.SUBSCRIBED,
        )
        .values(status=_SUBSCRIBER_STATUS[reason], status_changed_at=now, updated_at=now)
    )
    return list(inserted)


def _utc(at: dt.datetime) -> dt.datetime:
    return at if at.tzinfo else at.replace(tzinfo=dt.UTC)


def suppress(
    session: Session, owner: int, email: str, reason: SuppressionReason, *, source: str
) -> bool:
    """Suppress ``email`` for list owner ``owner`` (all its lists); True when it is new. Every
    batch claimed after this commits skips the address; a re-import never undoes it."""
    return bool(suppress_many(session, owner, {email: source}, reason))


def refuse_replay(session: Session, provider: str, token: str) -> bool:
    """Record a webhook's one-time token; False when it was seen before (a replay). Committed
    with the events, so a request that failed before its commit may be retried."""
    inserted = session.execute(
        insert_or_skip(session, WebhookNonce)
        .values(provider=provider, token=token[:255])
        .on_conflict_do_nothing(index_elements=["provider", "token"])
        .returning(WebhookNonce.token)
    ).first()
    return inserted is not None


def flag_link_sweeps(
    session: Session, links: Mapping[int, int], delivery_ids: Iterable[int]
) -> int:
    """Flag as machine-made the clicks of deliveries that hit every link of their message (two
    or more) within ``SWEEP_SECONDS``; ``links`` maps mailing id to its number of links.
    Returns how many clicks were flagged."""
    ids = sorted(set(delivery_ids))
    if not ids:
        return 0
    clicks = session.execute(
        select(
            TrackingEvent.id,
            TrackingEvent.delivery_id,
            TrackingEvent.mailing_id,
            TrackingEvent.link_index,
            TrackingEvent.occurred_at,
        ).where(
            TrackingEvent.type == EventType.CLICKED,
            TrackingEvent.provider == "jvmail",
            TrackingEvent.delivery_id.in_(ids),
            TrackingEvent.human.is_(True),
        )
    ).all()
    by_delivery: dict[int, list[Any]] = {}
    for c in clicks:
        by_delivery.setdefault(c.delivery_id, []).append(c)
    flagged: list[int] = []
    span = dt.timedelta(seconds=SWEEP_SECONDS)
    for group in by_delivery.values():
        count = links.get(group[0].mailing_id, 0)
        if count < 2:
            continue
        group.sort(key=lambda c: _utc(c.occurred_at))
        start = 0
        for end in range(len(group)):
            while _utc(group[end].occurred_at) - _utc(group[start].occurred_at) > span:
                start += 1
            window = group[start : end + 1]
            if len({c.link_index for c in window}) >= count:
                flagged.extend(c.id for c in window)
    if flagged:
        session.execute(
            update(TrackingEvent)
            .where(TrackingEvent.id.in_(sorted(set(flagged))))
            .values(human=False)
        )
    return len(set(flagged))
