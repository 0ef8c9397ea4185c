"""Amazon SES v2 ``SendBulkEmail``: up to 50 destinations a request, through boto3.

The message goes once per request as inline template content; each destination gets its own
replacement data (our markers become ``{{name}}`` variables; the HTML part uses HTML-escaped
copies, since inline templates are filled by plain substitution), its own unsubscribe headers,
and the delivery id as a message tag, which SES puts on every event it publishes.

Per-destination answers: SUCCESS is accepted; MESSAGE_REJECTED, INVALID_PARAMETER and FAILED
refuse that recipient; throttling and TRANSIENT_FAILURE send it later (SES asks that throttled
mail be deferred, not failed); a used-up 24-hour quota holds the account for an hour (what SES
took stays taken, the rest goes later); a suspended or paused account, an unverified domain or
a missing configuration set or pool pauses the account's mailings.

A single message goes through ``SendEmail`` as raw MIME (``Content.Raw``: its inline images are
parts of it; bulk templates cannot carry attachments), its metadata pair as a message tag. The
same errors apply; ``MessageRejected`` refuses it for good.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from email.utils import formataddr
from typing import Any

import orjson

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

__all__ = ["SesProvider"]

_NAMES = MarkerNames(str.lower)  # the recipient variables are named in lower case

_LATER = {"ACCOUNT_THROTTLED", "TRANSIENT_FAILURE"}
_QUOTA = "ACCOUNT_DAILY_QUOTA_EXCEEDED"
QUOTA_WAIT = 3600.0  # seconds the account is held when SES says its 24-hour quota is used up
# What is wrong with the account or the request as a whole, whichever destination it is told on.
_ACCOUNT = {
    "ACCOUNT_SUSPENDED",
    "ACCOUNT_SENDING_PAUSED",
    "MAIL_FROM_DOMAIN_NOT_VERIFIED",
    "CONFIGURATION_SET_NOT_FOUND",
    "CONFIGURATION_SET_SENDING_PAUSED",
    "INVALID_SENDING_POOL_NAME",
    "TEMPLATE_NOT_FOUND",
}
_TRANSIENT_ERRORS = {
    "TooManyRequestsException",
    "ThrottlingException",
    "LimitExceededException",
    "InternalServiceErrorException",
    "ServiceUnavailable",
}
_ACCOUNT_ERRORS = {
    "AccountSuspendedException",
    "SendingPausedException",
    "MailFromDomainNotVerifiedException",
    "UnrecognizedClientException",
    "InvalidClientTokenId",
    "SignatureDoesNotMatch",
    "AccessDeniedException",
}


def _var(name: str) -> str:
    return "{{" + name.lower() + "}}"


class SesProvider(Provider):
    name = "ses"
    capabilities = Capabilities(max_batch=50, substitution=True, metadata=True, single=True)

    def __init__(
        self,
        region: str,
        *,
        from_addr: str,
        from_name: str,
        access_key_id: str | None = None,
        secret_access_key: str | None = None,
        configuration_set: str | None = None,
        endpoint_url: str | None = None,
        timeout: tuple[float, float] = (5.0, 30.0),
    ) -> None:
        import boto3  # the optional `ses` extra
        from botocore.config import Config

        self.sender = formataddr((from_name, from_addr))
        self.configuration_set = configuration_set
        self.client = boto3.client(
            "sesv2",
            region_name=region,
            aws_access_key_id=access_key_id,
            aws_secret_access_key=secret_access_key,
            endpoint_url=endpoint_url,
            config=Config(
                connect_timeout=timeout[0], read_timeout=timeout[1], retries={"max_attempts": 0}
            ),
        )

    def request(self, batch: OutboundBatch, recipients: Sequence[Recipient]) -> dict[str, Any]:
        forms, escaped = batch_forms([r.values for r in recipients], _NAMES)
        subject, text, html = for_provider(batch.skeleton.rendered, _var, escaped)
        entries = []
        for r, data in zip(recipients, forms, strict=True):
            unsubscribe = f"<{r.values['UNSUBSCRIBE']}>, <{batch.unsubscribe_mailto}>"
            entries.append(
                {
                    "Destination": {"ToAddresses": [r.email]},
                    "ReplacementTags": [{"Name": "jv_delivery", "Value": str(r.delivery_id)}],
                    "ReplacementEmailContent": {
                        "ReplacementTemplate": {
                            "ReplacementTemplateData": orjson.dumps(data).decode()
                        }
                    },
                    "ReplacementHeaders": [
                        {"Name": "List-Unsubscribe", "Value": unsubscribe},
                        {"Name": "List-Unsubscribe-Post", "Value": "List-Unsubscribe=One-Click"},
                    ],
                }
            )
        request: dict[str, Any] = {
            "FromEmailAddress": self.sender,
            "DefaultContent": {
                "Template": {
                    "TemplateContent": {
                        "Subject": subject,
                        "Text": text,
                        "Html": html,
                    },
                    "TemplateData": "{}",
                }
            },
            "DefaultEmailTags": [{"Name": "jv_mailing", "Value": str(batch.mailing_id)}],
            "BulkEmailEntries": entries,
        }
        if self.configuration_set:
            request["ConfigurationSetName"] = self.configuration_set
        return request

    def single_request(self, message: SingleMessage) -> dict[str, Any]:
        name, value = message.metadata
        request: dict[str, Any] = {
            "FromEmailAddress": self.sender,
            "Destination": {"ToAddresses": [message.to]},
            "Content": {"Raw": {"Data": message.mime(self.sender)}},
            "EmailTags": [{"Name": name, "Value": value}],
        }
        if self.configuration_set:
            request["ConfigurationSetName"] = self.configuration_set
        return request

    def _send_message(self, message: SingleMessage) -> str:
        answer = _call(self.client.send_email, self.single_request(message))
        return str(answer.get("MessageId") or message.message_id)

    def _send(self, batch: OutboundBatch, recipients: Sequence[Recipient]) -> list[Result]:
        answer = _call(self.client.send_bulk_email, self.request(batch, recipients))
        results = answer.get("BulkEmailEntryResults")
        if not isinstance(results, list) or len(results) != len(recipients):
            raise ProviderError(
                f"SES answered {len(results) if isinstance(results, list) else 'no'} results "
                f"for {len(recipients)} destinations",
                "the messages may have gone: they wait for SES's events, not resent",
                transient=True,
                maybe_sent=True,
            )
        statuses = {str(e.get("Status")) for e in results}
        taken = [_result(r, e) for r, e in zip(recipients, results, strict=True)]
        # When the account stops the request, the destinations SES answered for themselves
        # (sent, refused for good) stand; the others go later.
        answered = [
            t
            for t, e in zip(taken, results, strict=True)
            if str(e.get("Status")) not in _ACCOUNT | _LATER | {_QUOTA}
        ]
        if statuses & _ACCOUNT:
            raise ProviderError(
                f"SES: the account cannot send ({min(statuses & _ACCOUNT)})",
                "fix the account in the SES console; its mailings are paused",
                transient=False,
                auth=True,
                partial=answered,
            )
        if _QUOTA in statuses:
            raise ProviderError(
                f"SES: the account's 24-hour sending quota is used up ({_QUOTA})",
                "the rest wait an hour, then go; ask AWS for a higher quota if it recurs",
                transient=True,
                retry_after=QUOTA_WAIT,
                partial=answered,
            )
        return taken


def _call(operation: Callable[..., dict[str, Any]], request: dict[str, Any]) -> dict[str, Any]:
    """One SES call; its errors as :class:`ProviderError`."""
    from botocore.exceptions import ClientError, HTTPClientError
    from botocore.exceptions import ConnectionError as NotConnected

    try:
        return operation(**request)
    except ClientError as exc:
        code = str(exc.response.get("Error", {}).get("Code", ""))
        said = str(exc.response.get("Error", {}).get("Message", ""))[:300]
        if code in _ACCOUNT_ERRORS:
            raise ProviderError(
                f"SES: the account cannot send ({code}: {said})",
                "check the account's credentials and status in the SES console; its "
                "mailings are paused",
                transient=False,
                auth=True,
            ) from exc
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 400))
        # A 429 is a refusal for now whatever its error code (a proxy's carries none).
        passing = code in _TRANSIENT_ERRORS or status == 429 or status >= 500
        raise ProviderError(
            f"SES: {code or status}: {said}",
            "a passing refusal; the batch is retried later"
            if passing
            else "the message above says what to change",
            transient=passing,
        ) from exc
    except NotConnected as exc:  # refused, no answer to the connect, the proxy or TLS failing
        raise ProviderError(
            f"SES: cannot connect ({exc})", "retried later", transient=True
        ) from exc
    except HTTPClientError as exc:  # a read timeout, a connection closed after sending
        raise ProviderError(
            f"SES: no answer after sending ({exc.__class__.__name__})",
            "the messages may have gone: they wait for SES's events, not resent",
            transient=True,
            maybe_sent=True,
        ) from exc


def _result(r: Recipient, entry: dict[str, Any]) -> Result:
    status = str(entry.get("Status"))
    if status == "SUCCESS":
        return Result(r.delivery_id, True, str(entry.get("MessageId")))
    error = f"{status}: {entry.get('Error', '')}".strip(": ")
    return Result(r.delivery_id, False, error=error, retry=status in _LATER)
