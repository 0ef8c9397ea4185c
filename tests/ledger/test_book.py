"""The ledger on SQLite and PostgreSQL: entries appended, balances derived, `jvmail ledger`."""

from __future__ import annotations

import datetime as dt
import json

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from jvmail.cli import main
from jvmail.db.models import LedgerEntry, LedgerKind, Mailing, MailingList, Partner, Promotion
from jvmail.ledger import Transfer, View, finalize_due, post, summarize

K = LedgerKind


def _partner(session: Session, slug: str) -> tuple[Partner, MailingList, Promotion]:
    partner = Partner(
        slug=slug,
        name=slug.title(),
        contact_email=f"{slug}@example.com",
        postal_address="1 Ledger Lane, Springfield",
        timezone="UTC",
        categories=["x"],
        wants_to_meet=[],
        provider_kind="outbox",
        provider={},
    )
    lst = MailingList(
        slug=f"{slug}-list",
        partner=partner,
        name="L",
        subscribers_path="x.csv",
        niches=["x"],
        max_sends_per_week=1,
        send_days=["tue"],
        send_hour=9,
        blackout_dates=[],
        click_rate=0.02,
        digest=False,
    )
    promo = Promotion(
        slug=f"{slug}-offer",
        partner=partner,
        subject="S",
        html="<p>x</p>",
        text="x",
        landing_urls=["https://example.com"],
        window_start=dt.date(2026, 11, 30),
        window_end=dt.date(2026, 12, 6),
        niches=["x"],
        mailings_wanted=1,
        exclude_partners=[],
    )
    session.add_all([partner, lst, promo])
    session.flush()
    return partner, lst, promo


def _mailing(
    session: Session, sender: tuple[Partner, MailingList, Promotion], promo: Promotion
) -> Mailing:
    mailing = Mailing(
        promotion_id=promo.id,
        sender_id=sender[0].id,
        list_id=sender[1].id,
        scheduled_at=dt.datetime(2026, 12, 1, 9, tzinfo=dt.UTC),
    )
    session.add(mailing)
    session.flush()
    return mailing


@pytest.fixture
def triangle(session: Session) -> Session:
    """a mails for b, b for c, c for a; a's second mailing for c is missed."""
    a, b, c = (_partner(session, s) for s in ("a", "b", "c"))
    for giver, receiver, stages in [
        (a, b, [(K.EXPECTED, 30.0), (K.PENDING, 24.0)]),
        (b, c, [(K.EXPECTED, 20.0), (K.PENDING, 24.0), (K.FINAL, 23.0), (K.CORRECTION, 1.0)]),
        (c, a, [(K.EXPECTED, 25.0), (K.PENDING, 24.0)]),
        (a, c, [(K.EXPECTED, 10.0), (K.MISSED, 0.0)]),
        (b, a, [(K.EXPECTED, 7.0)]),
    ]:
        mailing = _mailing(session, giver, receiver[2])
        for kind, value in stages:
            post(session, mailing=mailing, giver=giver[0], kind=kind, value=value)
    session.commit()
    return session


def test_a_cycle_nets_to_zero_and_entries_are_only_appended(triangle: Session) -> None:
    summary = summarize(triangle, View.MEASURED)
    assert {b.partner: round(b.net, 6) for b in summary.partners} == {"a": 0.0, "b": 0.0, "c": 0.0}
    assert summary.transfers == []
    assert {b.partner: (b.kept, b.due) for b in summary.partners} == {
        "a": (1, 2),
        "b": (1, 1),
        "c": (1, 1),
    }
    assert triangle.scalar(select(func.count()).select_from(LedgerEntry)) == 11


def test_projected_view_counts_planned_mailings(triangle: Session) -> None:
    summary = summarize(triangle, View.PROJECTED)
    assert {b.partner: b.net for b in summary.partners} == {"a": -7.0, "b": 7.0, "c": 0.0}
    assert summary.transfers == [Transfer("a", "b", 7.0)]


def test_cli_ledger_json_matches_the_entries(
    triangle: Session, db_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    main(["--db", db_url, "ledger", "--view", "projected", "--json"])
    data = json.loads(capsys.readouterr().out)
    nets = {row["partner"]: row["net"] for row in data["partners"]}
    entries = triangle.execute(select(LedgerEntry.kind, LedgerEntry.value)).all()
    assert sum(v for k, v in entries if k is K.CORRECTION) == 1.0
    assert nets == {"a": -7.0, "b": 7.0, "c": 0.0}
    assert data["owes"] == [{"debtor": "a", "creditor": "b", "value": 7.0}]
    main(["--db", db_url, "ledger", "--partner", "a", "--view", "projected", "--json"])
    mine = json.loads(capsys.readouterr().out)
    # Bilaterally b owes a 17 and a owes c 24; netted through the hub, a owes b 7 and that is all.
    assert {(p["with"], p["net"]) for p in mine["pairs"]} == {("b", 17.0), ("c", -24.0)}
    assert mine["owes"] == data["owes"]


def test_finalize_after_the_credit_window_changes_no_balance(triangle: Session) -> None:
    before = summarize(triangle, View.MEASURED)
    too_early = dt.datetime(2026, 12, 10, tzinfo=dt.UTC)
    assert finalize_due(triangle, too_early, window_days=14) == 0
    later = dt.datetime(2026, 12, 20, tzinfo=dt.UTC)
    assert finalize_due(triangle, later, window_days=14) == 2  # a->b and c->a; b->c was final
    triangle.commit()
    assert finalize_due(triangle, later, window_days=14) == 0
    finals = triangle.scalars(
        select(LedgerEntry.value).where(LedgerEntry.kind == K.FINAL).order_by(LedgerEntry.id)
    ).all()
    assert finals == [23.0, 24.0, 24.0]
    assert summarize(triangle, View.MEASURED) == before
