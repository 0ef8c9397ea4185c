"""The tracking side of the fault suite: a hub of two partners whose mailings went out, and a
real `jvmail serve` process on it, with its log captured and signed webhooks to post.

The hub (a fresh PostgreSQL schema): partner A (``sender``) mailed partner B's promotion to its
list, partner B (``owner``) mailed A's promotion (two links) to its own; each list holds canary
addresses of its partner's (``canary{n}@{slug}-canary.example``), which must never show up in
anything about the other partner (I4). Each partner has a provider account with webhook keys of
its own; :meth:`TrackingHub.account` switches an account to another provider.

The server: production's boot (`jvmail serve`, as `python -m tests.faults.serving serve`) with
one change: the SNS signing certificate of SES webhooks is read from the file
``JVMAIL_TEST_SNS_CERT`` instead of fetched from AWS, as tests/dispatch/fault_worker.py points a
worker at a fake SendGrid. Its PostgreSQL connections carry an ``application_name`` of their
own, so a scenario can find and terminate exactly them; its output goes to a log file.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
import secrets
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import requests
from cryptography.hazmat.primitives.asymmetric import ec
from sqlalchemy import Engine, func, select, text
from sqlalchemy.orm import Session

from jvmail.db import make_engine, make_sessionmaker, upgrade
from jvmail.db.models import (
    Delivery,
    Mailing,
    Partner,
    Promotion,
    Subscriber,
    Suppression,
    TrackingEvent,
    WebhookInbox,
)
from jvmail.tracking.links import Keyring
from tests.dispatch.conftest import build_hub, mailing, mailing_list
from tests.faults.harness import ROOT, free_port, until
from tests.tracking.signing import SnsSigner, basic_auth, ec_key, mailgun_body, sendgrid_headers

KEYS = Keyring.from_hex(["ab" * 32])  # the link key of tests.dispatch.conftest.hub_record
CANARIES = 5  # canary addresses per partner
B_LINKS = ["https://sender.example/offer", "https://sender.example/offer/pricing"]
BROWSER = "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_0) AppleWebKit/605.1.15 Safari/605.1.15"
CERT_URL = "https://sns.eu-west-1.amazonaws.com/SimpleNotificationService-faults.pem"


def canary(slug: str, n: int) -> str:
    return f"canary{n}@{slug}-canary.example"


@dataclass
class Side:
    """One partner: its mailing's deliveries (address -> id) and its webhook keys."""

    slug: str
    id: int
    mailing: int
    deliveries: dict[str, int]
    sendgrid: ec.EllipticCurvePrivateKey
    sendgrid_public: str
    mailgun: str = field(default_factory=lambda: secrets.token_hex(16))
    postmark: str = field(default_factory=lambda: secrets.token_hex(8))
    topic: str = ""
    env: str = ""  # the prefix of its env vars

    @property
    def canaries(self) -> list[str]:
        return [canary(self.slug, n) for n in range(CANARIES)]

    def provider(self, kind: str) -> dict[str, Any]:
        """Its account's `[provider]` table for ``kind``, webhooks set up."""
        hooks = {
            "sendgrid": {"api_key_env": "SG", "webhook_public_key_env": f"{self.env}_SG"},
            "mailgun": {
                "domain": "mg.example",
                "api_key_env": "MG",
                "webhook_signing_key_env": f"{self.env}_MG",
            },
            "postmark": {
                "server_token_env": "PM",
                "webhook_username": self.slug,
                "webhook_password_env": f"{self.env}_PM",
            },
            "ses": {"region": "eu-west-1", "sns_topic_arn": self.topic},
        }
        return {"kind": kind, **hooks[kind]}

    def environ(self) -> dict[str, str]:
        return {
            f"{self.env}_SG": self.sendgrid_public,
            f"{self.env}_MG": self.mailgun,
            f"{self.env}_PM": self.postmark,
        }


@dataclass
class TrackingHub:
    engine: Engine
    session: Session
    a: Side  # the sender of the hub of tests.dispatch.conftest
    b: Side  # the owner, given a list and a mailing of its own
    sns: SnsSigner

    def account(self, side: Side, kind: str) -> None:
        """Switch ``side``'s provider account to ``kind`` (read by the server per request)."""
        partner = self.session.get(Partner, side.id)
        assert partner is not None
        partner.provider_kind, partner.provider = kind, side.provider(kind)
        self.session.commit()

    # -- reading -------------------------------------------------------------------------------

    def stored(self) -> list[tuple[str, str, str, str, int | None]]:
        """(provider, event id, type, recipient hash, delivery) of every tracking event."""
        self.session.rollback()  # a fresh snapshot
        rows = self.session.execute(
            select(
                TrackingEvent.provider,
                TrackingEvent.provider_event_id,
                TrackingEvent.type,
                TrackingEvent.recipient_hash,
                TrackingEvent.delivery_id,
            ).order_by(TrackingEvent.id)
        )
        return [(p, e, str(t), h, d) for p, e, t, h, d in rows]

    def inbox(self) -> int:
        """Events waiting in the webhook inbox."""
        self.session.rollback()
        waiting = self.session.scalar(select(func.coalesce(func.sum(WebhookInbox.count), 0)))
        return int(waiting or 0)

    def suppressed(self) -> dict[tuple[int, str], str]:
        """(partner, address) -> reason."""
        self.session.rollback()
        rows = self.session.execute(
            select(Suppression.partner_id, Suppression.email, Suppression.reason)
        )
        return {(p, e): str(r) for p, e, r in rows}

    def statuses(self) -> dict[int, str]:
        """Delivery id -> status."""
        self.session.rollback()
        return {d: str(s) for d, s in self.session.execute(select(Delivery.id, Delivery.status))}


