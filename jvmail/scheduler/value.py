"""Expected value of mailing a promotion on a list, in the hub's value metric.

v = size x click rate x niche match x (1 - audience overlap with the promotion's owner).
Niche match is 1 for a shared niche, 1/2 for niches in the same category (``niche_groups``), and
0 otherwise: not eligible.
"""

from __future__ import annotations

from collections.abc import Mapping

from jvmail.scheduler.problem import ListSpec, PromotionSpec

__all__ = ["SAME_CATEGORY", "expected_value", "niche_match"]

SAME_CATEGORY = 0.5


def niche_match(
    list_niches: tuple[str, ...], promo_niches: tuple[str, ...], groups: Mapping[str, str]
) -> float:
    if set(list_niches) & set(promo_niches):
        return 1.0
    list_groups = {groups[n] for n in list_niches if n in groups}
    if list_groups & {groups[n] for n in promo_niches if n in groups}:
        return SAME_CATEGORY
    return 0.0


def expected_value(lst: ListSpec, promo: PromotionSpec, groups: Mapping[str, str]) -> float:
    """0.0 when the promotion is not eligible for the list by niche."""
    match = niche_match(lst.niches, promo.niches, groups)
    overlap = lst.overlap.get(promo.owner, 0.0)
    return lst.size * lst.click_rate * match * (1.0 - overlap)
