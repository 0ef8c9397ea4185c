"""Eligible (list, promotion) pairs: the only mailings any solver may choose.

An arc exists where no hard rule forbids the pair outright: the list's owner is not the
promotion's owner nor excluded by it, the niches match (exactly or by category), the promotion
wants mailings, and at least one of the list's sendable days falls in the promotion's window.
Promotions are indexed by niche and category, so a hub of thousands of partners is enumerated
in about a second rather than by testing every list against every promotion.
"""

from __future__ import annotations

import datetime as dt
import math
from bisect import bisect_left, bisect_right
from collections import defaultdict
from collections.abc import Sequence, Set
from dataclasses import dataclass

from jvmail.scheduler.problem import Assignment, ListSpec, Problem, PromotionSpec
from jvmail.scheduler.value import SAME_CATEGORY

__all__ = ["Arc", "eligible_arcs", "pinned_arc", "prune"]


@dataclass(frozen=True)
class Arc:
    """An eligible pair, with the days both allow (sorted) and its expected value."""

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


def eligible_arcs(problem: Problem) -> list[Arc]:
    """Every eligible arc, ordered by (list id, promotion id). Its value is
    :func:`~jvmail.scheduler.value.expected_value`, computed here from the index: a promotion
    found under one of the list's niches matches fully, one found only by category matches at
    :data:`~jvmail.scheduler.value.SAME_CATEGORY`."""
    groups = problem.niche_groups
    promos = sorted((p for p in problem.promotions if p.wanted > 0), key=lambda p: p.id)
    by_key: dict[str, list[int]] = defaultdict(list)
    for n, promo in enumerate(promos):
        for key in _keys(promo.niches, groups):
            by_key[key].append(n)
    found: list[Arc] = []
    for lst in sorted(problem.lists, key=lambda x: x.id):
        days = tuple(sorted(lst.days))
        match: dict[int, float] = {}
        for key in _keys(lst.niches, groups):
            weight = 1.0 if key.startswith("n:") else SAME_CATEGORY
            for n in by_key.get(key, ()):
                match[n] = max(match.get(n, 0.0), weight)
        reach = lst.size * lst.click_rate
        for n in sorted(match):
            promo = promos[n]
            if lst.owner == promo.owner or lst.owner in promo.exclude:
                continue
            open_days = days[bisect_left(days, promo.start) : bisect_right(days, promo.end)]
            value = reach * match[n] * (1.0 - lst.overlap.get(promo.owner, 0.0))
            if open_days and value > 0:
                found.append(Arc(lst, promo, open_days, value))
    return found


def _keys(niches: tuple[str, ...], groups: dict[str, str]) -> set[str]:
    """Index keys: each niche, and each niche's category (prefixed so the two never collide)."""
    return {f"n:{n}" for n in niches} | {f"c:{groups[n]}" for n in niches if n in groups}


def pinned_arc(problem: Problem, a: Assignment) -> Arc | None:
    """The arc of a fixed mailing (sent or approved): its own day only, its recorded value.
    None when its list or promotion is no longer in the problem."""
    lst = next((x for x in problem.lists if x.id == a.list), None)
    promo = next((x for x in problem.promotions if x.id == a.promotion), None)
    if lst is None or promo is None:
        return None
    return Arc(lst, promo, (a.day,), a.value)


def prune(arcs: Sequence[Arc], per_node: int, keep: Set[int] = frozenset()) -> list[int]:
    """Positions of the arcs worth searching on a large hub, in order.

    Each list keeps its ``per_node`` most promising arcs and so does each promotion, plus the
    positions in ``keep``. Promising means full value first, then a trading partner of similar
    size: balance needs partners whose lists are worth about as much as one's own, so a list of
    500,000 is paired with its peers and a list of 800 with its own. Size is what a partner's
    lists can give in a week at their best values.
    """
    best: dict[str, float] = defaultdict(float)
    caps: dict[str, tuple[str, int]] = {}
    for arc in arcs:
        best[arc.lst.id] = max(best[arc.lst.id], arc.value)
        caps[arc.lst.id] = (arc.lst.owner, arc.lst.weekly_cap)
    give: dict[str, float] = defaultdict(float)
    for lid, (owner, cap) in caps.items():
        give[owner] += cap * best[lid]
    size = {p: math.log(max(g, 1e-9)) for p, g in give.items()}
    by_list: dict[str, list[int]] = defaultdict(list)
    by_promo: dict[str, list[int]] = defaultdict(list)
    for n, arc in enumerate(arcs):
        by_list[arc.lst.id].append(n)
        by_promo[arc.promo.id].append(n)
    chosen = set(keep)
    for lid, found in by_list.items():
        here = size.get(arcs[found[0]].lst.owner, 0.0)
        found.sort(
            key=lambda n: (
                arcs[n].value < 0.99 * best[lid],
                abs(here - size.get(arcs[n].promo.owner, 0.0)),
                arcs[n].promo.id,
            )
        )
        chosen.update(found[:per_node])
    for found in by_promo.values():
        there = size.get(arcs[found[0]].promo.owner, 0.0)
        found.sort(
            key=lambda n: (
                abs(math.log(max(arcs[n].value * arcs[n].lst.weekly_cap, 1e-9)) - there),
                arcs[n].lst.id,
            )
        )
        chosen.update(found[:per_node])
    return sorted(chosen)
