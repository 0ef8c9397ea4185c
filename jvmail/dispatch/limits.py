"""Per-account sending limits: a pace (messages per second) and a daily quota (per UTC day).

:meth:`Limiter.reserve` books ``count`` messages for an account and answers how long to wait
before sending them: 0 to go now; a few seconds to keep the pace (the worker waits, then
sends: a generic cell-rate schedule, so any number of workers share one pace). Nothing is
booked when the wait would pass ``max_wait`` (the pace is taken: try again in ``wait``
seconds) or when the day's quota would be passed (``quota``: come back after midnight UTC).

Two backends: Redis (one atomic script, shared by every worker machine) and in-process (for
`jvmail run`). The clock is passed in, so the arithmetic is tested without waiting.
"""

from __future__ import annotations

import datetime as dt
import threading
from dataclasses import dataclass
from typing import Protocol

import redis

__all__ = ["Booking", "Limiter", "MemoryLimiter", "RedisLimiter", "seconds_to_midnight"]


@dataclass(frozen=True)
class Booking:
    wait: float  # seconds before the booked messages may go (or before trying again)
    booked: bool  # False: nothing was booked
    quota: bool = False  # not booked because the day's quota is used up


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
    ) -> Booking: ...


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
            start = now
            if per_second is not None:
                start = max(now, self._next.get(key, now))
                if start - now > max_wait:
                    return Booking(start - now, booked=False)
                self._next[key] = start + count / per_second
            self._used[day] = self._used.get(day, 0) + count
            return Booking(start - now, booked=True)


# Returns "quota" (not booked), "wait:<s>" (not booked: longer than max_wait) or the wait.
_SCRIPT = """
local used = tonumber(redis.call('GET', KEYS[2]) or '0')
local count = tonumber(ARGV[1])
local rate = tonumber(ARGV[2])
local per_day = tonumber(ARGV[3])
local now = tonumber(ARGV[4])
local max_wait = tonumber(ARGV[5])
if per_day > 0 and used + count > per_day then return 'quota' end
local start = now
if rate > 0 then
  start = math.max(now, tonumber(redis.call('GET', KEYS[1]) or ARGV[4]))
  if start - now > max_wait then return 'wait:' .. tostring(start - now) end
  redis.call('SET', KEYS[1], tostring(start + count / rate), 'EX', 86400)
end
redis.call('INCRBY', KEYS[2], count)
redis.call('EXPIRE', KEYS[2], 172800)
return tostring(start - now)
"""


class RedisLimiter:
    """Limits shared by every worker through Redis: one atomic script per booking."""

    def __init__(self, client: redis.Redis, namespace: str = "jvmail") -> None:
        self.client, self.namespace = client, namespace
        self._script = client.register_script(_SCRIPT)

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
        keys = [f"{self.namespace}:pace:{key}", f"{self.namespace}:day:{key}:{_day(now)}"]
        args = [count, per_second or 0, per_day or 0, repr(now), repr(max_wait)]
        raw = self._script(keys=keys, args=args)
        answer = raw.decode() if isinstance(raw, bytes) else str(raw)
        if answer == "quota":
            return Booking(seconds_to_midnight(now), booked=False, quota=True)
        if answer.startswith("wait:"):
            return Booking(float(answer[5:]), booked=False)
        return Booking(float(answer), booked=True)
