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
  is verified by that provider's parser with that account's keys, and its events committed to
  the webhook inbox (one row) before the answer: 200 with how many were accepted. A background
  task drains the inbox in bulk into ``tracking_event``, acting on the new events (see
  :mod:`jvmail.tracking.inbox`): at startup, before serving; as soon as a request filled it;
  every ``drain_seconds`` for rows other servers left; and once more as the server stops.
  Forged, stale, replayed or malformed requests get 4xx and write nothing.
- ``POST /postback/{promotion}``: a conversion (or, with a negative amount, a refund) signed
  with the promotion owner's postback secret, credited to the mailing the click came from.

A client over its budget for clicks and opens, unsubscribes, or refused webhooks and postbacks
is answered 429 before any route sees its request (:mod:`jvmail.tracking.throttle`).
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
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
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
from jvmail.tracking import accounts, inbox
from jvmail.tracking.events import Rejected
from jvmail.tracking.human import machine_request
from jvmail.tracking.links import Keyring, Link
from jvmail.tracking.pages import NO_STORE, not_found, page
from jvmail.tracking.review import review_action, review_page
from jvmail.tracking.store import (
    _Target,
    _targets,
    flag_link_sweeps,
    recipient_hash,
    refuse_replay,
    store_rows,
    suppress,
    writing,
)
from jvmail.tracking.throttle import Limiter, Limits, Throttle

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
    drain: bool = True  # False: this server only fills the webhook inbox; another drains it
    drain_seconds: float = 1.0  # how often the inbox is drained of rows other servers left
    drain_events: int = inbox.DRAIN_EVENTS  # events stored per drain transaction, at most
    # Drain transactions at once on PostgreSQL (SKIP LOCKED gives each its own rows), so the
    # database works on one while this process prepares another; SQLite writes one at a time.
    drainers: int = 2
    env: Mapping[str, str] = field(default_factory=lambda: os.environ)
    sns: accounts.SnsPolicy = field(default_factory=accounts.SnsPolicy)
    throttle: Limits = field(default_factory=Limits)  # per-client budgets; Limits.off(): none


class Tracker:
    """What the routes share: the database, the link keys, the link registry, the buffer of
    clicks and opens waiting to be written, and the drain of the webhook inbox."""

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
        parallel = settings.drainers if self.engine.dialect.name == "postgresql" else 1
        self.drainers = [
            inbox.Drainer(self.sessions, max_events=settings.drain_events) for _ in range(parallel)
        ]
        self.inbox_filled = asyncio.Event()
        self.draining = asyncio.Lock()

    def writing(self) -> contextlib.AbstractContextManager[Session]:
        """A session for a transaction that writes (on SQLite, with the write lock taken)."""
        return writing(self.sessions)

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
            # Only a delivery of the token's own mailing: a token naming another mailing's
            # delivery (one the hub never signed) records nothing.
            rows = [r for r in rows if _of_mailing(targets.get(r["delivery_id"]), r["mailing_id"])]
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

    # -- the webhook inbox ------------------------------------------------------------------

    async def drain(self) -> inbox.Drained:
        """Store what the webhook inbox holds now; one drain (of ``drainers`` transactions at
        once) at a time in this server."""
        async with self.draining:
            upto = await run_in_threadpool(inbox.newest, self.sessions)
            done = inbox.Drained()
            if upto is None:
                return done
            steps = (run_in_threadpool(d.until_empty, upto) for d in self.drainers)
            # Every drainer's thread ends before the next drain may start, failed or not.
            for part in await asyncio.gather(*steps, return_exceptions=True):
                if isinstance(part, BaseException):
                    raise part
                done.add(part)
            return done

    async def drainer(self) -> None:
        """Drain whenever a request filled the inbox or ``drain_seconds`` passed, until
        stopping (the last drain is the caller's)."""
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.inbox_filled.wait(), self.settings.drain_seconds)
            if self.stopping:
                return
            self.inbox_filled.clear()
            await self.drain_logged("in the background")

    async def drain_logged(self, when: str) -> None:
        """:meth:`drain`, logging a failure: its rows stay in the inbox for the next drain."""
        try:
            await self.drain()
        except Exception:
            log.exception("draining the webhook inbox (%s) failed; its rows wait in it", when)


def _of_mailing(target: _Target | None, mailing: int) -> bool:
    return target is not None and target.mailing == mailing


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
    headers = {k.lower(): v for k, v in request.headers.items()}
    try:  # one trip to a worker thread: each is a wait for the event loop when CPU is short
        answer = await run_in_threadpool(_accept_webhook, tracker, kind, slug, headers, body)
    except Rejected as exc:
        return JSONResponse({"error": exc.reason}, exc.status)
    if answer["accepted"]:
        tracker.inbox_filled.set()
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
    limiter = Limiter(settings.throttle)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await run_in_threadpool(tracker.read_keys)
        if settings.drain:  # what a server that stopped mid-drain, or another one, left
            await tracker.drain_logged("at startup")
        # What is loaded by now lives as long as the server: keep it out of the collector's
        # full passes, whose pauses stall every request waiting on the event loop.
        gc.freeze()
        tasks = [asyncio.create_task(tracker.flusher())]
        if settings.drain:
            tasks.append(asyncio.create_task(tracker.drainer()))
        try:
            yield
        finally:
            # Each task ends after the write in flight, if any; then what is left is written.
            tracker.stopping = True
            tracker.wake.set()
            tracker.inbox_filled.set()
            await asyncio.gather(*tasks)
            await tracker.flush()
            if settings.drain:
                await tracker.drain_logged("at shutdown")
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
        middleware=[Middleware(Throttle, limiter=limiter)] if limiter.buckets else [],
        lifespan=lifespan,
    )
    app.state.tracker = tracker
    app.state.limiter = limiter
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


def _accept_webhook(
    tracker: Tracker, kind: str, slug: str, headers: Mapping[str, str], body: bytes
) -> dict[str, Any]:
    """Verify a request with account ``slug``'s keys, then commit its events to the inbox (and
    its one-time token, refusing a replay, in the same transaction); the request is answered
    only after. Raises `Rejected`, having written nothing."""
    account = accounts.load(tracker.sessions, slug)
    if account is None or account.kind != kind:
        raise Rejected(404, f"no {kind} account {slug!r} here")
    settings = tracker.settings
    parsed = accounts.verify(account, headers, body, settings.env, settings.sns)
    answer: dict[str, Any] = {"accepted": 0, "confirmed": parsed.confirmed}
    if parsed.skipped:
        answer["skipped"] = list(parsed.skipped)
        # The reasons go to the provider only: they may quote what the event held.
        log.warning(
            "%s account %s: %d unreadable events left out of a signed batch (its answer says why)",
            kind,
            slug,
            len(parsed.skipped),
        )
    if not parsed.events and parsed.nonce is None:
        return answer  # nothing to keep
    with tracker.writing() as session:
        if parsed.nonce is not None and not refuse_replay(session, account.kind, parsed.nonce):
            raise Rejected(406, "this signed request was already received (a replay)")
        answer["accepted"] = inbox.accept(session, account.partner_id, account.kind, parsed.events)
        session.commit()
    return answer


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
        # Only a delivery of the token's own mailing (one the hub never signed credits nothing).
        delivery = session.get(Delivery, link.delivery)
        if delivery is None or delivery.mailing_id != link.mailing:
            raise Rejected(400, "click is not a genuine click token")
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
