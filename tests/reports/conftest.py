"""A small hub with a week of mailings, measured: three partners in three timezones."""

from __future__ import annotations

import datetime as dt

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from jvmail.db.models import (
    Delivery,
    DeliveryStatus,
    EventType,
    LedgerKind,
    Mailing,
    MailingList,
    MailingStatus,
    Partner,
    Promotion,
    Subscriber,
    TrackingEvent,
)
from jvmail.ledger.book import post
from tests.dispatch.conftest import hub_record, mailing_list, partner

# Europe leaves summer time on Sunday 2026-10-25 (01:00 UTC): week 2026-W43 ends that day.
MONDAY = dt.date(2026, 10, 19)
CANARY = "canary-{}@secret.example"


def _promotion(session: Session, owner: Partner, slug: str) -> Promotion:
    row = Promotion(
        slug=slug,
        partner_id=owner.id,
        subject=f"Offer of {owner.slug}",
        html="<p>x</p>",
        text="x",
        landing_urls=["https://owner.example/"],
        window_start=MONDAY,
        window_end=MONDAY + dt.timedelta(days=30),
        niches=["web"],
        mailings_wanted=3,
        exclude_partners=[],
    )
    session.add(row)
    session.flush()
    return row


def _mailing(
    session: Session, promo: Promotion, lst: MailingList, at: dt.datetime, clicks: int
) -> Mailing:
    """A sent mailing to every reader of ``lst``: ``clicks`` of them clicked (plus one machine
    click), one bounced; measured in the ledger at its unique human clicks."""
    row = Mailing(
        promotion_id=promo.id,
        sender_id=lst.partner_id,
        list_id=lst.id,
        scheduled_at=at,
        status=MailingStatus.SENT,
        expected_value=5.0,
    )
    session.add(row)
    session.flush()
    readers = session.scalars(select(Subscriber.id).where(Subscriber.list_id == lst.id)).all()
    deliveries = [
        Delivery(mailing_id=row.id, subscriber_id=s, status=DeliveryStatus.ACCEPTED)
        for s in readers
    ]
    session.add_all(deliveries)
    session.flush()
    events = [
        TrackingEvent(
            delivery_id=d.id,
            mailing_id=row.id,
            type=EventType.CLICKED,
            provider="jvmail",
            provider_event_id=f"{row.id}-{d.id}-{n}",
            occurred_at=at,
            raw={},
        )
        for d in deliveries[:clicks]
        for n in range(2)  # two clicks each: one unique
    ]
    machine = deliveries[clicks]
    events.append(
        TrackingEvent(
            delivery_id=machine.id,
            mailing_id=row.id,
            type=EventType.CLICKED,
            provider="jvmail",
            provider_event_id=f"{row.id}-m",
            human=False,
            occurred_at=at,
            raw={},
        )
    )
    bounced = deliveries[-1]
    events.append(
        TrackingEvent(
            delivery_id=bounced.id,
            mailing_id=row.id,
            type=EventType.BOUNCED,
            provider="sendgrid",
            provider_event_id=f"{row.id}-b",
            bounce="hard",
            occurred_at=at,
            raw={},
        )
    )
    session.add_all(events)
    sender = session.get(Partner, lst.partner_id)
    assert sender is not None
    post(session, mailing=row, giver=sender, kind=LedgerKind.EXPECTED, value=5.0)
    post(session, mailing=row, giver=sender, kind=LedgerKind.PENDING, value=float(clicks))
    return row


@pytest.fixture
def hub(session: Session) -> dict[str, Partner]:
    session.add(hub_record())
    people = {slug: partner(session, slug) for slug in ("ana", "ben", "cho")}
    people["ben"].timezone = "Europe/Berlin"
    people["cho"].timezone = "America/New_York"
    lists = {
        slug: mailing_list(
            session, p, f"{slug}-list", [CANARY.format(f"{slug}{n}") for n in range(12)]
        )
        for slug, p in people.items()
    }
    promos = {slug: _promotion(session, p, f"{slug}-offer") for slug, p in people.items()}
    utc = dt.UTC
    # ana mails ben's offer on Wednesday; ben mails cho's; cho mails ana's twice.
    _mailing(session, promos["ben"], lists["ana"], dt.datetime(2026, 10, 21, 9, tzinfo=utc), 4)
    _mailing(session, promos["cho"], lists["ben"], dt.datetime(2026, 10, 22, 9, tzinfo=utc), 3)
    _mailing(session, promos["ana"], lists["cho"], dt.datetime(2026, 10, 20, 14, tzinfo=utc), 6)
    # Sunday 23:30 UTC: still Sunday in New York, already Monday (next week) in Berlin.
    late = dt.datetime(2026, 10, 25, 23, 30, tzinfo=utc)
    _mailing(session, promos["ana"], lists["ben"], late, 2)
    session.commit()
    return people
