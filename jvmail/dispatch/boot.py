"""What a `jvmail worker` process imports: the broker and the pipeline's actors, from the
environment.

``JVMAIL_REDIS_URL`` (the broker; required for workers), ``JVMAIL_DATABASE_URL`` (default
``sqlite:///jvmail.db``), ``JVMAIL_OUTBOX`` (the outbox folder every message goes to; default
``outbox``), ``JVMAIL_LEASE_SECONDS`` (how long a claimed batch is one worker's; default 600)
and ``JVMAIL_REDIS_NAMESPACE`` (to keep several hubs on one Redis apart; default ``jvmail``).
"""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

import dramatiq

from jvmail.broker import make_broker
from jvmail.db import DEFAULT_DATABASE_URL
from jvmail.dispatch.actors import Actors, Runtime, declare
from jvmail.providers.outbox import OutboxProvider

__all__ = ["actors", "broker", "runtime_from_env"]


def runtime_from_env() -> Runtime:
    outbox = OutboxProvider(Path(os.environ.get("JVMAIL_OUTBOX", "outbox")))
    lease = dt.timedelta(seconds=float(os.environ.get("JVMAIL_LEASE_SECONDS", "600")))
    return Runtime(
        os.environ.get("JVMAIL_DATABASE_URL", DEFAULT_DATABASE_URL),
        lambda _mailing: outbox,
        lease=lease,
        relay_after=max(lease / 5, dt.timedelta(seconds=1)),
    )


broker = make_broker(
    os.environ.get("JVMAIL_REDIS_URL"),
    namespace=os.environ.get("JVMAIL_REDIS_NAMESPACE", "jvmail"),
)
dramatiq.set_broker(broker)
actors: Actors = declare(broker, runtime_from_env())
