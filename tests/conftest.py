"""Shared fixtures: the same tests run on SQLite and on a real PostgreSQL.

PostgreSQL comes from JVMAIL_TEST_DATABASE_URL (default: the local `test` database). On a laptop
without it those tests skip; under CI=true they fail instead, so CI never passes on skips.
Each PostgreSQL test gets a schema of its own, dropped afterwards.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.orm import Session

from jvmail.db import make_engine, make_sessionmaker, upgrade
from jvmail.db.engine import normalize_url
from jvmail.scaffold import example_hub_dir, scaffold, write_demo_subscribers

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
PG_URL = os.environ.get("JVMAIL_TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("JVMAIL_TEST_REDIS_URL", "redis://127.0.0.1:6379/13")


def unavailable(what: str, why: object) -> None:
    """Skip on a laptop, fail under CI: CI must never go green on skipped integration tests."""
    message = f"{what} is not reachable ({why})"
    if IN_CI:
        pytest.fail(f"{message}; CI requires it", pytrace=False)
    pytest.skip(message)


@pytest.fixture(scope="session")
def pg_admin() -> Iterator[Engine]:
    engine = create_engine(normalize_url(PG_URL), isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    except Exception as exc:
        unavailable("PostgreSQL", exc)
    yield engine
    engine.dispose()


@pytest.fixture
def pg_url(pg_admin: Engine) -> Iterator[str]:
    """A URL whose connections see only a fresh schema of their own."""
    schema = f"t_{uuid.uuid4().hex[:12]}"
    with pg_admin.connect() as conn:
        conn.execute(text(f"CREATE SCHEMA {schema}"))
    sep = "&" if "?" in PG_URL else "?"
    yield f"{PG_URL}{sep}options={quote(f'-csearch_path={schema}')}"
    with pg_admin.connect() as conn:
        conn.execute(text(f"DROP SCHEMA {schema} CASCADE"))


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'jvmail.db'}"
    url: str = request.getfixturevalue("pg_url")
    return url


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    engine = make_engine(db_url)
    upgrade(engine)
    yield engine
    engine.dispose()


@pytest.fixture
def session(engine: Engine) -> Iterator[Session]:
    with make_sessionmaker(engine)() as session:
        yield session


@pytest.fixture
def starter_hub(tmp_path: Path) -> Path:
    """The `jvmail init` starter config, in a scratch folder."""
    hub = tmp_path / "hub"
    scaffold(hub)
    return hub


@pytest.fixture(scope="session")
def example_hub_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    hub = tmp_path_factory.mktemp("example") / "hub"
    scaffold(hub, source=example_hub_dir())
    write_demo_subscribers(hub)
    return hub


@pytest.fixture
def example_hub(example_hub_template: Path, tmp_path: Path) -> Path:
    """A private copy of the example hub with its generated subscriber CSVs."""
    return Path(shutil.copytree(example_hub_template, tmp_path / "example"))
