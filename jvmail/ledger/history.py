"""What the ledger's history tells the planner: each list's measured rate.

Pure functions over effective mailing values (:mod:`jvmail.ledger.postings`); the entries are
never changed.

**Rate from history.** A mailing planned at a per-recipient rate ``r_i`` (in the hub's value
metric) with expected value ``E_i`` reached an *exposure* ``n_i = E_i / r_i``: its recipients
weighted by niche match and audience overlap. With the list's prior rate ``r0`` (from config)
and the values ``M_i`` measured for its past mailings::

    rate = r0 * (sum M_i + k) / (sum n_i * r0 + k),    k = r0 * mean(n_i)

``sum n_i * r0`` is what those mailings would have been expected to bring at the prior, and the
pseudo-count ``k`` is one typical mailing's worth of it: the prior counts as one more mailing
that went exactly as expected. One measured mailing moves the rate half way to what it showed,
four move it four fifths of the way, so one noisy week does not swing the plan. Later mailings
are planned at history-adjusted rates; comparing them with their exposure at the prior, not with
their stored expected value, keeps every mailing on the same baseline (the stored values would
pull the estimate back to the prior).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from jvmail.db.models import LedgerKind

__all__ = ["MEASURED_STAGES", "Measured", "rate_from_history"]

# A missed mailing was never sent and an expected-only (or declined) one was never measured:
# neither says anything about how a list responds.
MEASURED_STAGES = frozenset({LedgerKind.PENDING, LedgerKind.FINAL})


@dataclass(frozen=True, slots=True)
class Measured:
    """One sent and measured mailing of a list.

    ``exposure``: its expected value divided by the rate it was planned at (weighted recipients).
    ``value``: what was measured, corrections included, in the hub's value metric.
    """

    exposure: float
    value: float


def rate_from_history(prior: float, history: Iterable[Measured]) -> float:
    """The list's per-recipient rate: ``prior`` shrunk towards its measured mailings.

    Returns ``prior`` unchanged when there is no history with a positive exposure. See the
    module docstring for the rule.
    """
    samples = [m for m in history if m.exposure > 0]
    if not samples or prior <= 0:
        return prior
    expected = prior * sum(m.exposure for m in samples)
    k = expected / len(samples)
    measured = max(0.0, sum(m.value for m in samples))
    return prior * (measured + k) / (expected + k)
