"""Faults of the provider: it takes requests and hangs past the client's timeout; it refuses
with 429 (Retry-After) and 503 for a while; it refuses some recipients for good. After each,
the invariants of :mod:`tests.faults.harness` (I1 no loss, I2 no duplicates, I5 compliance)."""

from __future__ import annotations

import itertools
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from jvmail.db.models import DeliveryStatus, MailingStatus
from tests.faults.conftest import READERS
from tests.faults.harness import Arrival, System, running_system, scenario, until
from tests.providers.fakes import Scripted

# A pace that keeps a mailing going for several seconds, so faults land mid-mailing.
PACE = READERS / 6


@pytest.fixture
def system(pg_url: str, tmp_path: Path) -> Iterator[System]:
    with running_system(pg_url, tmp_path, READERS, per_second=PACE) as system:
        yield system


def _sent_per_address(system: System) -> Counter[str]:
    """How many requests carried each address, whatever the provider answered."""
    return Counter(a for arrival in system.sendgrid.arrivals for a in arrival.addresses)


@scenario(pytest.mark.quick)
def test_the_provider_hangs_past_the_clients_timeout(system: System) -> None:
    # Every fifth request is answered only after the client gave up (2 s): the first of each
    # pair taken by the provider, the second not (a 503 nobody reads). The worker cannot know
    # which: both batches are left in doubt, never resent.
    timeout, hang = 2.0, 3.0
    taken = Scripted(202, {"X-Message-Id": "sg-late"}, hang=hang)
    lost = Scripted(503, body={"errors": [{"message": "service unavailable"}]}, hang=hang)
    numbers = itertools.count(1)

    def every_fifth() -> Scripted | None:
        n = next(numbers)
        if n % 5:
            return None
        return taken if n % 10 == 5 else lost

    system.sendgrid.fake.rule = every_fifth
    system.fault()  # the hangs start with the mailing
    system.start_worker(JVMAIL_TEST_SENDGRID_TIMEOUT=str(timeout))
    system.start_worker(JVMAIL_TEST_SENDGRID_TIMEOUT=str(timeout))
    system.tick()
    counts = system.settle()
    rows = system.check()
    # Nothing reached the provider twice, taken or not: a batch in doubt is never resent.
    sent = _sent_per_address(system)
    assert set(sent.values()) == {1}
    assert len(sent) == READERS
    # What it took settled from its events; what it never took was dead-lettered after the
    # reconciler's deadline. Both kinds of hang happened.
    never = set(sent) - {a for a, _ in system.sendgrid.fake.accepted}
    dead = {a for a, s in rows.values() if s is DeliveryStatus.DEAD}
    assert never, "no request hung without being taken"
    assert dead == never
    assert counts[DeliveryStatus.ACCEPTED] == READERS - len(never)
    late = sum(1 for a in system.sendgrid.arrivals if a.addresses) // 5
    assert late >= 2, "too few requests to have hung both ways"
    print(f"{late} requests answered after the timeout; {len(never)} recipients never taken")


@scenario(pytest.mark.quick)
def test_the_provider_refuses_some_recipients_for_good(system: System) -> None:
    # One reader in a hundred has an address SendGrid deems invalid: it refuses each request
    # that carries one with a 400 naming the recipient's field.
    bad = frozenset(f"bulk{n}@mail.example" for n in range(50, READERS - 25, 100))
    system.sendgrid.fake.invalid = bad
    system.fault()  # the refusals start with the mailing
    system.start_worker()
    system.start_worker()
    system.tick()
    counts = system.settle()
    rows = system.check()
    assert counts == {DeliveryStatus.ACCEPTED: READERS - len(bad), DeliveryStatus.FAILED: len(bad)}
    # One attempt each for the refused, recorded failed with SendGrid's reason; the rest of
    # their batches went in a later request without them.
    sent = _sent_per_address(system)
    assert all(sent[a] == 1 for a in bad)
    failed = {a for a, s in rows.values() if s is DeliveryStatus.FAILED}
    assert failed == bad
    why = system.errors(DeliveryStatus.FAILED)
    assert len(why) == len(bad)
    assert all("Does not contain a valid address." in e for e in why)
    assert system.mailing_status() is MailingStatus.SENT