@contextmanager
def tracking_hub(pg_url: str, folder: Path) -> Iterator[TrackingHub]:
    """The two partners' mailings sent (through an outbox) on ``pg_url``'s fresh schema."""
    from tests.tracking.test_app import _send as send  # not for the server's boot: a test module

    engine = make_engine(pg_url)
    upgrade(engine)
    try:
        with make_sessionmaker(engine)() as session:
            hub = build_hub(session)
            session.add_all(
                Subscriber(list_id=hub.lists[0].id, email=canary("sender", n), attributes={})
                for n in range(CANARIES)
            )
            readers = [canary("owner", n) for n in range(CANARIES)] + ["b0@owner-readers.example"]
            owner_list = mailing_list(session, hub.owner, "owner-main", readers)
            promotion = Promotion(
                slug="sender-offer",
                partner_id=hub.sender.id,
                subject="Hello {{ first_name }}",
                html="".join(f"<p><a href='{u}'>see</a></p>" for u in B_LINKS),
                text="Hi {{ first_name }}, see " + " ".join(B_LINKS),
                landing_urls=B_LINKS,
                window_start=hub.promotion.window_start,
                window_end=hub.promotion.window_end,
                niches=["web"],
                mailings_wanted=1,
                exclude_partners=[],
            )
            session.add(promotion)
            session.flush()
            b_mailing = mailing(session, promotion, owner_list)
            session.commit()
            signer = SnsSigner.create()
            sides = []
            for partner, sent, env in (
                (hub.sender, hub.mailing, "FAULTS_A"),
                (hub.owner, b_mailing, "FAULTS_B"),
            ):
                key, public = ec_key()
                side = Side(partner.slug, partner.id, sent.id, {}, key, public, env=env)
                outbox = folder / f"outbox-{side.slug}"
                side.deliveries = send(session, dataclasses.replace(hub, mailing=sent), outbox)
                side.topic = f"arn:aws:sns:eu-west-1:123456789012:jv-{side.slug}"
                sides.append(side)
            tracking = TrackingHub(engine, session, sides[0], sides[1], signer)
            for side in sides:
                tracking.account(side, "sendgrid")
            yield tracking
    finally:
        engine.dispose()


# -- the server ------------------------------------------------------------------------------


@dataclass
class Server:
    """A `jvmail serve` process on a free port; its output in ``log``."""

    base: str
    app_name: str  # the application_name of its PostgreSQL connections
    log: Path
    proc: subprocess.Popen[bytes]

    def lines(self) -> list[str]:
        return self.log.read_text(errors="replace").splitlines()

    def post(
        self, path: str, body: bytes, headers: dict[str, str] | None = None, timeout: float = 30
    ) -> requests.Response:
        return requests.post(f"{self.base}{path}", data=body, headers=headers, timeout=timeout)

    def get(self, path: str) -> requests.Response:
        """A browser's GET, its redirect not followed."""
        headers = {"user-agent": BROWSER}
        return requests.get(
            f"{self.base}{path}", headers=headers, allow_redirects=False, timeout=30
        )


@contextmanager
def serving(tracking: TrackingHub, pg_url: str, folder: Path) -> Iterator[Server]:
    """`jvmail serve` on the hub's schema, with both partners' webhook keys in its environment;
    stopped with SIGTERM (it drains the inbox and writes its buffered clicks first)."""
    port = free_port()
    app_name = f"faults_serve_{uuid.uuid4().hex[:8]}"
    cert = folder / "sns.pem"
    cert.write_bytes(tracking.sns.pem)
    env = os.environ | tracking.a.environ() | tracking.b.environ()
    env |= {
        "JVMAIL_DATABASE_URL": f"{pg_url}&application_name={app_name}",
        "JVMAIL_TEST_SNS_CERT": str(cert),
    }
    log = folder / f"serve-{port}.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "tests.faults.serving", "serve", "--port", str(port)],
            env=env,
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    server = Server(f"http://127.0.0.1:{port}", app_name, log, proc)
    try:
        until("jvmail serve answering", lambda: _ready(server), 60)
        yield server
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _ready(server: Server) -> bool:
    if server.proc.poll() is not None:
        raise AssertionError("jvmail serve exited:\n" + "\n".join(server.lines()))
    try:
        return requests.get(f"{server.base}/healthz", timeout=1).status_code == 200
    except requests.RequestException:
        return False


