"""Per-account sending limits: a pace (messages per second), a daily quota (per UTC day) and
holds (the provider said to wait: a 429 or 503 with Retry-After).

:meth:`Limiter.reserve` books ``count`` messages for an account and answers how long to wait
before sending them: 0 to go now; a few seconds to keep the pace or to sit out a hold (the
worker waits, then sends: a generic cell-rate schedule, so any number of workers share one
pace). Nothing is booked when the wait would pass ``max_wait`` (the pace is taken, or the
account is held: try again in ``wait`` seconds) or when the day's quota would be passed
(``quota``: come back after midnight UTC).

:meth:`Limiter.hold` books a pause for the whole account: no booking of it starts before the
hold ends, whichever thread, process or machine asks, with or without a pace or a quota.

Two backends: Redis (one atomic script per booking, shared by every worker machine) and
in-process (for `jvmail run`). The clock is passed in, so the arithmetic is tested without
waiting.
"""

from __future__ import annotations

import datetime as dt
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import redis

__all__ = [
    "SYSTEM_CLOCK",
    "Booking",
    "Clock",
    "Limiter",
    "MemoryLimiter",
    "RedisLimiter",
    "account_key",
    "seconds_to_midnight",
]


@dataclass(frozen=True)
class Clock:
    """Where a worker reads the time (epoch seconds) and how it waits: passed in, so tests run
    a pace or a hold without waiting for it."""

    now: Callable[[], float] = time.time
    sleep: Callable[[float], None] = time.sleep


SYSTEM_CLOCK = Clock()


@dataclass(frozen=True)
class Booking:
    wait: float  # seconds before the booked messages may go (or before trying again)
    booked: bool  # False: nothing was booked
    quota: bool = False  # not booked because the day's quota is used up
    held: bool = False  # not booked because the account is held longer than max_wait


def account_key(sender_id: int) -> str:
    """The limiter key of a sender's provider account."""
    return f"partner:{sender_id}"


class Limiter(Protocol):
    def reserve(
        self,
        key: str,
        count: int,
        *,
        per_second: float | None,
        per_day: int | None,
        now: float,
        max_wait: float,
    ) -> Booking:
        """Book ``count`` messages of account ``key`` at ``now`` (epoch seconds).

        Parameters:
            per_second: the account's pace; None: no pace.
            per_day: the account's quota per UTC day; None: no quota.
            max_wait: the longest wait (seconds) worth booking.

        Returns:
            The :class:`Booking`: booked with its ``wait`` (seconds, 0 or more; a hold is sat
            out too), or not booked (quota used up, pace taken, or account held).
        """
        ...

    def hold(self, key: str, until: float, *, now: float) -> None:
        """Hold account ``key`` until ``until`` (epoch seconds): no booking starts before then.
        A hold only ever lengthens: an earlier ``until`` than the current one changes nothing.
        """
        ...

    def held_until(self, key: str, now: float) -> float | None:
        """When the hold on account ``key`` ends (epoch seconds), if it is held at ``now``."""
        ...


def seconds_to_midnight(now: float) -> float:
    moment = dt.datetime.fromtimestamp(now, dt.UTC)
    tomorrow = dt.datetime.combine(moment.date() + dt.timedelta(days=1), dt.time(), dt.UTC)
    return (tomorrow - moment).total_seconds()


def _day(now: float) -> str:
    return dt.datetime.fromtimestamp(now, dt.UTC).date().isoformat()


