"""Amazon SES events delivered by SNS over HTTPS: one SNS message per request.

Authenticity (SNS message signature): ``Type`` is Notification, SubscriptionConfirmation or
UnsubscribeConfirmation; ``TopicArn`` must be one of ``topic_arns``; ``Timestamp`` (publish
time, kept on SNS retries) must be within ``max_age`` of our clock; ``SigningCertURL`` must
match ``cert_url_pattern`` (`SNS_URL`: https on an AWS SNS host) before it is fetched, and
the certificate is cached by URL; ``Signature`` must verify as SHA1withRSA
(``SignatureVersion`` 1) or SHA256withRSA (2) over the canonical string: each field name and
value followed by a newline, in the order of `_SIGNED_FIELDS` (``Subject`` only when present).
Every failure answers 403; a certificate that cannot be fetched answers 503 so SNS retries; a
malformed body answers 400.

``max_age`` is one hour: SNS retries reuse the original Timestamp and an HTTP delivery policy
may spread retries over up to an hour. Replays inside it are harmless: ``event_id`` is the SNS
``MessageId``, the same on every retry, and events are de-duplicated on it.

A SubscriptionConfirmation yields no events but its ``SubscribeURL`` for the caller to fetch,
and only one that SNS itself would send: the same scheme and host as the signing certificate
URL that passed ``cert_url_pattern``, path ``/`` and ``Action=ConfirmSubscription``; any other
answers 403, so a signed message cannot make us fetch an arbitrary URL.

Mapping (the SES event's ``eventType``, or ``notificationType`` for identity notifications):

- Send queued (SES accepted it, as SendGrid ``processed``); Delivery delivered; Reject and
  Rendering Failure rejected; DeliveryDelay deferred (soft); Complaint complained (complaint);
  Open opened; Click clicked (``click.link``); made by a machine when SES says
  ``isBotEvent`` is "Likely".
- Bounce by ``bounceType``: Permanent bounced hard; Undetermined bounced soft; Transient
  deferred (soft). SES files out-of-office replies, full mailboxes and other temporary causes
  as Transient, and says mail to the address may succeed later: counting them as bounces would
  inflate the bounce rate, so the delivery stays open until a later event or reconciliation.
- Subscription unsubscribed when the new preferences unsubscribe from all or opt out of a
  topic that was not opted out before, else unknown. Anything else is unknown.

One SNS message covers several recipients: Delivery, Bounce, Complaint and DeliveryDelay give
one event per recipient they list, the other types one per ``mail.destination``. ``raw`` is the
SES event; ``jv_delivery`` is the message tag ``mail.tags.jv_delivery[0]``.
"""

from __future__ import annotations

import datetime as dt
import re
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlsplit

import requests
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from jvmail.db.models import EventType
from jvmail.tracking.events import BounceClass, Event, Headers, Rejected
from jvmail.tracking.webhooks.common import (
    b64decode,
    check_fresh,
    child,
    delivery_id,
    from_iso,
    load_json,
    mapping,
    optional_text,
    recipient,
    text,
)

__all__ = [
    "SNS_URL",
    "SesKeys",
    "clear_certificate_cache",
    "fetch_certificate",
    "parse",
    "parse_sns",
]

PROVIDER = "ses"
# SNS signing certificates: https://sns.<region>.amazonaws.com[.cn]/<name>.pem, nothing else
SNS_URL = re.compile(r"https://sns\.[a-z0-9-]+\.amazonaws\.com(?:\.cn)?/[A-Za-z0-9_-]+\.pem")
FETCH_TIMEOUT_S = 5.0
_CACHE_SIZE = 16

_SIGNED_FIELDS: dict[str, tuple[str, ...]] = {
    "Notification": ("Message", "MessageId", "Subject", "Timestamp", "TopicArn", "Type"),
    "SubscriptionConfirmation": (
        "Message",
        "MessageId",
        "SubscribeURL",
        "Timestamp",
        "Token",
        "TopicArn",
        "Type",
    ),
}
_SIGNED_FIELDS["UnsubscribeConfirmation"] = _SIGNED_FIELDS["SubscriptionConfirmation"]
_HASHES: dict[object, Callable[[], hashes.HashAlgorithm]] = {
    "1": hashes.SHA1,
    "2": hashes.SHA256,
}

