"""Migrations build exactly the schema the models describe, on SQLite and PostgreSQL."""

from __future__ import annotations

import os
import subprocess
import sys

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Engine, inspect, select, text

from jvmail.db import make_engine, make_sessionmaker, upgrade
from jvmail.db.migrate import _config, current_revision, head_revision
from jvmail.db.models import Base, Delivery, Subscriber
from tests.dispatch.conftest import build_hub, second_mailing


def test_upgrade_reaches_head_and_matches_models(engine: Engine) -> None:
    assert current_revision(engine) == head_revision()
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert diff == []
    assert {"partner", "subscriber", "delivery", "ledger_entry"} <= set(
        inspect(engine).get_table_names()
    )


def test_upgrade_is_idempotent(engine: Engine) -> None:
    assert upgrade(engine) is False
    assert current_revision(engine) == head_revision()


def test_concurrent_upgrades_on_an_empty_database(db_url: str) -> None:
    command = [sys.executable, "-m", "jvmail", "--db", db_url, "db", "upgrade"]
    env = {**os.environ, "COLUMNS": "200"}
    procs = [
        subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
        for _ in range(3)
    ]
    outputs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], outputs
    engine = make_engine(db_url)
    assert current_revision(engine) == head_revision()
    engine.dispose()


def test_0013_records_batches_for_unfinished_rows_and_opens_every_batch(db_url: str) -> None:
    engine = make_engine(db_url)
    cfg = _config()
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "0012")
    try:
        with make_sessionmaker(engine)() as session:
            hub = build_hub(session)
            other = second_mailing(session, hub)
            subscribers = session.scalars(
                select(Subscriber.id).where(Subscriber.list_id == hub.lists[0].id)
            ).all()
            states = ["accepted"] * 3 + ["sending"] + ["pending"] * (len(subscribers) - 4)
            for sub, state in zip(subscribers, states, strict=True):
                session.add(Delivery(mailing_id=hub.mailing.id, subscriber_id=sub, status=state))
            session.add(Delivery(mailing_id=other.id, subscriber_id=subscribers[0]))
            session.add(
                Delivery(mailing_id=other.id, subscriber_id=subscribers[1], status="accepted")
            )
            session.flush()
            session.execute(
                text(
                    "INSERT INTO delivery_batch (mailing_id, lo, hi, enqueued_at)"
                    " SELECT mailing_id, id, id, CURRENT_TIMESTAMP FROM delivery"
                    " WHERE mailing_id = :m"
                ),
                {"m": other.id},
            )
            ids = session.scalars(
                select(Delivery.id).where(Delivery.mailing_id == hub.mailing.id).order_by("id")
            ).all()
            session.commit()
        assert upgrade(engine) is True
        with engine.connect() as conn:
            batches = conn.execute(
                text(
                    "SELECT mailing_id, lo, hi, open, accepted FROM delivery_batch"
                    " ORDER BY mailing_id, lo"
                )
            ).all()
            indexes = {i["name"] for i in inspect(conn).get_indexes("delivery")}
            if conn.dialect.name == "postgresql":
                options = conn.scalar(
                    text("SELECT reloptions FROM pg_class WHERE oid = 'delivery'::regclass")
                )
                assert options == ["fillfactor=50"]
        # The unfinished rows (from the fourth on) in one batch; the batches already recorded
        # kept, open while a row of theirs is not final, with their tallies.
        assert [tuple(b) for b in batches] == [
            (hub.mailing.id, ids[3], ids[-1], True, 0),
            (other.id, batches[1].lo, batches[1].lo, True, 0),
            (other.id, batches[2].lo, batches[2].lo, False, 1),
        ]
        assert "ix_delivery_mailing_status" not in indexes
    finally:
        engine.dispose()
