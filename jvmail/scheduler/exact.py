"""The exact model, solved by HiGHS: over a window of partners, or over the whole hub.

Decision y_a = 1 when arc a (list l's owner mails promotion x) is chosen. Maximize
    sum v_a y_a  -  balance_weight * sum_p |b_p|  -  excess_weight * sum_p max(0, |b_p| - tau_p)
with b_p = carried_p + given_p - received_p; |b_p| and the excess are linearized as
b_p = u_p - w_p with u_p, w_p >= 0 (so |b_p| = u_p + w_p at an optimum) and
e_p >= u_p + w_p - tau_p: one equality row per partner, which HiGHS solves faster and, on a
small window, further towards the optimum than the pair t_p >= +-b_p. Rows: list weekly caps,
promotion wants, pair caps, and
Hall's interval rows per list (the arcs whose days all lie in a run of the list's days fit in
that run's slots: exact for one-slot lists, whose arcs' days are intervals; on a digest the same
rows, one slot a day, hold for the arcs sharing each niche).

A window is a set of partners: every unlocked arc between two of them is free; every other
chosen arc stays as it is and only uses up capacity and moves balances. The whole hub is the
window of every partner. HiGHS starts from the board's current arcs, runs on one thread with a
fixed seed and a node budget (not a clock, so the answer is the same on every run), and the
board takes the result when it scores higher. The same model always gets the same answer,
which lets :func:`improve` solve the next window ahead, on a second thread, and keep that
answer when the window's model turns out unchanged.

:func:`improve` is the large-neighbourhood search that follows annealing on a large hub: a
fixed number of small windows, each grown from one of the most imbalanced partners through the
partners it can trade with, each solved at its root node only.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from threading import Thread

import highspy
import numpy as np

from jvmail.scheduler.highs import RowBuffer, add_columns, new_highs
from jvmail.scheduler.search import Board

__all__ = ["Window", "improve", "solve_window"]

_INF = highspy.kHighsInf


class Window:
    """Which arcs of ``board`` a set of partners frees, and what the rest pins down."""

    def __init__(self, board: Board, members: Iterable[int]) -> None:
        self.members = sorted(set(members))
        inside = set(self.members)
        self.lists = [i for i, o in enumerate(board.list_owner) if o in inside]
        self.free = [
            a
            for i in self.lists
            for a in board.list_arcs[i]
            if board.a_owners[a][1] in inside and not board.locked[a]
        ]
        free = set(self.free)
        self.promos = sorted({board.a_promo[a] for a in self.free})
        self.pinned_on_list = {
            i: [a for a in board.on_list[i] if a not in free] for i in self.lists
        }
        self.pinned_on_promo = {
            j: sum(1 for a in board.on_promo[j] if a not in free) for j in self.promos
        }


def solve_window(
    board: Board, window: Window, max_nodes: int = 200, *, quick: bool = False
) -> float:
    """Re-solve ``window`` and apply the result if it is better; returns the gain (>= 0).

    ``quick`` stops at the root node and keeps, of the root's heuristics, RINS (a sub-MIP
    around the current plan, which finds nearly all of the gain on a small window) without
    restarts: a few times faster than the full root."""
    if not window.free:
        return 0.0
    model = _Model(board, window, max_nodes, quick=quick)
    model.start(thread=False)
    return model.apply(board)


class _Model:
    """The exact model of one window in HiGHS, solved here or on a thread of its own (HiGHS
    lets go of the interpreter while it runs). ``key`` is everything HiGHS is given: two
    models with the same key get the same answer."""

    def __init__(self, board: Board, window: Window, max_nodes: int, *, quick: bool) -> None:
        free = self.free = window.free
        self.current = current = [float(board.chosen[a]) for a in free]
        h = self.highs = new_highs()
        h.setOptionValue("mip_max_nodes", 1 if quick else max_nodes)
        h.setOptionValue("mip_rel_gap", 1e-6)
        if quick:
            h.setOptionValue("mip_allow_restart", False)
            h.setOptionValue("mip_heuristic_run_feasibility_jump", False)
            h.setOptionValue("mip_heuristic_run_root_reduced_cost", False)
            h.setOptionValue("mip_heuristic_run_rens", False)
        col = {a: n for n, a in enumerate(free)}
        partners = window.members
        s = board
        costs = [s.a_value[a] + s.bonus[a] for a in free]
        costs += [-s.w1, -s.w1, -s.w2] * len(partners)
        upper = [1.0] * len(free) + [_INF] * (3 * len(partners))
        add_columns(h, costs, upper)
        h.changeColsIntegrality(
            len(free),
            np.arange(len(free), dtype=np.int32),
            np.array([highspy.HighsVarType.kInteger] * len(free)),
        )
        h.changeObjectiveSense(highspy.ObjSense.kMaximize)
        rows = RowBuffer()
        _capacity_rows(rows, board, window, col)
        balance_start = _balance_rows(rows, board, window, col, len(free))
        start = current + balance_start
        self.key = (
            quick,
            max_nodes,
            tuple(free),
            tuple(costs),
            tuple(rows.lower),
            tuple(rows.upper),
            tuple(rows.starts),
            tuple(rows.index),
            tuple(rows.value),
            tuple(start),
        )
        rows.flush(h)
        h.setSolution(len(start), np.arange(len(start), dtype=np.int32), np.array(start))
        self.thread: Thread | None = None

    def start(self, *, thread: bool = True) -> None:
        """Solve, on a thread of its own unless ``thread`` is false."""
        if thread:
            self.thread = Thread(target=self.highs.run, daemon=True)
            self.thread.start()
        else:
            self.highs.run()

    def wait(self) -> None:
        if self.thread is not None:
            self.thread.join()
            self.thread = None

    def apply(self, board: Board) -> float:
        """Wait for the answer and apply it if it is better; returns the gain (>= 0)."""
        self.wait()
        h, free, current = self.highs, self.free, self.current
        if (
            h.getModelStatus()
            not in (
                highspy.HighsModelStatus.kOptimal,
                highspy.HighsModelStatus.kSolutionLimit,
                highspy.HighsModelStatus.kIterationLimit,
                highspy.HighsModelStatus.kTimeLimit,
                highspy.HighsModelStatus.kInterrupt,
            )
            or h.getInfo().primal_solution_status != 2
        ):
            return 0.0
        values = h.getSolution().col_value
        remove = [a for n, a in enumerate(free) if current[n] > 0.5 and values[n] < 0.5]
        add = [a for n, a in enumerate(free) if current[n] < 0.5 and values[n] > 0.5]
        if not remove and not add:
            return 0.0
        before = board.score()
        for a in remove + add:
            board.toggle(a)
        gain = board.score() - before
        touched = {board.a_list[a] for a in add}
        if gain < 1e-6 or not all(board.fits(i, board.on_list[i]) for i in touched):
            for a in remove + add:
                board.toggle(a)
            return 0.0
        return gain


def improve(board: Board, windows: int, window_arcs: int, *, ahead: bool = True) -> float:
    """Large-neighbourhood search: re-solve up to ``windows`` windows (``quick``), each of
    about ``window_arcs`` free arcs, keeping every improvement; returns the total gain.

    Windows start from the partners with the largest balance penalty, most imbalanced first
    (the order is taken once, at the start). A window grows one partner at a time, taking the
    partner with the most arcs to its members, weighted up by that partner's current penalty
    (relative to twice the mean chosen value: enough to bring imbalanced partners in, not so
    much that the window ends up with no trade among its members). Every step is counted in
    windows and nodes, never in seconds.

    With ``ahead``, the next window is solved on a second thread while this one is (HiGHS lets
    go of the interpreter while it runs), as it would be on the plan before this window's
    changes; it is used only when its model, rebuilt afterwards, is exactly the same (the usual
    case: windows far apart leave each other alone), so the result is that of one window at a
    time, bit for bit."""
    links: list[dict[int, int]] = [{} for _ in board.partners]
    for a, (o, q) in enumerate(board.a_owners):
        if not board.locked[a]:
            links[o][q] = links[o].get(q, 0) + 1
            links[q][o] = links[q].get(o, 0) + 1
    chosen = board.chosen_arcs()
    scale = 2.0 * sum(board.a_value[a] for a in chosen) / len(chosen) if chosen else 1.0
    pen = board.pen_now
    seeds = sorted((p for p, near in enumerate(links) if near), key=lambda p: (-pen[p], p))
    seen: set[tuple[int, ...]] = set()
    total = 0.0
    spare: _Model | None = None  # the next window, solved meanwhile on the plan as it was
    for k, seed in enumerate(seeds[:windows]):
        members = _grow(seed, links, pen, max(scale, 1e-9), window_arcs)
        if members in seen:
            continue
        seen.add(members)
        window = Window(board, members)
        if not window.free:
            continue
        model = _Model(board, window, 0, quick=True)
        if spare is not None and spare.key == model.key:
            model = spare  # the same model: the same answer, already on its way
        else:
            if spare is not None:
                spare.wait()
            model.start(thread=ahead)
        spare = None
        if ahead and k + 1 < min(windows, len(seeds)):
            guess = Window(board, _grow(seeds[k + 1], links, pen, max(scale, 1e-9), window_arcs))
            if tuple(guess.members) not in seen and guess.free:
                spare = _Model(board, guess, 0, quick=True)
                spare.start()
        total += model.apply(board)
    if spare is not None:
        spare.wait()
    return total


def _grow(
    seed: int, links: list[dict[int, int]], pen: list[float], scale: float, arcs: int
) -> tuple[int, ...]:
    """The members of the window grown from ``seed`` until about ``arcs`` arcs join them."""
    members = {seed}
    reach: dict[int, int] = {}  # arcs from each outside partner to the members
    newest, inside = seed, 0
    while inside < arcs:
        for q, n in links[newest].items():
            if q not in members:
                reach[q] = reach.get(q, 0) + n
        if not reach:
            break
        newest = max(reach, key=lambda q: (reach[q] * (1.0 + pen[q] / scale), -q))
        inside += reach.pop(newest)
        members.add(newest)
    return tuple(sorted(members))


def _capacity_rows(rows: RowBuffer, board: Board, window: Window, col: dict[int, int]) -> None:
    by_list: dict[int, list[int]] = defaultdict(list)
    by_promo: dict[int, list[int]] = defaultdict(list)
    by_pair: dict[tuple[int, int], list[int]] = defaultdict(list)
    for a in window.free:
        by_list[board.a_list[a]].append(a)
        by_promo[board.a_promo[a]].append(a)
        by_pair[board.a_owners[a]].append(a)
    for i in sorted(by_list):
        _list_rows(rows, board, i, by_list[i], pinned=window.pinned_on_list[i], col=col)
    for j in sorted(by_promo):
        room = board.promo_want[j] - window.pinned_on_promo[j]
        rows.add(-_INF, room, {col[a]: 1.0 for a in by_promo[j]})
    for pair in sorted(by_pair):
        if len(by_pair[pair]) > board.pair_cap:
            rows.add(-_INF, board.pair_cap, {col[a]: 1.0 for a in by_pair[pair]})


def _list_rows(
    rows: RowBuffer,
    board: Board,
    i: int,
    free: list[int],
    *,
    pinned: list[int],
    col: dict[int, int],
) -> None:
    """Weekly cap, and Hall's interval rows over the list's days (pinned arcs count as 1)."""
    cap = board.list_cap[i] - len(pinned)
    rows.add(-_INF, cap, {col[a]: 1.0 for a in free})
    first, last = board.a_first, board.a_last
    dated = [a for a in free + pinned if last[a] >= 0]  # a fixed mailing may sit off the days
    groups: list[tuple[int, list[int]]] = [(board.list_slots[i], dated)]
    if board.list_slots[i] > 1:
        niches = sorted({n for a in free for n in board.a_niches[a]})
        groups += [(1, [a for a in dated if n in board.a_niches[a]]) for n in niches]
    for slots, members in groups:
        for lo in sorted({first[a] for a in members}):
            for hi in sorted({last[a] for a in members if last[a] >= lo}):
                inside = [a for a in members if first[a] >= lo and last[a] <= hi]
                room = slots * (hi - lo + 1)
                if len(inside) > room:
                    fixed = sum(1 for a in inside if a not in col)
                    terms = {col[a]: 1.0 for a in inside if a in col}
                    if terms:
                        rows.add(-_INF, room - fixed, terms)


def _balance_rows(
    rows: RowBuffer, board: Board, window: Window, col: dict[int, int], first: int
) -> list[float]:
    """b_p = u_p - w_p, e_p >= u_p + w_p - tau_p for each member; returns u, w and e at the
    current plan."""
    flow: dict[int, dict[int, float]] = defaultdict(dict)
    base = {p: board.balance[p] for p in window.members}
    for a in window.free:
        o, q = board.a_owners[a]
        v = board.a_value[a]
        flow[o][col[a]] = flow[o].get(col[a], 0.0) + v
        flow[q][col[a]] = flow[q].get(col[a], 0.0) - v
        if board.chosen[a]:
            base[o] -= v
            base[q] += v
    start: list[float] = []
    for k, p in enumerate(window.members):
        u, w, e = first + 3 * k, first + 3 * k + 1, first + 3 * k + 2
        net = flow.get(p, {})
        rows.add(base[p], base[p], {u: 1.0, w: -1.0} | {c: -v for c, v in net.items()})
        rows.add(-board.tau[p], _INF, {e: 1.0, u: -1.0, w: -1.0})
        b = board.balance[p]
        start += [max(b, 0.0), max(-b, 0.0), max(0.0, abs(b) - board.tau[p])]
    return start
