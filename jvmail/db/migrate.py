"""Alembic migrations, run programmatically: every command brings the schema to head first."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, text
from sqlalchemy.exc import SQLAlchemyError

from jvmail.errors import DatabaseError

__all__ = ["current_revision", "head_revision", "upgrade"]

_MIGRATIONS = Path(__file__).parent / "migrations"
# Any constant works; it only has to be the same in every jvmail process.
_PG_LOCK_KEY = 0x6A766D61


def _config() -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(_MIGRATIONS))
    return cfg


def head_revision() -> str:
    head = ScriptDirectory.from_config(_config()).get_current_head()
    assert head is not None, "no migrations are packaged"
    return head


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def upgrade(engine: Engine) -> bool:
    """Bring the schema to head. Returns whether anything was applied.

    Concurrent callers serialize (an advisory lock on PostgreSQL, the write lock on SQLite), so
    processes started at once do not both create the tables.

    Raises:
        DatabaseError: the database cannot be reached or a migration failed.
    """
    try:
        if current_revision(engine) == head_revision():
            return False
        cfg = _config()
        with engine.connect() as plain:
            conn = plain.execution_options(sqlite_begin="BEGIN IMMEDIATE")
            with conn.begin():
                if conn.dialect.name == "postgresql":
                    conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_LOCK_KEY})
                cfg.attributes["connection"] = conn
                command.upgrade(cfg, "head")
    except SQLAlchemyError as exc:
        where = engine.url.render_as_string()
        raise DatabaseError(
            f"cannot migrate the database at {where}: {exc.__class__.__name__}",
            "check JVMAIL_DATABASE_URL and that the database server is running",
        ) from exc
    return True
