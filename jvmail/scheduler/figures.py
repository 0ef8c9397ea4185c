"""The fairness figures every plan reports: value, balances after the week, spread, violations."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

from jvmail.scheduler.balance import objective
from jvmail.scheduler.problem import Plan, Problem
from jvmail.scheduler.verify import verify

__all__ = ["Figures", "PartnerWeek", "gini", "plan_figures"]

BALANCED_WITHIN = 0.20


@dataclass(frozen=True)
class PartnerWeek:
    partner: str
    before: float  # carried net (given - received) entering the week
    given: float  # expected value this partner mails for others this week
    received: float  # expected value others mail for it
    after: float


@dataclass(frozen=True)
class Figures:
    value: float  # V: total expected value of the plan
    value_max: float | None  # V_max: best value ignoring balance, when computed
    objective: float  # value minus the balance penalties, as the model scores it
    bound: float | None  # the LP relaxation's objective, when computed
    gap: float | None  # (bound - objective) / V_max
    sum_abs_balance_over_value: float
    max_abs_balance_over_value: float
    balanced_share: float  # active partners whose week is balanced within 20%
    gini_abs_balance: float
    violations: int
    partners: tuple[PartnerWeek, ...]
    solve_seconds: float | None = None  # how long the solver took, when measured


def gini(values: list[float]) -> float:
    """Gini coefficient of non-negative values: 0 = all equal, towards 1 = piled on one."""
    xs = sorted(values)
    total = sum(xs)
    if not xs or total == 0:
        return 0.0
    weighted = sum((i + 1) * x for i, x in enumerate(xs))
    return (2 * weighted) / (len(xs) * total) - (len(xs) + 1) / len(xs)


def plan_figures(
    problem: Problem,
    plan: Plan,
    value_max: float | None = None,
    bound: float | None = None,
    solve_seconds: float | None = None,
) -> Figures:
    lists = {lst.id: lst for lst in problem.lists}
    promos = {p.id: p for p in problem.promotions}
    given: dict[str, float] = defaultdict(float)
    received: dict[str, float] = defaultdict(float)
    for a in plan.assignments:
        given[lists[a.list].owner] += a.value
        received[promos[a.promotion].owner] += a.value
    partners = sorted(
        set(given)
        | set(received)
        | set(problem.balances)
        | {x.owner for x in problem.lists}
        | {x.owner for x in problem.promotions}
    )
    weeks = tuple(
        PartnerWeek(
            p,
            problem.balances.get(p, 0.0),
            given[p],
            received[p],
            problem.balances.get(p, 0.0) + given[p] - received[p],
        )
        for p in partners
    )
    value = sum(a.value for a in plan.assignments)
    active = [w for w in weeks if w.given or w.received]
    balanced = [
        w for w in active if abs(w.given - w.received) <= BALANCED_WITHIN * max(w.given, w.received)
    ]
    abs_after = [abs(w.after) for w in weeks]
    score = objective(problem, plan)
    gap = (bound - score) / value_max if bound is not None and value_max else None
    return Figures(
        value=value,
        value_max=value_max,
        objective=score,
        bound=bound,
        gap=gap,
        sum_abs_balance_over_value=sum(abs_after) / value if value else 0.0,
        max_abs_balance_over_value=max(abs_after, default=0.0) / value if value else 0.0,
        balanced_share=len(balanced) / len(active) if active else 1.0,
        gini_abs_balance=gini(abs_after),
        violations=len(verify(problem, plan)),
        partners=weeks,
        solve_seconds=solve_seconds,
    )
