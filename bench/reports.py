"""Benchmark: the weekly statements of 2,000 partners with a year of history, on PostgreSQL.

A scratch schema gets 2,000 partners (one list and one promotion each) and 52 weeks of
mailings between them (one sent per partner and week, each measured in the ledger: an
``expected`` and a ``pending`` entry), about 104,000 mailings and 208,000 ledger entries. The
week's mailings also have their deliveries and human clicks (one click per measured click), so
a partner that was mailed for this week gets both charts, the others the history chart alone.
Then the week's statements are built (:func:`jvmail.reports.build.build_statements`, one query
per section for the whole hub), rendered (HTML, text, the charts) and sent once each into an
outbox folder, as `jvmail report --send` does. Printed: seconds per stage, the database queries
the build made, the load average, and the floor: the same statements rendered from data already
in memory (no database, no sending), in as many processes as `send_statements` uses, and one
statement's time in a single process.

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
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote

from sqlalchemy import Connection, create_engine, event, insert, text

from jvmail.db import make_engine, make_sessionmaker, upgrade
from jvmail.db.engine import normalize_url
from jvmail.db.models import (
    Delivery,
    DeliveryStatus,
    EventType,
    HubRecord,
    LedgerEntry,
    LedgerKind,
    Mailing,
    MailingList,
    MailingStatus,
    Partner,
    Promotion,
    Subscriber,
    TrackingEvent,
)
from jvmail.reports.build import build_statements
from jvmail.reports.model import Statement
from jvmail.reports.render import processes_for, render_statements
from jvmail.reports.send import hub_provider, send_statements

PG = os.environ.get("JVMAIL_TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test")
MONDAY = dt.date(2026, 11, 23)
T = TypeVar("T")
READERS = 45  # subscribers per list: more than a week's mailing is measured at (5 to 39 clicks)


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
        mailings: list[dict[str, Any]] = []
        entries: list[dict[str, Any]] = []
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
        _seed_clicks(conn, mailings[:partners], entries[1 : 2 * partners : 2])
    engine.dispose()


def _seed_clicks(
    conn: Connection, mailings: list[dict[str, Any]], pending: list[dict[str, Any]]
) -> None:
    """This week's mailings: ``READERS`` subscribers per list, a delivery to each, and one human
    click per measured click of the mailing."""
    conn.execute(
        insert(Subscriber),
        [
            {"id": (m["list_id"] - 1) * READERS + n + 1, "list_id": m["list_id"],
             "email": f"r{n}@l{m['list_id']}.example", "attributes": {}}
            for m in mailings
            for n in range(READERS)
        ],
    )  # fmt: skip
    deliveries: list[dict[str, Any]] = []
    clicks: list[dict[str, Any]] = []
    for m, entry in zip(mailings, pending, strict=True):
        for n in range(READERS):
            delivery = len(deliveries) + 1
            deliveries.append(
                {"id": delivery, "mailing_id": m["id"], "status": DeliveryStatus.ACCEPTED,
                 "subscriber_id": (m["list_id"] - 1) * READERS + n + 1}
            )  # fmt: skip
            if n < entry["value"]:
                clicks.append(
                    {"delivery_id": delivery, "mailing_id": m["id"], "type": EventType.CLICKED,
                     "provider": "jvmail", "provider_event_id": f"c{delivery}",
                     "occurred_at": m["scheduled_at"], "raw": {}}
                )  # fmt: skip
    conn.execute(insert(Delivery), deliveries)
    conn.execute(insert(TrackingEvent), clicks)


def _timed(work: Callable[[], T]) -> tuple[float, float, T]:
    """``work()``: wall seconds, CPU seconds of this process (not of its workers), result."""
    wall, cpu = time.perf_counter(), time.process_time()
    result = work()
    return time.perf_counter() - wall, time.process_time() - cpu, result


def _charts(statements: list[Statement], processes: int) -> int:
    """Render ``statements`` in ``processes`` processes; how many charts they have."""
    return sum(len(r.images) for _, r in render_statements(statements, processes=processes))


def _load() -> str:
    return " ".join(f"{n:.2f}" for n in os.getloadavg())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--partners", type=int, default=2000)
    parser.add_argument("--weeks", type=int, default=52)
    parser.add_argument("--sample", type=int, default=100, help="statements timed in one process")
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
        print(f"load average before: {_load()}")
        with make_sessionmaker(engine)() as session:
            built, built_cpu, statements = _timed(lambda: build_statements(session, MONDAY))
            build_queries = queries[0]
            processes = processes_for(len(statements))
            floor, _, charts = _timed(lambda: _charts(statements, processes))
            sample = statements[: args.sample]
            one, one_cpu, _ = _timed(lambda: _charts(sample, 1))
            hub = session.get(HubRecord, 1)
            assert hub is not None, "seeded"
            with tempfile.TemporaryDirectory() as out:
                provider = hub_provider(hub, outbox=Path(out))
                queued, queued_cpu, done = _timed(
                    lambda: send_statements(session, MONDAY, None, provider)
                )
        engine.dispose()
        print(f"load average after: {_load()}")
        print(
            f"built {len(statements):,} statements in {built:.1f} s ({built_cpu:.1f} s CPU) "
            f"with {build_queries} queries"
        )
        print(
            f"built, rendered and queued again (send_statements) {len(done.sent):,} in "
            f"{queued:.1f} s ({queued_cpu:.1f} s CPU in this process)"
        )
        print(
            f"floor: rendering the {len(statements):,} built statements ({charts:,} charts) "
            f"alone in {processes} process(es): {floor:.1f} s; in one process "
            f"{1000 * one / len(sample):.0f} ms a statement ({1000 * one_cpu / len(sample):.0f} ms "
            "CPU)"
        )
        print(
            f"target: built and queued in under 60 s: {'met' if queued < 60 else 'MISSED'} "
            f"({queued:.1f} s; ratio to the floor {queued / floor:.2f}x)"
        )
        print(f"machine: {os.cpu_count()} cores; {dt.date.today()}")
    finally:
        with admin.connect() as conn:
            conn.execute(text(f"DROP SCHEMA {schema} CASCADE"))
        admin.dispose()


if __name__ == "__main__":
    main()
