"""Benchmark: the weekly statements of 2,000 partners with a year of history, on PostgreSQL.

A scratch schema gets 2,000 partners (one list and one promotion each) and 52 weeks of
mailings between them (one sent per partner and week, each measured in the ledger: an
``expected`` and a ``pending`` entry), about 104,000 mailings and 208,000 ledger entries. Then
the week's statements are built (:func:`jvmail.reports.build.build_statements`, one query per
section for the whole hub), rendered (HTML, text, two charts each) and sent once each into an
outbox folder, as `jvmail report --send` does. Printed: seconds per stage, the database
queries the build made, and the floor: the same statements rendered from data already in memory
(no database, no sending).

Target: all built and queued in under 60 s, with one query per section, not per partner.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import random
import tempfile
import time
import uuid
from pathlib import Path
from urllib.parse import quote

from sqlalchemy import create_engine, event, insert, text

from jvmail.db import make_engine, make_sessionmaker, upgrade
from jvmail.db.engine import normalize_url
from jvmail.db.models import (
    HubRecord,
    LedgerEntry,
    LedgerKind,
    Mailing,
    MailingList,
    MailingStatus,
    Partner,
    Promotion,
)
from jvmail.reports.build import build_statements
from jvmail.reports.render import render_statement
from jvmail.reports.send import OutboxCourier, send_statements

PG = os.environ.get("JVMAIL_TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test")
MONDAY = dt.date(2026, 11, 23)


def _seed(url: str, partners: int, weeks: int) -> None:
    engine = make_engine(url)
    upgrade(engine)
    rng = random.Random(7)
    with engine.begin() as conn:
        conn.execute(
            insert(HubRecord).values(
                id=1,
                name="Bench hub",
                base_url="https://jv.example",
                timezone="UTC",
                value_metric="clicks",
                report_day="mon",
                credit_window_days=14,
                scheduler={},
                link_keys=["ab" * 32],
            )
        )
        conn.execute(
            insert(Partner),
            [
                {
                    "id": p,
                    "slug": f"p{p}",
                    "name": f"Partner {p}",
                    "contact_email": f"team@p{p}.example",
                    "postal_address": "1 Example Street",
                    "timezone": rng.choice(["UTC", "Europe/Berlin", "America/New_York"]),
                    "categories": ["web"],
                    "wants_to_meet": [],
                    "provider_kind": "outbox",
                    "provider": {"kind": "outbox"},
                }
                for p in range(1, partners + 1)
            ],
        )
        conn.execute(
            insert(MailingList),
            [
                {
                    "id": p,
                    "slug": f"l{p}",
                    "partner_id": p,
                    "name": f"List {p}",
                    "subscribers_path": "x.csv",
                    "niches": ["web"],
                    "max_sends_per_week": 2,
                    "send_days": ["tue"],
                    "send_hour": 9,
                    "blackout_dates": [],
                    "click_rate": 0.02,
                    "digest": False,
                }
                for p in range(1, partners + 1)
            ],
        )
        conn.execute(
            insert(Promotion),
            [
                {
                    "id": p,
                    "slug": f"o{p}",
                    "partner_id": p,
                    "subject": f"Offer {p}",
                    "html": "<p>x</p>",
                    "text": "x",
                    "landing_urls": ["https://x.example/"],
                    "window_start": MONDAY - dt.timedelta(weeks=weeks),
                    "window_end": MONDAY + dt.timedelta(weeks=2),
                    "niches": ["web"],
                    "mailings_wanted": 2,
                    "exclude_partners": [],
                }
                for p in range(1, partners + 1)
            ],
        )
        mailings, entries = [], []
        for w in range(weeks):
            day = dt.datetime.combine(MONDAY - dt.timedelta(weeks=w), dt.time(9), dt.UTC)
            for p in range(1, partners + 1):
                owner = rng.randrange(1, partners + 1)
                owner = owner if owner != p else owner % partners + 1
                mid = len(mailings) + 1
                mailings.append(
                    {
                        "id": mid,
                        "promotion_id": owner,
                        "sender_id": p,
                        "list_id": p,
                        "scheduled_at": day + dt.timedelta(days=rng.randrange(7)),
                        "status": MailingStatus.SENT,
                        "expected_value": 20.0,
                    }
                )
                measured = float(rng.randrange(5, 40))
                for kind, value in ((LedgerKind.EXPECTED, 20.0), (LedgerKind.PENDING, measured)):
                    entries.append(
                        {
                            "mailing_id": mid,
                            "giver_id": p,
                            "receiver_id": owner,
                            "kind": kind,
                            "value": value,
                        }
                    )
        conn.execute(insert(Mailing), mailings)
        conn.execute(insert(LedgerEntry), entries)
    engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--partners", type=int, default=2000)
    parser.add_argument("--weeks", type=int, default=52)
    args = parser.parse_args()
    schema = f"bench_{uuid.uuid4().hex[:8]}"
    admin = create_engine(normalize_url(PG), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f"CREATE SCHEMA {schema}"))
    url = f"{PG}{'&' if '?' in PG else '?'}options={quote(f'-csearch_path={schema}')}"
    try:
        started = time.perf_counter()
        _seed(url, args.partners, args.weeks)
        print(
            f"seeded {args.partners:,} partners, {args.weeks} weeks in "
            f"{time.perf_counter() - started:.1f} s"
        )
        engine = make_engine(url)
        queries = [0]
        event.listen(
            engine, "before_cursor_execute", lambda *a: queries.__setitem__(0, queries[0] + 1)
        )
        with make_sessionmaker(engine)() as session:
            t0 = time.perf_counter()
            statements = build_statements(session, MONDAY)
            built = time.perf_counter() - t0
            build_queries = queries[0]
            t1 = time.perf_counter()
            rendered = [render_statement(s) for s in statements]
            floor = time.perf_counter() - t1
            with tempfile.TemporaryDirectory() as out:
                t2 = time.perf_counter()
                sent = send_statements(session, MONDAY, None, OutboxCourier(Path(out)))
                queued = time.perf_counter() - t2
        engine.dispose()
        total = built + queued
        print(f"built {len(statements):,} statements in {built:.1f} s with {build_queries} queries")
        print(f"built, rendered and queued again (send_statements) {sent:,} in {queued:.1f} s")
        print(f"floor: rendering the {len(rendered):,} built statements alone: {floor:.1f} s")
        print(
            f"target: built and queued in under 60 s: {'met' if queued < 60 else 'MISSED'} "
            f"({queued:.1f} s; ratio to the floor {queued / floor:.2f}x); build and send "
            f"together {total:.1f} s"
        )
        print(f"machine: {os.cpu_count()} cores; {dt.date.today()}")
    finally:
        with admin.connect() as conn:
            conn.execute(text(f"DROP SCHEMA {schema} CASCADE"))
        admin.dispose()


if __name__ == "__main__":
    main()
