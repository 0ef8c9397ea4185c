"""Link tokens: pinned byte for byte (mail already sent carries them), and read back."""

from __future__ import annotations

import base64
import hmac

import pytest

from jvmail.tracking.links import (
    Keyring,
    Link,
    click_url,
    delivery_urls,
    open_url,
    unsubscribe_url,
)

KEYS = Keyring.from_hex(["ab" * 32])
ROTATED = Keyring.from_hex(["cd" * 32, "ab" * 32])


@pytest.mark.parametrize(
    ("keys", "numbers", "token"),
    [
        (KEYS, (7, 123456, 2), "AAfAxAcC.kOrEKtm92PsESn1u"),
        (KEYS, (1, 1, 0), "AAEBAA.p90nWeou5n-HLgpE"),
        (KEYS, (300, 2**40, 0), "AKwCgICAgIAgAA.bg1mWrsXLU25KHNv"),
        (ROTATED, (7, 123456, 2), "AQfAxAcC.lgeCEeGuyuxBIWNj"),
    ],
)
def test_tokens_are_pinned_and_read_back(
    keys: Keyring, numbers: tuple[int, int, int], token: str
) -> None:
    assert keys.sign(*numbers) == token
    assert ROTATED.read(token) == Link(*numbers)


@pytest.mark.parametrize("size", [1, 32, 63, 64, 65, 200])
def test_the_signature_is_hmac_sha256_for_any_key_length(size: int) -> None:
    """The precomputed inner and outer hashes give what HMAC gives, for keys shorter than a
    block, a block long, and longer (hashed first)."""
    key = bytes(range(size % 256)) * (size // 256) + bytes(range(size % 256))
    ring = Keyring((key,))
    head, sig = ring.sign(9, 4242, 3).split(".")
    payload = base64.urlsafe_b64decode(head + "=" * (-len(head) % 4))
    want = hmac.digest(key, payload, "sha256")[:12]
    assert base64.urlsafe_b64decode(sig + "=" * (-len(sig) % 4)) == want
    assert ring.read(f"{head}.{sig}") == Link(9, 4242, 3)


def test_urls_carry_the_tokens() -> None:
    base = "https://jv.example"
    assert click_url(base, KEYS, 7, 123456, 2) == f"{base}/c/AAfAxAcC.kOrEKtm92PsESn1u"
    assert unsubscribe_url(base, KEYS, 1, 1) == f"{base}/u/AAEBAA.p90nWeou5n-HLgpE"
    assert open_url(base, KEYS, 1, 1) == f"{base}/o/AAEBAA.p90nWeou5n-HLgpE.gif"


def test_a_deliverys_urls_at_once_are_the_same_urls() -> None:
    base = "https://jv.example"
    clicks, unsubscribe, pixel = delivery_urls(base, KEYS, 7, 123456, 3)
    assert clicks == [click_url(base, KEYS, 7, 123456, n) for n in (1, 2, 3)]
    assert unsubscribe == unsubscribe_url(base, KEYS, 7, 123456)
    assert pixel == open_url(base, KEYS, 7, 123456)
    assert delivery_urls(base, KEYS, 7, 1, 0)[0] == []


def test_a_tampered_token_reads_as_nothing() -> None:
    head, sig = KEYS.sign(7, 123456, 2).split(".")
    assert KEYS.read(f"{head}.{sig[:-1]}A" if sig[-1] != "A" else f"{head}.{sig[:-1]}B") is None
    assert Keyring.from_hex(["cd" * 32]).read(f"{head}.{sig}") is None
