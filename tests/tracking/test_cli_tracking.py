"""`jvmail serve`, `suppress`, `rotate-link-key` and `credit` as a user runs them."""

from __future__ import annotations

import datetime as dt
import json
import signal
from pathlib import Path

import orjson
import pytest
import requests
from click.testing import CliRunner
from sqlalchemy import func, select

from jvmail.cli import cli
from jvmail.db import make_engine, make_sessionmaker
from jvmail.db.models import (
    EventType,
    HubRecord,
    Mailing,
    MailingStatus,
    Partner,
    Subscriber,
    SubscriberStatus,
    Suppression,
    TrackingEvent,
    WebhookInbox,
)
from jvmail.tracking.links import Keyring
from jvmail.tracking.serve import app as serve_app
from tests.tracking.serving import sent_hub, serving
from tests.tracking.signing import ec_key, sendgrid_headers


def test_suppress_by_hand_and_its_errors(tmp_path: Path) -> None:
    url, _, _ = sent_hub(tmp_path)
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
    url, _, _ = sent_hub(tmp_path)
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


def test_serve_answers_clicks_and_writes_them_before_it_stops(tmp_path: Path) -> None:
    url, mailing, delivery = sent_hub(tmp_path)
    keys = Keyring.from_hex(["ab" * 32])
    with serving(url) as (base, output), requests.Session() as http:
        http.headers["user-agent"] = "Mozilla/5.0 (X11; Linux x86_64) Firefox/130.0"
        token = keys.sign(mailing, delivery, 1)
        answer = http.get(f"{base}/c/{token}", allow_redirects=False, timeout=5)
        assert answer.status_code == 302
        assert answer.headers["location"] == "https://owner.example/offer"
        assert http.get(f"{base}/c/{token[:-3]}", timeout=5).status_code == 404
        # A burst of clicks just before the server is stopped: every one answered is stored.
        for other in range(delivery + 1, delivery + 25):
            for _ in range(8):
                token = keys.sign(mailing, other, 1)
                assert http.get(f"{base}/c/{token}", allow_redirects=False, timeout=5).ok
    # uvicorn shuts down gracefully, then exits as the signal asked
    assert output[-1] in ("exit 0", f"exit {-signal.SIGTERM}"), output
    assert any("Application shutdown complete" in line for line in output)
    engine = make_engine(url)
    with make_sessionmaker(engine)() as session:
        clicks = session.scalars(
            select(TrackingEvent.delivery_id).where(TrackingEvent.type == EventType.CLICKED)
        ).all()
    engine.dispose()
    assert len(clicks) == 1 + 24 * 8


def test_serve_stores_every_webhook_event_it_answered_before_it_stops(tmp_path: Path) -> None:
    url, mailing, first = sent_hub(tmp_path)
    key, public = ec_key()
    engine = make_engine(url)
    sessions = make_sessionmaker(engine)
    with sessions() as session:
        sender = session.scalars(select(Partner).where(Partner.slug == "sender")).one()
        sender.provider_kind = "sendgrid"
        sender.provider = {"kind": "sendgrid", "webhook_public_key_env": "SENDER_SG_HOOK"}
        session.commit()
    now = dt.datetime.now(dt.UTC)
    bodies = [
        orjson.dumps(
            [
                {
                    "email": f"reader{n}@mail.example",
                    "timestamp": int(now.timestamp()),
                    "event": "delivered",
                    "sg_event_id": f"ev-{batch}-{n}",
                    "jv_delivery": str(first + n),
                }
                for n in range(25)
            ]
        )
        for batch in range(8)
    ]
    with (
        serving(url, {"SENDER_SG_HOOK": public}) as (base, output),
        requests.Session() as http,
    ):
        for body in bodies:  # the last ones are answered just before the server is stopped
            answer = http.post(
                f"{base}/webhooks/sendgrid/sender",
                data=body,
                headers=sendgrid_headers(key, body, now),
                timeout=10,
            )
            assert answer.json() == {"accepted": 25, "confirmed": False}
    assert output[-1] in ("exit 0", f"exit {-signal.SIGTERM}"), output
    with sessions() as session:
        stored = session.scalar(
            select(func.count())
            .select_from(TrackingEvent)
            .where(TrackingEvent.provider == "sendgrid", TrackingEvent.mailing_id == mailing)
        )
        waiting = session.scalar(select(func.count()).select_from(WebhookInbox))
    engine.dispose()
    assert (stored, waiting) == (8 * 25, 0)


def test_review_links_lists_the_mailings_awaiting_approval(tmp_path: Path) -> None:
    url, mailing, _ = sent_hub(tmp_path)
    runner = CliRunner()
    none = runner.invoke(cli, ["--db", url, "review-links"])
    assert none.exit_code == 0
    assert "No mailing is awaiting approval" in none.output
    engine = make_engine(url)
    with make_sessionmaker(engine)() as session:
        row = session.get(Mailing, mailing)
        assert row is not None
        row.status = MailingStatus.AWAITING_APPROVAL
        session.commit()
    engine.dispose()
    listed = runner.invoke(cli, ["--db", url, "review-links", "--json"])
    assert listed.exit_code == 0, listed.output
    (link,) = json.loads(listed.output)
    token = link["url"].removeprefix("https://jv.example/review/")
    assert Keyring.from_hex(["ab" * 32]).read(token) == (mailing, 0, 0)


def test_serve_drainers_0_makes_a_server_that_only_fills_the_inbox(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("JVMAIL_DATABASE_URL", f"sqlite:///{tmp_path / 'jv.db'}")
    monkeypatch.setenv("JVMAIL_DRAINERS", "0")
    assert serve_app().state.tracker.settings.drain is False
    monkeypatch.setenv("JVMAIL_DRAINERS", "3")
    settings = serve_app().state.tracker.settings
    assert (settings.drain, settings.drainers) == (True, 3)
    result = CliRunner().invoke(cli, ["serve", "--drainers", "-1"])
    assert result.exit_code == 2
    assert "--drainers" in result.output
