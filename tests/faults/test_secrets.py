"""Secrets at rest: a mailing sent through the sender's SendGrid account whose API key, a canary,
is held only in the encrypted secret store (not in the environment). Afterwards neither a dump
of the database nor anything the run logged or printed holds the key, while the provider was
given it on every request (the fake SendGrid refuses any other key)."""

from __future__ import annotations

import datetime as dt
import logging
import os
import subprocess
import threading
import uuid

import pytest
from cryptography.fernet import Fernet
from sqlalchemy import select, text

from jvmail.db import make_engine, make_sessionmaker, upgrade
from jvmail.db.models import Delivery, DeliveryStatus, PartnerSecret
from jvmail.dispatch.actors import Runtime
from jvmail.dispatch.runner import run_due
from jvmail.providers.base import Provider
from jvmail.providers.factory import build_provider
from jvmail.providers.sendgrid import SendGridProvider
from jvmail.secrets import KEYS_ENV, Keys, put
from tests.conftest import PG_URL
from tests.dispatch.conftest import WHEN, build_hub
from tests.providers.fakes import Fake, sendgrid_handler, serve

KEY_ENV = "SENDER_SENDGRID_KEY"  # what the sender's [provider] names; never set in this run


def _dump(schema: str) -> str:
    """`pg_dump` of the scenario's schema, as an operator's backup would hold it."""
    done = subprocess.run(
        ["pg_dump", "--no-owner", "--schema", schema, "--dbname", PG_URL],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    return done.stdout


@pytest.mark.quick
@pytest.mark.postgres
def test_a_canary_key_held_only_in_the_store_is_in_no_dump_and_no_log(
    pg_url: str,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
) -> None:
    caplog.set_level(logging.DEBUG)  # every library's debug lines too
    canary = f"SG.canary-{uuid.uuid4().hex}"
    monkeypatch.delenv(KEY_ENV, raising=False)
    monkeypatch.setenv(KEYS_ENV, Fernet.generate_key().decode())
    monkeypatch.setenv("JVMAIL_DATABASE_URL", pg_url)  # where the workers find the store
    engine = make_engine(pg_url)
    upgrade(engine)
    fake = Fake()
    with make_sessionmaker(engine)() as session, serve(sendgrid_handler(fake, canary), fake):
        hub = build_hub(session)
        sender = hub.sender
        sender.provider_kind = "sendgrid"
        sender.provider = {"kind": "sendgrid", "api_key_env": KEY_ENV}
        put(session, Keys.from_env(os.environ), sender, KEY_ENV, canary, now=WHEN)
        session.commit()
        slug, contact, account = sender.slug, sender.contact_email, dict(sender.provider)
        built: dict[str, Provider] = {}
        lock = threading.Lock()

        def senders_account(_mailing_id: int) -> Provider:
            """As the workers' boot does: the account built once, its secret read then."""
            with lock:
                if slug not in built:
                    provider = build_provider(slug, contact, account, name="Sender")
                    assert isinstance(provider, SendGridProvider)
                    provider.api = fake.url  # the fake SendGrid instead of api.sendgrid.com
                    built[slug] = provider
                return built[slug]

        runtime = Runtime(pg_url, senders_account, batch=10)
        try:
            report = run_due(runtime, WHEN + dt.timedelta(hours=1), threads=2)
        finally:
            runtime.close()
        statuses = set(session.scalars(select(Delivery.status)))
        token = session.scalars(select(PartnerSecret.token)).one()
        schema = str(session.scalar(text("SELECT current_schema()")))
    engine.dispose()

    # The canary was used: the fake took every reader, and it refuses any other key.
    assert report.sent == 25
    assert statuses == {DeliveryStatus.ACCEPTED}
    assert len(fake.accepted) == 25
    assert fake.requests >= 3  # batches of 10: the key went out on each request
    # ... yet it is nowhere at rest or in what the run said.
    dump = _dump(schema)
    assert token in dump, "the dump holds the store (encrypted)"
    assert canary not in dump, "the database dump holds the plaintext key"
    assert caplog.records, "the run logged (at debug level)"
    assert canary not in caplog.text, "a log record holds the key"
    out, err = capfd.readouterr()
    assert canary not in out + err, "the run printed the key"
    assert KEY_ENV not in os.environ
