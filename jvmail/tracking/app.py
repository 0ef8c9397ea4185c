"""The tracking server (`jvmail serve`): clicks, opens, unsubscribes, provider webhooks and
conversion postbacks, as one Starlette app.

- ``GET /c/{token}`` redirects to the URL registered for that link of that mailing (never to
  anything the token says); ``/o/{token}.gif`` is the open pixel. Both answer from memory and
  leave their event in a buffer that a background task writes in bulk, so a slow database never
  slows a click. Tampered, truncated or unknown tokens get 404 and record nothing.
- ``GET /u/{token}`` shows the list owner's name and one button; only ``POST /u/{token}``
  unsubscribes (RFC 8058 one-click: ``List-Unsubscribe=One-Click``, form-encoded or multipart),
  committing the suppression before it answers 200, with no redirect; again is harmless.
- ``POST /webhooks/{provider}/{account}``: the account is the sending partner's id. The raw body
  is verified by that provider's parser with that account's keys, then its events are stored in
  one transaction; forged, stale, replayed or malformed requests get 4xx and write nothing.
- ``POST /postback/{promotion}``: a conversion (or, with a negative amount, a refund) signed
  with the promotion owner's postback secret, credited to the mailing the click came from.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import gc
import hashlib
import hmac
import html
import itertools
import logging
import math
import os
import time
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from jvmail.db import make_engine, make_sessionmaker
from jvmail.db.models import (
    Delivery,
    EventType,
    HubRecord,
    Mailing,
    MailingList,
    Partner,
    Promotion,
    Subscriber,
    SuppressionReason,
)
from jvmail.tracking import accounts
from jvmail.tracking.events import Rejected
from jvmail.tracking.human import machine_request
from jvmail.tracking.links import Keyring, Link
from jvmail.tracking.pages import NO_STORE, not_found, page
from jvmail.tracking.review import review_action, review_page
from jvmail.tracking.store import (
    _targets,
    flag_link_sweeps,
    recipient_hash,
    refuse_replay,
    store_events,
    store_rows,
    suppress,
)

__all__ = ["Settings", "create_app"]

log = logging.getLogger("jvmail.tracking")

PIXEL = bytes.fromhex(
    "47494638396101000100800000000000ffffff21f90401000000002c000000000100010000020144003b"
)
MAX_BODY = 5 * 1024 * 1024  # larger webhook bodies are refused (413)
POSTBACK_MAX_AGE = dt.timedelta(minutes=5)


@dataclass
class Settings:
    database_url: str
    flush_seconds: float = 0.25  # how often buffered clicks and opens are written
    flush_rows: int = 2000  # ... or as soon as this many wait
    keys_seconds: float = 60.0  # how often link keys are re-read (they rotate)
    env: Mapping[str, str] = field(default_factory=lambda: os.environ)
    sns: accounts.SnsPolicy = field(default_factory=accounts.SnsPolicy)


class Tracker:
    """What the routes share: the database, the link keys, the link registry and the buffer of
    clicks and opens waiting to be written."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.engine = make_engine(settings.database_url)
        self.sessions: sessionmaker[Session] = make_sessionmaker(self.engine)
        self.keys = Keyring(())
        self.keys_read = -math.inf
        self.links: dict[int, tuple[str, ...]] = {}
        self.buffer: list[dict[str, Any]] = []
        self.counter = itertools.count()
        self.wake = asyncio.Event()
        self.stopping = False

    @contextlib.contextmanager
    def writing(self) -> Iterator[Session]:
        """A session for a transaction that writes: on SQLite it takes the write lock up front
        (waiting its turn), as one that reads first and writes later could not wait for it."""
        with self.sessions() as session:
            session.connection(execution_options={"sqlite_begin": "BEGIN IMMEDIATE"})
            yield session

    # -- keys and links -------------------------------------------------------------------

    def read_keys(self) -> None:
        with self.sessions() as session:
            hub = session.get(HubRecord, 1)
            if hub is not None and hub.link_keys:
                self.keys = Keyring.from_hex(hub.link_keys)
        self.keys_read = time.monotonic()

    async def link(self, token: str) -> Link | None:
        if time.monotonic() - self.keys_read > self.settings.keys_seconds:
            await run_in_threadpool(self.read_keys)
        return self.keys.read(token)

    async def target(self, link: Link) -> str | None:
        urls = self.links.get(link.mailing)
        if urls is None:
            urls = await run_in_threadpool(self._load_links, link.mailing)
        if urls is None or not 1 <= link.link <= len(urls):
            return None
        return urls[link.link - 1]

    def _load_links(self, mailing: int) -> tuple[str, ...] | None:
        with self.sessions() as session:
            stored = session.scalar(select(Mailing.links).where(Mailing.id == mailing))
        if stored is None:
            return None
        self.links[mailing] = tuple(stored)  # registered once per mailing: never changes
        return self.links[mailing]

    # -- clicks and opens -------------------------------------------------------------------

    def hit(self, kind: EventType, link: Link, request: Request) -> None:
        agent = request.headers.get("user-agent")
        self.buffer.append(
            {
                "delivery_id": link.delivery,
                "mailing_id": link.mailing,
                "type": kind,
                "provider": "jvmail",
                "provider_event_id": f"{time.time_ns()}-{next(self.counter)}",
                "recipient_hash": "",
                "human": not machine_request(request.method, agent),
                "bounce": "none",
                "link_index": link.link or None,
                "occurred_at": dt.datetime.now(dt.UTC),
                "raw": {
                    "method": request.method,
                    "user_agent": (agent or "")[:300],
                    "ip": request.client.host if request.client else "",
                },
            }
        )
        if len(self.buffer) >= self.settings.flush_rows:
            self.wake.set()

    async def flush(self) -> int:
        rows, self.buffer = self.buffer, []
        if not rows:
            return 0
        try:
            return await run_in_threadpool(self._write_hits, rows)
        except Exception:
            log.exception("writing %d clicks and opens failed; kept for the next try", len(rows))
            self.buffer[:0] = rows[: 100 * self.settings.flush_rows]
            return 0

    def _write_hits(self, rows: list[dict[str, Any]]) -> int:
        with self.writing() as session:
            targets = _targets(session, {r["delivery_id"] for r in rows})
            rows = [r for r in rows if r["delivery_id"] in targets]
            stored = store_rows(session, rows, targets=targets)
            clicked = [r["delivery_id"] for r in rows if r["type"] == EventType.CLICKED]
            counts = {m: len(urls) for m, urls in self.links.items()}
            flag_link_sweeps(session, counts, clicked)
            session.commit()
        return stored.new

    async def flusher(self) -> None:
        while not self.stopping:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wake.wait(), self.settings.flush_seconds)
            self.wake.clear()
            await self.flush()


