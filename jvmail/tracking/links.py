"""The one place tracking URLs are made: click, open and unsubscribe links, signed.

A token is ``<payload>.<signature>``, both base64url without padding: the payload packs the
delivery id and the link's index as unsigned varints, the signature is the first 12 bytes of
HMAC-SHA256 over the payload with the hub's signing key. A token says which delivery and which
link; the URL a click goes to is always the one registered for that link, looked up on the
server, never read from the token.
"""

from __future__ import annotations

import base64
import hashlib
import hmac

__all__ = ["click_url", "make_token", "open_url", "read_token", "unsubscribe_url"]

_SIG_BYTES = 12
UNSUBSCRIBE = 0  # the "link index" of an unsubscribe token: links are numbered from 1


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        low, n = n & 0x7F, n >> 7
        out.append(low | (0x80 if n else 0))
        if not n:
            return bytes(out)


def make_token(key: bytes, delivery_id: int, index: int) -> str:
    payload = _varint(delivery_id) + _varint(index)
    sig = hmac.new(key, payload, hashlib.sha256).digest()[:_SIG_BYTES]
    return f"{_b64(payload)}.{_b64(sig)}"


def read_token(key: bytes, token: str) -> tuple[int, int] | None:
    """(delivery id, link index) of a genuine token, or None for anything else."""
    try:
        head, sig = token.split(".")
        payload, got = _unb64(head), _unb64(sig)
    except ValueError:
        return None
    want = hmac.new(key, payload, hashlib.sha256).digest()[:_SIG_BYTES]
    if not hmac.compare_digest(got, want):
        return None
    numbers: list[int] = []
    value = shift = 0
    for byte in payload:
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            numbers.append(value)
            value = shift = 0
    if len(numbers) != 2 or shift:
        return None
    return numbers[0], numbers[1]


def click_url(base_url: str, key: bytes, delivery_id: int, index: int) -> str:
    return f"{base_url}/c/{make_token(key, delivery_id, index)}"


def open_url(base_url: str, key: bytes, delivery_id: int) -> str:
    return f"{base_url}/o/{make_token(key, delivery_id, UNSUBSCRIBE)}.gif"


def unsubscribe_url(base_url: str, key: bytes, delivery_id: int) -> str:
    return f"{base_url}/u/{make_token(key, delivery_id, UNSUBSCRIBE)}"
