"""Send what is due, in this process: the embedded default behind `jvmail run`.

Each due mailing is dispatched (deliveries materialized and committed first) and its batches
are sent one after another. In-flight rows whose lease ran out are first marked ``unknown``, so
a run after a crash never sends them again.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass, field

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from jvmail.db.models import Mailing, MailingList, Promotion
from jvmail.dispatch.deliveries import expire
from jvmail.dispatch.pipeline import BatchReport, dispatch, due_mailings, send_batch
from jvmail.providers.base import Provider

__all__ = ["MailingRun", "RunReport", "run_due"]

BATCH = 1000


@dataclass
class MailingRun:
    mailing_id: int
    list: str
    promotion: str
    sent: int = 0
    refused: int = 0
    suppressed: int = 0
    error: str = ""


@dataclass
class RunReport:
    mailings: list[MailingRun] = field(default_factory=list)
    unknown: int = 0  # in-flight deliveries whose lease had run out: left to the reconciler

    @property
    def sent(self) -> int:
        return sum(m.sent for m in self.mailings)


def _label(session: Session, mailing_id: int) -> tuple[str, str]:
    row = session.execute(
        select(MailingList.slug, Promotion.slug)
        .join(Mailing, Mailing.list_id == MailingList.id)
        .join(Promotion, Promotion.id == Mailing.promotion_id)
        .where(Mailing.id == mailing_id)
    ).one()
    return row[0], row[1]


def run_due(
    maker: sessionmaker[Session],
    provider: Provider,
    until: dt.datetime,
    *,
    progress: Callable[[MailingRun, BatchReport], None] | None = None,
) -> RunReport:
    """Send every mailing due at or before ``until`` through ``provider``."""
    report = RunReport()
    with maker() as session:
        report.unknown = expire(session)
        session.commit()
        for mailing_id in due_mailings(session, until):
            lst, promo = _label(session, mailing_id)
            run = MailingRun(mailing_id, lst, promo)
            report.mailings.append(run)
            for bounds in dispatch(session, mailing_id, BATCH):
                batch = send_batch(session, provider, mailing_id, bounds, limit=BATCH)
                run.sent += batch.sent
                run.refused += batch.refused
                run.suppressed += batch.suppressed
                run.error = run.error or batch.error
                if progress is not None:
                    progress(run, batch)
                if batch.error:
                    break
    return report
