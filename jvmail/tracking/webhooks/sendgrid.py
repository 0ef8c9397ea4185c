"""SendGrid Signed Event Webhook: a JSON list of events, ECDSA-signed.

Authenticity: ECDSA P-256 with SHA-256 over the ``x-twilio-email-event-webhook-timestamp``
header's bytes followed by the raw body, signature (base64 DER) in
``x-twilio-email-event-webhook-signature``. The keys are the dashboard's base64 DER
SubjectPublicKeyInfo; several may be configured so a rotation loses nothing. Missing headers
answer 401, a bad signature or timestamp 403. SendGrid documents no freshness window, and
retries a batch for up to 24 hours without saying whether it signs each retry afresh: we allow
``max_age`` (25 hours) either way of our clock, so no retry is refused. A replay inside it gains
nothing: the signature covers the body, and events are stored once per ``sg_event_id``.

Mapping (``event`` decides, then the fields named):

- ``processed`` is queued: SendGrid accepted the message and will try to deliver it (the same
  stage as Mailgun ``accepted`` and SES ``Send``).
- ``dropped`` is rejected; hard when ``reason`` is "Bounced Address" or "Invalid" (the address
  itself is bad), else no bounce class (unsubscribed or reported addresses, our own errors).
- ``deferred`` is deferred (soft); ``delivered`` is delivered.
- ``bounce``: ``bounce_classification`` "Invalid Address" is hard; "Technical", "Content",
  "Reputation" and "Frequency or Volume" are soft (not the address's fault); otherwise ``type``
  decides: "bounce" (or none) hard, "blocked" or anything else soft.
- ``open`` is opened, by a machine when ``sg_machine_open`` is true (Apple MPP); ``click`` is
  clicked with its ``url``.
- ``spamreport`` is complained; ``unsubscribe`` and ``group_unsubscribe`` are unsubscribed.
- Any other event name (``group_resubscribe``, future ones) is kept as unknown; one about the
  account rather than a message (``account_status_change``, which has no ``email``) too, with
  no recipient, so it never refuses the deliveries' events batched with it.

Ids: ``event_id`` is ``sg_event_id`` (a digest of the event's fields when absent);
``message_id`` is the ``X-Message-Id`` jvmail kept from the send answer: ``sg_message_id`` up to
its first dot. Custom args arrive as top-level keys of each event, so ``jv_delivery`` is one.
"""

from __future__ import annotations

import base64
import datetime as dt
import functools
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_der_public_key

from jvmail.db.models import EventType
from jvmail.tracking.events import BounceClass, Event, Headers, Rejected
from jvmail.tracking.webhooks.common import (
    b64decode,
    check_fresh,
    delivery_id,
    digest_id,
    from_unix,
    header,
    load_json,
    mapping,
    optional_text,
    recipient,
    text,
)

__all__ = ["SIGNATURE_HEADER", "TIMESTAMP_HEADER", "Batch", "SendGridKeys", "parse", "parse_batch"]

PROVIDER = "sendgrid"
SIGNATURE_HEADER = "x-twilio-email-event-webhook-signature"
TIMESTAMP_HEADER = "x-twilio-email-event-webhook-timestamp"

_TYPES: dict[str, tuple[EventType, BounceClass]] = {
    "processed": (EventType.QUEUED, BounceClass.NONE),
    "dropped": (EventType.REJECTED, BounceClass.NONE),
    "delivered": (EventType.DELIVERED, BounceClass.NONE),
    "deferred": (EventType.DEFERRED, BounceClass.SOFT),
    "bounce": (EventType.BOUNCED, BounceClass.HARD),
    "open": (EventType.OPENED, BounceClass.NONE),
    "click": (EventType.CLICKED, BounceClass.NONE),
    "spamreport": (EventType.COMPLAINED, BounceClass.COMPLAINT),
    "unsubscribe": (EventType.UNSUBSCRIBED, BounceClass.NONE),
    "group_unsubscribe": (EventType.UNSUBSCRIBED, BounceClass.NONE),
}
_UNKNOWN = (EventType.UNKNOWN, BounceClass.NONE)
_HARD_DROP_REASONS = frozenset({"bounced address", "invalid"})
_CLASSIFICATIONS: dict[str, BounceClass] = {
    "invalid address": BounceClass.HARD,
    "technical": BounceClass.SOFT,
    "content": BounceClass.SOFT,
    "reputation": BounceClass.SOFT,
    "frequency or volume": BounceClass.SOFT,
}
_BOUNCE_TYPES = {"bounce": BounceClass.HARD, "blocked": BounceClass.SOFT}


@dataclass(frozen=True)
class SendGridKeys:
    """Verification keys (base64 DER SubjectPublicKeyInfo) and the freshness window."""

    public_keys: tuple[str, ...]
    max_age: dt.timedelta = dt.timedelta(hours=25)


