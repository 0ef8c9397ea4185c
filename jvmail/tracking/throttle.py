"""Per-client rate limits of the tracking server: an abusive client is slowed down with 429 and
``Retry-After`` before the app does any work for it, so a throttled request records nothing and
writes nothing.

- Each route family has its own budget, a token bucket per client address: ``burst`` requests at
  once, refilled at ``per_second``. Clicks and opens (``/c/``, ``/o/``) share one, generous
  enough for the people behind one shared NAT (an office, a school, a mobile carrier); the
  unsubscribe page and its one-click POST (``/u/``) have a lower one. A budget of 0 is no limit.
- Provider webhooks (``/webhooks/``) and conversion postbacks (``/postback/``) are signed, so
  only refused requests (answered 4xx: forged, stale, replayed, malformed) spend the budget of
  their address. A provider's genuine requests never spend any, however many it sends, and are
  never throttled; a forger is, once its refusals have spent the budget: answered 429 before its
  request is read or verified, which keeps a flood of forgeries cheap. The buckets are per
  address, so a forger flooding from its own address does not lock the provider out of others.
  A genuine request from an address that is over budget (one that also sends forgeries, or a
  proxy not configured as trusted, through which everyone shares one address) is answered 429
  until the address refills; providers retry what they got no 2xx for (SendGrid for 24 hours,
  Mailgun for 8), so it arrives then.
- The client is the ASGI peer address. Only when the peer is one of ``trusted_proxies`` is it
  taken from ``X-Forwarded-For`` instead (the rightmost entry that is not itself a trusted
  proxy: the ones to its left are whatever the client wrote); from any other peer the header is
  ignored. An IPv6 client is keyed by its /64, the block one subscriber line is given.
- A bucket is one float, the time it will be full again (a token bucket's state as one number,
  the "generic cell rate algorithm"), kept in an LRU of at most ``clients`` addresses per
  family: a flood from many addresses pushes out the longest idle ones, which are full again
  by then (forgetting them changes nothing) unless the flood outnumbers ``clients``, and memory
  stays bounded (about 120 bytes an address: 6 MB at 50,000).
- The state is per process: under ``jvmail serve --workers N`` each worker keeps its own, and
  the kernel spreads a client's connections over them, so one client may get up to N budgets.
"""

from __future__ import annotations

import functools
import ipaddress
import math
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Literal

from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from jvmail.tracking.pages import page

__all__ = [
    "Buckets",
    "Budget",
    "Family",
    "Limiter",
    "Limits",
    "Throttle",
    "client_address",
    "parse_proxies",
]

Family = Literal["clicks", "unsubscribe", "webhooks", "postbacks"]
SIGNED: frozenset[Family] = frozenset({"webhooks", "postbacks"})  # only refusals spend
# The first segment of a path -> its family; other paths (review, healthz) are not limited.
ROUTES: Mapping[str, Family] = {
    "c": "clicks",
    "o": "clicks",
    "u": "unsubscribe",
    "webhooks": "webhooks",
    "postback": "postbacks",
}
ENV_PREFIX = "JVMAIL_THROTTLE_"  # + CLICKS, UNSUBSCRIBE, WEBHOOKS, POSTBACKS
PROXIES_ENV = "JVMAIL_TRUSTED_PROXIES"  # comma-separated addresses or networks


@dataclass(frozen=True)
class Budget:
    """What one client address may spend: ``burst`` requests at once, refilled at
    ``per_second`` requests a second. 0 in either: no limit."""

    burst: int
    per_second: float

    @property
    def off(self) -> bool:
        return self.burst <= 0 or self.per_second <= 0

    @classmethod
    def parse(cls, text: str) -> Budget:
        """``BURST/PER_SECOND`` (``300/100``), or ``0`` for no limit. Raises ValueError."""
        text = text.strip()
        if text == "0":
            return cls(0, 0.0)
        burst, slash, rate = text.partition("/")
        if not slash or not burst.strip().isdigit():
            raise ValueError(f"{text!r} is not BURST/PER_SECOND (e.g. 300/100) or 0")
        per_second = float(rate)
        if int(burst) < 1 or not (0 < per_second < math.inf):
            raise ValueError(f"{text!r}: the burst must be at least 1, the rate above 0")
        return cls(int(burst), per_second)

    def __str__(self) -> str:
        return "0" if self.off else f"{self.burst}/{self.per_second:g}"


