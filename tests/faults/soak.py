"""The soak (scenario 19): a week of joint-venture swaps between three partners, each mailing
through its own provider account, with a random fault in every round.

What runs: a fresh PostgreSQL schema with partners alpha (SendGrid), bravo (Mailgun) and
charlie (Postmark), who mail each other's promotions to their own lists, and delta (SES), a
fourth sender that only mails the others' promotions to its list, so that every provider's
bulk API meets every fault; the hub's own account (statements) is not part of the send
pipeline and stays out. Each list holds bulk readers and canary readers
(``canary-<slug>-<n>@...``) that only the list owner's provider may ever see. A Redis server of
the soak's own (append-only, fsync always), ``dramatiq`` worker processes with production's
boot (:mod:`tests.faults.soak_worker`: each mailing through its sender's fake), each in a
process group of its own with its output captured to a file; the workers' database
connections carry the soak's namespace as their application_name.

A round: each sender's mailing of the round becomes due (scheduled across the week), the soak
ticks as the scheduler does, a fault drawn with the seeded random generator lands once a quarter
of the round is accepted, and the round settles: no delivery pending, claimed or sending; the
providers' own delivered events stored for the ``unknown`` deliveries they took; the
reconciler's give-up deadline let pass for the rest. Then the round's invariants:

- I1 every delivery of the round's mailings final, and each mailing sent (not failed);
- I2 each provider took each delivery at most once, and took exactly the accepted ones;
- I4 no canary reader of one partner in another partner's provider requests, in the worker
  logs, or in the error texts of another sender's deliveries and mailings;
- I5 every request carried both unsubscribe headers for every recipient (in its provider's
  shape) and the sender's postal address; nobody taken after their unsubscribe was committed;
  while a mailing was paused, its provider received only what was in flight at the pause.
"""

from __future__ import annotations

import datetime as dt
import email.policy
import io
import json
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass, field
from email.parser import BytesParser
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import dramatiq
from sqlalchemy import func, insert, select, text
from sqlalchemy.orm import Session

from jvmail.db import make_engine, make_sessionmaker, upgrade
from jvmail.db.models import (
    Delivery,
    DeliveryStatus,
    EventType,
    Mailing,
    MailingList,
    MailingStatus,
    Partner,
    Promotion,
    Subscriber,
    Suppression,
)
from jvmail.dispatch.actors import QUEUE, Actors
from jvmail.dispatch.control import pause, resume
from jvmail.dispatch.reconcile import GIVE_UP, reconcile
from jvmail.tracking.events import Event
from jvmail.tracking.store import store_events
from tests.dispatch.conftest import WHEN, hub_record, mailing_list, partner
from tests.faults.conftest import READERS
from tests.faults.harness import (
    FINAL,
    ROOT,
    UNFINISHED,
    RedisServer,
    WorkerPool,
    _has_unsubscribe_headers,
    free_port,
)
from tests.faults.soak_worker import (
    MAILGUN_DOMAIN,
    MAILGUN_KEY,
    POSTMARK_TOKEN,
    SENDGRID_KEY,
    SES_KEY_ID,
)
from tests.providers.fakes import (
    Fake,
    Scripted,
    mailgun_handler,
    postmark_handler,
    sendgrid_handler,
    serve,
    ses_handler,
)

