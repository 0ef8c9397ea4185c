"""A small registry built row by row: two partners, lists, subscribers and a due mailing; and
the accounts' limiters, in memory and on a real Redis."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterator
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

import pytest
import redis
from sqlalchemy import text
from sqlalchemy.orm import Session

from jvmail.db.models import (
    HubRecord,
    Mailing,
    MailingList,
    MailingStatus,
    Partner,
    Promotion,
    Subscriber,
    SubscriberStatus,
)
from jvmail.dispatch.limits import MemoryLimiter, RedisLimiter
from tests.conftest import REDIS_URL, unavailable

WHEN = dt.datetime(2026, 12, 1, 9, tzinfo=dt.UTC)
LEASE = dt.timedelta(minutes=5)
GONE = dt.timedelta(seconds=-1)  # a lease that has already run out


@dataclass
class Hub:
    sender: Partner
    owner: Partner
    lists: list[MailingList]
    promotion: Promotion
    mailing: Mailing


def partner(session: Session, slug: str) -> Partner:
    row = Partner(
        slug=slug,
        name=slug.title(),
        contact_email=f"team@{slug}.example",
        postal_address="1 Example Street, Springfield",
        timezone="UTC",
        categories=["web"],
        wants_to_meet=[],
        provider_kind="outbox",
        provider={"kind": "outbox"},
    )
    session.add(row)
    session.flush()
    return row


def mailing_list(session: Session, owner: Partner, slug: str, emails: list[str]) -> MailingList:
    row = MailingList(
        slug=slug,
        partner_id=owner.id,
        name=slug.title(),
        subscribers_path="x.csv",
        niches=["web"],
        max_sends_per_week=2,
        send_days=["tue"],
        send_hour=9,
        blackout_dates=[],
        click_rate=0.02,
        digest=False,
    )
    session.add(row)
    session.flush()
    session.add_all(
        Subscriber(list_id=row.id, email=e, first_name=e.split("@")[0].title(), attributes={})
        for e in emails
    )
    session.flush()
    return row


def mailing(session: Session, promotion: Promotion, lst: MailingList) -> Mailing:
    row = Mailing(
        promotion_id=promotion.id,
        sender_id=lst.partner_id,
        list_id=lst.id,
        scheduled_at=WHEN,
        status=MailingStatus.PLANNED,
        expected_value=10.0,
    )
    session.add(row)
    session.flush()
    return row


@pytest.fixture
def hub(session: Session) -> Hub:
    return build_hub(session)


def hub_record() -> HubRecord:
    """The hub's settings row the tests use: its link key is "ab" * 32."""
    return HubRecord(
        id=1,
        name="Test hub",
        base_url="https://jv.example",
        timezone="UTC",
        value_metric="clicks",
        report_day="mon",
        credit_window_days=14,
        scheduler={},
        link_keys=["ab" * 32],
    )


def build_hub(session: Session) -> Hub:
    """Sender mails owner's promotion to its main list (25 readers); its extra list shares five
    of them and has one of its own."""
    session.add(hub_record())
    sender, owner = partner(session, "sender"), partner(session, "owner")
    emails = [f"reader{n}@mail.example" for n in range(25)]
    main = mailing_list(session, sender, "sender-main", emails)
    extra = mailing_list(session, sender, "sender-extra", [*emails[:5], "solo@mail.example"])
    promotion = Promotion(
        slug="owner-offer",
        partner_id=owner.id,
        subject="Hello {{ first_name }}",
        html="<p>Hi {{ first_name }}, <a href='https://owner.example/offer'>see it</a></p>",
        text="Hi {{ first_name }}, see https://owner.example/offer",
        landing_urls=["https://owner.example/offer"],
        window_start=WHEN.date(),
        window_end=WHEN.date() + dt.timedelta(days=14),
        niches=["web"],
        mailings_wanted=2,
        exclude_partners=[],
    )
    session.add(promotion)
    session.flush()
    row = mailing(session, promotion, main)
    session.commit()
    return Hub(sender, owner, [main, extra], promotion, row)


def second_mailing(session: Session, hub: Hub) -> Mailing:
    """The same sender mails another promotion to its other list (6 readers)."""
    other = Promotion(
        slug="owner-second-offer",
        partner_id=hub.owner.id,
        subject="Again {{ first_name }}",
        html="<p>Hi {{ first_name }}, <a href='https://owner.example/more'>more</a></p>",
        text="Hi {{ first_name }}, https://owner.example/more",
        landing_urls=["https://owner.example/more"],
        window_start=hub.promotion.window_start,
        window_end=hub.promotion.window_end,
        niches=["web"],
        mailings_wanted=1,
        exclude_partners=[],
    )
    session.add(other)
    session.flush()
    row = mailing(session, other, hub.lists[1])
    session.commit()
    return row


def set_status(session: Session, lst: MailingList, email: str, status: SubscriberStatus) -> None:
    sub = session.query(Subscriber).filter_by(list_id=lst.id, email=email).one()
    sub.status = status


@dataclass
class Limiters:
    """Two handles on the same accounts' limits: one limiter shared by threads (memory), or two
    clients of one Redis namespace, as two worker processes have."""

    one: MemoryLimiter | RedisLimiter
    other: MemoryLimiter | RedisLimiter


@pytest.fixture(params=["memory", "redis"])
def limiters(request: pytest.FixtureRequest) -> Iterator[Limiters]:
    if request.param == "memory":
        shared = MemoryLimiter()
        yield Limiters(shared, shared)
        return
    clients = [redis.Redis.from_url(REDIS_URL) for _ in range(2)]
    try:
        clients[0].ping()
    except redis.RedisError as exc:
        unavailable("Redis", exc)
    namespace = f"jvmail-test-{uuid.uuid4().hex[:8]}"
    yield Limiters(*(RedisLimiter(c, namespace=namespace) for c in clients))
    for key in clients[0].scan_iter(f"{namespace}:*"):
        clients[0].delete(key)
    for c in clients:
        c.close()


def wait_until_blocked(watch: Session, pid: int, work: Future[Any], what: str) -> None:
    """Return once the PostgreSQL backend ``pid`` waits for a lock; fail with ``what`` if
    ``work`` (what that backend runs) finishes first, never having waited. ``watch`` is a
    session of its own, rolled back between reads for a fresh view of pg_stat_activity."""
    query = text("SELECT wait_event_type = 'Lock' FROM pg_stat_activity WHERE pid = :pid")
    while not watch.scalar(query, {"pid": pid}):
        assert not work.done(), what
        watch.rollback()
