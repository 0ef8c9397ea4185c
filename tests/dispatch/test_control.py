"""Pause, resume and cancel, at any point of a mailing, on SQLite and PostgreSQL."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from sqlalchemy import delete, func, select, text
from sqlalchemy.orm import Session

from jvmail import mailings
from jvmail.db import make_engine, make_sessionmaker, upgrade
from jvmail.db.models import (
    Delivery,
    DeliveryBatch,
    DeliveryStatus,
    LedgerEntry,
    LedgerKind,
    Mailing,
    MailingStatus,
    Subscriber,
)
from jvmail.dispatch.control import cancel, pause, resume
from jvmail.dispatch.deliveries import (
    Outcome,
    claim,
    close_batches,
    recorded,
    start,
    tally,
    unfinished,
)
from jvmail.dispatch.pipeline import (
    _give_back,
    dispatch,
    due_mailings,
    fail_mailing,
    finish_settled,
    pause_mailing,
    send_batch,
)
from jvmail.errors import Busy, UsageError
from jvmail.ledger import post
from jvmail.providers.base import OutboundBatch, ProviderError, Recipient, Result
from tests.dispatch.conftest import LEASE, WHEN, Hub, build_hub, mailing, wait_until_blocked
from tests.dispatch.test_pipeline import Recording

NOW = dt.datetime(2026, 12, 1, 8, tzinfo=dt.UTC)


def _statuses(session: Session, mailing_id: int) -> dict[str, int]:
    session.expire_all()
    rows = session.execute(
        select(Delivery.status, func.count())
        .where(Delivery.mailing_id == mailing_id)
        .group_by(Delivery.status)
    ).all()
    return {str(s): n for s, n in rows}


def _status(session: Session, hub: Hub) -> MailingStatus:
    session.expire_all()
    mailing = session.get(Mailing, hub.mailing.id)
    assert mailing is not None
    return mailing.status


def test_a_paused_mailing_takes_no_batch_and_resumes_where_it_stopped(
    session: Session, hub: Hub, tmp_path: Path
) -> None:
    provider = Recording(tmp_path)
    first, second, third = dispatch(session, hub.mailing.id, batch_size=10)
    send_batch(session, provider, hub.mailing.id, first)
    rows = pause(session, [hub.mailing.id], NOW)
    session.commit()
    assert [(r.status, r.sent, r.total) for r in rows] == [(MailingStatus.PAUSED, 9, 25)]
    report = send_batch(session, provider, hub.mailing.id, second)  # a message still queued
    assert report.claimed == 0
    assert _statuses(session, hub.mailing.id) == {"accepted": 9, "failed": 1, "pending": 15}
    (row,) = resume(session, [hub.mailing.id], NOW)
    session.commit()
    assert row.status == MailingStatus.QUEUED
    for bounds in (second, third):
        send_batch(session, provider, hub.mailing.id, bounds)
    assert _statuses(session, hub.mailing.id) == {"accepted": 24, "failed": 1}
    assert set(provider.seen.values()) == {1}
    assert _status(session, hub) == MailingStatus.SENT


def test_a_mailing_paused_before_its_time_is_not_dispatched_until_resumed(
    session: Session, hub: Hub
) -> None:
    pause(session, [hub.mailing.id], NOW)
    # A dispatcher that died before it took the mailing left rows, in no batch: not dispatched.
    (reader, *_) = session.scalars(
        select(Subscriber.id).where(Subscriber.list_id == hub.lists[0].id)
    )
    session.add(Delivery(mailing_id=hub.mailing.id, subscriber_id=reader, updated_at=NOW))
    session.commit()
    assert due_mailings(session, WHEN) == []
    resume(session, [hub.mailing.id], NOW)
    session.commit()
    assert _status(session, hub) == MailingStatus.PLANNED
    assert due_mailings(session, WHEN) == [hub.mailing.id]


@pytest.mark.parametrize(
    ("reviews", "reviewed", "back_to"),
    [
        (True, False, MailingStatus.AWAITING_APPROVAL),
        (True, True, MailingStatus.APPROVED),
        (False, False, MailingStatus.PLANNED),
    ],
)
def test_a_pause_is_no_way_around_the_senders_review(
    session: Session, hub: Hub, reviews: bool, reviewed: bool, back_to: MailingStatus
) -> None:
    hub.sender.approve_mailings = reviews
    hub.mailing.status = MailingStatus.APPROVED if reviewed else MailingStatus.AWAITING_APPROVAL
    if not reviews:
        hub.mailing.status = MailingStatus.PLANNED
    hub.mailing.reviewed_at = NOW if reviewed else None
    session.commit()
    pause(session, [hub.mailing.id], NOW)
    session.commit()
    (row,) = resume(session, [hub.mailing.id], NOW)
    session.commit()
    assert row.status == back_to
    assert (due_mailings(session, WHEN) == [hub.mailing.id]) is (
        back_to != MailingStatus.AWAITING_APPROVAL
    )


def test_cancel_ends_what_was_not_sent_and_cancels_the_value_only_if_nothing_went(
    session: Session, hub: Hub, tmp_path: Path
) -> None:
    post(session, mailing=hub.mailing, giver=hub.sender, kind=LedgerKind.EXPECTED, value=12.0)
    session.commit()
    first, _, _ = dispatch(session, hub.mailing.id, batch_size=10)
    send_batch(session, Recording(tmp_path), hub.mailing.id, first)
    (row,) = cancel(session, [hub.mailing.id], NOW, reason="offer closed")
    session.commit()
    assert row.status == MailingStatus.CANCELLED
    assert row.error == "mailing cancelled: offer closed"
    assert _statuses(session, hub.mailing.id) == {"accepted": 9, "failed": 16}
    kinds = session.scalars(select(LedgerEntry.kind).order_by(LedgerEntry.id)).all()
    assert kinds == [LedgerKind.EXPECTED]  # messages went out: tracking will measure them


class StoppedMidCall(Recording):
    """Refuses each request as a whole, after ``meanwhile`` ran in a session of its own."""

    def __init__(self, folder: Path, session: Session, meanwhile: str, answer: ProviderError):
        super().__init__(folder)
        self.fail, self.bind, self.meanwhile = answer, session.get_bind(), meanwhile

    def _send(self, batch: OutboundBatch, recipients: Sequence[Recipient]) -> list[Result]:
        with Session(self.bind) as other:
            if self.meanwhile == "cancel":
                cancel(other, [batch.mailing_id], NOW, reason="offer closed")
            else:
                pause(other, [batch.mailing_id], NOW)
            other.commit()
        return super()._send(batch, recipients)


_PASSING = ProviderError("503 unavailable", transient=True)
_KEY_REFUSED = ProviderError("401 unauthorized", transient=False, auth=True)
_BAD_REQUEST = ProviderError("400 bad request", transient=False)


@pytest.mark.parametrize("answer", [_PASSING, _KEY_REFUSED, _BAD_REQUEST])
def test_a_cancel_during_a_refused_request_is_not_undone(
    session: Session, hub: Hub, tmp_path: Path, answer: ProviderError
) -> None:
    # The coordinator cancels while the batch is at the provider, which then refuses the
    # request as a whole: the rows it gave back end failed with the cancel, none waits
    # pending forever, and the mailing stays cancelled, not paused or failed by the worker.
    (whole,) = dispatch(session, hub.mailing.id, batch_size=100)
    provider = StoppedMidCall(tmp_path, session, "cancel", answer)
    send_batch(session, provider, hub.mailing.id, whole)
    assert _status(session, hub) == MailingStatus.CANCELLED
    assert _statuses(session, hub.mailing.id) == {"failed": 25}
    errors = set(
        session.scalars(select(Delivery.error).where(Delivery.mailing_id == hub.mailing.id))
    )
    assert errors == {"mailing cancelled: offer closed"}


@pytest.mark.parametrize("answer", [_PASSING, _KEY_REFUSED, _BAD_REQUEST])
def test_a_pause_during_a_refused_request_keeps_the_rows_for_resume(
    session: Session, hub: Hub, tmp_path: Path, answer: ProviderError
) -> None:
    (whole,) = dispatch(session, hub.mailing.id, batch_size=100)
    provider = StoppedMidCall(tmp_path, session, "pause", answer)
    send_batch(session, provider, hub.mailing.id, whole)
    session.expire_all()
    paused = session.get(Mailing, hub.mailing.id)
    assert paused is not None
    assert (paused.status, paused.error) == (MailingStatus.PAUSED, "paused by the coordinator")
    assert _statuses(session, hub.mailing.id) == {"pending": 25}


def test_a_failed_mailing_resumed_sends_what_failed_with_it_and_nothing_else(
    session: Session, hub: Hub, tmp_path: Path
) -> None:
    provider = Recording(tmp_path)
    first, second, third = dispatch(session, hub.mailing.id, batch_size=10)
    for bounds in (first, second):  # reader7 refused by the provider
        send_batch(session, provider, hub.mailing.id, bounds)
    provider.fail = _BAD_REQUEST  # the request as a whole: the mailing fails, nothing sent
    send_batch(session, provider, hub.mailing.id, third)
    assert _status(session, hub) == MailingStatus.FAILED
    assert _statuses(session, hub.mailing.id) == {"accepted": 19, "failed": 6}
    assert close_batches(session) == 3  # the tick: each batch's rows are all final
    provider.fail = None  # the cause is fixed
    (row,) = resume(session, [hub.mailing.id], NOW)
    session.commit()
    assert (row.status, row.error) == (MailingStatus.QUEUED, "")
    assert _statuses(session, hub.mailing.id) == {"accepted": 19, "failed": 1, "pending": 5}
    # Its rows are to send again, where the tick looks: it is not taken for finished.
    assert unfinished(session, hub.mailing.id)
    assert finish_settled(session) == 0
    send_batch(session, provider, hub.mailing.id, third)
    assert _statuses(session, hub.mailing.id) == {"accepted": 24, "failed": 1}
    assert set(provider.seen.values()) == {1}
    assert _status(session, hub) == MailingStatus.SENT
    refused = session.scalars(select(Delivery.error).where(Delivery.status == "failed")).one()
    assert refused == "550 mailbox unavailable"


def test_a_resume_while_a_worker_gives_rows_back_neither_waits_on_it_nor_loses_them(
    pg_url: str,
) -> None:
    # A batch in flight when its mailing failed: its worker has stored the provider's answers
    # (3 taken, the rest untried), holding its batch's row, when the coordinator resumes. The
    # resume must not wait for that batch (the worker is about to wait for the resume's lock
    # on the mailing), and the rows the worker then gives back are to send, not failed.
    engine = make_engine(pg_url)
    upgrade(engine)
    try:
        with make_sessionmaker(engine)() as worker, make_sessionmaker(engine)() as coordinator:
            built = build_hub(worker)
            _, second, _ = dispatch(worker, built.mailing.id, batch_size=10)
            going = start(
                worker, claim(worker, built.mailing.id, second, lease=LEASE, limit=10), lease=LEASE
            )
            worker.commit()
            fail_mailing(coordinator, built.mailing.id, "the template broke")
            taken = [Outcome(c.delivery_id, c.fence, DeliveryStatus.ACCEPTED) for c in going[:3]]
            tally(worker, built.mailing.id, second[0], recorded(worker, taken, held=going))
            coordinator.execute(text("SET lock_timeout = '5s'"))
            (row,) = resume(coordinator, [built.mailing.id], NOW)
            coordinator.commit()
            assert row.status == MailingStatus.QUEUED
            _give_back(worker, built.mailing.id, going[3:])
            worker.commit()
            assert _statuses(worker, built.mailing.id) == {"accepted": 3, "pending": 22}
    finally:
        engine.dispose()


def test_a_step_on_a_mailing_a_stopped_worker_holds_gives_up_and_changes_nothing(
    pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A worker stopped (SIGSTOP, a paused VM) inside a batch's start, which holds the mailing
    # under a share lock: pause, resume and cancel say so after a while instead of hanging.
    monkeypatch.setattr(mailings, "LOCK_WAIT_MS", 200)
    engine = make_engine(pg_url)
    upgrade(engine)
    # Should the step wait for good, the statement timeout ends the test instead.
    patient = make_engine(pg_url + "%20-cstatement_timeout%3D30000")
    try:
        with make_sessionmaker(engine)() as worker, make_sessionmaker(patient)() as coordinator:
            built = build_hub(worker)
            dispatch(worker, built.mailing.id, batch_size=10)
            worker.execute(select(Mailing.id).with_for_update(read=True))
            for step in (pause, cancel):
                with pytest.raises(
                    Busy, match=f"mailing {built.mailing.id} now: another process has held it"
                ):
                    step(coordinator, [built.mailing.id], NOW)
            assert _status(coordinator, built) == MailingStatus.QUEUED
            worker.commit()  # it woke and finished: the step goes through
            (row,) = pause(coordinator, [built.mailing.id], NOW)
            coordinator.commit()
            assert row.status == MailingStatus.PAUSED
    finally:
        patient.dispose()
        engine.dispose()


def test_cancel_before_sending_drops_the_expected_value(session: Session, hub: Hub) -> None:
    post(session, mailing=hub.mailing, giver=hub.sender, kind=LedgerKind.EXPECTED, value=12.0)
    session.commit()
    cancel(session, [hub.mailing.id], NOW)
    session.commit()
    values = session.execute(select(LedgerEntry.kind, LedgerEntry.value).order_by(LedgerEntry.id))
    assert values.all() == [(LedgerKind.EXPECTED, 12.0), (LedgerKind.CORRECTION, -12.0)]


def test_a_mailing_dispatched_before_batches_were_recorded_resumes_queued(
    session: Session, hub: Hub, tmp_path: Path
) -> None:
    first, _, _ = dispatch(session, hub.mailing.id, batch_size=10)
    send_batch(session, Recording(tmp_path), hub.mailing.id, first)
    pause(session, [hub.mailing.id], NOW)
    # As for a mailing dispatched by an older release: no batch recorded, some rows sent.
    session.execute(delete(DeliveryBatch).where(DeliveryBatch.mailing_id == hub.mailing.id))
    session.commit()
    resume(session, [hub.mailing.id], NOW)
    session.commit()
    assert _status(session, hub) == MailingStatus.QUEUED  # not planned: never dispatched again
    assert due_mailings(session, WHEN) == []


def test_cancelling_a_mailing_a_dispatcher_left_rows_of_frees_their_addresses(
    session: Session, hub: Hub
) -> None:
    readers = session.scalars(
        select(Subscriber.id).where(Subscriber.list_id == hub.lists[0].id)
    ).all()
    session.add_all(
        Delivery(mailing_id=hub.mailing.id, subscriber_id=r, updated_at=NOW) for r in readers
    )
    session.commit()
    cancel(session, [hub.mailing.id], NOW)
    session.commit()
    assert _statuses(session, hub.mailing.id) == {}
    # The sender's mailing of the promotion to its other list now takes the shared addresses.
    second = mailing(session, hub.promotion, hub.lists[1])
    session.commit()
    assert dispatch(session, second.id, batch_size=100)
    assert _statuses(session, second.id) == {"pending": 6}


def test_steps_that_do_not_apply_change_nothing(session: Session, hub: Hub) -> None:
    with pytest.raises(UsageError, match=f"cannot resume mailing {hub.mailing.id}: it is planned"):
        resume(session, [hub.mailing.id], NOW)
    with pytest.raises(UsageError, match="no mailing with id 999"):
        pause(session, [hub.mailing.id, 999], NOW)
    assert _status(session, hub) == MailingStatus.PLANNED
    cancel(session, [hub.mailing.id], NOW)
    session.commit()
    with pytest.raises(UsageError, match="it is cancelled; nothing was changed"):
        pause(session, [hub.mailing.id], NOW)


def test_pausing_a_paused_mailing_keeps_it_as_it_was(session: Session, hub: Hub) -> None:
    hub.mailing.status, hub.mailing.error = MailingStatus.PAUSED, "paused itself: 40% refused"
    session.commit()
    (row,) = pause(session, [hub.mailing.id], NOW)
    session.commit()
    assert (row.status, row.error) == (MailingStatus.PAUSED, "paused itself: 40% refused")


def test_a_failed_mailing_can_be_cancelled_to_drop_its_value(session: Session, hub: Hub) -> None:
    # It failed before anything went out (a secret missing, say): cancelling it takes its
    # expected value off the balances.
    post(session, mailing=hub.mailing, giver=hub.sender, kind=LedgerKind.EXPECTED, value=12.0)
    hub.mailing.status, hub.mailing.error = MailingStatus.FAILED, "SENDGRID_KEY is not set"
    session.commit()
    (row,) = cancel(session, [hub.mailing.id], NOW, reason="sent by hand instead")
    session.commit()
    assert row.status == MailingStatus.CANCELLED
    values = session.execute(select(LedgerEntry.kind, LedgerEntry.value).order_by(LedgerEntry.id))
    assert values.all() == [(LedgerKind.EXPECTED, 12.0), (LedgerKind.CORRECTION, -12.0)]


def test_two_workers_giving_rows_back_and_pausing_wait_for_each_other(pg_url: str) -> None:
    # The account's key is revoked while two batches of the mailing are at the provider: both
    # workers give their rows back, then pause the mailing. Each holding a share lock on the
    # mailing, then wanting to update it, they would deadlock, and the one PostgreSQL aborts
    # would lose its recorded answers; the second must wait for the first instead.
    engine = make_engine(pg_url)
    upgrade(engine)
    sessions = make_sessionmaker(engine)
    with sessions() as setup:
        built = build_hub(setup)
        first, second = dispatch(setup, built.mailing.id, batch_size=13)
    mailing_id = built.mailing.id
    with sessions() as a, sessions() as b, sessions() as watch:
        held = []
        for worker, bounds in ((a, first), (b, second)):
            claimed_ = claim(worker, mailing_id, bounds, lease=LEASE, limit=100)
            held.append(start(worker, claimed_, lease=LEASE))
            worker.commit()
        pid = b.scalar(text("SELECT pg_backend_pid()"))
        _give_back(a, mailing_id, held[0])

        def other_worker() -> None:
            _give_back(b, mailing_id, held[1])
            pause_mailing(b, mailing_id, "sendgrid: the account's key was refused")
            b.commit()

        with ThreadPoolExecutor(1) as pool:
            done = pool.submit(other_worker)
            wait_until_blocked(watch, pid, done, "the second worker did not wait for the first")
            pause_mailing(a, mailing_id, "sendgrid: the account's key was refused")
            a.commit()
            done.result()
        assert _statuses(watch, mailing_id) == {"pending": 25}
        assert _status(watch, built) == MailingStatus.PAUSED
    engine.dispose()
