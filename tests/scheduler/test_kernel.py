"""The compiled annealing loop leaves exactly the board, the generator and the plan the Python
loop leaves; without a compiler the Python loop runs."""

from __future__ import annotations

import dataclasses
import os
import random
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from jvmail.scheduler import Plan, Problem, kernel, verify
from jvmail.scheduler.arcs import eligible_arcs
from jvmail.scheduler.balance import tolerances
from jvmail.scheduler.search import Board
from jvmail.scheduler.solver import Effort, _board, board_plan, solve
from jvmail.scheduler.synth import synthetic_problem

HAS_COMPILER = shutil.which(shlex.split(os.environ.get("CC") or "cc")[0]) is not None


@pytest.fixture(autouse=True)
def _fresh_kernel() -> Iterator[None]:
    """Each test finds the kernel as its environment has it, and leaves no trace for others."""
    kernel.load.cache_clear()
    yield
    kernel.load.cache_clear()


@pytest.fixture
def compiled(monkeypatch: pytest.MonkeyPatch) -> None:
    """The compiled loop must be there where a compiler is; the tests comparing it skip where
    there is none (the fallback test below covers that case)."""
    monkeypatch.delenv(kernel.ENV, raising=False)
    if not HAS_COMPILER:
        pytest.skip("no C compiler")
    assert kernel.available()


def _state(board: Board, rng: random.Random) -> tuple[Any, ...]:
    """Everything the annealing loop changes, in a form where == means identical: floats
    compared by their exact representation, lists and dict keys in their order."""
    return (
        bytes(board.chosen),
        [list(arcs) for arcs in board.on_list],
        [list(arcs) for arcs in board.on_promo],
        [(pair, list(arcs)) for pair, arcs in board.on_pair.items()],
        [x.hex() for x in board.balance],
        [x.hex() for x in board.pen_now],
        board.value.hex(),
        board.kept.hex(),
        board.score().hex(),
        rng.getstate(),
    )


def _board_of(problem: Problem) -> Board:
    arcs = eligible_arcs(problem)
    return Board(problem, arcs, tolerances(problem, arcs))


def _annealed(
    make: Any, monkeypatch: pytest.MonkeyPatch, mode: str, runs: list[tuple[int, int, float]]
) -> tuple[Any, ...]:
    """A fresh board from ``make()`` annealed by each (seed, rounds, temperature) of ``runs``,
    one after the other, by the loop ``mode`` selects; the state after each run."""
    monkeypatch.setenv(kernel.ENV, mode)
    board = make()
    states = []
    for seed, rounds, temperature in runs:
        rng = random.Random(seed)
        board.anneal(rng, rounds, temperature)
        states.append(_state(board, rng))
    return tuple(states)


def _same_both_ways(make: Any, monkeypatch: pytest.MonkeyPatch, runs: Any) -> tuple[Any, ...]:
    python = _annealed(make, monkeypatch, "python", runs)
    compiled = _annealed(make, monkeypatch, "", runs)
    assert compiled == python
    return python


def _rounds(problem: Problem) -> int:
    return min(20 * len(eligible_arcs(problem)), 120_000)


