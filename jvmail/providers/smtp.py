"""SMTP: one transaction per message over a kept-open connection.

The connection is opened on first use (STARTTLS or implicit TLS as configured, login when a
username is given) and kept for the following pieces; TCP_NODELAY is set so each small command
goes out at once instead of waiting on Nagle's algorithm and the peer's delayed ACK. Each
message comes whole from the mailing's pre-built MIME skeleton.

Answers are classified per recipient: 5xx refuses that address for good (recorded, not
retried); 4xx asks to try later (greylisting, mailbox busy): the row goes back to pending. A
refused login, or a sender address refused for good (MAIL FROM), pauses the account's
mailings. A connection lost before the server answered the end of a message leaves that one
message in doubt, never resent; the rest go later. One lost before a message's end was sent
leaves nothing in doubt; when it is the first message on a connection kept from an earlier
batch (the server closed it while idle), it is sent again at once on a new connection. A
connection unused for a few seconds is checked with NOOP before a message is trusted to it (a
single message, sent through ``sendmail``, cannot tell when its connection was lost).

An address whose domain is beyond ASCII is sent with the domain in IDNA form; one whose local
part is needs a server that offers SMTPUTF8, and is refused for good by one that does not.

A single message (:meth:`~jvmail.providers.base.Provider.send_message`) is one transaction the
same way, its refusal raised for the message as a whole: 5xx for good, 4xx (or 421) later.
"""

from __future__ import annotations

import contextlib
import smtplib
import socket
import ssl
import time
from collections.abc import Sequence
from email.utils import formataddr

from email_validator import EmailNotValidError, validate_email

from jvmail.providers.base import (
    Capabilities,
    OutboundBatch,
    Provider,
    ProviderError,
    Recipient,
    Result,
    SingleMessage,
)

__all__ = ["SmtpProvider"]

_OK = 250
IDLE_CHECK = 5.0  # seconds a kept connection may sit unused before a NOOP checks it is alive
_GO_AHEAD = 354  # the answer to DATA: send the message


