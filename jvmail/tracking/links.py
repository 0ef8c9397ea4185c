"""The one place tracking URLs are made and read: click, open and unsubscribe links, signed.

A token is ``<payload>.<signature>``, both base64url without padding. The payload packs, as
unsigned varints, the number of the key that signed it, the mailing, the delivery and the link's
index (0 for the unsubscribe and open links, links counted from 1); the signature is the first
12 bytes of HMAC-SHA256 over the payload. A token says which delivery and which link; the URL a
click goes to is always the one registered for that link of that mailing, looked up on the
server, never read from the token.

Keys rotate: the hub keeps its keys newest first (``hub.link_keys``); the newest signs, and any
of them verifies, so links in mail sent before a rotation keep working until the old key is
retired.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import NamedTuple

__all__ = [
    "REVIEW",
    "Keyring",
    "Link",
    "click_url",
    "delivery_urls",
    "open_url",
    "review_url",
    "unsubscribe_url",
]

_SIG_BYTES = 12
UNSUBSCRIBE = 0  # the "link index" of an unsubscribe token: links are numbered from 1
REVIEW = 0  # the "delivery" of a sender's approve/decline token: deliveries start at 1
_TOKEN = re.compile(r"[A-Za-z0-9_-]{4,60}\.[A-Za-z0-9_-]{16}")


_URLSAFE = bytes.maketrans(b"+/", b"-_")
_IPAD = bytes(n ^ 0x36 for n in range(256))  # byte -> byte XOR 0x36, for bytes.translate
_OPAD = bytes(n ^ 0x5C for n in range(256))


def _b64(data: bytes) -> str:
    # What base64.urlsafe_b64encode does, without its two extra calls (tokens are hot).
    return binascii.b2a_base64(data, newline=False).translate(_URLSAFE).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


_SMALL = tuple(bytes((n,)) for n in range(0x80))


def _varint(n: int) -> bytes:
    if n < 0x80:
        return _SMALL[n]
    out = bytearray()
    while True:
        low, n = n & 0x7F, n >> 7
        out.append(low | (0x80 if n else 0))
        if not n:
            return bytes(out)


class Link(NamedTuple):
    mailing: int
    delivery: int
    link: int  # 0: the unsubscribe or open link; links are counted from 1


def _numbers(payload: bytes) -> list[int] | None:
    numbers: list[int] = []
    value = shift = 0
    for byte in payload:
        value |= (byte & 0x7F) << shift
        shift += 7
        if shift > 63:
            return None
        if not byte & 0x80:
            numbers.append(value)
            value = shift = 0
    return None if shift else numbers


@dataclass(frozen=True)
class Keyring:
    """The hub's link keys, oldest first: a key's number is its place here, so adding a key
    leaves the numbers of the others as they were."""

    keys: tuple[bytes, ...]

    @classmethod
    def from_hex(cls, newest_first: Sequence[str]) -> Keyring:
        if not newest_first:
            raise ValueError("the hub has no link keys yet: run `jvmail sync CONFIG_DIR` first")
        return cls(tuple(bytes.fromhex(k) for k in reversed(newest_first)))

    @cached_property
    def _pads(self) -> tuple[tuple[hashlib._Hash, hashlib._Hash], ...]:
        """Each key's HMAC-SHA256 inner and outer hashes with the padded key already absorbed
        (RFC 2104): a token then costs two hash copies, not the key schedule again."""
        pads = []
        for key in self.keys:
            block = (hashlib.sha256(key).digest() if len(key) > 64 else key).ljust(64, b"\0")
            pads.append(
                (
                    hashlib.sha256(block.translate(_IPAD)),
                    hashlib.sha256(block.translate(_OPAD)),
                )
            )
        return tuple(pads)

    def _sig(self, number: int, payload: bytes) -> bytes:
        inner, outer = (h.copy() for h in self._pads[number])
        inner.update(payload)
        outer.update(inner.digest())
        return outer.digest()[:_SIG_BYTES]

    def sign(self, mailing: int, delivery: int, index: int) -> str:
        return self.sign_links(mailing, delivery, (index,))[0]

    def sign_links(self, mailing: int, delivery: int, indexes: Iterable[int]) -> list[str]:
        """The tokens of one delivery's links ``indexes``: the start their payloads share is
        hashed once, each token then hashes its own index and the outer hash."""
        number = len(self.keys) - 1
        head = _varint(number) + _varint(mailing) + _varint(delivery)
        inner, outer = self._pads[number]
        inner = inner.copy()
        inner.update(head)
        tokens = []
        for index in indexes:
            tail = _varint(index)
            mine, sig = inner.copy(), outer.copy()
            mine.update(tail)
            sig.update(mine.digest())
            tokens.append(f"{_b64(head + tail)}.{_b64(sig.digest()[:_SIG_BYTES])}")
        return tokens

    def read(self, token: str) -> Link | None:
        """The link a genuine token stands for; None for anything tampered, truncated or signed
        with a key the hub no longer has."""
        if not _TOKEN.fullmatch(token):
            return None
        try:
            head, sig = token.split(".")
            payload, got = _unb64(head), _unb64(sig)
        except ValueError:
            return None
        numbers = _numbers(payload)
        if numbers is None or len(numbers) != 4 or numbers[0] >= len(self.keys):
            return None
        if not hmac.compare_digest(got, self._sig(numbers[0], payload)):
            return None
        return Link(numbers[1], numbers[2], numbers[3])


def delivery_urls(
    base_url: str, keys: Keyring, mailing: int, delivery: int, links: int
) -> tuple[list[str], str, str]:
    """A delivery's click URLs (links 1 to ``links``), its unsubscribe URL and its open URL, as
    :func:`click_url`, :func:`unsubscribe_url` and :func:`open_url` give them; the last two
    carry the same token, signed once."""
    *clicks, token = keys.sign_links(mailing, delivery, (*range(1, links + 1), UNSUBSCRIBE))
    return (
        [f"{base_url}/c/{t}" for t in clicks],
        f"{base_url}/u/{token}",
        f"{base_url}/o/{token}.gif",
    )


def click_url(base_url: str, keys: Keyring, mailing: int, delivery: int, index: int) -> str:
    return f"{base_url}/c/{keys.sign(mailing, delivery, index)}"


def open_url(base_url: str, keys: Keyring, mailing: int, delivery: int) -> str:
    return f"{base_url}/o/{keys.sign(mailing, delivery, UNSUBSCRIBE)}.gif"


def unsubscribe_url(base_url: str, keys: Keyring, mailing: int, delivery: int) -> str:
    return f"{base_url}/u/{keys.sign(mailing, delivery, UNSUBSCRIBE)}"


def review_url(base_url: str, keys: Keyring, mailing: int) -> str:
    """The sender's page to approve or decline ``mailing`` (no delivery: it is about the whole
    mailing, and no delivery token opens it)."""
    return f"{base_url}/review/{keys.sign(mailing, REVIEW, 0)}"
