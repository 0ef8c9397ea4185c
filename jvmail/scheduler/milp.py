"""The exact model, solved by HiGHS: for small hubs, and as the reference for larger methods.

Decision y[l, x, d] = 1 when list l's owner mails promotion x on day d. Maximize
    sum v_lx y  -  balance_weight * sum_p |b_p|  -  excess_weight * sum_p max(0, |b_p| - tau_p)
with b_p = carried_p + given_p - received_p and tau_p = tolerance * p's weekly trading volume.
|b_p| and the excess are linearized with t_p >= +-b_p and e_p >= t_p - tau_p. Solved on one
thread with a fixed seed, so the same problem gives the same plan.
"""

from __future__ import annotations

import datetime as dt
import os
import sys
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import highspy

from jvmail.scheduler.days import place
from jvmail.scheduler.problem import Assignment, ListSpec, Plan, Problem, PromotionSpec
from jvmail.scheduler.value import expected_value

__all__ = ["Arc", "arcs", "lp_bound", "objective", "solve_exact"]

_INF = highspy.kHighsInf
_MAX_NODES = 500


@dataclass(frozen=True)
class Arc:
    """An eligible (list, promotion) pair, with the days both allow and its expected value."""

    lst: ListSpec
    promo: PromotionSpec
    days: tuple[dt.date, ...]
    value: float

    @property
    def list_id(self) -> str:
        return self.lst.id

    @property
    def promo_id(self) -> str:
        return self.promo.id

    @property
    def niches(self) -> tuple[str, ...]:
        return self.promo.niches

    @property
    def slots(self) -> int:
        return self.lst.daily_slots


def arcs(problem: Problem) -> list[Arc]:
    """Every (list, promotion) pair that no hard rule forbids outright, in a fixed order."""
    found: list[Arc] = []
    for lst in sorted(problem.lists, key=lambda x: x.id):
        for promo in sorted(problem.promotions, key=lambda x: x.id):
            if lst.owner == promo.owner or lst.owner in promo.exclude:
                continue
            days = tuple(d for d in sorted(lst.days) if promo.start <= d <= promo.end)
            value = expected_value(lst, promo, problem.niche_groups)
            if days and value > 0 and promo.wanted > 0:
                found.append(Arc(lst, promo, days, value))
    return found


@contextmanager
def _stdout_to_stderr() -> Iterator[None]:
    """HiGHS prints a banner on fd 1 when constructed, before any option can silence it; send
    it to stderr so `--json` output on stdout stays parseable."""
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        os.dup2(2, 1)
        yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)


class _Model:
    def __init__(self) -> None:
        with _stdout_to_stderr():
            self.h = highspy.Highs()  # type: ignore[no-untyped-call]
        self.h.setOptionValue("output_flag", False)
        self.h.setOptionValue("threads", 1)
        self.h.setOptionValue("random_seed", 0)
        self.h.setOptionValue("mip_rel_gap", 1e-4)
        # A node budget, not a clock, ends long searches: with one thread it is deterministic.
        self.h.setOptionValue("mip_max_nodes", _MAX_NODES)
        self.columns = 0

    def column(self, cost: float, upper: float, integer: bool) -> int:
        self.h.addVar(0.0, upper)
        self.h.changeColCost(self.columns, cost)
        if integer:
            self.h.changeColIntegrality(self.columns, highspy.HighsVarType.kInteger)
        self.columns += 1
        return self.columns - 1

    def row(self, lower: float, upper: float, terms: dict[int, float]) -> None:
        if terms:
            idx = sorted(terms)
            self.h.addRow(lower, upper, len(idx), idx, [terms[i] for i in idx])


def solve_exact(problem: Problem, time_limit_s: float = 60.0) -> Plan:
    """The optimal plan (within HiGHS's 1e-6 relative gap) of ``problem``.

    The model chooses (list, promotion) pairs; :func:`~jvmail.scheduler.days.place` then gives
    each a day. ``time_limit_s`` is a safety net: a plan cut short by it may differ between runs.
    """
    model, candidates = _build(problem, integer=True)
    model.h.setOptionValue("time_limit", time_limit_s)
    model.h.run()
    values = model.h.getSolution().col_value
    chosen = [arc for i, arc in enumerate(candidates) if values[i] > 0.5]
    placed, _ = place(chosen)
    assignments = (
        Assignment(day, a.lst.id, a.promo.id, a.value, a.lst.send_hour) for a, day in placed
    )
    return Plan(tuple(sorted(assignments)))


def lp_bound(problem: Problem) -> float:
    """The LP relaxation's objective: no plan can score above it."""
    model, _ = _build(problem, integer=False)
    model.h.run()
    return float(model.h.getInfo().objective_function_value)


def objective(problem: Problem, plan: Plan) -> float:
    """The objective the model maximizes, evaluated for ``plan`` (comparable with lp_bound)."""
    s = problem.settings
    lists = {lst.id: lst for lst in problem.lists}
    promos = {p.id: p for p in problem.promotions}
    net: dict[str, float] = defaultdict(float, problem.balances)
    for a in plan.assignments:
        net[lists[a.list].owner] += a.value
        net[promos[a.promotion].owner] -= a.value
    volume = _volumes(arcs(problem))
    penalty = sum(
        s.balance_weight * abs(b)
        + s.excess_weight * max(0.0, abs(b) - s.tolerance * volume.get(p, 0.0))
        for p, b in net.items()
    )
    return sum(a.value for a in plan.assignments) - penalty


