"""SendGrid v3 ``POST /v3/mail/send``: up to 1,000 personalizations a request.

The message is sent once per request; each recipient is a personalization with its own
substitutions (our per-recipient markers), its own unsubscribe headers and the delivery and
mailing ids as custom args (numbers only: custom args are kept long-term, so no address or
partner name goes there; the published schema types the top-level ``custom_args`` as a string,
so they sit on each personalization). A marker appears in the HTML part under its ``_H`` key, so its
value is HTML-escaped there and plain in the text part.

SendGrid checks every address before it takes a request: one it deems invalid refuses the
whole request (400), each error naming its recipient's field (``personalizations.N.to.0.email``).
Those recipients are refused for good, with SendGrid's words; the others, not sent, go at once
in one more request without them: a bad address costs its batch a request, not the mailing.

A single message is one personalization whose custom args hold its metadata pair (a number,
never a delivery's key), with its images as ``attachments`` of disposition ``inline``, each
with the ``content_id`` its HTML refers to.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Sequence
from typing import Any

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
from jvmail.providers.http import TIMEOUT, Refused, post

__all__ = ["SendGridProvider"]

API = "https://api.sendgrid.com"
_RECIPIENT_FIELD = re.compile(r"personalizations\.(\d+)\.to\.\d+\.email")


def _key(name: str) -> str:
    return f"%%JV_{name}%%"


_NAMES = MarkerNames(_key)


class SendGridProvider(Provider):
    name = "sendgrid"
    capabilities = Capabilities(max_batch=1000, substitution=True, metadata=True, single=True)

    def __init__(
        self,
        api_key: str,
        *,
        from_addr: str,
        from_name: str,
        api: str = API,
        timeout: tuple[float, float] = TIMEOUT,
    ) -> None:
        self.api_key, self.from_addr, self.from_name, self.api = api_key, from_addr, from_name, api
        self.timeout = timeout
        self.http = requests.Session()

    def body(self, batch: OutboundBatch, recipients: Sequence[Recipient]) -> dict[str, Any]:
        forms, escaped = batch_forms([r.values for r in recipients], _NAMES)
        subject, text, html = for_provider(batch.skeleton.rendered, _key, escaped)
        personalizations = []
        for r, subs in zip(recipients, forms, strict=True):
            personalizations.append(
                {
                    "to": [{"email": r.email}],
                    "substitutions": subs,
                    "custom_args": {
                        "jv_delivery": str(r.delivery_id),
                        "jv_mailing": str(batch.mailing_id),
                    },
                    "headers": {
                        "List-Unsubscribe": (
                            f"<{r.values['UNSUBSCRIBE']}>, <{batch.unsubscribe_mailto}>"
                        ),
                        "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
                    },
                }
            )
        return {
            "personalizations": personalizations,
            "from": {"email": self.from_addr, "name": self.from_name},
            "subject": subject,
            "content": [
                {"type": "text/plain", "value": text},
                {"type": "text/html", "value": html},
            ],
        }

    def single_body(self, message: SingleMessage) -> dict[str, Any]:
        name, value = message.metadata
        body: dict[str, Any] = {
            "personalizations": [{"to": [{"email": message.to}], "custom_args": {name: value}}],
            "from": {"email": self.from_addr, "name": self.from_name},
            "subject": message.subject,
            "content": [
                {"type": "text/plain", "value": message.text},
                {"type": "text/html", "value": message.html},
            ],
        }
        if message.images:  # none at all rather than an empty list
            body["attachments"] = [
                {
                    "content": base64.b64encode(png).decode("ascii"),
                    "type": "image/png",
                    "filename": message.filename(cid),
                    "disposition": "inline",
                    "content_id": cid,
                }
                for cid, png in message.images.items()
            ]
        return body

    def _send(self, batch: OutboundBatch, recipients: Sequence[Recipient]) -> list[Result]:
        try:
            message_id = self._post(self.body(batch, recipients))
        except Refused as exc:
            bad = _refused_addresses(exc, len(recipients))
            if not bad:
                raise
            refused = [
                Result(r.delivery_id, False, error=f"SendGrid: {bad[n]}")
                for n, r in enumerate(recipients)
                if n in bad
            ]
            rest = [r for n, r in enumerate(recipients) if n not in bad]
            try:
                return refused + (self._send(batch, rest) if rest else [])
            except ProviderError as again:  # the refused stay refused, whatever became of the rest
                again.partial = (*refused, *again.partial)
                raise
        return [Result(r.delivery_id, True, message_id) for r in recipients]

    def _send_message(self, message: SingleMessage) -> str:
        return self._post(self.single_body(message)) or message.message_id

    def _post(self, body: dict[str, Any]) -> str | None:
        answer = post(
            self.http,
            "SendGrid",
            f"{self.api}/v3/mail/send",
            json=body,
            headers={"Authorization": f"Bearer {self.api_key}"},
            timeout=self.timeout,
        )
        return answer.headers.get("X-Message-Id")


def _refused_addresses(refused: Refused, count: int) -> dict[int, str]:
    """Personalization index -> SendGrid's reason, when its 400 names only recipients'
    addresses (of ``count`` personalizations); empty when anything else is wrong with the
    request (then it fails as a whole)."""
    if refused.status != 400:
        return {}
    try:
        errors = json.loads(refused.body)["errors"]
        found = {}
        for error in errors:
            match = _RECIPIENT_FIELD.fullmatch(str(error.get("field")))
            if match is None or int(match[1]) >= count:
                return {}
            found[int(match[1])] = str(error.get("message") or "invalid address")
    except (ValueError, KeyError, TypeError, AttributeError):
        return {}
    return found
