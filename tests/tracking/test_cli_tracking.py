"""`jvmail serve`, `suppress`, `rotate-link-key` and `credit` as a user runs them."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import requests
from click.testing import CliRunner
from sqlalchemy import func, select

from jvmail.cli import cli
from jvmail.db import make_engine, make_sessionmaker, upgrade
from jvmail.db.models import (
    Delivery,
    EventType,
    HubRecord,
    Subscriber,
    SubscriberStatus,
    Suppression,
    TrackingEvent,
)
from jvmail.dispatch.pipeline import dispatch, send_batch
from jvmail.providers.outbox import OutboxProvider
from jvmail.tracking.links import Keyring
from tests.dispatch.conftest import build_hub


def _hub(tmp_path: Path) -> tuple[str, int, int]:
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


def test_suppress_by_hand_and_its_errors(tmp_path: Path) -> None:
    url, _, _ = _hub(tmp_path)
    runner = CliRunner()
    done = runner.invoke(cli, ["--db", url, "suppress", "sender", "Reader3@Mail.example"])
    assert done.exit_code == 0, done.output
    assert "reader3@mail.example" in done.output
    bad = runner.invoke(cli, ["--db", url, "suppress", "sender", "not-an-address"])
    assert bad.exit_code != 0
    nobody = runner.invoke(cli, ["--db", url, "suppress", "nobody", "a@b.example"])
    assert nobody.exit_code != 0
    engine = make_engine(url)
    with make_sessionmaker(engine)() as session:
        assert session.scalars(select(Suppression.email)).all() == ["reader3@mail.example"]
        statuses = session.scalars(
            select(Subscriber.status).where(Subscriber.email == "reader3@mail.example")
        ).all()
        assert statuses == [SubscriberStatus.UNSUBSCRIBED] * 2
    engine.dispose()


def test_rotating_the_link_key_keeps_old_links_valid(tmp_path: Path) -> None:
    url, _, _ = _hub(tmp_path)
    engine = make_engine(url)
    sessions = make_sessionmaker(engine)
    with sessions() as session:
        before = Keyring.from_hex(session.get(HubRecord, 1).link_keys)  # type: ignore[union-attr]
    for _ in range(4):
        assert CliRunner().invoke(cli, ["--db", url, "rotate-link-key"]).exit_code == 0
    with sessions() as session:
        keys = session.get(HubRecord, 1).link_keys  # type: ignore[union-attr]
    engine.dispose()
    assert len(keys) == 3  # the newest three
    assert Keyring.from_hex(keys).read(before.sign(1, 2, 3)) is None  # retired after three
    one_back = Keyring.from_hex(keys[1:])
    assert Keyring.from_hex(keys).read(one_back.sign(1, 2, 3)) is not None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_serve_answers_clicks_and_writes_them_before_it_stops(tmp_path: Path) -> None:
    url, mailing, delivery = _hub(tmp_path)
    port = _free_port()
    env = os.environ | {"JVMAIL_DATABASE_URL": url}
    server = subprocess.Popen(
        [sys.executable, "-m", "jvmail", "serve", "--port", str(port)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_ready(server, base)
        token = Keyring.from_hex(["ab" * 32]).sign(mailing, delivery, 1)
        answer = requests.get(
            f"{base}/c/{token}",
            allow_redirects=False,
            headers={"user-agent": "Mozilla/5.0 (X11; Linux x86_64) Firefox/130.0"},
            timeout=5,
        )
        assert answer.status_code == 302
        assert answer.headers["location"] == "https://owner.example/offer"
        assert requests.get(f"{base}/c/{token[:-3]}", timeout=5).status_code == 404
    finally:
        server.send_signal(signal.SIGTERM)
        output = server.communicate(timeout=30)[0].decode()
    # uvicorn shuts down gracefully, then exits as the signal asked
    assert server.returncode in (0, -signal.SIGTERM), output
    assert "Application shutdown complete" in output
    engine = make_engine(url)
    with make_sessionmaker(engine)() as session:
        clicks = session.scalars(
            select(TrackingEvent.delivery_id).where(TrackingEvent.type == EventType.CLICKED)
        ).all()
    engine.dispose()
    assert clicks == [delivery]


def _wait_ready(server: subprocess.Popen[bytes], base: str) -> None:
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
