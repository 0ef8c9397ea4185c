"""Which provider account sends a mailing: its sender's, one client per sender and thread."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

from sqlalchemy import select

from jvmail.db.models import Mailing, Partner
from jvmail.dispatch.actors import Runtime
from jvmail.providers.base import Provider
from jvmail.providers.factory import build_provider

__all__ = ["senders_accounts"]

_KEPT = 4096  # mailings whose sender is remembered; past that the memory starts over


def senders_accounts(
    runtime: Runtime,
    outbox: Path | None,
    build: Callable[[Partner], Provider] | None = None,
) -> Callable[[int], Provider]:
    """Mailing id -> its sender's provider, one per sender and thread (SMTP connections are
    kept open, and are not shared between threads). ``build`` makes a sender's client (by
    default from its account as synced, or the ``outbox`` folder). A mailing's sender never
    changes, so it is looked up once per process: a batch whose thread has its sender's client
    reads nothing from the database."""
    local = threading.local()
    sender_of: dict[int, int] = {}  # mailing id -> its sender's id, shared by the threads

    def account(sender: Partner) -> Provider:
        return build_provider(
            sender.slug, sender.contact_email, sender.provider, name=sender.name, outbox=outbox
        )

    make = build or account

    def provider(mailing_id: int) -> Provider:
        cache: dict[int, Provider] = local.__dict__.setdefault("cache", {})
        known = cache.get(sender_of.get(mailing_id, -1))
        if known is not None:
            return known
        with runtime.session() as session:
            sender = session.scalars(
                select(Partner)
                .join(Mailing, Mailing.sender_id == Partner.id)
                .where(Mailing.id == mailing_id)
            ).one()
            if sender.id not in cache:
                cache[sender.id] = make(sender)
        if len(sender_of) >= _KEPT:
            sender_of.clear()
        sender_of[mailing_id] = sender.id
        return cache[sender.id]

    return provider
