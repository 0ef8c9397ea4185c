"""The send guard (jvmail.dispatch.guard), in memory and on a real Redis: marks reported, cleared
marks free again, and in the pipeline: a copy of the database (a backup restored beside the
live one) records what the other copy sent ``dead`` and never hands it to the provider."""

from __future__ import annotations

import logging
import sqlite3
import time
import uuid
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import closing
from pathlib import Path

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from jvmail.db import make_engine, make_sessionmaker, upgrade
from jvmail.db.models import Delivery, DeliveryStatus
from jvmail.dispatch.guard import (
    ANSWER_SECONDS,
    KEEP_SECONDS,
    GuardDown,
    Mark,
    MemoryGuard,
    RedisGuard,
    SendGuard,
)
from jvmail.dispatch.limits import Clock
from jvmail.dispatch.pipeline import ALREADY_SENT, dispatch, send_batch
from jvmail.providers.base import ProviderError
from tests.conftest import REDIS_URL, unavailable
from tests.dispatch.conftest import Hub, build_hub
from tests.dispatch.test_pipeline import Recording

MAILING = Mark(7, 3, 2)


@pytest.fixture(params=["memory", "redis"])
def guard(request: pytest.FixtureRequest) -> Iterator[SendGuard]:
    if request.param == "memory":
        yield MemoryGuard()
        return
    client = redis.Redis.from_url(REDIS_URL)
    try:
        client.ping()
    except redis.RedisError as exc:
        unavailable("Redis", exc)
    namespace = f"jvmail-test-{uuid.uuid4().hex[:8]}"
    yield RedisGuard(client, namespace=namespace)
    for key in client.scan_iter(f"{{{namespace}:*"):
        client.delete(key)
    client.close()


def _attempt() -> str:
    return uuid.uuid4().hex


def test_a_mark_reports_the_recipients_marked_before(guard: SendGuard) -> None:
    assert guard.mark(MAILING, [1, 2, 70_000], _attempt()) == set()
    assert guard.mark(MAILING, [2, 3, 70_000, 70_001], _attempt()) == {2, 70_000}
    assert guard.mark(MAILING, [1, 2, 3], _attempt()) == {1, 2, 3}
    # Another mailing, or the same id for another promotion or list, has marks of its own.
    assert guard.mark(Mark(8, 3, 2), [1, 2], _attempt()) == set()
    assert guard.mark(Mark(7, 4, 2), [1, 2], _attempt()) == set()
    assert guard.mark(Mark(7, 3, 5), [1, 2], _attempt()) == set()


def test_cleared_marks_can_be_marked_again(guard: SendGuard) -> None:
    guard.mark(MAILING, [10, 11, 12], _attempt())
    guard.clear(MAILING, [11, 12])
    assert guard.mark(MAILING, [10, 11, 12, 13], _attempt()) == {10}
    guard.clear(MAILING, [])  # nothing to clear: no call
    assert guard.mark(MAILING, [11], _attempt()) == {11}


def test_redis_marks_are_kept_for_weeks_in_small_keys() -> None:
    client = redis.Redis.from_url(REDIS_URL)
    try:
        client.ping()
    except redis.RedisError as exc:
        unavailable("Redis", exc)
    namespace = f"jvmail-test-{uuid.uuid4().hex[:8]}"
    try:
        guard = RedisGuard(client, namespace=namespace)
        guard.mark(MAILING, [5, 2_000_000], _attempt())
        found = sorted(k.decode() for k in client.scan_iter(f"{{{namespace}:*"))
        keys = [k for k in found if ":answer:" not in k]
        assert keys == [guard.key(MAILING, 0), guard.key(MAILING, 30)]
        (answer,) = set(found) - set(keys)  # the attempt's answer, kept a day, not weeks
        assert ANSWER_SECONDS - 60 < client.ttl(answer) <= ANSWER_SECONDS
        for key in keys:
            assert KEEP_SECONDS - 60 < client.ttl(key) <= KEEP_SECONDS
            assert client.strlen(key) <= 8192  # a high subscriber id makes no huge bitmap
    finally:
        for key in client.scan_iter(f"{{{namespace}:*"):
            client.delete(key)
        client.close()


