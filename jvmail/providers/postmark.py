"""Postmark ``POST /email/batch``: up to 500 whole messages a request, one answer each.

Postmark has no server-side substitution for a plain batch, so each recipient's subject and
bodies are filled here (one regex pass per part). Each message carries its unsubscribe headers,
goes to the account's broadcast message stream, and carries the delivery id as metadata. The
answer lists one result per message in order: ErrorCode 0 is accepted; any other code refuses
that recipient (e.g. 406, an inactive address) and is recorded with Postmark's own message.

A single message goes to ``POST /email``: its images are ``Attachments`` with a ``ContentID`` of
``cid:<Content-ID>`` (what its HTML refers to), its metadata pair in ``Metadata``. Postmark
answers a refused message with 422 and its ErrorCode, which is a refusal for good.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from email.utils import formataddr
from typing import Any

import requests

from jvmail.dispatch.render import fill
from jvmail.providers.base import (
    Capabilities,
    OutboundBatch,
    Provider,
    ProviderError,
    Recipient,
    Result,
    SingleMessage,
)
from jvmail.providers.http import TIMEOUT, post

__all__ = ["PostmarkProvider"]

API = "https://api.postmarkapp.com"


class PostmarkProvider(Provider):
    name = "postmark"
    capabilities = Capabilities(max_batch=500, substitution=False, metadata=True, single=True)

    def __init__(
        self,
        token: str,
        *,
        from_addr: str,
        from_name: str,
        stream: str = "broadcast",
        api: str = API,
        timeout: tuple[float, float] = TIMEOUT,
    ) -> None:
        self.token, self.stream, self.api, self.timeout = token, stream, api, timeout
        self.sender = formataddr((from_name, from_addr))
        self.http = requests.Session()

    def body(self, batch: OutboundBatch, recipients: Sequence[Recipient]) -> list[dict[str, Any]]:
        rendered = batch.skeleton.rendered
        return [
            {
                "From": self.sender,
                "To": r.email,
                "Subject": fill(rendered.subject, r.values, html=False),
                "HtmlBody": fill(rendered.html, r.values, html=True),
                "TextBody": fill(rendered.text, r.values, html=False),
                "Headers": [
                    {
                        "Name": "List-Unsubscribe",
                        "Value": f"<{r.values['UNSUBSCRIBE']}>, <{batch.unsubscribe_mailto}>",
                    },
                    {"Name": "List-Unsubscribe-Post", "Value": "List-Unsubscribe=One-Click"},
                ],
                "TrackOpens": False,
                "TrackLinks": "None",
                "MessageStream": self.stream,
                "Metadata": {
                    "jv_delivery": str(r.delivery_id),
                    "jv_mailing": str(batch.mailing_id),
                },
            }
            for r in recipients
        ]

    def single_body(self, message: SingleMessage) -> dict[str, Any]:
        name, value = message.metadata
        return {
            "From": self.sender,
            "To": message.to,
            "Subject": message.subject,
            "HtmlBody": message.html,
            "TextBody": message.text,
            "Attachments": [
                {
                    "Name": message.filename(cid),
                    "Content": base64.b64encode(png).decode("ascii"),
                    "ContentType": "image/png",
                    "ContentID": f"cid:{cid}",
                }
                for cid, png in message.images.items()
            ],
            "TrackOpens": False,
            "TrackLinks": "None",
            "MessageStream": self.stream,
            "Metadata": {name: value},
        }

    def _send_message(self, message: SingleMessage) -> str:
        answer = self._post("/email", self.single_body(message))
        return str(answer.get("MessageID") or message.message_id)

    def _post(self, path: str, body: object) -> Any:
        answer = post(
            self.http,
            "Postmark",
            f"{self.api}{path}",
            json=body,
            headers={"X-Postmark-Server-Token": self.token, "Accept": "application/json"},
            timeout=self.timeout,
        )
        try:
            return answer.json()
        except ValueError:
            raise _in_doubt(f"Postmark answered {answer.status_code} with no JSON") from None

    def _send(self, batch: OutboundBatch, recipients: Sequence[Recipient]) -> list[Result]:
        items = self._post("/email/batch", self.body(batch, recipients))
        if not isinstance(items, list) or len(items) != len(recipients):
            got = len(items) if isinstance(items, list) else "no list of"
            raise _in_doubt(f"Postmark answered {got} results for {len(recipients)} messages")
        if not all(isinstance(i, dict) and isinstance(i.get("ErrorCode"), int) for i in items):
            raise _in_doubt("Postmark answered results without their ErrorCode")
        return [
            Result(r.delivery_id, True, str(item.get("MessageID")))
            if item.get("ErrorCode") == 0
            else Result(
                r.delivery_id, False, error=f"{item.get('ErrorCode')} {item.get('Message')}"
            )
            for r, item in zip(recipients, items, strict=True)
        ]


def _in_doubt(what: str) -> ProviderError:
    """Postmark took the request (2xx) but its answer does not say what became of each message."""
    return ProviderError(
        what,
        "the messages may have gone: they wait for Postmark's events, not resent",
        transient=True,
        maybe_sent=True,
    )
