"""The database: engine and sessions, typed models, migrations."""

from jvmail.db.engine import DEFAULT_DATABASE_URL, is_sqlite, make_engine, make_sessionmaker
from jvmail.db.migrate import upgrade

__all__ = ["DEFAULT_DATABASE_URL", "is_sqlite", "make_engine", "make_sessionmaker", "upgrade"]
