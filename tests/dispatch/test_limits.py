"""Per-account pace and daily quota, in memory and on a real Redis, with a given clock."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from jvmail.db.models import Delivery, Partner
from jvmail.dispatch.limits import Limiter, MemoryLimiter, RedisLimiter
from jvmail.dispatch.pipeline import dispatch, send_batch
from tests.conftest import REDIS_URL, unavailable
from tests.dispatch.conftest import Hub
from tests.dispatch.test_pipeline import Recording

DAY = 1_796_083_200.0  # 2026-12-01T00:00:00Z


@pytest.fixture(params=["memory", "redis"])
def limiter(request: pytest.FixtureRequest) -> Iterator[Limiter]:
    if request.param == "memory":
        yield MemoryLimiter()
        return
    client = redis.Redis.from_url(REDIS_URL)
    try:
        client.ping()
    except redis.RedisError as exc:
        unavailable("Redis", exc)
    namespace = f"jvmail-test-{uuid.uuid4().hex[:8]}"
    yield RedisLimiter(client, namespace=namespace)
    for key in client.scan_iter(f"{namespace}:*"):
        client.delete(key)
    client.close()


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
    report = send_batch(session, provider, hub.mailing.id, bounds, limiter=MemoryLimiter())
    assert report.error.startswith("the sender's account has sent its 10 messages for today")
    assert not report.retry
    assert not provider.seen
    pending = session.scalar(select(func.count()).where(Delivery.status == "pending"))
    assert pending == 25