_UNKNOWN = (EventType.UNKNOWN, BounceClass.NONE)
_TYPES: dict[str, tuple[EventType, BounceClass]] = {
    "Send": (EventType.QUEUED, BounceClass.NONE),
    "Delivery": (EventType.DELIVERED, BounceClass.NONE),
    "Reject": (EventType.REJECTED, BounceClass.NONE),
    "Rendering Failure": (EventType.REJECTED, BounceClass.NONE),
    "DeliveryDelay": (EventType.DEFERRED, BounceClass.SOFT),
    "Complaint": (EventType.COMPLAINED, BounceClass.COMPLAINT),
    "Open": (EventType.OPENED, BounceClass.NONE),
    "Click": (EventType.CLICKED, BounceClass.NONE),
}
_BOUNCES: dict[str, tuple[EventType, BounceClass]] = {
    "Permanent": (EventType.BOUNCED, BounceClass.HARD),
    "Transient": (EventType.DEFERRED, BounceClass.SOFT),
    "Undetermined": (EventType.BOUNCED, BounceClass.SOFT),
}
_DETAILS = {
    "Send": "send",
    "Delivery": "delivery",
    "Reject": "reject",
    "Rendering Failure": "failure",
    "DeliveryDelay": "deliveryDelay",
    "Bounce": "bounce",
    "Complaint": "complaint",
    "Open": "open",
    "Click": "click",
    "Subscription": "subscription",
}
# (list in the detail object, address field of each entry or None when entries are addresses)
_RECIPIENT_LISTS: dict[str, tuple[str, str | None]] = {
    "Delivery": ("recipients", None),
    "Bounce": ("bouncedRecipients", "emailAddress"),
    "Complaint": ("complainedRecipients", "emailAddress"),
    "DeliveryDelay": ("delayedRecipients", "emailAddress"),
}

_certificates: dict[str, rsa.RSAPublicKey] = {}
_certificates_lock = threading.Lock()


def fetch_certificate(url: str) -> bytes:
    """GET a signing certificate (PEM); redirects are not followed, errors raise."""
    answer = requests.get(url, timeout=FETCH_TIMEOUT_S, allow_redirects=False)
    answer.raise_for_status()
    return answer.content


@dataclass(frozen=True)
class SesKeys:
    """Accepted topics, the certificate URL allow-list (full match), the freshness window and
    the certificate fetcher."""

    topic_arns: frozenset[str]
    cert_url_pattern: re.Pattern[str] = SNS_URL
    max_age: dt.timedelta = dt.timedelta(hours=1)
    fetch: Callable[[str], bytes] = fetch_certificate


def parse(headers: Headers, body: bytes, keys: SesKeys, now: dt.datetime) -> list[Event]:
    """The events of an SNS request (none for subscription messages); see `parse_sns`."""
    return parse_sns(headers, body, keys, now)[0]


def parse_sns(
    headers: Headers, body: bytes, keys: SesKeys, now: dt.datetime
) -> tuple[list[Event], str | None]:
    """Verify an SNS request and return its events and the SubscribeURL to confirm, if any.

    Raises `Rejected`: 403 for an unexpected topic, a stale or future Timestamp, a disallowed
    certificate URL, an unknown SignatureVersion, a signature that does not verify or a
    SubscribeURL off the certificate's host; 503 when the certificate cannot be fetched; 400
    for a malformed message.
    """
    message = mapping(load_json(body), "body")
    kind = text(message, "Type")
    if kind not in _SIGNED_FIELDS:
        raise Rejected(400, f"unexpected SNS message type {kind!r}")
    if message.get("TopicArn") not in keys.topic_arns:
        raise Rejected(403, f"unexpected topic {message.get('TopicArn')!r}")
    check_fresh(from_iso(message.get("Timestamp"), 403), now, keys.max_age, 403)
    _verify(message, kind, keys)
    if kind == "SubscriptionConfirmation":
        return [], _subscribe_url(message)
    if kind == "UnsubscribeConfirmation":
        return [], None
    return _events(message), None


def clear_certificate_cache() -> None:
    """Forget every cached signing certificate (they are otherwise kept for the process)."""
    with _certificates_lock:
        _certificates.clear()


def _verify(message: Mapping[str, Any], kind: str, keys: SesKeys) -> None:
    algorithm = _HASHES.get(message.get("SignatureVersion"))
    if algorithm is None:
        raise Rejected(403, f"unsupported SignatureVersion {message.get('SignatureVersion')!r}")
    url = text(message, "SigningCertURL", 403)
    if not keys.cert_url_pattern.fullmatch(url):
        raise Rejected(403, f"signing certificate URL {url!r} is not an SNS URL")
    signature = b64decode(text(message, "Signature", 403), 403, "Signature")
    signed = _string_to_sign(message, _SIGNED_FIELDS[kind])
    try:
        _public_key(url, keys.fetch).verify(signature, signed, padding.PKCS1v15(), algorithm())
    except InvalidSignature as exc:
        raise Rejected(403, "SNS signature does not verify") from exc


