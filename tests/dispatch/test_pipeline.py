"""A due mailing through dispatch and send_batch into real .eml files, on SQLite and PostgreSQL."""

from __future__ import annotations

import datetime as dt
import email
import email.policy
from collections import Counter
from collections.abc import Sequence
from email.message import EmailMessage
from pathlib import Path

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from jvmail.db.models import (
    Delivery,
    DeliveryStatus,
    Mailing,
    MailingStatus,
    Promotion,
    Subscriber,
    SubscriberStatus,
    Suppression,
    SuppressionReason,
)
from jvmail.dispatch import pipeline
from jvmail.dispatch.control import resume
from jvmail.dispatch.deliveries import expire
from jvmail.dispatch.pipeline import dispatch, due_mailings, send_batch
from jvmail.providers.base import (
    Capabilities,
    OutboundBatch,
    Provider,
    ProviderError,
    Recipient,
    Result,
)
from jvmail.providers.outbox import OutboxProvider
from jvmail.tracking.links import Keyring, Link
from tests.dispatch.conftest import WHEN, Hub, mailing, mailing_list, set_status

KEY = Keyring((bytes.fromhex("ab" * 32),))


class Recording(OutboxProvider):
    """The outbox, counting every recipient it is handed, in pieces of 10."""

    capabilities = Capabilities(max_batch=10, substitution=False, metadata=True)

    def __init__(self, folder: Path) -> None:
        super().__init__(folder)
        self.seen: Counter[int] = Counter()
        self.calls = 0
        self.fail: ProviderError | None = None
        self.fail_on_call = 1
        self.refuse: tuple[str, ...] = ("reader7@",)  # addresses it answers 550 for

    def _send(self, batch: OutboundBatch, recipients: Sequence[Recipient]) -> list[Result]:
        self.calls += 1
        if self.fail is not None and self.calls >= self.fail_on_call:
            raise self.fail
        self.seen.update(r.delivery_id for r in recipients)
        results = super()._send(batch, recipients)
        return [
            Result(r.delivery_id, False, error="550 mailbox unavailable")
            if r.email.startswith(self.refuse)
            else res
            for r, res in zip(recipients, results, strict=True)
        ]


def _statuses(session: Session, mailing_id: int) -> dict[str, int]:
    session.expire_all()
    rows = session.execute(
        select(Delivery.status, func.count())
        .where(Delivery.mailing_id == mailing_id)
        .group_by(Delivery.status)
    ).all()
    return {str(s): n for s, n in rows}


def _send_all(session: Session, provider: Provider, mailing_id: int) -> None:
    for bounds in dispatch(session, mailing_id, batch_size=100):
        send_batch(session, provider, mailing_id, bounds)


