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
