"""The webhook inbox: a verified request's events are committed here before it is answered, then
stored from here in bulk by a drain.

A webhook request is answered once its events are safe, not once they are stored: the server
verifies it (account, signature, staleness; a replayed Mailgun token is refused in the same
transaction), commits its normalized events as one ``webhook_inbox`` row (:func:`accept`), and
only then answers. Storing them (:func:`jvmail.tracking.store.store_events`: de-duplication, the
suppression policy, unknown deliveries) is the drain's work, over several requests at once.

A drain step takes the oldest rows, about ``max_events`` events' worth, stores their events and
deletes the rows in one transaction: a step that dies before its commit leaves the rows, and a
later step stores their events, once. Drainers in several processes share the inbox: on
PostgreSQL a step takes rows with ``FOR UPDATE SKIP LOCKED`` (rows another step holds are
skipped, not waited for); on SQLite writers take turns (``BEGIN IMMEDIATE``).

A step that fails after taking rows is rolled back, and its rows are then taken one at a time. A
row that fails on its own is tried ``MAX_ATTEMPTS`` times, then set aside with its error: it stays
in the table (nothing verified is dropped) but no longer holds up the rows behind it. A database
that cannot be reached is not a row's fault: the step raises and nothing is counted.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import operator
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import orjson
from sqlalchemy import delete, func, insert, select, update
from sqlalchemy.orm import Session, sessionmaker

from jvmail.db.models import EventType, HubRecord, WebhookInbox
from jvmail.tracking.events import BounceClass, Event
from jvmail.tracking.store import SOFT_BOUNCE_DAYS, RawJson, _among, store_events, writing

__all__ = [
    "DRAIN_EVENTS",
    "MAX_ATTEMPTS",
    "Drained",
    "Drainer",
    "accept",
    "decode",
    "drain",
    "encode",
    "newest",
]

log = logging.getLogger("jvmail.tracking.inbox")

DRAIN_EVENTS = 4000  # events a step takes at most (at least one row, whatever its size)
MAX_ATTEMPTS = 5  # failures of a row on its own before it is set aside

_FIELDS = tuple(f.name for f in dataclasses.fields(Event) if f.name != "raw")
_KNOWN = frozenset(_FIELDS)
_RAW_LAST = dataclasses.fields(Event)[-1].name == "raw"  # Event(*values, raw=...) works
_values = operator.attrgetter(*_FIELDS)
_TYPE, _AT, _BOUNCE = (_FIELDS.index(f) for f in ("type", "occurred_at", "bounce"))
_TYPES = {t.value: t for t in EventType}
_BOUNCES = {b.value: b for b in BounceClass}


def encode(events: Sequence[Event]) -> bytes:
    """The events as lines of compact JSON: the field names and one array of values per event,
    then each event's raw payload on a line of its own (JSON as orjson writes it has no line
    breaks), so a drain hands the payloads to the database without parsing them."""
    head = orjson.dumps({"fields": _FIELDS, "events": [_values(e) for e in events]})
    return b"\n".join([head, *(_raw(e.raw) for e in events)])


def _raw(raw: Mapping[str, Any]) -> bytes:
    return raw.json if isinstance(raw, RawJson) else orjson.dumps(raw, default=_plain)


def _plain(value: object) -> Any:
    if isinstance(value, Mapping):  # payloads are dicts; any other mapping becomes one
        return dict(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def decode(payload: bytes) -> list[Event]:
    """The events :func:`encode` wrote, their raw payloads left as JSON until read. Rows
    written with other fields than `Event` has now still read: fields it no longer has are
    left out, new ones take their defaults."""
    head, *raws = payload.split(b"\n")
    data = orjson.loads(head)
    names, rows = tuple(data["fields"]), data["events"]
    if names == _FIELDS and _RAW_LAST:
        return [Event(*_typed(row, raw)) for row, raw in zip(rows, raws, strict=True)]
    return [_by_name(names, row, raw) for row, raw in zip(rows, raws, strict=True)]


def _typed(row: list[Any], raw: bytes) -> list[Any]:
    """Event's arguments, in its order: the values as typed, then the payload."""
    row[_TYPE] = _TYPES[row[_TYPE]]
    row[_AT] = dt.datetime.fromisoformat(row[_AT])
    row[_BOUNCE] = _BOUNCES[row[_BOUNCE]]
    row.append(RawJson(raw))
    return row