def test_a_mailing_becomes_one_eml_per_recipient_with_its_own_links(
    session: Session, hub: Hub, tmp_path: Path
) -> None:
    provider = Recording(tmp_path)
    assert due_mailings(session, WHEN) == [hub.mailing.id]
    _send_all(session, provider, hub.mailing.id)
    assert provider.calls == 3  # 25 recipients in pieces of 10
    assert set(provider.seen.values()) == {1}
    assert _statuses(session, hub.mailing.id) == {"accepted": 24, "failed": 1}
    failed = session.scalars(select(Delivery).where(Delivery.status == DeliveryStatus.FAILED)).one()
    assert failed.error == "550 mailbox unavailable"
    assert session.get(Mailing, hub.mailing.id).status == MailingStatus.SENT  # type: ignore[union-attr]
    files = sorted((tmp_path / str(hub.mailing.id)).glob("*.eml"))
    assert len(files) == 25
    for path in files:
        msg = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
        assert isinstance(msg, EmailMessage)
        delivery = int(path.stem)
        assert msg["X-Jvmail-Delivery"] == str(delivery)
        assert msg["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
        assert msg["From"] == "Sender <team@sender.example>"
        name = msg["To"].split("@")[0].title()
        assert msg["Subject"] == f"Hello {name}"
        html = msg.get_body(("html",)).get_content()  # type: ignore[union-attr]
        assert f"Hi {name}," in html
        assert "1 Example Street, Springfield" in html
        token = html.split("https://jv.example/c/")[1].split('"')[0]
        assert KEY.read(token) == Link(hub.mailing.id, delivery, 1)
    # Run again: nothing is due, nothing is sent twice.
    assert due_mailings(session, WHEN) == []
    _send_all(session, provider, hub.mailing.id)
    assert set(provider.seen.values()) == {1}


def test_a_mailing_that_reaches_nobody_says_what_kept_each_address_out(
    session: Session, hub: Hub, tmp_path: Path
) -> None:
    provider = Recording(tmp_path)
    _send_all(session, provider, hub.mailing.id)  # the main list: five of the extra's six
    extra = hub.lists[1]
    set_status(session, extra, "solo@mail.example", SubscriberStatus.BOUNCED)
    session.add(
        Suppression(
            partner_id=hub.sender.id, email="reader0@mail.example", reason=SuppressionReason.MANUAL
        )
    )
    second = mailing(session, hub.promotion, extra)
    empty = mailing(session, hub.promotion, mailing_list(session, hub.sender, "sender-new", []))
    session.commit()
    calls = provider.calls
    for m in (second, empty):
        _send_all(session, provider, m.id)
    assert provider.calls == calls
    session.expire_all()
    assert (second.status, empty.status) == (MailingStatus.SENT, MailingStatus.SENT)
    assert second.error == (
        "nobody to mail: of the list's 6 addresses, 1 unsubscribed, bounced or complained; "
        "1 on the sender's suppression list; "
        "4 already sent this promotion through another of the sender's lists"
    )
    assert empty.error == (
        "nobody to mail: the list holds no addresses (its subscribers CSV, then `jvmail sync`)"
    )
    assert hub.mailing.error is None  # a mailing that reached its readers says nothing


def _delivery_statistics(session: Session) -> bool:
    """Whether the planner has statistics of the delivery table."""
    if session.get_bind().dialect.name == "sqlite":
        tables = "SELECT count(*) FROM sqlite_master WHERE name = 'sqlite_stat1'"
        if not session.connection().exec_driver_sql(tables).scalar_one():
            return False
        query = "SELECT count(*) FROM sqlite_stat1 WHERE tbl = 'delivery'"
    else:
        query = "SELECT count(*) FROM pg_class WHERE oid = 'delivery'::regclass AND reltuples > 0"
    return bool(session.connection().exec_driver_sql(query).scalar_one())


@pytest.mark.parametrize("threshold", [25, 26])
def test_a_large_dispatch_refreshes_the_delivery_statistics(
    session: Session, hub: Hub, monkeypatch: pytest.MonkeyPatch, threshold: int
) -> None:
    # At 25 rows or more (here; 10,000 in use) the claims that follow are planned with them.
    monkeypatch.setattr(pipeline, "ANALYZE_AFTER", threshold)
    assert not _delivery_statistics(session)
    assert dispatch(session, hub.mailing.id, batch_size=100)
    session.commit()
    assert _delivery_statistics(session) is (threshold <= 25)


def test_a_hostile_template_fails_its_mailing_only(
    session: Session, hub: Hub, tmp_path: Path
) -> None:
    bad = Promotion(
        slug="bad-offer",
        partner_id=hub.owner.id,
        subject="Hi",
        html="{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
        text="x",
        landing_urls=[],
        window_start=hub.promotion.window_start,
        window_end=hub.promotion.window_end,
        niches=["web"],
        mailings_wanted=1,
        exclude_partners=[],
    )
    session.add(bad)
    session.flush()
    hostile = mailing(session, bad, hub.lists[1])
    session.commit()
    provider = Recording(tmp_path)
    for mailing_id in due_mailings(session, WHEN):
        _send_all(session, provider, mailing_id)
    session.expire_all()
    failed = session.get(Mailing, hostile.id)
    assert failed is not None
    assert failed.status == MailingStatus.FAILED
    assert failed.error is not None
    assert "promotion bad-offer: html took longer than" in failed.error
    assert _statuses(session, hostile.id) == {"failed": 6}
    assert _statuses(session, hub.mailing.id) == {"accepted": 24, "failed": 1}


@pytest.mark.parametrize("auth", [False, True])
def test_a_refused_request_leaves_its_rows_and_the_rest_to_send_later_once(
    session: Session, hub: Hub, tmp_path: Path, auth: bool
) -> None:
    provider = Recording(tmp_path)
    provider.fail = ProviderError("503 Service Unavailable", "wait", transient=not auth, auth=auth)
    provider.fail_on_call = 2  # the first piece of 10 goes through, the second is refused
    (bounds,) = dispatch(session, hub.mailing.id, batch_size=100)
    report = send_batch(session, provider, hub.mailing.id, bounds)
    assert report.error == "503 Service Unavailable"
    assert _statuses(session, hub.mailing.id) == {"accepted": 9, "failed": 1, "pending": 15}
    status = session.get(Mailing, hub.mailing.id).status  # type: ignore[union-attr]
    assert status == (MailingStatus.PAUSED if auth else MailingStatus.QUEUED)
    provider.fail = None
    if auth:  # a paused mailing takes no batch until someone resumes it
        assert send_batch(session, provider, hub.mailing.id, bounds).claimed == 0
        resume(session, [hub.mailing.id], dt.datetime.now(dt.UTC))
        session.commit()
    send_batch(session, provider, hub.mailing.id, bounds)
    assert _statuses(session, hub.mailing.id) == {"accepted": 24, "failed": 1}
    assert set(provider.seen.values()) == {1}


def test_a_request_that_may_have_left_is_never_sent_again(
    session: Session, hub: Hub, tmp_path: Path
) -> None:
    provider = Recording(tmp_path)
    provider.fail = ProviderError("read timed out", "", transient=True, maybe_sent=True)
    provider.fail_on_call = 2
    (bounds,) = dispatch(session, hub.mailing.id, batch_size=100)
    send_batch(session, provider, hub.mailing.id, bounds, lease=dt.timedelta(seconds=-1))
    # Piece 1 accepted, piece 2 in doubt (in flight), piece 3 never handed over.
    expected = {"accepted": 9, "failed": 1, "sending": 10, "pending": 5}
    assert _statuses(session, hub.mailing.id) == expected
    provider.fail = None
    report = send_batch(session, provider, hub.mailing.id, bounds)
    assert report.claimed == 5
    assert expire(session) == 10
    session.commit()
    assert _statuses(session, hub.mailing.id) == {"accepted": 14, "failed": 1, "unknown": 10}
    assert set(provider.seen.values()) == {1}
    assert len(provider.seen) == 15  # the doubtful ten were never handed over again


def test_a_mailing_the_provider_keeps_refusing_pauses_itself(
    session: Session, hub: Hub, tmp_path: Path
) -> None:
    for n in range(45):
        session.add(
            Subscriber(list_id=hub.lists[0].id, email=f"old{n}@gone.example", attributes={})
        )
    session.commit()
    provider = Recording(tmp_path)
    provider.refuse = ("old",)  # 45 of 70 recipients bounce
    batches = dispatch(session, hub.mailing.id, batch_size=20)
    for bounds in batches:
        send_batch(session, provider, hub.mailing.id, bounds)
    session.expire_all()
    mailing = session.get(Mailing, hub.mailing.id)
    assert mailing is not None
    assert mailing.status == MailingStatus.PAUSED
    assert "paused itself: the provider refused 35 of 60 recipients" in (mailing.error or "")
    assert _statuses(session, hub.mailing.id) == {"accepted": 25, "failed": 35, "pending": 10}
