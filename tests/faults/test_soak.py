"""19. The soak: rounds of a random fault from the scenarios above during a week of swaps
between three partners and a fourth sender, on four providers; every round checks I1, I2, I4
and I5 (see :mod:`tests.faults.soak`). ``JVMAIL_SOAK_ROUNDS`` (default 30), ``JVMAIL_SOAK_SEED``
(default 19) and ``JVMAIL_SOAK_READERS`` (readers per list) change the run."""

from __future__ import annotations

import json
import random
import time
from pathlib import Path
from typing import Any

import pytest
import requests

from jvmail.providers.base import OutboundBatch
from jvmail.providers.mailgun import MailgunProvider
from jvmail.providers.postmark import PostmarkProvider
from jvmail.providers.sendgrid import SendGridProvider
from jvmail.providers.ses import SesProvider
from tests.faults.harness import scenario
from tests.faults.soak import (
    CANARY,
    ROUNDS,
    SEED,
    WORKERS,
    Parsed,
    Round,
    draw,
    parse_request,
    run_round,
    running_soak,
    summary,
)
from tests.providers.fakes import MAILER, sample_batch


@scenario()
def test_soak_a_week_of_random_faults(pg_url: str, tmp_path: Path) -> None:
    rounds: list[Round] = []
    began = time.monotonic()
    with running_soak(pg_url, tmp_path) as soak:
        for _ in range(WORKERS):
            soak.start_worker()
        try:
            for number, fault in enumerate(draw(SEED, ROUNDS)):
                print(f"\nround {number + 1}/{ROUNDS} (seed {SEED}): {fault.name}", flush=True)
                # The fault's own choices (which worker, provider, mailing), also seeded.
                done = run_round(soak, number, fault, random.Random(f"{SEED}-{number}"))
                rounds.append(done)
                print(f"  {done.detail}; recovered in {done.recovered_in:.1f} s", flush=True)
                for violation in done.violations:
                    print(f"  VIOLATION {violation}", flush=True)
        finally:
            print("\n" + summary(rounds), flush=True)
            print(f"soak took {time.monotonic() - began:.0f} s", flush=True)
    assert len(rounds) == ROUNDS
    violations = [f"round {r.number + 1}: {v}" for r in rounds for v in r.violations]
    assert not violations, "\n".join(violations)


# -- the soak's reading of the providers' requests (no services: `make test` runs these) -------

READERS_OF_ALPHA = ["canary-alpha-0@alpha-readers.example", "r1@alpha-readers.example"]


def _request(kind: str, batch: OutboundBatch) -> tuple[str, bytes]:
    """The Content-Type and body of the request ``kind``'s client sends for ``batch``."""
    people = batch.recipients
    if kind == "sendgrid":
        body: Any = SendGridProvider("k", from_addr=SENDER, from_name="S").body(batch, people)
    elif kind == "postmark":
        body = PostmarkProvider("t", from_addr=SENDER, from_name="S").body(batch, people)
    elif kind == "ses":
        ses = SesProvider(
            "us-east-1",
            from_addr=SENDER,
            from_name="S",
            access_key_id="a",
            secret_access_key="s",
        )
        body = ses.request(batch, people)
    else:
        form = MailgunProvider("k", "mg.example", from_addr=SENDER, from_name="S").form(
            batch, people
        )
        files = [(k, (None, v)) for k, v in form]
        prepared = requests.Request("POST", "http://mg.example", files=files).prepare()
        assert isinstance(prepared.body, bytes)
        return str(prepared.headers["Content-Type"]), prepared.body
    return "application/json", json.dumps(body).encode()


SENDER = "news@alpha.example"


@pytest.mark.quick
@pytest.mark.parametrize("kind", ["sendgrid", "mailgun", "postmark", "ses"])
def test_the_soak_reads_each_providers_requests(kind: str) -> None:
    content_type, raw = _request(kind, sample_batch(READERS_OF_ALPHA, 7))
    postal = MAILER.postal_address
    assert parse_request(kind, content_type, raw, postal) == Parsed(tuple(READERS_OF_ALPHA), True)
    assert {m.decode() for m in CANARY.findall(raw)} == {"alpha"}
    # What I5 refuses: another sender's postal address, a header missing, not a send request.
    assert not parse_request(kind, content_type, raw, "2 Other Road, Elsewhere").compliant
    stripped = raw.replace(b"List-Unsubscribe-Post", b"X-Something-Else")
    assert not parse_request(kind, content_type, stripped, postal).compliant
    assert parse_request(kind, content_type, b"{}", postal) == Parsed((), False)
