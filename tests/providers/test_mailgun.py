"""Mailgun against a local server that speaks /v3/{domain}/messages (multipart, its spec)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from jvmail.providers.base import OutboundBatch
from jvmail.providers.mailgun import MailgunProvider
from tests.providers.fakes import Fake, Scripted, mailgun_handler, sample_batch, serve

KEY = "key-test"
DOMAIN = "mg.sender.example"


@pytest.fixture
def fake() -> Iterator[Fake]:
    state = Fake()
    with serve(mailgun_handler(state, KEY, DOMAIN), state):
        yield state


def _batch(count: int) -> OutboundBatch:
    return sample_batch([f"r{n}@mail.example" for n in range(1, count + 1)], 5)


def _provider(fake: Fake, key: str = KEY) -> MailgunProvider:
    return MailgunProvider(
        key, DOMAIN, from_addr="news@s.example", from_name="Sender Co", api=fake.url
    )


def test_a_thousand_recipients_a_request_each_with_its_own_values(fake: Fake) -> None:
    sent = _provider(fake).send(_batch(1500))
    assert sent.error is None
    assert fake.requests == 2
    assert [r.accepted for r in sent.results] == [True] * 1500
    assert sorted(int(d) for _, d in fake.accepted) == list(range(1, 1501))
    first = fake.bodies[0]
    assert first["subject"] == "Hi <R1>"
    assert "Hi &lt;R1&gt;" in first["html"]
    assert "https://jv.example/c/1" in first["html"]
    assert first["text"].count("https://jv.example/c/1") == 1
    assert first["h:List-Unsubscribe"] == "<https://jv.example/u/1>, <mailto:news@s.example>"


def test_a_wrong_key_pauses_and_a_rate_limit_retries(fake: Fake) -> None:
    sent = _provider(fake, key="key-wrong").send(_batch(2))
    assert sent.error is not None
    assert sent.error.auth
    fake.script.append(
        Scripted(
            429, {"Retry-After": "120"}, {"message": "account-requests-per-sec limit exceeded"}
        )
    )
    sent = _provider(fake).send(_batch(2))
    assert sent.error is not None
    assert sent.error.transient
    assert sent.error.retry_after == 120.0
    assert sent.untried == [1, 2]
    assert not fake.accepted


def test_a_taken_request_whose_answer_is_not_json_is_still_taken(fake: Fake) -> None:
    # A 2xx is Mailgun's word that it queued the message; its id is a name, not the proof.
    fake.script.append(Scripted(200, raw=b"Queued. Thank you."))
    sent = _provider(fake).send(_batch(3))
    assert sent.error is None
    assert [(r.delivery_id, r.accepted, r.message_id) for r in sent.results] == [
        (1, True, None),
        (2, True, None),
        (3, True, None),
    ]
