"""Why a promotion got fewer mailings than it wanted: one reason from a closed vocabulary, a
sentence for people, and the counts behind it. Pure: a Problem and any Plan in, nothing else.

The lists that could carry one more mailing of promotion x are narrowed step by step, and the
first step that leaves none names the reason:

1. matching: lists sharing a niche, or a niche category, with x;
2. eligible: of those, the lists of other partners that x does not exclude, worth more than 0
   (an empty list is worth nothing). None after 1 or 2: ``no-eligible-list``;
3. in window: with a sendable day this week inside x's window, else ``window``;
4. free: not carrying x already (a promotion goes once per list), else ``lists-exhausted``;
5. with room: under their weekly cap, with a day in x's window that has a free slot (and, on a
   digest, no promotion of a shared niche that day), else ``capacity``;
6. under pair cap: whose owner makes fewer than ``pair_cap`` mailings for x's owner this week,
   else ``pair-cap``.

If lists remain after the last step, the plan left that room unused because one more mailing
for x's owner costs more balance penalty than it brings: ``balance``, reported with the owner's
balance after the week (given - received; negative means it owes the hub).
"""

from __future__ import annotations

import datetime as dt
import enum
from collections import Counter, defaultdict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace

from jvmail.scheduler.problem import Assignment, ListSpec, Plan, Problem, PromotionSpec
from jvmail.scheduler.value import expected_value, niche_match

__all__ = ["Reason", "Shortfall", "balances_after", "shortfalls"]


class Reason(enum.StrEnum):
    """Why a promotion could not get one more mailing this week."""

    NO_ELIGIBLE_LIST = "no-eligible-list"
    WINDOW = "window"
    LISTS_EXHAUSTED = "lists-exhausted"
    CAPACITY = "capacity"
    PAIR_CAP = "pair-cap"
    BALANCE = "balance"


@dataclass(frozen=True)
class Shortfall:
    """A promotion that got ``got`` < ``wanted`` mailings, and why (see the module docstring).

    The ``lists_*`` counts are the lists left after each step; ``owner_balance_after`` is the
    promotion owner's balance after the week and ``room_owner_balance_after`` the lowest one
    among the partners whose lists still had room (None when none had).
    """

    promotion: str
    owner: str
    got: int
    wanted: int
    reason: Reason
    why: str
    lists_matching: int
    lists_eligible: int
    lists_in_window: int
    lists_free: int
    lists_with_room: int
    lists_under_pair_cap: int
    owner_balance_after: float
    room_owner_balance_after: float | None


def balances_after(problem: Problem, plan: Plan) -> dict[str, float]:
    """Each partner's balance after the week: carried + given - received, in expected value."""
    lists = {lst.id: lst for lst in problem.lists}
    promos = {p.id: p for p in problem.promotions}
    after: dict[str, float] = defaultdict(float, problem.balances)
    for a in plan.assignments:
        after[lists[a.list].owner] += a.value
        after[promos[a.promotion].owner] -= a.value
    return dict(after)


def shortfalls(problem: Problem, plan: Plan) -> list[Shortfall]:
    """Every promotion of ``problem`` that ``plan`` gives fewer mailings than it wants, by id."""
    usage = _Usage.of(problem, plan)
    after = balances_after(problem, plan)
    found = []
    for promo in sorted(problem.promotions, key=lambda p: p.id):
        got = usage.per_promo[promo.id]
        if got < promo.wanted:
            found.append(_explain(problem, usage, after, promo, got))
    return found


@dataclass(frozen=True)
class _Usage:
    """What the plan already uses: per list, per (list, day), per promotion, per partner pair."""

    per_list: Counter[str]
    on_day: Mapping[tuple[str, dt.date], list[PromotionSpec]]
    per_promo: Counter[str]
    per_pair: Counter[tuple[str, str]]
    carried: set[tuple[str, str]]  # (list, promotion)

    @classmethod
    def of(cls, problem: Problem, plan: Plan) -> _Usage:
        lists = {lst.id: lst for lst in problem.lists}
        promos = {p.id: p for p in problem.promotions}
        on_day: dict[tuple[str, dt.date], list[PromotionSpec]] = defaultdict(list)
        known = [a for a in plan.assignments if a.list in lists and a.promotion in promos]
        for a in known:
            on_day[(a.list, a.day)].append(promos[a.promotion])
        return cls(
            per_list=Counter(a.list for a in known),
            on_day=on_day,
            per_promo=Counter(a.promotion for a in known),
            per_pair=Counter(_pair(a, lists, promos) for a in known),
            carried={(a.list, a.promotion) for a in known},
        )

    def has_room(self, lst: ListSpec, promo: PromotionSpec) -> bool:
        """``lst`` is under its weekly cap and has a free, clash-free slot in the window."""
        if self.per_list[lst.id] >= lst.weekly_cap:
            return False
        return any(
            promo.start <= day <= promo.end and self._slot_free(lst, day, promo) for day in lst.days
        )

    def _slot_free(self, lst: ListSpec, day: dt.date, promo: PromotionSpec) -> bool:
        today = self.on_day.get((lst.id, day), [])
        clash = any(set(promo.niches) & set(other.niches) for other in today)
        return len(today) < lst.daily_slots and not clash


