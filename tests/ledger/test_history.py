"""The ledger's history as the planner reads it: list rates shrunk to a prior, aged balances."""

from __future__ import annotations

import datetime as dt

import pytest

from jvmail.db.models import LedgerKind
from jvmail.ledger.history import Measured, age_weight, decayed, rate_from_history
from jvmail.ledger.postings import MailingValue

PRIOR = 0.02


def test_no_history_keeps_the_prior() -> None:
    assert rate_from_history(PRIOR, []) == PRIOR
    assert rate_from_history(PRIOR, [Measured(exposure=0.0, value=5.0)]) == PRIOR


def test_one_mailing_moves_the_rate_half_way() -> None:
    # 1,000 weighted recipients at 2% were expected to bring 20; they brought 40.
    assert rate_from_history(PRIOR, [Measured(1000, 40.0)]) == pytest.approx(0.03)
    assert rate_from_history(PRIOR, [Measured(1000, 0.0)]) == pytest.approx(0.01)


def test_more_history_weighs_more_than_the_prior() -> None:
    doubled = [Measured(1000, 40.0)] * 4
    assert rate_from_history(PRIOR, doubled) == pytest.approx(0.02 * (160 + 20) / (80 + 20))


def test_plans_made_at_adjusted_rates_do_not_pull_the_estimate_back() -> None:
    # A list that truly clicks at 4%: the second mailing was planned at the adjusted 3%, so its
    # expected value was 30, and it brought 40. Compared with the exposure the estimate keeps
    # climbing towards 4% instead of falling back to the prior.
    first = rate_from_history(PRIOR, [Measured(1000, 40.0)])
    second = rate_from_history(PRIOR, [Measured(1000, 40.0), Measured(30.0 / first, 40.0)])
    assert PRIOR < first < second < 0.04


def test_age_weight_shrinks_per_week_of_age() -> None:
    week = dt.datetime(2026, 12, 7, tzinfo=dt.UTC)
    two_weeks = week - dt.timedelta(weeks=2)
    assert age_weight(two_weeks, week, 0.1) == pytest.approx(0.81)
    assert age_weight(week - dt.timedelta(days=3, hours=12), week, 0.19) == pytest.approx(0.9)
    assert age_weight(two_weeks, week, 0.0) == 1.0
    assert age_weight(week + dt.timedelta(days=1), week, 0.5) == 1.0  # not older: full weight


def test_decayed_weights_values_and_leaves_the_rest() -> None:
    values = {
        1: MailingValue(1, "a", "b", LedgerKind.FINAL, 10.0),
        2: MailingValue(2, "b", "a", LedgerKind.FINAL, 4.0),
    }
    out = decayed(values, {1: 0.5})
    assert (out[1].value, out[2].value) == (5.0, 4.0)
    assert values[1].value == 10.0
