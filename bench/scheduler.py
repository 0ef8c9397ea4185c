"""Benchmark: plan generated hubs of 10 to 2,000 partners; compare with a greedy baseline and the
LP bound; then a rolling simulation of 12 weeks with noisy measured results.

For each hub size and seed it prints, for the scheduler and for the greedy "owed-most-first"
baseline (the floor: the simplest plan that does the same job, see jvmail/scheduler/greedy.py):
solve time, V, V / V_max, the gap of the objective to the LP bound as a share of V_max,
sum |b| / V, max |b| / V, the share of active partners balanced within 20%, the Gini of |b|
and the hard-rule violations found by the independent verifier.

V_max is bracketed: the LP relaxation of the value-only problem is an upper bound on it, and the
scheduler run with the balance weights at zero gives a plan that reaches a lower bound. V / V_max
divides by the upper one and the gap by the lower one, so both figures are on the safe side.

Usage:
    python bench/scheduler.py [--sizes 10,100,500,2000] [--seeds 1,2,3]
                              [--rolling 100,2000] [--weeks 12] [--no-bound] [--json]
Targets (issue), N = 2,000 on 2 cores: plan < 30 s, 0 violations, gap <= 10% of V_max,
sum |b| / V <= 0.07, >= 70% of active partners within 20%; over 12 rolling weeks, cumulative
sum |b| / cumulative value <= 5%.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace

from jvmail.scheduler import Plan, Problem, plan_figures, solve
from jvmail.scheduler.arcs import eligible_arcs
from jvmail.scheduler.greedy import owed_first
from jvmail.scheduler.relax import lp_bound, value_bound
from jvmail.scheduler.rolling import simulate
from jvmail.scheduler.synth import synthetic_problem

FIRST_WEEK = dt.date(2026, 11, 30)


@dataclass
class Row:
    partners: int
    seed: int
    method: str
    seconds: float
    value: float
    value_share: float | None  # V / V_max (LP upper bound)
    gap: float | None  # (LP bound - objective) / V_max (best value-only plan found)
    gap_lp: float | None  # the same over V_max's LP bound: the true gap lies between the two
    sum_abs: float
    max_abs: float
    balanced: float
    gini: float
    violations: int


def _timed(solver: Callable[[Problem], Plan], problem: Problem) -> tuple[Plan, float]:
    start = time.perf_counter()
    plan = solver(problem)
    return plan, time.perf_counter() - start


def _value_only(problem: Problem) -> Problem:
    return replace(problem, settings=replace(problem.settings, balance_weight=0, excess_weight=0))


def one_hub(partners: int, seed: int, bound: bool) -> tuple[list[Row], dict[str, float]]:
    problem = synthetic_problem(partners, seed, FIRST_WEEK)
    info: dict[str, float] = {
        "lists": len(problem.lists),
        "promotions": len(problem.promotions),
        "arcs": len(eligible_arcs(problem)),
    }
    v_up = v_low = lp = None
    if bound:
        start = time.perf_counter()
        v_up = value_bound(problem)
        lp = lp_bound(problem)
        info["bound_seconds"] = time.perf_counter() - start
        v_low = sum(a.value for a in solve(_value_only(problem)).assignments)
        info |= {"v_max_lp": v_up, "v_max_found": v_low, "lp_bound": lp}
    rows = []
    for method, solver in (("scheduler", solve), ("greedy", owed_first)):
        plan, seconds = _timed(solver, problem)
        f = plan_figures(problem, plan, value_max=v_low, bound=lp)
        rows.append(
            Row(
                partners=partners,
                seed=seed,
                method=method,
                seconds=seconds,
                value=f.value,
                value_share=f.value / v_up if v_up else None,
                gap=f.gap,
                gap_lp=(lp - f.objective) / v_up if lp is not None and v_up else None,
                sum_abs=f.sum_abs_balance_over_value,
                max_abs=f.max_abs_balance_over_value,
                balanced=f.balanced_share,
                gini=f.gini_abs_balance,
                violations=f.violations,
            )
        )
    return rows, info


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def print_rows(rows: list[Row]) -> None:
    print(
        "    N seed method       time           V V/Vmax    gap gap/LP  sum|b|/V max|b|/V"
        "  bal20  gini viol"
    )
    for r in rows:
        print(
            f"{r.partners:5d} {r.seed:3d}  {r.method:9s} {r.seconds:7.2f}s {r.value:11,.0f}"
            f" {_pct(r.value_share):>6} {_pct(r.gap):>6} {_pct(r.gap_lp):>6}"
            f"  {r.sum_abs:7.3f}  {r.max_abs:7.3f}"
            f"  {_pct(r.balanced):>5} {r.gini:5.2f}  {r.violations}"
        )


def rolling(partners: int, weeks: int, seed: int) -> dict[str, list[float]]:
    def hub(week: dt.date) -> Problem:
        return synthetic_problem(partners, seed, week)

    runs = {
        "carry-forward": (solve, True),
        "no carry-forward": (solve, False),
        "greedy owed-first": (owed_first, True),
    }
    out: dict[str, list[float]] = {}
    for name, (solver, carry) in runs.items():
        start = time.perf_counter()
        result = simulate(hub, solver, weeks=weeks, first_week=FIRST_WEEK, carry=carry, seed=seed)
        out[name] = [w.ratio for w in result]
        spent = time.perf_counter() - start
        ratios = " ".join(f"{w.ratio:.3f}" for w in result)
        print(f"  {name:18s} ({spent:5.0f} s): {ratios}", flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="10,100,500,2000")
    parser.add_argument("--seeds", default="1,2,3")
    parser.add_argument("--rolling", default="100,2000", help="hub sizes to simulate ('' = none)")
    parser.add_argument("--weeks", type=int, default=12)
    parser.add_argument(
        "--no-bound", action="store_true", help="skip the LP bounds (slow at 2,000)"
    )
    parser.add_argument("--json", action="store_true", help="also print every figure as JSON")
    args = parser.parse_args()
    sizes = [int(x) for x in args.sizes.split(",") if x]
    seeds = [int(x) for x in args.seeds.split(",") if x]
    print(
        f"machine: {os.cpu_count()} cores, {platform.processor() or platform.machine()},"
        f" Python {platform.python_version()}; {dt.date.today()}"
    )
    rows: list[Row] = []
    infos: dict[str, dict[str, float]] = {}
    for n in sizes:
        for seed in seeds:
            got, info = one_hub(n, seed, bound=not args.no_bound)
            infos[f"{n}/{seed}"] = info
            extra = f", LP bounds {info['bound_seconds']:.0f} s" if "bound_seconds" in info else ""
            print(
                f"\nN={n} seed={seed}: {info['lists']:.0f} lists, {info['promotions']:.0f}"
                f" promotions, {info['arcs']:,.0f} eligible pairs{extra}",
                flush=True,
            )
            print_rows(got)
            rows += got
    print("\nmeans over seeds (seed 0 = mean)")
    print_rows(
        [
            _mean([r for r in rows if r.partners == n and r.method == method])
            for n in sizes
            for method in ("scheduler", "greedy")
        ]
    )
    series: dict[str, dict[str, list[float]]] = {}
    for n in [int(x) for x in args.rolling.split(",") if x]:
        print(f"\nrolling {args.weeks} weeks, N={n}, seed 1: cumulative sum|b| / cumulative value")
        series[str(n)] = rolling(n, args.weeks, seed=1)
    if args.json:
        json.dump(
            {"rows": [asdict(r) for r in rows], "hubs": infos, "rolling": series},
            sys.stdout,
            indent=1,
        )
        print()


def _mean(rows: list[Row]) -> Row:
    def avg(xs: list[float | None]) -> float | None:
        real = [x for x in xs if x is not None]
        return sum(real) / len(real) if real and len(real) == len(xs) else None

    first = rows[0]
    return Row(
        partners=first.partners,
        seed=0,
        method=first.method,
        seconds=sum(r.seconds for r in rows) / len(rows),
        value=sum(r.value for r in rows) / len(rows),
        value_share=avg([r.value_share for r in rows]),
        gap=avg([r.gap for r in rows]),
        gap_lp=avg([r.gap_lp for r in rows]),
        sum_abs=sum(r.sum_abs for r in rows) / len(rows),
        max_abs=sum(r.max_abs for r in rows) / len(rows),
        balanced=sum(r.balanced for r in rows) / len(rows),
        gini=sum(r.gini for r in rows) / len(rows),
        violations=max(r.violations for r in rows),
    )


if __name__ == "__main__":
    main()
