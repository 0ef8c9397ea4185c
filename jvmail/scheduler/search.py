"""Local search over the arcs: a state with O(1) move evaluation, and the moves that use it.

The state (:class:`Board`) holds the chosen arcs and everything the hard rules and the objective
need to judge a change without scanning the plan: per-list chosen arcs, per-promotion and
per-pair chosen arcs, and each partner's running balance. A move removes some chosen arcs and
adds one; :meth:`Board.gain` prices it (value change minus the change in balance penalties) and
:meth:`Board.allowed` checks the hard rules it could break.

Days are not part of the state: balance depends only on which pairs are chosen. A list accepts a
set of arcs when earliest-deadline-first placement (the rule :mod:`jvmail.scheduler.days` uses
for the final plan) gives every arc a day.
"""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Sequence

from jvmail.scheduler.arcs import Arc
from jvmail.scheduler.problem import Problem

__all__ = ["Board"]

_EPS = 1e-9


class Board:
    """Arcs indexed by position in ``arcs``; lists, promotions and partners by small ints."""

    def __init__(self, problem: Problem, arcs: Sequence[Arc], tau: dict[str, float]) -> None:
        s = problem.settings
        self.w1, self.w2 = s.balance_weight, s.excess_weight
        self.pair_cap = s.pair_cap
        self.arcs = list(arcs)
        self.partners = sorted(
            {a.lst.owner for a in arcs} | {a.promo.owner for a in arcs} | set(problem.balances)
        )
        pidx = {p: n for n, p in enumerate(self.partners)}
        lists = {a.lst.id: a.lst for a in arcs}
        promos = {a.promo.id: a.promo for a in arcs}
        lidx = {x: n for n, x in enumerate(sorted(lists))}
        xidx = {x: n for n, x in enumerate(sorted(promos))}
        self.list_cap = [lists[x].weekly_cap for x in sorted(lists)]
        self.list_slots = [lists[x].daily_slots for x in sorted(lists)]
        self.list_owner = [pidx[lists[x].owner] for x in sorted(lists)]
        self.list_days = [len(lists[x].days) for x in sorted(lists)]
        self.promo_want = [promos[x].wanted for x in sorted(promos)]
        self.promo_owner = [pidx[promos[x].owner] for x in sorted(promos)]
        niche_ids: dict[str, int] = {}
        self.a_list: list[int] = []
        self.a_promo: list[int] = []
        self.a_value: list[float] = []
        self.a_first: list[int] = []
        self.a_last: list[int] = []
        self.a_niches: list[frozenset[int]] = []
        self.a_owners: list[tuple[int, int]] = []
        self.list_arcs: list[list[int]] = [[] for _ in lists]
        self.promo_arcs: list[list[int]] = [[] for _ in promos]
        for n, arc in enumerate(self.arcs):
            i, j = lidx[arc.lst.id], xidx[arc.promo.id]
            order = sorted(arc.lst.days)
            self.a_list.append(i)
            self.a_promo.append(j)
            self.a_value.append(arc.value)
            self.a_first.append(order.index(arc.days[0]))
            self.a_last.append(order.index(arc.days[-1]))
            self.a_niches.append(
                frozenset(niche_ids.setdefault(x, len(niche_ids)) for x in arc.promo.niches)
            )
            self.a_owners.append((self.list_owner[i], self.promo_owner[j]))
            self.list_arcs[i].append(n)
            self.promo_arcs[j].append(n)
        self.tau = [tau.get(p, 0.0) for p in self.partners]
        self.balance = [problem.balances.get(p, 0.0) for p in self.partners]
        self.chosen = bytearray(len(self.arcs))
        self.on_list: list[list[int]] = [[] for _ in lists]
        self.on_promo: list[list[int]] = [[] for _ in promos]
        self.on_pair: dict[tuple[int, int], list[int]] = defaultdict(list)
        self.value = 0.0
        self.partner_lists: list[list[int]] = [[] for _ in self.partners]
        for i, o in enumerate(self.list_owner):
            self.partner_lists[o].append(i)

    # -- reading -------------------------------------------------------------------------------

    def pen(self, p: int, b: float) -> float:
        """Partner ``p``'s balance penalty at net ``b``."""
        size = b if b > 0 else -b
        over = size - self.tau[p]
        return self.w1 * size + (self.w2 * over if over > 0 else 0.0)

    def score(self) -> float:
        """The objective of the chosen arcs."""
        return self.value - sum(self.pen(p, b) for p, b in enumerate(self.balance))

    def chosen_arcs(self) -> list[int]:
        return [a for a, on in enumerate(self.chosen) if on]

    def fits(self, i: int, arcs: Sequence[int]) -> bool:
        """Whether list ``i`` can give each of ``arcs`` a day (EDF, as the final placement)."""
        count = len(arcs)
        if count > self.list_cap[i]:
            return False
        if count <= 1:
            return True
        first, last = self.a_first, self.a_last
        if self.list_slots[i] == 1 and all(
            first[a] == 0 and last[a] == self.list_days[i] - 1 for a in arcs
        ):
            return count <= self.list_days[i]
        waiting = sorted(arcs, key=lambda a: (last[a], first[a], self.a_promo[a]))
        slots = self.list_slots[i]
        day = 0
        while waiting:
            today: list[int] = []
            for a in waiting:
                if len(today) == slots:
                    break
                if first[a] <= day <= last[a] and not any(
                    self.a_niches[a] & self.a_niches[b] for b in today
                ):
                    today.append(a)
            waiting = [a for a in waiting if a not in today]
            if waiting and last[waiting[0]] <= day:
                return False
            day += 1
        return True

    # -- changing ------------------------------------------------------------------------------

    def gain(self, remove: Sequence[int], add: int | None) -> float:
        """The objective's change if ``remove`` leave and ``add`` joins (rules not checked)."""
        moved: dict[int, float] = {}
        total = 0.0
        for a in remove:
            v = self.a_value[a]
            o, q = self.a_owners[a]
            total -= v
            moved[o] = moved.get(o, 0.0) - v
            moved[q] = moved.get(q, 0.0) + v
        if add is not None:
            v = self.a_value[add]
            o, q = self.a_owners[add]
            total += v
            moved[o] = moved.get(o, 0.0) + v
            moved[q] = moved.get(q, 0.0) - v
        balance = self.balance
        for p, d in moved.items():
            b = balance[p]
            total -= self.pen(p, b + d) - self.pen(p, b)
        return total

    def allowed(self, remove: Sequence[int], add: int) -> bool:
        """Whether the rules allow ``add`` once ``remove`` (chosen arcs) have left."""
        i, j = self.a_list[add], self.a_promo[add]
        owners = self.a_owners[add]
        if (
            len(self.on_promo[j]) - sum(1 for b in remove if self.a_promo[b] == j)
            >= (self.promo_want[j])
        ):
            return False
        pair = self.on_pair.get(owners)
        if pair and len(pair) - sum(1 for b in remove if self.a_owners[b] == owners) >= (
            self.pair_cap
        ):
            return False
        on_list = [b for b in self.on_list[i] if b not in remove]
        on_list.append(add)
        return self.fits(i, on_list)

    def apply(self, remove: Sequence[int], add: int | None) -> None:
        for a in remove:
            self._toggle(a, -1)
        if add is not None:
            self._toggle(add, 1)

    def _toggle(self, a: int, sign: int) -> None:
        v = self.a_value[a]
        i, j = self.a_list[a], self.a_promo[a]
        o, q = self.a_owners[a]
        self.value += sign * v
        self.balance[o] += sign * v
        self.balance[q] -= sign * v
        if sign < 0:
            self.chosen[a] = 0
            self.on_list[i].remove(a)
            self.on_promo[j].remove(a)
            self.on_pair[(o, q)].remove(a)
        else:
            self.chosen[a] = 1
            self.on_list[i].append(a)
            self.on_promo[j].append(a)
            self.on_pair[(o, q)].append(a)

    # -- moves ---------------------------------------------------------------------------------

    def best_insertion(self, a: int) -> tuple[float, list[int]] | None:
        """The best allowed way to bring arc ``a`` in: alone, or evicting one arc of its list,
        of its promotion or of its pair, or one of its list and one of its promotion."""
        i, j = self.a_list[a], self.a_promo[a]
        evict_list = self.on_list[i]
        evict_promo = self.on_promo[j]
        pair = self.on_pair.get(self.a_owners[a], [])
        options: list[list[int]] = [[]]
        options += [[b] for b in evict_list]
        options += [[b] for b in evict_promo]
        if len(pair) >= self.pair_cap:
            options += [[b] for b in pair if b not in evict_list and b not in evict_promo]
        if len(evict_promo) >= self.promo_want[j] and len(evict_list) >= self.list_cap[i]:
            options += [[b, c] for b in evict_list for c in evict_promo]
        best: tuple[float, list[int]] | None = None
        for remove in options:
            d = self.gain(remove, a)
            if (best is None or d > best[0]) and self.allowed(remove, a):
                best = (d, remove)
        return best

    def chain(self, a: int, floor: float, steps: int = 2) -> bool:
        """Insert ``a`` even at a loss, then let the receiver give back: up to ``steps`` times,
        insert the best arc from the last receiver's lists. Kept if the whole chain gains more
        than ``floor``; otherwise undone."""
        before = self.score()
        done: list[tuple[list[int], int]] = []
        found = self.best_insertion(a)
        if found is None:
            return False
        self.apply(found[1], a)
        done.append((found[1], a))
        last = a
        for _ in range(steps):
            q = self.a_owners[last][1]
            best: tuple[float, list[int], int] | None = None
            for i in self.partner_lists[q]:
                for c in self.list_arcs[i]:
                    if self.chosen[c]:
                        continue
                    got = self.best_insertion(c)
                    if got is not None and (best is None or got[0] > best[0]):
                        best = (got[0], got[1], c)
            if best is None:
                break
            self.apply(best[1], best[2])
            done.append((best[1], best[2]))
            last = best[2]
            if self.score() - before > floor:
                return True
        if self.score() - before > floor:
            return True
        for removed, added in reversed(done):
            self.apply([added], None)
            for b in removed:
                self.apply([], b)
        return False

    def anneal(
        self, rng: random.Random, rounds: int, temperature: float, chains: float = 0.0
    ) -> int:
        """``rounds`` random moves at a temperature falling linearly to 0.

        A move picks an arc at random: a chosen arc may leave, another may come in (evicting
        what it must). It is kept when it raises the objective, or lowers it by less than the
        current temperature times the arc's value. Returns how many moves were kept.
        """
        kept = 0
        n = len(self.arcs)
        for step in range(rounds):
            heat = temperature * (1 - step / rounds)
            a = rng.randrange(n)
            floor = _EPS - heat * self.a_value[a]
            if self.chosen[a]:
                if self.gain([a], None) > floor:
                    self.apply([a], None)
                    kept += 1
                continue
            if chains and rng.random() < chains:
                kept += self.chain(a, floor)
                continue
            found = self.best_insertion(a)
            if found is not None and found[0] > floor:
                self.apply(found[1], a)
                kept += 1
        return kept

    def construct(self) -> None:
        """Fill list slots from the most valuable down, like balancing loads.

        Each partner starts expecting to give what its lists can carry (each slot at its best
        arc's value); ``need`` is its projected balance. A slot goes to the arc that raises the
        projected objective most (its value, minus the penalty change of the receiver's need
        and of the giver's, whose expected giving falls by whatever the arc is worth less than
        the best), or stays empty if that is better still.
        """
        best = [max((self.a_value[a] for a in arcs), default=0.0) for arcs in self.list_arcs]
        need = list(self.balance)
        slots: list[tuple[float, int]] = []
        for i, top in enumerate(best):
            n = min(self.list_cap[i], self.list_slots[i] * self.list_days[i])
            need[self.list_owner[i]] += n * top
            slots += [(top, i)] * n
        slots.sort(key=lambda t: (-t[0], t[1]))
        pen = self.pen
        for top, i in slots:
            o = self.list_owner[i]
            here = pen(o, need[o])
            pick, score = -1, -(pen(o, need[o] - top) - here)
            for a in self.list_arcs[i]:
                if self.chosen[a]:
                    continue
                q = self.a_owners[a][1]
                v = self.a_value[a]
                d = v - (pen(q, need[q] - v) - pen(q, need[q]))
                d -= pen(o, need[o] - (top - v)) - here
                if d > score and self.allowed([], a):
                    pick, score = a, d
            if pick < 0:
                need[o] -= top
                continue
            self.apply([], pick)
            need[self.a_owners[pick][1]] -= self.a_value[pick]
            need[o] -= top - self.a_value[pick]

    def greedy(self) -> None:
        """Fill lists from the most valuable down, each slot going to the eligible promotion whose
        owner has the most credit left (what it could give minus what it has received)."""
        credit = list(self.balance)
        best = [max((self.a_value[a] for a in arcs), default=0.0) for arcs in self.list_arcs]
        for i, top in enumerate(best):
            credit[self.list_owner[i]] += self.list_cap[i] * top
        for i in sorted(range(len(best)), key=lambda i: -best[i]):
            for _ in range(self.list_cap[i]):
                ranked = sorted(
                    (a for a in self.list_arcs[i] if not self.chosen[a]),
                    key=lambda a: self.a_value[a] - credit[self.a_owners[a][1]],
                )
                for a in ranked:
                    q = self.a_owners[a][1]
                    if credit[q] < 0.5 * self.a_value[a]:
                        break
                    if self.allowed([], a):
                        self.apply([], a)
                        credit[q] -= self.a_value[a]
                        break
