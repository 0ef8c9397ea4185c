"""Postmark webhooks: one JSON record per request, ``RecordType`` says which.

Authenticity: Postmark signs nothing; the webhook URL carries HTTP basic-auth credentials
(over HTTPS), so the ``authorization`` header must carry one of the configured ``user:password``
pairs (several for rotation), compared in constant time. Missing or wrong answers 401. There is
no signed timestamp, so no freshness check: ``now`` is accepted for a uniform signature only.

Mapping (``RecordType``, and ``Type`` for bounces):

- ``Delivery`` delivered; ``Open`` opened; ``Click`` clicked (``OriginalLink``). Postmark has
  no machine-open flag, so ``machine`` stays False.
- ``SpamComplaint`` complained (complaint).
- ``SubscriptionChange`` with ``SuppressSending`` true and ``SuppressionReason``
  ManualSuppression (an unsubscribe link or a manual suppression) is unsubscribed. Suppressions
  for HardBounce or SpamComplaint are unknown: their own Bounce and SpamComplaint records
  already report them. A reactivation (``SuppressSending`` false) is unknown.
- ``Bounce`` by ``Type``:

  - hard: HardBounce, BadEmailAddress, ManuallyDeactivated.
  - deferred (soft): Transient and ChallengeVerification; Postmark or the recipient's server
    still holds the message, so it may yet arrive.
  - bounced soft: SoftBounce, DnsError, Blocked, VirusNotification, DMARCPolicy, Unknown, and
    SpamNotification. SpamNotification is the receiving server's spam filter refusing the
    content, not the recipient reporting spam (that is SpamComplaint, which Postmark also
    reports as a record of its own), so it is not counted as a complaint.
  - complained: SpamComplaint; unsubscribed: Unsubscribe.
  - rejected: SMTPApiError, TemplateRenderingFailed, Unconfirmed (Postmark never sent it).
  - unknown: AutoResponder (an out-of-office reply means the message arrived), AddressChange,
    Subscribe, OpenRelayTest, InboundError and any type not listed.

Ids: only Bounce and SpamComplaint records carry an ``ID``; for the others ``event_id`` is a
digest of RecordType, MessageID, the recipient and the record's own time string, which Postmark
repeats unchanged on a retry. ``jv_delivery`` is in ``Metadata``.
"""

from __future__ import annotations

import datetime as dt
import hmac
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from jvmail.db.models import EventType
from jvmail.tracking.events import BounceClass, Event, Headers, Rejected
from jvmail.tracking.webhooks.common import (
    b64decode,
    child,
    delivery_id,
    digest_id,
    from_iso,
    load_json,
    mapping,
    optional_text,
    recipient,
    text,
)

__all__ = ["PostmarkKeys", "parse"]

PROVIDER = "postmark"

_UNKNOWN = (EventType.UNKNOWN, BounceClass.NONE)
_RECORDS: dict[str, tuple[EventType, BounceClass]] = {
    "Delivery": (EventType.DELIVERED, BounceClass.NONE),
    "Open": (EventType.OPENED, BounceClass.NONE),
    "Click": (EventType.CLICKED, BounceClass.NONE),
    "SpamComplaint": (EventType.COMPLAINED, BounceClass.COMPLAINT),
}
_HARD = (EventType.BOUNCED, BounceClass.HARD)
_SOFT = (EventType.BOUNCED, BounceClass.SOFT)
_DEFERRED = (EventType.DEFERRED, BounceClass.SOFT)
_NOT_SENT = (EventType.REJECTED, BounceClass.NONE)
_BOUNCES: dict[str, tuple[EventType, BounceClass]] = {
    "HardBounce": _HARD,
    "BadEmailAddress": _HARD,
    "ManuallyDeactivated": _HARD,
    "Transient": _DEFERRED,
    "ChallengeVerification": _DEFERRED,
    "SoftBounce": _SOFT,
    "DnsError": _SOFT,
    "Blocked": _SOFT,
    "VirusNotification": _SOFT,
    "DMARCPolicy": _SOFT,
    "Unknown": _SOFT,
    "SpamNotification": _SOFT,
    "SpamComplaint": (EventType.COMPLAINED, BounceClass.COMPLAINT),
    "Unsubscribe": (EventType.UNSUBSCRIBED, BounceClass.NONE),
    "SMTPApiError": _NOT_SENT,
    "TemplateRenderingFailed": _NOT_SENT,
    "Unconfirmed": _NOT_SENT,
}
_RECIPIENT_FIELDS = ("Recipient", "Email")
_TIME_FIELDS = ("DeliveredAt", "ReceivedAt", "BouncedAt", "ChangedAt")


