"""Benchmark: the tracking server (`jvmail serve`) on loopback with PostgreSQL.

A scratch schema gets a hub with one sent mailing (two links) to ``--deliveries`` subscribers,
the sender's SendGrid account set up for signed webhooks. Then, each against a fresh
`jvmail serve` (``--workers``, 1 by default) started as a subprocess:

- clicks: `wrk` (keep-alive HTTP/1.1, ``--connections``) sends ``GET /c/{token}`` for ``--seconds``
  with a browser's user agent, cycling through one genuine token per delivery (each on one of
  the mailing's two links); requests per second and latency p50/p99 come from wrk. The server is
  then stopped with SIGTERM (which flushes its click buffer) and every redirect must be a
  stored click in ``tracking_event``.
- webhooks: ``--batches`` SendGrid event webhook requests of 1,000 distinct events each (50%
  delivered, 30% open, 15% click, 5% bounce of which 3 in 5 hard; each event for a distinct
  delivery), ECDSA-signed as SendGrid signs them, posted by ``--webhook-concurrency`` keep-alive
  connections. The server answers once a request's events are committed to its webhook inbox
  and stores them from there in the background, so the figure is end to end: events per second
  from the first request until the inbox is empty, every event then in ``tracking_event``
  (polled every 5 ms). The latency p50/p99 is that of the answers, per request. Every event must
  be answered as accepted and be in ``tracking_event``.

The floor (bench/tracking_floor.py): the same stack (Starlette under uvicorn, started with the
options `jvmail serve` uses) answering a constant 302 redirect, and reading the webhook body and
answering constant JSON, measured with the same load generators. For webhooks a second floor
is the database alone: the same rows inserted with a bare ``INSERT ... ON CONFLICT DO NOTHING``
(psycopg ``executemany``, one transaction per batch) into a copy of ``tracking_event``
(same indexes and foreign keys).

Needs `wrk` (Debian: ``apt-get install -y wrk``).

Usage:
    python bench/tracking.py [--deliveries N] [--seconds S] [--connections C] [--workers W]
                             [--batches B] [--webhook-concurrency K]
Targets: >= 5,000 redirects/s with p99 < 20 ms; >= 20,000 webhook events/s stored, with the
answer to a request of 1,000 events under 100 ms at p99; within 2x of the floor.
"""

from __future__ import annotations

import argparse
import base64
import datetime as dt
import http.client
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import orjson
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from sqlalchemy import create_engine, text

from jvmail.db import make_engine, upgrade
from jvmail.db.engine import normalize_url
from jvmail.tracking.links import Keyring

HERE = Path(__file__).parent
PG = os.environ.get("JVMAIL_TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test")
LINKS = ["https://owner.example/offer", "https://owner.example/offer/details"]
KEY_ENV = "BENCH_SG_WEBHOOK_KEY"
AGENT = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/120.0.0.0 Safari/537.36"
)
BATCH = 1000
PACED_CONNECTIONS = 8  # the most requests the paced run keeps in flight
# Events per 1,000: (SendGrid event, extra fields), for distinct deliveries.
MIX: list[tuple[int, str, dict[str, Any]]] = [
    (500, "delivered", {"response": "250 2.0.0 OK", "tls": 1}),
    (300, "open", {"useragent": AGENT, "sg_machine_open": False, "ip": "203.0.113.7"}),
    (150, "click", {"useragent": AGENT, "url": LINKS[0], "url_offset": {"index": 0}}),
    (30, "bounce", {"type": "bounce", "status": "5.1.1", "reason": "550 5.1.1 no such user"}),
    (20, "bounce", {"type": "blocked", "status": "4.7.1", "reason": "421 4.7.1 try later"}),
]
WRK_SCRIPT = """
local tokens = {}
local n = 0
local i = 0
local counter = 0
wrk.headers["User-Agent"] = "%(agent)s"

function setup(thread)
  thread:set("offset", counter)
  counter = counter + 1
end

function init(args)
  for line in io.lines(args[1]) do
    n = n + 1
    tokens[n] = line
  end
  local threads = tonumber(args[2]) or 1
  i = math.floor((offset or 0) * n / threads)
end

function request()
  i = i + 1
  if i > n then i = 1 end
  return wrk.format("GET", "/c/" .. tokens[i])
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH {"requests": %%d, "duration_us": %%d, "p50_us": %%d, "p99_us": %%d, "max_us": %%d,'
    .. ' "socket_errors": %%d, "status_errors": %%d}\\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    latency.max, e.connect + e.read + e.write + e.timeout, e.status))
end
"""