def _by_name(names: tuple[str, ...], row: list[Any], raw: bytes) -> Event:
    values = {k: v for k, v in zip(names, row, strict=True) if k in _KNOWN}
    values["type"] = _TYPES[values["type"]]
    values["occurred_at"] = dt.datetime.fromisoformat(values["occurred_at"])
    values["bounce"] = _BOUNCES[values.get("bounce", BounceClass.NONE)]
    values["raw"] = RawJson(raw)
    return Event(**values)


def accept(session: Session, partner_id: int, provider: str, events: Sequence[Event]) -> int:
    """Put a verified request's events, for the account of partner ``partner_id``, in the inbox
    as one row; returns how many. The caller commits, and answers the request only after."""
    if events:
        session.execute(
            insert(WebhookInbox).values(
                partner_id=partner_id, provider=provider, events=encode(events), count=len(events)
            )
        )
    return len(events)


@dataclass
class Drained:
    """What drain steps did. ``rows`` inbox rows were stored and deleted; their ``events`` were
    ``new``, ``duplicate`` (stored before) or ``foreign`` (about another account's deliveries:
    dropped), and ``suppressed`` addresses are new suppressions. ``retried`` rows were rolled
    back by a failure and wait to be taken again; ``set_aside`` rows failed too often."""

    rows: int = 0
    events: int = 0
    new: int = 0
    duplicate: int = 0
    foreign: int = 0
    suppressed: int = 0
    retried: int = 0
    set_aside: int = 0

    @property
    def took(self) -> int:
        """Rows the steps took, whatever became of them (0: there was nothing to take)."""
        return self.rows + self.retried + self.set_aside

    def add(self, other: Drained) -> None:
        for f in dataclasses.fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))


class Drainer:
    """Drains the inbox one transaction at a time. One caller at a time per Drainer; any number
    of Drainers, in threads, processes or servers, may share the inbox."""

    def __init__(self, sessions: sessionmaker[Session], *, max_events: int = DRAIN_EVENTS) -> None:
        self.sessions = sessions
        self.max_events = max_events
        self.suspect = 0  # rows up to this id were in a step that failed: taken one at a time

    def step(self, upto: int | None = None) -> Drained:
        """Store the events of the oldest rows (of id ``upto`` at most) and delete those rows, in
        one transaction. A failure once rows were taken rolls the step back and is counted in
        the result; one before (the database unreachable) raises."""
        alone = self.suspect > 0
        taken: list[int] = []
        try:
            with writing(self.sessions) as session:
                rows = _take(session, 1 if alone else self.max_events, upto)
                taken = [r.id for r in rows]
                done = _store(session, rows)
                session.commit()
        except Exception as exc:
            if not taken:
                raise
            return self._failed(taken, exc, alone)
        if alone and (not taken or taken[-1] >= self.suspect):
            self.suspect = 0
        return done

    def until_empty(self, upto: int | None = None) -> Drained:
        """Steps until the rows in the inbox when it was called (or of id ``upto`` at most) are
        stored or set aside; rows another drainer holds are left to it (PostgreSQL)."""
        if upto is None:
            upto = newest(self.sessions)
        total = Drained()
        while upto is not None:
            done = self.step(upto)
            total.add(done)
            if not done.took:
                break
        return total

    def _failed(self, taken: list[int], exc: Exception, alone: bool) -> Drained:
        if not alone:
            log.warning(
                "storing %d webhook inbox row(s) failed; taking them one at a time",
                len(taken),
                exc_info=exc,
            )
            self.suspect = taken[-1]
            return Drained(retried=len(taken))
        with writing(self.sessions) as session:
            attempts = session.scalar(
                update(WebhookInbox)
                .where(WebhookInbox.id == taken[0])
                .values(attempts=WebhookInbox.attempts + 1, error=repr(exc)[:1000])
                .returning(WebhookInbox.attempts)
            )
            session.commit()
        if attempts is not None and attempts >= MAX_ATTEMPTS:
            log.error(
                "webhook inbox row %d failed %d times and is set aside (kept in webhook_inbox)",
                taken[0],
                attempts,
                exc_info=exc,
            )
            return Drained(set_aside=1)
        log.warning("webhook inbox row %d failed (attempt %s)", taken[0], attempts, exc_info=exc)
        return Drained(retried=1)


