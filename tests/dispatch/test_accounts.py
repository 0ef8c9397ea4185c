"""Which account sends a mailing, as `jvmail worker` looks it up for each batch."""

from __future__ import annotations

import threading
from pathlib import Path

from sqlalchemy.orm import Session

from jvmail.db.models import Partner
from jvmail.dispatch.accounts import senders_accounts
from jvmail.dispatch.actors import Runtime
from jvmail.providers.base import Provider
from jvmail.providers.outbox import OutboxProvider
from tests.dispatch.conftest import Hub, mailing


def test_each_batch_gets_its_senders_client_reading_the_database_once_per_mailing(
    db_url: str, session: Session, hub: Hub, tmp_path: Path
) -> None:
    second = mailing(session, hub.promotion, hub.lists[1])
    session.commit()
    runtime = Runtime(db_url, lambda _m: NotImplemented)
    opened: list[int] = []
    real = runtime.session

    def counted() -> Session:
        opened.append(1)
        return real()

    runtime.session = counted  # type: ignore[method-assign]
    built: list[tuple[str, str]] = []

    def build(sender: Partner) -> Provider:
        built.append((sender.slug, threading.current_thread().name))
        return OutboxProvider(tmp_path / sender.slug)

    provider = senders_accounts(runtime, None, build)
    first = provider(hub.mailing.id)
    assert [provider(hub.mailing.id) for _ in range(3)] == [first] * 3
    assert len(opened) == 1  # the batches after the first read nothing
    # Another mailing of the same sender: looked up once, the same client.
    assert provider(second.id) is first
    assert len(opened) == 2
    # Another thread gets a client of its own (SMTP connections are not shared).
    other: list[Provider] = []
    thread = threading.Thread(target=lambda: other.append(provider(hub.mailing.id)))
    thread.start()
    thread.join()
    assert other[0] is not first
    assert len(opened) == 3
    assert [slug for slug, _ in built] == ["sender", "sender"]
    runtime.close()
