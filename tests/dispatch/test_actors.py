"""The actors on the in-process broker: what `jvmail run` does, on SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import dramatiq
import pytest
from dramatiq.brokers.stub import StubBroker
from sqlalchemy import func, select
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from jvmail.db.models import (
    Delivery,
    Mailing,
    MailingStatus,
    Subscriber,
    Suppression,
    SuppressionReason,
)
from jvmail.dispatch.actors import Runtime, TryLater, declare
from jvmail.dispatch.pipeline import dispatch
from jvmail.dispatch.runner import run_due
from jvmail.providers.base import OutboundBatch, Provider, ProviderError, Recipient, Result
from tests.dispatch.conftest import WHEN, Hub
from tests.dispatch.test_pipeline import Recording


def _statuses(session: Session) -> dict[str, int]:
    session.expire_all()
    rows = session.execute(select(Delivery.status, func.count()).group_by(Delivery.status)).all()
    return {str(s): n for s, n in rows}


def test_a_passing_refusal_is_retried_later_and_sends_each_message_once(
    session: Session, hub: Hub, db_url: str, tmp_path: Path
) -> None:
    provider = Recording(tmp_path)
    provider.fail = ProviderError("429 Too Many Requests", "slow down", transient=True)
    provider.fail_on_call = 2
    calls = {"n": 0}

    def flaky(_mailing: int) -> Provider:
        calls["n"] += 1
        if calls["n"] == 2:  # the provider recovers for the retry
            provider.fail = None
        return provider

    runtime = Runtime(db_url, flaky)
    try:
        report = run_due(runtime, WHEN)
    finally:
        runtime.close()
    assert _statuses(session) == {"accepted": 24, "failed": 1}
    assert set(provider.seen.values()) == {1}
    assert calls["n"] == 2  # the batch ran twice: once refused half way, once to the end
    assert report.sent == 24
    assert [m.status for m in report.mailings] == ["sent"]


def test_a_sender_without_its_secret_fails_its_mailing_naming_the_variable(
    session: Session, hub: Hub, db_url: str
) -> None:
    def missing(_mailing: int) -> Provider:
        raise ProviderError(
            "partner sender: environment variable SENDER_SMTP_PASSWORD is not set",
            "export SENDER_SMTP_PASSWORD=...",
            transient=False,
        )

    runtime = Runtime(db_url, missing)
    try:
        report = run_due(runtime, WHEN)
    finally:
        runtime.close()
    session.expire_all()
    mailing = session.get(Mailing, hub.mailing.id)
    assert mailing is not None
    assert mailing.status == MailingStatus.FAILED
    assert "SENDER_SMTP_PASSWORD is not set" in (mailing.error or "")
    assert _statuses(session) == {"failed": 25}
    assert report.sent == 0


def test_an_unsubscribe_committed_during_a_mailing_stops_its_later_batches(
    session: Session, hub: Hub, db_url: str, tmp_path: Path
) -> None:
    late = "reader24@mail.example"  # in the mailing's last batch (of 10, 10 and 5)

    class Unsubscribing(Recording):
        def _send(self, batch: OutboundBatch, recipients: Sequence[Recipient]) -> list[Result]:
            if self.calls == 0:  # while the first batch is with the provider, a reader leaves
                with Session(session.get_bind()) as other:
                    other.add(
                        Suppression(
                            partner_id=hub.sender.id,
                            email=late,
                            reason=SuppressionReason.UNSUBSCRIBED,
                        )
                    )
                    other.commit()
            return super()._send(batch, recipients)

    sending = Unsubscribing(tmp_path)
    runtime = Runtime(db_url, lambda _m: sending, batch=10)
    try:
        run_due(runtime, WHEN)
    finally:
        runtime.close()
    assert _statuses(session) == {"accepted": 23, "failed": 1, "suppressed": 1}
    sent_to = {
        e
        for (e,) in session.execute(
            select(Subscriber.email)
            .join(Delivery, Delivery.subscriber_id == Subscriber.id)
            .where(Delivery.status == "accepted")
        )
    }
    assert late not in sent_to
    assert set(sending.seen.values()) == {1}


def test_the_providers_retry_after_decides_when_the_batch_is_tried_again(
    session: Session, hub: Hub, db_url: str, tmp_path: Path
) -> None:
    provider = Recording(tmp_path)
    provider.fail = ProviderError("429 Too Many Requests", "wait", transient=True, retry_after=7.5)
    runtime = Runtime(db_url, lambda _: provider)
    try:
        actors = declare(StubBroker(), runtime)
        (bounds,) = dispatch(session, hub.mailing.id, 1000)  # commits the deliveries
        with pytest.raises(TryLater) as raised:
            actors.send.fn(hub.mailing.id, *bounds)
    finally:
        runtime.close()
    assert raised.value.delay == 7500  # dramatiq waits what the provider asked, not its backoff
    assert isinstance(raised.value, dramatiq.Retry)
    assert _statuses(session) == {"pending": 25}  # nothing lost, nothing sent


def test_a_batch_that_lost_its_database_connection_is_retried(
    session: Session, hub: Hub, db_url: str, tmp_path: Path
) -> None:
    provider = Recording(tmp_path)
    calls = {"n": 0}

    def dropped_once(_mailing: int) -> Provider:
        calls["n"] += 1
        if calls["n"] == 1:  # the connection went as the batch began (a reset, a failover)
            raise OperationalError(
                "SELECT", {}, Exception("server closed the connection unexpectedly")
            )
        return provider

    runtime = Runtime(db_url, dropped_once)
    try:
        report = run_due(runtime, WHEN)
    finally:
        runtime.close()
    assert calls["n"] == 2  # retried by the broker, not left for the relay
    assert _statuses(session) == {"accepted": 24, "failed": 1}  # the hub's one bad address
    assert set(provider.seen.values()) == {1}
    assert report.sent == 24
