"""The local-search board: its move prices are exact, its rule checks agree with the verifier."""

from __future__ import annotations

import random

import pytest

from jvmail.scheduler import Plan, verify
from jvmail.scheduler.arcs import eligible_arcs
from jvmail.scheduler.balance import objective, tolerances
from jvmail.scheduler.days import place
from jvmail.scheduler.problem import Assignment, Problem
from jvmail.scheduler.search import Board
from jvmail.scheduler.synth import synthetic_problem


def _board(problem: Problem) -> Board:
    arcs = eligible_arcs(problem)
    return Board(problem, arcs, tolerances(problem, arcs))


def _plan(board: Board) -> Plan:
    placed, dropped = place(board.arcs[a] for a in board.chosen_arcs())
    assert dropped == []
    return Plan(
        tuple(
            sorted(
                Assignment(day, a.lst.id, a.promo.id, a.value, a.lst.send_hour) for a, day in placed
            )
        )
    )


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_move_prices_match_the_score_and_the_rules_match_the_verifier(seed: int) -> None:
    problem = synthetic_problem(12, seed)
    board = _board(problem)
    rng = random.Random(seed)
    for _ in range(400):
        a = rng.randrange(len(board.arcs))
        before = board.score()
        if board.chosen[a]:
            price = board.gain((a,), -1)
            board.toggle(a)
            assert board.score() - before == pytest.approx(price, abs=1e-6)
            continue
        found = board.best_insertion(a)
        if found is None:
            continue
        price, evicted = found
        board.swap(evicted, a)
        assert board.score() - before == pytest.approx(price, abs=1e-6)
    plan = _plan(board)
    assert verify(problem, plan) == []
    assert board.score() == pytest.approx(objective(problem, plan), abs=1e-6)


def test_annealing_keeps_every_rule_and_beats_the_empty_plan() -> None:
    problem = synthetic_problem(25, 4)
    board = _board(problem)
    board.anneal(random.Random(0), 60_000, 1.5)
    plan = _plan(board)
    assert verify(problem, plan) == []
    assert objective(problem, plan) > objective(problem, Plan(()))
    assert board.score() == pytest.approx(objective(problem, plan), abs=1e-6)
