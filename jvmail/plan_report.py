"""A week's plan for people and machines: the mailings, balances per partner, the fairness
figures, and why promotions got fewer mailings than they wanted.

Rendering only: `jvmail plan` and `jvmail demo` decide and save the plan, then hand it here.
Values are expected value in the hub's value metric; balances are given - received (positive:
the hub owes the partner).
"""

from __future__ import annotations

import datetime as dt
from collections import Counter
from dataclasses import asdict
from typing import Any

from rich.console import Console

from jvmail.console import print_table
from jvmail.scheduler import Figures, Plan, Problem
from jvmail.scheduler.explain import Shortfall

__all__ = ["plan_json", "print_plan", "send_time"]


def send_time(day: dt.date, hour: int) -> str:
    """The local send time as people read it: ``Tue 01 Dec 09:00``."""
    return f"{dt.datetime.combine(day, dt.time(hour)):%a %d %b %H:%M}"


def _mailing_rows(problem: Problem, plan: Plan) -> list[dict[str, Any]]:
    lists = {lst.id: lst for lst in problem.lists}
    owners = {p.id: p.owner for p in problem.promotions}
    return [
        asdict(a)
        | {
            "sender": lists[a.list].owner,
            "owner": owners[a.promotion],
            "local_time": dt.datetime.combine(a.day, dt.time(a.hour)),
            "send_time": send_time(a.day, a.hour),
        }
        for a in plan.assignments
    ]


def plan_json(
    problem: Problem, plan: Plan, figures: Figures, shorts: list[Shortfall], *, saved: bool
) -> dict[str, Any]:
    """Everything the human report shows, for machines; ``shortfalls`` carry reason codes."""
    mailings = [
        row | {"day": row["day"].isoformat(), "local_time": row["local_time"].isoformat()}
        for row in _mailing_rows(problem, plan)
    ]
    return asdict(figures) | {
        "week_start": problem.week_start.isoformat(),
        "saved": saved,
        "mailings": mailings,
        "shortfalls": [asdict(s) | {"reason": s.reason.value} for s in shorts],
    }


def print_plan(
    console: Console,
    problem: Problem,
    plan: Plan,
    figures: Figures,
    shorts: list[Shortfall],
    *,
    explain: bool,
) -> None:
    """The mailings, balances per partner, figures and shortfalls as tables.

    With ``explain`` each mailing also shows its sender, the promotion's owner and the local
    send time, and every shortfall is a row with its reason; without it one line sums them up.
    """
    by_time = sorted(_mailing_rows(problem, plan), key=lambda r: (r["local_time"], r["list"]))
    rows = [r | {"day": r["day"].strftime("%a %d %b")} for r in by_time]
    cols = ["send_time", "sender", "list", "promotion", "owner", "value"]
    print_table(
        console,
        f"Mailings, week of {problem.week_start}",
        rows,
        cols if explain else ["day", "list", "promotion", "value"],
    )
    _print_partners(console, figures)
    _print_figures(console, figures)
    if explain:
        _print_shortfalls(console, shorts)
    elif shorts:
        by_reason = Counter(s.reason.value for s in shorts)
        reasons = ", ".join(f"{n} {reason}" for reason, n in sorted(by_reason.items()))
        console.print(
            f"{len(shorts)} promotions got fewer mailings than they wanted ({reasons}); "
            "--explain says why.",
            soft_wrap=True,
        )


def _print_partners(console: Console, figures: Figures) -> None:
    rows = [asdict(w) for w in figures.partners]
    title = "Balances per partner (expected value: balance before, given, received, after)"
    print_table(console, title, rows, ["partner", "before", "given", "received", "after"])


def _print_figures(console: Console, figures: Figures) -> None:
    v_max = figures.value_max
    ratio = f"{figures.value / v_max:.0%}" if v_max else "-"
    gap = "-" if figures.gap is None else f"{figures.gap:.1%}"
    took = "" if figures.solve_seconds is None else f" | solved in {figures.solve_seconds:.1f} s"
    console.print(
        f"value {figures.value:,.1f} ({ratio} of the best ignoring balance) | "
        f"gap to LP bound {gap} of V_max | "
        f"sum |balance| / value {figures.sum_abs_balance_over_value:.2f} | "
        f"max |balance| / value {figures.max_abs_balance_over_value:.2f} | "
        f"balanced within 20%: {figures.balanced_share:.0%} | "
        f"Gini of |balance| {figures.gini_abs_balance:.2f} | "
        f"violations {figures.violations}{took}",
        soft_wrap=True,
    )


def _print_shortfalls(console: Console, shorts: list[Shortfall]) -> None:
    if not shorts:
        console.print("Every promotion got the mailings it wanted.")
        return
    rows = [asdict(s) | {"reason": f"{s.reason.value}: {s.why}"} for s in shorts]
    cols = ["promotion", "got", "wanted", "reason"]
    print_table(console, "Why promotions got fewer mailings", rows, cols, wrap=["reason"])
