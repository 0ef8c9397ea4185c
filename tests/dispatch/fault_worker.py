"""The worker processes of the exactly-once tests: `dramatiq tests.dispatch.fault_worker`.

Production's own boot (:mod:`jvmail.dispatch.boot`: the Redis broker and namespace, the
RedisLimiter, the lease and the relay delay from JVMAIL_LEASE_SECONDS), with one change: every
mailing goes through SendGrid's API at a local fake server, as bench/send_worker.py does.

* ``JVMAIL_TEST_SENDGRID_API``: the fake's base URL; ``JVMAIL_TEST_SENDGRID_KEY``: its API key.
* ``JVMAIL_TEST_SENDGRID_TIMEOUT``: the client's read timeout, seconds (default: the provider's).
* ``JVMAIL_TEST_BATCH``: deliveries per batch message (default: the pipeline's).
* ``JVMAIL_TEST_PART_SPAN``: subscriber ids a part of a materialize spans at least (default:
  the pipeline's), so that the tests' small lists are made in parts.
"""

from __future__ import annotations

import os
import threading

from jvmail.dispatch import boot, outbox
from jvmail.providers.base import Provider
from jvmail.providers.http import TIMEOUT
from jvmail.providers.sendgrid import SendGridProvider

_timeout = (TIMEOUT[0], float(os.environ.get("JVMAIL_TEST_SENDGRID_TIMEOUT", TIMEOUT[1])))
_local = threading.local()


def _sendgrid(_mailing_id: int) -> Provider:
    """One client per worker thread (a requests.Session is not shared between threads)."""
    provider: Provider | None = getattr(_local, "provider", None)
    if provider is None:
        provider = _local.provider = SendGridProvider(
            os.environ["JVMAIL_TEST_SENDGRID_KEY"],
            from_addr="team@sender.example",
            from_name="Sender",
            api=os.environ["JVMAIL_TEST_SENDGRID_API"],
            timeout=_timeout,
        )
    return provider


runtime = boot._runtime  # the actors read runtime.provider and runtime.batch at each message
runtime.provider = _sendgrid
runtime.batch = int(os.environ.get("JVMAIL_TEST_BATCH", runtime.batch))
outbox.PART_SPAN = int(os.environ.get("JVMAIL_TEST_PART_SPAN", outbox.PART_SPAN))
broker, actors = boot.broker, boot.actors