class MemoryLimiter:
    """One process's limits (the embedded default)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._next: dict[str, float] = {}  # key -> when the next message may start
        self._used: dict[tuple[str, str], int] = {}  # (key, day) -> messages booked
        self._holds: dict[str, float] = {}  # key -> when its hold ends

    def reserve(
        self,
        key: str,
        count: int,
        *,
        per_second: float | None,
        per_day: int | None,
        now: float,
        max_wait: float,
    ) -> Booking:
        with self._lock:
            day = (key, _day(now))
            if per_day is not None and self._used.get(day, 0) + count > per_day:
                return Booking(seconds_to_midnight(now), booked=False, quota=True)
            start = max(now, self._holds.get(key, now))
            if start - now > max_wait:
                return Booking(start - now, booked=False, held=True)
            if per_second is not None:
                start = max(start, self._next.get(key, now))
                if start - now > max_wait:
                    return Booking(start - now, booked=False)
                self._next[key] = start + count / per_second
            self._used[day] = self._used.get(day, 0) + count
            return Booking(start - now, booked=True)

    def hold(self, key: str, until: float, *, now: float) -> None:
        with self._lock:
            if until > max(now, self._holds.get(key, now)):
                self._holds[key] = until

    def held_until(self, key: str, now: float) -> float | None:
        with self._lock:
            until = self._holds.get(key)
            return until if until is not None and until > now else None


# Returns "quota" (not booked), "held:<s>" or "wait:<s>" (not booked: the hold or the pace is
# longer than max_wait), or the wait.
_RESERVE = """
local used = tonumber(redis.call('GET', KEYS[2]) or '0')
local count = tonumber(ARGV[1])
local rate = tonumber(ARGV[2])
local per_day = tonumber(ARGV[3])
local now = tonumber(ARGV[4])
local max_wait = tonumber(ARGV[5])
if per_day > 0 and used + count > per_day then return 'quota' end
local start = math.max(now, tonumber(redis.call('GET', KEYS[3]) or ARGV[4]))
if start - now > max_wait then return 'held:' .. tostring(start - now) end
if rate > 0 then
  start = math.max(start, tonumber(redis.call('GET', KEYS[1]) or ARGV[4]))
  if start - now > max_wait then return 'wait:' .. tostring(start - now) end
  redis.call('SET', KEYS[1], tostring(start + count / rate), 'EX', 86400)
end
redis.call('INCRBY', KEYS[2], count)
redis.call('EXPIRE', KEYS[2], 172800)
return tostring(start - now)
"""

# Lengthens the hold to ARGV[1] (epoch seconds), expiring ARGV[2] ms later: never shortens it.
_HOLD = """
local current = tonumber(redis.call('GET', KEYS[1]) or '0')
if tonumber(ARGV[1]) > current then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
end
return 0
"""


class RedisLimiter:
    """Limits shared by every worker through Redis: one atomic script per booking or hold."""

    def __init__(self, client: redis.Redis, namespace: str = "jvmail") -> None:
        self.client, self.namespace = client, namespace
        self._reserve = client.register_script(_RESERVE)
        self._hold = client.register_script(_HOLD)

    def _hold_key(self, key: str) -> str:
        return f"{self.namespace}:hold:{key}"

    def reserve(
        self,
        key: str,
        count: int,
        *,
        per_second: float | None,
        per_day: int | None,
        now: float,
        max_wait: float,
    ) -> Booking:
        keys = [
            f"{self.namespace}:pace:{key}",
            f"{self.namespace}:day:{key}:{_day(now)}",
            self._hold_key(key),
        ]
        args = [count, per_second or 0, per_day or 0, repr(now), repr(max_wait)]
        raw = self._reserve(keys=keys, args=args)
        answer = raw.decode() if isinstance(raw, bytes) else str(raw)
        if answer == "quota":
            return Booking(seconds_to_midnight(now), booked=False, quota=True)
        if answer.startswith("held:"):
            return Booking(float(answer[5:]), booked=False, held=True)
        if answer.startswith("wait:"):
            return Booking(float(answer[5:]), booked=False)
        return Booking(float(answer), booked=True)

    def hold(self, key: str, until: float, *, now: float) -> None:
        expire_ms = math.ceil((until - now) * 1000)
        if expire_ms > 0:  # the key outlives the hold by at most a millisecond
            self._hold(keys=[self._hold_key(key)], args=[repr(until), expire_ms])

    def held_until(self, key: str, now: float) -> float | None:
        raw = self.client.get(self._hold_key(key))
        if raw is None:
            return None
        until = float(raw.decode() if isinstance(raw, bytes) else str(raw))
        return until if until > now else None
