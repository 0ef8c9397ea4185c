"""Give each chosen (list, promotion) pair a day, list by list.

Balance depends only on which pairs are chosen, so the model picks pairs and this step places
them. Each pair's feasible days are a run of its list's sendable days (the promotion window is an
interval), so earliest-deadline-first fills a one-slot list whenever the model's interval rows
say the pairs fit. On a digest, two promotions sharing a niche may not share a day; a pair that
cannot be placed is dropped (the plan stays valid) and counted.
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from collections.abc import Iterable, Sequence
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


def place(chosen: Iterable[T]) -> tuple[list[tuple[T, dt.date]], list[T]]:
    """(placed pairs with their day, pairs that could not be placed)."""
    by_list: dict[str, list[T]] = defaultdict(list)
    for pair in chosen:
        by_list[pair.list_id].append(pair)
    placed: list[tuple[T, dt.date]] = []
    dropped: list[T] = []
    for list_id in sorted(by_list):
        done, left = _place_list(by_list[list_id])
        placed += done
        dropped += left
    return placed, dropped


def _place_list(pairs: list[T]) -> tuple[list[tuple[T, dt.date]], list[T]]:
    waiting = sorted(pairs, key=lambda p: (p.days[-1], p.days[0], p.promo_id))
    slots = pairs[0].slots
    placed: list[tuple[T, dt.date]] = []
    for day in sorted({d for p in pairs for d in p.days}):
        today: list[T] = []
        for pair in waiting:
            if len(today) == slots:
                break
            if day in pair.days and not _clash(pair, today):
                today.append(pair)
        placed += [(p, day) for p in today]
        waiting = [p for p in waiting if p not in today]
    return placed, waiting


def _clash(pair: Placeable, today: Sequence[Placeable]) -> bool:
    return any(set(pair.niches) & set(other.niches) for other in today)
