"""SendGrid against a local server that speaks /v3/mail/send and validates bodies with its spec."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from jvmail.providers.base import OutboundBatch
from jvmail.providers.sendgrid import SendGridProvider
from tests.providers.fakes import Fake, Scripted, sample_batch, sendgrid_handler, serve

KEY = "SG.test-key"


@pytest.fixture
def fake() -> Iterator[Fake]:
    state = Fake()
    with serve(sendgrid_handler(state, KEY), state):
        yield state


def _batch(count: int) -> OutboundBatch:
    emails = [f"r{n}@mail.example" for n in range(1, count + 1)]
    return sample_batch(emails, 9, lambda n: "<Bo>" if n == 1 else f"R{n}")


def _provider(fake: Fake, key: str = KEY) -> SendGridProvider:
    return SendGridProvider(key, from_addr="news@s.example", from_name="Sender Co", api=fake.url)


def test_one_request_per_thousand_recipients_each_with_its_own_parts(fake: Fake) -> None:
    sent = _provider(fake).send(_batch(2500))
    assert sent.error is None
    assert fake.requests == 3
    assert len(sent.results) == 2500
    assert all(r.accepted for r in sent.results)
    assert sorted(int(d) for _, d in fake.accepted) == list(range(1, 2501))
    first = fake.bodies[0]["personalizations"][0]
    assert first["headers"]["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert (
        first["headers"]["List-Unsubscribe"] == "<https://jv.example/u/1>, <mailto:news@s.example>"
    )
    # What SendGrid will show recipient 1: its substitutions applied to the shared body.
    html = fake.bodies[0]["content"][1]["value"]
    text = fake.bodies[0]["content"][0]["value"]
    subs = first["substitutions"]
    for key, value in subs.items():
        html, text = html.replace(key, value), text.replace(key, value)
    assert "Hi &lt;Bo&gt;," in html
    assert "Hi <Bo>," in text
    assert "https://jv.example/c/1" in html
    assert "%%JV" not in html + text


@pytest.mark.parametrize(
    ("scripted", "transient", "auth"),
    [
        (
            Scripted(429, {"Retry-After": "7"}, {"errors": [{"message": "too many requests"}]}),
            True,
            False,
        ),
        (Scripted(503, body={"errors": [{"message": "unavailable"}]}), True, False),
        (Scripted(401, body={"errors": [{"message": "authorization required"}]}), False, True),
        (Scripted(413, body={"errors": [{"message": "content too large"}]}), False, False),
    ],
)
def test_documented_errors_are_classified(
    fake: Fake, scripted: Scripted, transient: bool, auth: bool
) -> None:
    fake.script.append(scripted)
    sent = _provider(fake).send(_batch(1500))
    assert sent.error is not None
    assert (sent.error.transient, sent.error.auth, sent.error.maybe_sent) == (
        transient,
        auth,
        False,
    )
    assert sent.results == []
    assert len(sent.untried) == 1500  # refused as a whole: nothing left, all can go later
    if scripted.status == 429:
        assert sent.error.retry_after == 7.0


def test_a_redirect_is_not_followed_and_pauses_the_account(fake: Fake) -> None:
    # Followed, the 308 would post the batch (and the key) again to where it points: here the
    # fake itself, which would take it.
    fake.script.append(Scripted(308, {"Location": f"{fake.url}/v3/mail/send"}))
    sent = _provider(fake).send(_batch(3))
    assert sent.error is not None
    assert (sent.error.transient, sent.error.auth, sent.error.maybe_sent) == (False, True, False)
    assert "308" in sent.error.message
    assert f"{fake.url}/v3/mail/send" in sent.error.message
    assert fake.requests == 1
    assert not fake.accepted
    assert sent.untried == [1, 2, 3]


def test_a_wrong_key_is_refused_by_the_server(fake: Fake) -> None:
    sent = _provider(fake, key="SG.wrong").send(_batch(3))
    assert sent.error is not None
    assert sent.error.auth
    assert "authorization required" in sent.error.message
    assert not fake.accepted


def test_an_answer_that_never_comes_leaves_the_request_in_doubt(fake: Fake) -> None:
    provider = SendGridProvider(
        KEY, from_addr="news@s.example", from_name="Sender Co", api=fake.url, timeout=(1.0, 0.3)
    )
    fake.script.append(Scripted(202, hang=1.0))
    sent = provider.send(_batch(1200))
    assert sent.error is not None
    assert sent.error.maybe_sent
    assert sent.doubtful == list(range(1, 1001))
    assert sent.untried == list(range(1001, 1201))


def test_a_connection_lost_after_sending_leaves_the_request_in_doubt(fake: Fake) -> None:
    # SendGrid took the request, then the connection closed before its answer: a resend would
    # mail these 1,000 people twice.
    fake.script.append(Scripted(202, drop=True))
    sent = _provider(fake).send(_batch(1200))
    assert sent.error is not None
    assert (sent.error.transient, sent.error.maybe_sent) == (True, True)
    assert "connection was lost after sending" in sent.error.message
    assert sent.doubtful == list(range(1, 1001))
    assert sent.untried == list(range(1001, 1201))
    assert len(fake.accepted) == 1000


def test_no_connection_at_all_leaves_nothing_in_doubt() -> None:
    with socket.socket() as free:  # a port nothing listens on
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    provider = SendGridProvider(
        KEY, from_addr="news@s.example", from_name="Sender Co", api=f"http://127.0.0.1:{port}"
    )
    sent = provider.send(_batch(3))
    assert sent.error is not None
    assert (sent.error.transient, sent.error.maybe_sent) == (True, False)
    assert "cannot connect (ConnectionRefusedError)" in sent.error.message
    assert sent.untried == [1, 2, 3]
    assert sent.doubtful == []


def test_a_key_that_cannot_be_a_header_pauses_and_is_never_shown(fake: Fake) -> None:
    sent = _provider(fake, key=KEY + "\n").send(_batch(3))
    assert sent.error is not None
    assert (sent.error.transient, sent.error.auth, sent.error.maybe_sent) == (False, True, False)
    assert "InvalidHeader" in sent.error.message
    assert KEY not in sent.error.message + sent.error.fix
    assert fake.requests == 0
    assert sent.untried == [1, 2, 3]


def test_an_invalid_address_is_refused_for_good_the_rest_sent_at_once(fake: Fake) -> None:
    # SendGrid refuses a whole request for an address it deems invalid, naming its field.
    fake.invalid = frozenset({"r2@mail.example", "r1002@mail.example"})
    sent = _provider(fake).send(_batch(1500))
    assert sent.error is None
    assert fake.requests == 4  # each piece refused once, then sent without its bad address
    refused = {r.delivery_id: r for r in sent.results if not r.accepted}
    assert set(refused) == {2, 1002}
    assert all(r.error == "SendGrid: Does not contain a valid address." for r in refused.values())
    taken = sorted(int(d) for _, d in fake.accepted)
    assert taken == [d for d in range(1, 1501) if d not in (2, 1002)]
    assert sorted(r.delivery_id for r in sent.results) == list(range(1, 1501))


def test_the_refused_stay_refused_when_the_request_without_them_fails(fake: Fake) -> None:
    provider = SendGridProvider(
        KEY, from_addr="news@s.example", from_name="Sender Co", api=fake.url, timeout=(1.0, 0.5)
    )
    fake.invalid = frozenset({"r5@mail.example"})
    numbers = iter(range(1, 100))
    fake.rule = lambda: Scripted(202, hang=1.5) if next(numbers) == 2 else None
    sent = provider.send(_batch(20))
    assert sent.error is not None
    assert sent.error.maybe_sent
    assert [(r.delivery_id, r.accepted) for r in sent.results] == [(5, False)]
    assert sent.doubtful == [d for d in range(1, 21) if d != 5]  # the second request's
    assert sent.untried == []


def test_a_400_that_names_no_recipient_fails_the_request_as_a_whole(fake: Fake) -> None:
    fake.script.append(
        Scripted(400, body={"errors": [{"message": "bad subject", "field": "subject"}]})
    )
    sent = _provider(fake).send(_batch(3))
    assert sent.error is not None
    assert not sent.error.transient
    assert "bad subject" in sent.error.message
    assert sent.results == []


def test_a_netrc_entry_for_the_host_does_not_replace_the_key(
    fake: Fake, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    netrc = tmp_path / "netrc"
    netrc.write_text("machine 127.0.0.1 login someone password something-else\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))
    sent = _provider(fake).send(_batch(3))
    assert sent.error is None
    assert len(fake.accepted) == 3
