"""The SMTP provider against a real SMTP server (aiosmtpd): STARTTLS, login, per-recipient
answers, connection reuse, and a connection lost mid-batch."""

from __future__ import annotations

import email
import email.policy
import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest

from jvmail.dispatch.mime import skeleton
from jvmail.dispatch.render import Mailer, markers, render
from jvmail.providers.base import OutboundBatch, Recipient
from jvmail.providers.smtp import SmtpProvider, _transaction
from tests.providers.smtpd import Handler, smtp_server

MAILER = Mailer("Sender Co", "1 Canal Street, Springfield", "Weekly", "Owner Inc")


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[Handler, int, ssl.SSLContext]]:
    with smtp_server(tmp_path) as running:
        yield running


def _batch(emails: list[str]) -> OutboundBatch:
    rendered = render(
        "offer",
        "Hi {{ first_name }}",
        "<p>Hi <a href='https://o.example/x'>x</a></p>",
        "Hi https://o.example/x",
        MAILER,
    )
    layout = skeleton(
        rendered,
        from_name="Sender Co",
        from_addr="news@sender.example",
        mailing_id=3,
        domain="jv.example",
    )
    people = tuple(
        Recipient(
            n,
            address,
            markers("Ann", [f"https://jv.example/c/{n}"], f"https://jv.example/u/{n}", "o"),
        )
        for n, address in enumerate(emails, start=1)
    )
    return OutboundBatch(3, layout, "mailto:news@sender.example", people)


def _provider(port: int, client: ssl.SSLContext, password: str = "s3cret") -> SmtpProvider:
    return SmtpProvider(
        "localhost",
        port,
        security="starttls",
        from_addr="news@sender.example",
        username="user",
        password=password,
        tls=client,
        timeout=5,
    )


