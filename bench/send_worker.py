"""The workers bench/send.py starts (`dramatiq send_worker`): the pipeline's actors, sending
through SendGrid's API at the fake server's address (BENCH_SENDGRID_API), or over SMTP to the
local sink (BENCH_PROVIDER=smtp, BENCH_SMTP_PORT)."""

from __future__ import annotations

import os
import threading

import dramatiq
from dramatiq.brokers.redis import RedisBroker

from jvmail.broker import make_broker
from jvmail.dispatch.actors import Runtime, declare, settle_heap
from jvmail.dispatch.guard import RedisGuard
from jvmail.dispatch.limits import RedisLimiter
from jvmail.providers.base import Provider
from jvmail.providers.sendgrid import SendGridProvider
from jvmail.providers.smtp import SmtpProvider

_namespace = os.environ["JVMAIL_REDIS_NAMESPACE"]
broker = make_broker(os.environ["JVMAIL_REDIS_URL"], namespace=_namespace)
dramatiq.set_broker(broker)
_provider: Provider
if os.environ.get("BENCH_PROVIDER") == "smtp":
    _local = threading.local()

    def _smtp(_mailing: int) -> Provider:
        if not hasattr(_local, "smtp"):  # one kept-open connection per thread
            _local.smtp = SmtpProvider(
                "127.0.0.1",
                int(os.environ["BENCH_SMTP_PORT"]),
                security="none",
                from_addr="news@bench.example",
            )
        return _local.smtp  # type: ignore[no-any-return]

    _pick = _smtp
else:
    _provider = SendGridProvider(
        "SG.bench",
        from_addr="news@bench.example",
        from_name="Bench",
        api=os.environ["BENCH_SENDGRID_API"],
    )

    def _pick(_mailing: int) -> Provider:
        return _provider


_runtime = Runtime(os.environ["JVMAIL_DATABASE_URL"], _pick)
_runtime.batch = int(os.environ.get("BENCH_BATCH", _runtime.batch))  # deliveries per claim
assert isinstance(broker, RedisBroker)
_runtime.limiter = RedisLimiter(broker.client, namespace=_namespace)
_runtime.guard = RedisGuard(broker.client, namespace=_namespace)  # as production's workers
actors = declare(broker, _runtime)
settle_heap()  # as jvmail.dispatch.boot does
