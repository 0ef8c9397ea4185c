"""Eligible (list, promotion) pairs: the only mailings any solver may choose.

An arc exists where no hard rule forbids the pair outright: the list's owner is not the
promotion's owner nor excluded by it, the niches match (exactly or by category), the promotion
wants mailings, and at least one of the list's sendable days falls in the promotion's window.
Promotions are indexed by niche and category, so a hub of thousands of partners is enumerated
in about a second rather than by testing every list against every promotion.
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from dataclasses import dataclass

from jvmail.scheduler.problem import ListSpec, Problem, PromotionSpec
from jvmail.scheduler.value import expected_value

__all__ = ["Arc", "eligible_arcs"]


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
    """Every eligible arc, ordered by (list id, promotion id)."""
    groups = problem.niche_groups
    promos = sorted((p for p in problem.promotions if p.wanted > 0), key=lambda p: p.id)
    by_key: dict[str, list[int]] = defaultdict(list)
    for n, promo in enumerate(promos):
        for key in _keys(promo.niches, groups):
            by_key[key].append(n)
    found: list[Arc] = []
    for lst in sorted(problem.lists, key=lambda x: x.id):
        days = tuple(sorted(lst.days))
        candidates = {n for key in _keys(lst.niches, groups) for n in by_key.get(key, ())}
        for n in sorted(candidates):
            promo = promos[n]
            if lst.owner == promo.owner or lst.owner in promo.exclude:
                continue
            open_days = tuple(d for d in days if promo.start <= d <= promo.end)
            value = expected_value(lst, promo, groups) if open_days else 0.0
            if value > 0:
                found.append(Arc(lst, promo, open_days, value))
    return found


def _keys(niches: tuple[str, ...], groups: dict[str, str]) -> set[str]:
    """Index keys: each niche, and each niche's category (prefixed so the two never collide)."""
    return {f"n:{n}" for n in niches} | {f"c:{groups[n]}" for n in niches if n in groups}