@dataclass(frozen=True)
class Limits:
    """The tracking server's budgets per client address, per family; see the module docstring.
    The loopback proxies trusted by default are the ones uvicorn trusted before this setting:
    a proxy on the same machine (the usual HTTPS front)."""

    clicks: Budget = Budget(300, 100)  # clicks and opens
    unsubscribe: Budget = Budget(50, 5)  # the unsubscribe page and one-click POSTs
    webhooks: Budget = Budget(50, 5)  # refused webhook requests only
    postbacks: Budget = Budget(50, 5)  # refused postbacks only
    trusted_proxies: tuple[str, ...] = ("127.0.0.1", "::1")
    clients: int = 50_000  # addresses remembered per family, at most

    def budgets(self) -> dict[Family, Budget]:
        return {
            "clicks": self.clicks,
            "unsubscribe": self.unsubscribe,
            "webhooks": self.webhooks,
            "postbacks": self.postbacks,
        }

    @classmethod
    def off(cls) -> Limits:
        """No limit at all (the demo's readers, all on loopback)."""
        none = Budget(0, 0.0)
        return cls(none, none, none, none)

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Limits:
        """The limits `jvmail serve` passes its workers in ``JVMAIL_THROTTLE_<FAMILY>`` and
        ``JVMAIL_TRUSTED_PROXIES``; the defaults for what is unset. Raises ValueError."""
        d = cls()
        proxies = env.get(PROXIES_ENV)
        return cls(
            clicks=_budget(env, "clicks", d.clicks),
            unsubscribe=_budget(env, "unsubscribe", d.unsubscribe),
            webhooks=_budget(env, "webhooks", d.webhooks),
            postbacks=_budget(env, "postbacks", d.postbacks),
            trusted_proxies=d.trusted_proxies if proxies is None else parse_proxies(proxies),
        )

    def env(self) -> dict[str, str]:
        """The environment :meth:`from_env` reads back these limits from."""
        named = {ENV_PREFIX + name.upper(): str(b) for name, b in self.budgets().items()}
        return named | {PROXIES_ENV: ",".join(self.trusted_proxies)}


def _budget(env: Mapping[str, str], family: Family, default: Budget) -> Budget:
    text = env.get(ENV_PREFIX + family.upper())
    return default if text is None else Budget.parse(text)


def parse_proxies(text: str) -> tuple[str, ...]:
    """Comma-separated addresses or networks (``10.0.0.0/8``); empty: none. Raises
    ValueError."""
    proxies = tuple(p.strip() for p in text.split(",") if p.strip())
    for proxy in proxies:
        ipaddress.ip_network(proxy)  # raises ValueError for what is neither
    return proxies


@dataclass(frozen=True)
class _Proxies:
    addresses: frozenset[str]
    networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]

    @classmethod
    def of(cls, proxies: tuple[str, ...]) -> _Proxies:
        nets = [ipaddress.ip_network(p) for p in proxies]
        single = frozenset(str(n.network_address) for n in nets if n.num_addresses == 1)
        return cls(single, tuple(n for n in nets if n.num_addresses > 1))

    def __contains__(self, host: str) -> bool:
        if host in self.addresses:
            return True
        if not self.networks:
            return False
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            return False
        return any(address in net for net in self.networks)


class Buckets:
    """One budget's token buckets, one per client key, the least recently used forgotten past
    ``clients`` of them. ``now`` is in seconds of a monotonic clock."""

    def __init__(self, budget: Budget, clients: int) -> None:
        self.interval = 1 / budget.per_second  # seconds to refill one token
        self.slack = (budget.burst - 1) * self.interval  # how far past now a bucket may be full
        self.clients = clients
        self.full_at: OrderedDict[str, float] = OrderedDict()  # when each is full again

    def __len__(self) -> int:
        return len(self.full_at)

    def wait(self, key: str, now: float) -> float:
        """Seconds until ``key`` has a token; 0.0 if it has one now. Spends nothing."""
        full_at = self.full_at.get(key)
        return 0.0 if full_at is None else max(0.0, full_at - now - self.slack)

    def take(self, key: str, now: float) -> float:
        """Spend one of ``key``'s tokens and return 0.0; or, if it has none, spend nothing and
        return the seconds until it will have one."""
        held = self.full_at
        full_at = held.get(key)
        if full_at is None:
            if len(held) >= self.clients:
                held.popitem(last=False)
            held[key] = now + self.interval
            return 0.0
        held.move_to_end(key)
        full_at = full_at if full_at > now else now  # max() inline: a third of take's time
        wait = full_at - now - self.slack
        if wait > 0:
            return wait
        held[key] = full_at + self.interval
        return 0.0

    def spend(self, key: str, now: float) -> None:
        """Spend one of ``key``'s tokens even if it has none (a request already answered)."""
        held = self.full_at
        full_at = held.pop(key, now)
        if len(held) >= self.clients:
            held.popitem(last=False)
        held[key] = max(full_at, now) + self.interval