# -- database -----------------------------------------------------------------------------


def _schema_url(admin: str) -> tuple[str, str]:
    schema = f"bench_{uuid.uuid4().hex[:8]}"
    engine = create_engine(normalize_url(admin), isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(text(f"CREATE SCHEMA {schema}"))
    engine.dispose()
    return f"{admin}?options={quote(f'-csearch_path={schema}')}", schema


def _drop_schema(admin: str, schema: str) -> None:
    engine = create_engine(normalize_url(admin), isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(text(f"DROP SCHEMA IF EXISTS {schema} CASCADE"))
    engine.dispose()


@dataclass
class Hub:
    mailing: int
    keys: Keyring
    deliveries: list[tuple[int, str]]  # (delivery id, address)


def setup_hub(url: str, count: int) -> Hub:
    """A hub with one sent mailing (two links) to ``count`` subscribers, all accepted by
    SendGrid; the sender's account verifies webhooks with the key in env ``KEY_ENV``."""
    engine = make_engine(url)
    upgrade(engine)
    key = os.urandom(32).hex()
    provider = {"kind": "sendgrid", "api_key_env": "SG_API", "webhook_public_key_env": KEY_ENV}
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO hub (id, name, base_url, timezone, value_metric, report_day,"
                " credit_window_days, scheduler, link_keys) VALUES (1, 'Bench', "
                "'https://jv.example', 'UTC', 'clicks', 'mon', 14, '{}', :keys)"
            ),
            {"keys": json.dumps([key])},
        )
        ids = [
            conn.execute(
                text(
                    "INSERT INTO partner (slug, name, contact_email, postal_address, timezone,"
                    " categories, wants_to_meet, provider_kind, provider) VALUES (:s, :s,"
                    " 'team@bench.example', '1 Bench Street, Springfield', 'UTC', '[]', '[]',"
                    " 'sendgrid', :p) RETURNING id"
                ),
                {"s": slug, "p": json.dumps(provider)},
            ).scalar_one()
            for slug in ("sender", "owner")
        ]
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
                " exclude_partners) VALUES ('offer', :p, 'Hi', '', '<p>Hi</p>', 'Hi',"
                " :links, '2026-01-01', '2027-01-01', '[]', 1, '[]') RETURNING id"
            ),
            {"p": ids[1], "links": json.dumps(LINKS)},
        ).scalar_one()
        mailing = conn.execute(
            text(
                "INSERT INTO mailing (promotion_id, sender_id, list_id, scheduled_at, status,"
                " expected_value, links) VALUES (:x, :s, :l, :at, 'sent', 1, :links)"
                " RETURNING id"
            ),
            {
                "x": promo,
                "s": ids[0],
                "l": list_id,
                "at": dt.datetime(2026, 1, 1, tzinfo=dt.UTC),
                "links": json.dumps(LINKS),
            },
        ).scalar_one()
        cursor = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
        with cursor.copy(
            "COPY subscriber (list_id, email, first_name, attributes, status, source) FROM STDIN"
        ) as copy:
            for n in range(count):
                copy.write_row(
                    (list_id, f"r{n}@mail{n % 97}.example", "Ann", "{}", "subscribed", "import")
                )
        conn.execute(
            text(
                "INSERT INTO delivery (mailing_id, subscriber_id, status, attempts, fence,"
                " provider_message_id) SELECT :m, id, 'accepted', 1, 0, 'sg' || id"
                " FROM subscriber WHERE list_id = :l ORDER BY id"
            ),
            {"m": mailing, "l": list_id},
        )
        rows = conn.execute(
            text(
                "SELECT d.id, s.email FROM delivery d JOIN subscriber s ON s.id = d.subscriber_id"
                " WHERE d.mailing_id = :m ORDER BY d.id"
            ),
            {"m": mailing},
        ).all()
    engine.dispose()
    conn_analyze(url)
    return Hub(int(mailing), Keyring.from_hex([key]), [(int(d), str(e)) for d, e in rows])


