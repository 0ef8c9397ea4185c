"""Which provider sends a mailing: the list owner's own account, built from its `[provider]`;
and the hub's own account (`[hub.provider]`), which sends the statements.

Secrets are never in config or the database: the config names environment variables, read
here when a mailing is about to be sent. A missing one is a :class:`ProviderError` that fails
the mailing with a message naming the variable and the table that names it, before anything is
sent.

``outbox`` overrides every account (the embedded default, and a dry run of a real hub): all
messages become .eml files in that folder.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from jvmail.providers.base import Provider, ProviderError
from jvmail.providers.mailgun import API as MAILGUN_API
from jvmail.providers.mailgun import MailgunProvider
from jvmail.providers.outbox import OutboxProvider
from jvmail.providers.postmark import PostmarkProvider
from jvmail.providers.sendgrid import SendGridProvider
from jvmail.providers.smtp import SmtpProvider

__all__ = ["HUB", "build_provider"]

HUB = "the hub"  # the owner of the hub's own account (never a partner id: ids have no spaces)


def _secret(env: Mapping[str, str], account: Mapping[str, Any], key: str, owner: str) -> str:
    name = account.get(key)
    if not name:
        return ""
    value = env.get(str(name), "")
    if not value:
        raise ProviderError(
            f"{owner}: environment variable {name} ({key} of {_table(owner)}) is not set",
            f"export {name}=... in the workers' environment, or send to an outbox "
            "(JVMAIL_OUTBOX / jvmail run --outbox DIR)",
            transient=False,
        )
    return value


def _table(owner: str) -> str:
    # No square brackets for the hub's: the message is printed with console markup.
    return "the hub.provider table in jvmail.toml" if owner == HUB else "its [provider]"


def build_provider(
    partner: str,
    contact_email: str,
    account: Mapping[str, Any],
    *,
    name: str = "",
    outbox: Path | None = None,
    env: Mapping[str, str] = os.environ,
) -> Provider:
    """The provider for ``partner``'s account (its `[provider]` table as synced); ``name`` is
    the partner's display name, the From name unless the account sets ``from_name``. For the
    hub's own account ``partner`` is :data:`HUB`, and ``contact_email`` its sending address.

    Raises:
        ProviderError: a secret's environment variable is not set, or the kind is unknown.
    """
    owner = partner if partner == HUB else f"partner {partner}"
    from_addr = str(account.get("from_email") or contact_email)
    from_name = str(account.get("from_name") or name or partner)
    if outbox is not None:
        return OutboxProvider(outbox, from_addr=from_addr, from_name=from_name)
    kind = account.get("kind")
    if kind == "outbox":
        folder = Path(str(account.get("directory", "outbox")))
        return OutboxProvider(folder, from_addr=from_addr, from_name=from_name)
    if kind == "smtp":
        return SmtpProvider(
            str(account["host"]),
            int(account.get("port", 587)),
            security=str(account.get("security", "starttls")),
            from_addr=from_addr,
            from_name=from_name,
            username=_secret(env, account, "username_env", owner) or None,
            password=_secret(env, account, "password_env", owner) or None,
        )
    if kind == "sendgrid":
        return SendGridProvider(
            _secret(env, account, "api_key_env", owner),
            from_addr=from_addr,
            from_name=from_name,
        )
    if kind == "mailgun":
        return MailgunProvider(
            _secret(env, account, "api_key_env", owner),
            str(account["domain"]),
            from_addr=from_addr,
            from_name=from_name,
            api=MAILGUN_API[str(account.get("region", "us"))],
        )
    if kind == "postmark":
        return PostmarkProvider(
            _secret(env, account, "server_token_env", owner),
            from_addr=from_addr,
            from_name=from_name,
            stream=str(account.get("message_stream", "broadcast")),
        )
    if kind == "ses":
        from jvmail.providers.ses import SesProvider  # boto3: the optional `ses` extra

        return SesProvider(
            str(account["region"]),
            from_addr=from_addr,
            from_name=from_name,
            access_key_id=_secret(env, account, "access_key_id_env", owner) or None,
            secret_access_key=_secret(env, account, "secret_access_key_env", owner) or None,
            configuration_set=account.get("configuration_set"),
        )
    raise ProviderError(
        f"{owner}: sending through {kind} is not available in this version",
        "use one of outbox, smtp, sendgrid, mailgun, postmark or ses, then `jvmail sync`",
        transient=False,
    )