def _pair(
    a: Assignment, lists: Mapping[str, ListSpec], promos: Mapping[str, PromotionSpec]
) -> tuple[str, str]:
    return lists[a.list].owner, promos[a.promotion].owner


def _explain(
    problem: Problem,
    usage: _Usage,
    after: Mapping[str, float],
    promo: PromotionSpec,
    got: int,
) -> Shortfall:
    groups = problem.niche_groups
    matching = [lst for lst in problem.lists if niche_match(lst.niches, promo.niches, groups)]
    eligible = [
        lst
        for lst in matching
        if lst.owner != promo.owner
        and lst.owner not in promo.exclude
        and expected_value(lst, promo, groups) > 0
    ]
    in_window = [lst for lst in eligible if any(promo.start <= d <= promo.end for d in lst.days)]
    free = [lst for lst in in_window if (lst.id, promo.id) not in usage.carried]
    with_room = [lst for lst in free if usage.has_room(lst, promo)]
    cap = problem.settings.pair_cap
    under_cap = [lst for lst in with_room if usage.per_pair[(lst.owner, promo.owner)] < cap]
    steps = [
        (matching, Reason.NO_ELIGIBLE_LIST),
        (eligible, Reason.NO_ELIGIBLE_LIST),
        (in_window, Reason.WINDOW),
        (free, Reason.LISTS_EXHAUSTED),
        (with_room, Reason.CAPACITY),
        (under_cap, Reason.PAIR_CAP),
    ]
    reason = next((r for kept, r in steps if not kept), Reason.BALANCE)
    short = Shortfall(
        promotion=promo.id,
        owner=promo.owner,
        got=got,
        wanted=promo.wanted,
        reason=reason,
        why="",
        lists_matching=len(matching),
        lists_eligible=len(eligible),
        lists_in_window=len(in_window),
        lists_free=len(free),
        lists_with_room=len(with_room),
        lists_under_pair_cap=len(under_cap),
        owner_balance_after=after.get(promo.owner, 0.0),
        room_owner_balance_after=min((after.get(x.owner, 0.0) for x in under_cap), default=None),
    )
    return replace(short, why=_SENTENCES[reason](short, promo, cap))


def _lists(n: int, kind: str = "eligible") -> str:
    return f"{n} {kind} list" if n == 1 else f"{n} {kind} lists"


def _no_eligible_list(s: Shortfall, _promo: PromotionSpec, _cap: int) -> str:
    if not s.lists_matching:
        return "no list shares a niche or a niche category with it"
    return (
        f"the {_lists(s.lists_matching, 'matching')} (sharing a niche or category) are "
        f"{s.owner}'s own, belong to excluded partners, or are empty"
    )


def _window(s: Shortfall, promo: PromotionSpec, _cap: int) -> str:
    return (
        f"none of the {_lists(s.lists_eligible)} can send on a day of this week inside its "
        f"window ({promo.start} to {promo.end})"
    )


def _lists_exhausted(s: Shortfall, _promo: PromotionSpec, _cap: int) -> str:
    return (
        f"each of the {_lists(s.lists_in_window)} that can send in its window already mails "
        "it this week (a promotion goes once per list)"
    )


def _capacity(s: Shortfall, _promo: PromotionSpec, _cap: int) -> str:
    return (
        f"the {_lists(s.lists_free)} left are full: other mailings use their weekly caps or "
        "every send slot inside its window"
    )


def _pair_cap(s: Shortfall, _promo: PromotionSpec, cap: int) -> str:
    mailings = "1 mailing" if cap == 1 else f"{cap} mailings"
    return (
        f"the {_lists(s.lists_with_room)} with room belong to partners that already make "
        f"{mailings} for {s.owner} this week (the pair cap)"
    )


def _balance(s: Shortfall, _promo: PromotionSpec, _cap: int) -> str:
    lead = f"{_lists(s.lists_under_pair_cap)} had room, but"
    after = f"{s.owner_balance_after:+,.1f} after the week"
    if s.owner_balance_after < 0:
        return f"{lead} one more mailing would push {s.owner} further into debt ({after})"
    least = s.room_owner_balance_after
    if least is not None and least > 0:
        return (
            f"{lead} their owners are already owed ({least:+,.1f} or more after the week; "
            f"{s.owner} is at {after})"
        )
    return f"{lead} one more mailing would cost more in balance than it brings ({s.owner}: {after})"


_SENTENCES: dict[Reason, Callable[[Shortfall, PromotionSpec, int], str]] = {
    Reason.NO_ELIGIBLE_LIST: _no_eligible_list,
    Reason.WINDOW: _window,
    Reason.LISTS_EXHAUSTED: _lists_exhausted,
    Reason.CAPACITY: _capacity,
    Reason.PAIR_CAP: _pair_cap,
    Reason.BALANCE: _balance,
}