# -- pages --------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Recipient:
    owner_id: int
    owner: str
    list_name: str
    email: str


def _recipient(session: Session, link: Link) -> _Recipient | None:
    row = session.execute(
        select(Partner.id, Partner.name, MailingList.name, Subscriber.email)
        .select_from(Delivery)
        .join(Mailing, Mailing.id == Delivery.mailing_id)
        .join(Partner, Partner.id == Mailing.sender_id)
        .join(MailingList, MailingList.id == Mailing.list_id)
        .join(Subscriber, Subscriber.id == Delivery.subscriber_id)
        .where(Delivery.id == link.delivery, Delivery.mailing_id == link.mailing)
    ).first()
    return _Recipient(*row) if row else None


def _unsubscribe(tracker: Tracker, link: Link) -> _Recipient | None:
    with tracker.writing() as session:
        who = _recipient(session, link)
        if who is None:
            return None
        suppress(session, who.owner_id, who.email, SuppressionReason.UNSUBSCRIBED, source="link")
        store_rows(
            session,
            [
                {
                    "delivery_id": link.delivery,
                    "mailing_id": link.mailing,
                    "type": EventType.UNSUBSCRIBED,
                    "provider": "jvmail",
                    "provider_event_id": f"u{link.delivery}",
                    "recipient_hash": recipient_hash(who.email),
                    "occurred_at": dt.datetime.now(dt.UTC),
                    "raw": {"via": "one-click"},
                }
            ],
        )
        session.commit()
        return who


async def click(request: Request) -> Response:
    tracker: Tracker = request.app.state.tracker
    link = await tracker.link(request.path_params["token"])
    url = await tracker.target(link) if link else None
    if link is None or url is None:
        return not_found()
    tracker.hit(EventType.CLICKED, link, request)
    return RedirectResponse(url, 302, headers=NO_STORE)


