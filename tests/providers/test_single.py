"""One whole message with inline images (a statement), sent by every provider in one request:
against the local fakes that validate bodies with the providers' specs, a real SMTP server and
an outbox folder. One contract, a subclass per provider: what arrives is the message as sent
(both parts, the images under the Content-IDs its HTML names, its own metadata key and never a
delivery's), and the answers are classified as for batches: for now (with Retry-After), the
account's credentials refused, refused for good, and in doubt when no answer came after sending.
"""

from __future__ import annotations

import dataclasses
import email
import email.policy
import ssl
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, ClassVar

import pytest

from jvmail.providers import smtp
from jvmail.providers.base import (
    Capabilities,
    OutboundBatch,
    Provider,
    ProviderError,
    Recipient,
    Result,
    SingleMessage,
)
from jvmail.providers.mailgun import MailgunProvider
from jvmail.providers.outbox import OutboxProvider
from jvmail.providers.postmark import PostmarkProvider
from jvmail.providers.sendgrid import SendGridProvider
from jvmail.providers.ses import SesProvider
from jvmail.providers.smtp import SmtpProvider
from tests.providers.fakes import (
    Fake,
    Scripted,
    Single,
    from_mime,
    mailgun_handler,
    postmark_handler,
    sendgrid_handler,
    serve,
    ses_handler,
)
from tests.providers.smtpd import Handler, smtp_server

IMAGES = {
    "history@jvmail": b"\x89PNG\r\n\x1a\nhistory\x00\xff",
    "clicks@jvmail": b"\x89PNG\r\n\x1a\nclicks\x00\xfe",
}
MESSAGE = SingleMessage(
    to="team@acme.example",
    subject="The alliance owes you 12 clicks \u00b7 Caf\u00e9 Hub statement",
    text="Hello Acme,\nyou gave 12 clicks this week.\n",
    html=(
        "<p>Hello Acme, you gave <b>12</b> clicks \u2014 merci.</p>"
        '<img src="cid:history@jvmail" alt="history"><img src="cid:clicks@jvmail" alt="clicks">'
    ),
    images=IMAGES,
    message_id="<statement.7@jv.example>",
    metadata=("jv_statement", "7"),
    name="statements/2026-W48/acme",
)
TIMEOUT = (1.0, 0.3)  # the fakes' hang scripts answer after a second


def _to(address: str) -> SingleMessage:
    return dataclasses.replace(MESSAGE, to=address)


class Contract:
    """What every provider does with one message; subclasses give the fake and its scripts."""

    retry_after: ClassVar[float | None] = 7.0  # what the transient script's answer asks for

    def provider(self, fake: Any, *, good_credentials: bool = True) -> Provider:
        raise NotImplementedError

    def received(self, fake: Any) -> list[Single]:
        raise NotImplementedError

    def refused_for_now(self, fake: Any) -> SingleMessage:
        raise NotImplementedError

    def refused_for_good(self, fake: Any) -> SingleMessage:
        raise NotImplementedError

    def no_answer(self, fake: Any) -> SingleMessage:
        raise NotImplementedError

    def test_one_request_carries_the_whole_message(self, fake: Any) -> None:
        provider = self.provider(fake)
        message_id = provider.send_message(MESSAGE)
        provider.close()
        (got,) = self.received(fake)
        assert got.to == MESSAGE.to
        assert got.subject == MESSAGE.subject
        assert got.text.rstrip("\n") == MESSAGE.text.rstrip("\n")
        assert got.html.rstrip("\n") == MESSAGE.html
        assert got.images == IMAGES
        assert got.metadata == {"jv_statement": "7"}  # never jv_delivery: no delivery's events
        assert "Caf\u00e9 Hub" in got.sender
        assert "statements@jv.example" in got.sender
        assert message_id

    def test_a_passing_refusal_is_tried_later(self, fake: Any) -> None:
        error = self._refused(fake, self.refused_for_now(fake))
        assert (error.transient, error.auth, error.maybe_sent) == (True, False, False)
        assert error.retry_after == self.retry_after

    def test_refused_credentials_say_so(self, fake: Any) -> None:
        provider = self.provider(fake, good_credentials=False)
        with pytest.raises(ProviderError) as caught:
            provider.send_message(MESSAGE)
        provider.close()
        assert caught.value.auth
        assert not caught.value.maybe_sent
        assert self.received(fake) == []

    def test_a_refusal_for_good_is_not_retried(self, fake: Any) -> None:
        error = self._refused(fake, self.refused_for_good(fake))
        assert (error.transient, error.auth, error.maybe_sent) == (False, False, False)

    def test_no_answer_after_sending_leaves_it_in_doubt(self, fake: Any) -> None:
        error = self._refused(fake, self.no_answer(fake))
        assert error.maybe_sent

    def _refused(self, fake: Any, message: SingleMessage) -> ProviderError:
        provider = self.provider(fake)
        try:
            with pytest.raises(ProviderError) as caught:
                provider.send_message(message)
        finally:
            provider.close()
        return caught.value