@functools.lru_cache(maxsize=4096)
def _block64(host: str) -> str:
    """An IPv6 client's /64; an IPv4 one as such, also when a dual-stack socket maps it
    (``::ffff:198.51.100.7``)."""
    try:
        address = ipaddress.IPv6Address(host)
    except ValueError:
        return host
    if address.ipv4_mapped is not None:
        return str(address.ipv4_mapped)
    return str(ipaddress.IPv6Network((address, 64), strict=False))


def client_address(
    peer: str, headers: list[tuple[bytes, bytes]], proxies: Callable[[str], bool]
) -> str:
    """The key of a request's client: ``peer`` itself, unless ``proxies(peer)``: then the
    rightmost ``X-Forwarded-For`` entry that is not a trusted proxy (the leftmost if all are)."""
    if proxies(peer):
        hops = [
            hop.strip()
            for name, value in headers
            if name == b"x-forwarded-for"
            for hop in value.decode("latin-1").split(",")
            if hop.strip()
        ]
        untrusted = [hop for hop in hops if not proxies(hop)]
        peer = untrusted[-1] if untrusted else hops[0] if hops else peer
    return _block64(peer) if ":" in peer else peer


class Limiter:
    """The buckets of every family that has a limit, and the trusted proxies: what
    :class:`Throttle` decides with, shared by all requests of one process."""

    def __init__(self, limits: Limits, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.proxies = _Proxies.of(limits.trusted_proxies)
        self.buckets: dict[Family, Buckets] = {
            family: Buckets(budget, limits.clients)
            for family, budget in limits.budgets().items()
            if not budget.off
        }

    def client(self, scope: Scope) -> str:
        """The key of the request's client (see :func:`client_address`)."""
        peer = scope.get("client")
        host: str = peer[0] if peer else ""
        if host not in self.proxies:  # the common case, without a call more
            return _block64(host) if ":" in host else host
        return client_address(host, scope["headers"], self.proxies.__contains__)


class Throttle:
    """ASGI middleware: answers 429 with ``Retry-After`` for a client over its family's budget,
    before the app sees the request; in the signed families, spends a token for each request
    the app refused (4xx)."""

    def __init__(self, app: ASGIApp, limiter: Limiter) -> None:
        self.app = app
        self.limiter = limiter

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        family = (
            ROUTES.get(scope["path"][1:].partition("/")[0]) if scope["type"] == "http" else None
        )
        buckets = self.limiter.buckets.get(family) if family else None
        if family is None or buckets is None:
            await self.app(scope, receive, send)
            return
        limiter = self.limiter
        client = limiter.client(scope)
        if family not in SIGNED:
            wait = buckets.take(client, limiter.clock())
            if wait > 0:
                await too_many(family, wait)(scope, receive, send)
                return
            await self.app(scope, receive, send)
            return
        wait = buckets.wait(client, limiter.clock())
        if wait > 0:
            await too_many(family, wait)(scope, receive, send)
            return

        async def counted(message: Message) -> None:
            if message["type"] == "http.response.start" and 400 <= message["status"] < 500:
                buckets.spend(client, limiter.clock())
            await send(message)

        await self.app(scope, receive, counted)


def too_many(family: Family, wait: float) -> Response:
    """The 429 answer: JSON for the signed families, a page for people, saying when to retry
    (whole seconds, at least one) and that nothing was done."""
    seconds = max(1, math.ceil(wait))
    retry = {"Retry-After": str(seconds)}
    if family in SIGNED:
        error = f"too many refused requests from this address; retry in {seconds} s"
        return JSONResponse({"error": error}, 429, headers=retry)
    if family == "unsubscribe":
        body = (
            "<h1>Nothing changed yet</h1><p>Too many requests came from your network just now, "
            f"so this one was not acted on: you are <b>not</b> unsubscribed. Please try again "
            f"in {seconds} seconds.</p>"
        )
    else:
        body = (
            "<h1>Too many requests</h1><p>Too many requests came from your network just now. "
            f"Please try the link again in {seconds} seconds.</p>"
        )
    answer = page("Too many requests", body, 429)
    answer.headers.update(retry)
    return answer
