"""The send guard: a record, outside the database, of who was handed to the provider.

Every fence of the send pipeline lives in the database. A copy of that database (a backup
restored and started beside the live one, with the same configuration) holds the rows as they
were when the backup was taken, and would send again everything the live hub sent since. The
guard closes that gap from outside: just before the provider call a worker test-and-sets one
mark per recipient of the mailing (:meth:`SendGuard.mark`), and recipients already marked are
not sent. Marks of recipients that were certainly not sent (given back to be tried later) are
cleared (:meth:`SendGuard.clear`); marks of recipients that may have left stay.

A mailing is named by its id, its promotion and its list (:class:`Mark`), so that a mailing
created after the backup in one copy and a different one under the same id in the other do
not share marks; a recipient by its subscriber id, which both copies share for every subscriber
that existed at the backup (delivery ids may not be).

Two backends: Redis (one round trip per batch, shared by every worker machine, kept 60 days)
and in-process (:class:`MemoryGuard`, for tests and a single process). Where no Redis is
configured (`jvmail run`, SQLite), the pipeline runs without a guard: the database is then the
only state there is; so it does for an outbox, where nothing leaves.

The guard errs on the safe side only: a clear that did not reach it, or a mark whose answer was
lost (Redis died just after the script ran) and that could not be asked again, leaves
recipients marked that were not sent; their next try records them ``dead``, never sends them
twice. A mark names its attempt, and Redis keeps each attempt's answer for a day: asking again
for the same attempt (once Redis is back, restarted from its append-only file) gets the first
answer, not the attempt's own marks taken for another copy's.
"""

from __future__ import annotations

import struct
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

import redis

__all__ = [
    "ANSWER_SECONDS",
    "KEEP_SECONDS",
    "GuardDown",
    "Mark",
    "MemoryGuard",
    "RedisGuard",
    "SendGuard",
]

KEEP_SECONDS = 60 * 86400  # a mailing's marks outlive any backup that could be restored usefully
_CHUNK_BITS = 1 << 16  # bits per Redis key (8 KiB): a sparse list never makes a huge bitmap


class GuardDown(Exception):
    """The guard could not be asked (its Redis is unreachable): nothing may be sent now."""


@dataclass(frozen=True)
class Mark:
    """A mailing, as the guard names it: stable across a restore, distinct between mailings."""

    mailing_id: int
    promotion_id: int
    list_id: int

    @property
    def name(self) -> str:
        return f"{self.mailing_id}:{self.promotion_id}:{self.list_id}"


class SendGuard(Protocol):
    def mark(self, mailing: Mark, subscribers: Sequence[int], attempt: str) -> set[int]:
        """Mark ``subscribers`` as handed to the provider for ``mailing``, atomically; returns
        the ones that were marked already (by another copy of the database: not to be sent).
        ``attempt`` names this try: asked again for it, the guard gives the same answer.

        Raises:
            GuardDown: the guard is unreachable; nothing is known to be marked.
        """
        ...

    def clear(self, mailing: Mark, subscribers: Sequence[int]) -> None:
        """Unmark ``subscribers`` (they were certainly not sent), so a later try may send them.

        Raises:
            GuardDown: the guard is unreachable.
        """
        ...


class MemoryGuard:
    """One process's marks."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._marked: dict[str, set[int]] = {}
        self._answers: dict[str, set[int]] = {}

    def mark(self, mailing: Mark, subscribers: Sequence[int], attempt: str) -> set[int]:
        with self._lock:
            if attempt in self._answers:
                return set(self._answers[attempt])
            marked = self._marked.setdefault(mailing.name, set())
            already = marked.intersection(subscribers)
            marked.update(subscribers)
            self._answers[attempt] = set(already)
            return already

    def clear(self, mailing: Mark, subscribers: Sequence[int]) -> None:
        with self._lock:
            self._marked.get(mailing.name, set()).difference_update(subscribers)


# KEYS: the chunk keys, then the attempt's answer; ARGV[1]: seconds to keep the chunks;
# ARGV[2]: the (key index, bit offset) pairs, packed as little-endian 32-bit numbers (one
# argument: 1,000 recipients are not 2,000 arguments to encode and parse); ARGV[3]: seconds to
# keep the answer. Returns the 1-based places of the pairs whose bit was set, or the answer
# given to this attempt before.
_MARK = """
local answer = KEYS[#KEYS]
local given = redis.call('GET', answer)
if given then
  return cjson.decode(given)
end
local keep = tonumber(ARGV[1])
local packed = ARGV[2]
local old = {}
local n = 0
for at = 1, #packed, 8 do
  n = n + 1
  local key, bit = struct.unpack('<I4I4', packed, at)
  if redis.call('SETBIT', KEYS[key], bit, 1) == 1 then
    old[#old + 1] = n
  end
end
for i = 1, #KEYS - 1 do
  redis.call('EXPIRE', KEYS[i], keep)
end
redis.call('SET', answer, #old > 0 and cjson.encode(old) or '[]', 'EX', tonumber(ARGV[3]))
return old
"""
ANSWER_SECONDS = 86400  # how long an attempt's answer is kept for it to be asked again


class RedisGuard:
    """Marks in Redis bitmaps, one bit per subscriber id, cut into 8 KiB keys: one atomic script
    per batch to mark, one pipelined round trip to clear."""

    def __init__(
        self, client: redis.Redis, namespace: str = "jvmail", keep: int = KEEP_SECONDS
    ) -> None:
        self.client, self.namespace, self.keep = client, namespace, keep
        self._mark = client.register_script(_MARK)

    def key(self, mailing: Mark, chunk: int) -> str:
        """The bitmap of ``mailing``'s subscribers in ``chunk`` (ids ``chunk * 65536`` on); the
        braces keep a mailing's keys in one Redis Cluster slot, as its script needs."""
        return f"{{{self.namespace}:sent:{mailing.name}}}:{chunk}"

    def _places(self, mailing: Mark, subscribers: Iterable[int]) -> tuple[list[str], bytes]:
        """The chunk keys, and for each subscriber its (1-based key index, bit offset), packed
        for :data:`_MARK`."""
        keys: list[str] = []
        index: dict[int, int] = {}
        pairs: list[int] = []
        for subscriber in subscribers:
            chunk, bit = divmod(subscriber, _CHUNK_BITS)
            if chunk not in index:
                keys.append(self.key(mailing, chunk))
                index[chunk] = len(keys)
            pairs += (index[chunk], bit)
        return keys, struct.pack(f"<{len(pairs)}I", *pairs)

    def mark(self, mailing: Mark, subscribers: Sequence[int], attempt: str) -> set[int]:
        if not subscribers:
            return set()
        keys, packed = self._places(mailing, subscribers)
        answer = f"{{{self.namespace}:sent:{mailing.name}}}:answer:{attempt}"
        try:
            old = self._mark(keys=[*keys, answer], args=[self.keep, packed, ANSWER_SECONDS])
        except redis.RedisError as exc:
            raise GuardDown(str(exc)) from exc
        return {subscribers[int(n) - 1] for n in old}

    def clear(self, mailing: Mark, subscribers: Sequence[int]) -> None:
        if not subscribers:
            return
        pipe = self.client.pipeline(transaction=False)
        for subscriber in subscribers:
            chunk, bit = divmod(subscriber, _CHUNK_BITS)
            pipe.setbit(self.key(mailing, chunk), bit, 0)
        try:
            pipe.execute()
        except redis.RedisError as exc:
            raise GuardDown(str(exc)) from exc
