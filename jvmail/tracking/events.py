"""The normalized event every webhook parser returns, and the one error they raise.

A parser is a pure function ``parse(headers, body, keys, now) -> list[Event]``: it verifies the
request's authenticity on the raw bytes first, then maps each provider event to an `Event`.
Anything forged, unsigned, stale or malformed raises `Rejected` with the HTTP status to answer
and a reason, and nothing is stored.
"""

from __future__ import annotations

import datetime as dt
import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from jvmail.db.models import EventType

__all__ = ["BounceClass", "Event", "Headers", "Rejected"]

Headers = Mapping[str, str]  # names lowercased


class BounceClass(enum.StrEnum):
    """How a failed delivery counts against the address, decided from the raw provider fields."""

    HARD = "hard"
    SOFT = "soft"
    COMPLAINT = "complaint"
    NONE = "none"


@dataclass(frozen=True, slots=True)
class Event:
    """One thing that happened to one recipient of one message, as a provider reported it.

    ``event_id`` with ``provider``, the recipient and ``type`` identifies the event for
    de-duplication: the provider's own event id where it has a stable one, otherwise a digest of
    the fields that identify it. ``delivery_id`` comes from the metadata jvmail sent with the
    message (``jv_delivery``); None when the event carries none (then ``message_id`` may find it).
    ``machine`` is True when the provider says an open or click was made by a machine.
    """

    provider: str
    event_id: str
    type: EventType
    recipient: str
    occurred_at: dt.datetime
    delivery_id: int | None = None
    message_id: str | None = None
    bounce: BounceClass = BounceClass.NONE
    machine: bool = False
    url: str | None = None
    user_agent: str | None = None
    raw: Mapping[str, Any] = field(default_factory=dict)


class Rejected(Exception):
    """A webhook request that must not be stored: answer ``status`` with ``reason``."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