def server_backends(admin: Engine, app_name: str) -> list[tuple[int, str, str]]:
    """(pid, wait event type, query) of the server's PostgreSQL connections."""
    with admin.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT pid, coalesce(wait_event_type, ''), query FROM pg_stat_activity"
                " WHERE application_name = :name"
            ),
            {"name": app_name},
        )
        return [(int(p), str(w), str(q)) for p, w, q in rows]


# -- signed webhooks, as each provider signs them ------------------------------------------------


def sendgrid_event(side: Side, kind: str, email: str, n: int, at: dt.datetime, **more: Any) -> Any:
    return {
        "email": email,
        "timestamp": int(at.timestamp()),
        "event": kind,
        "sg_event_id": f"{side.slug}-ev-{n}",
        "sg_message_id": f"sg-{side.deliveries[email]}.filter0001",
        "jv_delivery": str(side.deliveries[email]),
        **more,
    }


def sendgrid_request(
    key: ec.EllipticCurvePrivateKey, events: list[Any], when: dt.datetime | None = None
) -> tuple[bytes, dict[str, str]]:
    body = orjson.dumps(events)
    return body, sendgrid_headers(key, body, when or dt.datetime.now(dt.UTC))


def mailgun_request(
    side: Side, event: str, email: str, token: str, when: dt.datetime | None = None, **more: Any
) -> bytes:
    at = when or dt.datetime.now(dt.UTC)
    data = {
        "event": event,
        "id": f"mg-{token[:8]}",
        "timestamp": int(at.timestamp()),
        "recipient": email,
        "user-variables": {"jv_delivery": str(side.deliveries[email])},
        **more,
    }
    return mailgun_body(side.mailgun, data, token, at)


def postmark_request(side: Side, email: str, n: int) -> tuple[bytes, dict[str, str]]:
    record = {
        "RecordType": "SpamComplaint",
        "ID": n,
        "Type": "SpamComplaint",
        "Email": email,
        "MessageID": f"pm-{n}",
        "BouncedAt": dt.datetime.now(dt.UTC).isoformat(),
        "Metadata": {"jv_delivery": str(side.deliveries[email])},
    }
    return orjson.dumps(record), basic_auth(side.slug, side.postmark)


def ses_notification(side: Side, email: str, n: int, when: dt.datetime | None = None) -> Any:
    """An unsigned SNS notification of an SES hard bounce (sign it with `SnsSigner.sign`)."""
    stamp = (when or dt.datetime.now(dt.UTC)).strftime("%Y-%m-%dT%H:%M:%S.000Z")
    event = {
        "eventType": "Bounce",
        "bounce": {
            "bounceType": "Permanent",
            "bouncedRecipients": [{"emailAddress": email}],
            "timestamp": stamp,
            "feedbackId": f"f-{n}",
        },
        "mail": {
            "timestamp": stamp,
            "messageId": f"ses-{n}",
            "destination": [email],
            "tags": {"jv_delivery": [str(side.deliveries[email])]},
        },
    }
    return {
        "Type": "Notification",
        "MessageId": f"{side.slug}-m-{n}",
        "TopicArn": side.topic,
        "Message": orjson.dumps(event).decode(),
        "Timestamp": stamp,
    }


def click_token(side: Side, email: str, link: int) -> str:
    return KEYS.sign(side.mailing, side.deliveries[email], link)


def mailing_links(session: Session, mailing_id: int) -> list[str]:
    session.rollback()
    links = session.scalar(select(Mailing.links).where(Mailing.id == mailing_id))
    return list(links or [])


def _boot() -> None:
    """`jvmail serve` with the SNS certificate read from ``JVMAIL_TEST_SNS_CERT``."""
    from starlette.applications import Starlette

    from jvmail.cli import main
    from jvmail.tracking import serve
    from jvmail.tracking.accounts import SnsPolicy
    from jvmail.tracking.app import Settings, create_app

    pem = Path(os.environ["JVMAIL_TEST_SNS_CERT"]).read_bytes()

    def with_local_certificate(settings: Settings) -> Starlette:
        sns = SnsPolicy(fetch=lambda _: pem, confirm=lambda url: print("confirmed", url))
        return create_app(dataclasses.replace(settings, sns=sns))

    serve.create_app = with_local_certificate  # type: ignore[attr-defined]  # serve.app calls it
    main()


if __name__ == "__main__":
    _boot()
