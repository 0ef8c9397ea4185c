"""Store tracking events in bulk, once each, and act on the new ones.

Every event is inserted with ON CONFLICT DO NOTHING on (provider, event id, recipient, type), so
a webhook delivered twice, or three times at once, is stored once and acted on once: only the
rows the insert returns are new. For new events, in the same transaction:

- a delivery left ``unknown`` by the send pipeline is resolved: any event about it proves the
  provider took the message (``accepted``), a provider rejection fails it; never a resend.
  Events arrive in any order: one that proves the message was taken accepts a delivery a
  rejection failed before it arrived, as it would have in the same request;
- the suppression policy runs: an unsubscribe, a complaint or a hard bounce suppresses the
  address for the list owner at once; soft bounces on ``soft_bounce_days`` distinct days do,
  unless a delivery came in between (see :func:`_soft_bounce_days`), whenever its event arrives:
  a late delivery lifts a soft-bounce suppression that it shows was one day short;
- clicks that swept every link of a message within seconds are flagged machine-made.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import orjson
from sqlalchemy import (
    BigInteger,
    Row,
    String,
    any_,
    bindparam,
    delete,
    select,
    type_coerce,
    update,
)
from sqlalchemy.dialects import postgresql
from sqlalchemy.orm import Session, sessionmaker

from jvmail.db.engine import begin_writing, insert_or_skip
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
    "RawJson",
    "Stored",
    "flag_link_sweeps",
    "recipient_hash",
    "refuse_replay",
    "store_events",
    "store_rows",
    "suppress",
    "writing",
]

SOFT_BOUNCE_DAYS = 3

# What an event says about a delivery the send pipeline could not confirm.
_REFUSED = frozenset({EventType.REJECTED})
_SAYS_NOTHING = frozenset({EventType.UNKNOWN, EventType.CONVERTED})
_REJECTED = "rejected by the provider"  # the error of a delivery a provider's event failed
_SOFT = "soft bounces"  # the source of a suppression for soft bounces

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


@contextlib.contextmanager
def writing(sessions: sessionmaker[Session]) -> Iterator[Session]:
    """A session for a transaction that writes: on SQLite it takes the write lock up front
    (waiting its turn), as one that reads first and writes later could not wait for it."""
    with sessions() as session:
        begin_writing(session)
        yield session


class RawJson(Mapping[str, Any]):
    """A provider's raw payload kept as the JSON it was stored as: parsed only when read, and
    written to PostgreSQL as it is (the webhook inbox hands events over with these)."""

    __slots__ = ("_value", "json")

    def __init__(self, json: bytes) -> None:
        self.json = json
        self._value: dict[str, Any] | None = None

    def _parsed(self) -> dict[str, Any]:
        if self._value is None:
            self._value = orjson.loads(self.json)
        return self._value

    def __getitem__(self, key: str) -> Any:
        return self._parsed()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._parsed())

    def __len__(self) -> int:
        return len(self._parsed())


def _json(value: object) -> Any:
    """orjson's fallback: raw payloads as they are, other mappings as dicts."""
    if isinstance(value, RawJson):
        return orjson.Fragment(value.json)
    if isinstance(value, Mapping):
        return dict(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def recipient_hash(email: str) -> str:
    return hashlib.sha256(email.strip().lower().encode()).hexdigest()[:32]


@dataclass
class Stored:
    new: int = 0
    duplicate: int = 0
    foreign: int = 0  # about a delivery this account did not send: not stored
    suppressed: list[str] = field(default_factory=list)  # "partner-id:reason" per new suppression


class _Target(NamedTuple):  # a tuple: thousands are made per batch
    delivery: int
    mailing: int
    sender: int
    email: str
    status: str  # a DeliveryStatus value


def _targets(session: Session, delivery_ids: Iterable[int]) -> dict[int, _Target]:
    ids = sorted(set(delivery_ids))
    if not ids:
        return {}
    status = type_coerce(Delivery.status, String())  # compared, never kept: no enum per row
    rows = session.execute(
        select(Delivery.id, Delivery.mailing_id, Mailing.sender_id, Subscriber.email, status)
        .join(Mailing, Mailing.id == Delivery.mailing_id)
        .join(Subscriber, Subscriber.id == Delivery.subscriber_id)
        .where(_among(session, Delivery.id, ids))
    )
    return {r[0]: _Target(*r) for r in rows}


def _among(session: Session, column: Any, values: Sequence[Any], of: Any = BigInteger) -> Any:
    """``column IN values``; on PostgreSQL one array parameter (``= ANY``) of type ``of``, not
    one per value: the statement stays short, and is converted and planned once."""
    if session.get_bind().dialect.name == "postgresql":
        return column == any_(bindparam("among", values, type_=postgresql.ARRAY(of)))
    return column.in_(values)


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
                "raw": e.raw if isinstance(e.raw, dict | RawJson) else dict(e.raw),
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
        else session.execute(stmt, [_plain(r) for r in rows]).all()
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


def _plain(row: Mapping[str, Any]) -> dict[str, Any]:
    raw = row.get("raw")
    return dict(row) if raw is None or type(raw) is dict else {**row, "raw": dict(raw)}


# tracking_event's columns as a row may give them, and the SQL default of those it may leave
# out (NULL when none).
_PG_COLUMNS: tuple[tuple[str, str, str | None], ...] = (
    ("delivery_id", "bigint", None),
    ("mailing_id", "bigint", None),
    ("type", "varchar", None),
    ("provider", "varchar", None),
    ("provider_event_id", "varchar", None),
    ("recipient_hash", "varchar", "''"),
    ("human", "boolean", "true"),
    ("bounce", "varchar", "'none'"),
    ("link_index", "integer", None),
    ("amount", "float8", None),
    ("occurred_at", "timestamptz", None),
    ("raw", "json", "'{}'"),
)
_PG_INSERT = (
    "INSERT INTO tracking_event ("
    + ", ".join(c for c, _, _ in _PG_COLUMNS)
    + ") SELECT "
    + ", ".join(f"coalesce(r.{c}, {d})" if d else f"r.{c}" for c, _, d in _PG_COLUMNS)
    + " FROM json_to_recordset(%s::json) AS r("
    + ", ".join(f"{c} {t}" for c, t, _ in _PG_COLUMNS)
    + ") ON CONFLICT (provider, provider_event_id, recipient_hash, type) DO NOTHING"
    " RETURNING delivery_id, type, bounce, occurred_at"
)


def _insert_pg(session: Session, rows: Sequence[Mapping[str, Any]]) -> list[Any]:
    """One statement for the whole batch: the rows as one JSON document (written by orjson, in
    C), unpacked by the server."""
    document = orjson.dumps(rows, default=_json).decode()
    driver = session.connection().connection.driver_connection
    with driver.cursor() as cursor:  # type: ignore[union-attr]
        cursor.execute(_PG_INSERT, (document,))
        got = cursor.fetchall()
    return [_New(d, _EVENT_TYPES[t], b, at) for d, t, b, at in got]


_EVENT_TYPES = {t.value: t for t in EventType}


class _New(NamedTuple):  # a tuple: thousands are made per batch
    delivery_id: int | None
    type: EventType
    bounce: str
    occurred_at: dt.datetime


def _resolve_unknown(
    session: Session, new: Sequence[Row[Any]], targets: Mapping[int, _Target]
) -> None:
    """A delivery whose provider call ended in doubt is settled by what the provider reports:
    any event but a rejection proves the message was taken, also after a rejection that arrived
    first failed the delivery (the provider's events come in any order)."""
    verdict: dict[int, DeliveryStatus] = {}
    for r in new:
        target = targets.get(r.delivery_id)
        if target is None or target.status not in (DeliveryStatus.UNKNOWN, DeliveryStatus.FAILED):
            continue
        if r.type in _REFUSED:
            if target.status == DeliveryStatus.UNKNOWN:
                verdict.setdefault(r.delivery_id, DeliveryStatus.FAILED)
        elif r.type not in _SAYS_NOTHING:
            verdict[r.delivery_id] = DeliveryStatus.ACCEPTED
    now = dt.datetime.now(dt.UTC)
    for status in (DeliveryStatus.ACCEPTED, DeliveryStatus.FAILED):
        ids = [d for d, s in verdict.items() if s is status]
        if ids:
            settles = Delivery.status == DeliveryStatus.UNKNOWN
            if status is DeliveryStatus.ACCEPTED:  # or failed by a rejection, not by the send
                rejected = (Delivery.status == DeliveryStatus.FAILED) & (
                    Delivery.error == _REJECTED
                )
                settles = settles | rejected
            session.execute(
                update(Delivery)
                .where(Delivery.id.in_(ids), settles)
                .values(
                    status=status,
                    error=None if status is DeliveryStatus.ACCEPTED else _REJECTED,
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
    delivered: dict[int, set[str]] = {}
    for r in new:
        target = targets.get(r.delivery_id)
        if target is None:
            continue
        if r.type == EventType.DELIVERED:
            delivered.setdefault(target.sender, set()).add(target.email)
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
        over = {e: _SOFT for e, n in days.items() if n >= soft_bounce_days}
        for _ in suppress_many(session, owner, over, SuppressionReason.BOUNCED):
            stored.suppressed.append(f"{owner}:{SuppressionReason.BOUNCED}")
    for owner, addresses in sorted(delivered.items()):
        _lift_soft_bounces(session, owner, sorted(addresses), soft_bounce_days)


def _lift_soft_bounces(
    session: Session, owner: int, emails: Sequence[str], soft_bounce_days: int
) -> None:
    """Lift ``owner``'s soft-bounce suppressions of ``emails`` that a delivery, whose event
    arrived after the bounces, shows were not on enough days since the last delivery; their
    subscribers (which only that suppression marked bounced) are subscribed again."""
    held = session.scalars(
        select(Suppression.email).where(
            Suppression.partner_id == owner,
            _among(session, Suppression.email, [e.strip().lower() for e in emails], String),
            Suppression.reason == SuppressionReason.BOUNCED,
            Suppression.source == _SOFT,
        )
    ).all()
    if not held:
        return
    days = _soft_bounce_days(session, owner, held)
    lift = sorted(e for e in held if days.get(e, 0) < soft_bounce_days)
    if not lift:
        return
    session.execute(
        delete(Suppression).where(
            Suppression.partner_id == owner,
            Suppression.email.in_(lift),
            Suppression.reason == SuppressionReason.BOUNCED,
            Suppression.source == _SOFT,
        )
    )
    now = dt.datetime.now(dt.UTC)
    lists = select(MailingList.id).where(MailingList.partner_id == owner)
    session.execute(
        update(Subscriber)
        .where(
            Subscriber.list_id.in_(lists),
            Subscriber.email.in_(lift),
            Subscriber.status == SubscriberStatus.BOUNCED,
        )
        .values(status=SubscriberStatus.SUBSCRIBED, status_changed_at=now, updated_at=now)
    )


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
    statements; returns those that are new. An address held only for soft bounces takes the
    firmer cause instead, so a late delivery never lifts it (:func:`_lift_soft_bounces`)."""
    if not emails:
        return []
    rows = [  # in one order everywhere: two writers of the same addresses never deadlock
        {"partner_id": owner, "email": e.strip().lower(), "reason": reason, "source": s[:64]}
        for e, s in sorted(emails.items())
    ]
    inserted: Sequence[str]
    if session.get_bind().dialect.name == "postgresql":
        inserted = _suppress_pg(session, owner, reason, rows)
    else:
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
    firmer: dict[str, list[str]] = {}  # source -> addresses that were held already
    new = set(inserted)
    for e, s in sorted(emails.items()):
        if s[:64] != _SOFT and e.strip().lower() not in new:
            firmer.setdefault(s[:64], []).append(e.strip().lower())
    for source, held in sorted(firmer.items()):
        session.execute(
            update(Suppression)
            .where(
                Suppression.partner_id == owner,
                _among(session, Suppression.email, held, String),
                Suppression.source == _SOFT,
            )
            .values(reason=reason, source=source)
        )
    lists = select(MailingList.id).where(MailingList.partner_id == owner)
    now = dt.datetime.now(dt.UTC)
    session.execute(
        update(Subscriber)
        .where(
            Subscriber.list_id.in_(lists),
            _among(session, Subscriber.email, [r["email"] for r in rows], String),
            Subscriber.status == SubscriberStatus.SUBSCRIBED,
        )
        .values(status=_SUBSCRIBER_STATUS[reason], status_changed_at=now, updated_at=now)
    )
    return list(inserted)


_PG_SUPPRESS = (
    "INSERT INTO suppression (partner_id, email, reason, source)"
    " SELECT %s, r.email, %s, r.source"
    " FROM json_to_recordset(%s::json) AS r(email varchar, source varchar)"
    " ON CONFLICT (partner_id, email) DO NOTHING RETURNING email"
)


def _suppress_pg(
    session: Session, owner: int, reason: SuppressionReason, rows: list[dict[str, Any]]
) -> list[str]:
    """The insert of :func:`suppress_many` as one statement whatever the number of addresses
    (built once, not compiled anew for each count)."""
    session.flush()  # what the session holds is written first, as its own statements would
    driver = session.connection().connection.driver_connection
    with driver.cursor() as cursor:  # type: ignore[union-attr]
        cursor.execute(_PG_SUPPRESS, (owner, reason.value, orjson.dumps(rows).decode()))
        return [email for (email,) in cursor.fetchall()]


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