def test_starttls_login_and_one_connection_for_many_messages(
    server: tuple[Handler, int, ssl.SSLContext],
) -> None:
    handler, port, client = server
    provider = _provider(port, client)
    emails = [f"r{n}@mail.example" for n in range(150)]  # two pieces of at most 100
    sent = provider.send(_batch(emails))
    provider.close()
    assert sent.error is None
    assert [r.accepted for r in sent.results] == [True] * 150
    assert [to for to, _ in handler.received] == emails
    assert len(handler.sessions) == 1  # the connection was kept across pieces
    msg = email.message_from_bytes(handler.received[0][1], policy=email.policy.default)
    assert msg["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert msg["Message-ID"] == "<jv.1@jv.example>"


def test_each_recipient_gets_its_own_answer(server: tuple[Handler, int, ssl.SSLContext]) -> None:
    handler, port, client = server
    provider = _provider(port, client)
    sent = provider.send(
        _batch(
            [
                "a@mail.example",
                "gone@mail.example",  # 550 at RCPT
                "grey@mail.example",  # 451 at RCPT
                "toobig@mail.example",  # 552 at the end of DATA
                "busy@mail.example",  # 452 at the end of DATA
                "b@mail.example",
            ]
        )
    )
    provider.close()
    by_id = {r.delivery_id: r for r in sent.results}
    assert [by_id[n].accepted for n in range(1, 7)] == [True, False, False, False, False, True]
    assert [by_id[n].retry for n in (2, 3, 4, 5)] == [False, True, False, True]  # 4xx: later
    assert (by_id[2].error or "").startswith("550")
    assert (by_id[4].error or "").startswith("552")
    assert [to for to, _ in handler.received] == ["a@mail.example", "b@mail.example"]
    assert len(handler.sessions) == 1  # the same connection went on after each refusal


def test_lines_starting_with_a_dot_arrive_as_written(
    server: tuple[Handler, int, ssl.SSLContext],
) -> None:
    handler, port, client = server
    provider = _provider(port, client)
    conn = provider._connect()
    data = b".first line\r\nSubject: x\r\n\r\n.\r\n..two\r\nplain\r\n.end"
    _transaction(conn, "news@sender.example", "a@mail.example", data)
    provider.close()
    ((to, content),) = handler.received
    assert to == "a@mail.example"
    assert content == data + b"\r\n"  # un-stuffed by the server: exactly the lines sent


def test_a_refused_login_pauses_instead_of_failing(
    server: tuple[Handler, int, ssl.SSLContext],
) -> None:
    handler, port, client = server
    provider = _provider(port, client, password="wrong")
    sent = provider.send(_batch(["a@mail.example"]))
    provider.close()
    assert sent.error is not None
    assert sent.error.auth
    assert "login to localhost refused: 535" in sent.error.message
    assert sent.untried == [1]
    assert not handler.received


def test_a_connection_lost_mid_message_leaves_only_that_message_in_doubt(
    server: tuple[Handler, int, ssl.SSLContext],
) -> None:
    handler, port, client = server
    handler.hang_up_on = "c@mail.example"
    provider = _provider(port, client)
    sent = provider.send(
        _batch(["a@mail.example", "b@mail.example", "c@mail.example", "d@mail.example"])
    )
    assert sent.error is not None
    assert sent.error.maybe_sent
    assert [r.delivery_id for r in sent.results if r.accepted] == [1, 2]
    assert sent.doubtful == [3]
    assert sent.untried == [4]
    provider.close()


def test_a_connection_the_server_closed_while_idle_is_opened_again(
    server: tuple[Handler, int, ssl.SSLContext],
) -> None:
    handler, port, client = server
    provider = _provider(port, client)
    assert provider.send(_batch(["a@mail.example"])).error is None
    handler.hang_up_all()  # the connection kept for the next batch is gone
    sent = provider.send(_batch(["b@mail.example", "c@mail.example"]))
    assert sent.error is None
    assert [r.accepted for r in sent.results] == [True, True]
    assert [to for to, _ in handler.received] == [
        "a@mail.example",
        "b@mail.example",
        "c@mail.example",
    ]
    provider.close()


def test_a_connection_lost_before_a_message_was_sent_leaves_nothing_in_doubt(
    server: tuple[Handler, int, ssl.SSLContext],
) -> None:
    handler, port, client = server
    handler.hang_up_at_rcpt = "b@mail.example"
    provider = _provider(port, client)
    sent = provider.send(_batch(["a@mail.example", "b@mail.example", "c@mail.example"]))
    assert sent.error is not None
    assert (sent.error.transient, sent.error.maybe_sent) == (True, False)
    assert [r.delivery_id for r in sent.results if r.accepted] == [1]
    assert sent.doubtful == []
    assert sent.untried == [2, 3]  # safe to send later: the server never had them
    provider.close()


def test_addresses_beyond_ascii(tmp_path: Path) -> None:
    # A domain beyond ASCII goes in IDNA form to any server; a local part beyond ASCII needs
    # SMTPUTF8, and is refused for good by a server without it (not a crash of the batch).
    batch = _batch(
        ["ann@bücher.example", "josé@mail.example", "bob@mail.example", "x@straße.example"]
    )
    (tmp_path / "ascii").mkdir()
    (tmp_path / "utf8").mkdir()
    with smtp_server(tmp_path / "ascii") as (handler, port, client):
        provider = _provider(port, client)
        sent = provider.send(batch)
        provider.close()
        assert sent.error is None
        assert [r.accepted for r in sent.results] == [True, False, True, True]
        assert "SMTPUTF8" in (sent.results[1].error or "")
        # IDNA 2008: straße is a domain of its own, not strasse (IDNA 2003 would mail it).
        assert [to for to, _ in handler.received] == [
            "ann@xn--bcher-kva.example",
            "bob@mail.example",
            "x@xn--strae-oqa.example",
        ]
    with smtp_server(tmp_path / "utf8", utf8=True) as (handler, port, client):
        provider = _provider(port, client)
        sent = provider.send(batch)
        provider.close()
        assert sent.error is None
        assert [r.accepted for r in sent.results] == [True, True, True, True]
        assert "josé@mail.example" in [to for to, _ in handler.received]


@pytest.mark.parametrize(
    ("answer", "paused"),
    [("550 5.7.1 sender not allowed", True), ("451 4.3.0 try again later", False)],
)
def test_a_refused_sender_is_the_accounts_problem_not_the_recipients(
    server: tuple[Handler, int, ssl.SSLContext], answer: str, paused: bool
) -> None:
    handler, port, client = server
    handler.refuse_sender = answer
    provider = _provider(port, client)
    sent = provider.send(_batch(["a@mail.example", "b@mail.example"]))
    provider.close()
    assert sent.error is not None
    assert (sent.error.auth, sent.error.transient) == (paused, not paused)
    assert "refused the sender news@sender.example" in sent.error.message
    assert sent.results == []  # no recipient is failed for it
    assert sent.untried == [1, 2]
