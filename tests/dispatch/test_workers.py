"""Worker processes on Redis and PostgreSQL: every message once, even when a worker is killed.

Two `dramatiq jvmail.dispatch.boot` processes share the work; the test enqueues ticks (what
`jvmail tick` does from cron) until every delivery is final. The outbox journal is the fake
provider's record of what it was handed: each delivery must appear in it at most once.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from sqlalchemy import func, insert, select, text
from sqlalchemy.orm import Session

from jvmail.broker import make_broker
from jvmail.db import make_engine, make_sessionmaker, upgrade
from jvmail.db.models import Delivery, DeliveryBatch, DeliveryStatus, Subscriber
from jvmail.dispatch.actors import Actors, Runtime, declare
from tests.conftest import REDIS_URL, unavailable
from tests.dispatch.conftest import WHEN, build_hub

READERS = 2_500  # three batches of 1,000
UNFINISHED = (DeliveryStatus.PENDING, DeliveryStatus.CLAIMED, DeliveryStatus.SENDING)


@pytest.fixture
def redis_url() -> str:
    try:
        redis.Redis.from_url(REDIS_URL).ping()
    except redis.RedisError as exc:
        unavailable("Redis", exc)
    return REDIS_URL


@pytest.fixture
def hub_db(pg_url: str) -> Iterator[Session]:
    engine = make_engine(pg_url)
    upgrade(engine)
    with make_sessionmaker(engine)() as session:
        hub = build_hub(session)
        session.execute(
            insert(Subscriber),
            [
                {"list_id": hub.lists[0].id, "email": f"bulk{n}@mail.example", "attributes": {}}
                for n in range(READERS - 25)
            ],
        )
        session.commit()
        yield session
    engine.dispose()


def _workers(env: dict[str, str], faults: list[str]) -> list[subprocess.Popen[bytes]]:
    command = [sys.executable, "-m", "dramatiq", "jvmail.dispatch.boot"]
    command += ["--processes", "1", "--threads", "1", "--queues", "jvmail"]
    return [
        subprocess.Popen(
            command,
            env=env | {"JVMAIL_FAULT": fault},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # its own process group: killed with its worker children
        )
        for fault in faults
    ]


def _until_quiet(session: Session, actors: Actors, deadline: float) -> dict[str, int]:
    """Tick every half second until no delivery is unfinished; the final counts."""
    while time.monotonic() < deadline:
        actors.tick.send(WHEN.isoformat())
        session.expire_all()
        counts = dict(
            session.execute(select(Delivery.status, func.count()).group_by(Delivery.status)).all()
        )
        if counts and not any(counts.get(s) for s in UNFINISHED):
            return {str(k): v for k, v in counts.items()}
        time.sleep(0.5)  # waiting for other processes to finish, not ordering a race
    pytest.fail(f"deliveries still unfinished: {counts}")


@pytest.mark.parametrize("fault", ["", "send:after-claim", "send:after-provider"])
def test_workers_send_every_message_once_even_when_one_is_killed(
    hub_db: Session, pg_url: str, redis_url: str, tmp_path: Path, fault: str
) -> None:
    namespace = f"jvmail-test-{uuid.uuid4().hex[:8]}"
    env = os.environ | {
        "JVMAIL_DATABASE_URL": pg_url,
        "JVMAIL_REDIS_URL": redis_url,
        "JVMAIL_REDIS_NAMESPACE": namespace,
        "JVMAIL_OUTBOX": str(tmp_path),
        "JVMAIL_LEASE_SECONDS": "3",
    }
    broker = make_broker(redis_url, namespace=namespace)
    actors = declare(broker, Runtime(pg_url, lambda _: pytest.fail("this process only enqueues")))
    procs = _workers(env, [fault])
    try:
        if fault:
            # Alone at first, the faulty worker takes the first batch and dies (SIGKILL) at
            # the fault point; its supervisor then stops too. A healthy worker takes over.
            actors.tick.send(WHEN.isoformat())
            procs[0].wait(timeout=60)
            procs += _workers(env, [""])
        counts = _until_quiet(hub_db, actors, time.monotonic() + 90)
    finally:
        for proc in procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        broker.close()
    # Killed after the provider took its batch (1,000 or the last 500): those stay in doubt,
    # for the reconciler; killed after claiming, its batch is claimed again once the lease ends.
    in_doubt = counts.pop("unknown", 0)
    assert in_doubt in ((500, 1000) if fault == "send:after-provider" else (0,))
    assert counts == {"accepted": READERS - in_doubt}
    handed = Counter((tmp_path / "journal.log").read_text().split("\n")[:-1])
    assert len(handed) == READERS  # the in-doubt batch did reach the provider, once
    assert set(handed.values()) == {1}
    # The fault did strike: a killed claim shows as one claim more than there are batches
    # (each claim draws one fence from the sequence; a claim that finds nothing draws none).
    claims = hub_db.scalar(text("SELECT last_value FROM delivery_fence"))
    batches = hub_db.scalar(select(func.count()).select_from(DeliveryBatch))
    assert batches == 3
    assert claims == (batches + 1 if fault == "send:after-claim" else batches)
