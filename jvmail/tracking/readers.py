"""The demo's readers: they open the messages in the outbox and click, over real HTTP.

The tracking app runs on a loopback port (uvicorn, in a thread of this process). For each sent
mailing, a seeded sample of its recipients, at its list's click rate, opens their .eml file and
follows its first tracking link, exactly as written in the message; a few of them (one in 500
of all recipients) press the one-click unsubscribe of the message's List-Unsubscribe header.
Once the server has stopped (writing what it buffered), the ledger is credited with what was
measured.
"""

from __future__ import annotations

import email
import random
import re
import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from email.message import Message
from pathlib import Path

import requests
import uvicorn
from sqlalchemy import select
from sqlalchemy.orm import Session

from jvmail.db.models import Delivery, DeliveryStatus, Mailing, MailingList, MailingStatus
from jvmail.tracking.app import Settings, create_app
from jvmail.tracking.throttle import Limits

__all__ = ["Readers", "local_server", "simulate_readers"]

UNSUBSCRIBE_SHARE = 0.002
BROWSER = "Mozilla/5.0 (X11; Linux x86_64; rv:130.0) Gecko/20100101 Firefox/130.0"
_CLICK = re.compile(r"https?://[^\s\"'<>]+/c/[A-Za-z0-9_.-]+")
_HEADER_URL = re.compile(r"<(https?://[^>]+)>")


@dataclass
class Readers:
    clicks: int = 0  # redirects followed
    unsubscribes: int = 0
    refused: int = 0  # answers other than the expected redirect or page


@contextmanager
def local_server(database_url: str, base_url: str) -> Iterator[str]:
    """The tracking app on a free loopback port; yields its URL. Stopping it writes what it
    buffered. ``base_url`` is the hub's public URL, which the messages' links start with."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = int(probe.getsockname()[1])
    # Every reader comes from loopback: one client address, never to be throttled.
    app = create_app(Settings(database_url, throttle=Limits.off()))
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="jvmail-serve", daemon=True)
    thread.start()
    ready = threading.Event()
    while thread.is_alive() and not server.started:
        ready.wait(0.05)  # uvicorn says when it listens; nothing to block on until then
    if not server.started:
        raise RuntimeError("the tracking server did not start")
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def _sample(session: Session, seed: int) -> list[tuple[int, int, bool]]:
    """(mailing, delivery, unsubscribes) for the readers who act, chosen by a seeded draw."""
    draw = random.Random(seed)
    rows = session.execute(
        select(Delivery.mailing_id, Delivery.id, MailingList.click_rate)
        .join(Mailing, Mailing.id == Delivery.mailing_id)
        .join(MailingList, MailingList.id == Mailing.list_id)
        .where(Mailing.status == MailingStatus.SENT, Delivery.status == DeliveryStatus.ACCEPTED)
        .order_by(Delivery.id)
    )
    chosen = []
    for mailing, delivery, rate in rows:
        roll = draw.random()
        if roll < rate + UNSUBSCRIBE_SHARE:
            chosen.append((mailing, delivery, roll >= rate))
    return chosen


def _message(outbox: Path, mailing: int, delivery: int) -> Message | None:
    """The recipient's .eml file, parsed with the compat32 policy: headers stay raw strings,
    which is all a reader needs (links are plain ASCII), and parsing is several times faster."""
    path = outbox / str(mailing) / f"{delivery}.eml"
    if not path.exists():
        return None
    return email.message_from_bytes(path.read_bytes())


def _plain_text(message: Message) -> str:
    for part in message.walk():
        if part.get_content_type() == "text/plain":
            payload = part.get_payload(decode=True)
            if isinstance(payload, bytes):
                return payload.decode(part.get_content_charset() or "utf-8", "replace")
    return ""


def simulate_readers(
    session: Session,
    outbox: Path,
    server: str,
    base_url: str,
    *,
    seed: int = 49,
    progress: Callable[[int, int], None] | None = None,
) -> Readers:
    """Act as the readers of the sent mailings against the tracking ``server``."""
    done = Readers()
    chosen = _sample(session, seed)
    http = requests.Session()
    http.headers["user-agent"] = BROWSER
    for n, (mailing, delivery, leaves) in enumerate(chosen, start=1):
        message = _message(outbox, mailing, delivery)
        if message is not None:
            if leaves:
                done.unsubscribes += _unsubscribe(http, message, server, base_url, done)
            else:
                done.clicks += _click(http, message, server, base_url, done)
        if progress is not None:
            progress(n, len(chosen))
    return done


def _local(url: str, server: str, base_url: str) -> str:
    return server + url.removeprefix(base_url)


def _click(
    http: requests.Session, message: Message, server: str, base_url: str, done: Readers
) -> int:
    found = _CLICK.search(_plain_text(message))
    if found is None:
        return 0
    answer = http.get(_local(found[0], server, base_url), allow_redirects=False, timeout=10)
    if answer.status_code != 302:
        done.refused += 1
        return 0
    return 1


def _unsubscribe(
    http: requests.Session, message: Message, server: str, base_url: str, done: Readers
) -> int:
    links = [u for u in _HEADER_URL.findall(str(message["List-Unsubscribe"])) if "/u/" in u]
    if not links:
        return 0
    answer = http.post(
        _local(links[0], server, base_url),
        data={"List-Unsubscribe": "One-Click"},
        allow_redirects=False,
        timeout=10,
    )
    if answer.status_code != 200:
        done.refused += 1
        return 0
    return 1