def test_an_unreachable_redis_is_reported_as_guard_down() -> None:
    once = Retry(NoBackoff(), 0)  # the client's own retries would only make this slower
    guard = RedisGuard(
        redis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.5, retry=once)
    )
    with pytest.raises(GuardDown):
        guard.mark(MAILING, [1], _attempt())
    with pytest.raises(GuardDown):
        guard.clear(MAILING, [1])


# -- in the pipeline ------------------------------------------------------------------------


def _statuses(session: Session) -> dict[str, int]:
    session.expire_all()
    rows = session.execute(select(Delivery.status, func.count()).group_by(Delivery.status))
    return {str(s): n for s, n in rows}


def _backup(source: Path, target: Path) -> None:
    """An online backup of a SQLite database (what its writers committed so far)."""
    with closing(sqlite3.connect(source)) as live, closing(sqlite3.connect(target)) as copy:
        live.backup(copy)


def _copy(path: Path) -> Session:
    engine = make_engine(f"sqlite:///{path}")
    upgrade(engine)
    return make_sessionmaker(engine)()


def test_a_restored_copy_records_what_the_live_one_sent_dead_and_never_sends_it(
    guard: SendGuard, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    live = _copy(tmp_path / "live.db")
    hub = build_hub(live)
    mailing = hub.mailing.id
    first, second, third = dispatch(live, mailing, batch_size=10)
    sent_live, sent_copy = Recording(tmp_path / "live"), Recording(tmp_path / "copy")
    send_batch(live, sent_live, mailing, first, guard=guard)
    _backup(tmp_path / "live.db", tmp_path / "backup.db")  # one batch in
    send_batch(live, sent_live, mailing, second, guard=guard)
    copy = _copy(tmp_path / "backup.db")  # restored beside the live one
    caplog.set_level(logging.ERROR, logger="jvmail.dispatch.pipeline")
    report = send_batch(copy, sent_copy, mailing, second, guard=guard)
    assert (report.claimed, report.duplicates, report.sent) == (10, 10, 0)
    assert sent_copy.calls == 0  # the provider was not called for them at all
    errors = {d.error for d in copy.scalars(select(Delivery).where(Delivery.id.between(*second)))}
    assert errors == {ALREADY_SENT}
    assert _statuses(copy) == {"accepted": 9, "failed": 1, "dead": 10, "pending": 5}
    (alert,) = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert f"mailing {mailing}: 10 recipient(s)" in alert.getMessage()
    assert "@" not in alert.getMessage()  # never an address in the log
    # The last batch: whichever copy marks a recipient first sends it; the other does not.
    assert send_batch(copy, sent_copy, mailing, third, guard=guard).sent == 5
    assert send_batch(live, sent_live, mailing, third, guard=guard).duplicates == 5
    both = Counter(sent_live.seen) + Counter(sent_copy.seen)
    assert len(both) == 25
    assert set(both.values()) == {1}  # the provider got each recipient once, across both
    live.close()
    copy.close()


def _held_marks(guard: SendGuard, session: Session, hub: Hub) -> set[int]:
    """The subscribers of the mailing whose marks are set (marking them all, to ask)."""
    subscribers = list(
        session.scalars(select(Delivery.subscriber_id).where(Delivery.mailing_id == hub.mailing.id))
    )
    return guard.mark(
        Mark(hub.mailing.id, hub.promotion.id, hub.lists[0].id), subscribers, _attempt()
    )


def _by_status(session: Session, hub: Hub) -> dict[DeliveryStatus, set[int]]:
    rows = session.execute(
        select(Delivery.status, Delivery.subscriber_id).where(Delivery.mailing_id == hub.mailing.id)
    )
    found: dict[DeliveryStatus, set[int]] = {}
    for status, subscriber in rows:
        found.setdefault(status, set()).add(subscriber)
    return found


def test_rows_given_back_unsent_are_unmarked_and_sent_by_the_retry(
    guard: SendGuard, session: Session, hub: Hub, tmp_path: Path
) -> None:
    provider = Recording(tmp_path)
    provider.fail = ProviderError("503 Service Unavailable", "wait", transient=True)
    provider.fail_on_call = 2  # the first piece of 10 goes through, the second is refused
    (bounds,) = dispatch(session, hub.mailing.id, batch_size=100)
    report = send_batch(session, provider, hub.mailing.id, bounds, guard=guard)
    assert report.retry
    assert _statuses(session) == {"accepted": 9, "failed": 1, "pending": 15}
    provider.fail = None
    report = send_batch(session, provider, hub.mailing.id, bounds, guard=guard)
    assert (report.sent, report.duplicates) == (15, 0)
    assert _statuses(session) == {"accepted": 24, "failed": 1}
    assert set(provider.seen.values()) == {1}


def test_doubtful_and_refused_rows_keep_their_marks(
    guard: SendGuard, session: Session, hub: Hub, tmp_path: Path
) -> None:
    provider = Recording(tmp_path)
    provider.fail = ProviderError("read timed out", "", transient=True, maybe_sent=True)
    provider.fail_on_call = 2
    (bounds,) = dispatch(session, hub.mailing.id, batch_size=100)
    send_batch(session, provider, hub.mailing.id, bounds, guard=guard)
    rows = _by_status(session, hub)
    # Piece 1 answered (nine accepted, one refused for good), piece 2 in doubt, piece 3 untried.
    assert [len(rows[s]) for s in ("accepted", "failed", "sending", "pending")] == [9, 1, 10, 5]
    marked = _held_marks(guard, session, hub)
    kept = rows[DeliveryStatus.ACCEPTED] | rows[DeliveryStatus.FAILED]
    assert marked == kept | rows[DeliveryStatus.SENDING]


class _Down:
    """A guard whose Redis does not answer."""

    def mark(self, mailing: Mark, subscribers: Sequence[int], attempt: str) -> set[int]:
        raise GuardDown("Connection refused")

    def clear(self, mailing: Mark, subscribers: Sequence[int]) -> None:
        raise GuardDown("Connection refused")


def test_nothing_is_sent_while_the_guard_is_down_and_the_rows_wait(
    session: Session, hub: Hub, tmp_path: Path
) -> None:
    provider = Recording(tmp_path)
    (bounds,) = dispatch(session, hub.mailing.id, batch_size=100)
    report = send_batch(session, provider, hub.mailing.id, bounds, guard=_Down())
    assert report.retry
    assert "send guard" in report.error
    assert provider.calls == 0
    assert _statuses(session) == {"pending": 25}
    send_batch(session, provider, hub.mailing.id, bounds, guard=MemoryGuard())
    assert _statuses(session) == {"accepted": 24, "failed": 1}


def test_an_attempt_asked_again_gets_its_first_answer(guard: SendGuard) -> None:
    # Redis ran the script and died before answering; asked again once it is back, the same
    # attempt must not take its own marks for another copy's.
    assert guard.mark(MAILING, [1, 2], _attempt()) == set()
    lost = _attempt()
    assert guard.mark(MAILING, [2, 3, 4], lost) == {2}
    assert guard.mark(MAILING, [2, 3, 4], lost) == {2}  # the same answer, not {2, 3, 4}
    assert guard.mark(MAILING, [3, 4], _attempt()) == {3, 4}  # another attempt: marked


class _AnswerLost(MemoryGuard):
    """Marks, then loses its first answer (Redis killed after the script ran); answers after."""

    def __init__(self) -> None:
        super().__init__()
        self.asked = 0

    def mark(self, mailing: Mark, subscribers: Sequence[int], attempt: str) -> set[int]:
        self.asked += 1
        seen = super().mark(mailing, subscribers, attempt)
        if self.asked == 1:
            raise GuardDown("Connection closed by server.")
        return seen


def test_a_mark_whose_answer_was_lost_is_asked_again_not_taken_for_a_copys(
    session: Session, hub: Hub, tmp_path: Path
) -> None:
    provider = Recording(tmp_path)
    guard = _AnswerLost()
    slept: list[float] = []
    clock = Clock(now=time.time, sleep=slept.append)
    (bounds,) = dispatch(session, hub.mailing.id, batch_size=100)
    report = send_batch(session, provider, hub.mailing.id, bounds, guard=guard, clock=clock)
    assert (guard.asked, slept) == (2, [0.25])
    assert (report.error, report.duplicates) == ("", 0)
    assert _statuses(session) == {"accepted": 24, "failed": 1}
    assert set(provider.seen.values()) == {1}
