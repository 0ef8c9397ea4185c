"""Benchmark: import a 1,000,000-row subscriber CSV into SQLite and PostgreSQL.

Prints rows/s and peak RSS for jvmail's import (streaming, validation, staging, merge) and for
the floor: the same CSV rows read with the csv module and written through the driver's bare
executemany (SQLite) or COPY (PostgreSQL) into the same table, with no validation or merge.
Each measurement runs in a fresh process so peak RSS is its own.

Usage:
    python bench/import_subscribers.py [--rows N] [--pg URL] [--only sqlite|postgresql]
Targets (issue): >= 100,000 rows/s on both, peak RSS < 300 MB, within 3x of the floor.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import resource
import subprocess
import sys
import time
import uuid
from pathlib import Path
from urllib.parse import quote

from sqlalchemy import create_engine, text

from jvmail.db import make_engine, upgrade
from jvmail.db.engine import normalize_url
from jvmail.registry import import_subscribers

DATA = Path(__file__).parent / ".data"
DEFAULT_PG = os.environ.get("JVMAIL_TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1/test")
_CITIES = ("London", "Leeds", "Denver", "Austin", "Sydney", "Berlin", "Lyon", "Porto")
_NAMES = ("Ada", "Ben", "Chloe", "Dev", "Elif", "Farah", "Gus", "Hana", "Ivo", "Jade")


def make_csv(rows: int) -> Path:
    path = DATA / f"subscribers-{rows}.csv"
    if path.exists():
        return path
    DATA.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8", newline="") as out:
        out.write("email,first_name,city\n")
        for n in range(rows):
            out.write(f"user.{n}@mail{n % 97}.example.com,{_NAMES[n % 10]},{_CITIES[n % 8]}\n")
    return path


def _setup(url: str) -> tuple[int, int]:
    """A fresh schema with one partner and one list; returns (partner id, list id)."""
    engine = make_engine(url)
    upgrade(engine)
    with engine.begin() as conn:
        partner = conn.execute(
            text(
                "INSERT INTO partner (slug, name, contact_email, postal_address, timezone,"
                " categories, wants_to_meet, provider_kind, provider)"
                " VALUES ('p', 'P', 'p@example.com', '1 Bench Street', 'UTC', '[]', '[]',"
                " 'outbox', '{}') RETURNING id"
            )
        ).scalar_one()
        list_id = conn.execute(
            text(
                "INSERT INTO mailing_list (slug, partner_id, name, subscribers_path, niches,"
                " max_sends_per_week, send_days, send_hour, blackout_dates, click_rate, digest)"
                " VALUES ('l', :p, 'L', 'x.csv', '[]', 1, '[]', 9, '[]', 0.02, false)"
                " RETURNING id"
            ),
            {"p": partner},
        ).scalar_one()
    engine.dispose()
    return partner, list_id


def child(kind: str, url: str, csv_path: Path) -> dict[str, float]:
    partner_id, list_id = _setup(url)
    engine = make_engine(url)
    start = time.perf_counter()
    with engine.begin() as conn:
        if kind == "jvmail":
            result = import_subscribers(
                conn,
                list_id=list_id,
                list_slug="l",
                owner_id=partner_id,
                path=csv_path,
                label=csv_path.name,
            )
            rows = result.added
        else:
            rows = _floor(conn, list_id, csv_path)
    seconds = time.perf_counter() - start
    engine.dispose()
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"rows": rows, "seconds": seconds, "rows_per_s": rows / seconds, "peak_rss_mb": peak_mb}


def _floor(conn: object, list_id: int, csv_path: Path) -> int:
    dbapi = conn.connection.driver_connection  # type: ignore[attr-defined]
    cursor = dbapi.cursor()
    rows = 0
    with csv_path.open(encoding="utf-8", newline="") as f:
        reader = csv.reader(f)
        next(reader)
        if conn.dialect.name == "sqlite":  # type: ignore[attr-defined]
            sql = (
                "INSERT INTO subscriber (list_id, email, first_name, attributes, status, source,"
                " created_at, updated_at) VALUES (?, ?, ?, ?, 'subscribed', 'import',"
                " CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)"
            )
            batch: list[tuple[int, str, str, str]] = []
            for email, name, city in reader:
                batch.append((list_id, email, name, f'{{"city":"{city}"}}'))
                if len(batch) == 10_000:
                    cursor.executemany(sql, batch)
                    rows += len(batch)
                    batch = []
            cursor.executemany(sql, batch)
            rows += len(batch)
        else:
            copy_sql = (
                "COPY subscriber (list_id, email, first_name, attributes, status, source)"
                " FROM STDIN"
            )
            with cursor.copy(copy_sql) as copy:
                for email, name, city in reader:
                    copy.write_row(
                        (list_id, email, name, f'{{"city":"{city}"}}', "subscribed", "import")
                    )
                    rows += 1
    return rows


def _fresh_url(backend: str, pg: str) -> tuple[str, str | None]:
    if backend == "sqlite":
        path = DATA / f"bench-{uuid.uuid4().hex[:8]}.db"
        return f"sqlite:///{path}", None
    schema = f"bench_{uuid.uuid4().hex[:8]}"
    admin = create_engine(normalize_url(pg), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f"CREATE SCHEMA {schema}"))
    admin.dispose()
    sep = "&" if "?" in pg else "?"
    return f"{pg}{sep}options={quote(f'-csearch_path={schema}')}", schema


def _cleanup(url: str, schema: str | None, pg: str) -> None:
    if schema is None:
        path = Path(url.removeprefix("sqlite:///"))
        for suffix in ("", "-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)
        return
    admin = create_engine(normalize_url(pg), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f"DROP SCHEMA {schema} CASCADE"))
    admin.dispose()


def measure(kind: str, backend: str, pg: str, csv_path: Path) -> dict[str, float]:
    url, schema = _fresh_url(backend, pg)
    try:
        out = subprocess.run(
            [sys.executable, __file__, "--child", kind, "--url", url, "--csv", str(csv_path)],
            check=True,
            capture_output=True,
            text=True,
        )
    finally:
        _cleanup(url, schema, pg)
    return dict(json.loads(out.stdout))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--pg", default=DEFAULT_PG)
    parser.add_argument("--only", choices=["sqlite", "postgresql"])
    parser.add_argument("--child", choices=["jvmail", "floor"], help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--csv", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.url, args.csv)))
        return
    csv_path = make_csv(args.rows)
    size_mb = csv_path.stat().st_size / 1e6
    cpu = platform.processor() or platform.machine()
    print(f"machine: {os.cpu_count()} cores, {cpu}, Python {platform.python_version()}")
    print(f"input: {args.rows:,} rows, {size_mb:.0f} MB CSV")
    backends = [args.only] if args.only else ["sqlite", "postgresql"]
    for backend in backends:
        ours = measure("jvmail", backend, args.pg, csv_path)
        floor = measure("floor", backend, args.pg, csv_path)
        ratio = floor["rows_per_s"] / ours["rows_per_s"]
        print(
            f"{backend:<10} jvmail {ours['rows_per_s']:>9,.0f} rows/s "
            f"({ours['seconds']:.2f} s, peak RSS {ours['peak_rss_mb']:.0f} MB) | "
            f"floor {floor['rows_per_s']:>9,.0f} rows/s ({floor['seconds']:.2f} s, "
            f"peak RSS {floor['peak_rss_mb']:.0f} MB) | jvmail takes {ratio:.2f}x the floor"
        )


if __name__ == "__main__":
    main()