ROUNDS = int(os.environ.get("JVMAIL_SOAK_ROUNDS", "30"))
SEED = int(os.environ.get("JVMAIL_SOAK_SEED", "19"))
# Readers per list: a tenth of the fault suite's size (2,000 at full size, 300 at 3,000).
LIST_SIZE = int(os.environ.get("JVMAIL_SOAK_READERS", str(max(READERS // 10, 100))))
CANARIES = 5  # canary readers per list
WORKERS = 3  # dramatiq processes of two threads each
LEASE = 6.0  # seconds a claimed batch is one worker's
BATCH = max(LIST_SIZE // 8, 25)  # deliveries per batch message: several per mailing
PACE = LIST_SIZE / 5  # each account's pace: a mailing takes about five seconds
CLIENT_TIMEOUT = 3.0  # the providers' clients' read timeout, seconds
HANG = CLIENT_TIMEOUT + 1.5  # a slow answer comes this late: past the client's timeout
PAUSED_FOR = 2.0  # seconds a paused mailing stays paused, at least
SETTLE = 240.0  # seconds a round may take to settle after its fault
WEEK = dt.timedelta(days=7)
ENDED = frozenset({MailingStatus.SENT, MailingStatus.FAILED, MailingStatus.CANCELLED})

# Sender slug -> its provider; the first three are the partners who swap promotions.
SENDERS = {"alpha": "sendgrid", "bravo": "mailgun", "charlie": "postmark", "delta": "ses"}
OWNERS = ("alpha", "bravo", "charlie")
POSTALS = {
    "alpha": "1 Example Street, Springfield",
    "bravo": "22 Harbour Road, Shelbyville",
    "charlie": "303 Mill Lane, Ogdenville",
    "delta": "4 Quay Side, North Haverbrook",
}
CANARY = re.compile(rb"canary-([a-z]+)-\d+@")
UNSUBSCRIBE_HEADERS = frozenset({"List-Unsubscribe", "List-Unsubscribe-Post"})


# -- what the providers received ---------------------------------------------------------------


@dataclass(frozen=True)
class Request:
    """One request as it reached a fake provider (wall time read as its handler starts), whatever
    the answer: its recipients, whether every recipient had both unsubscribe headers and the
    message the sender's postal address, and whose canary readers it named."""

    at: float
    addresses: tuple[str, ...]
    compliant: bool
    canaries: frozenset[str]


@dataclass(frozen=True)
class Parsed:
    addresses: tuple[str, ...]
    compliant: bool


def _form(content_type: str, raw: bytes) -> list[tuple[str, str]]:
    """The fields of a multipart form (Mailgun's messages API)."""
    head = f"Content-Type: {content_type}\r\n\r\n".encode()
    message = BytesParser(policy=email.policy.HTTP).parsebytes(head + raw)
    fields = []
    for part in message.iter_parts():
        payload = part.get_payload(decode=True)
        name = part.get_param("name", header="content-disposition")
        fields.append((str(name), payload.decode() if isinstance(payload, bytes) else ""))
    return fields


def _sendgrid(body: dict[str, Any], postal: str) -> Parsed:
    addresses = tuple(t["email"] for p in body["personalizations"] for t in p["to"])
    content = all(postal in c["value"] for c in body["content"])
    return Parsed(addresses, content and _has_unsubscribe_headers(body))


def _mailgun(fields: list[tuple[str, str]], postal: str) -> Parsed:
    addresses = tuple(v for k, v in fields if k == "to")
    form = dict(fields)
    people = json.loads(form.get("recipient-variables", "{}"))
    headers = {k.removeprefix("h:") for k in form if k.startswith("h:")}
    each = all(people.get(a, {}).get("unsubscribe") for a in addresses)
    content = postal in form.get("text", "") and postal in form.get("html", "")
    return Parsed(addresses, headers >= UNSUBSCRIBE_HEADERS and each and content)


def _postmark(body: list[dict[str, Any]], postal: str) -> Parsed:
    addresses = tuple(m["To"] for m in body)
    ok = all(
        {h["Name"] for h in m.get("Headers", [])} >= UNSUBSCRIBE_HEADERS
        and postal in m.get("TextBody", "")
        and postal in m.get("HtmlBody", "")
        for m in body
    )
    return Parsed(addresses, ok)


def _ses(body: dict[str, Any], postal: str) -> Parsed:
    entries = body["BulkEmailEntries"]
    addresses = tuple(a for e in entries for a in e["Destination"]["ToAddresses"])
    content = body["DefaultContent"]["Template"]["TemplateContent"]
    headers = all(
        {h["Name"] for h in e.get("ReplacementHeaders", [])} >= UNSUBSCRIBE_HEADERS for e in entries
    )
    return Parsed(addresses, headers and postal in content["Text"] and postal in content["Html"])


def parse_request(kind: str, content_type: str, raw: bytes, postal: str) -> Parsed:
    """The recipients of a bulk send request of ``kind`` and whether it is compliant; a request
    that is not one (no recipients) is not compliant."""
    try:
        parsed = _read(kind, content_type, raw, postal)
    except (ValueError, KeyError, TypeError, AttributeError):
        return Parsed((), False)
    return parsed if parsed.addresses else Parsed((), False)


def _read(kind: str, content_type: str, raw: bytes, postal: str) -> Parsed:
    if kind == "mailgun":
        return _mailgun(_form(content_type, raw), postal)
    body = json.loads(raw)
    if kind == "sendgrid":
        return _sendgrid(body, postal)
    if kind == "postmark":
        return _postmark(body, postal)
    return _ses(body, postal)


@dataclass
class Wire:
    """A fake provider with what reached it: every request (:class:`Request`), when each
    recipient was taken, and a switch to answer some requests late (``slow``: seconds to hold
    this answer, after the provider took the request)."""

    kind: str
    fake: Fake
    postal: str
    requests: list[Request] = field(default_factory=list)
    taken_at: dict[str, list[float]] = field(default_factory=dict)  # address -> wall times
    slow: Callable[[], float] | None = None
    answers: Counter[int] = field(default_factory=Counter)  # status -> answers given
    held: int = 0  # answers held past the client's timeout
    lock: threading.Lock = field(default_factory=threading.Lock)

    def wrap(
        self, handle: Callable[[BaseHTTPRequestHandler], None]
    ) -> Callable[[BaseHTTPRequestHandler], None]:
        """``handle`` recorded; one request at a time inside the provider (what it took is
        then this request's), the held answers waiting outside."""

        def recorded(h: BaseHTTPRequestHandler) -> None:
            at = time.time()
            raw = h.rfile.read(int(h.headers.get("Content-Length", "0")))
            parsed = parse_request(self.kind, h.headers.get("Content-Type", ""), raw, self.postal)
            seen = frozenset(m.decode() for m in CANARY.findall(raw))
            h.rfile = io.BytesIO(raw)  # the fake reads the body again
            wire, h.wfile = h.wfile, io.BytesIO()  # the answer, held back when slow
            with self.lock:
                self.requests.append(Request(at, parsed.addresses, parsed.compliant, seen))
                before = len(self.fake.accepted)
                handle(h)
                now = time.time()
                for address, _ in self.fake.accepted[before:]:
                    self.taken_at.setdefault(address, []).append(now)
                hold = self.slow() if self.slow is not None else 0.0
                answer, h.wfile = h.wfile, wire
                self.answers[_status(answer.getvalue())] += 1
                self.held += hold > 0
            time.sleep(hold)  # the provider being slow, not a test waiting
            with suppress(OSError):  # the client gave up waiting
                wire.write(answer.getvalue())

        return recorded


def _status(answer: bytes) -> int:
    """The status of an HTTP answer (0 when there is none)."""
    head = answer.split(b" ", 2)
    return int(head[1]) if len(head) > 1 and head[1].isdigit() else 0


def tally(wires: dict[str, Wire], before: dict[str, tuple[Counter[int], int]]) -> str:
    """The refusals and held answers of each provider since ``before``."""
    parts = []
    for kind, wire in wires.items():
        answers, held = before[kind]
        new = wire.answers - answers
        refused = ", ".join(f"{n} x {s}" for s, n in sorted(new.items()) if not 200 <= s < 300)
        late = f"{wire.held - held} held" if wire.held > held else ""
        said = "; ".join(x for x in (refused, late) if x)
        if said:
            parts.append(f"{kind}: {said}")
    return "; ".join(parts)


def _handler(kind: str, fake: Fake) -> Callable[[BaseHTTPRequestHandler], None]:
    if kind == "sendgrid":
        return sendgrid_handler(fake, SENDGRID_KEY)
    if kind == "mailgun":
        return mailgun_handler(fake, MAILGUN_KEY, MAILGUN_DOMAIN)
    if kind == "postmark":
        return postmark_handler(fake, POSTMARK_TOKEN)
    return ses_handler(fake, SES_KEY_ID)


# -- a round's record --------------------------------------------------------------------------


@dataclass
class Round:
    number: int
    fault: str
    detail: str = ""
    deliveries: int = 0
    counts: dict[DeliveryStatus, int] = field(default_factory=dict)
    recovered_in: float = 0.0  # seconds from the fault to a settled round
    took: float = 0.0  # seconds for the whole round
    violations: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class PauseWindow:
    """A mailing paused: when its pause committed, when its resume began, its provider, and the
    addresses then in flight (the only ones the provider may receive in between)."""

    kind: str
    paused: float
    resumed: float
    flying: frozenset[str]


# -- the system --------------------------------------------------------------------------------


@dataclass
class Soak(WorkerPool):
    session: Session
    pg_url: str
    folder: Path
    redis: RedisServer
    wires: dict[str, Wire]  # provider kind -> its fake
    senders: dict[str, Partner]  # slug -> partner
    lists: dict[str, MailingList]  # sender slug -> its list
    namespace: str = field(default_factory=lambda: f"soak-{uuid.uuid4().hex[:8]}")
    workers: list[subprocess.Popen[bytes]] = field(default_factory=list)
    doomed: list[subprocess.Popen[bytes]] = field(default_factory=list)  # die by a fault point
    unsubscribed: dict[str, float] = field(default_factory=dict)  # address -> commit time
    pauses: list[PauseWindow] = field(default_factory=list)
    seen: dict[str, int] = field(default_factory=dict)  # provider kind -> requests checked
    log_hits: int = 0  # canary addresses found in the worker logs so far
    until: dt.datetime = WHEN  # the scheduler's clock: the current round's time in the week
    _started: int = 0
    _actors: Actors | None = None
    _broker: dramatiq.Broker | None = None
    deadline = SETTLE  # for until_ticking

    # -- processes -----------------------------------------------------------------------------

    def start_worker(self, **env: str) -> subprocess.Popen[bytes]:
        """A `dramatiq` worker process (production's boot, each mailing through its sender's
        fake), in a process group of its own, its output into a log file of its own."""
        environ = os.environ | {
            "JVMAIL_DATABASE_URL": self.worker_db_url,
            "JVMAIL_REDIS_URL": self.redis.url,
            "JVMAIL_REDIS_NAMESPACE": self.namespace,
            "JVMAIL_LEASE_SECONDS": str(LEASE),
            "JVMAIL_SOAK_PROVIDERS": json.dumps({k: w.fake.url for k, w in self.wires.items()}),
            "JVMAIL_SOAK_TIMEOUT": str(CLIENT_TIMEOUT),
            "JVMAIL_TEST_BATCH": str(BATCH),
            **env,
        }
        for name in ("JVMAIL_OUTBOX", *(() if "JVMAIL_FAULT" in env else ("JVMAIL_FAULT",))):
            environ.pop(name, None)
        command = [sys.executable, "-m", "dramatiq", "tests.faults.soak_worker"]
        command += ["--processes", "1", "--threads", "2", "--queues", QUEUE]
        self._started += 1
        logs = self.folder / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        with (logs / f"worker-{self._started}.log").open("wb") as log:
            proc = subprocess.Popen(
                command,
                env=environ,
                cwd=ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        (self.doomed if "JVMAIL_FAULT" in env else self.workers).append(proc)
        return proc

    def replace(self, proc: subprocess.Popen[bytes]) -> None:
        """kill -9 a worker; its supervisor starts a new one."""
        self.signal(proc, signal.SIGKILL)
        proc.wait()
        self.workers.remove(proc)
        self.start_worker()

    def exited_on_their_own(self) -> list[str]:
        """Workers that exited though nobody stopped them (replaced, so the pool stays full)."""
        gone = [p for p in self.workers if p.poll() is not None]
        for proc in gone:
            self.workers.remove(proc)
            self.start_worker()
        return [f"a worker exited on its own ({p.returncode})" for p in gone]

    def tick(self) -> bool:
        """Enqueue a tick at the round's time, as the scheduler does; False while Redis is
        down."""
        return self.tick_at(self.until)

    # -- the week ------------------------------------------------------------------------------

    def new_mailings(self, number: int) -> list[int]:
        """The round's mailings: each sender mails one of another partner's promotions to its
        own list, scheduled ``number`` thirtieths into the week."""
        self.until = WHEN + WEEK * number / max(ROUNDS, 1)
        ids = []
        for slug, sender in self.senders.items():
            owners = [o for o in OWNERS if o != slug]
            owner = self.senders[owners[number % len(owners)]]
            promotion = Promotion(
                slug=f"{owner.slug}-offer-{number}-{slug}",
                partner_id=owner.id,
                subject="Hello {{ first_name }}",
                html=f"<p>Hi {{{{ first_name }}}}, <a href='https://{owner.slug}.example/"
                f"offer/{number}'>see it</a></p>",
                text=f"Hi {{{{ first_name }}}}, see https://{owner.slug}.example/offer/{number}",
                landing_urls=[f"https://{owner.slug}.example/offer/{number}"],
                window_start=WHEN.date(),
                window_end=(WHEN + 2 * WEEK).date(),
                niches=["web"],
                mailings_wanted=1,
                exclude_partners=[],
            )
            self.session.add(promotion)
            self.session.flush()
            row = Mailing(
                promotion_id=promotion.id,
                sender_id=sender.id,
                list_id=self.lists[slug].id,
                scheduled_at=self.until,
                status=MailingStatus.PLANNED,
                expected_value=10.0,
            )
            self.session.add(row)
            self.session.flush()
            ids.append(row.id)
        self.session.commit()
        return ids

    # -- reading -------------------------------------------------------------------------------

    def counts(self, mailings: list[int]) -> dict[DeliveryStatus, int]:
        self.session.rollback()  # a fresh snapshot
        rows = self.session.execute(
            select(Delivery.status, func.count())
            .where(Delivery.mailing_id.in_(mailings))
            .group_by(Delivery.status)
        )
        return dict(rows.all())

    def deliveries(self, mailings: list[int]) -> dict[int, tuple[str, DeliveryStatus, int]]:
        """Delivery id -> (address, status, sender id)."""
        self.session.rollback()
        rows = self.session.execute(
            select(Delivery.id, Subscriber.email, Delivery.status, Mailing.sender_id)
            .join(Subscriber, Subscriber.id == Delivery.subscriber_id)
            .join(Mailing, Mailing.id == Delivery.mailing_id)
            .where(Delivery.mailing_id.in_(mailings))
        )
        return {d: (email, status, sender) for d, email, status, sender in rows}

    def in_flight(self, mailing: int) -> frozenset[str]:
        """The addresses of ``mailing``'s deliveries being sent now."""
        rows = self.session.scalars(
            select(Subscriber.email)
            .join(Delivery, Delivery.subscriber_id == Subscriber.id)
            .where(Delivery.mailing_id == mailing, Delivery.status == DeliveryStatus.SENDING)
        )
        return frozenset(rows)

    def wire_of(self, sender_id: int) -> Wire:
        slug = next(s for s, p in self.senders.items() if p.id == sender_id)
        return self.wires[SENDERS[slug]]

    # -- faults from outside -------------------------------------------------------------------

    def unsubscribe(self, sender_id: int, addresses: list[str]) -> None:
        """The readers unsubscribe from their sender (what `POST /u/{token}` commits), now."""
        self.session.execute(
            insert(Suppression),
            [{"partner_id": sender_id, "email": a, "reason": "unsubscribed"} for a in addresses],
        )
        self.session.commit()
        now = time.time()
        # A batch claimed before the commit may still carry its readers (the claim is where
        # suppressions are checked): only those still pending after the commit are held to it.
        claimed = set(
            self.session.scalars(
                select(Subscriber.email)
                .join(Delivery, Delivery.subscriber_id == Subscriber.id)
                .join(Mailing, Mailing.id == Delivery.mailing_id)
                .where(
                    Mailing.sender_id == sender_id,
                    Subscriber.email.in_(addresses),
                    Delivery.status != DeliveryStatus.PENDING,
                    Delivery.status != DeliveryStatus.SUPPRESSED,
                )
            )
        )
        self.unsubscribed |= dict.fromkeys((a for a in addresses if a not in claimed), now)

    def pause_and_resume(self, mailing: int) -> PauseWindow:
        """Pause ``mailing`` as `jvmail pause` does, wait until nothing of it is in flight,
        resume it as `jvmail resume` does."""
        self.session.rollback()
        pause(self.session, [mailing], dt.datetime.now(dt.UTC))
        self.session.commit()
        paused = time.time()
        flying = self.in_flight(mailing)
        self.until_ticking(
            "nothing of the paused mailing in flight, paused a while",
            lambda: (
                time.time() - paused > PAUSED_FOR
                and not self.in_flight(mailing)
                and not self._claimed(mailing)
            ),
        )
        self.session.rollback()
        resumed = time.time()
        resume(self.session, [mailing], dt.datetime.now(dt.UTC))
        self.session.commit()
        sender = self.session.scalar(select(Mailing.sender_id).where(Mailing.id == mailing))
        assert sender is not None
        window = PauseWindow(self.wire_of(sender).kind, paused, resumed, flying)
        self.pauses.append(window)
        return window

    def _claimed(self, mailing: int) -> int:
        self.session.rollback()
        count = self.session.scalar(
            select(func.count()).where(
                Delivery.mailing_id == mailing, Delivery.status == DeliveryStatus.CLAIMED
            )
        )
        return int(count or 0)

    def terminate_connections(self) -> int:
        """Terminate every database connection of the workers (by application_name); how
        many."""
        engine = make_engine(self.pg_url)
        try:
            with engine.connect() as admin:
                admin.execution_options(isolation_level="AUTOCOMMIT")
                rows = admin.execute(
                    text(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                        "WHERE application_name = :app"
                    ),
                    {"app": self.namespace},
                ).all()
        finally:
            engine.dispose()
        return len(rows)

    # -- settling ------------------------------------------------------------------------------

    def settle(self, mailings: list[int], violations: list[str]) -> dict[DeliveryStatus, int]:
        """Tick until no delivery of ``mailings`` is unfinished; store the providers' delivered
        events for the unknown ones they took, let the reconciler's deadline pass for the rest;
        wait for the mailings to finish; the counts."""

        def quiet() -> bool:
            violations.extend(self.exited_on_their_own())
            counts = self.counts(mailings)
            return bool(counts) and not any(counts.get(s) for s in UNFINISHED)

        self.until_ticking("every delivery of the round final or unknown", quiet)
        if self.counts(mailings).get(DeliveryStatus.UNKNOWN):
            self._events_for_unknown(mailings)
            later = dt.datetime.now(dt.UTC) + GIVE_UP + dt.timedelta(hours=1)
            reconcile(self.session, later)
            self.session.commit()
        self.until_ticking(
            "the round's mailings sent, failed or cancelled",
            lambda: all(s in ENDED for s, _ in self._ends(mailings).values()),
        )
        return self.counts(mailings)

    def _ends(self, mailings: list[int]) -> dict[int, tuple[MailingStatus, str]]:
        """Mailing id -> (status, error)."""
        self.session.rollback()
        rows = self.session.execute(
            select(Mailing.id, Mailing.status, Mailing.error).where(Mailing.id.in_(mailings))
        )
        return {m: (status, error or "") for m, status, error in rows}

    def _events_for_unknown(self, mailings: list[int]) -> None:
        """Each provider's delivered events (as its webhook parser builds them) for the unknown
        deliveries it did take; the reconciler settles them at the next tick."""
        rows = self.deliveries(mailings)
        doubt = {d for d, (_, s, _) in rows.items() if s is DeliveryStatus.UNKNOWN}
        now = dt.datetime.now(dt.UTC)
        stored = 0
        for slug, sender in self.senders.items():
            kind = SENDERS[slug]
            taken = {int(d) for _, d in self.wires[kind].fake.accepted}
            events = [
                Event(
                    provider=kind,
                    event_id=f"delivered-{d}",
                    type=EventType.DELIVERED,
                    recipient=rows[d][0],
                    occurred_at=now,
                    delivery_id=d,
                )
                for d in sorted(doubt & taken)
                if rows[d][2] == sender.id
            ]
            if events:
                store_events(self.session, events, sender_id=sender.id, soft_bounce_days=3)
                stored += len(events)
        self.session.commit()
        self.until_ticking(
            "the events settled the unknown deliveries they cover",
            lambda: self.counts(mailings).get(DeliveryStatus.UNKNOWN, 0) <= len(doubt) - stored,
            60,
        )

    # -- the invariants ------------------------------------------------------------------------

    def check(self, mailings: list[int], since: float) -> list[str]:
        """I1, I2, I4 and I5 for the round's mailings and for what reached the providers since
        the last check (``since``: when the round began); the violations found."""
        rows = self.deliveries(mailings)
        found = self._no_loss(rows, mailings)
        for kind, wire in self.wires.items():
            found += self._once(kind, wire, rows)
            fresh = wire.requests[self.seen.get(kind, 0) :]
            self.seen[kind] = len(wire.requests)
            found += self._isolated(kind, fresh)
            found += self._compliant(kind, wire, fresh, since)
        found += self._logs_clean() + self._errors_clean(mailings)
        return found

    def _no_loss(
        self, rows: dict[int, tuple[str, DeliveryStatus, int]], mailings: list[int]
    ) -> list[str]:
        """I1: every delivery final, every mailing sent, every sender's mailing materialized."""
        found = []
        left = Counter(s for _, s, _ in rows.values() if s not in FINAL)
        if left:
            found.append(f"I1: deliveries not final: {dict(left)}")
        senders = Counter(sender for _, _, sender in rows.values())
        if len(senders) != len(mailings):
            found.append(f"I1: deliveries of {len(senders)} senders for {len(mailings)} mailings")
        for mailing, (status, error) in self._ends(mailings).items():
            if status is not MailingStatus.SENT:
                found.append(f"I1: mailing {mailing} ended {status.value}: {error[:200]}")
        return found

    def _once(
        self, kind: str, wire: Wire, rows: dict[int, tuple[str, DeliveryStatus, int]]
    ) -> list[str]:
        """I2 for one provider and the round's deliveries: taken at most once, exactly the
        accepted ones."""
        found = []
        handed = Counter((a, int(d)) for a, d in wire.fake.accepted if int(d) in rows)
        twice = {k: n for k, n in handed.items() if n > 1}
        if twice:
            found.append(f"I2: {kind} took {len(twice)} deliveries more than once")
        accepted = {
            (a, d)
            for d, (a, s, sender) in rows.items()
            if s is DeliveryStatus.ACCEPTED and self.wire_of(sender) is wire
        }
        if set(handed) != accepted:
            extra, missing = len(set(handed) - accepted), len(accepted - set(handed))
            found.append(f"I2: {kind} took {extra} not accepted, {missing} accepted not taken")
        return found

    def _isolated(self, kind: str, fresh: list[Request]) -> list[str]:
        """I4 on the wire: a provider's requests name only its own sender's canary readers."""
        owner = next(s for s, k in SENDERS.items() if k == kind)
        named: set[str] = set().union(*(r.canaries for r in fresh))
        if owner not in named:  # its sender's mailing went out: the scan must see its canaries
            return [f"I4: {kind} requests never named {owner}'s own canaries: nothing checked"]
        strangers = named - {owner}
        return [f"I4: {kind} requests named {sorted(strangers)}'s canaries"] if strangers else []

    def _compliant(self, kind: str, wire: Wire, fresh: list[Request], since: float) -> list[str]:
        """I5: headers and postal address on every request, nobody taken after unsubscribing,
        nothing but what was in flight while a mailing was paused."""
        found = []
        bad = sum(1 for r in fresh if not r.compliant)
        if bad:
            found.append(f"I5: {bad} {kind} requests without both headers or the postal address")
        late = [
            a
            for a, committed in self.unsubscribed.items()
            if any(t > committed and t >= since for t in wire.taken_at.get(a, []))
        ]
        if late:
            found.append(f"I5: {kind} took {len(late)} readers after their unsubscribe")
        for window in (w for w in self.pauses if w.kind == kind and w.paused >= since):
            during = {
                a for r in fresh if window.paused < r.at < window.resumed for a in r.addresses
            }
            if during - window.flying:
                found.append(f"I5: {kind} got {len(during - window.flying)} readers while paused")
        return found

    def _logs_clean(self) -> list[str]:
        """I4 in the worker logs: no canary reader's address anywhere in them."""
        hits = sum(
            len(CANARY.findall(path.read_bytes())) for path in (self.folder / "logs").glob("*.log")
        )
        new, self.log_hits = hits - self.log_hits, hits
        return [f"I4: {new} canary addresses in the worker logs"] if new else []

    def _errors_clean(self, mailings: list[int]) -> list[str]:
        """I4 in the recorded reasons: a delivery's or mailing's error names no canary reader of
        a partner other than its sender."""
        self.session.rollback()
        slugs = {p.id: s for s, p in self.senders.items()}
        texts = [
            *self.session.execute(
                select(Mailing.sender_id, Delivery.error)
                .join(Mailing, Mailing.id == Delivery.mailing_id)
                .where(Delivery.mailing_id.in_(mailings), Delivery.error.is_not(None))
            ),
            *self.session.execute(
                select(Mailing.sender_id, Mailing.error).where(
                    Mailing.id.in_(mailings), Mailing.error.is_not(None)
                )
            ),
        ]
        strangers = {
            m.decode()
            for sender, error in texts
            for m in CANARY.findall(str(error).encode())
            if m.decode() != slugs[sender]
        }
        return [f"I4: error texts name {sorted(strangers)}'s canaries"] if strangers else []


def _readers(slug: str) -> list[str]:
    return [f"canary-{slug}-{n}@{slug}-readers.example" for n in range(CANARIES)]


def build_week(session: Session) -> tuple[dict[str, Partner], dict[str, MailingList]]:
    """The hub, its four senders (each its own provider account and postal address) and their
    lists: canary readers, then bulk readers."""
    session.add(hub_record())
    senders, lists = {}, {}
    for slug, kind in SENDERS.items():
        row = partner(session, slug)
        row.postal_address = POSTALS[slug]
        row.provider_kind = kind
        row.provider = {"kind": kind, "max_per_second": PACE}
        lst = mailing_list(session, row, f"{slug}-main", _readers(slug))
        session.execute(
            insert(Subscriber),
            [
                {"list_id": lst.id, "email": f"r{n}@{slug}-readers.example", "attributes": {}}
                for n in range(LIST_SIZE)
            ],
        )
        senders[slug], lists[slug] = row, lst
    session.commit()
    return senders, lists


@contextmanager
def running_soak(pg_url: str, folder: Path) -> Iterator[Soak]:
    """The hub's week, its Redis and the four fake providers; no worker yet."""
    engine = make_engine(pg_url)
    upgrade(engine)
    server = RedisServer(folder / "redis", free_port())
    server.start()
    try:
        with make_sessionmaker(engine)() as session, ExitStack() as stack:
            wires = {}
            for slug, kind in SENDERS.items():
                wire = Wire(kind, Fake(), POSTALS[slug])
                stack.enter_context(serve(wire.wrap(_handler(kind, wire.fake)), wire.fake))
                wires[kind] = wire
            senders, lists = build_week(session)
            soak = Soak(session, pg_url, folder, server, wires, senders, lists)
            try:
                yield soak
            finally:
                soak.close()
    finally:
        server.kill()
        engine.dispose()


# -- the faults --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Fault:
    """A fault: ``prepare`` before the round's tick (what must be in place as it starts), and
    ``inject`` once a quarter of the round is accepted; each says what it did."""

    name: str
    inject: Callable[[Soak, random.Random, list[int]], str]
    prepare: Callable[[Soak, random.Random], str] | None = None


def _kill_worker(soak: Soak, rng: random.Random, _: list[int]) -> str:
    soak.replace(rng.choice(soak.workers))
    return "1 worker SIGKILLed, a new one started"


def _start_crashing(soak: Soak, _: random.Random) -> str:
    soak.start_worker(JVMAIL_FAULT="send:after-provider")
    return "a worker that dies after the provider's 2xx"


def _crash_landed(soak: Soak, _: random.Random, mailings: list[int]) -> str:
    crashing = soak.doomed[-1]
    soak.until_ticking(
        "the crashing worker took a batch, or the round ended",
        lambda: (
            crashing.poll() is not None or not soak.counts(mailings).get(DeliveryStatus.PENDING)
        ),
    )
    if crashing.poll() is None:
        soak.signal(crashing, signal.SIGKILL)
        crashing.wait()
        return "the crashing worker got no batch (killed)"
    return f"crashed after a 2xx (exit {crashing.returncode})"


def _freeze_worker(soak: Soak, rng: random.Random, _: list[int]) -> str:
    frozen = rng.choice(soak.workers)
    soak.signal(frozen, signal.SIGSTOP)
    began = time.monotonic()
    soak.until_ticking(
        "the frozen worker's lease over", lambda: time.monotonic() - began > LEASE + 1
    )
    soak.signal(frozen, signal.SIGCONT)
    return f"1 worker SIGSTOPped {LEASE + 1:.0f} s (lease {LEASE:.0f} s), then SIGCONT"


def _rolling_deploy(soak: Soak, _: random.Random, __: list[int]) -> str:
    old = list(soak.workers)
    for proc in old:
        soak.signal(proc, signal.SIGTERM)
    for proc in old:
        proc.wait(timeout=60)
    soak.workers = [w for w in soak.workers if w not in old]
    for _proc in old:
        soak.start_worker()
    return f"{len(old)} workers SIGTERMed, {len(old)} new ones"


def _kill_redis(soak: Soak, _: random.Random, __: list[int]) -> str:
    soak.redis.restart()
    return "Redis SIGKILLed, restarted from its append-only file"


def _lose_redis(soak: Soak, _: random.Random, __: list[int]) -> str:
    soak.redis.restart(empty=True)
    return "Redis SIGKILLed, restarted empty"


def _terminate_connections(soak: Soak, _: random.Random, mailings: list[int]) -> str:
    terminated = 0
    for _time in range(3):
        terminated += soak.terminate_connections()
        soak.until_ticking(
            "the workers connected again, or the round ended",
            lambda: _connected(soak) or not soak.counts(mailings).get(DeliveryStatus.PENDING),
        )
    return f"{terminated} worker connections terminated, 3 times"


def _connected(soak: Soak) -> bool:
    row = soak.session.execute(
        text("SELECT count(*) FROM pg_stat_activity WHERE application_name = :app"),
        {"app": soak.namespace},
    ).scalar()
    soak.session.rollback()
    return bool(row)


def _most_pending(soak: Soak, rng: random.Random, mailings: list[int]) -> tuple[int, int]:
    """The round's mailing with the most deliveries still pending, one already being sent
    first (ties drawn), and how many are pending."""
    counts = {m: soak.counts([m]) for m in mailings}

    def rank(mailing: int) -> tuple[bool, int]:
        pending = counts[mailing].get(DeliveryStatus.PENDING, 0)
        return pending > 0 and sum(counts[mailing].values()) > pending, pending

    mailing = max(sorted(mailings, key=lambda _: rng.random()), key=rank)
    return mailing, rank(mailing)[1]


def _pause(soak: Soak, rng: random.Random, mailings: list[int]) -> str:
    mailing, pending = _most_pending(soak, rng, mailings)
    window = soak.pause_and_resume(mailing)
    held = window.resumed - window.paused
    return (
        f"{window.kind}'s mailing paused {held:.1f} s with {pending} pending and "
        f"{len(window.flying)} in flight, resumed"
    )


def _storm(soak: Soak, rng: random.Random, _: list[int]) -> str:
    kind = rng.choice(sorted(soak.wires))
    ends = time.monotonic() + 4.0
    refusals = 0

    def rule() -> Scripted | None:
        nonlocal refusals
        if time.monotonic() > ends:
            return None
        refusals += 1
        if refusals % 3 == 0:
            return Scripted(429, {"Retry-After": "1"})
        return Scripted(503)

    soak.wires[kind].fake.rule = rule
    return f"{kind}: 4 s of 503s, every third refusal a 429 (Retry-After: 1)"


def _hang(soak: Soak, rng: random.Random, _: list[int]) -> str:
    kind = rng.choice(sorted(soak.wires))
    ends = time.monotonic() + 6.0
    requests = 0

    def slow() -> float:
        nonlocal requests
        requests += 1
        return HANG if time.monotonic() < ends and requests % 3 == 1 else 0.0

    soak.wires[kind].slow = slow
    return f"{kind}: for 6 s every third request taken, answered after {HANG:.1f} s"


def _invalid_addresses(soak: Soak, rng: random.Random) -> str:
    readers = [f"r{n}@alpha-readers.example" for n in range(LIST_SIZE)]
    chosen = [*rng.sample(readers, max(LIST_SIZE // 100, 2)), _readers("alpha")[0]]
    soak.wires["sendgrid"].fake.invalid = frozenset(chosen)
    return f"sendgrid deems {len(chosen)} of alpha's readers invalid (400)"


def _refusals_land(soak: Soak, _: random.Random, __: list[int]) -> str:
    return "refused as they come"


def _unsubscribe(soak: Soak, rng: random.Random, mailings: list[int]) -> str:
    mailing, _ = _most_pending(soak, rng, mailings)
    soak.session.rollback()
    rows = soak.session.execute(
        select(Subscriber.email, Mailing.sender_id)
        .join(Delivery, Delivery.subscriber_id == Subscriber.id)
        .join(Mailing, Mailing.id == Delivery.mailing_id)
        .where(Delivery.mailing_id == mailing, Delivery.status == DeliveryStatus.PENDING)
        .order_by(Delivery.id.desc())
        .limit(20)
    ).all()
    if not rows:
        return "nobody left pending to unsubscribe"
    soak.unsubscribe(rows[0][1], [a for a, _ in rows])
    return f"{len(rows)} pending readers unsubscribed"


FAULTS = (
    Fault("kill -9 a worker", _kill_worker),
    Fault("crash after the provider's 2xx", _crash_landed, _start_crashing),
    Fault("SIGSTOP past the lease", _freeze_worker),
    Fault("SIGTERM all, new workers", _rolling_deploy),
    Fault("kill -9 Redis (append-only)", _kill_redis),
    Fault("Redis restarted empty", _lose_redis),
    Fault("PostgreSQL connections terminated", _terminate_connections),
    Fault("pause / resume", _pause),
    Fault("503/429 storm", _storm),
    Fault("provider hangs past timeout", _hang),
    Fault("permanent 4xx for some", _refusals_land, _invalid_addresses),
    Fault("readers unsubscribe", _unsubscribe),
)


def draw(seed: int, rounds: int) -> list[Fault]:
    """The rounds' faults: the list shuffled by ``seed``, dealt out, shuffled again when used
    up, so that every fault lands two or three times in 30 rounds, in a random order."""
    rng = random.Random(seed)
    drawn: list[Fault] = []
    while len(drawn) < rounds:
        deck = list(FAULTS)
        rng.shuffle(deck)
        drawn += deck
    return drawn[:rounds]


def run_round(soak: Soak, number: int, fault: Fault, rng: random.Random) -> Round:
    """One round: the mailings due, ``fault`` once a quarter is accepted, settled, checked."""
    began, wall = time.monotonic(), time.time()
    record = Round(number, fault.name)
    record.violations += soak.exited_on_their_own()
    mailings = soak.new_mailings(number)
    before = {k: (Counter(w.answers), w.held) for k, w in soak.wires.items()}
    details = [fault.prepare(soak, rng)] if fault.prepare is not None else []
    soak.tick()
    expected = len(soak.senders) * (LIST_SIZE + CANARIES)
    soak.until_ticking(
        "a quarter of the round accepted",
        lambda: soak.counts(mailings).get(DeliveryStatus.ACCEPTED, 0) >= expected // 4,
    )
    faulted = time.monotonic()
    details.append(fault.inject(soak, rng, mailings))
    record.counts = soak.settle(mailings, record.violations)
    record.recovered_in = time.monotonic() - faulted
    details.append(tally(soak.wires, before))
    for wire in soak.wires.values():
        wire.fake.rule, wire.slow, wire.fake.invalid = None, None, frozenset()
    soak.doomed = [p for p in soak.doomed if p.poll() is None]
    record.violations += soak.check(mailings, wall)
    record.deliveries = sum(record.counts.values())
    record.detail = "; ".join(d for d in details if d)
    record.took = time.monotonic() - began
    return record


def summary(rounds: list[Round]) -> str:
    """The rounds as a table: fault, what it did, the outcome, recovery, violations."""
    lines = [
        f"soak: {len(rounds)} rounds, seed {SEED}, {len(SENDERS)} senders x "
        f"{LIST_SIZE + CANARIES} readers, {WORKERS} workers",
        f"{'#':>3} {'fault':<34} {'deliveries':>10} {'accepted':>8} {'failed':>6} "
        f"{'dead':>5} {'suppr':>5} {'recov s':>7} {'round s':>7} {'viol':>4}",
    ]
    for r in rounds:
        c = r.counts
        lines.append(
            f"{r.number + 1:>3} {r.fault:<34} {r.deliveries:>10} "
            f"{c.get(DeliveryStatus.ACCEPTED, 0):>8} {c.get(DeliveryStatus.FAILED, 0):>6} "
            f"{c.get(DeliveryStatus.DEAD, 0):>5} {c.get(DeliveryStatus.SUPPRESSED, 0):>5} "
            f"{r.recovered_in:>7.1f} {r.took:>7.1f} {len(r.violations):>4}"
        )
    recoveries = sorted(r.recovered_in for r in rounds)
    if recoveries:
        lines.append(
            f"recovered: median {recoveries[len(recoveries) // 2]:.1f} s, "
            f"max {recoveries[-1]:.1f} s; violations: {sum(len(r.violations) for r in rounds)}"
        )
    return "\n".join(lines)
