"""Engines and sessions for SQLite (the embedded default) and PostgreSQL.

SQLite runs in WAL mode with foreign keys on, and pysqlite's own transaction handling is replaced
by an explicit ``BEGIN`` so that a transaction covers every statement, DDL included: a sync that
is killed half-way leaves the database exactly as it was.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

from sqlalchemy import BindParameter, Connection, Engine, bindparam, create_engine, event, make_url
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import URL
from sqlalchemy.orm import Session, sessionmaker

__all__ = [
    "DEFAULT_DATABASE_URL",
    "analyze",
    "begin_writing",
    "bind",
    "insert_or_skip",
    "is_sqlite",
    "make_engine",
    "make_sessionmaker",
    "normalize_url",
    "param",
]

DEFAULT_DATABASE_URL = "sqlite:///jvmail.db"

_BUSY_TIMEOUT_MS = 10_000


_ANALYZED = frozenset({"subscriber", "delivery"})


def analyze(conn: Connection, table: str) -> None:
    """ANALYZE ``table`` after a bulk change, so that the next statements are planned with its
    new row counts rather than the old ones (PostgreSQL's autovacuum gets to it only later,
    SQLite never does). SQLite samples, to stay quick."""
    if table not in _ANALYZED:
        raise ValueError(f"no statistics refresh for table {table!r}")
    if conn.dialect.name == "sqlite":
        conn.exec_driver_sql("PRAGMA analysis_limit = 1000")
    conn.exec_driver_sql(f"ANALYZE {table}")


def normalize_url(url: str) -> URL:
    """Parse a database URL; plain ``postgresql://`` URLs get the psycopg 3 driver."""
    parsed = make_url(url)
    if parsed.drivername in ("postgres", "postgresql"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed


def is_sqlite(engine: Engine) -> bool:
    return engine.dialect.name == "sqlite"


def make_engine(url: str, **kwargs: Any) -> Engine:
    """An engine for ``url``. A SQLite file's folder is created if needed."""
    parsed = normalize_url(url)
    if parsed.get_backend_name() != "sqlite":
        return create_engine(parsed, pool_pre_ping=True, **kwargs)
    if parsed.database and parsed.database != ":memory:":
        Path(parsed.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(parsed, connect_args={"isolation_level": None}, **kwargs)
    event.listen(engine, "connect", _sqlite_on_connect)
    event.listen(engine, "begin", _sqlite_on_begin)
    return engine


def _sqlite_on_connect(dbapi_connection: sqlite3.Connection, _record: object) -> None:
    cursor = dbapi_connection.cursor()
    # The busy timeout first: switching a new database to WAL needs a lock that a process
    # starting at the same moment may hold.
    cursor.execute(f"PRAGMA busy_timeout={_BUSY_TIMEOUT_MS}")
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def _sqlite_on_begin(connection: Any) -> None:
    # `sqlite_begin="BEGIN IMMEDIATE"` takes the write lock up front (waiting busy_timeout),
    # for transactions that will write after reading, such as migrations.
    connection.exec_driver_sql(connection.get_execution_options().get("sqlite_begin", "BEGIN"))


def begin_writing(session: Session) -> None:
    """Commit what the session has open, then begin a transaction that will write: on SQLite it
    takes the write lock up front, waiting its turn. A SQLite transaction that has read cannot
    wait for the lock when it first writes: once another connection has written since its read,
    the write fails at once ("database is locked")."""
    if session.in_transaction():
        session.commit()
    session.connection(execution_options={"sqlite_begin": "BEGIN IMMEDIATE"})


def make_sessionmaker(engine: Engine) -> sessionmaker[Session]:
    """Sessions that keep loaded objects usable after commit (they are short-lived)."""
    return sessionmaker(engine, expire_on_commit=False)


def insert_or_skip(session: Session | str, table: Any) -> Any:
    """An INSERT for ``table`` in the session's dialect (or the dialect so named), which offers
    ``on_conflict_do_nothing`` (PostgreSQL and SQLite both have it; SQLAlchemy spells it per
    dialect)."""
    name = session if isinstance(session, str) else session.get_bind().dialect.name
    if name == "postgresql":
        return postgresql.insert(table)
    return sqlite.insert(table)


def param(name: str, column: Any) -> BindParameter[Any]:
    """A parameter of ``column``'s type for a statement built once (``functools.cache``) and
    run many times, its value given by :func:`bind`. Hot statements are built so: building one
    anew can take longer than the database takes to run it."""
    return bindparam(f"p_{name}", type_=column.type)  # a column's own name is SQLAlchemy's


def bind(**values: Any) -> dict[str, Any]:
    """The values of :func:`param` parameters, by their names."""
    return {f"p_{name}": value for name, value in values.items()}
