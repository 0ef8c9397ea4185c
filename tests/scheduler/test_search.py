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


@pytest.mark.parametrize("seed", [5, 6])
def test_the_fast_move_prices_and_the_best_insertion_agree_with_the_general_ones(
    seed: int,
) -> None:
    """On a small hub where partners often meet on both sides of a move, the written-out
    pricers agree with :meth:`Board.gain`, and the best insertion is the best of every way to
    bring an arc in that :meth:`Board.allowed` accepts: alone, evicting an arc of its list or
    promotion (or of its pair, when the pair is full), or one of its list and one of its
    promotion (when the promotion is full)."""
    problem = synthetic_problem(12, seed)
    board = _board(problem)
    board.anneal(random.Random(seed), 30_000, 1.5)
    checked = 0
    for a in range(len(board.arcs)):
        if board.chosen[a]:
            assert board.gain((a,), -1) == pytest.approx(board.gain((a,), -1))
            continue
        assert board.gain((), a) == pytest.approx(board.gain((), a))
        i, j = board.a_list[a], board.a_promo[a]
        singles = board.on_list[i] + board.on_promo[j]
        pairs = [(b, c) for b in board.on_list[i] for c in board.on_promo[j]]
        for b in singles:
            assert board._replace_gain(b, a) == pytest.approx(board.gain((b,), a), abs=1e-9)
        for (b, c), d in zip(pairs, board._double_gains(a, pairs), strict=True):
            assert d == pytest.approx(board.gain((b, c), a), abs=1e-9)
        pair = board.on_pair.get(board.a_owners[a], [])
        near = set(singles) | set(pair if len(pair) >= board.pair_cap else ())
        promo_full = len(board.on_promo[j]) >= board.promo_want[j]
        ways = [(), *((b,) for b in near), *(pairs if promo_full else [])]
        prices = [board.gain(w, a) for w in ways if board.allowed(w, a)]
        found = board.best_insertion(a)
        if found is None:
            assert prices == []
        else:
            assert found[0] == pytest.approx(max(prices), abs=1e-9)
            assert board.allowed(found[1], a)
        checked += len(ways)
    assert checked > 1_000
