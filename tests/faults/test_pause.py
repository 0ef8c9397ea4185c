"""Pausing a mailing in flight, resuming it, and restarting the workers while it is paused, again
and again. After it, the invariants of :mod:`tests.faults.harness` (I1 no loss, I2 no
duplicates, I5 compliance), and: the provider received nothing while the mailing was paused
but the batches already in flight when the pause committed."""

from __future__ import annotations

from pathlib import Path

from jvmail.db.models import DeliveryStatus
from tests.faults.conftest import READERS
from tests.faults.harness import running_system, scenario, until

CYCLES = 20
RESTART_EVERY = 4  # cycles; the workers are restarted while the mailing is paused
BATCH = max(10, READERS // 300)  # some 300 batches: many more than the cycles take
PACE = READERS / 30  # some ten batches a second: the mailing outlasts the cycles


@scenario()
def test_pause_resume_and_restart_while_paused_20_times(pg_url: str, tmp_path: Path) -> None:
    with running_system(pg_url, tmp_path, READERS, per_second=PACE, batch=BATCH) as system:
        system.start_worker()
        system.start_worker()
        system.tick()
        until("the first batch accepted", lambda: system.accepted_so_far() > 0)
        system.fault()
        # (pause committed, resume began, the addresses in flight when the pause committed)
        windows: list[tuple[float, float, frozenset[str]]] = []
        for cycle in range(1, CYCLES + 1):
            left = READERS - system.accepted_so_far()
            assert left > 0, f"the mailing ended after {cycle - 1} cycles: more batches"
            paused, flying = system.pause()
            # Paused: the batches in flight finish; those claimed but not yet started, and
            # those the workers take from the queue now, go back unsent.
            system.until_ticking(
                "nothing in flight while paused",
                lambda: (
                    not any(
                        system.counts().get(s)
                        for s in (DeliveryStatus.CLAIMED, DeliveryStatus.SENDING)
                    )
                ),
            )
            if cycle % RESTART_EVERY == 0:
                system.restart_workers()
            before = system.accepted_so_far()
            windows.append((paused, system.resume(), flying))
            if cycle < CYCLES:
                system.until_ticking(
                    "progress after a resume", lambda b=before: system.accepted_so_far() > b
                )
        counts = system.settle()
        system.check()
    assert counts == {DeliveryStatus.ACCEPTED: READERS}
    # While paused, the provider received only what was in flight when the pause committed.
    allowed = 0
    for paused, resumed, flying in windows:
        for arrival in system.sendgrid.arrivals:
            if paused < arrival.at < resumed:
                outside = set(arrival.addresses) - flying
                assert not outside, (
                    f"{len(outside)} recipients reached the provider {arrival.at - paused:.2f} s "
                    "into a pause, not in flight when it committed"
                )
                allowed += 1
    print(f"{len(windows)} pauses; {allowed} requests in flight at a pause arrived during it")
