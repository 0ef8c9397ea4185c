"""Which keys verify a webhook for a partner's provider account, and the verification itself.

An account's webhook keys come from the env vars its `[provider]` table names, as its sending
secrets do; several comma-separated values in one variable are all accepted, so a key can be
rotated without losing webhooks signed with the old one:

- sendgrid: ``webhook_public_key_env`` (the Signed Event Webhook's verification key);
- mailgun: ``webhook_signing_key_env`` (the HTTP webhook signing key, not the API key);
- postmark: ``webhook_username`` and ``webhook_password_env`` (basic auth in the webhook URL);
- ses: ``sns_topic_arn`` (the SNS topic the account's events are published to).

A variable that is not set is looked up in the encrypted secret store under the same name
(:mod:`jvmail.secrets`), as the sending secrets are. An account with its keys in neither refuses
every webhook (403): nothing unverified is ever stored.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import requests
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from jvmail.db.models import Partner
from jvmail.secrets import SecretError, lookup
from jvmail.tracking.events import Event, Rejected
from jvmail.tracking.webhooks import mailgun, postmark, sendgrid, ses

__all__ = ["Account", "SnsPolicy", "Verified", "load", "verify"]


@dataclass(frozen=True)
class Account:
    partner_id: int
    slug: str
    kind: str
    settings: Mapping[str, Any]
    # Where its stored secrets are read from, when their variables are not set.
    sessions: sessionmaker[Session] | None = field(default=None, repr=False, compare=False)


@dataclass(frozen=True)
class Verified:
    events: list[Event]
    nonce: str | None = None  # a one-time token to refuse replays of (Mailgun)
    confirmed: bool = False  # an SNS subscription was confirmed
    skipped: tuple[str, ...] = ()  # why each unreadable event of the batch was left out


def _confirm(url: str) -> None:
    requests.get(url, timeout=10).raise_for_status()


@dataclass(frozen=True)
class SnsPolicy:
    """Where SNS signing certificates may come from, and how they and subscription
    confirmations are fetched (tests point these at local servers)."""

    cert_url: re.Pattern[str] = ses.SNS_URL
    fetch: Callable[[str], bytes] = ses.fetch_certificate
    confirm: Callable[[str], None] = field(default=_confirm)


def load(sessions: sessionmaker[Session], slug: str) -> Account | None:
    with sessions() as session:
        partner = session.scalars(select(Partner).where(Partner.slug == slug)).first()
        if partner is None or partner.archived_at is not None:
            return None
        provider = dict(partner.provider)
        return Account(partner.id, partner.slug, partner.provider_kind, provider, sessions)


def _values(account: Account, env: Mapping[str, str], key: str) -> tuple[str, ...]:
    name = account.settings.get(key)
    raw = env.get(str(name), "") if name else ""
    if name and not raw and account.sessions is not None:
        raw = _stored(account.sessions, account, env, str(name))
    values = tuple(v.strip() for v in raw.split(",") if v.strip())
    if not values:
        raise Rejected(
            403,
            f"webhooks of {account.slug}'s {account.kind} account are not set up: "
            f"its [provider] {key} must name an environment variable that is set or stored",
        )
    return values


def _stored(
    sessions: sessionmaker[Session], account: Account, env: Mapping[str, str], name: str
) -> str:
    try:
        with sessions() as session:
            return lookup(session, env, account.partner_id, account.slug, name) or ""
    except SecretError as exc:
        raise Rejected(
            403, f"webhooks of {account.slug}'s {account.kind} account: {exc.message}"
        ) from exc


def verify(
    account: Account,
    headers: Mapping[str, str],
    body: bytes,
    env: Mapping[str, str],
    sns: SnsPolicy,
    *,
    now: dt.datetime | None = None,
) -> Verified:
    """The request's events, once its signature checks out with the account's keys; raises
    :class:`Rejected` otherwise."""
    now = now or dt.datetime.now(dt.UTC)
    if account.kind == "sendgrid":
        keys = sendgrid.SendGridKeys(_values(account, env, "webhook_public_key_env"))
        batch = sendgrid.parse_batch(headers, body, keys, now)
        return Verified(batch.events, skipped=tuple(batch.skipped))
    if account.kind == "mailgun":
        mg = mailgun.MailgunKeys(_values(account, env, "webhook_signing_key_env"))
        events = mailgun.parse(headers, body, mg, now)
        return Verified(events, nonce=events[0].event_id if events else None)
    if account.kind == "postmark":
        user = str(account.settings.get("webhook_username") or "")
        if not user:
            raise Rejected(403, f"webhooks of {account.slug}'s postmark account are not set up")
        passwords = _values(account, env, "webhook_password_env")
        pm = postmark.PostmarkKeys(tuple((user, p) for p in passwords))
        return Verified(postmark.parse(headers, body, pm, now))
    if account.kind == "ses":
        topic = str(account.settings.get("sns_topic_arn") or "")
        if not topic:
            raise Rejected(403, f"{account.slug}'s ses account names no sns_topic_arn")
        keys_ses = ses.SesKeys(frozenset({topic}), cert_url_pattern=sns.cert_url, fetch=sns.fetch)
        events, subscribe = ses.parse_sns(headers, body, keys_ses, now)
        if subscribe is not None:
            sns.confirm(subscribe)
        return Verified(events, confirmed=subscribe is not None)
    raise Rejected(404, f"{account.kind} accounts send no webhooks")