def newest(sessions: sessionmaker[Session]) -> int | None:
    """The id of the newest row in the inbox; None when it is empty."""
    with sessions() as session:
        return session.scalar(select(func.max(WebhookInbox.id)))


def drain(sessions: sessionmaker[Session], *, max_events: int = DRAIN_EVENTS) -> Drained:
    """Store every event in the inbox now (for the CLI, periodic jobs and tests)."""
    return Drainer(sessions, max_events=max_events).until_empty()


class _Taken(NamedTuple):
    id: int
    partner_id: int
    events: bytes


# On PostgreSQL the rows are read in binary: the payloads as they are, not as hex text twice
# their size (about four times less work for both sides).
_PG_TAKE = (
    "SELECT id, partner_id, events FROM webhook_inbox WHERE attempts < %s AND id <= %s"
    " ORDER BY id LIMIT %s FOR UPDATE SKIP LOCKED"
)


def _take(session: Session, budget: int, upto: int | None) -> Sequence[_Taken]:
    """The oldest rows not set aside, up to ``budget`` events (at least one row), locked."""
    live = [WebhookInbox.attempts < MAX_ATTEMPTS]
    if upto is not None:
        live.append(WebhookInbox.id <= upto)
    sizes = session.scalars(
        select(WebhookInbox.count).where(*live).order_by(WebhookInbox.id).limit(budget)
    ).all()
    rows = events = 0
    for size in sizes:
        if rows and events + size > budget:
            break
        rows, events = rows + 1, events + size
    if not rows:
        return []
    if session.get_bind().dialect.name == "postgresql":
        driver = session.connection().connection.driver_connection
        with driver.cursor(binary=True) as cursor:  # type: ignore[union-attr]
            last = upto if upto is not None else 2**63 - 1
            cursor.execute(_PG_TAKE, (MAX_ATTEMPTS, last, rows))
            return [_Taken(*row) for row in cursor.fetchall()]
    take = (
        select(WebhookInbox.id, WebhookInbox.partner_id, WebhookInbox.events)
        .where(*live)
        .order_by(WebhookInbox.id)
        .limit(rows)
    )
    return [_Taken(*row) for row in session.execute(take)]


def _store(session: Session, rows: Sequence[_Taken]) -> Drained:
    done = Drained(rows=len(rows))
    if not rows:
        return done
    by_partner: dict[int, list[Event]] = {}
    for row in rows:
        by_partner.setdefault(row.partner_id, []).extend(decode(row.events))
    soft_days = session.scalar(select(HubRecord.soft_bounce_days)) or SOFT_BOUNCE_DAYS
    for partner, events in sorted(by_partner.items()):
        # The same order in every drainer, so two that insert the same events wait on each
        # other in one order, never in a cycle.
        events.sort(key=_key)
        stored = store_events(session, events, sender_id=partner, soft_bounce_days=soft_days)
        done.events += len(events)
        done.new += stored.new
        done.duplicate += stored.duplicate
        done.foreign += stored.foreign
        done.suppressed += len(stored.suppressed)
    ids = [row.id for row in rows]
    gone = delete(WebhookInbox).where(_among(session, WebhookInbox.id, ids))
    session.execute(gone, execution_options={"synchronize_session": False})
    return done


def _key(e: Event) -> tuple[str, str, str, str]:
    return e.provider, e.event_id, e.recipient, e.type
