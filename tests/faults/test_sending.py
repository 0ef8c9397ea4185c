"""Faults on the sending side: workers killed, crashed, frozen and redeployed; Redis killed and
lost. After each, the invariants of :mod:`tests.faults.harness` (I1 no loss, I2 no duplicates,
I5 compliance)."""

from __future__ import annotations

import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from jvmail.db.models import DeliveryStatus, MailingStatus
from tests.faults.conftest import READERS
from tests.faults.harness import System, running_system, until
from tests.providers.fakes import Scripted


def _scenario(*marks: pytest.MarkDecorator) -> Callable[[Callable[..., None]], Callable[..., None]]:
    def mark(test: Callable[..., None]) -> Callable[..., None]:
        for m in (pytest.mark.slow, pytest.mark.postgres, pytest.mark.redis, *marks):
            test = m(test)
        return test

    return mark


# A pace that keeps a mailing going for several seconds, so faults land mid-mailing.
PACE = READERS / 6


@pytest.fixture
def system(pg_url: str, tmp_path: Path) -> Iterator[System]:
    with running_system(pg_url, tmp_path, READERS, per_second=PACE) as system:
        yield system


def _half_way(system: System) -> None:
    until("half of the mailing accepted", lambda: system.accepted_so_far() >= READERS // 2)


@_scenario(pytest.mark.quick)
def test_kill_9_a_worker_mid_mailing_while_readers_unsubscribe(system: System) -> None:
    first = system.start_worker()
    system.start_worker()
    system.tick()
    until("a quarter accepted", lambda: system.accepted_so_far() >= READERS // 4)
    # Readers still waiting unsubscribe while the mailing runs; then a worker dies mid-batch.
    waiting = [
        address
        for address, status in system.deliveries().values()
        if status is DeliveryStatus.PENDING
    ]
    system.unsubscribe(waiting[-50:])
    _half_way(system)
    system.fault()
    system.signal(first, signal.SIGKILL)
    system.start_worker()  # its supervisor starts it again
    counts = system.settle()
    rows = system.check()
    # What the killed worker had marked in flight without its request reaching the provider
    # (at most a batch per thread) is dead-lettered, never resent blindly.
    dead = counts.get(DeliveryStatus.DEAD, 0)
    assert dead <= 2 * system.batch
    assert counts[DeliveryStatus.ACCEPTED] + dead == READERS - 50
    suppressed = {a for a, s in rows.values() if s is DeliveryStatus.SUPPRESSED}
    assert set(system.unsubscribed) <= suppressed


@_scenario(pytest.mark.quick)
def test_a_worker_crashes_after_the_providers_2xx_before_its_commit(system: System) -> None:
    system.fault()
    crashing = system.start_worker(JVMAIL_FAULT="send:after-provider")
    system.tick()
    until("the crash after the provider took a batch", lambda: crashing.poll() is not None)
    assert system.sendgrid.fake.accepted, "the provider took the batch before the crash"
    system.start_worker()
    system.start_worker()
    counts = system.settle()
    system.check()
    # The crashed batch was never sent again: it settled from the provider's own events.
    assert counts == {DeliveryStatus.ACCEPTED: READERS}


@_scenario(pytest.mark.quick)
def test_a_dispatcher_dies_after_its_parts_committed_before_it_took_the_mailing(
    system: System,
) -> None:
    system.fault()
    # Lists of more than 500 subscriber ids are made in parts (two, by default).
    parts = {"JVMAIL_TEST_PART_SPAN": "500"}
    dying = system.start_worker(JVMAIL_FAULT="dispatch:after-parts", **parts)
    system.tick()
    until("the dispatcher's crash", lambda: dying.poll() is not None)
    # Its parts had committed: every reader has a row, of a mailing still waiting, in no batch.
    left = system.deliveries()
    assert len(left) == READERS
    assert {status for _, status in left.values()} == {DeliveryStatus.PENDING}
    assert system.mailing_status() is MailingStatus.PLANNED
    system.start_worker(**parts)
    system.start_worker(**parts)
    counts = system.settle()
    system.check()
    # The next dispatch replaced those rows and sent each reader once.
    assert counts == {DeliveryStatus.ACCEPTED: READERS}
    assert not set(left) & set(system.deliveries())


@_scenario()
def test_sigstop_a_worker_past_its_lease_then_sigcont(pg_url: str, tmp_path: Path) -> None:
    # The first request is held by the provider for a while: the worker is frozen in it.
    hold = Scripted(202, {"X-Message-Id": "sg-held"}, hang=2.0)
    with running_system(
        pg_url, tmp_path, READERS, per_second=PACE, script=[hold], lease=4.0
    ) as system:
        frozen = system.start_worker(JVMAIL_TEST_SENDGRID_TIMEOUT="30")
        system.tick()
        until("the first request reached the provider", lambda: system.sendgrid.fake.requests > 0)
        system.fault()
        system.signal(frozen, signal.SIGSTOP)
        started = time.monotonic()
        system.start_worker()
        # The frozen worker's two threads hold a batch each at most: the one inside the held
        # request, and perhaps one marked in flight before its request left.
        system.until_ticking(
            "the others sent, the frozen batch's lease over",
            lambda: (
                time.monotonic() - started > 5.0
                and system.accepted_so_far() >= READERS - 2 * system.batch
            ),
        )
        system.signal(frozen, signal.SIGCONT)  # its late commit must be refused
        counts = system.settle()
        system.check()
    # The held request's batch was taken once and settled from the provider's events; a batch
    # that never left is dead-lettered, not resent blindly.
    dead = counts.get(DeliveryStatus.DEAD, 0)
    assert dead <= system.batch
    assert counts[DeliveryStatus.ACCEPTED] + dead == READERS


@_scenario()
def test_sigterm_every_worker_mid_mailing_a_rolling_deploy(system: System) -> None:
    old = [system.start_worker(), system.start_worker()]
    system.tick()
    _half_way(system)
    system.fault()
    for proc in old:
        system.signal(proc, signal.SIGTERM)
    for proc in old:
        proc.wait(timeout=60)
    system.workers = [w for w in system.workers if w not in old]
    system.start_worker()
    system.start_worker()
    counts = system.settle()
    system.check()
    assert counts == {DeliveryStatus.ACCEPTED: READERS}


@_scenario(pytest.mark.quick)
def test_kill_9_redis_mid_mailing_and_restart_it_from_its_append_only_file(
    system: System,
) -> None:
    system.start_worker()
    system.start_worker()
    system.tick()
    until("a quarter accepted", lambda: system.accepted_so_far() >= READERS // 4)
    system.fault()
    system.redis.restart()
    counts = system.settle()
    system.check()
    assert counts == {DeliveryStatus.ACCEPTED: READERS}


@_scenario()
def test_redis_restarted_empty_mid_mailing(system: System) -> None:
    system.start_worker()
    system.start_worker()
    system.tick()
    until("a quarter accepted", lambda: system.accepted_so_far() >= READERS // 4)
    system.fault()
    system.redis.restart(empty=True)  # every queued batch message is gone: the relay's work
    counts = system.settle()
    system.check()
    assert counts == {DeliveryStatus.ACCEPTED: READERS}
