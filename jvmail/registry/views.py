"""Read-only views of the registry as plain dicts, behind `jvmail partners|lists|promotions`.

Only aggregates leave here: subscriber counts, never addresses.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from jvmail.db.models import MailingList, Partner, Promotion, Subscriber, SubscriberStatus

__all__ = ["list_rows", "partner_rows", "promotion_rows"]


def _subscriber_counts(session: Session) -> dict[int, int]:
    query = (
        select(Subscriber.list_id, func.count())
        .where(Subscriber.status == SubscriberStatus.SUBSCRIBED, Subscriber.archived_at.is_(None))
        .group_by(Subscriber.list_id)
    )
    return {int(row[0]): int(row[1]) for row in session.execute(query)}


def partner_rows(session: Session, include_archived: bool = False) -> list[dict[str, Any]]:
    counts = _subscriber_counts(session)
    rows = []
    for p in session.scalars(select(Partner).order_by(Partner.slug)):
        if p.archived_at is not None and not include_archived:
            continue
        live_lists = [lst for lst in p.lists if lst.archived_at is None]
        rows.append(
            {
                "id": p.slug,
                "name": p.name,
                "categories": p.categories,
                "timezone": p.timezone,
                "provider": p.provider_kind,
                "lists": len(live_lists),
                "promotions": sum(1 for x in p.promotions if x.archived_at is None),
                "subscribers": sum(counts.get(lst.id, 0) for lst in live_lists),
                "archived": p.archived_at is not None,
            }
        )
    return rows


def list_rows(
    session: Session, partner: str | None = None, include_archived: bool = False
) -> list[dict[str, Any]]:
    counts = _subscriber_counts(session)
    query = select(MailingList).join(Partner).order_by(Partner.slug, MailingList.slug)
    if partner:
        query = query.where(Partner.slug == partner)
    rows = []
    for lst in session.scalars(query):
        if lst.archived_at is not None and not include_archived:
            continue
        rows.append(
            {
                "id": lst.slug,
                "partner": lst.partner.slug,
                "name": lst.name,
                "niches": lst.niches,
                "subscribers": counts.get(lst.id, 0),
                "max_sends_per_week": lst.max_sends_per_week,
                "send_days": lst.send_days,
                "send_hour": lst.send_hour,
                "digest": lst.digest,
                "archived": lst.archived_at is not None,
            }
        )
    return rows


def promotion_rows(
    session: Session, partner: str | None = None, include_archived: bool = False
) -> list[dict[str, Any]]:
    query = select(Promotion).join(Partner).order_by(Promotion.window_start, Promotion.slug)
    if partner:
        query = query.where(Partner.slug == partner)
    rows = []
    for promo in session.scalars(query):
        if promo.archived_at is not None and not include_archived:
            continue
        rows.append(
            {
                "id": promo.slug,
                "partner": promo.partner.slug,
                "subject": promo.subject,
                "window_start": promo.window_start.isoformat(),
                "window_end": promo.window_end.isoformat(),
                "niches": promo.niches,
                "mailings_wanted": promo.mailings_wanted,
                "archived": promo.archived_at is not None,
            }
        )
    return rows
