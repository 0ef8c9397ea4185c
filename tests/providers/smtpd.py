"""A real SMTP server for the provider tests (aiosmtpd): STARTTLS required with a throwaway
certificate, PLAIN login as ``user`` / ``s3cret``; it records what it accepts, answers 550 for
``gone@`` and 451 for ``grey@`` addresses, and can hang up instead of answering a message."""

from __future__ import annotations

import asyncio
import datetime as dt
import socket
import ssl
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, Envelope, LoginPassword, Session
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


@dataclass
class Handler:
    """Records what it accepts; answers 550 / 451 at RCPT and 552 / 452 at the end of DATA for
    chosen addresses; can hang up."""

    received: list[tuple[str, bytes]] = field(default_factory=list)
    sessions: set[int] = field(default_factory=set)
    hang_up_on: str = ""  # at the end of this address's message, before answering it
    hang_up_at_rcpt: str = ""  # at this address's RCPT, before answering it
    servers: list[Any] = field(default_factory=list)  # the connections' protocol objects
    refuse_sender: str = ""  # the answer to every MAIL FROM, when set

    def hang_up_all(self) -> None:
        """Close every connection from the server's side, as one closed while idle is."""
        for server in self.servers:

            async def close(server: Any = server) -> None:
                server.transport.close()

            asyncio.run_coroutine_threadsafe(close(), server.loop).result()
        self.servers.clear()

    async def handle_MAIL(
        self, server: Any, session: Session, envelope: Envelope, address: str, options: Any
    ) -> str:
        if self.refuse_sender:
            return self.refuse_sender
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return "250 OK"

    async def handle_RCPT(
        self, server: Any, session: Session, envelope: Envelope, address: str, options: Any
    ) -> str:
        if server not in self.servers:
            self.servers.append(server)
        if address == self.hang_up_at_rcpt:
            server.transport.close()
            return "250 never seen"
        if address.startswith("gone@"):
            return "550 5.1.1 mailbox unavailable"
        if address.startswith("grey@"):
            return "451 4.7.1 greylisted, try again later"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Session, envelope: Envelope) -> str:
        (to,) = envelope.rcpt_tos
        if to.startswith("toobig@"):
            return "552 5.3.4 message too big"
        if to.startswith("busy@"):
            return "452 4.3.1 insufficient storage, try again later"
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


@contextmanager
def smtp_server(tmp: Path, *, utf8: bool = False) -> Iterator[tuple[Handler, int, ssl.SSLContext]]:
    """The server on a free port: its handler, the port, and a TLS context that trusts it;
    ``utf8``: it offers SMTPUTF8 (addresses beyond ASCII)."""
    crt, key = _cert(tmp)
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
        enable_SMTPUTF8=utf8,
    )
    controller.start()
    client = ssl.create_default_context(cafile=str(crt))
    try:
        yield handler, port, client
    finally:
        controller.stop()
