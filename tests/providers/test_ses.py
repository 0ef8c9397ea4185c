"""SES v2 through boto3 against a local endpoint speaking SendBulkEmail.

moto's server (5.2) implements SES v2 SendEmail but not SendBulkEmail, so the bulk call is
served here; boto3 still validates every request against SES's own service model first.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from jvmail.providers.base import OutboundBatch
from jvmail.providers.ses import QUOTA_WAIT, SesProvider
from tests.providers.fakes import Fake, Scripted, sample_batch, serve, ses_handler

KEY_ID = "AKIATESTKEY"


@pytest.fixture
def fake() -> Iterator[Fake]:
    state = Fake()
    with serve(ses_handler(state, KEY_ID), state):
        yield state


def _batch(emails: list[str]) -> OutboundBatch:
    return sample_batch(emails, 6)


def _provider(fake: Fake, key_id: str = KEY_ID) -> SesProvider:
    return SesProvider(
        "eu-west-1",
        from_addr="news@s.example",
        from_name="Sender Co",
        access_key_id=key_id,
        secret_access_key="secret",
        endpoint_url=fake.url,
    )


def test_fifty_destinations_a_request_each_with_its_own_values(fake: Fake) -> None:
    emails = [f"r{n}@mail.example" for n in range(1, 121)]
    sent = _provider(fake).send(_batch(emails))
    assert sent.error is None
    assert fake.requests == 3  # 50 + 50 + 20
    assert [r.accepted for r in sent.results] == [True] * 120
    assert sorted(int(d) for _, d in fake.accepted) == list(range(1, 121))
    first = fake.bodies[0]
    assert first["Subject"] == "Hi <R1>"
    assert "Hi &lt;R1&gt;" in first["Html"]
    assert "https://jv.example/c/1" in first["Text"]
    assert first["List-Unsubscribe"] == "<https://jv.example/u/1>, <mailto:news@s.example>"
    assert first["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"


def test_each_destination_gets_its_own_answer(fake: Fake) -> None:
    sent = _provider(fake).send(_batch(["a@mail.example", "rejected@mail.example"]))
    ok, refused = sent.results
    assert ok.accepted
    assert not refused.accepted
    assert not refused.retry
    assert refused.error == "MESSAGE_REJECTED: Email address is on the suppression list"


def test_throttling_retries_and_a_bad_key_pauses(fake: Fake) -> None:
    fake.script.append(
        Scripted(
            429,
            {"x-amzn-ErrorType": "TooManyRequestsException"},
            {"message": "Too many requests"},
        )
    )
    sent = _provider(fake).send(_batch(["a@mail.example"]))
    assert sent.error is not None
    assert sent.error.transient
    assert sent.untried == [1]
    sent = _provider(fake, key_id="AKIAWRONG").send(_batch(["a@mail.example"]))
    assert sent.error is not None
    assert sent.error.auth
    assert "UnrecognizedClientException" in sent.error.message
    assert not fake.accepted


@pytest.mark.parametrize("status", [429, 503])
def test_a_bare_429_or_5xx_is_a_refusal_for_now(fake: Fake, status: int) -> None:
    """Without SES's error type (a proxy's answer): still a passing refusal, never a failure
    of the recipients."""
    fake.script.append(Scripted(status, {"Retry-After": "1"}))
    sent = _provider(fake).send(_batch(["a@mail.example"]))
    assert sent.error is not None
    assert sent.error.transient
    assert sent.untried == [1]
    assert not fake.accepted


def test_a_connection_lost_after_sending_leaves_the_request_in_doubt(fake: Fake) -> None:
    emails = [f"r{n}@mail.example" for n in range(1, 61)]
    fake.script.append(Scripted(200, drop=True))
    sent = _provider(fake).send(_batch(emails))
    assert sent.error is not None
    assert (sent.error.transient, sent.error.maybe_sent) == (True, True)
    assert sent.doubtful == list(range(1, 51))  # the first request's: never resent
    assert sent.untried == list(range(51, 61))


def test_a_used_up_quota_holds_the_account_and_keeps_what_ses_answered(fake: Fake) -> None:
    emails = ["a@mail.example", "quota-b@mail.example", "rejected@mail.example", "d@mail.example"]
    sent = _provider(fake).send(_batch(emails))
    assert sent.error is not None
    assert (sent.error.transient, sent.error.auth, sent.error.maybe_sent) == (True, False, False)
    assert sent.error.retry_after == QUOTA_WAIT
    assert [(r.delivery_id, r.accepted) for r in sent.results] == [(1, True), (3, False), (4, True)]
    assert sent.untried == [2]


def test_an_answer_that_does_not_match_the_request_leaves_it_in_doubt(fake: Fake) -> None:
    fake.script.append(
        Scripted(200, body={"BulkEmailEntryResults": [{"Status": "SUCCESS", "MessageId": "m"}]})
    )
    sent = _provider(fake).send(_batch(["a@mail.example", "b@mail.example", "c@mail.example"]))
    assert sent.error is not None
    assert sent.error.maybe_sent
    assert sent.doubtful == [1, 2, 3]
    assert sent.results == []
