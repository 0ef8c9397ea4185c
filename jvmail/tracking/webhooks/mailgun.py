"""Mailgun webhooks: one JSON event per request, ``{"signature": {...}, "event-data": {...}}``.

Authenticity: ``signature.signature`` is the hex HMAC-SHA256 of ``timestamp + token`` (no
separator) keyed with the webhook signing key (not the API key); several keys may be configured
for rotation. Every authenticity failure answers 406, which Mailgun takes as "rejected, do not
retry" (any other code is retried for 8 hours): a missing or wrong signature and a timestamp
more than ``max_age`` (9 hours) either side of our clock. A body that is not JSON, or whose
``event-data`` is malformed, answers 400.

The signature covers the timestamp and token, not the event: a captured request could be
replayed, or its event swapped, inside the window. So ``event_id`` is the signature token
(Mailgun's own event ``id`` is unique only within a day): the caller stores the token and
refuses a request whose token it has already seen (``webhook_nonce``, kept for good).

``max_age`` covers Mailgun's retry schedule (5 min, 10 min, 15 min, 1 h, 2 h, 4 h: about 7.5
hours), in case a retry carries the original signature block: a retried event is never refused
as stale, and a replayed one is refused by its token.

Mapping (``event`` decides, then the fields named):

- ``accepted`` is queued; ``rejected`` (Mailgun refused to send) is rejected; ``delivered``.
- ``failed`` with ``severity`` temporary is deferred (soft): Mailgun retries it. Permanent is:
  rejected when ``reason`` says Mailgun suppressed the address without trying
  (``suppress-bounce`` hard, ``suppress-unsubscribe`` / ``suppress-complaint`` no class);
  bounced soft when ``reason`` is ``old`` (retries ran out) or ``esp-block``, or the
  ``delivery-status.code`` is a 4xx; bounced hard otherwise.
- ``opened`` / ``clicked``: by a machine when ``client-info.bot`` is non-empty (apple, gmail,
  generic) or ``client-info.client-type`` is ``robot``; ``clicked`` carries its ``url``.
- ``unsubscribed``; ``complained`` is complained (complaint); anything else is unknown.

``message_id`` is ``message.headers.message-id`` in the angle brackets of the ``id`` Mailgun
answered at send time, so the two compare equal. ``jv_delivery`` is a user variable.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from jvmail.db.models import EventType
from jvmail.tracking.events import BounceClass, Event, Headers, Rejected
from jvmail.tracking.webhooks.common import (
    check_fresh,
    child,
    delivery_id,
    from_unix,
    load_json,
    mapping,
    optional_text,
    recipient,
    text,
)

__all__ = ["MailgunKeys", "parse"]

PROVIDER = "mailgun"
_FORGED = 406  # Mailgun does not retry a 406

_TYPES: dict[str, tuple[EventType, BounceClass]] = {
    "accepted": (EventType.QUEUED, BounceClass.NONE),
    "rejected": (EventType.REJECTED, BounceClass.NONE),
    "delivered": (EventType.DELIVERED, BounceClass.NONE),
    "opened": (EventType.OPENED, BounceClass.NONE),
    "clicked": (EventType.CLICKED, BounceClass.NONE),
    "unsubscribed": (EventType.UNSUBSCRIBED, BounceClass.NONE),
    "complained": (EventType.COMPLAINED, BounceClass.COMPLAINT),
}
_UNKNOWN = (EventType.UNKNOWN, BounceClass.NONE)
_DEFERRED = (EventType.DEFERRED, BounceClass.SOFT)
_SUPPRESSED: dict[str, tuple[EventType, BounceClass]] = {
    "suppress-bounce": (EventType.REJECTED, BounceClass.HARD),
    "suppress-unsubscribe": (EventType.REJECTED, BounceClass.NONE),
    "suppress-complaint": (EventType.REJECTED, BounceClass.NONE),
}
_SOFT_REASONS = frozenset({"old", "esp-block"})


@dataclass(frozen=True)
class MailgunKeys:
    """Webhook signing keys (newest first or any order) and the freshness window."""

    signing_keys: tuple[str, ...]
    max_age: dt.timedelta = dt.timedelta(hours=9)


def parse(headers: Headers, body: bytes, keys: MailgunKeys, now: dt.datetime) -> list[Event]:
    """Verify a Mailgun webhook request and map its one event; ``event_id`` is the token.

    Raises `Rejected`: 406 for a missing or wrong signature or a timestamp outside
    ``keys.max_age`` of ``now``; 400 for a body that is not JSON or a malformed event.
    """
    payload = mapping(load_json(body), "body")
    token = _verify(payload.get("signature"), keys, now)
    return [_event(mapping(payload.get("event-data"), "event-data"), token)]


def _verify(signature: object, keys: MailgunKeys, now: dt.datetime) -> str:
    fields = mapping(signature, "signature", _FORGED)
    timestamp = text(fields, "timestamp", _FORGED)
    token = text(fields, "token", _FORGED)
    given = text(fields, "signature", _FORGED).encode()
    check_fresh(from_unix(timestamp, _FORGED), now, keys.max_age, _FORGED)
    signed = (timestamp + token).encode()
    if not any(hmac.compare_digest(_hmac(k, signed), given) for k in keys.signing_keys):
        raise Rejected(_FORGED, "signature does not verify with any configured key")
    return token


def _hmac(key: str, signed: bytes) -> bytes:
    return hmac.new(key.encode(), signed, hashlib.sha256).hexdigest().encode()


def _event(data: Mapping[str, Any], token: str) -> Event:
    kind, bounce = _classify(text(data, "event"), data)
    client = child(data, "client-info")
    return Event(
        provider=PROVIDER,
        event_id=token,
        type=kind,
        recipient=recipient(data.get("recipient")),
        occurred_at=from_unix(data.get("timestamp")),
        delivery_id=delivery_id(child(data, "user-variables").get("jv_delivery")),
        message_id=_message_id(data),
        bounce=bounce,
        machine=bool(client.get("bot")) or client.get("client-type") == "robot",
        url=optional_text(data, "url") if kind is EventType.CLICKED else None,
        user_agent=optional_text(client, "user-agent"),
        raw=data,
    )


def _classify(name: str, data: Mapping[str, Any]) -> tuple[EventType, BounceClass]:
    if name != "failed":
        return _TYPES.get(name, _UNKNOWN)
    if data.get("severity") == "temporary":
        return _DEFERRED
    reason = optional_text(data, "reason") or ""
    if reason in _SUPPRESSED:
        return _SUPPRESSED[reason]
    soft = reason in _SOFT_REASONS or _smtp_class(data) == 4
    return EventType.BOUNCED, BounceClass.SOFT if soft else BounceClass.HARD


def _smtp_class(data: Mapping[str, Any]) -> int | None:
    code = child(data, "delivery-status").get("code")
    return code // 100 if isinstance(code, int) and not isinstance(code, bool) else None


def _message_id(data: Mapping[str, Any]) -> str | None:
    value = optional_text(child(child(data, "message"), "headers"), "message-id")
    if value is None:
        return None
    return value if value.startswith("<") else f"<{value}>"
