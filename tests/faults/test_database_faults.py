"""Faults of the database: the workers' connections reset inside their claim transactions,
again and again while a mailing is in flight. After it, the invariants of
:mod:`tests.faults.harness` (I1 no loss, I2 no duplicates, I5 compliance)."""

from __future__ import annotations

from pathlib import Path

from jvmail.db.models import DeliveryStatus
from tests.faults.conftest import READERS
from tests.faults.harness import running_system, scenario, until

# A pace that keeps a mailing going for several seconds, so faults land mid-mailing.
PACE = READERS / 6
RESETS = 12


@scenario()
def test_postgresql_connections_reset_inside_claim_transactions(
    pg_url: str, tmp_path: Path
) -> None:
    with running_system(pg_url, tmp_path, READERS, per_second=PACE) as system:
        system.start_worker()
        system.start_worker()
        system.tick()
        until("the first batch accepted", lambda: system.accepted_so_far() > 0)
        system.fault()
        killed: list[str] = []
        for _ in range(RESETS):
            before = system.accepted_so_far()
            if before >= READERS - 2 * system.batch:
                break
            killed += system.reset_claims()
            # The mailing goes on: the workers open new connections by themselves.
            system.until_ticking(
                "progress after a reset", lambda b=before: system.accepted_so_far() > b
            )
        counts = system.settle()
        system.check()
        claims = killed.count("claim")
        print(f"{len(killed)} connections reset, {claims} inside a claim transaction; {counts}")
        assert claims >= 3, f"too few claim transactions caught: {killed}"
        # A connection reset just as its commit of the batch's start went through leaves that
        # batch in flight, its request never made: dead-lettered, never sent.
        dead = counts.get(DeliveryStatus.DEAD, 0)
        assert counts[DeliveryStatus.ACCEPTED] + dead == READERS
        assert dead <= (len(killed) - claims) * system.batch