@dataclass(frozen=True)
class Batch:
    """A verified request's events, and why each event that could not be read was left out."""

    events: list[Event]
    skipped: list[str]


def parse(headers: Headers, body: bytes, keys: SendGridKeys, now: dt.datetime) -> list[Event]:
    """The events of a verified SendGrid request that could be read (see :func:`parse_batch`)."""
    return parse_batch(headers, body, keys, now).events


def parse_batch(headers: Headers, body: bytes, keys: SendGridKeys, now: dt.datetime) -> Batch:
    """Verify a SendGrid event webhook request and map its events.

    A verified batch is SendGrid's own, so one event in it that cannot be read is left out,
    with why, rather than the whole batch refused: SendGrid would post it again for three days
    and its good events would never be stored.

    Raises `Rejected`: 401 without the signature headers, 403 for a signature no key verifies
    or a timestamp outside ``keys.max_age`` of ``now``, 400 for a body that is not a JSON list
    of events or whose events cannot be read at all. Raises ValueError when a configured key is
    not an EC P-256 public key.
    """
    _verify(headers, body, keys, now)
    batch = load_json(body)
    if not isinstance(batch, list):
        raise Rejected(400, "body is not a JSON list of events")
    events: list[Event] = []
    skipped: list[str] = []
    for n, item in enumerate(batch):
        try:
            events.append(_event(mapping(item, "event")))
        except Rejected as exc:
            skipped.append(f"event {n}: {exc.reason}")
    if skipped and not events:
        raise Rejected(400, f"no event could be read ({'; '.join(skipped[:3])})")
    return Batch(events, skipped)


def _verify(headers: Headers, body: bytes, keys: SendGridKeys, now: dt.datetime) -> None:
    signature = b64decode(header(headers, SIGNATURE_HEADER, 401), 403, "signature")
    timestamp = header(headers, TIMESTAMP_HEADER, 401)
    check_fresh(from_unix(timestamp, 403), now, keys.max_age, 403)
    signed = timestamp.encode() + body
    if not any(_verifies(_public_key(k), signature, signed) for k in keys.public_keys):
        raise Rejected(403, "signature does not verify with any configured key")


def _verifies(key: ec.EllipticCurvePublicKey, signature: bytes, signed: bytes) -> bool:
    try:
        key.verify(signature, signed, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        return False
    return True


@functools.lru_cache(maxsize=16)
def _public_key(b64_der: str) -> ec.EllipticCurvePublicKey:
    key = load_der_public_key(base64.b64decode(b64_der, validate=True))
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp256r1":
        raise ValueError("a SendGrid verification key must be an EC P-256 public key")
    return key


def _event(item: Mapping[str, Any]) -> Event:
    name = text(item, "event")
    kind, bounce = _classify(name, item)
    if "email" not in item and name not in _TYPES:  # about the account (account_status_change)
        kind, bounce = EventType.UNKNOWN, BounceClass.NONE
        address = ""
    else:
        address = recipient(item.get("email"))
    occurred_at = from_unix(item.get("timestamp"))
    return Event(
        provider=PROVIDER,
        event_id=optional_text(item, "sg_event_id") or _digest(name, address, occurred_at, item),
        type=kind,
        recipient=address,
        occurred_at=occurred_at,
        delivery_id=delivery_id(item.get("jv_delivery")),
        message_id=_message_id(item),
        bounce=bounce,
        machine=item.get("sg_machine_open") is True,
        url=optional_text(item, "url") if kind is EventType.CLICKED else None,
        user_agent=optional_text(item, "useragent"),
        raw=item,
    )


def _classify(name: str, item: Mapping[str, Any]) -> tuple[EventType, BounceClass]:
    kind, bounce = _TYPES.get(name, _UNKNOWN)
    if name == "dropped":
        reason = (optional_text(item, "reason") or "").strip().lower()
        bounce = BounceClass.HARD if reason in _HARD_DROP_REASONS else BounceClass.NONE
    elif name == "bounce":
        bounce = _bounce_class(item)
    return kind, bounce


def _bounce_class(item: Mapping[str, Any]) -> BounceClass:
    classification = (optional_text(item, "bounce_classification") or "").strip().lower()
    if classification in _CLASSIFICATIONS:
        return _CLASSIFICATIONS[classification]
    return _BOUNCE_TYPES.get(optional_text(item, "type") or "bounce", BounceClass.SOFT)


def _message_id(item: Mapping[str, Any]) -> str | None:
    sg_message_id = optional_text(item, "sg_message_id")
    return sg_message_id.strip().split(".", 1)[0] if sg_message_id else None


def _digest(name: str, address: str, occurred_at: dt.datetime, item: Mapping[str, Any]) -> str:
    message = optional_text(item, "sg_message_id") or ""
    return digest_id(name, message, address, occurred_at.isoformat())
