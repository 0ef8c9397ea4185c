"""The greedy baseline and the rolling simulation the benchmark uses."""

from __future__ import annotations

import datetime as dt

from jvmail.scheduler import Effort, ListSpec, Plan, Problem, PromotionSpec, solve, verify
from jvmail.scheduler.figures import plan_figures
from jvmail.scheduler.greedy import owed_first
from jvmail.scheduler.rolling import simulate
from jvmail.scheduler.synth import synthetic_problem

MON = dt.date(2026, 11, 30)
WEEK = tuple(MON + dt.timedelta(days=n) for n in range(7))
QUICK = Effort(min_moves=20_000, exact_up_to=0, max_restarts=1)


def test_greedy_serves_the_most_owed_partner_first() -> None:
    lists = (ListSpec("b-l", "b", 1000, 0.02, ("web",), 1, 1, WEEK[1:4], 9),)
    promos = (
        PromotionSpec("a-p", "a", ("web",), MON, WEEK[-1], 1),
        PromotionSpec("c-p", "c", ("web",), MON, WEEK[-1], 1),
    )
    for owed, other in (("a", "c"), ("c", "a")):
        problem = Problem(MON, lists, promos, balances={owed: 20.0, other: -20.0})
        assert [x.promotion for x in owed_first(problem).assignments] == [f"{owed}-p"]


def test_greedy_plans_break_no_rule_and_balance_worse_than_the_scheduler() -> None:
    for seed in (1, 2):
        problem = synthetic_problem(40, seed)
        greedy, planned = owed_first(problem), solve(problem, QUICK)
        assert verify(problem, greedy) == []
        assert len(greedy.assignments) > 0
        spread = plan_figures(problem, greedy).sum_abs_balance_over_value
        assert plan_figures(problem, planned).sum_abs_balance_over_value < spread


def test_carried_balances_are_repaid_over_the_weeks() -> None:
    def hub(week: dt.date) -> Problem:
        return synthetic_problem(30, 2, week)

    def quick(problem: Problem) -> Plan:
        return solve(problem, QUICK)

    carry = simulate(hub, quick, weeks=12, first_week=MON, seed=2)
    flat = simulate(hub, quick, weeks=12, first_week=MON, carry=False, seed=2)
    assert [w.week for w in carry] == list(range(1, 13))
    # Same hub, same noise: week 1 is the same with or without carry-forward.
    assert carry[0] == flat[0]
    # With carry-forward the cumulative ratio falls from one four-week block to the next and
    # ends at most 5%; the leftovers of every week stay repaid, so |b| does not pile up.
    blocks = [sum(w.ratio for w in carry[k : k + 4]) / 4 for k in (0, 4, 8)]
    assert blocks[0] > blocks[1] > blocks[2]
    assert carry[-1].ratio <= 0.05
    # Without it the same noise piles up: the spread grows and ends well above.
    assert flat[-1].sum_abs_balance > flat[3].sum_abs_balance
    assert flat[-1].ratio > 2 * carry[-1].ratio
    assert max(w.sum_abs_balance for w in carry[4:]) < flat[-1].sum_abs_balance
