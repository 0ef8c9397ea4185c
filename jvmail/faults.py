"""Fault points for the crash tests: ``JVMAIL_FAULT=<point>`` kills the process (SIGKILL) there.

Points: ``sync:before-commit`` (a sync's transaction open), ``send:after-claim`` (a batch
claimed and committed, nothing sent), ``send:after-provider`` (the provider took the batch,
nothing recorded), ``dispatch:after-parts`` (a mailing's deliveries made in parts and
committed, the mailing not yet taken). Unset in normal use: then :func:`fault` is one
dictionary lookup.
"""

from __future__ import annotations

import os
import signal

__all__ = ["fault"]

ENV = "JVMAIL_FAULT"


def fault(point: str) -> None:
    if os.environ.get(ENV) == point:
        os.kill(os.getpid(), signal.SIGKILL)