async def pixel(request: Request) -> Response:
    tracker: Tracker = request.app.state.tracker
    name: str = request.path_params["name"]
    link = await tracker.link(name.removesuffix(".gif")) if name.endswith(".gif") else None
    if link is None or link.link != 0:
        return Response(status_code=404)
    tracker.hit(EventType.OPENED, link, request)
    return Response(PIXEL, media_type="image/gif", headers=NO_STORE)


async def unsubscribe_page(request: Request) -> Response:
    tracker: Tracker = request.app.state.tracker
    link = await tracker.link(request.path_params["token"])
    if link is None or link.link != 0:
        return not_found()
    who = await run_in_threadpool(_lookup, tracker, link)
    if who is None:
        return not_found()
    owner, lst = html.escape(who.owner), html.escape(who.list_name)
    return page(
        f"Unsubscribe from {who.owner}",
        f"<h1>Unsubscribe</h1><p>Stop all email from <b>{owner}</b> (you are on its list "
        f"<i>{lst}</i>)?</p><form method=post>"
        '<input type=hidden name="List-Unsubscribe" value="One-Click">'
        "<button type=submit>Unsubscribe</button></form>",
    )


async def unsubscribe(request: Request) -> Response:
    tracker: Tracker = request.app.state.tracker
    link = await tracker.link(request.path_params["token"])
    if link is None or link.link != 0:
        return not_found()
    try:
        form = await request.form()
    except Exception:
        form = None
    if form is None or form.get("List-Unsubscribe") != "One-Click":
        return page(
            "Bad request",
            "<h1>Nothing changed</h1><p>The request must carry "
            "<code>List-Unsubscribe=One-Click</code>.</p>",
            400,
        )
    who = await run_in_threadpool(_unsubscribe, tracker, link)
    if who is None:
        return not_found()
    return page(
        "Unsubscribed",
        f"<h1>You are unsubscribed</h1><p><b>{html.escape(who.owner)}</b> will not email "
        "you again.</p>",
    )


async def webhook(request: Request) -> Response:
    tracker: Tracker = request.app.state.tracker
    kind, slug = request.path_params["provider"], request.path_params["account"]
    body = await _body(request)
    if body is None:
        return JSONResponse({"error": "the body is too large"}, 413)
    account = await run_in_threadpool(accounts.load, tracker.sessions, slug)
    if account is None or account.kind != kind:
        return JSONResponse({"error": f"no {kind} account {slug!r} here"}, 404)
    headers = {k.lower(): v for k, v in request.headers.items()}
    try:
        parsed = await run_in_threadpool(
            accounts.verify, account, headers, body, tracker.settings.env, tracker.settings.sns
        )
    except Rejected as exc:
        return JSONResponse({"error": exc.reason}, exc.status)
    try:
        answer = await run_in_threadpool(_store_webhook, tracker, account, parsed)
    except Rejected as exc:
        return JSONResponse({"error": exc.reason}, exc.status)
    return JSONResponse(answer)


async def postback(request: Request) -> Response:
    tracker: Tracker = request.app.state.tracker
    body = await _body(request)
    if body is None:
        return JSONResponse({"error": "the body is too large"}, 413)
    headers = {k.lower(): v for k, v in request.headers.items()}
    try:
        answer = await run_in_threadpool(
            _postback, tracker, request.path_params["promotion"], headers, body
        )
    except Rejected as exc:
        return JSONResponse({"error": exc.reason}, exc.status)
    return JSONResponse(answer)


def create_app(settings: Settings) -> Starlette:
    tracker = Tracker(settings)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await run_in_threadpool(tracker.read_keys)
        # What is loaded by now lives as long as the server: keep it out of the collector's
        # full passes, whose pauses stall every request waiting on the event loop.
        gc.freeze()
        task = asyncio.create_task(tracker.flusher())
        try:
            yield
        finally:
            tracker.stopping = True  # the flusher ends after the write in flight, if any
            tracker.wake.set()
            await task
            await tracker.flush()
            tracker.engine.dispose()

    app = Starlette(
        routes=[
            Route("/c/{token}", click, methods=["GET", "HEAD"]),
            Route("/o/{name}", pixel, methods=["GET", "HEAD"]),
            Route("/u/{token}", unsubscribe_page, methods=["GET"]),
            Route("/u/{token}", unsubscribe, methods=["POST"]),
            Route("/webhooks/{provider}/{account}", webhook, methods=["POST"]),
            Route("/postback/{promotion}", postback, methods=["POST"]),
            Route("/review/{token}", review_page, methods=["GET"]),
            Route("/review/{token}", review_action, methods=["POST"]),
            Route("/healthz", lambda r: JSONResponse({"ok": True}), methods=["GET"]),
        ],
        lifespan=lifespan,
    )
    app.state.tracker = tracker
    return app


