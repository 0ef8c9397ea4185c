"""Arc enumeration matches the rules one by one; pruning keeps what it promises."""

from __future__ import annotations

from collections import Counter

import pytest

from jvmail.scheduler.arcs import eligible_arcs, prune
from jvmail.scheduler.synth import synthetic_problem
from jvmail.scheduler.value import expected_value


def test_indexed_enumeration_equals_checking_every_pair() -> None:
    problem = synthetic_problem(40, 2)
    expected = []
    for lst in sorted(problem.lists, key=lambda x: x.id):
        for promo in sorted(problem.promotions, key=lambda x: x.id):
            days = tuple(d for d in sorted(lst.days) if promo.start <= d <= promo.end)
            value = expected_value(lst, promo, problem.niche_groups)
            allowed = lst.owner != promo.owner and lst.owner not in promo.exclude
            if allowed and days and value > 0 and promo.wanted > 0:
                expected.append((lst.id, promo.id, days, value))
    found = [(a.lst.id, a.promo.id, a.days, a.value) for a in eligible_arcs(problem)]
    assert [f[:3] for f in found] == [e[:3] for e in expected]
    assert [f[3] for f in found] == pytest.approx([e[3] for e in expected])


def test_pruning_keeps_enough_per_list_and_promotion_and_everything_asked() -> None:
    arcs = eligible_arcs(synthetic_problem(40, 2))
    keep = {0, len(arcs) - 1}
    kept = prune(arcs, 4, keep)
    assert keep <= set(kept)
    assert kept == sorted(set(kept))
    per_list = Counter(arcs[n].lst.id for n in kept)
    all_list = Counter(a.lst.id for a in arcs)
    assert all(per_list[lid] >= min(4, n) for lid, n in all_list.items())
    per_promo = Counter(arcs[n].promo.id for n in kept)
    all_promo = Counter(a.promo.id for a in arcs)
    assert all(per_promo[pid] >= min(4, n) for pid, n in all_promo.items())
    # Each list's kept arcs are its full-value ones first.
    for lid in all_list:
        best = max(a.value for a in arcs if a.lst.id == lid)
        full = sum(1 for a in arcs if a.lst.id == lid and a.value >= 0.99 * best)
        got = sum(1 for n in kept if arcs[n].lst.id == lid and arcs[n].value >= 0.99 * best)
        assert got >= min(4, full)
