"""Shortfall explanations: each reason on a small hand-built hub, with the counts behind it."""

from __future__ import annotations

import datetime as dt

from jvmail.scheduler import Assignment, ListSpec, Plan, Problem, PromotionSpec, Settings, solve
from jvmail.scheduler.explain import Reason, Shortfall, balances_after, shortfalls

MON = dt.date(2026, 11, 30)
WEEK = tuple(MON + dt.timedelta(days=n) for n in range(7))
TUE, WED = WEEK[1], WEEK[2]
NO_PLAN = Plan(())


def _list(
    lid: str,
    owner: str,
    niches: tuple[str, ...] = ("web",),
    *,
    cap: int = 1,
    slots: int = 1,
    days: tuple[dt.date, ...] = WEEK[1:4],
    size: int = 1000,
) -> ListSpec:
    return ListSpec(lid, owner, size, 0.02, niches, cap, slots, days, 9)


def _promo(
    pid: str,
    owner: str,
    niches: tuple[str, ...] = ("web",),
    *,
    wanted: int = 1,
    start: dt.date = MON,
    end: dt.date = WEEK[-1],
    exclude: tuple[str, ...] = (),
) -> PromotionSpec:
    return PromotionSpec(pid, owner, niches, start, end, wanted, exclude)


def _only(problem: Problem, plan: Plan = NO_PLAN) -> Shortfall:
    [short] = [s for s in shortfalls(problem, plan) if s.promotion == "a-p"]
    return short


def _counts(s: Shortfall) -> tuple[int, ...]:
    return (
        s.lists_matching,
        s.lists_eligible,
        s.lists_in_window,
        s.lists_free,
        s.lists_with_room,
        s.lists_under_pair_cap,
    )


def test_no_list_shares_a_niche() -> None:
    short = _only(Problem(MON, (_list("b-l", "b", ("books",)),), (_promo("a-p", "a"),)))
    assert (short.reason, short.got, short.wanted) == (Reason.NO_ELIGIBLE_LIST, 0, 1)
    assert _counts(short) == (0, 0, 0, 0, 0, 0)
    assert short.why == "no list shares a niche or a niche category with it"


def test_matching_lists_that_are_own_excluded_or_empty_are_not_eligible() -> None:
    lists = (
        _list("a-l", "a", ("wordpress",)),  # same category, but a's own list
        _list("c-l", "c"),  # c may not mail it
        _list("d-l", "d", size=0),  # worth nothing
    )
    promo = _promo("a-p", "a", ("webflow", "web"), exclude=("c",))
    groups = {"webflow": "cms", "wordpress": "cms"}
    short = _only(Problem(MON, lists, (promo,), niche_groups=groups))
    assert short.reason is Reason.NO_ELIGIBLE_LIST
    assert _counts(short)[:2] == (3, 0)
    assert "the 3 matching lists (sharing a niche or category) are a's own" in short.why


def test_no_eligible_list_sends_inside_the_window() -> None:
    promo = _promo("a-p", "a", start=WEEK[4], end=WEEK[6])  # Fri to Sun; b sends Tue to Thu
    short = _only(Problem(MON, (_list("b-l", "b"),), (promo,)))
    assert short.reason is Reason.WINDOW
    assert _counts(short) == (1, 1, 0, 0, 0, 0)
    assert "(2026-12-04 to 2026-12-06)" in short.why


def test_every_eligible_list_already_carries_it() -> None:
    problem = Problem(MON, (_list("b-l", "b", cap=2),), (_promo("a-p", "a", wanted=2),))
    short = _only(problem, Plan((Assignment(TUE, "b-l", "a-p", 20.0, 9),)))
    assert (short.reason, short.got) == (Reason.LISTS_EXHAUSTED, 1)
    assert _counts(short) == (1, 1, 1, 0, 0, 0)


def test_capacity_weekly_cap_day_slots_and_digest_clashes() -> None:
    promos = (_promo("a-p", "a"), _promo("c-p", "c"))
    taken = Plan((Assignment(TUE, "b-l", "c-p", 20.0, 9),))
    weekly = Problem(MON, (_list("b-l", "b"),), promos)
    assert _only(weekly, taken).reason is Reason.CAPACITY
    one_day = Problem(MON, (_list("b-l", "b", cap=3, days=(TUE,)),), promos)
    short = _only(one_day, taken)
    assert short.reason is Reason.CAPACITY
    assert _counts(short) == (1, 1, 1, 1, 0, 0)
    digest = Problem(MON, (_list("b-l", "b", cap=3, slots=2, days=(TUE,)),), promos)
    assert _only(digest, taken).reason is Reason.CAPACITY  # two web promotions never share a day
    other_niche = (_promo("a-p", "a", ("web", "seo")), _promo("c-p", "c", ("books",)))
    lists = (_list("b-l", "b", ("web", "books"), cap=3, slots=2, days=(TUE,)),)
    assert _only(Problem(MON, lists, other_niche), taken).lists_with_room == 1


def test_pair_cap_reached_by_the_lists_owner() -> None:
    lists = (_list("b-1", "b"), _list("b-2", "b"))
    promos = (_promo("a-p", "a"), _promo("a-q", "a"))
    problem = Problem(MON, lists, promos, settings=Settings(pair_cap=1))
    short = _only(problem, Plan((Assignment(TUE, "b-1", "a-q", 20.0, 9),)))
    assert short.reason is Reason.PAIR_CAP
    assert _counts(short) == (2, 2, 2, 2, 1, 0)
    assert "already make 1 mailing for a this week (the pair cap)" in short.why


def test_balance_when_the_owner_is_in_debt() -> None:
    # a owes 50; one more mailing worth 20 for it would cost more balance penalty than it brings.
    problem = Problem(
        MON, (_list("b-l", "b"),), (_promo("a-p", "a"),), balances={"a": -50.0, "b": 50.0}
    )
    plan = solve(problem)
    assert plan.assignments == ()
    short = _only(problem, plan)
    assert short.reason is Reason.BALANCE
    assert _counts(short) == (1, 1, 1, 1, 1, 1)
    assert short.owner_balance_after == -50.0
    assert short.why == (
        "1 eligible list had room, but one more mailing would push a further into debt "
        "(-50.0 after the week)"
    )


def test_balance_when_the_lists_owners_are_already_owed() -> None:
    problem = Problem(
        MON,
        (_list("b-l", "b"),),
        (_promo("a-p", "a"),),
        balances={"a": 10.0, "b": 30.0, "c": -40.0},
    )
    short = _only(problem)
    assert short.reason is Reason.BALANCE
    assert short.room_owner_balance_after == 30.0
    assert "their owners are already owed (+30.0 or more after the week; a is at +10.0" in short.why


def test_promotions_that_got_what_they_wanted_are_not_listed() -> None:
    problem = Problem(MON, (_list("b-l", "b"), _list("a-l", "a")), (_promo("a-p", "a"),))
    plan = Plan((Assignment(WED, "b-l", "a-p", 20.0, 9),))
    assert shortfalls(problem, plan) == []
    assert balances_after(problem, plan) == {"a": -20.0, "b": 20.0}


def test_balance_when_a_one_way_mailing_costs_more_than_it_brings() -> None:
    problem = Problem(MON, (_list("b-l", "b"),), (_promo("a-p", "a"),))
    plan = solve(problem)
    assert plan.assignments == ()  # 20 of value would leave a at -20 and b at +20
    short = _only(problem, plan)
    assert short.reason is Reason.BALANCE
    assert "would cost more in balance than it brings (a: +0.0 after the week)" in short.why
