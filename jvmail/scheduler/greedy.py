"""The baseline a spreadsheet coordinator would run: serve whoever is owed the most, first.

Repeatedly take the partner with the highest net balance (the one that has given the most more
than it received) among those that still have a promotion wanting mailings, and give it the
most valuable mailing the rules still allow for one of its promotions. The balance penalty is
never looked at; the order alone is meant to keep things fair. The benchmark compares the
scheduler with this.

Adding mailings only ever closes doors (a list fills, a promotion or a pair reaches its cap), so
an arc refused once is refused for good and each partner's arcs are scanned once in all.
"""

from __future__ import annotations

import heapq
from collections import defaultdict

from jvmail.scheduler.arcs import eligible_arcs
from jvmail.scheduler.balance import tolerances
from jvmail.scheduler.problem import Plan, Problem
from jvmail.scheduler.search import Board
from jvmail.scheduler.solver import board_plan

__all__ = ["owed_first"]


def owed_first(problem: Problem) -> Plan:
    """The greedy owed-most-first plan for ``problem`` (no fixed or previous mailings kept)."""
    arcs = eligible_arcs(problem)
    board = Board(problem, arcs, tolerances(problem, arcs))
    queue: dict[int, list[int]] = defaultdict(list)  # receiving partner -> arcs, best first
    for a in sorted(range(len(arcs)), key=lambda a: (-board.a_value[a], a)):
        queue[board.a_owners[a][1]].append(a)
    cursor = dict.fromkeys(queue, 0)
    heap = [(-board.balance[p], p) for p in sorted(queue)]
    heapq.heapify(heap)
    while heap:
        key, p = heapq.heappop(heap)
        if -key != board.balance[p]:
            continue  # stale: p was pushed again with its new balance when it moved
        mine, k = queue[p], cursor[p]
        while k < len(mine) and not board.allowed((), mine[k]):
            k += 1
        cursor[p] = k
        if k == len(mine):
            continue  # nothing more can be mailed for p: it leaves the queue
        board.toggle(mine[k])
        cursor[p] = k + 1
        giver = board.a_owners[mine[k]][0]
        for moved in (p, giver):
            if cursor.get(moved, 0) < len(queue.get(moved, ())):
                heapq.heappush(heap, (-board.balance[moved], moved))
    return board_plan(problem, board)
