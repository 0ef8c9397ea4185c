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


def test_an_invalid_address_is_found_by_halving_and_refused_alone(fake: Fake) -> None:
    fake.invalid = frozenset({"r7@mail.example", "r600@mail.example"})
    sent = _provider(fake).send(_batch(1000))
    assert sent.error is None
    refused = {r.delivery_id: r.error for r in sent.results if not r.accepted}
    assert refused == {
        7: "Mailgun: 'to' parameter is not a valid address. please check documentation",
        600: "Mailgun: 'to' parameter is not a valid address. please check documentation",
    }
    taken = sorted(int(d) for _, d in fake.accepted)
    assert taken == [d for d in range(1, 1001) if d not in (7, 600)]
    assert sorted(r.delivery_id for r in sent.results) == list(range(1, 1001))
    assert fake.requests <= 1 + 2 * 2 * 10  # two bad addresses: about log2(1000) halvings each


def test_a_request_lost_while_halving_leaves_only_that_request_in_doubt(fake: Fake) -> None:
    fake.invalid = frozenset({"r1@mail.example"})
    provider = MailgunProvider(
        KEY, DOMAIN, from_addr="n@s.example", from_name="S", api=fake.url, timeout=(1.0, 0.3)
    )
    numbers = iter(range(1, 100))
    # 1: the whole (refused), 2: the first half (refused), 3: r1 alone (refused), 4: r2 (sent),
    # 5: the second half, whose answer never comes.
    fake.rule = lambda: Scripted(200, hang=1.0) if next(numbers) == 5 else None
    sent = provider.send(_batch(4))
    assert sent.error is not None
    assert sent.error.maybe_sent
    assert [(r.delivery_id, r.accepted) for r in sent.results] == [(1, False), (2, True)]
    assert sent.doubtful == [3, 4]
    assert sent.untried == []


def test_a_refused_sender_is_not_taken_for_a_bad_recipient(fake: Fake) -> None:
    said = "'from' parameter is not a valid address. please check documentation"
    fake.script.append(Scripted(400, body={"message": said}))
    sent = _provider(fake).send(_batch(10))
    assert fake.requests == 1  # not halved
    assert sent.error is not None
    assert not sent.error.transient
    assert said in sent.error.message
    assert sent.results == []
    assert sent.untried == list(range(1, 11))
