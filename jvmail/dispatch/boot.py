"""What a `jvmail worker` process imports: the broker and the pipeline's actors, from the
environment.

``JVMAIL_REDIS_URL`` (the broker; required for workers), ``JVMAIL_DATABASE_URL`` (default
``sqlite:///jvmail.db``), ``JVMAIL_OUTBOX`` (when set, every message goes to this outbox folder
instead of the senders' own accounts), ``JVMAIL_LEASE_SECONDS`` (how long a claimed batch is
one worker's; default 600), ``JVMAIL_MATERIALIZE_PARTS`` (on PostgreSQL, how many connections
make a large mailing's deliveries at once; default 2) and ``JVMAIL_REDIS_NAMESPACE`` (to keep
several hubs on one Redis apart; default ``jvmail``).
"""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

import dramatiq
from dramatiq.brokers.redis import RedisBroker

from jvmail.broker import make_broker
from jvmail.db import DEFAULT_DATABASE_URL
from jvmail.dispatch.accounts import senders_accounts
from jvmail.dispatch.actors import Actors, Runtime, declare, settle_heap
from jvmail.dispatch.guard import RedisGuard
from jvmail.dispatch.limits import RedisLimiter
from jvmail.dispatch.outbox import PARTS

__all__ = ["actors", "broker", "runtime_from_env"]


def runtime_from_env() -> Runtime:
    outbox = os.environ.get("JVMAIL_OUTBOX")
    lease = dt.timedelta(seconds=float(os.environ.get("JVMAIL_LEASE_SECONDS", "600")))
    runtime = Runtime(
        os.environ.get("JVMAIL_DATABASE_URL", DEFAULT_DATABASE_URL),
        lambda mailing: pick(mailing),  # noqa: PLW0108 - `pick` is bound below (late)
        lease=lease,
        relay_after=max(lease / 5, dt.timedelta(seconds=1)),
        parts=_whole_number("JVMAIL_MATERIALIZE_PARTS", PARTS),
    )
    pick = senders_accounts(runtime, Path(outbox) if outbox else None)
    return runtime


def _whole_number(name: str, default: int) -> int:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    if not raw.isdigit() or int(raw) < 1:
        raise ValueError(f"{name}={raw!r}: expected a whole number of 1 or more (or unset it)")
    return int(raw)


_namespace = os.environ.get("JVMAIL_REDIS_NAMESPACE", "jvmail")
broker = make_broker(os.environ.get("JVMAIL_REDIS_URL"), namespace=_namespace)
dramatiq.set_broker(broker)
_runtime = runtime_from_env()
if isinstance(broker, RedisBroker):  # every worker machine shares each account's pace
    _runtime.limiter = RedisLimiter(broker.client, namespace=_namespace)
    # ... and the send guard: a copy of the database (a restored backup) sends nothing twice.
    # Not for an outbox: nothing leaves, and `jvmail reconcile --outbox` resends what its
    # journal shows was never written.
    if not os.environ.get("JVMAIL_OUTBOX"):
        _runtime.guard = RedisGuard(broker.client, namespace=_namespace)
actors: Actors = declare(broker, _runtime)

from jvmail.jobs import Jobs, declare_jobs  # noqa: E402 - the scheduler's jobs, on the same broker

jobs: Jobs = declare_jobs(broker, _runtime, os.environ.get("JVMAIL_OUTBOX"))
settle_heap()
