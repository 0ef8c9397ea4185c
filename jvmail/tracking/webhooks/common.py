"""Steps every webhook parser shares: JSON with a 400, fields, times, ids and freshness.

Anything malformed raises `Rejected` (400 unless the caller passes another status), so one bad
element rejects the whole request: a provider batch is stored all or nothing.

Times: unix seconds (SendGrid, Mailgun) and ISO 8601 strings (Postmark, SES) both become
timezone-aware UTC; an ISO time without an offset is read as UTC.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
import math
from collections.abc import Mapping
from email.utils import parseaddr
from typing import Any

import orjson

from jvmail.tracking.events import Headers, Rejected

__all__ = [
    "b64decode",
    "check_fresh",
    "child",
    "delivery_id",
    "digest_id",
    "from_iso",
    "from_unix",
    "header",
    "load_json",
    "mapping",
    "optional_text",
    "recipient",
    "text",
]

_SPECIAL = frozenset('<>()[],;:"\\ \t\r\n')
_MAX_DELIVERY_ID = 2**63 - 1  # delivery ids are BIGINT


def load_json(body: bytes) -> Any:
    """The decoded body; Rejected(400) when it is not JSON."""
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise Rejected(400, f"body is not JSON: {exc}") from exc


def mapping(value: object, what: str, status: int = 400) -> Mapping[str, Any]:
    """``value`` when it is a JSON object, else Rejected(status)."""
    if not isinstance(value, dict):
        raise Rejected(status, f"{what} is not a JSON object")
    return value


def child(obj: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    """``obj[key]`` when it is a JSON object, else an empty mapping (optional parts)."""
    value = obj.get(key)
    return value if isinstance(value, dict) else {}


def text(obj: Mapping[str, Any], key: str, status: int = 400) -> str:
    """The non-empty string ``obj[key]``, else Rejected(status)."""
    value = obj.get(key)
    if not isinstance(value, str) or not value:
        raise Rejected(status, f"{key!r} is missing or not a string")
    return value


def optional_text(obj: Mapping[str, Any], key: str) -> str | None:
    """``obj[key]`` when it is a non-empty string, else None."""
    value = obj.get(key)
    return value if isinstance(value, str) and value else None


def header(headers: Headers, name: str, status: int) -> str:
    """The value of header ``name`` (lowercase), else Rejected(status)."""
    value = headers.get(name)
    if not value:
        raise Rejected(status, f"header {name} is missing")
    return value


def recipient(value: object) -> str:
    """The bare address of ``value``, stripped and lowercased; Rejected(400) if it has none."""
    if not isinstance(value, str):
        raise Rejected(400, "recipient is missing or not a string")
    plain = value.strip().lower()
    if plain.count("@") == 1 and not _SPECIAL.intersection(plain):
        return plain  # a bare address, as providers send it: what parseaddr would return
    address = parseaddr(value)[1].strip().lower()
    if "@" not in address:
        raise Rejected(400, f"recipient {value!r} is not an address")
    return address


def from_unix(value: object, status: int = 400) -> dt.datetime:
    """Unix seconds (int, float or numeric string) as an aware UTC datetime."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise Rejected(status, f"timestamp {value!r} is not a number")
    try:
        seconds = float(value)
        if not math.isfinite(seconds):
            raise ValueError(value)
        return dt.datetime.fromtimestamp(seconds, dt.UTC)
    except (ValueError, OverflowError, OSError) as exc:
        raise Rejected(status, f"timestamp {value!r} is not unix seconds") from exc


def from_iso(value: object, status: int = 400) -> dt.datetime:
    """An ISO 8601 string as an aware UTC datetime (no offset: UTC)."""
    if not isinstance(value, str):
        raise Rejected(status, f"time {value!r} is not a string")
    try:
        parsed = dt.datetime.fromisoformat(value)
    except ValueError as exc:
        raise Rejected(status, f"time {value!r} is not ISO 8601") from exc
    if parsed.tzinfo is None:
        return parsed.replace(tzinfo=dt.UTC)
    return parsed.astimezone(dt.UTC)


def check_fresh(
    signed_at: dt.datetime, now: dt.datetime, max_age: dt.timedelta, status: int
) -> None:
    """Rejected(status) unless ``signed_at`` is within ``max_age`` of ``now``, either way."""
    if signed_at < now - max_age:
        raise Rejected(status, f"stale request: signed at {signed_at.isoformat()}")
    if signed_at > now + max_age:
        raise Rejected(status, f"request from the future: signed at {signed_at.isoformat()}")


def b64decode(value: str, status: int, what: str) -> bytes:
    """Strict standard base64 decoding; Rejected(status) on anything else."""
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise Rejected(status, f"{what} is not base64") from exc


def delivery_id(value: object) -> int | None:
    """The jvmail delivery id from provider metadata: a positive integer or its decimal string.

    Anything else (another sender's metadata, a mangled value) is None, not an error: the event
    is still stored and may be matched on its message id.
    """
    if isinstance(value, bool):
        return None
    if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= 19:
        value = int(value)
    if isinstance(value, int) and 0 < value <= _MAX_DELIVERY_ID:
        return value
    return None


def digest_id(*parts: str) -> str:
    """A stable event id for providers without one: 32 hex digits of SHA-256 over ``parts``."""
    joined = "\x1f".join(parts).encode()
    return hashlib.sha256(joined).hexdigest()[:32]
