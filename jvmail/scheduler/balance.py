"""The objective every solver maximizes, and the per-partner balance penalty inside it.

    objective = sum of expected values  -  sum_p penalty(b_p, tau_p)
    penalty(b, tau) = balance_weight * |b|  +  excess_weight * max(0, |b| - tau)

with b_p = carried_p + given_p - received_p (the partner's net after the week) and
tau_p = tolerance * volume_p, where volume_p is what p could trade in a week: the larger of what
its lists could give and what its promotions could receive, each at their best eligible values.
The penalty is convex, so imbalance costs more the further it piles up on one partner.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping

from jvmail.scheduler.arcs import Arc, eligible_arcs
from jvmail.scheduler.problem import Plan, Problem, Settings

__all__ = ["net_after", "objective", "penalty", "tolerances"]


def penalty(b: float, tau: float, s: Settings) -> float:
    """The cost of ending the week with net balance ``b`` against a tolerance ``tau``."""
    size = abs(b)
    return s.balance_weight * size + s.excess_weight * max(0.0, size - tau)


def tolerances(problem: Problem, arcs: Iterable[Arc]) -> dict[str, float]:
    """tau_p for every partner that has an arc (0 for the others)."""
    best_on_list: dict[str, float] = defaultdict(float)
    best_for_promo: dict[str, float] = defaultdict(float)
    owner_of_list: dict[str, str] = {}
    promo_of: dict[str, tuple[str, int]] = {}
    for arc in arcs:
        best_on_list[arc.lst.id] = max(best_on_list[arc.lst.id], arc.value)
        best_for_promo[arc.promo.id] = max(best_for_promo[arc.promo.id], arc.value)
        owner_of_list[arc.lst.id] = arc.lst.owner
        promo_of[arc.promo.id] = (arc.promo.owner, arc.promo.wanted)
    give: dict[str, float] = defaultdict(float)
    take: dict[str, float] = defaultdict(float)
    caps = {lst.id: lst.weekly_cap for lst in problem.lists}
    for lid, best in best_on_list.items():
        give[owner_of_list[lid]] += caps[lid] * best
    for pid, best in best_for_promo.items():
        owner, wanted = promo_of[pid]
        take[owner] += wanted * best
    tol = problem.settings.tolerance
    return {p: tol * max(give[p], take[p]) for p in sorted(set(give) | set(take))}


def net_after(problem: Problem, plan: Plan) -> dict[str, float]:
    """Each partner's net balance after the plan's week (carried balance included)."""
    owners = {lst.id: lst.owner for lst in problem.lists}
    promo_owners = {p.id: p.owner for p in problem.promotions}
    net: dict[str, float] = defaultdict(float, problem.balances)
    for a in plan.assignments:
        net[owners[a.list]] += a.value
        net[promo_owners[a.promotion]] -= a.value
    return dict(net)


def objective(problem: Problem, plan: Plan, tau: Mapping[str, float] | None = None) -> float:
    """The model's objective for ``plan``: comparable with the LP bound and across solvers."""
    taus = tolerances(problem, eligible_arcs(problem)) if tau is None else tau
    s = problem.settings
    cost = sum(penalty(b, taus.get(p, 0.0), s) for p, b in net_after(problem, plan).items())
    return sum(a.value for a in plan.assignments) - cost
