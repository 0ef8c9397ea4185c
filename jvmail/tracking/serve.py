"""The app `jvmail serve` runs under uvicorn, configured from the environment
(``JVMAIL_DATABASE_URL``, default ``sqlite:///jvmail.db``; the per-client limits in
``JVMAIL_THROTTLE_<FAMILY>`` and ``JVMAIL_TRUSTED_PROXIES``, see
:meth:`jvmail.tracking.throttle.Limits.from_env`; ``JVMAIL_DRAINERS``, the drain transactions
at once, 0 for a server that only fills the webhook inbox)."""

from __future__ import annotations

import os

from starlette.applications import Starlette

from jvmail.db import DEFAULT_DATABASE_URL
from jvmail.tracking.app import Settings, create_app
from jvmail.tracking.throttle import Limits

__all__ = ["app"]


def app() -> Starlette:
    url = os.environ.get("JVMAIL_DATABASE_URL", DEFAULT_DATABASE_URL)
    drainers = int(os.environ.get("JVMAIL_DRAINERS", str(Settings.drainers)))
    return create_app(
        Settings(
            url,
            throttle=Limits.from_env(os.environ),
            drain=drainers > 0,
            drainers=max(1, drainers),
        )
    )
