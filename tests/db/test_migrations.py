"""Migrations build exactly the schema the models describe, on SQLite and PostgreSQL."""

from __future__ import annotations

import os
import subprocess
import sys

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Engine, inspect

from jvmail.db import make_engine, upgrade
from jvmail.db.migrate import current_revision, head_revision
from jvmail.db.models import Base


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
