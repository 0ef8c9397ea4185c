"""Send what is due, in this process: the embedded default behind `jvmail run`.

The same actors as the production workers run on dramatiq's in-process broker with a worker of
our own: one tick dispatches every mailing due by ``until`` (deliveries materialized and
committed first), its batches follow as messages, and the call returns when the queue is empty.
In-flight rows whose lease ran out are marked ``unknown`` by the tick, so a run after a crash
never sends them again; queued mailings a crashed run left behind are relayed once they have
shown no progress for the runtime's ``relay_after``, and reported with the rest.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import dramatiq
from dramatiq.brokers.stub import StubBroker
from dramatiq.common import dq_name
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from jvmail.db.models import (
    Delivery,
    DeliveryBatch,
    DeliveryStatus,
    Mailing,
    MailingList,
    Promotion,
)
from jvmail.dispatch.actors import QUEUE, Runtime, declare
from jvmail.dispatch.pipeline import SENDING_NOW, due_mailings

__all__ = ["MailingRun", "RunReport", "run_due"]


@dataclass
class MailingRun:
    mailing_id: int
    list: str
    promotion: str
    sent: int = 0
    refused: int = 0
    suppressed: int = 0
    total: int = 0  # its deliveries, whatever their state
    status: str = ""
    error: str = ""


@dataclass
class RunReport:
    mailings: list[MailingRun] = field(default_factory=list)  # their totals so far
    unknown: int = 0  # deliveries in doubt (in flight when a run stopped): never resent
    sent: int = 0  # messages this run handed over


def run_due(
    runtime: Runtime,
    until: dt.datetime,
    *,
    threads: int = 1,
    progress: Callable[[int], None] | None = None,
    only: Sequence[int] | None = None,
) -> RunReport:
    """Send every mailing due at or before ``until`` (of ``only``, when given); ``progress`` is
    told how many messages have been accepted so far, a few times a second."""
    with runtime.session() as session:
        due = due_mailings(session, until)
        if only is not None:
            wanted = set(only)
            due = [m for m in due if m in wanted]
        # Mailings a run that stopped half way left queued: the tick relays them too.
        left = list(
            session.scalars(
                select(Mailing.id).where(Mailing.status.in_(SENDING_NOW)).order_by(Mailing.id)
            )
        )
        before = _accepted(session)
    broker = StubBroker()
    broker.emit_after("process_boot")
    actors = declare(broker, runtime)
    worker = dramatiq.Worker(broker, worker_threads=threads, worker_timeout=100)
    worker.start()
    try:
        if only is None:
            actors.tick.send(until.isoformat())
        else:
            actors.tick.send(until.isoformat(), list(only))
        while True:
            try:
                broker.join(QUEUE, timeout=250, fail_fast=True)
                broker.join(dq_name(QUEUE), timeout=250, fail_fast=True)
                break
            except dramatiq.errors.QueueJoinTimeout:
                if progress is not None:
                    with runtime.session() as session:
                        progress(_accepted(session) - before)
        worker.join()
    finally:
        worker.stop()
        broker.close()
    with runtime.session() as session:
        queued = set(left)
        report = _report(session, [*left, *(m for m in due if m not in queued)])
        report.sent = _accepted(session) - before
        return report


def _accepted(session: Session) -> int:
    """Deliveries accepted so far, by the batches' tallies (a row per batch, not per delivery:
    polled twice a second)."""
    return int(session.scalar(select(func.coalesce(func.sum(DeliveryBatch.accepted), 0))) or 0)


def _report(session: Session, mailing_ids: list[int]) -> RunReport:
    report = RunReport()
    counts: dict[tuple[int, str], int] = {
        (m, str(s)): n
        for m, s, n in session.execute(
            select(Delivery.mailing_id, Delivery.status, func.count())
            .where(Delivery.mailing_id.in_(mailing_ids))
            .group_by(Delivery.mailing_id, Delivery.status)
        ).all()
    }
    rows = session.execute(
        select(Mailing.id, MailingList.slug, Promotion.slug, Mailing.status, Mailing.error)
        .join(MailingList, MailingList.id == Mailing.list_id)
        .join(Promotion, Promotion.id == Mailing.promotion_id)
        .where(Mailing.id.in_(mailing_ids))
    ).all()
    order = {m: n for n, m in enumerate(mailing_ids)}
    for mailing_id, lst, promo, status, error in sorted(rows, key=lambda r: order[r[0]]):

        def count(s: DeliveryStatus, m: int = mailing_id) -> int:
            return counts.get((m, s.value), 0)

        report.mailings.append(
            MailingRun(
                mailing_id,
                lst,
                promo,
                sent=count(DeliveryStatus.ACCEPTED),
                refused=count(DeliveryStatus.FAILED),
                suppressed=count(DeliveryStatus.SUPPRESSED),
                total=sum(count(s) for s in DeliveryStatus),
                status=str(status),
                error=error or "",
            )
        )
        report.unknown += count(DeliveryStatus.UNKNOWN)
    return report
