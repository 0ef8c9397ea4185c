"""A hub whose mailing went out, and `jvmail serve` started on it, for tests that use HTTP."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import requests
from sqlalchemy import func, select

from jvmail.db import make_engine, make_sessionmaker, upgrade
from jvmail.db.models import Delivery
from jvmail.dispatch.pipeline import dispatch, send_batch
from jvmail.providers.outbox import OutboxProvider
from tests.dispatch.conftest import build_hub


def sent_hub(tmp_path: Path) -> tuple[str, int, int]:
    """A SQLite hub whose mailing went out: (url, mailing id, first delivery id)."""
    url = f"sqlite:///{tmp_path / 'hub.db'}"
    engine = make_engine(url)
    upgrade(engine)
    with make_sessionmaker(engine)() as session:
        hub = build_hub(session)
        for bounds in dispatch(session, hub.mailing.id, batch_size=100):
            send_batch(session, OutboxProvider(tmp_path / "out"), hub.mailing.id, bounds)
        first = session.scalar(select(func.min(Delivery.id)))
        mailing = hub.mailing.id
    engine.dispose()
    assert first is not None
    return url, mailing, first


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_ready(server: subprocess.Popen[bytes], base: str) -> None:
    """Until the server answers its health check (or has died: then its output says why)."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if requests.get(f"{base}/healthz", timeout=0.5).status_code == 200:
                return
        except requests.ConnectionError:
            try:
                server.wait(timeout=0.1)  # not up yet: wait on the process itself
            except subprocess.TimeoutExpired:
                continue
            raise AssertionError(server.communicate()[0].decode()) from None
    raise AssertionError("jvmail serve did not answer within 30 s")


@contextmanager
def serving(url: str, env: dict[str, str] | None = None) -> Iterator[tuple[str, list[str]]]:
    """`jvmail serve` on ``url``'s database, with ``env`` added to its environment: (its base
    URL, its output lines once stopped)."""
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "jvmail", "serve", "--port", str(port)],
        env=os.environ | {"JVMAIL_DATABASE_URL": url} | (env or {}),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    output: list[str] = []
    try:
        wait_ready(server, base)
        yield base, output
    finally:
        server.terminate()
        output.extend(server.communicate(timeout=30)[0].decode().splitlines())
        output.append(f"exit {server.returncode}")
