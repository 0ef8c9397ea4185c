"""11. Two schedulers at once, and a database restored from an earlier backup started beside the
live one. After each, the invariants of :mod:`tests.faults.harness` (I1 no loss, I2 no
duplicates, I5 compliance); for the restored copy, I1 in it and I2 across both databases.

A backup restored beside the live database (the same configuration: the same Redis, the same
provider account; only JVMAIL_DATABASE_URL differs) holds the mailing as it was at the backup:
every fence of the database is in it, so only the send guard (:mod:`jvmail.dispatch.guard`, in
Redis) knows what the live hub sent since.
"""

from __future__ import annotations

import datetime as dt
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import parse_qs, quote, urlsplit, urlunsplit

from sqlalchemy import func, select, text
from sqlalchemy.orm import Session

from jvmail.db import make_engine, make_sessionmaker
from jvmail.db.models import Delivery, DeliveryStatus, MailingStatus, SchedulerLease
from jvmail.dispatch.pipeline import ALREADY_SENT
from jvmail.dispatch.reconcile import DEAD_REASON, GIVE_UP, reconcile
from tests.faults.conftest import READERS
from tests.faults.harness import (
    DEADLINE,
    FINAL,
    ROOT,
    UNFINISHED,
    System,
    running_system,
    scenario,
    until,
)

PACE = READERS / 6  # a mailing of several seconds, so the backup lands mid-mailing


def _libpq(url: str, database: str | None = None) -> str:
    """``url`` as pg_dump and pg_restore take it: no driver suffix, no query; ``database``
    instead of its own when given."""
    parts = urlsplit(url)
    path = f"/{database}" if database else parts.path
    return urlunsplit((parts.scheme.split("+")[0], parts.netloc, path, "", ""))


def _schema(url: str) -> str:
    """The schema a test URL's connections see (its ``-csearch_path=`` option)."""
    (options,) = parse_qs(urlsplit(url).query)["options"]
    return options.split("=", 1)[1]


def _run(*command: str) -> None:
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    assert done.returncode == 0, f"{command[0]} failed: {done.stderr}"


def backup(pg_url: str, dump: Path) -> None:
    """A backup of the live schema, as an operator takes it: `pg_dump -Fc` (one snapshot)."""
    _run("pg_dump", "-Fc", "-n", _schema(pg_url), "-f", str(dump), _libpq(pg_url))


