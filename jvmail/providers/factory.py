"""Which provider sends a mailing: the list owner's own account, built from its `[provider]`;
and the hub's own account (`[hub.provider]`), which sends the statements.

Secrets are never in config: the config names environment variables, read here when an account
is built (once per sender and worker thread, not per message). A partner's variable that is not
set is looked up in the encrypted secret store under the same name (:mod:`jvmail.secrets`): the
environment first, so deployments that export their secrets never read the store. A secret in
neither is a :class:`ProviderError` that fails the mailing with a message naming the variable
and the table that names it, before anything is sent.

``outbox`` overrides every account (the embedded default, and a dry run of a real hub): all
messages become .eml files in that folder.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from jvmail.errors import JvmailError
from jvmail.providers.base import Provider, ProviderError
from jvmail.providers.mailgun import API as MAILGUN_API
from jvmail.providers.mailgun import MailgunProvider
from jvmail.providers.outbox import OutboxProvider
from jvmail.providers.postmark import PostmarkProvider
from jvmail.providers.sendgrid import SendGridProvider
from jvmail.providers.smtp import SmtpProvider
from jvmail.secrets import Lookup, database_lookup

__all__ = ["HUB", "build_provider"]

HUB = "the hub"  # the owner of the hub's own account (never a partner id: ids have no spaces)


Secret = Callable[[Mapping[str, Any], str], str]  # (account, key of its table) -> value, or ""


def _secrets(partner: str, env: Mapping[str, str], store: Lookup | None) -> Secret:
    """How ``partner``'s secrets are read: its environment variable, else (partners only) the
    store."""
    owner = partner if partner == HUB else f"partner {partner}"

    def secret(account: Mapping[str, Any], key: str) -> str:
        name = str(account.get(key) or "")
        if not name:
            return ""
        value = env.get(name, "")
        if value:
            return value
        if partner == HUB:
            raise _missing(owner, name, key, stored=False)
        try:
            value = (store or database_lookup(env))(partner, name) or ""
        except JvmailError as exc:
            raise ProviderError(f"{owner}: {exc.message}", exc.fix, transient=False) from exc
        if not value:
            raise _missing(owner, name, key, stored=True)
        return value

    return secret


def _missing(owner: str, name: str, key: str, *, stored: bool) -> ProviderError:
    where = "is neither set nor in the secret store" if stored else "is not set"
    export = f"export {name}=... in the workers' environment"
    partner = owner.removeprefix("partner ")
    fix = (
        f"{export}, or store it: `jvmail secrets set {partner} {name}` (the value on stdin)"
        if stored
        else f"{export}, or send to an outbox (JVMAIL_OUTBOX / jvmail run --outbox DIR)"
    )
    return ProviderError(
        f"{owner}: environment variable {name} ({key} of {_table(owner)}) {where}",
        fix,
        transient=False,
    )


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
    store: Lookup | None = None,
) -> Provider:
    """The provider for ``partner``'s account (its `[provider]` table as synced); ``name`` is
    the partner's display name, the From name unless the account sets ``from_name``. For the
    hub's own account ``partner`` is :data:`HUB`, and ``contact_email`` its sending address.
    ``store`` finds a partner's secrets whose variables are not set in ``env`` (default: the
    store in the database ``env`` names, see :func:`jvmail.secrets.database_lookup`).

    Raises:
        ProviderError: a secret is neither in ``env`` nor (for a partner) in the store, or the
            store cannot be read, or the kind is unknown.
    """
    owner = partner if partner == HUB else f"partner {partner}"
    secret = _secrets(partner, env, store)
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
            username=secret(account, "username_env") or None,
            password=secret(account, "password_env") or None,
        )
    if kind == "sendgrid":
        return SendGridProvider(
            secret(account, "api_key_env"),
            from_addr=from_addr,
            from_name=from_name,
        )
    if kind == "mailgun":
        return MailgunProvider(
            secret(account, "api_key_env"),
            str(account["domain"]),
            from_addr=from_addr,
            from_name=from_name,
            api=MAILGUN_API[str(account.get("region", "us"))],
        )
    if kind == "postmark":
        return PostmarkProvider(
            secret(account, "server_token_env"),
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
            access_key_id=secret(account, "access_key_id_env") or None,
            secret_access_key=secret(account, "secret_access_key_env") or None,
            configuration_set=account.get("configuration_set"),
        )
    raise ProviderError(
        f"{owner}: sending through {kind} is not available in this version",
        "use one of outbox, smtp, sendgrid, mailgun, postmark or ses, then `jvmail sync`",
        transient=False,
    )
