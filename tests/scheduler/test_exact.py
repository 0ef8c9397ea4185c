"""The neighbourhood search after annealing: it only ever improves the plan, keeps every rule,
and gives the same plan on every run."""

from __future__ import annotations

import random

from jvmail.scheduler import verify
from jvmail.scheduler.balance import objective
from jvmail.scheduler.exact import improve
from jvmail.scheduler.solver import Effort, _board, board_plan
from jvmail.scheduler.synth import synthetic_problem


def test_windows_only_improve_keep_every_rule_and_are_deterministic() -> None:
    problem = synthetic_problem(80, seed=3)
    work = Effort(prune_above=1_000)
    plans = []
    for _ in range(2):
        board = _board(problem, work)
        board.anneal(random.Random(0), 5_000, work.temperature)  # short: leaves room to gain
        before = board.score()
        gain = improve(board, windows=8, window_arcs=120)
        assert gain > 0
        assert abs(board.score() - (before + gain)) < 1e-6
        plan = board_plan(problem, board)
        assert verify(problem, plan) == []
        assert abs(objective(problem, plan) - board.score()) < 1e-6
        plans.append(plan)
    assert plans[0] == plans[1]


def test_solving_the_next_window_ahead_changes_nothing() -> None:
    """The window solved on a second thread, on the plan before the current window's changes,
    is used only when its model is exactly the one rebuilt afterwards: the same gain and the
    same plan, bit for bit, as one window at a time."""
    problem = synthetic_problem(80, seed=4)
    work = Effort(prune_above=1_000)
    results = []
    for ahead in (True, False, True):
        board = _board(problem, work)
        board.anneal(random.Random(1), 5_000, work.temperature)
        gain = improve(board, windows=12, window_arcs=100, ahead=ahead)
        results.append((gain, bytes(board.chosen), list(board.balance)))
    assert results[0][0] > 0
    assert results[0] == results[1] == results[2]