class HttpContract(Contract):
    """The four HTTP APIs: scripted answers for the failures."""

    def received(self, fake: Fake) -> list[Single]:
        return fake.singles

    def refused_for_now(self, fake: Fake) -> SingleMessage:
        fake.script.append(Scripted(429, {"Retry-After": "7"}, {"message": "slow down"}))
        return MESSAGE

    def no_answer(self, fake: Fake) -> SingleMessage:
        fake.script.append(Scripted(200, hang=1.0))
        return MESSAGE


class TestSendGrid(HttpContract):
    @pytest.fixture
    def fake(self) -> Iterator[Fake]:
        state = Fake()
        with serve(sendgrid_handler(state, "SG.key"), state):
            yield state

    def provider(self, fake: Fake, *, good_credentials: bool = True) -> Provider:
        key = "SG.key" if good_credentials else "SG.wrong"
        return SendGridProvider(
            key,
            from_addr="statements@jv.example",
            from_name="Caf\u00e9 Hub",
            api=fake.url,
            timeout=TIMEOUT,
        )

    def refused_for_good(self, fake: Fake) -> SingleMessage:
        said = "The from address does not match a verified Sender Identity."
        fake.script.append(Scripted(400, body={"errors": [{"message": said}]}))
        return MESSAGE

    def test_images_are_inline_attachments_named_by_content_id(self, fake: Fake) -> None:
        self.provider(fake).send_message(MESSAGE)
        (body,) = fake.bodies
        assert [
            (a["content_id"], a["disposition"], a["filename"]) for a in body["attachments"]
        ] == [
            ("history@jvmail", "inline", "history.png"),
            ("clicks@jvmail", "inline", "clicks.png"),
        ]
        assert fake.requests == 1
        assert fake.accepted == []  # no subscriber's delivery among them


class TestMailgun(HttpContract):
    @pytest.fixture
    def fake(self) -> Iterator[Fake]:
        state = Fake()
        with serve(mailgun_handler(state, "key-1", "mg.jv.example"), state):
            yield state

    def provider(self, fake: Fake, *, good_credentials: bool = True) -> Provider:
        key = "key-1" if good_credentials else "key-wrong"
        return MailgunProvider(
            key,
            "mg.jv.example",
            from_addr="statements@jv.example",
            from_name="Caf\u00e9 Hub",
            api=fake.url,
            timeout=TIMEOUT,
        )

    def refused_for_good(self, fake: Fake) -> SingleMessage:
        fake.script.append(Scripted(400, body={"message": "to parameter is not a valid address"}))
        return MESSAGE


class TestPostmark(HttpContract):
    @pytest.fixture
    def fake(self) -> Iterator[Fake]:
        state = Fake()
        with serve(postmark_handler(state, "pm-token"), state):
            yield state

    def provider(self, fake: Fake, *, good_credentials: bool = True) -> Provider:
        token = "pm-token" if good_credentials else "wrong"
        return PostmarkProvider(
            token,
            from_addr="statements@jv.example",
            from_name="Caf\u00e9 Hub",
            stream="outbound",
            api=fake.url,
            timeout=TIMEOUT,
        )

    def refused_for_good(self, fake: Fake) -> SingleMessage:
        return _to("inactive@acme.example")  # Postmark: 422, ErrorCode 406

    def test_an_inactive_recipient_is_refused_in_postmarks_words(self, fake: Fake) -> None:
        with pytest.raises(ProviderError, match=r"406.*marked as inactive"):
            self.provider(fake).send_message(_to("inactive@acme.example"))


class TestSes(Contract):
    retry_after = None  # SES says no Retry-After: its throttling is retried with backoff

    @pytest.fixture
    def fake(self) -> Iterator[Fake]:
        state = Fake()
        with serve(ses_handler(state, "AKIAKEY"), state):
            yield state

    def provider(self, fake: Fake, *, good_credentials: bool = True) -> Provider:
        return SesProvider(
            "eu-west-1",
            from_addr="statements@jv.example",
            from_name="Caf\u00e9 Hub",
            access_key_id="AKIAKEY" if good_credentials else "AKIAWRONG",
            secret_access_key="secret",
            endpoint_url=fake.url,
            timeout=TIMEOUT,
        )

    def received(self, fake: Fake) -> list[Single]:
        return fake.singles

    def refused_for_now(self, fake: Fake) -> SingleMessage:
        throttled = {"x-amzn-ErrorType": "TooManyRequestsException"}
        fake.script.append(Scripted(429, throttled, {"message": "Too many requests"}))
        return MESSAGE

    def refused_for_good(self, fake: Fake) -> SingleMessage:
        return _to("rejected@acme.example")  # MessageRejected

    def no_answer(self, fake: Fake) -> SingleMessage:
        fake.script.append(Scripted(200, hang=1.0))
        return MESSAGE


