"""The LP relaxation of the week's model: the bound every plan is measured against.

Columns: y_a in [0, 1] per eligible arc, and per partner t_p >= |b_p| and e_p >= t_p - tau_p.
Rows always present: list weekly caps (never more than the list's day slots), promotion wants,
and the balance rows. Pair caps and the day "interval" rows (pairs whose days all lie in a run
of a list's days fit in that run's slots) are many but rarely binding, so they are added lazily:
solve, add the rows the solution breaks, solve again from the previous basis, until none is
broken. The result is the same optimum as with every row present, at a fraction of the size.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, replace

import highspy

from jvmail.scheduler.arcs import Arc, eligible_arcs
from jvmail.scheduler.balance import tolerances
from jvmail.scheduler.highs import RowBuffer, add_columns, new_highs
from jvmail.scheduler.problem import Problem

__all__ = ["Relaxation", "lp_bound", "relax", "value_bound"]

_INF = highspy.kHighsInf
_TOL = 1e-7
_MAX_ROUNDS = 50
# Above this many arcs the interior-point method (without crossover to a vertex) is much faster
# than simplex on this model: minutes instead of an hour at 2,000 partners.
_IPM_ABOVE = 20_000


@dataclass(frozen=True)
class Relaxation:
    """The LP optimum: ``bound`` (an upper bound on any plan's objective) and ``y`` per arc."""

    bound: float
    y: list[float]
    rounds: int  # solves until no lazy row was broken


def relax(problem: Problem, arcs: Sequence[Arc], tau: dict[str, float]) -> Relaxation:
    """Solve the LP relaxation over ``arcs`` with tolerances ``tau``."""
    s = problem.settings
    h = new_highs()
    if len(arcs) > _IPM_ABOVE:
        h.setOptionValue("solver", "ipm")
        h.setOptionValue("run_crossover", "off")
    partners = sorted({a.lst.owner for a in arcs} | {a.promo.owner for a in arcs})
    n = len(arcs)
    costs = [a.value for a in arcs] + [-s.balance_weight, -s.excess_weight] * len(partners)
    upper = [1.0] * n + [_INF] * (2 * len(partners))
    add_columns(h, costs, upper)
    h.changeObjectiveSense(highspy.ObjSense.kMaximize)
    rows = RowBuffer()
    _static_rows(rows, problem, arcs, partners, tau)
    rows.flush(h)
    pair_cols: dict[tuple[str, str], list[int]] = defaultdict(list)
    list_cols: dict[str, list[tuple[int, Arc]]] = defaultdict(list)
    for col, arc in enumerate(arcs):
        pair_cols[(arc.lst.owner, arc.promo.owner)].append(col)
        list_cols[arc.lst.id].append((col, arc))
    rounds = 0
    while True:
        h.run()
        rounds += 1
        y = list(h.getSolution().col_value[:n])
        _broken_rows(rows, problem.settings.pair_cap, pair_cols, list_cols, y)
        if rows.flush(h) == 0 or rounds >= _MAX_ROUNDS:
            break
    return Relaxation(float(h.getInfo().objective_function_value), y, rounds)


def _static_rows(
    rows: RowBuffer,
    problem: Problem,
    arcs: Sequence[Arc],
    partners: list[str],
    tau: dict[str, float],
) -> None:
    per_list: dict[str, dict[int, float]] = defaultdict(dict)
    per_promo: dict[str, dict[int, float]] = defaultdict(dict)
    flow: dict[str, dict[int, float]] = defaultdict(dict)
    for col, arc in enumerate(arcs):
        per_list[arc.lst.id][col] = 1.0
        per_promo[arc.promo.id][col] = 1.0
        flow[arc.lst.owner][col] = arc.value
        flow[arc.promo.owner][col] = -arc.value
    lists = {a.lst.id: a.lst for a in arcs}
    promos = {a.promo.id: a.promo for a in arcs}
    for lid, terms in sorted(per_list.items()):
        lst = lists[lid]
        rows.add(-_INF, min(lst.weekly_cap, lst.daily_slots * len(lst.days)), terms)
    for pid, terms in sorted(per_promo.items()):
        rows.add(-_INF, promos[pid].wanted, terms)
    first_t = len(arcs)
    for k, p in enumerate(partners):
        t, e = first_t + 2 * k, first_t + 2 * k + 1
        carried = problem.balances.get(p, 0.0)
        net = flow[p]
        rows.add(carried, _INF, {t: 1.0} | {c: -v for c, v in net.items()})  # t >= b
        rows.add(-carried, _INF, {t: 1.0} | net)  # t >= -b
        rows.add(-tau.get(p, 0.0), _INF, {e: 1.0, t: -1.0})  # e >= t - tau


def _broken_rows(
    rows: RowBuffer,
    pair_cap: int,
    pair_cols: dict[tuple[str, str], list[int]],
    list_cols: dict[str, list[tuple[int, Arc]]],
    y: list[float],
) -> None:
    """Add every pair-cap and interval row that ``y`` breaks."""
    for _, cols in sorted(pair_cols.items()):
        if len(cols) > pair_cap and sum(y[c] for c in cols) > pair_cap + _TOL:
            rows.add(-_INF, pair_cap, dict.fromkeys(cols, 1.0))
    for _, members in sorted(list_cols.items()):
        if sum(y[c] for c, _ in members) > 1 + _TOL:
            for slots, group in _interval_groups(members):
                _interval_cuts(rows, slots, group, y)


def _interval_groups(
    on_list: list[tuple[int, Arc]],
) -> list[tuple[int, list[tuple[int, Arc]]]]:
    """(slots a day, arcs) groups whose interval rows must hold: the whole list; and on a
    digest, one slot a day for the arcs sharing each niche."""
    lst = on_list[0][1].lst
    groups = [(lst.daily_slots, on_list)]
    if lst.daily_slots > 1:
        niches = sorted({n for _, arc in on_list for n in arc.promo.niches})
        groups += [(1, [(c, a) for c, a in on_list if n in a.promo.niches]) for n in niches]
    return groups


def _interval_cuts(
    rows: RowBuffer, slots: int, members: list[tuple[int, Arc]], y: list[float]
) -> None:
    order = {day: k for k, day in enumerate(sorted(members[0][1].lst.days))}
    spans = [(order[a.days[0]], order[a.days[-1]], c) for c, a in members]
    for first in sorted({f for f, _, _ in spans}):
        for last in sorted({e for _, e, _ in spans if e >= first}):
            inside = {c: 1.0 for f, e, c in spans if f >= first and e <= last}
            room = slots * (last - first + 1)
            if sum(y[c] for c in inside) > room + _TOL:
                rows.add(-_INF, room, inside)


def lp_bound(problem: Problem) -> float:
    """The LP relaxation's objective over every eligible arc: no plan can score above it."""
    arcs = eligible_arcs(problem)
    return relax(problem, arcs, tolerances(problem, arcs)).bound


def value_bound(problem: Problem) -> float:
    """V_max: the most expected value any plan could carry, balance ignored (LP relaxation)."""
    loose = replace(problem, settings=replace(problem.settings, balance_weight=0, excess_weight=0))
    arcs = eligible_arcs(loose)
    return relax(loose, arcs, tolerances(loose, arcs)).bound