def _lookup(tracker: Tracker, link: Link) -> _Recipient | None:
    with tracker.sessions() as session:
        return _recipient(session, link)


async def _body(request: Request) -> bytes | None:
    size = request.headers.get("content-length")
    if size is not None and size.isdigit() and int(size) > MAX_BODY:
        return None
    chunks: list[bytes] = []
    total = 0
    async for chunk in request.stream():
        total += len(chunk)
        if total > MAX_BODY:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


def _store_webhook(
    tracker: Tracker, account: accounts.Account, parsed: accounts.Verified
) -> dict[str, Any]:
    with tracker.writing() as session:
        if parsed.nonce is not None and not refuse_replay(session, account.kind, parsed.nonce):
            raise Rejected(406, "this signed request was already received (a replay)")
        soft_days = session.scalar(select(HubRecord.soft_bounce_days)) or 3
        stored = store_events(
            session, parsed.events, sender_id=account.partner_id, soft_bounce_days=soft_days
        )
        session.commit()
    return {
        "stored": stored.new,
        "duplicates": stored.duplicate,
        "ignored": stored.foreign,
        "confirmed": parsed.confirmed,
    }


def _postback(
    tracker: Tracker, promotion: str, headers: Mapping[str, str], body: bytes
) -> dict[str, Any]:
    with tracker.writing() as session:
        row = session.execute(
            select(Promotion.id, Partner.slug, Partner.postback_secret_env)
            .join(Partner, Partner.id == Promotion.partner_id)
            .where(Promotion.slug == promotion)
        ).first()
        if row is None:
            raise Rejected(404, f"no promotion {promotion!r} here")
        secret = tracker.settings.env.get(row.postback_secret_env or "", "")
        if not secret:
            raise Rejected(403, f"partner {row.slug} has no postback secret set up")
        _check_postback_signature(secret, headers, body)
        try:
            data = orjson.loads(body)
            token, amount = str(data["click"]), float(data["amount"])
            order = str(data.get("id") or "")
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise Rejected(400, f"the body must be JSON with click, amount and id ({exc})") from exc
        if not order or not math.isfinite(amount):
            raise Rejected(400, "id must be the order's id and amount a finite number")
        link = tracker.keys.read(token)
        if link is None or link.link == 0:
            raise Rejected(400, "click is not a genuine click token")
        mailing = session.get(Mailing, link.mailing)
        if mailing is None or mailing.promotion_id != row.id:
            raise Rejected(400, f"that click did not come from a mailing of {promotion!r}")
        stored = store_rows(
            session,
            [
                {
                    "delivery_id": link.delivery,
                    "mailing_id": link.mailing,
                    "type": EventType.CONVERTED,
                    "provider": "postback",
                    "provider_event_id": order[:255],
                    "recipient_hash": "refund" if amount < 0 else "",
                    "amount": amount,
                    "occurred_at": dt.datetime.now(dt.UTC),
                    "raw": {"id": order, "amount": amount},
                }
            ],
        )
        session.commit()
    return {"stored": stored.new, "duplicates": stored.duplicate}


def _check_postback_signature(secret: str, headers: Mapping[str, str], body: bytes) -> None:
    stamp = headers.get("x-jvmail-timestamp", "")
    given = headers.get("x-jvmail-signature", "").removeprefix("sha256=")
    if not stamp.isdigit() or not given:
        raise Rejected(401, "X-Jvmail-Timestamp and X-Jvmail-Signature are required")
    age = abs(time.time() - int(stamp))
    if age > POSTBACK_MAX_AGE.total_seconds():
        raise Rejected(401, "the timestamp is more than 5 minutes off; sign with the current time")
    want = hmac.new(secret.encode(), stamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    if not hmac.compare_digest(given, want):
        raise Rejected(401, "the signature does not match")


def postback_signature(secret: str, stamp: int, body: bytes) -> str:
    """What a promotion owner's shop sends in X-Jvmail-Signature (with X-Jvmail-Timestamp)."""
    digest = hmac.new(secret.encode(), str(stamp).encode() + b"." + body, hashlib.sha256)
    return f"sha256={digest.hexdigest()}"
