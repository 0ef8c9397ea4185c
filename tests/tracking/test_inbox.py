"""The webhook inbox and its drain, on SQLite and PostgreSQL: each event stored once, whatever
dies or runs at the same time, and a row that cannot be stored set aside, never dropped."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import subprocess
import sys
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest
from click.testing import CliRunner
from dramatiq.brokers.stub import StubBroker
from sqlalchemy import Engine, func, select, text, update
from sqlalchemy.orm import Session, sessionmaker

from jvmail.cli import cli
from jvmail.db import make_sessionmaker
from jvmail.db.models import (
    Delivery,
    DeliveryStatus,
    EventType,
    Subscriber,
    Suppression,
    TrackingEvent,
    WebhookInbox,
)
from jvmail.dispatch.actors import Runtime, declare
from jvmail.dispatch.pipeline import dispatch, send_batch
from jvmail.jobs import credit
from jvmail.providers.outbox import OutboxProvider
from jvmail.tracking import inbox
from jvmail.tracking.events import BounceClass, Event
from jvmail.tracking.inbox import MAX_ATTEMPTS, Drained, Drainer, accept, decode, drain, encode
from jvmail.tracking.store import Stored
from tests.dispatch.conftest import Hub, build_hub

NOW = dt.datetime(2026, 11, 30, 12, 0, 0, 123456, tzinfo=dt.UTC)
HERE = Path(__file__).parent


class Crash(BaseException):
    """Stands for the process dying: nothing in the drain catches it."""


@dataclass
class Sent:
    engine: Engine
    sessions: sessionmaker[Session]
    session: Session
    hub: Hub
    deliveries: dict[str, int]  # email -> delivery id

    def event(self, n: int, email: str, kind: EventType = EventType.DELIVERED) -> Event:
        bounce = BounceClass.HARD if kind is EventType.BOUNCED else BounceClass.NONE
        return Event(
            provider="sendgrid",
            event_id=f"ev-{n}",
            type=kind,
            recipient=email,
            occurred_at=NOW,
            delivery_id=self.deliveries[email],
            bounce=bounce,
            raw={"event": str(kind), "email": email, "n": n},
        )

    def readers(self, count: int) -> list[str]:
        return sorted(self.deliveries)[:count]

    def accept(self, events: Sequence[Event], partner: int | None = None) -> None:
        with self.sessions() as session:
            accept(session, partner or self.hub.sender.id, "sendgrid", events)
            session.commit()

    def count(self, table: Any) -> int:
        self.session.commit()
        return int(self.session.scalar(select(func.count()).select_from(table)) or 0)

    def stored_ids(self) -> list[str]:
        self.session.commit()
        return sorted(self.session.scalars(select(TrackingEvent.provider_event_id)))


@pytest.fixture
def sent(engine: Engine, session: Session, tmp_path: Path) -> Sent:
    hub = build_hub(session)
    for bounds in dispatch(session, hub.mailing.id, batch_size=100):
        send_batch(session, OutboxProvider(tmp_path), hub.mailing.id, bounds)
    rows = session.execute(
        select(Subscriber.email, Delivery.id)
        .join(Delivery, Delivery.subscriber_id == Subscriber.id)
        .where(Delivery.mailing_id == hub.mailing.id)
    )
    return Sent(engine, make_sessionmaker(engine), session, hub, dict(rows.all()))


def test_events_come_back_as_they_went_in() -> None:
    events = [
        Event(
            provider="sendgrid",
            event_id="ev-1",
            type=EventType.CLICKED,
            recipient="a@b.example",
            occurred_at=NOW,
            delivery_id=7,
            message_id="m-1",
            machine=True,
            url="https://owner.example/offer",
            user_agent="Mozilla/5.0",
            raw={"event": "click\nline two", "nested": {"list": [1, 2.5, None, "x"]}},
        ),
        Event("ses", "ev-2", EventType.BOUNCED, "c@d.example", NOW, bounce=BounceClass.SOFT),
    ]
    assert decode(encode(events)) == events
    assert decode(encode(decode(encode(events)))) == events  # payloads kept as JSON, as they are
    # Rows written before Event lost a field, or gained one, still read.
    head, raw = encode(events[1:]).split(b"\n")
    data = orjson.loads(head)
    data["fields"].append("retired")
    data["events"][0].append(1)
    assert decode(orjson.dumps(data) + b"\n" + raw) == events[1:]
    head, raw = encode(events[:1]).split(b"\n")
    data = orjson.loads(head)
    at = data["fields"].index("user_agent")
    del data["fields"][at], data["events"][0][at]
    expected = dataclasses.replace(events[0], user_agent=None)
    assert decode(orjson.dumps(data) + b"\n" + raw) == [expected]


def test_a_drain_stores_each_event_once_and_empties_the_inbox(sent: Sent) -> None:
    a, b, c = sent.readers(3)
    first = [sent.event(1, a), sent.event(2, b, EventType.BOUNCED)]
    sent.accept(first)
    sent.accept([*first, sent.event(3, c)])  # a provider retry, plus one more event
    sent.accept([sent.event(4, a)], partner=sent.hub.owner.id)  # another account's delivery
    done = drain(sent.sessions)
    assert done == Drained(rows=3, events=6, new=3, duplicate=2, foreign=1, suppressed=1)
    assert sent.count(WebhookInbox) == 0
    assert sent.stored_ids() == ["ev-1", "ev-2", "ev-3"]
    assert sent.count(Suppression) == 1
    assert drain(sent.sessions).took == 0
    sent.accept(first)  # again, after they were stored
    assert drain(sent.sessions) == Drained(rows=1, events=2, duplicate=2)
    assert sent.stored_ids() == ["ev-1", "ev-2", "ev-3"]


def test_a_step_takes_the_oldest_rows_up_to_its_budget_and_at_least_one(sent: Sent) -> None:
    readers = sent.readers(6)
    for sizes in ([0], [1], [2, 3, 4], [5]):
        sent.accept([sent.event(n, readers[n]) for n in sizes])
    drainer = Drainer(sent.sessions, max_events=2)
    steps = [(d.rows, d.events) for d in iter(drainer.step, Drained())]
    assert steps == [(2, 2), (1, 3), (1, 1)]
    assert sent.stored_ids() == [f"ev-{n}" for n in range(6)]


def test_a_crash_before_the_commit_leaves_the_rows_for_the_next_drain(
    sent: Sent, monkeypatch: pytest.MonkeyPatch
) -> None:
    a, b = sent.readers(2)
    events = [sent.event(1, a), sent.event(2, b, EventType.BOUNCED)]
    sent.accept(events)

    real = inbox.store_events

    def store_then_die(*args: Any, **kwargs: Any) -> Stored:
        real(*args, **kwargs)  # the events are written, the rows deleted: not yet committed
        raise Crash

    monkeypatch.setattr(inbox, "store_events", store_then_die)
    with pytest.raises(Crash):
        drain(sent.sessions)
    assert sent.count(WebhookInbox) == 1
    assert sent.count(TrackingEvent) == 0
    assert sent.count(Suppression) == 0
    monkeypatch.undo()
    assert drain(sent.sessions) == Drained(rows=1, events=2, new=2, suppressed=1)
    assert sent.stored_ids() == ["ev-1", "ev-2"]
    assert sent.count(WebhookInbox) == 0


def test_a_drainer_killed_mid_drain_loses_nothing_and_stores_nothing_twice(
    sent: Sent, db_url: str
) -> None:
    readers = sent.readers(10)
    for n in range(0, 10, 2):
        sent.accept([sent.event(n, readers[n]), sent.event(n + 1, readers[n + 1])])
    killed = subprocess.run(
        [sys.executable, str(HERE / "drain_and_die.py"), db_url],
        capture_output=True,
        timeout=120,
        check=False,
    )
    assert killed.returncode == -9, killed.stderr.decode()
    if db_url.startswith("postgresql"):
        # Wait until the server has rolled the dead connection's transaction back.
        with sent.sessions() as session:
            session.execute(text("SET LOCAL lock_timeout = '20s'"))
            session.execute(select(WebhookInbox.id).with_for_update()).all()
    assert sent.count(WebhookInbox) == 5
    assert sent.count(TrackingEvent) == 0
    done = drain(sent.sessions)
    assert (done.rows, done.new, done.duplicate) == (5, 10, 0)
    assert sent.stored_ids() == sorted(f"ev-{n}" for n in range(10))


def test_a_row_that_fails_on_its_own_is_set_aside_not_lost(
    sent: Sent, monkeypatch: pytest.MonkeyPatch
) -> None:
    a, b, c = sent.readers(3)
    sent.accept([sent.event(1, a)])
    sent.accept([sent.event(2, b)])  # this one cannot be stored
    sent.accept([sent.event(3, c)])
    real = inbox.store_events

    def refuse_ev_2(session: Session, events: Sequence[Event], **kwargs: Any) -> Stored:
        if any(e.event_id == "ev-2" for e in events):
            raise ValueError("ev-2 cannot be stored")
        return real(session, events, **kwargs)

    monkeypatch.setattr(inbox, "store_events", refuse_ev_2)
    done = drain(sent.sessions)
    assert (done.rows, done.new, done.set_aside) == (2, 2, 1)
    assert done.retried == 3 + MAX_ATTEMPTS - 1  # the batch, then ev-2's tries before the last
    assert sent.stored_ids() == ["ev-1", "ev-3"]
    sent.session.commit()
    (left,) = sent.session.execute(
        select(WebhookInbox.attempts, WebhookInbox.error, WebhookInbox.events)
    ).all()
    assert left.attempts == MAX_ATTEMPTS
    assert "ev-2 cannot be stored" in (left.error or "")
    assert [e.event_id for e in decode(left.events)] == ["ev-2"]
    assert drain(sent.sessions).took == 0  # set aside: no longer tried


def test_two_drainers_at_once_never_take_the_same_rows(
    sent: Sent, db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    readers = sent.readers(14)
    for n in range(12):  # each row repeats two events of the row before
        sent.accept([sent.event(k, readers[k]) for k in range(n, n + 3)])
    real = inbox.store_events
    # On PostgreSQL both drainers must be inside a transaction, holding rows, at the same time:
    # the second skips the first's rows instead of waiting for them (SKIP LOCKED). On SQLite
    # writers take turns, so they are only run side by side.
    both_in = threading.Barrier(2, timeout=20) if db_url.startswith("postgresql") else None
    met: list[str] = []

    def store(*args: Any, **kwargs: Any) -> Stored:
        if both_in is not None and threading.current_thread().name not in met:
            met.append(threading.current_thread().name)
            both_in.wait()  # raises BrokenBarrierError if the other one never gets in
        return real(*args, **kwargs)

    monkeypatch.setattr(inbox, "store_events", store)

    def run() -> Drained:
        return Drainer(sent.sessions, max_events=3).until_empty()

    with ThreadPoolExecutor(2) as pool:
        one, two = [f.result() for f in [pool.submit(run), pool.submit(run)]]
    assert (one.retried, two.retried, one.set_aside, two.set_aside) == (0, 0, 0, 0)
    assert one.rows + two.rows == 12
    if both_in is not None:
        assert one.rows > 0
        assert two.rows > 0
    assert one.new + two.new == 14
    assert one.new + one.duplicate + two.new + two.duplicate == 36
    assert sent.stored_ids() == sorted(f"ev-{n}" for n in range(14))
    assert sent.count(WebhookInbox) == 0


def _unknown(sent: Sent, email: str) -> int:
    delivery = sent.deliveries[email]
    sent.session.execute(
        update(Delivery)
        .where(Delivery.id == delivery)
        .values(status=DeliveryStatus.UNKNOWN, updated_at=dt.datetime.now(dt.UTC))
    )
    sent.session.commit()
    return delivery


def _status(sent: Sent, delivery: int) -> DeliveryStatus:
    sent.session.commit()
    return DeliveryStatus(
        sent.session.scalar(select(Delivery.status).where(Delivery.id == delivery))
    )


def test_the_tick_and_jvmail_reconcile_store_the_inbox_before_they_settle(
    sent: Sent, tmp_path: Path
) -> None:
    """A server stopped before storing what it accepted, and none runs: the workers' tick
    stores the inbox's events, so the deliveries in doubt they report on are settled by them;
    `jvmail reconcile` and `jvmail credit` store them too."""
    a, b, c = sent.readers(3)
    url = sent.engine.url.render_as_string(hide_password=False)
    first = _unknown(sent, a)
    sent.accept([sent.event(1, a)])
    runtime = Runtime(url, lambda _: OutboxProvider(tmp_path))
    try:
        declare(StubBroker(), runtime).tick(None)
    finally:
        runtime.close()
    assert sent.count(WebhookInbox) == 0
    assert _status(sent, first) is DeliveryStatus.ACCEPTED

    second = _unknown(sent, b)
    sent.accept([sent.event(2, b)])
    result = CliRunner().invoke(cli, ["--db", url, "reconcile", "--json"])
    assert result.exit_code == 0, result.output
    figures = json.loads(result.output)
    assert figures["inbox_events_stored"] == 1  # which settled it: nothing left in doubt
    assert (figures["accepted"], figures["waiting"]) == (0, 0)
    assert _status(sent, second) is DeliveryStatus.ACCEPTED

    sent.accept([sent.event(3, c, EventType.OPENED)])
    result = CliRunner().invoke(cli, ["--db", url, "credit"])
    assert result.exit_code == 0, result.output
    assert "1 webhook event(s) stored from the inbox" in result.output
    sent.accept([sent.event(4, c, EventType.CLICKED)])
    runtime = Runtime(url, lambda _: OutboxProvider(tmp_path))
    try:
        credit(runtime)  # the scheduler's credit job
    finally:
        runtime.close()
    assert sent.count(WebhookInbox) == 0
    assert sent.stored_ids() == ["ev-1", "ev-2", "ev-3", "ev-4"]
