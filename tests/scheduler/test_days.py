"""Placing chosen pairs on days: earliest deadline first, digests never repeat a niche a day."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from jvmail.scheduler.days import place

D = [dt.date(2026, 11, 30) + dt.timedelta(days=n) for n in range(7)]


@dataclass(frozen=True)
class Pair:
    list_id: str
    promo_id: str
    niches: tuple[str, ...]
    days: tuple[dt.date, ...]
    slots: int = 1


def test_earliest_deadline_first_fits_what_fits() -> None:
    late = Pair("l", "late", ("a",), (D[1], D[2]))
    early = Pair("l", "early", ("b",), (D[1],))
    placed, dropped = place([late, early])
    assert sorted((p.promo_id, day) for p, day in placed) == [("early", D[1]), ("late", D[2])]
    assert dropped == []


def test_a_digest_spreads_one_niche_and_drops_what_cannot_fit() -> None:
    pairs = [
        Pair("d", "x", ("web",), (D[2],), slots=2),
        Pair("d", "y", ("web",), (D[2],), slots=2),
        Pair("d", "z", ("seo",), (D[2],), slots=2),
    ]
    placed, dropped = place(pairs)
    assert sorted(p.promo_id for p, _ in placed) == ["x", "z"]
    assert [p.promo_id for p in dropped] == ["y"]


def test_pinned_pairs_keep_their_day_and_preferred_days_are_kept_when_all_fit() -> None:
    fixed = Pair("l", "fixed", ("a",), (D[2],))
    rival = Pair("l", "aaa", ("b",), (D[2],))  # same deadline, sorts first by id
    placed, dropped = place([fixed, rival], pinned=[("l", "fixed")])
    assert [(p.promo_id, day) for p, day in placed] == [("fixed", D[2])]
    assert dropped == [rival]
    late = Pair("l", "late", ("a",), (D[1], D[2], D[3]))
    other = Pair("l", "other", ("b",), (D[1], D[2], D[3]))
    placed, _ = place([late, other], preferred={("l", "late"): D[3]})
    assert {p.promo_id: day for p, day in placed} == {"late": D[3], "other": D[1]}
    # A preferred day that would leave a pair out is given up for a full placement.
    tight = Pair("l", "tight", ("b",), (D[3],))
    placed, dropped = place([late, tight], preferred={("l", "late"): D[3]})
    assert dropped == []
    assert {p.promo_id: day for p, day in placed} == {"late": D[1], "tight": D[3]}