def conn_analyze(url: str) -> None:
    engine = create_engine(normalize_url(url), isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(text("ANALYZE"))
    engine.dispose()


def _connect(url: str) -> Any:
    import psycopg

    dsn = normalize_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    return psycopg.connect(dsn, autocommit=True)


def wait_drained(inbox: Any, timeout: float = 300) -> float:
    """Seconds until the webhook inbox is empty (all its events stored), polled every 5 ms on
    the autocommit connection ``inbox``."""
    start = time.perf_counter()
    while True:
        left, attempts = inbox.execute(
            "SELECT count(*), coalesce(max(attempts), 0) FROM webhook_inbox"
        ).fetchone()
        if not left:
            return time.perf_counter() - start
        if attempts or time.perf_counter() - start > timeout:
            raise SystemExit(f"the webhook inbox keeps {left} row(s) (failed drains: {attempts})")
        time.sleep(0.005)


def count_events(url: str, provider: str) -> int:
    engine = create_engine(normalize_url(url))
    with engine.connect() as conn:
        n = conn.execute(
            text("SELECT count(*) FROM tracking_event WHERE provider = :p"), {"p": provider}
        ).scalar_one()
    engine.dispose()
    return int(n)


# -- servers ------------------------------------------------------------------------------


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _cpu_seconds(root: int) -> float:
    """CPU time (user + system) of process ``root`` and its descendants, from /proc."""
    parents: dict[int, int] = {}
    times: dict[int, float] = {}
    tick = os.sysconf("SC_CLK_TCK")
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents[int(entry.name)] = int(fields[1])
        times[int(entry.name)] = (int(fields[11]) + int(fields[12])) / tick
    tree, todo = set(), [root]
    while todo:
        pid = todo.pop()
        tree.add(pid)
        todo.extend(p for p, parent in parents.items() if parent == pid and p not in tree)
    return sum(times.get(p, 0.0) for p in tree)


@dataclass
class Server:
    process: subprocess.Popen[bytes]
    port: int
    log: Path

    def cpu(self) -> float:
        return _cpu_seconds(self.process.pid)

    def stop(self) -> None:
        """SIGTERM, as a supervisor stops it: the server flushes its buffer and exits."""
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise SystemExit(f"the server did not stop on SIGTERM; log: {self.log}") from None


@contextmanager
def serving(command: list[str], env: dict[str, str], logdir: Path, name: str) -> Iterator[Server]:
    port = _port()
    log = logdir / f"{name}.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [*command, "--port", str(port)], env=env, stdout=out, stderr=subprocess.STDOUT
        )
    server = Server(process, port, log)
    try:
        deadline = time.monotonic() + 60
        while True:
            if process.poll() is not None:
                raise SystemExit(f"{name} exited with {process.returncode}:\n{log.read_text()}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise SystemExit(f"{name} did not answer /healthz in 60 s:\n{log.read_text()}")
            time.sleep(0.1)
        yield server
    finally:
        if process.poll() is None:
            server.stop()


# -- clicks -------------------------------------------------------------------------------


@dataclass
class Result:
    count: int  # requests answered (clicks) or events stored (webhooks)
    seconds: float  # until the last answer (clicks) or the last event stored (webhooks)
    p50_ms: float
    p99_ms: float
    server_cpu: float  # CPU seconds the server used per second of wall time (cores busy)
    client_cpu: float  # the same for the load generator
    answered: float = 0.0  # webhooks: seconds until the last answer

    @property
    def per_second(self) -> float:
        return self.count / self.seconds


def wrk(port: int, tokens: Path, args: argparse.Namespace, seconds: float) -> dict[str, Any]:
    script = tokens.parent / "clicks.lua"
    script.write_text(WRK_SCRIPT % {"agent": AGENT})
    command = [
        "wrk",
        f"-t{args.wrk_threads}",
        f"-c{args.connections}",
        f"-d{seconds}s",
        "--timeout",
        "5s",
        "-s",
        str(script),
        f"http://127.0.0.1:{port}/",
        "--",
        str(tokens),
        str(args.wrk_threads),
    ]
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    for line in done.stdout.splitlines():
        if line.startswith("BENCH "):
            return dict(json.loads(line[6:]))
    raise SystemExit(f"wrk printed no figures:\n{done.stdout}\n{done.stderr}")


def drive_clicks(server: Server, tokens: Path, args: argparse.Namespace) -> tuple[Result, int]:
    """Warm up 2 s, then measure ``args.seconds``; returns the result and every redirect
    answered (warm-up included)."""
    warm = wrk(server.port, tokens, args, 2)
    cpu, client = server.cpu(), _children_cpu()
    got = wrk(server.port, tokens, args, args.seconds)
    seconds = got["duration_us"] / 1e6
    server_cpu = (server.cpu() - cpu) / seconds
    client_cpu = (_children_cpu() - client) / seconds
    errors = got["socket_errors"] + got["status_errors"] + warm["status_errors"]
    if errors:
        raise SystemExit(f"wrk saw errors: {got} (warm-up {warm}); log: {server.log}")
    result = Result(
        got["requests"],
        seconds,
        got["p50_us"] / 1000,
        got["p99_us"] / 1000,
        server_cpu,
        client_cpu,
    )
    return result, got["requests"] + warm["requests"]


def _children_cpu() -> float:
    usage = os.times()
    return usage.children_user + usage.children_system


# -- webhooks -----------------------------------------------------------------------------


def sendgrid_batches(hub: Hub, batches: int, first: int = 0) -> list[bytes]:
    """``batches`` requests of ``BATCH`` events with fresh event ids, the ``first``-th batch's
    deliveries on (deliveries are taken again from the start once all have had one)."""
    if len(hub.deliveries) < BATCH:
        raise SystemExit(
            f"a batch of {BATCH} events needs {BATCH:,} deliveries: raise --deliveries"
        )
    kinds = [(name, fields) for n, name, fields in MIX for _ in range(n)]
    now = int(time.time())
    bodies = []
    for b in range(first, first + batches):
        events = []
        for j, (name, fields) in enumerate(kinds):
            delivery, email = hub.deliveries[(b * BATCH + j) % len(hub.deliveries)]
            events.append(
                {
                    "email": email,
                    "timestamp": now - 60,
                    "event": name,
                    "sg_event_id": base64.urlsafe_b64encode(os.urandom(16)).decode(),
                    "sg_message_id": f"sg{delivery}.filterdrecv-5645d9c87f-abcde-1-0",
                    "smtp-id": f"<sg{delivery}@ismtpd0001p1iad2.sendgrid.net>",
                    "category": ["jvmail"],
                    "jv_delivery": str(delivery),
                    "jv_mailing": str(hub.mailing),
                    **fields,
                }
            )
        bodies.append(orjson.dumps(events))
    return bodies


def sign(private: ec.EllipticCurvePrivateKey, body: bytes) -> dict[str, str]:
    stamp = str(int(time.time()))
    signature = private.sign(stamp.encode() + body, ec.ECDSA(hashes.SHA256()))
    return {
        "X-Twilio-Email-Event-Webhook-Signature": base64.b64encode(signature).decode(),
        "X-Twilio-Email-Event-Webhook-Timestamp": stamp,
        "Content-Type": "application/json",
        "User-Agent": "SendGrid Event API",
    }


def post_batches(
    port: int, path: str, requests: list[tuple[bytes, dict[str, str]]], concurrency: int
) -> tuple[list[float], list[dict[str, Any]], float]:
    """Post every request over ``concurrency`` keep-alive connections, each as soon as one is
    free; returns per-request latencies (s), the answers and the wall time."""
    return _post(port, path, requests, concurrency, None)


def post_paced(
    port: int, path: str, requests: list[tuple[bytes, dict[str, str]]], per_second: float
) -> tuple[list[float], list[dict[str, Any]], float]:
    """Post request i when it is due, ``i / per_second`` after the start (an open loop, as
    providers post: they do not wait for the previous answer), on up to PACED_CONNECTIONS
    keep-alive connections. A latency counts from when the request was due, so a request held
    up behind slow answers counts its wait too. Returns latencies (s), answers, wall time."""
    return _post(port, path, requests, PACED_CONNECTIONS, per_second)


def _post(
    port: int,
    path: str,
    requests: list[tuple[bytes, dict[str, str]]],
    connections: int,
    per_second: float | None,
) -> tuple[list[float], list[dict[str, Any]], float]:
    """The requests over ``connections`` threads, each with its keep-alive connection: at
    once (``per_second`` None), or each when due."""
    latencies: list[float] = []
    answers: list[dict[str, Any]] = []
    lock = threading.Lock()
    todo = iter(enumerate(requests))
    failures: list[str] = []
    start = time.perf_counter()

    def worker() -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        while True:
            with lock:
                item = next(todo, None)
            if item is None or failures:
                break
            n, (body, headers) = item
            if per_second is None:
                due = time.perf_counter()
            else:
                due = start + n / per_second
                time.sleep(max(0.0, due - time.perf_counter()))  # its scheduled time
            connection.request("POST", path, body=body, headers=headers)
            answer = connection.getresponse()
            data = answer.read()
            elapsed = time.perf_counter() - due
            with lock:
                if answer.status != 200:
                    failures.append(f"{answer.status}: {data[:300]!r}")
                latencies.append(elapsed)
                answers.append(orjson.loads(data))
        connection.close()

    threads = [threading.Thread(target=worker) for _ in range(connections)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    if failures:
        raise SystemExit(f"webhook requests failed: {failures[:3]}")
    return latencies, answers, wall


def _quantile(values: list[float], q: float) -> float:
    if len(values) < 2:
        return values[0] if values else 0.0
    return statistics.quantiles(values, n=100, method="inclusive")[round(q * 100) - 1]


def drive_webhooks(
    server: Server,
    requests: list[tuple[bytes, dict[str, str]]],
    concurrency: int,
    url: str | None = None,
    per_second: float | None = None,
) -> tuple[Result, list[dict[str, Any]]]:
    """Post the requests, ``concurrency`` at a time, or paced at ``per_second`` (requests);
    with ``url`` (jvmail), the time counts until its inbox is empty, so the figure is what
    was stored per second."""
    inbox = _connect(url) if url else None
    cpu = server.cpu()
    path = "/webhooks/sendgrid/sender"
    latencies, answers, answered = (
        post_batches(server.port, path, requests, concurrency)
        if per_second is None
        else post_paced(server.port, path, requests, per_second)
    )
    wall = answered + (wait_drained(inbox) if inbox else 0.0)
    server_cpu = (server.cpu() - cpu) / wall
    if inbox:
        inbox.close()
    result = Result(
        len(requests) * BATCH,
        wall,
        _quantile(latencies, 0.5) * 1000,
        _quantile(latencies, 0.99) * 1000,
        server_cpu,
        0.0,
        answered,
    )
    return result, answers


def db_floor(url: str, bodies: list[bytes], hub: Hub) -> Result:
    """The same rows as the webhooks store, inserted with a bare executemany (one transaction
    per batch) into a copy of tracking_event (its indexes, unique key and foreign keys): the
    database alone."""
    import psycopg

    from jvmail.tracking.store import recipient_hash

    mailing = hub.mailing
    types = {"delivered": "delivered", "open": "opened", "click": "clicked", "bounce": "bounced"}
    batches = []
    for body in bodies:
        rows = []
        for e in orjson.loads(body):
            rows.append(
                (
                    int(e["jv_delivery"]),
                    mailing,
                    types[e["event"]],
                    "sendgrid",
                    e["sg_event_id"],
                    recipient_hash(e["email"]),
                    True,
                    "hard" if e.get("type") == "bounce" else "none",
                    dt.datetime.fromtimestamp(e["timestamp"], dt.UTC),
                    orjson.dumps(e).decode(),
                )
            )
        batches.append(rows)
    dsn = normalize_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(dsn) as conn:
        conn.execute("CREATE TABLE floor_event (LIKE tracking_event INCLUDING ALL)")
        conn.execute(
            "ALTER TABLE floor_event ADD FOREIGN KEY (delivery_id) REFERENCES delivery (id),"
            " ADD FOREIGN KEY (mailing_id) REFERENCES mailing (id)"
        )
        conn.commit()
        latencies = []
        start = time.perf_counter()
        for rows in batches:
            t0 = time.perf_counter()
            with conn.cursor() as cur:
                cur.executemany(
                    "INSERT INTO floor_event (delivery_id, mailing_id, type, provider,"
                    " provider_event_id, recipient_hash, human, bounce, occurred_at, raw)"
                    " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
                    " ON CONFLICT (provider, provider_event_id, recipient_hash, type) DO NOTHING",
                    rows,
                )
            conn.commit()
            latencies.append(time.perf_counter() - t0)
        wall = time.perf_counter() - start
    events = sum(len(r) for r in batches)
    return Result(
        events,
        wall,
        _quantile(latencies, 0.5) * 1000,
        _quantile(latencies, 0.99) * 1000,
        0.0,
        0.0,
    )


# -- report -------------------------------------------------------------------------------


def _row(what: str, r: Result, floor: Result | None, unit: str) -> list[str]:
    ratio = f"{floor.per_second / r.per_second:.2f}x" if floor else ""
    return [
        what,
        f"{r.per_second:,.0f} {unit}",
        f"{r.p50_ms:.1f} ms",
        f"{r.p99_ms:.1f} ms",
        f"{floor.per_second:,.0f}" if floor else "",
        ratio,
        f"{r.server_cpu:.2f}" if r.server_cpu else "",
    ]


def table(rows: list[list[str]]) -> str:
    head = ["what", "per second", "p50", "p99", "floor /s", "floor/jvmail", "server cores"]
    widths = [max(len(x) for x in col) for col in zip(head, *rows, strict=True)]
    lines = [" | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in [head, *rows]]
    lines.insert(1, "-+-".join("-" * w for w in widths))
    return "\n".join(lines)


def _machine() -> str:
    model = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor() or "?",
    )
    return f"{os.cpu_count()} cores ({model}), Python {platform.python_version()}"


def _load() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


@dataclass
class Figures:
    floor_clicks: Result
    floor_hooks: Result
    clicks: Result
    hooks: Result
    paced: Result | None  # webhooks posted at --webhook-rate (None: not run)
    bare: Result
    answered: int  # redirects answered, warm-up included
    stored_clicks: int  # clicks in tracking_event after SIGTERM


def run(args: argparse.Namespace, url: str, logdir: Path) -> Figures:
    start = time.perf_counter()
    hub = setup_hub(url, args.deliveries)
    tokens = logdir / "tokens.txt"
    signed = (hub.keys.sign(hub.mailing, d, 1 + n % 2) for n, (d, _) in enumerate(hub.deliveries))
    tokens.write_text("\n".join(signed) + "\n")
    private = ec.generate_private_key(ec.SECP256R1())
    public = base64.b64encode(
        private.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    ).decode()
    bodies = sendgrid_batches(hub, args.batches)
    events = len(bodies) * BATCH
    print(
        f"setup: {args.deliveries:,} deliveries, {len(bodies)} webhook batches "
        f"({sum(map(len, bodies)) / len(bodies) / 1024:.0f} KiB each) in "
        f"{time.perf_counter() - start:.1f} s",
        flush=True,
    )
    # wrk is one client address sending thousands of clicks a second: a budget it never
    # exhausts, so the limiter does its work on every request and refuses none.
    env = os.environ | {
        "JVMAIL_DATABASE_URL": url,
        KEY_ENV: public,
        "JVMAIL_THROTTLE_CLICKS": "1000000000/1000000000",
    }
    workers = ["--workers", str(args.workers)]
    jvmail = [str(Path(sys.executable).parent / "jvmail"), "serve", *workers]
    floor = [sys.executable, str(HERE / "tracking_floor.py"), *workers]

    with serving(floor, env, logdir, "floor") as server:
        floor_clicks, _ = drive_clicks(server, tokens, args)
        requests = [(b, sign(private, b)) for b in bodies]
        floor_hooks, _ = drive_webhooks(server, requests, args.webhook_concurrency)
    print(
        f"floor: {floor_clicks.per_second:,.0f} redirects/s, wrk used "
        f"{floor_clicks.client_cpu:.2f} cores; {floor_hooks.per_second:,.0f} webhook events/s",
        flush=True,
    )

    with serving(jvmail, env, logdir, "jvmail-clicks") as server:
        clicks, answered = drive_clicks(server, tokens, args)
        print(
            f"clicks: {clicks.per_second:,.0f} redirects/s; load average {_load()}; "
            "stopping the server (SIGTERM)",
            flush=True,
        )
        server.stop()
    stored_clicks = count_events(url, "jvmail")
    print(
        f"clicks: {answered:,} redirects answered (warm-up included), {stored_clicks:,} clicks "
        "in tracking_event after SIGTERM",
        flush=True,
    )

    requests = [(b, sign(private, b)) for b in bodies]
    later = (
        sendgrid_batches(hub, args.paced_batches, first=len(bodies)) if args.webhook_rate else []
    )
    paced: Result | None = None
    with serving(jvmail, env, logdir, "jvmail-webhooks") as server:
        hooks, answers = drive_webhooks(server, requests, args.webhook_concurrency, url)
        if later:
            requests = [(b, sign(private, b)) for b in later]
            paced, more = drive_webhooks(server, requests, 0, url, args.webhook_rate / BATCH)
            answers += more
            events += paced.count
        stored_hooks = count_events(url, "sendgrid")  # before SIGTERM, whose drain could add
    said = sum(a["accepted"] for a in answers)
    print(
        f"webhooks: {hooks.per_second:,.0f} events/s stored end to end ({hooks.count:,} in "
        f"tracking_event {hooks.seconds:.2f} s after the first request); the last answer came "
        f"at {hooks.answered:.2f} s ({hooks.count / hooks.answered:,.0f} events/s answered); "
        f"{said:,} events answered as accepted, {stored_hooks:,} in tracking_event; "
        f"server used {hooks.server_cpu:.2f} cores; load average {_load()}",
        flush=True,
    )
    if paced is not None:
        print(
            f"webhooks paced at {args.webhook_rate:,} events/s offered: {paced.per_second:,.0f} "
            f"events/s stored end to end ({paced.count:,} in {paced.seconds:.2f} s, the inbox "
            f"empty {paced.seconds - paced.answered:.2f} s after the last answer); answers p50 "
            f"{paced.p50_ms:.1f} ms, p99 {paced.p99_ms:.1f} ms; server used "
            f"{paced.server_cpu:.2f} cores; load average {_load()}",
            flush=True,
        )
    if said != events or stored_hooks != said:
        raise SystemExit(f"not every webhook event was stored; logs in {logdir}")
    bare = db_floor(url, bodies, hub)
    return Figures(floor_clicks, floor_hooks, clicks, hooks, paced, bare, answered, stored_clicks)


def report(f: Figures, args: argparse.Namespace) -> bool:
    """Prints the table and the targets; False when clicks were lost."""
    print()
    print(
        table(
            [
                _row("click redirects (jvmail)", f.clicks, f.floor_clicks, "req"),
                _row("  floor: constant 302", f.floor_clicks, None, "req"),
                _row("webhook events stored (jvmail)", f.hooks, f.floor_hooks, "ev"),
                _row("  floor: constant answer", f.floor_hooks, None, "ev"),
                _row("  floor: bare INSERT (db)", f.bare, None, "ev"),
                *(
                    [_row(f"webhooks paced at {args.webhook_rate:,}/s", f.paced, None, "ev")]
                    if f.paced
                    else []
                ),
            ]
        )
    )
    print(
        f"\nwebhook floors as ratios: HTTP {f.floor_hooks.per_second / f.hooks.per_second:.2f}x, "
        f"database {f.bare.per_second / f.hooks.per_second:.2f}x; webhook p50/p99 are of the "
        f"answer per request of {BATCH:,} events ({args.batches} requests, "
        f"{args.webhook_concurrency} at a time); wrk used {f.clicks.client_cpu:.2f} cores in the "
        f"jvmail click run; load average {_load()}"
    )
    lost = f.answered - f.stored_clicks
    targets = [
        ("redirects >= 5,000/s", f.clicks.per_second >= 5000),
        ("redirect p99 < 20 ms", f.clicks.p99_ms < 20),
        ("webhook events stored >= 20,000/s", f.hooks.per_second >= 20000),
        (
            f"webhook answer p99 < 100 ms at {args.webhook_rate:,} events/s offered",
            f.paced is not None and f.paced.p99_ms < 100,
        ),
        ("redirects within 2x of the floor", f.floor_clicks.per_second / f.clicks.per_second <= 2),
        ("every redirect stored", lost <= 0),
    ]
    print("targets: " + "; ".join(f"{t}: {'met' if ok else 'MISSED'}" for t, ok in targets))
    # wrk stops with a request in flight on each connection, answered but not counted: up to
    # one per connection per run (warm-up and measured) may be stored uncounted, never fewer.
    if lost > 0 or -lost > 2 * args.connections:
        print(
            f"CLICKS LOST: {f.answered:,} redirects answered but {f.stored_clicks:,} stored "
            f"({lost:,} missing)"
        )
        return False
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--deliveries", type=int, default=100_000)
    parser.add_argument("--seconds", type=int, default=10, help="measured click run")
    parser.add_argument("--connections", type=int, default=16, help="wrk connections")
    parser.add_argument("--wrk-threads", type=int, default=1)
    parser.add_argument("--workers", type=int, default=1, help="jvmail serve --workers")
    parser.add_argument("--batches", type=int, default=60, help="webhook batches of 1,000")
    parser.add_argument("--webhook-concurrency", type=int, default=4)
    parser.add_argument(
        "--webhook-rate",
        type=int,
        default=20_000,
        help="events/s offered in the paced webhook run (0: no paced run)",
    )
    parser.add_argument(
        "--paced-batches", type=int, default=200, help="webhook batches of the paced run"
    )
    parser.add_argument("--pg", default=PG)
    parser.add_argument("--keep", action="store_true", help="keep the scratch schema and logs")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit(
            "bench/tracking.py needs wrk as its load generator: apt-get install -y wrk"
        )
    print(
        f"machine: {_machine()}; {dt.date.today()}; load average {_load()}; server: "
        f"jvmail serve --workers {args.workers}; wrk -t{args.wrk_threads} "
        f"-c{args.connections}, {args.seconds} s",
        flush=True,
    )
    url, schema = _schema_url(args.pg)
    logdir = Path(tempfile.mkdtemp(prefix="bench-tracking-"))
    try:
        ok = report(run(args, url, logdir), args)
    finally:
        if args.keep:
            print(f"kept schema {schema}; logs in {logdir}")
        else:
            _drop_schema(args.pg, schema)
            shutil.rmtree(logdir, ignore_errors=True)
    if not ok:
        sys.exit(1)


if __name__ == "__main__":
    main()
