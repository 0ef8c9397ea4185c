"""Retry-After, in both forms RFC 9110 allows, read off a real HTTP answer (SendGrid's fake)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from email.utils import formatdate

import pytest

from jvmail.providers.sendgrid import SendGridProvider
from tests.providers.fakes import Fake, Scripted, sample_batch, sendgrid_handler, serve

KEY = "SG.retry-after"


@pytest.fixture
def fake() -> Iterator[Fake]:
    state = Fake()
    with serve(sendgrid_handler(state, KEY), state):
        yield state


def _wait(fake: Fake, status: int, retry_after: str | None) -> float | None:
    headers = {} if retry_after is None else {"Retry-After": retry_after}
    fake.script.append(Scripted(status, headers, {"errors": [{"message": "later"}]}))
    provider = SendGridProvider(KEY, from_addr="n@s.example", from_name="S", api=fake.url)
    sent = provider.send(sample_batch(["r1@mail.example"], 1))
    assert sent.error is not None
    assert sent.error.transient
    return sent.error.retry_after


def test_seconds(fake: Fake) -> None:
    assert _wait(fake, 429, "120") == 120.0
    assert _wait(fake, 503, "0") == 0.0


def test_an_http_date_is_the_time_left_until_then(fake: Fake) -> None:
    asked = time.time()
    wait = _wait(fake, 503, formatdate(asked + 120, usegmt=True))
    assert wait is not None
    # The date has whole seconds; the answer is read a moment after it was written.
    assert 118.0 < wait <= 120.0


def test_a_date_gone_by_waits_nothing_and_nonsense_is_no_wait_at_all(fake: Fake) -> None:
    assert _wait(fake, 429, "Wed, 21 Oct 2015 07:28:00 GMT") == 0.0
    assert _wait(fake, 429, "soon") is None
    assert _wait(fake, 429, None) is None