class SmtpProvider(Provider):
    name = "smtp"
    capabilities = Capabilities(max_batch=100, substitution=False, metadata=True, single=True)

    def __init__(
        self,
        host: str,
        port: int,
        *,
        security: str,
        from_addr: str,
        from_name: str = "",
        username: str | None = None,
        password: str | None = None,
        timeout: float = 30.0,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.host, self.port, self.security = host, port, security
        self.from_addr = from_addr
        self.sender = formataddr((from_name, from_addr))
        self.username, self.password = username, password
        self.timeout = timeout
        self.tls = tls or ssl.create_default_context()
        self._conn: smtplib.SMTP | None = None
        self._used = 0.0  # when the kept connection was last handed out (monotonic seconds)

    def _connect(self) -> smtplib.SMTP:
        if self._conn is not None:
            if time.monotonic() - self._used < IDLE_CHECK or _alive(self._conn):
                self._used = time.monotonic()
                return self._conn
            _drop(self._conn)  # the server closed it while it sat unused
            self._conn = None
        conn: smtplib.SMTP | None = None
        try:
            if self.security == "tls":
                conn = smtplib.SMTP_SSL(
                    self.host, self.port, timeout=self.timeout, context=self.tls
                )
            else:
                conn = smtplib.SMTP(self.host, self.port, timeout=self.timeout)
            if conn.sock is not None:
                conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn.ehlo()
            if self.security == "starttls":
                conn.starttls(context=self.tls)
                conn.ehlo()
            if self.username:
                conn.login(self.username, self.password or "")
        except smtplib.SMTPAuthenticationError as exc:
            _drop(conn)
            raise ProviderError(
                f"SMTP login to {self.host} refused: {exc.smtp_code} {_text(exc.smtp_error)}",
                "check the username and password env vars named in the partner's [provider]",
                transient=False,
                auth=True,
            ) from exc
        except (OSError, smtplib.SMTPException) as exc:
            _drop(conn)
            raise ProviderError(
                f"cannot connect to SMTP {self.host}:{self.port}: {exc}",
                "check host, port and security in the partner's [provider]",
                transient=True,
            ) from exc
        self._conn, self._used = conn, time.monotonic()
        return conn

    def close(self) -> None:
        if self._conn is not None:
            try:
                self._conn.quit()
            except (OSError, smtplib.SMTPException):
                self._conn.close()
            self._conn = None

    def _send(self, batch: OutboundBatch, recipients: Sequence[Recipient]) -> list[Result]:
        kept = self._conn is not None  # opened for an earlier batch: it may have gone idle
        conn = self._connect()
        done: list[Result] = []
        for r in recipients:
            envelope = _envelope(conn, r.email)
            if envelope is None:
                done.append(Result(r.delivery_id, False, error=self._no_utf8()))
                continue
            to, options = envelope
            data = batch.skeleton.message(r.delivery_id, to, r.values, batch.unsubscribe_mailto)
            try:
                try:
                    _transaction(conn, self.from_addr, to, data, options)
                except _Unsent:
                    if not (kept and not done):
                        raise
                    # The first message on a connection kept from an earlier batch: the server
                    # had closed it while idle. Nothing left; once more on a new connection.
                    _drop(conn)
                    self._conn, kept = None, False
                    conn = self._connect()
                    _transaction(conn, self.from_addr, to, data, options)
            except _Unsent as exc:
                _drop(conn)
                self._conn = None
                raise ProviderError(
                    f"SMTP connection to {self.host} lost: {exc.__cause__}",
                    "the server or network dropped the connection before the message was "
                    "sent; the rest go on the next try",
                    transient=True,
                    partial=done,
                ) from exc
            except smtplib.SMTPRecipientsRefused as exc:
                code, why = exc.recipients[to]
                done.append(_refused(r, code, why))
            except smtplib.SMTPSenderRefused as exc:
                raise self._sender_refused(exc, done) from exc
            except smtplib.SMTPResponseException as exc:
                done.append(_refused(r, exc.smtp_code, exc.smtp_error))
                if exc.smtp_code == 421:  # the server is closing the connection: stop here
                    self.close()
                    raise ProviderError(
                        f"SMTP {self.host} is closing the connection: {_text(exc.smtp_error)}",
                        "the server asked to come back later; the rest go on the next try",
                        transient=True,
                        partial=done,
                    ) from exc
            except (smtplib.SMTPServerDisconnected, OSError) as exc:
                _drop(conn)
                self._conn = None
                raise ProviderError(
                    f"SMTP connection to {self.host} lost: {exc}",
                    "the server or network dropped the connection; the next run goes on",
                    transient=True,
                    maybe_sent=True,
                    partial=done,
                    in_doubt=1,
                ) from exc
            else:
                done.append(Result(r.delivery_id, True, batch.skeleton.message_id(r.delivery_id)))
        return done

    def _sender_refused(self, exc: smtplib.SMTPSenderRefused, done: list[Result]) -> ProviderError:
        """MAIL FROM refused: the account, not the recipient (authentication required, the
        sender address not allowed). For good: its mailings pause; for now: later."""
        if exc.smtp_code == 421:
            self.close()
        later = 400 <= exc.smtp_code < 500
        return ProviderError(
            f"SMTP {self.host} refused the sender {self.from_addr}: {exc.smtp_code} "
            f"{_text(exc.smtp_error)}"[:1000],
            "a passing refusal; the rest go on the next try"
            if later
            else "check the account's username, password and sender address in the partner's "
            "[provider] and contact_email; its mailings are paused",
            transient=later,
            auth=not later,
            partial=done,
        )

    def _no_utf8(self) -> str:
        return (
            f"SMTP {self.host} does not take addresses with letters beyond ASCII (it offers no "
            "SMTPUTF8)"
        )

    def _send_message(self, message: SingleMessage) -> str:
        conn = self._connect()
        envelope = _envelope(conn, message.to)
        if envelope is None:
            raise ProviderError(self._no_utf8(), "send it through another account", transient=False)
        to, options = envelope
        try:
            conn.sendmail(
                self.from_addr, [to], message.mime(self.sender), mail_options=list(options)
            )
        except smtplib.SMTPRecipientsRefused as exc:
            code, why = exc.recipients[to]
            raise self._refusal(code, why) from exc
        except smtplib.SMTPResponseException as exc:
            if exc.smtp_code == 421:  # the server is closing the connection
                self.close()
            raise self._refusal(exc.smtp_code, exc.smtp_error) from exc
        except (smtplib.SMTPServerDisconnected, OSError) as exc:
            _drop(conn)
            self._conn = None
            raise ProviderError(
                f"SMTP connection to {self.host} lost: {exc}",
                "the server may have taken the message: it is not sent again blindly",
                transient=True,
                maybe_sent=True,
            ) from exc
        except smtplib.SMTPException as exc:  # refused by our side before anything was sent
            raise ProviderError(
                f"SMTP {self.host}: {exc}", "check the account's settings", transient=False
            ) from exc
        return message.message_id

    def _refusal(self, code: int, why: bytes | str) -> ProviderError:
        later = 400 <= code < 500
        return ProviderError(
            f"SMTP {self.host} refused the message: {code} {_text(why)}"[:1000],
            "a passing refusal; it is tried again later"
            if later
            else "the server's answer above says what to change",
            transient=later,
        )


class _Unsent(Exception):
    """The connection failed before the end of the message went out: the server cannot have
    taken it (the exception it failed with is the ``__cause__``)."""


def _transaction(
    conn: smtplib.SMTP, from_addr: str, to: str, data: bytes, options: Sequence[str] = ()
) -> None:
    """Send ``data`` to ``to`` as ``conn.sendmail(from_addr, [to], data)`` does, raising what it
    raises, at about half its CPU: plain ASCII addresses are written as they are instead of
    being parsed again for every message, and lines are dot-stuffed (RFC 5321, 4.5.2) by one
    ``bytes.replace`` instead of a regular expression over the whole message. Any other address
    goes through ``sendmail`` (with the ``options`` of MAIL FROM, e.g. SMTPUTF8).

    A connection lost before the message's end was sent raises :class:`_Unsent`; lost while
    waiting for the server's answer to it, what smtplib raised: then it may have the message."""
    if not (_plain(from_addr) and _plain(to)):
        conn.sendmail(from_addr, [to], data, mail_options=list(options))
        return
    try:
        _up_to_the_end(conn, from_addr, to, data)
    except (smtplib.SMTPResponseException, smtplib.SMTPRecipientsRefused):
        raise
    except OSError as exc:  # smtplib's SMTPServerDisconnected among them
        raise _Unsent from exc
    code, why = conn.getreply()
    if code != _OK:
        _end(conn, code)
        raise smtplib.SMTPDataError(code, why)


def _up_to_the_end(conn: smtplib.SMTP, from_addr: str, to: str, data: bytes) -> None:
    """MAIL, RCPT, DATA and the message with its final dot: all but the server's answer."""
    conn.putcmd("mail", f"FROM:<{from_addr}>")
    code, why = conn.getreply()
    if code != _OK:
        _end(conn, code)
        raise smtplib.SMTPSenderRefused(code, why, from_addr)
    conn.putcmd("rcpt", f"TO:<{to}>")
    code, why = conn.getreply()
    if code not in {_OK, 251}:
        _end(conn, code)
        raise smtplib.SMTPRecipientsRefused({to: (code, why)})
    conn.putcmd("data")
    code, why = conn.getreply()
    if code != _GO_AHEAD:
        _end(conn, code)
        raise smtplib.SMTPDataError(code, why)
    body = data.replace(b"\n.", b"\n..")
    if body.startswith(b"."):
        body = b"." + body
    if not body.endswith(b"\r\n"):
        body += b"\r\n"
    conn.send(body + b".\r\n")


def _alive(conn: smtplib.SMTP) -> bool:
    """Whether a kept connection still answers (NOOP), before a message is trusted to it."""
    try:
        return conn.noop()[0] == _OK
    except OSError:  # smtplib's SMTPServerDisconnected among them
        return False


def _plain(address: str) -> bool:
    return address.isascii() and not any(c in address for c in "<>\r\n ")


def _envelope(conn: smtplib.SMTP, address: str) -> tuple[str, tuple[str, ...]] | None:
    """``address`` as the envelope carries it, with the MAIL FROM options it needs; None when
    this server cannot take it (letters beyond ASCII before the @, and no SMTPUTF8)."""
    to = _ascii_domain(address)
    if to.isascii():
        return to, ()
    return (to, ("SMTPUTF8",)) if conn.has_extn("smtputf8") else None


def _ascii_domain(address: str) -> str:
    """``address`` with its domain in ASCII as DNS has it (IDNA 2008 with UTS 46, as
    email-validator gives it: ``bücher.de`` becomes ``xn--bcher-kva.de``, and ``straße.de``
    stays a domain of its own, not ``strasse.de``), so that only a local part beyond ASCII
    needs SMTPUTF8."""
    local, at, domain = address.rpartition("@")
    if not at or domain.isascii():
        return address
    try:
        checked = validate_email(address, check_deliverability=False)
    except EmailNotValidError:
        return address
    return f"{local}@{checked.ascii_domain}"


def _end(conn: smtplib.SMTP, code: int) -> None:
    """After a refusal: the server is closing (421), or the transaction is reset."""
    if code == 421:
        conn.close()
        return
    with contextlib.suppress(smtplib.SMTPServerDisconnected):
        conn.rset()


def _drop(conn: smtplib.SMTP | None) -> None:
    if conn is not None:
        conn.close()


def _text(raw: bytes | str) -> str:
    return raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw


def _refused(r: Recipient, code: int, why: bytes | str) -> Result:
    error = f"{code} {_text(why)}"[:1000]
    return Result(r.delivery_id, False, error=error, retry=400 <= code < 500)
