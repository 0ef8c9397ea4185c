"""The SMTP provider against a real SMTP server (aiosmtpd): STARTTLS, login, per-recipient
answers, connection reuse, and a connection lost mid-batch."""

from __future__ import annotations

import datetime as dt
import email
import email.policy
import socket
import ssl
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, Envelope, LoginPassword, Session
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from jvmail.dispatch.mime import skeleton
from jvmail.dispatch.render import Mailer, markers, render
from jvmail.providers.base import OutboundBatch, Recipient
from jvmail.providers.smtp import SmtpProvider

MAILER = Mailer("Sender Co", "1 Canal Street, Springfield", "Weekly", "Owner Inc")


@dataclass
class Handler:
    """Records what it accepts; answers 550 / 451 for chosen addresses; can hang up."""

    received: list[tuple[str, bytes]] = field(default_factory=list)
    sessions: set[int] = field(default_factory=set)
    hang_up_on: str = ""

    async def handle_RCPT(
        self, server: Any, session: Session, envelope: Envelope, address: str, options: Any
    ) -> str:
        if address.startswith("gone@"):
            return "550 5.1.1 mailbox unavailable"
        if address.startswith("grey@"):
            return "451 4.7.1 greylisted, try again later"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Session, envelope: Envelope) -> str:
        (to,) = envelope.rcpt_tos
        if to == self.hang_up_on:
            server.transport.close()  # drops the line before answering the end of data
            return "250 never seen"
        self.sessions.add(id(session))
        self.received.append((to, envelope.content))  # type: ignore[arg-type]
        return "250 2.0.0 queued"


def _auth(
    server: Any, session: Session, envelope: Envelope, mechanism: str, data: Any
) -> AuthResult:
    ok = isinstance(data, LoginPassword) and (data.login, data.password) == (b"user", b"s3cret")
    return AuthResult(success=ok, handled=False)


def _cert(tmp: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .sign(key, hashes.SHA256())
    )
    crt, pem = tmp / "cert.pem", tmp / "key.pem"
    crt.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    pem.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return crt, pem


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[Handler, int, ssl.SSLContext]]:
    crt, key = _cert(tmp_path)
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(crt, key)
    handler = Handler()
    port = _free_port()
    controller = Controller(
        handler,
        hostname="127.0.0.1",
        port=port,
        server_hostname="localhost",
        tls_context=tls,
        require_starttls=True,
        authenticator=_auth,
        auth_required=True,
        auth_exclude_mechanism=["LOGIN"],  # PLAIN only: one failed attempt answers at once
    )
    controller.start()
    client = ssl.create_default_context(cafile=str(crt))
    try:
        yield handler, port, client
    finally:
        controller.stop()


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
        _batch(["a@mail.example", "gone@mail.example", "grey@mail.example", "b@mail.example"])
    )
    provider.close()
    by_id = {r.delivery_id: r for r in sent.results}
    assert [by_id[n].accepted for n in (1, 2, 3, 4)] == [True, False, False, True]
    assert [by_id[n].retry for n in (2, 3)] == [False, True]  # 4xx: later, not a failure
    assert (by_id[2].error or "").startswith("550")
    assert [to for to, _ in handler.received] == ["a@mail.example", "b@mail.example"]


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
