"""Solve a week: choose pairs by simulated annealing, finish small hubs exactly, place days.

1. Arcs: every eligible (list, promotion) pair, plus the week's fixed mailings (sent or
   approved: locked in, on their own day). On a large hub each list and each promotion keeps
   only its most promising arcs (:func:`~jvmail.scheduler.arcs.prune`).
2. Simulated annealing on the :class:`~jvmail.scheduler.search.Board` chooses pairs, for a
   number of moves proportional to the number of arcs. Where that is small, several searches
   from scratch (different seeds) are run and the best one is kept: one search's result
   varies by several percent of the objective with its seed.
3. A small hub is then solved exactly: the full model in HiGHS, started from the annealed plan.
   On a larger hub a large-neighbourhood search follows instead: the exact model re-solves a
   fixed number of small windows of partners, from the most imbalanced ones, each at its root
   node, and keeps every improvement (:func:`~jvmail.scheduler.exact.improve`). It finds the
   coordinated changes of a dozen mailings among a few partners that single moves cannot.
4. Days are placed list by list; on a re-plan each kept mailing keeps its day where it can.

Everything is deterministic: sorted inputs, a seeded random generator, work budgets counted in
moves and branch-and-bound nodes, never in seconds. The same problem gives the same plan.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from jvmail.scheduler.arcs import Arc, eligible_arcs, pinned_arc, prune
from jvmail.scheduler.balance import tolerances
from jvmail.scheduler.days import place
from jvmail.scheduler.exact import Window, improve, solve_window
from jvmail.scheduler.problem import Assignment, Plan, Problem
from jvmail.scheduler.search import Board

__all__ = ["Effort", "board_plan", "solve"]


@dataclass(frozen=True)
class Effort:
    """How much work a solve may do. Counted in moves and nodes, so plans are reproducible."""

    moves_per_arc: float = 60.0  # annealing moves per searched arc
    min_moves: int = 200_000  # ... and at least this many where no exact model follows
    temperature: float = 1.5  # starting temperature (relative to the moved arc's value)
    restart_budget: int = 4_800_000  # moves for independent searches from scratch ...
    max_restarts: int = 4  # ... at most this many; the best one is kept
    prune_above: int = 20_000  # prune arcs when a hub has more eligible arcs than this
    per_node: int = 15  # arcs each list and each promotion keeps when pruning
    exact_up_to: int = 1_500  # solve the full model exactly up to this many arcs
    max_nodes: int = 200  # branch-and-bound nodes for the exact model
    windows: int = 40  # where it is not solved exactly: windows the neighbourhood search solves
    window_arcs: int = 380  # ... each grown to about this many free arcs
    seed: int = 0


def solve(problem: Problem, effort: Effort | None = None) -> Plan:
    """The week's plan for ``problem``; the same problem always gives the same plan."""
    work = effort or Effort()
    board = _board(problem, work)
    exact = len(board.arcs) <= work.exact_up_to
    moves = int(work.moves_per_arc * len(board.arcs))
    moves = moves if exact else max(work.min_moves, moves)
    restarts = max(1, min(work.max_restarts, work.restart_budget // max(1, moves)))
    for run in range(restarts):  # a small hub affords several searches; the best one wins
        other = board if run == 0 else _board(problem, work)
        other.anneal(random.Random(work.seed + run), moves, work.temperature)
        if other.score() > board.score() + 1e-9:
            board = other
    if exact:
        solve_window(board, Window(board, range(len(board.partners))), work.max_nodes)
    else:
        improve(board, work.windows, work.window_arcs)
    return board_plan(problem, board)


def _board(problem: Problem, work: Effort) -> Board:
    eligible = eligible_arcs(problem)
    tau = tolerances(problem, eligible)
    fixed = {(a.list, a.promotion): a for a in problem.fixed}
    arcs: list[Arc] = [a for a in eligible if (a.lst.id, a.promo.id) not in fixed]
    pins = [arc for a in sorted(fixed.values()) if (arc := pinned_arc(problem, a)) is not None]
    arcs += pins
    kept = {(a.list, a.promotion) for a in problem.previous}
    kept_or_fixed = kept | set(fixed)
    special = {n for n, a in enumerate(arcs) if (a.lst.id, a.promo.id) in kept_or_fixed}
    if len(eligible) > work.prune_above:
        arcs = [arcs[n] for n in prune(arcs, work.per_node, special)]
    stability = problem.settings.stability
    return Board(
        problem,
        arcs,
        tau,
        locked=[(a.lst.id, a.promo.id) in fixed for a in arcs],
        bonus=[stability * a.value if (a.lst.id, a.promo.id) in kept else 0.0 for a in arcs],
    )


def board_plan(problem: Problem, board: Board) -> Plan:
    """The plan of the board's chosen arcs, with days placed (and kept where they were)."""
    chosen = [board.arcs[a] for a in board.chosen_arcs()]
    previous = {(a.list, a.promotion): a.day for a in problem.previous}
    hours = {(a.list, a.promotion): a.hour for a in problem.fixed}
    placed, _ = place(chosen, pinned=hours, preferred=previous)
    return Plan(
        tuple(
            sorted(
                Assignment(
                    day,
                    a.lst.id,
                    a.promo.id,
                    a.value,
                    hours.get((a.lst.id, a.promo.id), a.lst.send_hour),
                )
                for a, day in placed
            )
        )
    )
