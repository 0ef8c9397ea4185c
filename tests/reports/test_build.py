"""Statement numbers equal those computed independently from the ledger and delivery rows, on
SQLite and PostgreSQL; weeks are the partner's own, across a daylight-saving change."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from jvmail.db.models import (
    Delivery,
    DeliveryStatus,
    LedgerEntry,
    LedgerKind,
    Mailing,
    Partner,
)
from jvmail.reports.build import build_statements, build_summary
from tests.reports.conftest import MONDAY


def _independent(session: Session, slug: str) -> tuple[float, float]:
    """Given and received, all time, straight from the ledger rows (latest pending wins)."""
    partner_id = session.scalar(select(Partner.id).where(Partner.slug == slug))
    latest: dict[int, LedgerEntry] = {}
    for e in session.scalars(
        select(LedgerEntry).where(LedgerEntry.kind == LedgerKind.PENDING).order_by(LedgerEntry.id)
    ):
        assert e.mailing_id is not None
        latest[e.mailing_id] = e
    given = sum(e.value for e in latest.values() if e.giver_id == partner_id)
    received = sum(e.value for e in latest.values() if e.receiver_id == partner_id)
    return given, received


def test_numbers_match_the_ledger_and_deliveries(session: Session, hub: dict[str, Partner]) -> None:
    statements = {s.partner_slug: s for s in build_statements(session, MONDAY)}
    assert set(statements) == {"ana", "ben", "cho"}
    for slug, st in statements.items():
        assert (st.given_total, st.received_total) == _independent(session, slug)
        assert st.net == st.given_total - st.received_total
    ana = statements["ana"]
    (line,) = ana.gave
    mailing_id = session.scalar(select(Mailing.id).where(Mailing.sender_id == hub["ana"].id))
    accepted = session.scalar(
        select(func.count()).where(
            Delivery.mailing_id == mailing_id, Delivery.status == DeliveryStatus.ACCEPTED
        )
    )
    assert line.delivered == accepted - 1  # less the bounce
    assert line.human_clicks == 4  # unique, human only
    assert line.owner == "Ben"
    assert sorted(m.human_clicks for m in ana.received) == [2, 6]
    assert ana.received_week == 8.0
    assert ana.clicks_by_partner == {"Cho": 6, "Ben": 2}
    assert [(p.partner, p.net) for p in ana.pairs] == [("Cho", -6.0), ("Ben", 2.0)]
    assert ana.allies[0].partner == "Cho"
    assert ana.taker is True  # received 8, gave 4
    assert sum(p.net for p in ana.pays) == ana.net  # netting settles exactly its net
    assert ana.history[-1].given == ana.given_total
    assert ana.history[-1].received == ana.received_total
    assert (ana.kept, ana.due) == (1, 1)
    assert (ana.partners_kept, ana.partners_due) == (2, 2)


def test_the_week_is_the_partners_own_across_a_daylight_saving_change(
    session: Session, hub: dict[str, Partner]
) -> None:
    statements = {s.partner_slug: s for s in build_statements(session, MONDAY)}
    # Ben mailed Ana's offer on Sunday 23:30 UTC: in Ana's week (UTC), on Sunday ...
    assert dt.date(2026, 10, 25) in [m.day for m in statements["ana"].received]
    # ... but for Ben, in Berlin, it went out on Monday: next week's statement.
    assert all(m.day <= dt.date(2026, 10, 25) for m in statements["ben"].gave)
    assert len(statements["ben"].gave) == 1
    following = {s.partner_slug: s for s in build_statements(session, MONDAY + dt.timedelta(7))}
    assert [m.day for m in following["ben"].gave] == [dt.date(2026, 10, 26)]


def test_a_partner_with_no_activity_gets_a_quiet_statement(
    session: Session, hub: dict[str, Partner]
) -> None:
    (st,) = build_statements(session, MONDAY + dt.timedelta(weeks=5), ["cho"])
    assert st.quiet
    assert st.gave == []
    assert st.received == []
    assert st.given_total == _independent(session, "cho")[0]


def test_no_statement_or_summary_carries_a_subscriber_address(
    session: Session, hub: dict[str, Partner]
) -> None:
    everything = [dataclasses.asdict(s) for s in build_statements(session, MONDAY)]
    everything.append(dataclasses.asdict(build_summary(session, MONDAY)))
    text = json.dumps(everything, default=str)
    assert "@" not in text
    assert "secret.example" not in text


def test_the_summary_counts_the_week(session: Session, hub: dict[str, Partner]) -> None:
    summary = build_summary(session, MONDAY)
    assert summary.mailings == 4
    assert summary.human_clicks == 4 + 3 + 6 + 2
    assert summary.delivered == 4 * 11
    health = {p.partner: (p.sent, p.bounces) for p in summary.providers}
    assert health == {"Ana": (12, 1), "Ben": (24, 2), "Cho": (12, 1)}
    assert all(p.warning.startswith("bounces above 5%") for p in summary.providers)
