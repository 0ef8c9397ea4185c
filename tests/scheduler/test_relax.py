"""The LP bound: lazy pair and day rows reach the same optimum as writing every row."""

from __future__ import annotations

import datetime as dt

import pytest

from jvmail.scheduler import ListSpec, Problem, PromotionSpec, Settings, solve
from jvmail.scheduler.arcs import eligible_arcs
from jvmail.scheduler.balance import objective, tolerances
from jvmail.scheduler.relax import lp_bound, relax, value_bound
from jvmail.scheduler.synth import synthetic_problem

MON = dt.date(2026, 11, 30)
TUE, WED = MON + dt.timedelta(1), MON + dt.timedelta(2)
VALUE_ONLY = Settings(balance_weight=0, excess_weight=0)


def test_pair_caps_bind_through_lazy_rows() -> None:
    # b's list can take three of a's promotions, but b mails at most one for a.
    problem = Problem(
        MON,
        (ListSpec("b-l", "b", 1000, 0.02, ("web",), 3, 1, (TUE, WED, MON), 9),),
        tuple(PromotionSpec(f"a-{n}", "a", ("web",), MON, WED, 1) for n in range(3)),
        settings=Settings(pair_cap=1, balance_weight=0, excess_weight=0),
    )
    found = relax(problem, eligible_arcs(problem), {})
    assert found.bound == pytest.approx(20.0)
    assert found.rounds >= 2  # the pair row was not there at first


def test_day_rows_bind_through_lazy_rows() -> None:
    # Three promotions all wanting Tuesday on a one-slot list open Tue and Wed: one fits.
    problem = Problem(
        MON,
        (ListSpec("b-l", "b", 1000, 0.02, ("web",), 3, 1, (TUE, WED), 9),),
        tuple(PromotionSpec(f"a-{n}", f"p{n}", ("web",), TUE, TUE, 1) for n in range(3)),
        settings=VALUE_ONLY,
    )
    assert lp_bound(problem) == pytest.approx(20.0)
    assert value_bound(problem) == pytest.approx(20.0)


@pytest.mark.parametrize("seed", [1, 2])
def test_the_bound_holds_over_solved_plans(seed: int) -> None:
    problem = synthetic_problem(8, seed)
    arcs = eligible_arcs(problem)
    bound = relax(problem, arcs, tolerances(problem, arcs)).bound
    assert objective(problem, solve(problem)) <= bound + 1e-6
    assert bound <= value_bound(problem) + 1e-6