# The 503 storm: a minute at full size; at quick size, a shorter one.
STORM = 60.0 if READERS >= 20_000 else 10.0
RETRY_AFTER = 2  # seconds, on every third refusal of the storm (a 429)


@scenario()
def test_429_with_retry_after_and_503_storms_at_the_accounts_pace(
    pg_url: str, tmp_path: Path
) -> None:
    with running_system(pg_url, tmp_path, READERS, per_second=PACE, batch=100) as system:
        holds: list[float] = []  # when each 429 was answered (wall time, read before)
        storm: list[float] = []  # [start, end] once it has begun
        unavailable: list[float] = []  # when each 503 was answered
        numbers = itertools.count(1)

        def refuse() -> Scripted | None:
            now = time.time()
            if not storm or not storm[0] <= now < storm[1]:
                return None
            if next(numbers) % 3:
                unavailable.append(now)
                return Scripted(503, body={"errors": [{"message": "service unavailable"}]})
            holds.append(now)
            retry = {"Retry-After": str(RETRY_AFTER)}
            return Scripted(429, retry, {"errors": [{"message": "too many requests"}]})

        system.sendgrid.fake.rule = refuse
        system.start_worker()
        system.start_worker()
        threads = system.threads
        system.tick()
        until("a quarter accepted", lambda: system.accepted_so_far() >= READERS // 4)
        system.fault()
        storm += [time.time(), time.time() + STORM]
        counts = system.settle()
        system.check()
        assert counts == {DeliveryStatus.ACCEPTED: READERS}
        assert len(holds) >= 2, "the storm met too few requests"
        arrivals = [a for a in system.sendgrid.arrivals if a.addresses]
        print(f"{len(arrivals)} requests: {len(holds)} answered 429, {len(unavailable)} 503")
        _assert_under_the_pace(arrivals, PACE, (threads + 1) * system.batch)
        _assert_holds_kept(arrivals, holds, RETRY_AFTER, threads - 1)


def _assert_under_the_pace(arrivals: list[Arrival], pace: float, burst: int) -> None:
    """Over every window between two arrivals, the recipients that reached the provider stay
    within the account's pace, ``pace`` per second, and one ``burst``.

    The limiter books each request's recipients a slot of its own on the account's schedule
    (``count / pace`` seconds, slots never overlapping), and the worker waits for its slot's
    start before it sends: a request never arrives before its slot. So the requests arriving in
    [a, b] had their slots start in [a, b] (at most ``pace * (b - a)`` recipients, and one
    request's more for the last slot), or before a: those were between their slot and the
    provider at a, one per worker thread at most. ``burst`` is those: a batch per thread and
    one more."""
    times = [a.at for a in arrivals]
    sizes = [len(a.addresses) for a in arrivals]
    worst = 0.0
    for i in range(len(arrivals)):
        total = 0
        for j in range(i, len(arrivals)):
            total += sizes[j]
            allowed = pace * (times[j] - times[i]) + burst
            assert total <= allowed, (
                f"{total} recipients reached the provider in {times[j] - times[i]:.2f} s: "
                f"over the pace of {pace:g}/s (and a burst of {burst})"
            )
            if times[j] - times[i] >= 1.0:
                worst = max(worst, total / (times[j] - times[i]))
    print(f"highest rate over a second or more: {worst:.0f}/s (the pace: {pace:g}/s)")


def _assert_holds_kept(
    arrivals: list[Arrival], holds: list[float], retry_after: float, in_flight: int
) -> None:
    """After each 429 with Retry-After, no request reached the provider before the time it
    asked for, but those already past the limiter when the hold was set.

    The worker that got the 429 holds the account until its own clock's now (after the answer)
    plus Retry-After; every booking after that starts no earlier. Requests booked before it
    may still arrive: at most one per other worker thread (``in_flight``)."""
    for answered in holds:
        early = [a for a in arrivals if answered < a.at < answered + retry_after]
        assert len(early) <= in_flight, (
            f"{len(early)} requests arrived within the {retry_after} s a 429 asked for; "
            f"at most {in_flight} could have been in flight"
        )
