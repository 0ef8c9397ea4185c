"""15. Hostile partner templates through the worker processes: beside the harness's mailing, due
mailings whose promotions carry templates their owner wrote to break out or to wear the workers
down (sandbox escapes, huge loops, deep recursion, output and memory bombs, single calls that
run for minutes). Each of those mailings fails with a reason naming its problem, and nothing of
it reaches the provider; the workers live on and the harness's mailing is sent in full, on time.
After it, the invariants of :mod:`tests.faults.harness` (I1, I2, I4 and I5) for every mailing."""

from __future__ import annotations

import datetime as dt
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from jvmail.db.models import DeliveryStatus, MailingStatus, Promotion
from tests.dispatch.conftest import WHEN, mailing, mailing_list
from tests.faults.conftest import READERS
from tests.faults.harness import System, canary_leaks, running_system, scenario, until

PACE = READERS / 6  # the harness's mailing takes about six seconds at its account's pace
# Seconds past its paced length by which the harness's mailing must be done: half a minute, and
# a second per thousand readers for the workers' own throughput (20 s more at full size).
LATE = 30.0 + READERS / 1000
HOSTILE_READERS = 20  # on each hostile mailing's list


@dataclass(frozen=True)
class Hostile:
    """A partner-written template, in one part of a promotion, and what its mailing's reason
    must name."""

    slug: str
    part: str  # "subject", "html" or "text"
    source: str
    reason: str


HOSTILE = (
    Hostile("escape-mro", "html", "{{ ''.__class__.__mro__[1].__subclasses__() }}", "unsafe"),
    Hostile("escape-globals", "text", "{{ cycler.__init__.__globals__ }}", "unsafe"),
    Hostile("huge-loop", "html", "{% for i in range(10**9) %}{% endfor %}", "took longer"),
    Hostile(
        "deep-recursion",
        "subject",
        "{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}",
        "RecursionError",
    ),
    Hostile(
        "output-bomb",
        "html",
        "{% for i in range(10**6) %}{{ 'y' * 99999 }}{% endfor %}",
        "renders more than",
    ),
    # One long call each, which the sandbox's checks between steps cannot interrupt.
    Hostile("lipsum-loop", "text", "{{ lipsum(10**7) }}", "took longer"),
    Hostile("memory-bomb", "html", "{{ ('a' * 100000)|replace('a', 'a' * 100000) }}", "needs more"),
)


def _hostile_mailing(system: System, k: int, hostile: Hostile) -> int:
    """A due mailing of the sender's, of the owner's promotion carrying ``hostile``'s template,
    to a list of its own (due an hour before the harness's mailing: its batches are queued
    first)."""
    session, hub = system.session, system.hub
    parts = {
        "subject": "Hello {{ first_name }}",
        "html": "<p>Hi {{ first_name }}, <a href='https://owner.example/x'>see it</a></p>",
        "text": "Hi {{ first_name }}, see https://owner.example/x",
    } | {hostile.part: hostile.source}
    promotion = Promotion(
        slug=f"owner-{hostile.slug}",
        partner_id=hub.owner.id,
        **parts,
        landing_urls=["https://owner.example/x"],
        window_start=hub.promotion.window_start,
        window_end=hub.promotion.window_end,
        niches=["web"],
        mailings_wanted=1,
        exclude_partners=[],
    )
    session.add(promotion)
    session.flush()
    emails = [f"hostile{k}-{n}@mail.example" for n in range(HOSTILE_READERS)]
    row = mailing(session, promotion, mailing_list(session, hub.sender, f"sender-h{k}", emails))
    row.scheduled_at = WHEN - dt.timedelta(hours=1)
    session.commit()
    return row.id


def _sent_in_full(system: System, seconds: float) -> float:
    """Tick every half second until the harness's mailing is accepted in full; how long that
    took. Fails past ``seconds``."""
    began = time.monotonic()
    last = 0.0

    def done() -> bool:
        nonlocal last
        if time.monotonic() - last > 0.5:
            system.tick()
            last = time.monotonic()
        return system.accepted_so_far() == READERS

    until("the harness's mailing accepted in full, on time", done, seconds)
    return time.monotonic() - began


@scenario(pytest.mark.quick)
def test_hostile_templates_fail_their_mailings_and_the_others_go_on(
    pg_url: str, tmp_path: Path
) -> None:
    # A lease longer than a hostile render may run (7 s, stopped), as production's 10 minutes
    # is: a batch is not taken from the worker still rendering it, to be rendered again.
    with running_system(pg_url, tmp_path, READERS, per_second=PACE, lease=12.0) as system:
        hostile = {_hostile_mailing(system, k, h): h for k, h in enumerate(HOSTILE)}
        workers = [system.start_worker(), system.start_worker()]
        took = _sent_in_full(system, READERS / PACE + LATE)
        print(f"\nthe harness's mailing went out in {took:.1f} s beside the hostile ones")
        counts = system.settle()
        system.check()
        assert counts == {DeliveryStatus.ACCEPTED: READERS}
        assert system.mailing_status() is MailingStatus.SENT
        # None of the hostile mailings' readers may reach the provider, accepted or not.
        hostile_addresses = {a for m in hostile for a, _ in system.deliveries(m).values()}
        for m, h in hostile.items():
            system.check(m, readers=HOSTILE_READERS)
            assert system.counts(m) == {DeliveryStatus.FAILED: HOSTILE_READERS}, h.slug
            assert system.mailing_status(m) is MailingStatus.FAILED, h.slug
            why = system.mailing_error(m)
            assert f"promotion owner-{h.slug}: {h.part}" in why
            assert h.reason in why, why
            assert set(system.errors(DeliveryStatus.FAILED, m)) == {why}
        reached = {a for arrival in system.sendgrid.arrivals for a in arrival.addresses}
        assert not reached & hostile_addresses, "a hostile mailing's reader reached the provider"
        for proc in workers:
            assert proc.poll() is None, f"a worker died ({proc.returncode})"
        assert any(system.worker_output().values()), "the workers' output was captured"
        # The I4 check reads what the workers wrote: a canary in their output fails it.
        with (tmp_path / "workers" / "1.err").open("a") as log:
            log.write(f"sending to {system.canaries[0]}\n")
        with pytest.raises(AssertionError, match="I4"):
            system.check()


@pytest.mark.quick
def test_canary_leaks_name_each_place_a_canary_appears() -> None:
    canaries = ("canary-owner-0@owner.example", "canary-owner-1@owner.example")
    written = [
        ("worker output 1.err", "sending to Canary-Owner-1@Owner.Example failed"),
        ("provider request 3", '{"personalizations": [{"to": [{"email": "a@mail.example"}]}]}'),
        (
            "mailing 7's error",
            "refused canary-owner-0@owner.example and canary-owner-1@owner.example",
        ),
    ]
    assert canary_leaks(canaries, written) == [
        "worker output 1.err: canary-owner-1@owner.example",
        "mailing 7's error: canary-owner-0@owner.example",
        "mailing 7's error: canary-owner-1@owner.example",
    ]
    assert canary_leaks(canaries, written[1:2]) == []
    assert canary_leaks((), written) == []