@contextmanager
def restored(pg_url: str, dump: Path) -> Iterator[str]:
    """The backup restored into a new database of the same server (`createdb`, `pg_restore`),
    dropped afterwards; its URL, seeing the same schema."""
    name = f"jv_restored_{uuid.uuid4().hex[:8]}"
    admin = make_engine(_libpq(pg_url)).execution_options(isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f"CREATE DATABASE {name}"))
        try:
            _run("pg_restore", "--no-owner", "-d", _libpq(pg_url, name), str(dump))
            yield f"{_libpq(pg_url, name)}?options={quote(f'-csearch_path={_schema(pg_url)}')}"
        finally:
            with admin.connect() as conn:
                conn.execute(text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
    finally:
        admin.dispose()


class Copy:
    """The restored database, read from the test."""

    def __init__(self, url: str) -> None:
        self.engine = make_engine(url)
        self.session: Session = make_sessionmaker(self.engine)()

    def statuses(self) -> dict[int, DeliveryStatus]:
        self.session.rollback()  # a fresh snapshot
        return dict(self.session.execute(select(Delivery.id, Delivery.status)).all())

    def errors(self) -> dict[int, str]:
        self.session.rollback()
        rows = self.session.execute(select(Delivery.id, Delivery.error))
        return {d: e or "" for d, e in rows}

    def unfinished(self) -> int:
        self.session.rollback()
        count = self.session.scalar(select(func.count()).where(Delivery.status.in_(UNFINISHED)))
        return int(count or 0)

    def give_up_on_unknown(self) -> None:
        """Let the reconciler's deadline pass: the copy never gets the provider's events for
        what it had in flight at the backup (the live one sent it, and got them)."""
        later = dt.datetime.now(dt.UTC) + GIVE_UP + dt.timedelta(hours=1)
        reconcile(self.session, later)
        self.session.commit()

    def close(self) -> None:
        self.session.close()
        self.engine.dispose()


@scenario()
def test_a_backup_restored_beside_the_live_database_sends_nobody_again(
    pg_url: str, tmp_path: Path
) -> None:
    with running_system(pg_url, tmp_path, READERS, per_second=PACE) as system:
        system.start_worker()
        system.start_worker()
        system.tick()
        until("a third accepted", lambda: system.accepted_so_far() >= READERS // 3)
        dump = tmp_path / "backup.dump"
        backup(pg_url, dump)  # mid-mailing; the mailing goes on
        with restored(pg_url, dump) as copy_url:
            system.settle()
            rows = system.check()  # the live database, settled before the copy starts
            copy = Copy(copy_url)
            try:
                at_backup = copy.statuses()
                assert Counter(at_backup.values())[DeliveryStatus.ACCEPTED] < READERS // 2
                system.fault()
                app = f"&application_name={system.namespace}-copy"
                system.start_worker(JVMAIL_DATABASE_URL=copy_url + app)
                system.start_worker(JVMAIL_DATABASE_URL=copy_url + app)
                system.until_ticking("the restored copy quiet", lambda: copy.unfinished() == 0)
                copy.give_up_on_unknown()
                assert system.faulted_at is not None
                print(
                    f"\nrecovered in {time.monotonic() - system.faulted_at:.1f} s after the fault"
                )
                after, errors = copy.statuses(), copy.errors()
                output = "\n".join(system.worker_output().values())
                mailing_id = system.hub.mailing.id
            finally:
                copy.close()
        system.check()  # the copy changed nothing in the live database, nor added a request
    # I1 in the copy: every delivery final.
    left = Counter(s for s in after.values() if s not in FINAL)
    assert not left, f"I1: deliveries of the restored copy not final: {dict(left)}"
    # What the live hub sent after the backup is dead in the copy, with the guard's reason
    # (what was in flight at the backup: the reconciler's, it never learns more).
    for delivery, was in at_backup.items():
        if was is DeliveryStatus.ACCEPTED:
            assert after[delivery] is DeliveryStatus.ACCEPTED
            continue
        assert rows[delivery][1] is DeliveryStatus.ACCEPTED  # the live hub sent it
        assert after[delivery] is DeliveryStatus.DEAD
        expected = (
            DEAD_REASON.format(days=GIVE_UP.days) if was is DeliveryStatus.SENDING else ALREADY_SENT
        )
        assert errors[delivery] == expected
    # The copy's workers raised the alarm, naming the mailing and never an address.
    alerts = [line for line in output.splitlines() if "from another copy" in line]
    assert alerts, "no alert in the workers' logs"
    assert all(f"mailing {mailing_id}:" in line for line in alerts)
    assert not any("@" in line for line in alerts)
    # I2 across both databases: the provider took each address once in all.
    taken = Counter(address for address, _ in system.sendgrid.fake.accepted)
    assert len(taken) == READERS
    assert set(taken.values()) == {1}


# -- two schedulers ------------------------------------------------------------------------------


def start_scheduler(system: System, log: Path) -> subprocess.Popen[bytes]:
    """A real `jvmail scheduler` against the live system (its database, Redis and namespace),
    in a process group of its own, its output in ``log``."""
    environ = os.environ | {
        "JVMAIL_DATABASE_URL": system.pg_url,
        "JVMAIL_REDIS_URL": system.redis.url,
        "JVMAIL_REDIS_NAMESPACE": system.namespace,
    }
    environ.pop("JVMAIL_OUTBOX", None)
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "jvmail", "scheduler"],
            env=environ,
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def holder_of(proc: subprocess.Popen[bytes]) -> str:
    """The scheduler lease's holder name of a scheduler process (see `jvmail scheduler`)."""
    return f"{socket.gethostname()}:{proc.pid}"


def lease_holder(system: System) -> str | None:
    system.session.rollback()
    return system.session.scalar(select(SchedulerLease.holder))


def unfinished(system: System) -> int:
    counts = system.counts()
    return sum(counts.get(s, 0) for s in UNFINISHED)


@scenario()
def test_two_schedulers_the_lease_holder_killed_mid_mailing(pg_url: str, tmp_path: Path) -> None:
    with running_system(pg_url, tmp_path, READERS, per_second=PACE) as system:
        doomed = system.start_worker()
        system.start_worker()
        system.tick()  # dispatched now: a due mailing is never held as missed by a scheduler
        until("the mailing dispatched", lambda: system.mailing_status() != MailingStatus.PLANNED)
        log = tmp_path / "schedulers.log"
        first = start_scheduler(system, log)
        schedulers = [first]
        try:
            until("the first scheduler holds the lease", lambda: lease_holder(system) is not None)
            assert lease_holder(system) == holder_of(first)
            second = start_scheduler(system, log)
            schedulers.append(second)
            until("a third accepted", lambda: system.accepted_so_far() >= READERS // 3)
            system.fault()
            # The lease holder dies, and so does a worker with batches in flight: what it had
            # in flight needs a scheduler's ticks (expired to unknown, its batches relayed).
            os.killpg(first.pid, signal.SIGKILL)
            first.wait()
            system.signal(doomed, signal.SIGKILL)
            # No tick from the harness now: only the second scheduler can finish the mailing.
            until(
                "the second scheduler took over and the mailing finished",
                lambda: lease_holder(system) == holder_of(second) and unfinished(system) == 0,
                DEADLINE + 120,  # its lease outlives the holder by 90 s, ticks come each minute
            )
            assert second.poll() is None, "the second scheduler exited on its own"
            counts = system.settle()
            system.check()
        finally:
            for proc in schedulers:
                if proc.poll() is None:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
    assert counts.get(DeliveryStatus.ACCEPTED, 0) + counts.get(DeliveryStatus.DEAD, 0) == READERS
    assert counts.get(DeliveryStatus.DEAD, 0) <= 2 * system.batch  # at most the killed batches
    assert "tick enqueued" in log.read_text()
