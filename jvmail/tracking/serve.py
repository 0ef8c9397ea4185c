"""The app `jvmail serve` runs under uvicorn, configured from the environment
(``JVMAIL_DATABASE_URL``, default ``sqlite:///jvmail.db``)."""

from __future__ import annotations

import os

from starlette.applications import Starlette

from jvmail.db import DEFAULT_DATABASE_URL
from jvmail.tracking.app import Settings, create_app

__all__ = ["app"]


def app() -> Starlette:
    return create_app(Settings(os.environ.get("JVMAIL_DATABASE_URL", DEFAULT_DATABASE_URL)))