def _string_to_sign(message: Mapping[str, Any], fields: tuple[str, ...]) -> bytes:
    lines = []
    for name in fields:
        if name == "Subject" and message.get(name) is None:
            continue
        value = message.get(name)
        if not isinstance(value, str):
            raise Rejected(400, f"signed field {name!r} is missing or not a string")
        lines.append(f"{name}\n{value}\n")
    return "".join(lines).encode()


def _public_key(url: str, fetch: Callable[[str], bytes]) -> rsa.RSAPublicKey:
    with _certificates_lock:
        cached = _certificates.get(url)
    if cached is not None:
        return cached
    key = _load_certificate(url, fetch)
    with _certificates_lock:
        if len(_certificates) >= _CACHE_SIZE:
            del _certificates[next(iter(_certificates))]
        _certificates[url] = key
    return key


def _load_certificate(url: str, fetch: Callable[[str], bytes]) -> rsa.RSAPublicKey:
    try:
        pem = fetch(url)
    except Exception as exc:  # whatever the injected fetcher raises: SNS should retry
        raise Rejected(503, f"signing certificate {url} unavailable: {exc}") from exc
    try:
        key = x509.load_pem_x509_certificate(pem).public_key()
    except ValueError as exc:
        raise Rejected(403, f"signing certificate {url} is not a PEM certificate") from exc
    if not isinstance(key, rsa.RSAPublicKey):
        raise Rejected(403, f"signing certificate {url} has no RSA key")
    return key


def _subscribe_url(message: Mapping[str, Any]) -> str:
    url = text(message, "SubscribeURL")
    target = urlsplit(url)
    origin = urlsplit(text(message, "SigningCertURL"))  # verified against cert_url_pattern
    action = parse_qs(target.query).get("Action")
    if (target.scheme, target.netloc) != (origin.scheme, origin.netloc) or (
        target.path not in ("", "/") or target.fragment or action != ["ConfirmSubscription"]
    ):
        raise Rejected(403, f"SubscribeURL {url!r} is not a confirmation URL of SNS")
    return url


def _events(message: Mapping[str, Any]) -> list[Event]:
    ses = mapping(load_json(text(message, "Message").encode()), "Message")
    name = optional_text(ses, "eventType") or text(ses, "notificationType")
    detail = child(ses, _DETAILS.get(name, ""))
    kind, bounce = _classify(name, detail)
    mail = mapping(ses.get("mail"), "mail")
    occurred_at = from_iso(detail.get("timestamp") or mail.get("timestamp"))
    return [
        Event(
            provider=PROVIDER,
            event_id=text(message, "MessageId"),
            type=kind,
            recipient=address,
            occurred_at=occurred_at,
            delivery_id=_delivery_id(mail),
            message_id=optional_text(mail, "messageId"),
            bounce=bounce,
            machine=detail.get("isBotEvent") in ("Likely", True),
            url=optional_text(detail, "link") if kind is EventType.CLICKED else None,
            user_agent=optional_text(detail, "userAgent"),
            raw=ses,
        )
        for address in _recipients(name, detail, mail)
    ]


def _classify(name: str, detail: Mapping[str, Any]) -> tuple[EventType, BounceClass]:
    if name == "Bounce":
        return _BOUNCES.get(optional_text(detail, "bounceType") or "", _UNKNOWN)
    if name == "Subscription":
        return _subscription(detail)
    return _TYPES.get(name, _UNKNOWN)


def _opted_out(preferences: Mapping[str, Any]) -> set[str]:
    topics = preferences.get("topicSubscriptionStatus")
    if not isinstance(topics, list):
        return set()
    return {
        str(t.get("topicName"))
        for t in topics
        if isinstance(t, dict) and t.get("subscriptionStatus") == "OptOut"
    }


def _subscription(detail: Mapping[str, Any]) -> tuple[EventType, BounceClass]:
    preferences = child(detail, "newTopicPreferences")
    newly = _opted_out(preferences) - _opted_out(child(detail, "oldTopicPreferences"))
    if preferences.get("unsubscribeAll") is True or newly:
        return EventType.UNSUBSCRIBED, BounceClass.NONE
    return _UNKNOWN


def _recipients(name: str, detail: Mapping[str, Any], mail: Mapping[str, Any]) -> list[str]:
    listed, field = _RECIPIENT_LISTS.get(name, ("", None))
    entries = detail.get(listed) if listed else mail.get("destination")
    if not isinstance(entries, list) or not entries:
        raise Rejected(400, f"{name} event lists no recipients")
    if field is None:
        return [recipient(entry) for entry in entries]
    return [recipient(mapping(entry, "recipient").get(field)) for entry in entries]


def _delivery_id(mail: Mapping[str, Any]) -> int | None:
    values = child(mail, "tags").get("jv_delivery")
    return delivery_id(values[0]) if isinstance(values, list) and values else None
