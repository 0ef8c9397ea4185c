"""Postmark against a local server that speaks /email/batch and validates with its spec."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from jvmail.providers.base import OutboundBatch
from jvmail.providers.postmark import PostmarkProvider
from tests.providers.fakes import Fake, Scripted, postmark_handler, sample_batch, serve

TOKEN = "pm-server-token"


@pytest.fixture
def fake() -> Iterator[Fake]:
    state = Fake()
    with serve(postmark_handler(state, TOKEN), state):
        yield state


def _batch(emails: list[str]) -> OutboundBatch:
    return sample_batch(emails, 4)


def _provider(fake: Fake, token: str = TOKEN) -> PostmarkProvider:
    return PostmarkProvider(token, from_addr="news@s.example", from_name="Sender Co", api=fake.url)


def test_five_hundred_messages_a_request_each_filled_for_its_recipient(fake: Fake) -> None:
    emails = [f"r{n}@mail.example" for n in range(1, 1201)]
    sent = _provider(fake).send(_batch(emails))
    assert sent.error is None
    assert fake.requests == 3  # 500 + 500 + 200
    assert [r.accepted for r in sent.results] == [True] * 1200
    assert sorted(int(d) for _, d in fake.accepted) == list(range(1, 1201))
    first = fake.bodies[0]["messages"][0]
    assert first["Subject"] == "Hi <R1>"
    assert "Hi &lt;R1&gt;" in first["HtmlBody"]
    assert "Hi <R1>" in first["TextBody"]
    headers = {h["Name"]: h["Value"] for h in first["Headers"]}
    assert headers["List-Unsubscribe"] == "<https://jv.example/u/1>, <mailto:news@s.example>"
    assert headers["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert first["MessageStream"] == "broadcast"


def test_a_refused_recipient_is_recorded_with_postmarks_words(fake: Fake) -> None:
    sent = _provider(fake).send(_batch(["a@mail.example", "inactive@mail.example"]))
    assert sent.error is None
    ok, refused = sent.results
    assert ok.accepted
    assert not refused.accepted
    assert not refused.retry
    assert refused.error == "406 You tried to send to a recipient that has been marked as inactive."


def test_a_bad_token_pauses_and_server_errors_retry(fake: Fake) -> None:
    sent = _provider(fake, token="wrong").send(_batch(["a@mail.example"]))
    assert sent.error is not None
    assert sent.error.auth
    fake.script.append(Scripted(500, body={"ErrorCode": 500, "Message": "Internal error"}))
    sent = _provider(fake).send(_batch(["a@mail.example"]))
    assert sent.error is not None
    assert sent.error.transient
    assert sent.untried == [1]
    assert not fake.accepted


@pytest.mark.parametrize(
    "answer",
    [
        Scripted(200, raw=b"<html>OK</html>"),
        Scripted(200, body=[{"To": "a@mail.example", "MessageID": "m1"}] * 3),
        Scripted(200, body=[{"ErrorCode": 0, "MessageID": "m1"}]),
    ],
    ids=["not-json", "no-error-codes", "too-few"],
)
def test_an_answer_that_does_not_say_what_became_of_each_leaves_them_in_doubt(
    fake: Fake, answer: Scripted
) -> None:
    fake.script.append(answer)
    sent = _provider(fake).send(_batch(["a@mail.example", "b@mail.example", "c@mail.example"]))
    assert sent.error is not None
    assert (sent.error.transient, sent.error.maybe_sent) == (True, True)
    assert sent.doubtful == [1, 2, 3]
    assert sent.results == []
