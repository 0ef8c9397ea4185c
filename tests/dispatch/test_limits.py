"""Per-account pace, daily quota and holds, in memory and on a real Redis, with a given clock."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from jvmail.db.models import Delivery, Partner
from jvmail.dispatch.limits import (
    Limiter,
    MemoryLimiter,
    RedisLimiter,
    account_key,
    seconds_to_midnight,
)
from jvmail.dispatch.pipeline import dispatch, send_batch
from tests.dispatch.conftest import Hub, Limiters
from tests.dispatch.test_pipeline import Recording

DAY = 1_796_083_200.0  # 2026-12-01T00:00:00Z


@pytest.fixture
def limiter(limiters: Limiters) -> Limiter:
    return limiters.one


def _book(limiter: Limiter, count: int, now: float, **kw: float | None) -> tuple[float, bool, bool]:
    per_second = kw.get("per_second", 14.0)
    per_day = kw.get("per_day")
    b = limiter.reserve(
        "acct",
        count,
        per_second=per_second,
        per_day=int(per_day) if per_day else None,
        now=now,
        max_wait=float(kw.get("max_wait") or 30.0),
    )
    return round(b.wait, 6), b.booked, b.quota


def test_the_pace_spaces_batches_across_callers(limiter: Limiter) -> None:
    assert _book(limiter, 7, DAY) == (0.0, True, False)
    assert _book(limiter, 7, DAY) == (0.5, True, False)  # 7 at 14/s: after half a second
    assert _book(limiter, 14, DAY + 0.1) == (0.9, True, False)
    # Too long a wait books nothing: the same question later gets the same answer.
    assert _book(limiter, 14, DAY + 0.1, max_wait=1.0) == (1.9, False, False)
    assert _book(limiter, 14, DAY + 2.0, max_wait=1.0) == (0.0, True, False)


def test_the_daily_quota_refuses_what_would_pass_it_until_the_next_day(limiter: Limiter) -> None:
    assert _book(limiter, 12, DAY + 10, per_second=None, per_day=20)[1:] == (True, False)
    wait, booked, quota = _book(limiter, 9, DAY + 20, per_second=None, per_day=20)
    assert (booked, quota) == (False, True)
    assert wait == 86_400 - 20  # until midnight UTC
    assert _book(limiter, 8, DAY + 30, per_second=None, per_day=20)[1] is True
    assert _book(limiter, 20, DAY + 86_400, per_second=None, per_day=20)[1] is True


def test_a_batch_over_the_days_quota_is_given_back_unsent(
    session: Session, hub: Hub, tmp_path: Path
) -> None:
    sender = session.get(Partner, hub.sender.id)
    assert sender is not None
    sender.provider = {"kind": "outbox", "max_per_day": 10}
    session.commit()
    provider = Recording(tmp_path)
    (bounds,) = dispatch(session, hub.mailing.id, batch_size=100)
    limiter = MemoryLimiter()
    report = send_batch(session, provider, hub.mailing.id, bounds, limiter=limiter)
    assert report.error.startswith("the sender's account has sent its 10 messages for today")
    assert not report.retry
    assert not provider.seen
    pending = session.scalar(select(func.count()).where(Delivery.status == "pending"))
    assert pending == 25
    # The account is held until midnight UTC, so the relay leaves the mailing alone till then.
    now = time.time()
    assert limiter.held_until(account_key(hub.sender.id), now) == pytest.approx(
        now + seconds_to_midnight(now), abs=5.0
    )


def _free(limiter: Limiter, now: float, key: str = "acct", count: int = 10) -> tuple[float, bool]:
    """Book ``count`` for an account without a pace or a quota: (wait, booked)."""
    b = limiter.reserve(key, count, per_second=None, per_day=None, now=now, max_wait=30.0)
    assert b.held == (not b.booked)  # nothing but a hold stops an account without limits
    return round(b.wait, 6), b.booked


def test_a_hold_stops_every_booking_of_the_account_until_it_ends(limiters: Limiters) -> None:
    # Held by one worker (process); honoured by every other one, limits or not.
    limiters.one.hold("acct", DAY + 60, now=DAY)
    assert _free(limiters.other, DAY + 1) == (59.0, False)  # longer than max_wait: not booked
    assert _free(limiters.other, DAY + 40) == (20.0, True)  # sits out the rest, then goes
    assert _free(limiters.other, DAY + 60) == (0.0, True)
    assert _free(limiters.other, DAY + 1, key="another") == (0.0, True)  # one account only
    assert limiters.other.held_until("acct", DAY + 59.5) == DAY + 60
    assert limiters.other.held_until("acct", DAY + 60) is None
    assert limiters.other.held_until("another", DAY) is None


def test_a_hold_only_ever_lengthens(limiters: Limiters) -> None:
    limiters.one.hold("acct", DAY + 60, now=DAY)
    limiters.other.hold("acct", DAY + 30, now=DAY + 1)  # a shorter Retry-After, later
    assert limiters.one.held_until("acct", DAY + 2) == DAY + 60
    limiters.other.hold("acct", DAY + 90, now=DAY + 2)
    assert limiters.one.held_until("acct", DAY + 2) == DAY + 90


def test_the_pace_resumes_where_the_hold_ends(limiter: Limiter) -> None:
    assert _book(limiter, 7, DAY) == (0.0, True, False)  # 7 at 14/s: the next at DAY + 0.5
    limiter.hold("acct", DAY + 10, now=DAY + 0.1)
    assert _book(limiter, 7, DAY + 0.2) == (9.8, True, False)  # at the hold's end
    assert _book(limiter, 7, DAY + 0.2) == (10.3, True, False)  # then at the account's pace
    assert _book(limiter, 7, DAY + 10.0) == (1.0, True, False)
    # Too long a wait: the hold is named when it alone is too long.
    refused = [
        limiter.reserve("acct", 7, per_second=14.0, per_day=None, now=DAY + 0.2, max_wait=w)
        for w in (5.0, 10.0)
    ]
    assert [(round(b.wait, 6), b.booked, b.held) for b in refused] == [
        (9.8, False, True),
        (11.3, False, False),
    ]


@pytest.mark.parametrize("limiters", ["redis"], indirect=True)
def test_a_redis_hold_is_one_key_that_expires_with_it(limiters: Limiters) -> None:
    redis_limiter = limiters.one
    assert isinstance(redis_limiter, RedisLimiter)
    redis_limiter.hold("acct", DAY + 2.5, now=DAY)
    key = f"{redis_limiter.namespace}:hold:acct"
    assert 0 < redis_limiter.client.pttl(key) <= 2500  # gone (an empty Redis) once it ends
    redis_limiter.hold("acct", DAY - 1, now=DAY)  # already over: nothing booked
    assert 0 < redis_limiter.client.pttl(key) <= 2500
