"""Mailgun ``POST /v3/{domain}/messages``: one message to up to 1,000 recipients a request.

Batch sending: each address is a ``to`` field, and ``recipient-variables`` gives each its own
values, which Mailgun substitutes as ``%recipient.NAME%`` (our markers are rewritten to that
form; the HTML part uses an HTML-escaped copy of each value). With recipient variables every
recipient gets a message of its own, never seeing the others. The delivery id travels as the
``v:jv_delivery`` user variable, filled per recipient, so webhooks find their delivery.

Mailgun refuses a whole request (400) for an address it deems invalid, without saying which:
the request is halved until each such address stands alone, refused for good; the others go.

A single message goes whole, as MIME, to ``POST /v3/{domain}/messages.mime`` (its inline images
are parts of it), with its metadata pair as a user variable of its own name.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from email.utils import formataddr

import orjson
import requests

from jvmail.dispatch.render import MarkerNames, batch_forms, for_provider
from jvmail.providers.base import (
    Capabilities,
    OutboundBatch,
    Provider,
    ProviderError,
    Recipient,
    Result,
    SingleMessage,
)
from jvmail.providers.http import TIMEOUT, FormValue, Refused, post

__all__ = ["MailgunProvider"]

_NAMES = MarkerNames(str.lower)  # the recipient variables are named in lower case

API = {"us": "https://api.mailgun.net", "eu": "https://api.eu.mailgun.net"}


def _var(name: str) -> str:
    return f"%recipient.{name.lower()}%"


class MailgunProvider(Provider):
    name = "mailgun"
    capabilities = Capabilities(max_batch=1000, substitution=True, metadata=True, single=True)

    def __init__(
        self,
        api_key: str,
        domain: str,
        *,
        from_addr: str,
        from_name: str,
        api: str = API["us"],
        timeout: tuple[float, float] = TIMEOUT,
    ) -> None:
        self.api_key, self.domain, self.api, self.timeout = api_key, domain, api, timeout
        self.sender = formataddr((from_name, from_addr))
        self.http = requests.Session()

    def form(self, batch: OutboundBatch, recipients: Sequence[Recipient]) -> list[tuple[str, str]]:
        forms, escaped = batch_forms([r.values for r in recipients], _NAMES)
        subject, text, html = for_provider(batch.skeleton.rendered, _var, escaped)
        per: dict[str, dict[str, str]] = {}
        for r, values in zip(recipients, forms, strict=True):
            per[r.email] = values | {"jv_delivery": str(r.delivery_id)}
        fields = [("from", self.sender)] + [("to", r.email) for r in recipients]
        fields += [
            ("subject", subject),
            ("text", text),
            ("html", html),
            ("recipient-variables", orjson.dumps(per).decode()),
            ("h:List-Unsubscribe", f"<%recipient.unsubscribe%>, <{batch.unsubscribe_mailto}>"),
            ("h:List-Unsubscribe-Post", "List-Unsubscribe=One-Click"),
            ("v:jv_delivery", "%recipient.jv_delivery%"),
            ("v:jv_mailing", str(batch.mailing_id)),
            ("o:tracking", "no"),
        ]
        return fields

    def mime_form(self, message: SingleMessage) -> list[tuple[str, FormValue]]:
        name, value = message.metadata
        return [
            ("to", message.to),
            ("message", ("message.mime", message.mime(self.sender), "application/octet-stream")),
            (f"v:{name}", value),
            ("o:tracking", "no"),
        ]

    def _send(self, batch: OutboundBatch, recipients: Sequence[Recipient]) -> list[Result]:
        try:
            message_id = self._post("messages", self.form(batch, recipients))
        except Refused as exc:
            if exc.status != 400 or not _BAD_RECIPIENT.search(exc.body):
                raise
            return self._without_bad_addresses(batch, recipients, exc)
        except ProviderError as exc:
            if exc.maybe_sent:
                exc.in_doubt = len(recipients)  # this request's, not the ones after it
            raise
        return [Result(r.delivery_id, True, message_id) for r in recipients]

    def _without_bad_addresses(
        self, batch: OutboundBatch, recipients: Sequence[Recipient], exc: Refused
    ) -> list[Result]:
        """Mailgun refused the request for an address it deems invalid, without naming it: the
        request is halved until each refused address stands alone and is refused for good with
        Mailgun's words; the rest go. (A bad address costs its batch a few requests.)"""
        if len(recipients) == 1:
            return [Result(recipients[0].delivery_id, False, error=f"Mailgun: {_said(exc.body)}")]
        half = len(recipients) // 2
        first = self._send(batch, recipients[:half])
        try:
            return first + self._send(batch, recipients[half:])
        except ProviderError as failed:
            failed.partial = (*first, *failed.partial)
            raise

    def _send_message(self, message: SingleMessage) -> str:
        return self._post("messages.mime", self.mime_form(message)) or message.message_id

    def _post(self, endpoint: str, form: Sequence[tuple[str, FormValue]]) -> str | None:
        answer = post(
            self.http,
            "Mailgun",
            f"{self.api}/v3/{self.domain}/{endpoint}",
            form=form,
            auth=("api", self.api_key),
            timeout=self.timeout,
        )
        # A 2xx is Mailgun's word that it queued the message; its id only names it (webhooks
        # find a delivery by its user variable), so an answer without one takes nothing back.
        try:
            said = answer.json()
        except ValueError:
            return None
        return str(said.get("id") or "") or None if isinstance(said, dict) else None


# Mailgun's words for a request refused for one of its recipients (a bad sender, say, is the
# account's problem: halving would only fail every recipient with it).
_BAD_RECIPIENT = re.compile(r"'(to|cc|bcc)' parameter is not a valid address", re.IGNORECASE)


def _said(body: str) -> str:
    """Mailgun's own words in an error answer (its JSON ``message``), else the answer's start."""
    try:
        said = orjson.loads(body)
    except orjson.JSONDecodeError:
        return body[:300].strip()
    return str(said.get("message", "")) if isinstance(said, dict) else body[:300].strip()
