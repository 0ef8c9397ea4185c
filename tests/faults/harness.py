"""The fault harness: the sending side of a hub run the way production runs it, faults injected
from outside, and the invariants checked once the system is quiet.

What runs: a fresh PostgreSQL schema with one due mailing; a Redis server of the harness's own
(append-only file, fsync on every write, on a free port) so that it can be killed and restarted
without touching anyone else's; `dramatiq` worker processes with production's boot
(tests/dispatch/fault_worker.py: every mailing through SendGrid's API); and a fake SendGrid that
validates each request against SendGrid's published schema and records every recipient it took,
with when, and every request it got (:class:`Arrival`). The workers' database connections carry
the scenario's namespace as their application_name. The harness enqueues ticks, as `jvmail
scheduler` does every minute.

Once the system is quiet (no delivery pending, claimed or sending), the provider's events are
played back for the deliveries left ``unknown``, as SendGrid's event webhook would report them,
and the reconciler's deadline is let pass for those it never took. Then the invariants:

- I1 no loss: every delivery is final (accepted, suppressed, failed, or dead);
- I2 no duplicates: the provider took each delivery at most once, and took exactly the accepted
  ones;
- I4 isolation: the promotion owner's canary readers (a list of its own that no mailing here
  sends to) appear in no worker's output, no request the provider got, and no delivery's or
  mailing's error text;
- I5 compliance: every request carried both unsubscribe headers and the sender's postal
  address, and no recipient was taken after its unsubscribe was committed.

The checks are per mailing (the harness's own by default), so a scenario can add mailings of
its own beside it and check each.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import IO, Any

import dramatiq
import pytest
import redis
from sqlalchemy import func, insert, select, text, update
from sqlalchemy.orm import Session

from jvmail.broker import make_broker
from jvmail.db import make_engine, make_sessionmaker, upgrade
from jvmail.db.models import (
    Delivery,
    DeliveryStatus,
    HubRecord,
    Mailing,
    MailingStatus,
    Partner,
    Subscriber,
    Suppression,
)
from jvmail.dispatch.actors import QUEUE, Actors, Runtime, declare
from jvmail.dispatch.control import pause, resume
from jvmail.dispatch.reconcile import GIVE_UP, reconcile
from jvmail.tracking.store import store_events
from jvmail.tracking.webhooks.sendgrid import SendGridKeys, parse
from tests.dispatch.conftest import WHEN, Hub, build_hub, mailing_list
from tests.providers.fakes import Fake, Scripted, sendgrid_handler, serve
from tests.tracking.signing import ec_key, sendgrid_headers

ROOT = Path(__file__).resolve().parents[2]
KEY = "SG.faults"
UNFINISHED = (DeliveryStatus.PENDING, DeliveryStatus.CLAIMED, DeliveryStatus.SENDING)
FINAL = frozenset(
    {DeliveryStatus.ACCEPTED, DeliveryStatus.SUPPRESSED, DeliveryStatus.FAILED, DeliveryStatus.DEAD}
)
POSTAL = "1 Example Street, Springfield"  # the sender's postal address (tests.dispatch.conftest)
DEADLINE = 180.0  # seconds for a mailing to settle after a fault; generous for a busy machine
CANARIES = 5  # canary readers on the promotion owner's own list (I4)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def until(what: str, done: Callable[[], bool], seconds: float = DEADLINE) -> None:
    """Wait for ``done``, polled every tenth of a second (other processes' progress)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if done():
            return
        time.sleep(0.1)  # waiting on other processes, not ordering a race
    pytest.fail(f"gave up waiting: {what}")


@dataclass
class RedisServer:
    """A redis-server of the harness's own: kill -9 it, restart it from its append-only file,
    or restart it empty."""

    folder: Path
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.fail("redis-server is not installed (apt-get install redis-server)")
        self.folder.mkdir(parents=True, exist_ok=True)
        command = [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", ""]
        command += ["--appendonly", "yes", "--appendfsync", "always", "--dir", str(self.folder)]
        self.proc = subprocess.Popen(
            command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
        )
        client = redis.Redis.from_url(self.url)
        try:
            until("redis-server answering", lambda: self._pings(client), 30)
        finally:
            client.close()

    @staticmethod
    def _pings(client: redis.Redis) -> bool:
        try:
            return bool(client.ping())
        except redis.RedisError:
            return False

    def kill(self) -> None:
        if self.proc is not None:
            with suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()
            self.proc = None

    def restart(self, *, empty: bool = False) -> None:
        self.kill()
        if empty:  # the machine came back without its disk
            shutil.rmtree(self.folder)
        self.start()


@dataclass(frozen=True)
class Arrival:
    """One request as it reached the fake SendGrid: when (wall time, read as the handler
    starts, so never before the request arrived) and to whom, whatever the answer."""

    at: float
    addresses: tuple[str, ...]


@dataclass
class Recorder:
    """The fake SendGrid, with when each request and each recipient reached it."""

    fake: Fake
    taken_at: dict[str, list[float]] = field(default_factory=dict)  # address -> wall times
    arrivals: list[Arrival] = field(default_factory=list)  # every request, in arrival order
    raw: list[bytes] = field(default_factory=list)  # every request's body, whatever the answer

    def wrap(
        self, handle: Callable[[BaseHTTPRequestHandler], None]
    ) -> Callable[[BaseHTTPRequestHandler], None]:
        def timed(h: BaseHTTPRequestHandler) -> None:
            at = time.time()
            raw = h.rfile.read(int(h.headers.get("Content-Length", "0")))
            self.arrivals.append(Arrival(at, _addresses(raw)))
            self.raw.append(raw)
            before = len(self.fake.accepted)
            h.rfile = io.BytesIO(raw)  # the fake reads the body again
            handle(h)
            now = time.time()
            for address, _ in self.fake.accepted[before:]:
                self.taken_at.setdefault(address, []).append(now)

        return timed


def _in_claim(waiting: str | None, query: str) -> bool:
    """A worker connection waiting, inside its claim transaction, to stamp its batch claimed."""
    return waiting == "Lock" and "delivery_batch" in query and "claimed_at" in query


def _addresses(raw: bytes) -> tuple[str, ...]:
    """The recipients of a SendGrid request body (none when it is not one)."""
    try:
        body = json.loads(raw)
        return tuple(t["email"] for p in body["personalizations"] for t in p["to"])
    except (ValueError, KeyError, TypeError):
        return ()


class WorkerPool:
    """Worker processes in process groups of their own, and the broker that enqueues their
    ticks: what a scenario's system (and the soak's) has. The system provides the attributes
    below, and :meth:`tick`; ``deadline`` is how long :meth:`until_ticking` waits."""

    pg_url: str
    redis: RedisServer
    namespace: str
    workers: list[subprocess.Popen[bytes]]
    doomed: list[subprocess.Popen[bytes]]  # die by a fault point
    _actors: Actors | None
    _broker: dramatiq.Broker | None
    deadline = DEADLINE

    @property
    def worker_db_url(self) -> str:
        """The workers' database URL: their connections carry the scenario's namespace as
        their application_name, so a fault can find them in pg_stat_activity."""
        return f"{self.pg_url}{'&' if '?' in self.pg_url else '?'}application_name={self.namespace}"

    def signal(self, proc: subprocess.Popen[bytes], sig: signal.Signals) -> None:
        """``sig`` to the worker's whole process group (dramatiq's main process and its
        worker process)."""
        with suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)

    def stop_all(self) -> None:
        for proc in self.workers + self.doomed:
            self.signal(proc, signal.SIGCONT)
            self.signal(proc, signal.SIGKILL)
            proc.wait()
        self.workers.clear()
        self.doomed.clear()

    @property
    def actors(self) -> Actors:
        if self._actors is None:
            self._broker = make_broker(self.redis.url, namespace=self.namespace)
            self._actors = declare(
                self._broker, Runtime(self.pg_url, lambda _: pytest.fail("enqueues only"))
            )
        return self._actors

    def tick_at(self, when: dt.datetime) -> bool:
        """Enqueue a tick for ``when``, as the scheduler does every minute; False while Redis
        is down."""
        try:
            self.actors.tick.send(when.isoformat())
        except (redis.RedisError, dramatiq.errors.ConnectionError):
            return False
        return True

    def tick(self) -> bool:
        raise NotImplementedError

    def until_ticking(
        self, what: str, done: Callable[[], bool], seconds: float | None = None
    ) -> None:
        """Wait for ``done``, ticking every half second as the scheduler would."""
        last = 0.0

        def ticked() -> bool:
            nonlocal last
            if time.monotonic() - last > 0.5:
                self.tick()
                last = time.monotonic()
            return done()

        until(what, ticked, self.deadline if seconds is None else seconds)

    def close(self) -> None:
        self.stop_all()
        if self._broker is not None:
            self._broker.close()


@dataclass
class System(WorkerPool):
    session: Session
    hub: Hub
    pg_url: str
    readers: int
    redis: RedisServer
    sendgrid: Recorder
    folder: Path | None = None  # where each worker's stdout and stderr go (else nowhere)
    canaries: tuple[str, ...] = ()  # the owner's readers: in nothing the sending side writes
    namespace: str = field(default_factory=lambda: f"faults-{uuid.uuid4().hex[:8]}")
    lease: float = 6.0
    batch: int = 200
    workers: list[subprocess.Popen[bytes]] = field(default_factory=list)
    doomed: list[subprocess.Popen[bytes]] = field(default_factory=list)  # die by a fault point
    unsubscribed: dict[str, float] = field(default_factory=dict)  # address -> commit time
    faulted_at: float | None = None  # when the (last) fault was injected
    recovered_in: float | None = None  # seconds from it to a quiet, settled system
    _actors: Actors | None = None
    _broker: dramatiq.Broker | None = None
    _started: int = 0  # workers started so far (each one's output files are numbered)

    # -- processes -----------------------------------------------------------------------------

    def start_worker(self, **env: str) -> subprocess.Popen[bytes]:
        """A `dramatiq` worker process (production's boot), in a process group of its own."""
        environ = os.environ | {
            "JVMAIL_DATABASE_URL": self.worker_db_url,
            "JVMAIL_REDIS_URL": self.redis.url,
            "JVMAIL_REDIS_NAMESPACE": self.namespace,
            "JVMAIL_LEASE_SECONDS": str(self.lease),
            "JVMAIL_TEST_SENDGRID_API": self.sendgrid.fake.url,
            "JVMAIL_TEST_SENDGRID_KEY": KEY,
            "JVMAIL_TEST_BATCH": str(self.batch),
            **env,
        }
        for name in ("JVMAIL_OUTBOX", *(() if "JVMAIL_FAULT" in env else ("JVMAIL_FAULT",))):
            environ.pop(name, None)
        command = [sys.executable, "-m", "dramatiq", "tests.dispatch.fault_worker"]
        command += ["--processes", "1", "--threads", "2", "--queues", QUEUE]
        out, err = self._output_files()
        try:
            proc = subprocess.Popen(
                command, env=environ, cwd=ROOT, stdout=out, stderr=err, start_new_session=True
            )
        finally:
            for f in (out, err):
                if not isinstance(f, int):
                    f.close()  # the worker holds its own copies
        (self.doomed if "JVMAIL_FAULT" in env else self.workers).append(proc)
        return proc

    def _output_files(self) -> tuple[IO[bytes] | int, IO[bytes] | int]:
        """The next worker's stdout and stderr: files in the scenario's folder (files, not
        pipes, so that a chatty worker never blocks on a reader), or nowhere without one."""
        self._started += 1
        if self.folder is None:
            return subprocess.DEVNULL, subprocess.DEVNULL
        logs = self.folder / "workers"
        logs.mkdir(parents=True, exist_ok=True)
        return (
            (logs / f"{self._started}.out").open("ab"),
            (logs / f"{self._started}.err").open("ab"),
        )

    def worker_output(self) -> dict[str, str]:
        """Every worker's stdout and stderr so far, by file name."""
        logs = None if self.folder is None else self.folder / "workers"
        if logs is None or not logs.is_dir():
            return {}
        return {f.name: f.read_text(errors="replace") for f in sorted(logs.iterdir())}

    @property
    def threads(self) -> int:
        """Worker threads running now (each holds at most one batch at a time)."""
        return 2 * sum(1 for proc in self.workers if proc.poll() is None)

    def fault(self) -> None:
        """Note that a fault is being injected now (for the time to recover)."""
        self.faulted_at = time.monotonic()

    def tick(self) -> bool:
        """Enqueue a tick, as the scheduler does every minute; False while Redis is down."""
        return self.tick_at(WHEN)

    # -- reading -------------------------------------------------------------------------------

    def _mailing(self, mailing_id: int | None) -> int:
        """``mailing_id``, or the harness's own mailing when None."""
        return self.hub.mailing.id if mailing_id is None else mailing_id

    def counts(self, mailing_id: int | None = None) -> dict[DeliveryStatus, int]:
        """One mailing's deliveries by status (the harness's own by default)."""
        return self._counts(self._mailing(mailing_id))

    def _counts(self, mailing_id: int | None) -> dict[DeliveryStatus, int]:
        """Deliveries by status, of one mailing or (None) of them all."""
        self.session.rollback()  # a fresh snapshot
        query = select(Delivery.status, func.count()).group_by(Delivery.status)
        if mailing_id is not None:
            query = query.where(Delivery.mailing_id == mailing_id)
        return dict(self.session.execute(query).all())

    def accepted_so_far(self) -> int:
        return self.counts().get(DeliveryStatus.ACCEPTED, 0)

    def deliveries(self, mailing_id: int | None = None) -> dict[int, tuple[str, DeliveryStatus]]:
        """One mailing's deliveries (the harness's own by default): id -> (address, status)."""
        self.session.rollback()
        rows = self.session.execute(
            select(Delivery.id, Subscriber.email, Delivery.status)
            .join(Subscriber, Subscriber.id == Delivery.subscriber_id)
            .where(Delivery.mailing_id == self._mailing(mailing_id))
        )
        return {d: (email, status) for d, email, status in rows}

    def errors(self, status: DeliveryStatus, mailing_id: int | None = None) -> list[str]:
        """The recorded reasons of one mailing's deliveries in ``status`` (the harness's own
        mailing by default)."""
        self.session.rollback()
        return [
            e or ""
            for e in self.session.scalars(
                select(Delivery.error).where(
                    Delivery.status == status, Delivery.mailing_id == self._mailing(mailing_id)
                )
            )
        ]

    def mailing_status(self, mailing_id: int | None = None) -> MailingStatus:
        """One mailing's status (the harness's own by default)."""
        self.session.rollback()
        status = self.session.scalar(
            select(Mailing.status).where(Mailing.id == self._mailing(mailing_id))
        )
        assert status is not None
        return status

    def mailing_error(self, mailing_id: int | None = None) -> str:
        """Why one mailing failed or paused (the harness's own by default); empty if it did
        not."""
        self.session.rollback()
        error = self.session.scalar(
            select(Mailing.error).where(Mailing.id == self._mailing(mailing_id))
        )
        return error or ""

    def written(self) -> Iterator[tuple[str, str]]:
        """(where, text) of everything the sending side wrote that a reader's address could
        leak into: each worker's output, each request the provider got, and every delivery's
        and mailing's error text."""
        yield from ((f"worker output {name}", text) for name, text in self.worker_output().items())
        for n, raw in enumerate(list(self.sendgrid.raw), start=1):
            yield f"provider request {n}", raw.decode(errors="replace")
        self.session.rollback()
        failed = select(Delivery.id, Delivery.error).where(Delivery.error.is_not(None))
        for d, error in self.session.execute(failed):
            yield f"delivery {d}'s error", error or ""
        for m, error in self.session.execute(select(Mailing.id, Mailing.error)):
            yield f"mailing {m}'s error", error or ""

    # -- faults from outside -------------------------------------------------------------------

    def unsubscribe(self, addresses: list[str]) -> None:
        """The readers unsubscribe (what `POST /u/{token}` commits), now, mid-mailing."""
        self.session.execute(
            insert(Suppression),
            [
                {"partner_id": self.hub.sender.id, "email": a, "reason": "unsubscribed"}
                for a in addresses
            ],
        )
        self.session.commit()
        now = time.time()
        self.unsubscribed |= dict.fromkeys(addresses, now)

    def pause(self) -> tuple[float, frozenset[str]]:
        """Pause the mailing, as `jvmail pause` does. When the pause had committed (wall time,
        read just after), and the addresses then in flight (``sending``): the only ones the
        provider may still receive while the mailing is paused."""
        self.session.rollback()
        pause(self.session, [self.hub.mailing.id], dt.datetime.now(dt.UTC))
        self.session.commit()
        committed = time.time()
        flying = self.session.scalars(
            select(Subscriber.email)
            .join(Delivery, Delivery.subscriber_id == Subscriber.id)
            .where(Delivery.status == DeliveryStatus.SENDING)
        )
        return committed, frozenset(flying)

    def resume(self) -> float:
        """Resume the mailing, as `jvmail resume` does; when (wall time, read just before)."""
        self.session.rollback()
        began = time.time()
        resume(self.session, [self.hub.mailing.id], dt.datetime.now(dt.UTC))
        self.session.commit()
        return began

    def restart_workers(self) -> None:
        """SIGTERM every worker, wait for each to stop, start as many new ones."""
        old = list(self.workers)
        for proc in old:
            self.signal(proc, signal.SIGTERM)
        for proc in old:
            proc.wait(timeout=60)
        self.workers = [w for w in self.workers if w not in old]
        for _ in old:
            self.start_worker()

    def reset_claims(self, wait: float = 5.0) -> list[str]:
        """Reset the connections of workers inside a claim transaction: hold the batch table, so
        that a claim, its rows already updated, waits for it inside its transaction (the
        claim's stamp of its batch); terminate the worker connections waiting so, with any
        other worker connection then inside a transaction; let the table go. Waits up to
        ``wait`` seconds for a claim to be caught. The statements the terminated connections
        were in."""
        engine = make_engine(self.pg_url)
        try:
            with engine.connect() as holder, engine.connect() as admin:
                admin.execution_options(isolation_level="AUTOCOMMIT")
                holder.execute(text("LOCK TABLE delivery_batch IN SHARE ROW EXCLUSIVE MODE"))
                find = text(
                    "SELECT pid, wait_event_type, query FROM pg_stat_activity "
                    "WHERE application_name = :app AND xact_start IS NOT NULL"
                )
                deadline = time.monotonic() + wait
                rows = admin.execute(find, {"app": self.namespace}).all()
                while not any(_in_claim(w, q) for _, w, q in rows):
                    if time.monotonic() > deadline:
                        break
                    time.sleep(0.02)  # polling other processes' progress
                    rows = admin.execute(find, {"app": self.namespace}).all()
                for pid, _, _ in rows:
                    admin.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
                holder.rollback()
        finally:
            engine.dispose()
        return ["claim" if _in_claim(w, q) else q for _, w, q in rows]

    # -- settling ------------------------------------------------------------------------------

    def settle(self, seconds: float = DEADLINE) -> dict[DeliveryStatus, int]:
        """Tick every half second until no delivery is unfinished; then play the provider's
        events back for what it took and let the reconciler's deadline pass; the counts."""
        deadline = time.monotonic() + seconds
        counts: dict[DeliveryStatus, int] = {}
        while time.monotonic() < deadline:
            for proc in self.workers:
                if proc.poll() is not None and proc.returncode not in (0, -signal.SIGKILL):
                    pytest.fail(f"a worker exited on its own ({proc.returncode})")
            self.tick()
            counts = self._counts(None)  # every mailing's
            if counts and not any(counts.get(s) for s in UNFINISHED):
                break
            time.sleep(0.5)  # waiting on other processes, not ordering a race
        else:
            pytest.fail(f"deliveries still unfinished: {counts}")
        if counts.get(DeliveryStatus.UNKNOWN):
            self._events_for_unknown()
            later = dt.datetime.now(dt.UTC) + GIVE_UP + dt.timedelta(hours=1)
            reconcile(self.session, later)
            self.session.commit()
        if self.faulted_at is not None:
            self.recovered_in = time.monotonic() - self.faulted_at
            print(f"\nrecovered in {self.recovered_in:.1f} s after the fault")
        return self.counts()

    def _events_for_unknown(self) -> None:
        """SendGrid's signed 'delivered' events for the unknown deliveries it did take (of any
        mailing)."""
        self.session.rollback()
        rows = {
            d: (email, mailing)
            for d, email, mailing in self.session.execute(
                select(Delivery.id, Subscriber.email, Delivery.mailing_id)
                .join(Subscriber, Subscriber.id == Delivery.subscriber_id)
                .where(Delivery.status == DeliveryStatus.UNKNOWN)
            )
        }
        taken = {int(d) for _, d in self.sendgrid.fake.accepted}
        doubt = sorted(rows)
        events = [
            {
                "email": rows[d][0],
                "timestamp": int(time.time()),
                "event": "delivered",
                "sg_event_id": f"delivered-{d}",
                "sg_message_id": f"sg-{d}.filter0001",
                "jv_delivery": str(d),
                "jv_mailing": str(rows[d][1]),
            }
            for d in doubt
            if d in taken
        ]
        if not events:
            return
        private, public = ec_key()
        now = dt.datetime.now(dt.UTC)
        body = json.dumps(events).encode()
        parsed = parse(sendgrid_headers(private, body, now), body, SendGridKeys((public,)), now)
        store_events(self.session, parsed, sender_id=self.hub.sender.id, soft_bounce_days=3)
        self.session.commit()
        self.tick()  # the reconciler settles them from the stored events
        until(
            "the events settled the unknown deliveries",
            lambda: self._counts(None).get(DeliveryStatus.UNKNOWN, 0) <= len(doubt) - len(events),
            60,
        )

    # -- the invariants ------------------------------------------------------------------------

    def check(
        self, mailing_id: int | None = None, *, readers: int | None = None
    ) -> dict[int, tuple[str, DeliveryStatus]]:
        """I1, I2, I4 and I5 for one mailing: the harness's own by default (``readers``
        deliveries unless told otherwise), or another's (as many deliveries as ``readers``,
        when given); the mailing's deliveries, for more checks."""
        rows = self.deliveries(mailing_id)
        # I1 no loss
        own = mailing_id is None or mailing_id == self.hub.mailing.id
        expected = self.readers if readers is None and own else readers
        if expected is not None:
            assert len(rows) == expected, f"I1: {len(rows)} deliveries, not {expected}"
        left = Counter(s for _, s in rows.values() if s not in FINAL)
        assert not left, f"I1: deliveries not final: {dict(left)}"
        # I2 no duplicates, and the provider took exactly the accepted deliveries
        handed = Counter((a, int(d)) for a, d in self.sendgrid.fake.accepted if int(d) in rows)
        twice = {k: n for k, n in handed.items() if n > 1}
        assert not twice, f"I2: {len(twice)} recipients handed to the provider more than once"
        accepted = {(a, d) for d, (a, s) in rows.items() if s is DeliveryStatus.ACCEPTED}
        assert set(handed) == accepted, "I2: what the provider took is not what was accepted"
        # I5 compliance
        for body in self.sendgrid.fake.bodies:
            assert _has_unsubscribe_headers(body), "I5: a request without both unsubscribe headers"
            contents = " ".join(c["value"] for c in body["content"])
            assert POSTAL in contents, "I5: a request without the sender's postal address"
        late = [
            a
            for a, committed in self.unsubscribed.items()
            if any(t > committed for t in self.sendgrid.taken_at.get(a, []))
        ]
        assert not late, f"I5: {len(late)} readers taken after their unsubscribe was committed"
        # I4 isolation
        leaks = canary_leaks(self.canaries, self.written())
        assert not leaks, f"I4: the owner's canary readers leaked: {leaks[:5]}"
        return rows


def canary_leaks(canaries: Iterable[str], written: Iterable[tuple[str, str]]) -> list[str]:
    """Where each canary address appears (case aside) in ``written``'s (where, text) pairs:
    ``"where: address"``, one per place and address; empty when none does."""
    wanted = [c.lower() for c in canaries]
    return [
        f"{where}: {canary}"
        for where, text in written
        for canary in wanted
        if canary in text.lower()
    ]


def _has_unsubscribe_headers(body: dict[str, Any]) -> bool:
    """Both RFC 8058 headers, on the request or on every personalization."""
    top = body.get("headers", {})
    for p in body["personalizations"]:
        headers = top | p.get("headers", {})
        if "List-Unsubscribe" not in headers or "List-Unsubscribe-Post" not in headers:
            return False
    return True


@contextmanager
def running_system(
    pg_url: str,
    folder: Path,
    readers: int,
    *,
    per_second: float,
    script: list[Scripted] | None = None,
    **settings: Any,
) -> Iterator[System]:
    """The hub (``readers`` on the sender's list, sending through a SendGrid account paced at
    ``per_second``; the promotion's owner with a list of canary readers nobody mails here),
    its Redis and the fake SendGrid; no worker yet. The workers' output goes to files under
    ``folder``."""
    engine = make_engine(pg_url)
    upgrade(engine)
    recorder = Recorder(Fake(script=list(script or [])))
    server = RedisServer(folder / "redis")
    server.start()
    try:
        with (
            make_sessionmaker(engine)() as session,
            serve(recorder.wrap(sendgrid_handler(recorder.fake, KEY)), recorder.fake),
        ):
            hub = build_hub(session)
            # The hub's own account (statements, if a scheduler sends them) writes here, not
            # into the working directory of the processes.
            session.execute(
                update(HubRecord).values(
                    provider={"kind": "outbox", "directory": str(folder / "hub-outbox")}
                )
            )
            canaries = tuple(f"canary-owner-{n}@owner.example" for n in range(CANARIES))
            mailing_list(session, hub.owner, "owner-canaries", list(canaries))
            session.execute(
                insert(Subscriber),
                [
                    {"list_id": hub.lists[0].id, "email": f"bulk{n}@mail.example", "attributes": {}}
                    for n in range(readers - 25)
                ],
            )
            account = {
                "kind": "sendgrid",
                "api_key_env": "JV_SENDGRID_KEY",
                "max_per_second": per_second,
            }
            session.execute(
                update(Partner)
                .where(Partner.id == hub.sender.id)
                .values(provider_kind="sendgrid", provider=account)
            )
            session.commit()
            system = System(
                session,
                hub,
                pg_url,
                readers,
                server,
                recorder,
                folder=folder,
                canaries=canaries,
                **settings,
            )
            try:
                yield system
            finally:
                system.close()
    finally:
        server.kill()
        engine.dispose()


def scenario(*marks: pytest.MarkDecorator) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """The marks of a fault scenario (worker processes on PostgreSQL and Redis), and ``marks``
    (``pytest.mark.quick`` for the ones `make test` runs)."""

    def mark(test: Callable[..., None]) -> Callable[..., None]:
        for m in (pytest.mark.slow, pytest.mark.postgres, pytest.mark.redis, *marks):
            test = m(test)
        return test

    return mark
