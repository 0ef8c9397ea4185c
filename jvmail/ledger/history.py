"""What the ledger's history tells the planner: each list's measured rate, and aged balances.

Pure functions over effective mailing values (:mod:`jvmail.ledger.postings`); the entries are
never changed, and `jvmail ledger` keeps showing the raw, undecayed balances.

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

**Debt decay.** With ``decay`` d, a mailing's value counts ``(1 - d) ** age_weeks`` in the
carried balances, age measured from its scheduled time to the start of the planned week.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace

from jvmail.db.models import LedgerKind
from jvmail.ledger.postings import MailingValue

__all__ = ["MEASURED_STAGES", "Measured", "age_weight", "decayed", "rate_from_history"]

# A missed mailing was never sent and an expected-only (or declined) one was never measured:
# neither says anything about how a list responds.
MEASURED_STAGES = frozenset({LedgerKind.PENDING, LedgerKind.FINAL})
_WEEK = dt.timedelta(weeks=1)


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


def age_weight(scheduled_at: dt.datetime, week_start: dt.datetime, decay: float) -> float:
    """``(1 - decay) ** weeks`` from ``scheduled_at`` to ``week_start``; 1.0 when not older."""
    weeks = max(0.0, (week_start - scheduled_at) / _WEEK)
    if decay <= 0 or weeks == 0:
        return 1.0
    return float((1.0 - decay) ** weeks)


def decayed(
    values: Mapping[int, MailingValue], weights: Mapping[int, float]
) -> dict[int, MailingValue]:
    """``values`` with each mailing's value times its weight (mailings without one keep 1.0)."""
    return {
        m: replace(mv, value=mv.value * weights[m]) if m in weights else mv
        for m, mv in values.items()
    }
