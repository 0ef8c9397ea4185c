"""The verifier catches each hard rule on a small hand-built hub; the value model and JSON."""

from __future__ import annotations

import datetime as dt

import pytest

from jvmail.scheduler import (
    Assignment,
    ListSpec,
    Plan,
    Problem,
    PromotionSpec,
    Settings,
    expected_value,
    niche_match,
    verify,
)

MON = dt.date(2026, 11, 30)
TUE, WED, THU = (MON + dt.timedelta(days=n) for n in (1, 2, 3))


def _list(lid: str, owner: str, **kw: object) -> ListSpec:
    base: dict[str, object] = {
        "size": 1000,
        "click_rate": 0.02,
        "niches": ("web",),
        "weekly_cap": 2,
        "daily_slots": 1,
        "days": (TUE, WED, THU),
        "send_hour": 9,
    }
    return ListSpec(id=lid, owner=owner, **(base | kw))  # type: ignore[arg-type]


def _promo(pid: str, owner: str, **kw: object) -> PromotionSpec:
    base: dict[str, object] = {
        "niches": ("web",),
        "start": MON,
        "end": MON + dt.timedelta(6),
        "wanted": 3,
    }
    return PromotionSpec(id=pid, owner=owner, **(base | kw))  # type: ignore[arg-type]


PROBLEM = Problem(
    week_start=MON,
    lists=(
        _list("a-news", "a"),
        _list("b-news", "b"),
        _list("b-digest", "b", daily_slots=2, niches=("web", "seo")),
        _list("c-news", "c", niches=("fitness",)),
    ),
    promotions=(
        _promo("a-offer", "a"),
        _promo("a-seo", "a", niches=("seo",)),
        _promo("b-offer", "b", exclude=("c",)),
        _promo("c-offer", "c", niches=("web", "fitness"), start=WED, end=THU, wanted=1),
    ),
    niche_groups={"seo": "marketing", "web": "marketing"},
    settings=Settings(pair_cap=2),
)


def _rules(*assignments: tuple[dt.date, str, str]) -> list[str]:
    plan = Plan(tuple(Assignment(day, lid, pid, 1.0, 9) for day, lid, pid in assignments))
    return [v.rule for v in verify(PROBLEM, plan)]


def test_a_valid_plan_has_no_violation() -> None:
    assert (
        _rules((TUE, "b-news", "a-offer"), (WED, "a-news", "b-offer"), (WED, "b-digest", "c-offer"))
        == []
    )


@pytest.mark.parametrize(
    ("assignments", "rule"),
    [
        ([(TUE, "a-news", "a-offer")], "own-promotion"),
        ([(TUE, "c-news", "b-offer")], "excluded-sender"),
        ([(TUE, "b-news", "c-offer")], "window"),
        ([(MON, "b-news", "a-offer")], "list-day"),
        ([(MON + dt.timedelta(7), "b-news", "a-offer")], "outside-week"),
        ([(TUE, "b-news", "a-offer"), (WED, "b-news", "a-offer")], "repeat-on-list"),
        ([(TUE, "b-news", "a-offer"), (TUE, "b-news", "a-seo")], "list-daily-slots"),
        ([(WED, "b-digest", "a-offer"), (WED, "b-digest", "c-offer")], "same-niche-same-day"),
        ([(WED, "c-news", "a-offer")], "niche"),
        (
            [(TUE, "b-news", "a-offer"), (WED, "b-news", "a-seo"), (THU, "b-digest", "a-offer")],
            "pair-cap",
        ),
        ([(TUE, "nope", "a-offer")], "unknown"),
    ],
)
def test_each_rule(assignments: list[tuple[dt.date, str, str]], rule: str) -> None:
    assert rule in _rules(*assignments)


def test_weekly_cap_wanted_and_same_niche_on_a_digest() -> None:
    problem = Problem(
        week_start=MON,
        lists=(_list("d", "d", weekly_cap=1, daily_slots=2),),
        promotions=(_promo("x", "x", wanted=1), _promo("y", "y")),
    )
    plan = Plan((Assignment(WED, "d", "x", 1.0, 9), Assignment(WED, "d", "y", 1.0, 9)))
    rules = [v.rule for v in verify(problem, plan)]
    assert rules == ["list-weekly-cap", "same-niche-same-day"]
    plan = Plan((Assignment(WED, "d", "x", 1.0, 9),))
    assert verify(problem, plan) == []


def test_niche_match_and_expected_value() -> None:
    groups = {"webflow": "web", "wordpress": "web"}
    assert niche_match(("webflow",), ("webflow", "seo"), groups) == 1.0
    assert niche_match(("webflow",), ("wordpress",), groups) == 0.5
    assert niche_match(("fitness",), ("wordpress",), groups) == 0.0
    lst = _list("l", "a", size=2000, click_rate=0.03, niches=("webflow",), overlap={"b": 0.25})
    promo = _promo("p", "b", niches=("wordpress",))
    assert expected_value(lst, promo, groups) == pytest.approx(2000 * 0.03 * 0.5 * 0.75)


def test_problem_json_round_trip() -> None:
    text = PROBLEM.to_json()
    again = Problem.from_json(text)
    assert again == PROBLEM
    assert again.to_json() == text
    with pytest.raises(ValueError, match="version"):
        Problem.from_json('{"version": 99}')
