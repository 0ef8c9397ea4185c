"""Drains the webhook inbox of the database at argv[1] and is killed (SIGKILL) once the events
are written, before the commit: a server dying mid-drain. Run by tests/tracking/test_inbox.py."""

from __future__ import annotations

import os
import signal
import sys
from typing import Any

from jvmail.db import make_engine, make_sessionmaker
from jvmail.tracking import inbox
from jvmail.tracking.store import Stored

real = inbox.store_events


def store_then_die(*args: Any, **kwargs: Any) -> Stored:
    real(*args, **kwargs)
    os.kill(os.getpid(), signal.SIGKILL)
    raise AssertionError("SIGKILL did not stop the process")


if __name__ == "__main__":
    inbox.store_events = store_then_die  # type: ignore[assignment]
    inbox.drain(make_sessionmaker(make_engine(sys.argv[1])))
    raise SystemExit("the drain ended without storing anything")
