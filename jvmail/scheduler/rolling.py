"""A rolling simulation: plan week after week, measure noisy results, carry the balances forward.

Each week the hub is planned with the balances measured so far (or with none, to show what
happens without carry-forward); each mailing then "measures" its expected value times a
seeded, mean-one lognormal noise, as real clicks scatter around their forecast. The figure
that matters is cumulative: the sum over partners of |net balance| after week k, over the
value measured in weeks 1..k. With carry-forward it falls week after week: what one week left
unbalanced, the next one repays. Without it, leftovers pile up and the figure drifts.
"""

from __future__ import annotations

import datetime as dt
import math
import random
from collections.abc import Callable
from dataclasses import dataclass, replace

from jvmail.scheduler.problem import Plan, Problem

__all__ = ["RollingWeek", "simulate"]


@dataclass(frozen=True)
class RollingWeek:
    week: int  # 1-based
    planned: float  # expected value of the week's plan
    measured: float  # what the week's mailings measured
    sum_abs_balance: float  # sum over partners of |net| after the week (measured)
    ratio: float  # sum_abs_balance / measured value of weeks 1..week


def simulate(
    hub: Callable[[dt.date], Problem],
    solver: Callable[[Problem], Plan],
    *,
    weeks: int = 12,
    first_week: dt.date,
    carry: bool = True,
    noise: float = 0.3,
    seed: int = 0,
) -> list[RollingWeek]:
    """Run ``weeks`` weeks of ``hub(week_start)`` through ``solver``.

    ``noise`` is the standard deviation of the log of measured / expected per mailing.
    """
    rng = random.Random(f"jvmail-rolling:{seed}")
    balances: dict[str, float] = {}
    total = 0.0
    out: list[RollingWeek] = []
    for k in range(weeks):
        problem = hub(first_week + dt.timedelta(days=7 * k))
        carried = dict(sorted(balances.items())) if carry else {}
        plan = solver(replace(problem, balances=carried))
        owner_of_list = {lst.id: lst.owner for lst in problem.lists}
        owner_of_promo = {x.id: x.owner for x in problem.promotions}
        measured = 0.0
        for a in plan.assignments:
            got = a.value * math.exp(rng.gauss(-noise * noise / 2, noise))
            measured += got
            giver, receiver = owner_of_list[a.list], owner_of_promo[a.promotion]
            balances[giver] = balances.get(giver, 0.0) + got
            balances[receiver] = balances.get(receiver, 0.0) - got
        total += measured
        spread = sum(abs(b) for b in balances.values())
        out.append(
            RollingWeek(
                week=k + 1,
                planned=sum(a.value for a in plan.assignments),
                measured=measured,
                sum_abs_balance=spread,
                ratio=spread / total if total else 0.0,
            )
        )
    return out
