"""The broker factory: a real Redis round trip, the in-process default, a clear error."""

from __future__ import annotations

import uuid

import dramatiq
import pytest
import redis
from dramatiq.brokers.redis import RedisBroker
from dramatiq.brokers.stub import StubBroker

from jvmail.broker import make_broker
from jvmail.errors import BrokerError
from tests.conftest import REDIS_URL, unavailable


def _round_trip(broker: dramatiq.Broker) -> list[int]:
    seen: list[int] = []

    def record(n: int) -> None:
        seen.append(n)

    actor = dramatiq.actor(record, broker=broker, queue_name=f"q{uuid.uuid4().hex[:8]}")
    worker = dramatiq.Worker(broker, worker_threads=2, worker_timeout=100)
    worker.start()
    try:
        for n in range(5):
            actor.send(n)
        broker.join(actor.queue_name, timeout=10_000)
        worker.join()
    finally:
        worker.stop()
        broker.close()
    return sorted(seen)


@pytest.fixture
def redis_url() -> str:
    try:
        redis.Redis.from_url(REDIS_URL).ping()
    except redis.RedisError as exc:
        unavailable("Redis", exc)
    return REDIS_URL


def test_redis_broker_delivers_messages(redis_url: str) -> None:
    broker = make_broker(redis_url, namespace=f"jvmail-test-{uuid.uuid4().hex[:8]}")
    assert isinstance(broker, RedisBroker)
    assert _round_trip(broker) == [0, 1, 2, 3, 4]


def test_stub_broker_without_a_url() -> None:
    broker = make_broker(None)
    assert isinstance(broker, StubBroker)
    assert _round_trip(broker) == [0, 1, 2, 3, 4]


def test_unreachable_redis_is_a_clear_error() -> None:
    with pytest.raises(BrokerError, match=r"cannot reach Redis at redis://127\.0\.0\.1:1/0"):
        make_broker("redis://127.0.0.1:1/0")
