"""The contract every provider meets, and the send sequence they share.

A provider declares what it can do (:class:`Capabilities`): how many recipients one request may
carry, whether it fills per-recipient parts itself, whether it carries our delivery id as
metadata. :meth:`Provider.send` is the template method: it cuts the batch to the provider's
size and hands each piece to the module's :meth:`Provider._send`, which makes one request per
piece (and one more for the piece's other recipients when the provider refused the request for
some addresses of it, as SendGrid does) and reports one :class:`Result` per recipient. A
request that fails as a whole raises :class:`ProviderError`, saying whether it is worth
retrying (429, 5xx, connection) and whether the account's credentials were refused.

Besides batches of a mailing, a provider that declares ``single`` sends one whole message to one
recipient (:class:`SingleMessage`: a statement, with its charts as inline images) in one request,
through :meth:`Provider.send_message`, with the same error classification. Its metadata pair
(``jv_statement``) is never ``jv_delivery``, so the webhook parsers never take it for a
subscriber's delivery.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import ClassVar, NamedTuple

from jvmail.dispatch.mime import Skeleton, png_name, whole_message
from jvmail.errors import JvmailError

__all__ = [
    "DELIVERY_KEY",
    "Capabilities",
    "OutboundBatch",
    "Provider",
    "ProviderError",
    "Recipient",
    "Result",
    "Sent",
    "SingleMessage",
]

DELIVERY_KEY = "jv_delivery"  # the metadata key of a mailing's messages (webhooks read it)


@dataclass(frozen=True)
class Capabilities:
    max_batch: int  # recipients one request may carry
    substitution: bool  # the provider fills each recipient's parts from one body
    metadata: bool  # the delivery id travels with the message and comes back in webhooks
    single: bool = False  # sends one whole message with inline images (send_message)


class Recipient(NamedTuple):  # a tuple, as Result: a batch makes a thousand of each
    delivery_id: int
    email: str
    values: dict[str, str]  # marker name -> value (see jvmail.dispatch.render.markers)


@dataclass(frozen=True)
class OutboundBatch:
    """Recipients of one mailing, with the message laid out once."""

    mailing_id: int
    skeleton: Skeleton
    unsubscribe_mailto: str
    recipients: tuple[Recipient, ...]


@dataclass(frozen=True)
class SingleMessage:
    """One whole message to one recipient: plain text and HTML, PNG images shown inline in the
    HTML as ``cid:<Content-ID>``, our own Message-ID (``<...@...>``), and one metadata pair
    (``(name, value)``) the provider carries with the message and reports in its events. Its
    name is never ``jv_delivery``: that key means a subscriber's delivery. ``name`` is where an
    outbox files it: a relative path of plain parts (``statements/2026-W48/acme``)."""

    to: str
    subject: str
    text: str
    html: str
    images: Mapping[str, bytes]  # Content-ID (without <>) -> PNG
    message_id: str
    metadata: tuple[str, str]
    name: str

    def __post_init__(self) -> None:
        if self.metadata[0] == DELIVERY_KEY:
            raise ValueError(f"{DELIVERY_KEY} names a delivery; give a message its own key")

    def filename(self, cid: str) -> str:
        """The file name an image travels under: ``history@jvmail`` -> ``history.png``."""
        return png_name(cid)

    def mime(self, sender: str) -> bytes:
        """The message in MIME (CRLF, 7-bit), from ``sender`` (``Name <address>``)."""
        return whole_message(
            sender=sender,
            to=self.to,
            subject=self.subject,
            text=self.text,
            html=self.html,
            images=self.images,
            message_id=self.message_id,
        )


class Result(NamedTuple):
    delivery_id: int
    accepted: bool
    message_id: str | None = None
    error: str | None = None  # why this recipient was refused
    retry: bool = False  # refused for now (e.g. greylisting): send again later


class ProviderError(JvmailError):
    """A request failed as a whole. ``transient``: retry later (after ``retry_after`` seconds
    when the provider said so); ``auth``: the account's credentials were refused (or its API
    answered with a redirect), so its mailings pause; ``maybe_sent``: the request may have
    reached the provider (a timeout after sending), so its recipients are in doubt and must be
    reconciled, never sent again blindly."""

    def __init__(
        self,
        message: str,
        fix: str = "",
        *,
        transient: bool,
        auth: bool = False,
        retry_after: float | None = None,
        maybe_sent: bool = False,
        partial: Sequence[Result] = (),
        in_doubt: int | None = None,
    ) -> None:
        super().__init__(message, fix)
        self.transient = transient
        self.auth = auth
        self.retry_after = retry_after
        self.maybe_sent = maybe_sent
        # A provider that sends recipient by recipient (SMTP) reports what it finished before
        # the failure, and how many after those may have left (one message in flight); one
        # that refused some addresses before the failed request (SendGrid), those.
        self.partial = tuple(partial)
        self.in_doubt = in_doubt


@dataclass
class Sent:
    """What became of a batch: results for the pieces the provider answered; on a failed
    request, the error, the recipients that may have left with it (``doubtful``: reconcile,
    never resend) and those never handed over (``untried``: safe to send later)."""

    results: list[Result] = field(default_factory=list)
    error: ProviderError | None = None
    doubtful: list[int] = field(default_factory=list)
    untried: list[int] = field(default_factory=list)


class Provider(ABC):
    name: ClassVar[str]
    capabilities: ClassVar[Capabilities]

    def send(self, batch: OutboundBatch) -> Sent:
        """Send ``batch`` in pieces of ``max_batch``, one request each, stopping at the first
        request that fails as a whole."""
        size = self.capabilities.max_batch
        people = batch.recipients
        done = Sent()
        for start in range(0, len(people), size):
            piece = people[start : start + size]
            try:
                done.results += self._send(batch, piece)
            except ProviderError as exc:
                done.error = exc
                done.results += exc.partial
                finished = {r.delivery_id for r in exc.partial}
                rest = [r.delivery_id for r in people[start:] if r.delivery_id not in finished]
                if exc.maybe_sent:
                    doubt = len(piece) - len(exc.partial) if exc.in_doubt is None else exc.in_doubt
                    done.doubtful, done.untried = rest[:doubt], rest[doubt:]
                else:
                    done.untried = rest
                break
        return done

    @abstractmethod
    def _send(self, batch: OutboundBatch, recipients: Sequence[Recipient]) -> list[Result]:
        """One request for ``recipients``; one result each."""

    def send_message(self, message: SingleMessage) -> str:
        """Send ``message`` in one request.

        Returns:
            The provider's id for the message (our Message-ID when it gives none).

        Raises:
            ProviderError: the message was not taken: ``transient`` (try again later, after
                ``retry_after``), ``auth`` (the account's credentials were refused), or refused
                for good; ``maybe_sent``: the request may have reached the provider, so the
                message is in doubt and must not be sent again blindly.
        """
        if not self.capabilities.single:
            raise ProviderError(
                f"{self.name} cannot send a single message with inline images",
                "give the hub an account of another kind",
                transient=False,
            )
        return self._send_message(message)

    def _send_message(self, message: SingleMessage) -> str:
        """One request for ``message``; the provider's id for it."""
        raise NotImplementedError  # providers that declare `single` fill this in

    def close(self) -> None:  # noqa: B027 - optional: only some providers keep a connection
        """Let go of any connection kept open between requests."""
