"""The fast path for plain addresses must agree with email-validator wherever it answers."""

from __future__ import annotations

import pytest
from email_validator import EmailNotValidError, validate_email
from hypothesis import given, settings
from hypothesis import strategies as st

from jvmail.registry.addresses import _FAST, AddressError, normalize_address

_CHARS = "abcdefghijklmnopqrstuvwxyz0123456789.-_+'!#$%&*/=?^`{|}~"
local_parts = st.text(alphabet=_CHARS, min_size=1, max_size=70)
labels = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-", min_size=1, max_size=65)
tlds = st.sampled_from(["com", "org", "example", "test", "localhost", "io", "x", "c0m", "museum"])


@settings(max_examples=2000)
@given(local=local_parts, domain=st.lists(labels, min_size=1, max_size=3), tld=tlds)
def test_fast_path_never_accepts_what_email_validator_refuses(
    local: str, domain: list[str], tld: str
) -> None:
    address = f"{local}@{'.'.join(domain)}.{tld}"
    try:
        expected: str | None = validate_email(address, check_deliverability=False).normalized
    except EmailNotValidError:
        expected = None
    try:
        got: str | None = normalize_address(address)
    except AddressError:
        got = None
    assert got == (expected.lower() if expected else None)


def test_fast_path_is_taken_for_plain_addresses() -> None:
    assert _FAST.fullmatch("ada.lovelace+news@mail.example.com")


@pytest.mark.parametrize(
    ("raw", "normalized"),
    [
        ("  Ada@Example.COM ", "ada@example.com"),
        ("Zoë@Exämple.com", "zoë@exämple.com"),
        ("grace.hopper@sub.example.org", "grace.hopper@sub.example.org"),
    ],
)
def test_normalizes(raw: str, normalized: str) -> None:
    assert normalize_address(raw) == normalized


@pytest.mark.parametrize(
    "raw", ["no-at-sign", "two..dots@example.com", "x@example", "x@host.test", "@example.com", ""]
)
def test_rejects(raw: str) -> None:
    with pytest.raises(AddressError):
        normalize_address(raw)
