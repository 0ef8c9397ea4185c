"""PostgreSQL connections from the pool: tested after they sat unused, not while in use."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import Engine, text
from sqlalchemy.exc import OperationalError

from jvmail.db import engine as engines
from jvmail.db.engine import make_engine


@pytest.fixture
def pg(pg_url: str) -> Iterator[Engine]:
    engine = make_engine(pg_url)
    yield engine
    engine.dispose()


def _pid(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(text("SELECT pg_backend_pid()")).scalar_one())


def _count_pings(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    pings: list[int] = []
    real = engine.dialect.do_ping

    def ping(dbapi_connection: object) -> bool:
        pings.append(1)
        return real(dbapi_connection)

    monkeypatch.setattr(engine.dialect, "do_ping", ping)
    return pings


def test_a_connection_in_steady_use_is_not_tested_one_left_idle_is(
    pg: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    pings = _count_pings(pg, monkeypatch)
    first = _pid(pg)
    assert [_pid(pg) for _ in range(5)] == [first] * 5  # the same pooled connection
    assert pings == []
    monkeypatch.setattr(engines, "PING_AFTER", 0.0)  # as if each had sat unused a while
    assert _pid(pg) == first
    assert pings == [1]


def test_a_connection_whose_server_went_away_while_idle_is_replaced(
    pg: Engine, pg_admin: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = _pid(pg)
    with pg_admin.connect() as admin:
        admin.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": first})
    monkeypatch.setattr(engines, "PING_AFTER", 0.0)
    second = _pid(pg)  # no error: the test found it gone, and the pool made another
    assert second != first


def test_a_connection_in_steady_use_that_lost_its_server_fails_once_then_all_are_replaced(
    pg: Engine, pg_admin: Engine
) -> None:
    with pg.connect() as a, pg.connect() as b:  # two pooled connections
        pids = [int(c.execute(text("SELECT pg_backend_pid()")).scalar_one()) for c in (a, b)]
    with pg_admin.connect() as admin:
        for pid in pids:
            admin.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
    with pytest.raises(OperationalError):
        _pid(pg)  # used a moment ago: not tested, so the statement meets the lost server
    # The pool then replaced every connection made before: the next ones work.
    assert _pid(pg) not in pids
    assert _pid(pg) not in pids
