"""The contract every provider meets, and the send sequence they share.

A provider declares what it can do (:class:`Capabilities`): how many recipients one request may
carry, whether it fills per-recipient parts itself, whether it carries our delivery id as
metadata. :meth:`Provider.send` is the template method: it cuts the batch to the provider's
size and hands each piece to the module's :meth:`Provider._send`, which makes exactly one
request per piece and reports one :class:`Result` per recipient. A request that fails as a whole
raises :class:`ProviderError`, saying whether it is worth retrying (429, 5xx, connection) and
whether the account's credentials were refused.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import ClassVar

from jvmail.dispatch.mime import Skeleton
from jvmail.errors import JvmailError

__all__ = [
    "Capabilities",
    "OutboundBatch",
    "Provider",
    "ProviderError",
    "Recipient",
    "Result",
    "Sent",
]


@dataclass(frozen=True)
class Capabilities:
    max_batch: int  # recipients one request may carry
    substitution: bool  # the provider fills each recipient's parts from one body
    metadata: bool  # the delivery id travels with the message and comes back in webhooks


@dataclass(frozen=True)
class Recipient:
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
class Result:
    delivery_id: int
    accepted: bool
    message_id: str | None = None
    error: str | None = None  # why this recipient was refused
    retry: bool = False  # refused for now (e.g. greylisting): send again later


class ProviderError(JvmailError):
    """A request failed as a whole. ``transient``: retry later (after ``retry_after`` seconds
    when the provider said so); ``auth``: the account's credentials were refused; ``maybe_sent``:
    the request may have reached the provider (a timeout after sending), so its recipients are
    in doubt and must be reconciled, never sent again blindly."""

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
        # the failure, and how many after those may have left (one message in flight).
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
                rest = [r.delivery_id for r in people[start + len(exc.partial) :]]
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
