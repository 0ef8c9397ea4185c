"""An independent checker of a plan's hard rules. It shares no code with any solver.

Every solver's output goes through :func:`verify` in the tests, and every plan reports its
violation count (which must be 0).
"""

from __future__ import annotations

import datetime as dt
from collections import Counter
from dataclasses import dataclass

from jvmail.scheduler.problem import Assignment, ListSpec, Plan, Problem, PromotionSpec
from jvmail.scheduler.value import niche_match

__all__ = ["Violation", "verify"]


@dataclass(frozen=True, order=True)
class Violation:
    rule: str
    detail: str


def verify(problem: Problem, plan: Plan) -> list[Violation]:
    """Every hard rule ``plan`` breaks, sorted; empty when the plan is valid."""
    lists = {lst.id: lst for lst in problem.lists}
    promos = {p.id: p for p in problem.promotions}
    found: list[Violation] = []
    known = [a for a in plan.assignments if a.list in lists and a.promotion in promos]
    for a in plan.assignments:
        if a not in known:
            found.append(Violation("unknown", f"{a.list} / {a.promotion} not in the problem"))
    # Fixed mailings (sent or approved) are facts: they must be in the plan as they were, and
    # the per-mailing rules are not re-judged for them (the config may have changed since).
    fixed = {(a.day, a.list, a.promotion, a.hour) for a in problem.fixed}
    planned = {(a.day, a.list, a.promotion, a.hour) for a in plan.assignments}
    found += [
        Violation("fixed-changed", f"{pid} on {lid} on {day} at {hour}:00 is missing")
        for day, lid, pid, hour in sorted(fixed - planned)
    ]
    for a in known:
        if (a.day, a.list, a.promotion, a.hour) in fixed:
            continue
        lst, promo = lists[a.list], promos[a.promotion]
        where = f"{promo.id} on {lst.id} on {a.day}"
        checks = [
            ("own-promotion", lst.owner == promo.owner),
            ("excluded-sender", lst.owner in promo.exclude),
            ("niche", niche_match(lst.niches, promo.niches, problem.niche_groups) == 0),
            ("window", not promo.start <= a.day <= promo.end),
            ("outside-week", a.day not in problem.week),
            ("list-day", a.day not in lst.days),
            ("send-hour", a.hour != lst.send_hour),
        ]
        found += [Violation(rule, where) for rule, broken in checks if broken]
    found += _counts(problem, known, lists, promos)
    return sorted(found)


def _counts(
    problem: Problem,
    known: list[Assignment],
    lists: dict[str, ListSpec],
    promos: dict[str, PromotionSpec],
) -> list[Violation]:
    found: list[Violation] = []
    per_list = Counter(a.list for a in known)
    per_list_day = Counter((a.list, a.day) for a in known)
    per_promo = Counter(a.promotion for a in known)
    per_pair = Counter((lists[a.list].owner, promos[a.promotion].owner) for a in known)
    per_list_promo = Counter((a.list, a.promotion) for a in known)
    found += [
        Violation("list-weekly-cap", f"{lid}: {n} > {lists[lid].weekly_cap}")
        for lid, n in per_list.items()
        if n > lists[lid].weekly_cap
    ]
    found += [
        Violation("list-daily-slots", f"{lid} on {day}: {n} > {lists[lid].daily_slots}")
        for (lid, day), n in per_list_day.items()
        if n > lists[lid].daily_slots
    ]
    found += [
        Violation("promotion-wanted", f"{pid}: {n} > {promos[pid].wanted}")
        for pid, n in per_promo.items()
        if n > promos[pid].wanted
    ]
    found += [
        Violation("pair-cap", f"{s} for {o}: {n} > {problem.settings.pair_cap}")
        for (s, o), n in per_pair.items()
        if n > problem.settings.pair_cap
    ]
    found += [
        Violation("repeat-on-list", f"{pid} on {lid} {n} times")
        for (lid, pid), n in per_list_promo.items()
        if n > 1
    ]
    by_list_day: dict[tuple[str, dt.date], list[str]] = {}
    for a in known:
        by_list_day.setdefault((a.list, a.day), []).append(a.promotion)
    for (lid, day), pids in by_list_day.items():
        niches = [n for pid in pids for n in set(promos[pid].niches)]
        shared = sorted(n for n, c in Counter(niches).items() if c > 1)
        if shared:
            found.append(Violation("same-niche-same-day", f"{lid} on {day}: {', '.join(shared)}"))
    return found
