"""Give each chosen (list, promotion) pair a day, list by list.

Balance depends only on which pairs are chosen, so the solvers pick pairs and this step places
them. Each pair's feasible days are a run of its list's sendable days (the promotion window is an
interval), so earliest-deadline-first fills a one-slot list whenever the pairs fit at all (the
solvers check exactly this rule before they choose a pair). On a digest, two promotions sharing a
niche may not share a day; a pair that cannot be placed is dropped (the plan stays valid) and
returned.

Pinned pairs (mailings already sent or approved, whose one day is their only day) go first on
their day. When re-planning, pairs may come with a preferred day (the day of the earlier plan):
those days are kept when every pair still fits with them; otherwise placement falls back to
earliest-deadline-first for the whole list.
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from typing import Protocol, TypeVar

__all__ = ["Placeable", "place"]


class Placeable(Protocol):
    """What placement needs of a chosen pair."""

    @property
    def list_id(self) -> str: ...

    @property
    def promo_id(self) -> str: ...

    @property
    def niches(self) -> tuple[str, ...]: ...

    @property
    def days(self) -> tuple[dt.date, ...]: ...

    @property
    def slots(self) -> int: ...


T = TypeVar("T", bound=Placeable)


def place(
    chosen: Iterable[T],
    *,
    pinned: Iterable[tuple[str, str]] = (),
    preferred: Mapping[tuple[str, str], dt.date] | None = None,
) -> tuple[list[tuple[T, dt.date]], list[T]]:
    """(placed pairs with their day, pairs that could not be placed).

    ``pinned`` and ``preferred`` name pairs by (list id, promotion id).
    """
    first = set(pinned)
    wished = preferred or {}
    by_list: dict[str, list[T]] = defaultdict(list)
    for pair in chosen:
        by_list[pair.list_id].append(pair)
    placed: list[tuple[T, dt.date]] = []
    dropped: list[T] = []
    for list_id in sorted(by_list):
        pairs = by_list[list_id]
        done, left = _place_list(pairs, first, wished)
        if left and wished:
            done, left = _place_list(pairs, first, {})
        placed += done
        dropped += left
    return placed, dropped


def _place_list(
    pairs: list[T], pinned: set[tuple[str, str]], wished: Mapping[tuple[str, str], dt.date]
) -> tuple[list[tuple[T, dt.date]], list[T]]:
    def key(p: T) -> tuple[str, str]:
        return (p.list_id, p.promo_id)

    slots = pairs[0].slots
    booked: dict[dt.date, list[T]] = defaultdict(list)
    waiting = sorted(pairs, key=lambda p: (p.days[-1], key(p) not in pinned, p.days[0], p.promo_id))
    for pair in list(waiting):
        day = wished.get(key(pair))
        if day is not None and day in pair.days and _room(booked[day], pair, slots):
            booked[day].append(pair)
            waiting.remove(pair)
    for day in sorted({d for p in pairs for d in p.days}):
        for pair in list(waiting):
            if day in pair.days and _room(booked[day], pair, slots):
                booked[day].append(pair)
                waiting.remove(pair)
    placed = [(p, day) for day in sorted(booked) for p in booked[day]]
    return placed, waiting


def _room(today: Sequence[Placeable], pair: Placeable, slots: int) -> bool:
    return len(today) < slots and not any(set(pair.niches) & set(o.niches) for o in today)
