"""Deterministic synthetic hubs for tests and benchmarks: realistic spreads, seeded.

List sizes are lognormal between 500 and 500,000; human click rates log-uniform from 0.3% to
10%; each partner has 1-3 lists and 1-5 promotions; about one list in seven is a digest; lists
have blackouts, promotions partial windows and the odd do-not-pair; some lists share part of
their audience with another partner.
"""

from __future__ import annotations

import datetime as dt
import math
import random

from jvmail.scheduler.problem import ListSpec, Problem, PromotionSpec, Settings

__all__ = ["synthetic_problem"]

_WEEKDAYS = 7


def synthetic_problem(
    partners: int, seed: int, week_start: dt.date = dt.date(2026, 11, 30)
) -> Problem:
    """A hub of ``partners`` partners; the same (partners, seed) always gives the same problem."""
    rng = random.Random(f"jvmail-synth:{partners}:{seed}")
    categories = max(2, partners // 25)
    niches_per_category = 4
    groups = {f"n{c}-{k}": f"c{c}" for c in range(categories) for k in range(niches_per_category)}
    week = [week_start + dt.timedelta(days=n) for n in range(_WEEKDAYS)]
    lists: list[ListSpec] = []
    promotions: list[PromotionSpec] = []
    ids = [f"p{n:05d}" for n in range(partners)]
    for pid in ids:
        home = rng.randrange(categories)
        for k in range(rng.randint(1, 3)):
            lists.append(
                _list(
                    rng,
                    lid=f"{pid}-l{k}",
                    owner=pid,
                    home=home,
                    categories=categories,
                    week=week,
                    ids=ids,
                )
            )
        for k in range(rng.randint(1, 5)):
            promotions.append(
                _promotion(
                    rng,
                    xid=f"{pid}-x{k}",
                    owner=pid,
                    home=home,
                    categories=categories,
                    week=week,
                    ids=ids,
                )
            )
    return Problem(
        week_start=week_start,
        lists=tuple(lists),
        promotions=tuple(promotions),
        balances={},
        niche_groups=groups,
        settings=Settings(),
    )


def _niches(rng: random.Random, home: int, categories: int, count: int) -> tuple[str, ...]:
    found: set[str] = set()
    while len(found) < count:
        category = home if rng.random() < 0.75 else rng.randrange(categories)
        found.add(f"n{category}-{rng.randrange(4)}")
    return tuple(sorted(found))


def _list(
    rng: random.Random,
    *,
    lid: str,
    owner: str,
    home: int,
    categories: int,
    week: list[dt.date],
    ids: list[str],
) -> ListSpec:
    size = int(min(500_000, max(500, rng.lognormvariate(math.log(8_000), 1.4))))
    rate = math.exp(rng.uniform(math.log(0.003), math.log(0.10)))
    days = sorted(rng.sample(range(_WEEKDAYS), rng.randint(2, 5)))
    if rng.random() < 0.2 and len(days) > 1:
        days.remove(rng.choice(days))  # a blackout date
    overlap = {}
    if rng.random() < 0.3:
        other = rng.choice(ids)
        if other != owner:
            overlap[other] = round(rng.uniform(0.05, 0.3), 3)
    return ListSpec(
        id=lid,
        owner=owner,
        size=size,
        click_rate=round(rate, 5),
        niches=_niches(rng, home, categories, rng.randint(1, 3)),
        weekly_cap=rng.randint(1, 3),
        daily_slots=2 if rng.random() < 1 / 7 else 1,
        days=tuple(week[d] for d in days),
        send_hour=rng.choice((7, 8, 9, 10, 12, 17)),
        overlap=overlap,
    )


def _promotion(
    rng: random.Random,
    *,
    xid: str,
    owner: str,
    home: int,
    categories: int,
    week: list[dt.date],
    ids: list[str],
) -> PromotionSpec:
    start = rng.choice(week[:4]) if rng.random() < 0.3 else week[0] - dt.timedelta(days=7)
    end = rng.choice(week[3:]) if rng.random() < 0.3 else week[-1] + dt.timedelta(days=14)
    exclude: tuple[str, ...] = ()
    if rng.random() < 0.1:
        other = rng.choice(ids)
        exclude = (other,) if other != owner else ()
    return PromotionSpec(
        id=xid,
        owner=owner,
        niches=_niches(rng, home, categories, rng.randint(1, 2)),
        start=start,
        end=end,
        wanted=rng.randint(1, 6),
        exclude=exclude,
    )
