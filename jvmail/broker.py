"""The message broker: Redis when a URL is configured, otherwise dramatiq's in-process StubBroker.

The broker is transport only: messages carry ids, and the database stays the source of truth.
"""

from __future__ import annotations

import dramatiq
import redis
from dramatiq.brokers.redis import RedisBroker
from dramatiq.brokers.stub import StubBroker

from jvmail.errors import BrokerError

__all__ = ["make_broker"]


def make_broker(redis_url: str | None, *, namespace: str = "jvmail") -> dramatiq.Broker:
    """A broker for ``redis_url``, or an in-process one when it is None.

    Raises:
        BrokerError: Redis does not answer at ``redis_url``.
    """
    if redis_url is None:
        return StubBroker()
    client = redis.Redis.from_url(redis_url)
    try:
        client.ping()
    except redis.RedisError as exc:
        client.close()
        raise BrokerError(
            f"cannot reach Redis at {redis_url}: {exc}",
            "check JVMAIL_REDIS_URL and that redis-server is running",
        ) from exc
    return RedisBroker(client=client, namespace=namespace)  # type: ignore[no-untyped-call]
