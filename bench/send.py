"""Benchmark: one mailing to many recipients, end to end (due -> accepted by the provider).

The batch API path: 1,000,000 recipients through a fake SendGrid (its own process, 10 ms added
per request) with PostgreSQL, Redis and worker processes (`dramatiq send_worker`). The SMTP path:
100,000 recipients into a local SMTP sink: aiosmtpd in `--smtp-sinks` processes (one takes about
a core for 1,700 messages/s, so it sets the pace), or with `--postfix-sink` Postfix's
`smtp-sink` (C, one process; Debian: `apt-get install postfix`). Each run materializes the
deliveries, then times from the tick that dispatches the mailing until every delivery is final,
and checks that the provider saw each recipient once (the fake SendGrid counts them; over SMTP
the accepted deliveries stand for what the sink took).

The floor: the same per-recipient work (three signed links, the personalization, the JSON body
for SendGrid; the filled MIME message for SMTP) in a bare loop, with no database, broker or
network.

Usage:
    python bench/send.py [--recipients N] [--smtp-recipients N] [--processes P] [--threads T]
        [--batch B] [--smtp-sinks S | --postfix-sink]
Targets: >= 30,000 recipients/s on the batch API path (1M in under 35 s), at least 30%
of the floor, >= 3,000 messages/s on SMTP; memory flat in list size.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path
from urllib.parse import quote

import orjson
from sqlalchemy import create_engine, func, select, text
from sqlalchemy.orm import Session, sessionmaker

from jvmail.broker import make_broker
from jvmail.db import make_engine, make_sessionmaker, upgrade
from jvmail.db.engine import normalize_url
from jvmail.db.models import Delivery, Mailing, MailingStatus
from jvmail.dispatch.actors import Runtime, declare
from jvmail.dispatch.deliveries import unfinished
from jvmail.dispatch.mime import skeleton
from jvmail.dispatch.pipeline import Message
from jvmail.dispatch.render import Mailer, render
from jvmail.providers.base import OutboundBatch
from jvmail.providers.sendgrid import SendGridProvider
from jvmail.tracking.links import Keyring

HERE = Path(__file__).parent
PG = os.environ.get("JVMAIL_TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test")
REDIS = os.environ.get("JVMAIL_TEST_REDIS_URL", "redis://127.0.0.1:6379/13")
HTML = (
    "<h1>Hi {{ first_name }}</h1><p>Read <a href='https://owner.example/offer'>the offer</a>.</p>"
)
TEXT = "Hi {{ first_name }}, read the offer: https://owner.example/offer"


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _schema_url(admin: str) -> tuple[str, str]:
    schema = f"bench_{uuid.uuid4().hex[:8]}"
    engine = create_engine(normalize_url(admin), isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(text(f"CREATE SCHEMA {schema}"))
    engine.dispose()
    return f"{admin}?options={quote(f'-csearch_path={schema}')}", schema


def _setup(url: str, recipients: int) -> int:
    """A hub with one due mailing to ``recipients`` subscribers; returns the mailing id."""
    engine = make_engine(url)
    upgrade(engine)
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO hub (id, name, base_url, timezone, value_metric, report_day,"
                " credit_window_days, scheduler, link_keys) VALUES (1, 'Bench', "
                "'https://jv.example', 'UTC', 'clicks', 'mon', 14, '{}', :keys)"
            ),
            {"keys": json.dumps(["ab" * 32])},
        )
        ids = []
        for slug in ("sender", "owner"):
            ids.append(
                conn.execute(
                    text(
                        "INSERT INTO partner (slug, name, contact_email, postal_address, timezone,"
                        " categories, wants_to_meet, provider_kind, provider) VALUES (:s, :s,"
                        " 'team@bench.example', '1 Bench Street, Springfield', 'UTC', '[]', '[]',"
                        " 'sendgrid', '{}') RETURNING id"
                    ),
                    {"s": slug},
                ).scalar_one()
            )
        list_id = conn.execute(
            text(
                "INSERT INTO mailing_list (slug, partner_id, name, subscribers_path, niches,"
                " max_sends_per_week, send_days, send_hour, blackout_dates, click_rate, digest)"
                " VALUES ('l', :p, 'Bench Weekly', 'x.csv', '[]', 1, '[]', 9, '[]', 0.02, false)"
                " RETURNING id"
            ),
            {"p": ids[0]},
        ).scalar_one()
        promo = conn.execute(
            text(
                "INSERT INTO promotion (slug, partner_id, subject, preheader, html, text,"
                " landing_urls, window_start, window_end, niches, mailings_wanted,"
                " exclude_partners) VALUES ('offer', :p, 'Hi {{ first_name }}', '', :h, :t,"
                " '[]', '2026-01-01', '2027-01-01', '[]', 1, '[]') RETURNING id"
            ),
            {"p": ids[1], "h": HTML, "t": TEXT},
        ).scalar_one()
        mailing = conn.execute(
            text(
                "INSERT INTO mailing (promotion_id, sender_id, list_id, scheduled_at, status,"
                " expected_value) VALUES (:x, :s, :l, :at, 'planned', 1) RETURNING id"
            ),
            {"x": promo, "s": ids[0], "l": list_id, "at": dt.datetime(2026, 1, 1, tzinfo=dt.UTC)},
        ).scalar_one()
        cursor = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
        with cursor.copy(
            "COPY subscriber (list_id, email, first_name, attributes, status, source) FROM STDIN"
        ) as copy:
            for n in range(recipients):
                copy.write_row(
                    (list_id, f"r{n}@mail{n % 97}.example", "Ann", "{}", "subscribed", "import")
                )
    engine.dispose()
    return int(mailing)


def _peak_rss_mb(pattern: str) -> float:
    peak = 0.0
    for proc in Path("/proc").iterdir():
        try:
            if pattern in (proc / "cmdline").read_text():
                for line in (proc / "status").read_text().splitlines():
                    if line.startswith("VmHWM:"):
                        peak = max(peak, int(line.split()[1]) / 1024)
        except (OSError, ValueError):
            continue
    return peak


def _wait_until_final(maker: sessionmaker[Session], mailing_id: int) -> float:
    """Until the mailing's deliveries exist and none is unfinished; when they were seen to
    exist (``perf_counter``). Polled along the batches' id ranges, stopping at the first row
    unfinished: a count of every row four times a second would take a good part of a core from
    PostgreSQL while the workers use it."""
    materialized: float | None = None
    with maker() as session:
        while True:
            time.sleep(0.25)
            if materialized is None:
                status = session.scalar(select(Mailing.status).where(Mailing.id == mailing_id))
                if status not in (MailingStatus.PLANNED, MailingStatus.APPROVED):
                    materialized = time.perf_counter()
            finished = materialized is not None and not unfinished(session, mailing_id)
            session.rollback()
            if materialized is not None and finished:
                return materialized


def run_pipeline(args: argparse.Namespace, provider: str, recipients: int) -> dict[str, float]:
    url, schema = _schema_url(args.pg)
    namespace = f"bench-{uuid.uuid4().hex[:8]}"
    mailing_id = _setup(url, recipients)
    port = _port()
    if provider == "sendgrid":
        sink = [
            sys.executable,
            str(HERE / "send_fake.py"),
            "--port",
            str(port),
            "--latency",
            str(args.latency),
        ]
    elif args.postfix_sink:
        sink = ["smtp-sink", "-u", "nobody", f"127.0.0.1:{port}", "256"]
    else:
        sink = [
            sys.executable,
            str(HERE / "smtp_sink.py"),
            "--port",
            str(port),
            "--processes",
            str(args.smtp_sinks),
        ]
    server = subprocess.Popen(sink)
    env = os.environ | {
        "JVMAIL_DATABASE_URL": url,
        "JVMAIL_REDIS_URL": args.redis,
        "JVMAIL_REDIS_NAMESPACE": namespace,
        "BENCH_PROVIDER": provider,
        "BENCH_SENDGRID_API": f"http://127.0.0.1:{port}",
        "BENCH_SMTP_PORT": str(port),
        "BENCH_BATCH": str(args.batch),
    }
    worker_cmd = [
        sys.executable,
        "-m",
        "dramatiq",
        "send_worker",
        "--processes",
        str(args.processes),
    ]
    worker_cmd += ["--threads", str(args.threads), "--queues", "jvmail"]
    workers = subprocess.Popen(worker_cmd, cwd=HERE, env=env, stderr=subprocess.DEVNULL)
    engine = make_engine(url)
    maker = make_sessionmaker(engine)
    broker = make_broker(args.redis, namespace=namespace)
    runtime = Runtime(url, lambda _m: SendGridProvider("x", from_addr="x@x.x", from_name="x"))
    runtime.batch = args.batch  # the dispatch cuts the mailing into batches of this size
    actors = declare(broker, runtime)
    time.sleep(2.0)  # let the worker processes boot before the clock starts
    start = time.perf_counter()
    actors.tick.send(dt.datetime.now(dt.UTC).isoformat())
    materialized = _wait_until_final(maker, mailing_id) - start
    seconds = time.perf_counter() - start
    with maker() as session:
        counts = {
            str(s): n
            for s, n in session.execute(
                select(Delivery.status, func.count()).group_by(Delivery.status)
            ).all()
        }
    assert sum(counts.values()) == recipients, counts
    seconds = time.perf_counter() - start
    rss = _peak_rss_mb("send_worker")
    stats: dict[str, int] = {}
    if provider == "sendgrid":
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/stats") as answer:
            stats = json.loads(answer.read())
    workers.terminate()
    workers.wait(timeout=30)
    server.terminate()
    server.wait(timeout=10)
    broker.close()
    engine.dispose()
    admin = create_engine(normalize_url(args.pg), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f"DROP SCHEMA {schema} CASCADE"))
    admin.dispose()
    return {
        "recipients": recipients,
        "seconds": seconds,
        "per_second": recipients / seconds,
        "materialized": materialized,
        "accepted": counts.get("accepted", 0),
        "provider_saw": stats.get("accepted", counts.get("accepted", 0)),
        "duplicates": stats.get("duplicates", 0),
        "worker_peak_rss_mb": rss,
    }


def floor(provider: str, recipients: int) -> dict[str, float]:
    """The same per-recipient work in a bare loop: links, values, body or message."""
    rendered = render(
        "offer", "Hi {{ first_name }}", HTML, TEXT, Mailer("S", "1 Bench Street", "L", "O")
    )
    layout = skeleton(
        rendered, from_name="S", from_addr="s@x.example", mailing_id=1, domain="jv.example"
    )
    keys = Keyring.from_hex(["ab" * 32])
    message = Message(1, layout, "https://jv.example", keys, "s@x.example")
    sg = SendGridProvider("x", from_addr="s@x.example", from_name="S")
    start = time.perf_counter()
    size = 1000
    for lo in range(0, recipients, size):
        people = tuple(
            message.recipient(n, f"r{n}@mail.example", "Ann")
            for n in range(lo, min(lo + size, recipients))
        )
        batch = OutboundBatch(1, layout, message.mailto(), people)
        if provider == "sendgrid":
            orjson.dumps(sg.body(batch, people))
        else:
            for r in people:
                layout.message(r.delivery_id, r.email, r.values, batch.unsubscribe_mailto)
    seconds = time.perf_counter() - start
    return {"recipients": recipients, "seconds": seconds, "per_second": recipients / seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recipients", type=int, default=1_000_000)
    parser.add_argument("--smtp-recipients", type=int, default=100_000)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument(
        "--smtp-sinks", type=int, default=1, help="aiosmtpd processes the SMTP path sends to"
    )
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument(
        "--postfix-sink",
        action="store_true",
        help="sink the SMTP path into Postfix's smtp-sink (C, one process; Debian: apt-get "
        "install postfix) instead of aiosmtpd",
    )
    parser.add_argument("--batch", type=int, default=1000, help="deliveries per claim")
    parser.add_argument("--latency", type=float, default=10.0, help="ms added per API request")
    parser.add_argument("--pg", default=PG)
    parser.add_argument("--redis", default=REDIS)
    args = parser.parse_args()
    print(
        f"machine: {os.cpu_count()} cores, {platform.machine()}, Python "
        f"{platform.python_version()}; {dt.date.today()}; workers: {args.processes} processes x "
        f"{args.threads} threads",
        flush=True,
    )
    for provider, count in (("sendgrid", args.recipients), ("smtp", args.smtp_recipients)):
        if not count:
            continue
        bare = floor(provider, count)
        print(
            f"{provider} floor: {bare['per_second']:,.0f} recipients/s ({bare['seconds']:.1f} s)",
            flush=True,
        )
        got = run_pipeline(args, provider, count)
        print(
            f"{provider} jvmail: {got['per_second']:,.0f} recipients/s ({got['seconds']:.1f} s for "
            f"{count:,}); accepted {got['accepted']:,}, provider saw {got['provider_saw']:,}, "
            f"duplicates {got['duplicates']}, worker peak RSS {got['worker_peak_rss_mb']:.0f} MB; "
            f"{got['per_second'] / bare['per_second']:.0%} of the floor",
            flush=True,
        )
        sending = got["seconds"] - got["materialized"]
        print(
            f"{provider} stages: deliveries materialized after {got['materialized']:.1f} s, then "
            f"{count / sending:,.0f} recipients/s over the remaining {sending:.1f} s",
            flush=True,
        )


if __name__ == "__main__":
    main()