def _build(problem: Problem, *, integer: bool) -> tuple[_Model, list[Arc]]:
    """Column i is arc i's y (so solution values index like ``arcs``); then the balance
    columns."""
    model = _Model()
    candidates = arcs(problem)
    for arc in candidates:
        model.column(arc.value, 1.0, integer=integer)
    _capacity_rows(model, problem, candidates)
    _balance_rows(model, problem, candidates)
    model.h.changeObjectiveSense(highspy.ObjSense.kMaximize)
    return model, candidates


def _capacity_rows(model: _Model, problem: Problem, candidates: list[Arc]) -> None:
    per_list: dict[str, dict[int, float]] = defaultdict(dict)
    per_promo: dict[str, dict[int, float]] = defaultdict(dict)
    per_pair: dict[tuple[str, str], dict[int, float]] = defaultdict(dict)
    for i, arc in enumerate(candidates):
        per_list[arc.lst.id][i] = 1.0
        per_promo[arc.promo.id][i] = 1.0
        per_pair[(arc.lst.owner, arc.promo.owner)][i] = 1.0
    lists = {lst.id: lst for lst in problem.lists}
    promos = {p.id: p for p in problem.promotions}
    for lid, terms in sorted(per_list.items()):
        model.row(-_INF, lists[lid].weekly_cap, terms)
        _interval_rows(model, lists[lid], [(i, candidates[i]) for i in sorted(terms)])
    for pid, terms in sorted(per_promo.items()):
        model.row(-_INF, promos[pid].wanted, terms)
    for _, terms in sorted(per_pair.items()):
        model.row(-_INF, problem.settings.pair_cap, terms)


def _interval_rows(model: _Model, lst: ListSpec, on_list: list[tuple[int, Arc]]) -> None:
    """Pairs whose days all fall in a run of the list's days fit in that run's slots (Hall's
    condition; sufficient for one-slot lists). On a digest the same holds, one slot a day, for
    the pairs sharing each niche."""
    order = {day: n for n, day in enumerate(sorted(lst.days))}
    groups: list[tuple[int, list[tuple[int, Arc]]]] = [(lst.daily_slots, on_list)]
    if lst.daily_slots > 1:
        niches = sorted({n for _, arc in on_list for n in arc.promo.niches})
        groups += [(1, [(i, a) for i, a in on_list if niche in a.promo.niches]) for niche in niches]
    for slots, members in groups:
        spans = [(order[a.days[0]], order[a.days[-1]], i) for i, a in members]
        for first in sorted({s for s, _, _ in spans}):
            for last in sorted({e for _, e, _ in spans if e >= first}):
                inside = {i: 1.0 for s, e, i in spans if s >= first and e <= last}
                if len(inside) > slots * (last - first + 1):
                    model.row(-_INF, slots * (last - first + 1), inside)


def _balance_rows(model: _Model, problem: Problem, candidates: list[Arc]) -> None:
    s = problem.settings
    flow: dict[str, dict[int, float]] = defaultdict(dict)  # partner -> col -> +given / -received
    for i, arc in enumerate(candidates):
        flow[arc.lst.owner][i] = arc.value
        flow[arc.promo.owner][i] = -arc.value
    volume = _volumes(candidates)
    partners = sorted(set(flow) | set(problem.balances))
    for p in partners:
        carried = problem.balances.get(p, 0.0)
        t = model.column(-s.balance_weight, _INF, integer=False)
        e = model.column(-s.excess_weight, _INF, integer=False)
        net = flow.get(p, {})
        # t >= carried + net  and  t >= -(carried + net)
        model.row(carried, _INF, {t: 1.0, **{c: -v for c, v in net.items()}})
        model.row(-carried, _INF, {t: 1.0, **net})
        # e >= t - tau
        model.row(-s.tolerance * volume.get(p, 0.0), _INF, {e: 1.0, t: -1.0})


def _volumes(candidates: list[Arc]) -> dict[str, float]:
    """What each partner could trade in a week: the larger of what its lists could give and
    what its promotions could receive, each at their best eligible values."""
    best_on_list: dict[str, float] = defaultdict(float)
    best_for_promo: dict[str, float] = defaultdict(float)
    for arc in candidates:
        best_on_list[arc.lst.id] = max(best_on_list[arc.lst.id], arc.value)
        best_for_promo[arc.promo.id] = max(best_for_promo[arc.promo.id], arc.value)
    give: dict[str, float] = defaultdict(float)
    take: dict[str, float] = defaultdict(float)
    seen_lists: dict[str, ListSpec] = {arc.lst.id: arc.lst for arc in candidates}
    seen_promos: dict[str, PromotionSpec] = {arc.promo.id: arc.promo for arc in candidates}
    for lid, lst in seen_lists.items():
        give[lst.owner] += lst.weekly_cap * best_on_list[lid]
    for pid, promo in seen_promos.items():
        take[promo.owner] += promo.wanted * best_for_promo[pid]
    return {p: max(give[p], take[p]) for p in set(give) | set(take)}