class TestSmtp(Contract):
    retry_after = None

    @pytest.fixture
    def fake(self, tmp_path: Path) -> Iterator[tuple[Handler, int, ssl.SSLContext]]:
        with smtp_server(tmp_path) as running:
            yield running

    def provider(
        self, fake: tuple[Handler, int, ssl.SSLContext], *, good_credentials: bool = True
    ) -> Provider:
        _, port, client = fake
        return SmtpProvider(
            "localhost",
            port,
            security="starttls",
            from_addr="statements@jv.example",
            from_name="Caf\u00e9 Hub",
            username="user",
            password="s3cret" if good_credentials else "wrong",
            tls=client,
            timeout=5,
        )

    def received(self, fake: tuple[Handler, int, ssl.SSLContext]) -> list[Single]:
        return [from_mime(raw, {"jv_statement": "7"}) for _, raw in fake[0].received]

    def refused_for_now(self, fake: tuple[Handler, int, ssl.SSLContext]) -> SingleMessage:
        return _to("grey@acme.example")  # 451 greylisted

    def refused_for_good(self, fake: tuple[Handler, int, ssl.SSLContext]) -> SingleMessage:
        return _to("gone@acme.example")  # 550

    def no_answer(self, fake: tuple[Handler, int, ssl.SSLContext]) -> SingleMessage:
        fake[0].hang_up_on = MESSAGE.to
        return MESSAGE

    def test_a_connection_closed_while_idle_is_checked_and_opened_again(
        self, fake: tuple[Handler, int, ssl.SSLContext], monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setattr(smtp, "IDLE_CHECK", 0.0)  # every kept connection has sat unused
        provider = self.provider(fake)
        provider.send_message(_to("a@acme.example"))
        fake[0].hang_up_all()  # the server closes it, as one does an idle connection
        assert provider.send_message(_to("b@acme.example")) == MESSAGE.message_id
        provider.close()
        assert [to for to, _ in fake[0].received] == ["a@acme.example", "b@acme.example"]

    def test_the_envelope_and_the_message_id_are_ours(
        self, fake: tuple[Handler, int, ssl.SSLContext]
    ) -> None:
        provider = self.provider(fake)
        assert provider.send_message(MESSAGE) == "<statement.7@jv.example>"
        provider.close()
        ((to, raw),) = fake[0].received
        assert to == MESSAGE.to
        parsed = email.message_from_bytes(raw, policy=email.policy.default)
        assert parsed["Message-ID"] == "<statement.7@jv.example>"


def test_the_outbox_files_the_message_under_its_name(tmp_path: Path) -> None:
    provider = OutboxProvider(
        tmp_path, from_addr="statements@jv.example", from_name="Caf\u00e9 Hub"
    )
    assert provider.send_message(MESSAGE) == "<statement.7@jv.example>"
    (written,) = (tmp_path / "statements" / "2026-W48").iterdir()
    assert written.name == "acme.eml"
    got = from_mime(written.read_bytes(), {})
    assert (got.to, got.subject, got.images) == (MESSAGE.to, MESSAGE.subject, IMAGES)
    assert not (tmp_path / "journal.log").exists()  # the journal is the mailings' record
    with pytest.raises(ValueError, match="plain relative name"):
        provider.send_message(dataclasses.replace(MESSAGE, name="../outside"))


def test_a_message_never_takes_the_delivery_key() -> None:
    with pytest.raises(ValueError, match="jv_delivery names a delivery"):
        dataclasses.replace(MESSAGE, metadata=("jv_delivery", "7"))


class BatchesOnly(Provider):
    name = "batches-only"
    capabilities = Capabilities(max_batch=10, substitution=False, metadata=True)

    def _send(self, batch: OutboundBatch, recipients: Sequence[Recipient]) -> list[Result]:
        return []


def test_a_provider_that_cannot_send_one_message_says_so() -> None:
    with pytest.raises(ProviderError, match="batches-only cannot send a single message") as caught:
        BatchesOnly().send_message(MESSAGE)
    assert not caught.value.transient