@pytest.mark.usefixtures("compiled")
@pytest.mark.parametrize(("partners", "seed"), [(30, 1), (30, 2), (60, 3), (100, 4), (150, 5)])
def test_the_compiled_loop_leaves_the_board_of_the_python_loop(
    partners: int, seed: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    problem = synthetic_problem(partners, seed)
    rounds = _rounds(problem)
    # A second search on the same board starts from a full plan: it reads the board's lists.
    runs = [(seed, rounds, 1.5), (seed + 10, rounds // 4, 0.3)]
    states = _same_both_ways(lambda: _board_of(problem), monkeypatch, runs)
    assert sum(states[-1][0]) > 0


@pytest.mark.usefixtures("compiled")
@pytest.mark.parametrize("pair_cap", [0, 1, 3])
def test_the_same_where_pairs_fill_up(pair_cap: int, monkeypatch: pytest.MonkeyPatch) -> None:
    problem = synthetic_problem(40, 6)
    problem = dataclasses.replace(
        problem, settings=dataclasses.replace(problem.settings, pair_cap=pair_cap)
    )
    _same_both_ways(lambda: _board_of(problem), monkeypatch, [(6, _rounds(problem), 1.5)])


@pytest.mark.usefixtures("compiled")
@pytest.mark.parametrize("seed", [7, 8])
def test_the_same_with_locked_mailings_and_a_previous_plan(
    seed: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Fixed mailings are locked in from the start; the previous plan's carry a bonus."""
    base = synthetic_problem(50, seed)
    first = _board_of(base)
    first.anneal(random.Random(seed), _rounds(base), 1.5)
    earlier = board_plan(base, first).assignments
    assert len(earlier) > 20
    problem = dataclasses.replace(base, fixed=earlier[::6], previous=earlier[1::2])
    work = Effort()

    def make() -> Board:
        board = _board(problem, work)
        assert board.any_locked
        assert any(board.bonus)
        return board

    _same_both_ways(make, monkeypatch, [(seed, _rounds(problem), 1.5)])


@pytest.mark.usefixtures("compiled")
def test_the_same_with_more_niches_than_one_word_holds(monkeypatch: pytest.MonkeyPatch) -> None:
    """Niche numbers spread past 64 (the same sets, renumbered): the masks take several words."""
    problem = synthetic_problem(40, 9)

    def make() -> Board:
        board = _board_of(problem)
        board.a_niches = [frozenset(37 * x + 3 for x in arc) for arc in board.a_niches]
        assert max(x for arc in board.a_niches for x in arc) >= 128
        return board

    _same_both_ways(make, monkeypatch, [(9, _rounds(problem), 1.5)])


@pytest.mark.usefixtures("compiled")
@pytest.mark.parametrize(
    ("partners", "seed", "work"),
    [
        (8, 1, Effort(max_nodes=20)),  # annealed from several starts, then the exact model
        # pruned, annealed once, then the neighbourhood search
        (40, 5, Effort(prune_above=1_000, moves_per_arc=4, min_moves=20_000, windows=6)),
    ],
)
def test_a_solve_gives_the_same_plan_byte_for_byte(
    partners: int, seed: int, work: Effort, monkeypatch: pytest.MonkeyPatch
) -> None:
    problem = synthetic_problem(partners, seed)
    plans: list[Plan] = []
    for mode in ("python", ""):
        monkeypatch.setenv(kernel.ENV, mode)
        plans.append(solve(problem, work))
    python, compiled = plans
    assert repr(compiled) == repr(python)
    assert verify(problem, compiled) == []


def test_without_a_compiler_the_python_loop_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    problem = synthetic_problem(20, 3)
    runs = [(3, 20_000, 1.5)]
    python = _annealed(lambda: _board_of(problem), monkeypatch, "python", runs)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setenv("CC", str(tmp_path / "no-such-compiler"))
    kernel.load.cache_clear()
    assert kernel.load() is None
    assert not kernel.available()
    assert _annealed(lambda: _board_of(problem), monkeypatch, "", runs) == python
    assert not any(tmp_path.glob("jvmail/*.so"))


def test_the_environment_can_insist_on_the_python_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(kernel.ENV, "python")
    assert not kernel.available()
    board = _board_of(synthetic_problem(10, 1))
    assert not kernel.anneal(board, random.Random(0), 100, 1.5)
    assert not any(board.chosen)


@pytest.mark.usefixtures("compiled")
def test_a_generator_that_draws_outside_the_unit_interval_fails_as_in_python() -> None:
    """The compiled loop declines it, untouched; the Python loop then fails as it always has."""

    class Past(random.Random):
        def random(self) -> float:
            return 1.0

    board = _board_of(synthetic_problem(10, 1))
    assert not kernel.anneal(board, Past(0), 100, 1.5)
    assert not any(board.chosen)
    with pytest.raises(IndexError):
        board.anneal(Past(0), 100, 1.5)


@pytest.mark.usefixtures("compiled")
def test_processes_compiling_at_once_each_load_a_whole_library(tmp_path: Path) -> None:
    """Both compile to private names and rename: neither loads a half-written file."""
    code = "from jvmail.scheduler import kernel; assert kernel.available()"
    env = os.environ | {"XDG_CACHE_HOME": str(tmp_path)}
    env.pop(kernel.ENV, None)
    both = [subprocess.Popen([sys.executable, "-c", code], env=env) for _ in range(2)]
    assert [p.wait(timeout=120) for p in both] == [0, 0]
    assert len(list(tmp_path.glob("jvmail/*.so"))) == 1
    assert not list(tmp_path.glob("jvmail/*.tmp"))