@dataclass(frozen=True)
class PostmarkKeys:
    """The accepted basic-auth ``(user, password)`` pairs of the webhook URL."""

    credentials: tuple[tuple[str, str], ...]


def parse(headers: Headers, body: bytes, keys: PostmarkKeys, now: dt.datetime) -> list[Event]:
    """Check the webhook's basic-auth credentials and map its one record.

    Raises `Rejected`: 401 when the ``authorization`` header is missing or matches no
    configured pair; 400 for a body that is not a JSON record with a recipient and a time.
    """
    _authorize(headers.get("authorization"), keys)
    return [_event(mapping(load_json(body), "body"))]


def _authorize(authorization: str | None, keys: PostmarkKeys) -> None:
    scheme, _, encoded = (authorization or "").strip().partition(" ")
    if scheme.lower() != "basic" or not encoded:
        raise Rejected(401, "basic-auth credentials are missing")
    given = b64decode(encoded.strip(), 401, "basic-auth credentials")
    if not any(hmac.compare_digest(given, _pair(u, p)) for u, p in keys.credentials):
        raise Rejected(401, "basic-auth credentials are wrong")


def _pair(user: str, password: str) -> bytes:
    return f"{user}:{password}".encode()


def _event(record: Mapping[str, Any]) -> Event:
    record_type = text(record, "RecordType")
    kind, bounce = _classify(record_type, record)
    address = recipient(_first(record, _RECIPIENT_FIELDS))
    when = _first(record, _TIME_FIELDS)
    return Event(
        provider=PROVIDER,
        event_id=_event_id(record, record_type, address, when),
        type=kind,
        recipient=address,
        occurred_at=from_iso(when),
        delivery_id=delivery_id(child(record, "Metadata").get("jv_delivery")),
        message_id=optional_text(record, "MessageID"),
        bounce=bounce,
        url=optional_text(record, "OriginalLink") if kind is EventType.CLICKED else None,
        user_agent=optional_text(record, "UserAgent"),
        raw=record,
    )


def _classify(record_type: str, record: Mapping[str, Any]) -> tuple[EventType, BounceClass]:
    if record_type == "Bounce":
        return _BOUNCES.get(optional_text(record, "Type") or "", _UNKNOWN)
    if record_type == "SubscriptionChange":
        return _subscription(record)
    return _RECORDS.get(record_type, _UNKNOWN)


def _subscription(record: Mapping[str, Any]) -> tuple[EventType, BounceClass]:
    manual = record.get("SuppressionReason") in (None, "ManualSuppression")
    if record.get("SuppressSending") is True and manual:
        return EventType.UNSUBSCRIBED, BounceClass.NONE
    return _UNKNOWN


def _first(record: Mapping[str, Any], fields: tuple[str, ...]) -> str:
    for field in fields:
        value = optional_text(record, field)
        if value is not None:
            return value
    raise Rejected(400, f"record has none of {', '.join(fields)}")


def _event_id(record: Mapping[str, Any], record_type: str, address: str, when: str) -> str:
    own = record.get("ID")
    if isinstance(own, int | str) and not isinstance(own, bool) and str(own):
        return str(own)
    return digest_id(record_type, optional_text(record, "MessageID") or "", address, when)
