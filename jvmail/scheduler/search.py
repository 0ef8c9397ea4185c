"""Local search over the arcs: a state with O(1) move evaluation, and simulated annealing on it.

The state (:class:`Board`) holds the chosen arcs and everything the hard rules and the objective
need to judge a change without scanning the plan: per-list, per-promotion and per-pair chosen
arcs, and each partner's running balance. Locked arcs (mailings already sent or approved) are
chosen from the start and never leave; arcs of the week's previous plan carry a bonus so that a
re-plan keeps them where it can.

Days are not part of the state: balance depends only on which pairs are chosen. A list accepts a
set of arcs when earliest-deadline-first placement (the rule :mod:`jvmail.scheduler.days` uses
for the final plan) gives every arc a day.
"""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Callable, Sequence

from jvmail.scheduler import kernel
from jvmail.scheduler.arcs import Arc
from jvmail.scheduler.problem import Problem

__all__ = ["Board"]

_EPS = 1e-9


class Board:
    """Arcs are indexed by their position in ``arcs``; lists, promotions and partners by small
    ints. ``locked`` and ``bonus`` are per arc, in the same order."""

    def __init__(
        self,
        problem: Problem,
        arcs: Sequence[Arc],
        tau: dict[str, float],
        *,
        locked: Sequence[bool] = (),
        bonus: Sequence[float] = (),
    ) -> None:
        s = problem.settings
        self.w1, self.w2, self.pair_cap = s.balance_weight, s.excess_weight, s.pair_cap
        self.arcs = list(arcs)
        self.partners = sorted(
            {a.lst.owner for a in arcs} | {a.promo.owner for a in arcs} | set(problem.balances)
        )
        self._index_lists_and_promos()
        self._index_arcs()
        self.tau = [tau.get(p, 0.0) for p in self.partners]
        self.balance = [problem.balances.get(p, 0.0) for p in self.partners]
        self.pen = _penalty(self.tau, self.w1, self.w2)
        self.pen_now = [self.pen(p, b) for p, b in enumerate(self.balance)]
        self.locked = bytearray(bool(x) for x in locked) or bytearray(len(self.arcs))
        self._rank_for_placement()
        self.any_locked = any(self.locked)
        self.bonus = list(bonus) or [0.0] * len(self.arcs)
        self.chosen = bytearray(len(self.arcs))
        self.on_list: list[list[int]] = [[] for _ in self.list_cap]
        self.on_promo: list[list[int]] = [[] for _ in self.promo_want]
        self.on_pair: dict[tuple[int, int], list[int]] = defaultdict(list)
        self.value = 0.0
        self.kept = 0.0  # bonus of the chosen arcs
        for a, lock in enumerate(self.locked):
            if lock:
                self.toggle(a)

    def _index_lists_and_promos(self) -> None:
        pidx = {p: n for n, p in enumerate(self.partners)}
        lists = {a.lst.id: a.lst for a in self.arcs}
        promos = {a.promo.id: a.promo for a in self.arcs}
        self.list_ids = sorted(lists)
        self.promo_ids = sorted(promos)
        self.list_cap = [lists[x].weekly_cap for x in self.list_ids]
        self.list_slots = [lists[x].daily_slots for x in self.list_ids]
        self.list_owner = [pidx[lists[x].owner] for x in self.list_ids]
        self.promo_want = [promos[x].wanted for x in self.promo_ids]
        self.promo_owner = [pidx[promos[x].owner] for x in self.promo_ids]

    def _index_arcs(self) -> None:
        lidx = {x: n for n, x in enumerate(self.list_ids)}
        xidx = {x: n for n, x in enumerate(self.promo_ids)}
        niche_ids: dict[str, int] = {}
        self.a_list: list[int] = []
        self.a_promo: list[int] = []
        self.a_value: list[float] = []
        self.a_first: list[int] = []  # index of the arc's first day among its list's days
        self.a_last: list[int] = []  # ... and last; -1 for a day the list no longer sends on
        self.a_niches: list[frozenset[int]] = []
        self.a_owners: list[tuple[int, int]] = []  # (giver, receiver)
        self.list_arcs: list[list[int]] = [[] for _ in self.list_ids]
        self.partner_lists: list[list[int]] = [[] for _ in self.partners]
        for i, o in enumerate(self.list_owner):
            self.partner_lists[o].append(i)
        orders = {a.lst.id: {day: k for k, day in enumerate(sorted(a.lst.days))} for a in self.arcs}
        niches = {
            a.promo.id: frozenset(niche_ids.setdefault(x, len(niche_ids)) for x in a.promo.niches)
            for a in self.arcs
        }
        for n, arc in enumerate(self.arcs):
            i, j = lidx[arc.lst.id], xidx[arc.promo.id]
            order = orders[arc.lst.id]
            self.a_list.append(i)
            self.a_promo.append(j)
            self.a_value.append(arc.value)
            self.a_first.append(order.get(arc.days[0], -1))
            self.a_last.append(order.get(arc.days[-1], -1))
            self.a_niches.append(niches[arc.promo.id])
            self.a_owners.append((self.list_owner[i], self.promo_owner[j]))
            self.list_arcs[i].append(n)
        self.list_days = [len(self.arcs[arcs[0]].lst.days) for arcs in self.list_arcs]
        # Arcs that cannot go on every day of their list's week: the rest fit anywhere.
        self.a_partial = bytearray(
            not (self.a_first[n] == 0 and self.a_last[n] == self.list_days[i] - 1)
            for n, i in enumerate(self.a_list)
        )

    def _rank_for_placement(self) -> None:
        """Each arc's place in the order earliest-deadline-first placement takes a list's
        arcs in: by last day, locked first, then by first day and promotion."""
        last, first, locked, promo = self.a_last, self.a_first, self.locked, self.a_promo
        order = sorted(
            range(len(self.arcs)), key=lambda a: (last[a], not locked[a], first[a], promo[a])
        )
        self.a_rank = [0] * len(order)
        for rank, a in enumerate(order):
            self.a_rank[a] = rank

    # -- reading -------------------------------------------------------------------------------

    def score(self) -> float:
        """What the search maximizes: the objective plus the bonus of kept previous arcs."""
        return self.value + self.kept - sum(self.pen_now)

    def chosen_arcs(self) -> list[int]:
        return [a for a, on in enumerate(self.chosen) if on]

    def fits(self, i: int, arcs: Sequence[int]) -> bool:
        """Whether list ``i`` can give each of ``arcs`` a day (EDF, as the final placement)."""
        count = len(arcs)
        if count > self.list_cap[i]:
            return False
        if count <= 1:
            return True
        if self.list_slots[i] == 1 and not any(map(self.a_partial.__getitem__, arcs)):
            return count <= self.list_days[i]
        last = self.a_last
        return self._edf(i, [a for a in arcs if last[a] >= 0])

    def _edf(self, i: int, arcs: list[int]) -> bool:
        first, last, niches = self.a_first, self.a_last, self.a_niches
        waiting = sorted(arcs, key=self.a_rank.__getitem__)
        slots = self.list_slots[i]
        day = 0
        while waiting:
            today: list[int] = []
            for a in waiting:
                if len(today) == slots:
                    break
                if first[a] <= day <= last[a] and not any(niches[a] & niches[b] for b in today):
                    today.append(a)
            waiting = [a for a in waiting if a not in today]
            if waiting and last[waiting[0]] <= day:
                return False
            day += 1
        return True

    # -- changing ------------------------------------------------------------------------------

    def gain(self, remove: Sequence[int], add: int) -> float:
        """The score's change if ``remove`` (chosen arcs) leave and ``add`` joins; ``add`` may
        be -1 for a pure removal. Rules are not checked here (see :meth:`allowed`)."""
        value, owners, bonus = self.a_value, self.a_owners, self.bonus
        moves: list[tuple[int, float]] = []
        total = 0.0
        for a in remove:
            v = value[a]
            o, q = owners[a]
            total -= v + bonus[a]
            moves += ((o, -v), (q, v))
        if add >= 0:
            v = value[add]
            o, q = owners[add]
            total += v + bonus[add]
            moves += ((o, v), (q, -v))
        balance, pen, now = self.balance, self.pen, self.pen_now
        if len(moves) == 2:  # the usual case: two distinct partners
            (p, d), (r, e) = moves
            return total - pen(p, balance[p] + d) + now[p] - pen(r, balance[r] + e) + now[r]
        moved: dict[int, float] = {}
        for p, d in moves:
            moved[p] = moved.get(p, 0.0) + d
        for p, d in moved.items():
            total -= pen(p, balance[p] + d) - now[p]
        return total

    def allowed(self, remove: Sequence[int], add: int) -> bool:
        """Whether the rules allow ``add`` once ``remove`` (chosen arcs) have left."""
        j = self.a_promo[add]
        on_promo = self.on_promo[j]
        if len(on_promo) >= self.promo_want[j] and not any(b in on_promo for b in remove):
            return False
        owners = self.a_owners[add]
        pair = self.on_pair.get(owners)
        if pair and len(pair) >= self.pair_cap and not any(b in pair for b in remove):
            return False
        i = self.a_list[add]
        on_list = [b for b in self.on_list[i] if b not in remove]
        on_list.append(add)
        return self.fits(i, on_list)

    def toggle(self, a: int) -> None:
        """Add ``a`` if it is not chosen, remove it if it is."""
        v = self.a_value[a]
        o, q = self.a_owners[a]
        balance, now, tau, w1, w2 = self.balance, self.pen_now, self.tau, self.w1, self.w2
        lists, promos = self.on_list[self.a_list[a]], self.on_promo[self.a_promo[a]]
        pair = self.on_pair[(o, q)]
        if self.chosen[a]:
            v, bonus = -v, -self.bonus[a]
            self.chosen[a] = 0
            lists.remove(a)
            promos.remove(a)
            pair.remove(a)
        else:
            bonus = self.bonus[a]
            self.chosen[a] = 1
            lists.append(a)
            promos.append(a)
            pair.append(a)
        self.value += v
        self.kept += bonus
        balance[o] += v
        balance[q] -= v
        for p in (o, q):  # the penalty of `_penalty`, written out
            size = balance[p]
            size = size if size > 0 else -size
            over = size - tau[p]
            now[p] = w1 * size + w2 * over if over > 0 else w1 * size

    def _solo_gain(self, a: int, adding: bool) -> float:
        """``gain((), a)`` or ``gain((a,), -1)``: the same sums, written out."""
        v = self.a_value[a]
        o, q = self.a_owners[a]
        worth = v + self.bonus[a]
        total, d = (0.0 + worth, v) if adding else (0.0 - worth, -v)
        balance, now, tau, w1, w2 = self.balance, self.pen_now, self.tau, self.w1, self.w2
        size = balance[o] + d
        size = size if size > 0 else -size
        over = size - tau[o]
        po = w1 * size + w2 * over if over > 0 else w1 * size
        size = balance[q] + -d
        size = size if size > 0 else -size
        over = size - tau[q]
        pq = w1 * size + w2 * over if over > 0 else w1 * size
        return total - po + now[o] - pq + now[q]

    def _replace_gain(self, b: int, a: int) -> float:
        """``gain([b], a)`` without the general bookkeeping: the move the search tries most.

        Written out for speed: the penalty of :func:`_penalty` inline, and no loops. ``b``'s
        giver and receiver are distinct, so each either meets one of ``a``'s two partners or
        is a third one (``first``, ``second``).
        """
        value, owners, bonus = self.a_value, self.a_owners, self.bonus
        v, vb = value[a], value[b]
        o, q = owners[a]
        ob, qb = owners[b]
        do, dq, first, second = v, -v, -1, -1
        if ob == o:
            do += -vb
        elif ob == q:
            dq += -vb
        else:
            first = ob
        if qb == o:
            do += vb
        elif qb == q:
            dq += vb
        else:
            second = qb
        balance, now, tau, w1, w2 = self.balance, self.pen_now, self.tau, self.w1, self.w2
        total = v + bonus[a] - vb - bonus[b]
        size = balance[o] + do
        size = size if size > 0 else -size
        over = size - tau[o]
        po = w1 * size + w2 * over if over > 0 else w1 * size
        size = balance[q] + dq
        size = size if size > 0 else -size
        over = size - tau[q]
        pq = w1 * size + w2 * over if over > 0 else w1 * size
        total -= po - now[o] + pq - now[q]
        if first >= 0:
            size = balance[first] + -vb
            size = size if size > 0 else -size
            over = size - tau[first]
            total -= (w1 * size + w2 * over if over > 0 else w1 * size) - now[first]
        if second >= 0:
            size = balance[second] + vb
            size = size if size > 0 else -size
            over = size - tau[second]
            total -= (w1 * size + w2 * over if over > 0 else w1 * size) - now[second]
        return total

    def _double_gains(self, a: int, pairs: Sequence[tuple[int, int]]) -> list[float]:
        """``gain([b, c], a)`` for each ``(b, c)`` of ``pairs``, ``b`` on ``a``'s list and
        ``c`` on its promotion: the same sums in the same order. Where the four partners
        touched are distinct, each one's penalty depends on ``b`` alone or on ``c`` alone and
        is worked out once per arc rather than once per pair."""
        value, owners, bonus = self.a_value, self.a_owners, self.bonus
        balance, now, tau, w1, w2 = self.balance, self.pen_now, self.tau, self.w1, self.w2
        v = value[a]
        o, q = owners[a]
        base = v + bonus[a]

        def change(p: int, d: float) -> float:
            size = balance[p] + d
            size = size if size > 0 else -size
            over = size - tau[p]
            return (w1 * size + w2 * over if over > 0 else w1 * size) - now[p]

        on_list = {
            b: (change(o, -value[b] + v), change(owners[b][1], value[b]))
            for b in {b for b, _ in pairs}
        }
        on_promo = {
            c: (change(owners[c][0], -value[c]), change(q, value[c] + -v))
            for c in {c for _, c in pairs}
        }
        gains: list[float] = []
        for b, c in pairs:
            qb, oc = owners[b][1], owners[c][0]
            if oc in (o, qb) or qb == q:
                gains.append(self._double_gain(b, c, a))
                continue
            total = 0.0 - (value[b] + bonus[b]) - (value[c] + bonus[c]) + base
            from_o, from_qb = on_list[b]
            from_oc, from_q = on_promo[c]
            gains.append(total - from_o - from_qb - from_oc - from_q)
        return gains

    def _double_gain(self, b: int, c: int, a: int) -> float:
        """``gain([b, c], a)``, the same sums in the same order, without its generic setup."""
        value, owners, bonus = self.a_value, self.a_owners, self.bonus
        v, vb, vc = value[a], value[b], value[c]
        o, q = owners[a]
        ob, qb = owners[b]
        oc, qc = owners[c]
        total = 0.0 - (vb + bonus[b]) - (vc + bonus[c]) + (v + bonus[a])
        moved: dict[int, float] = {}
        for p, d in ((ob, -vb), (qb, vb), (oc, -vc), (qc, vc), (o, v), (q, -v)):
            moved[p] = moved.get(p, 0.0) + d
        balance, now, tau, w1, w2 = self.balance, self.pen_now, self.tau, self.w1, self.w2
        for p, d in moved.items():  # the penalty of `_penalty`, written out
            size = balance[p] + d
            size = size if size > 0 else -size
            over = size - tau[p]
            total -= (w1 * size + w2 * over if over > 0 else w1 * size) - now[p]
        return total

    def swap(self, remove: Sequence[int], add: int) -> None:
        for b in remove:
            self.toggle(b)
        self.toggle(add)

    # -- moves ---------------------------------------------------------------------------------

    def best_insertion(
        self, a: int, floor: float = -float("inf")
    ) -> tuple[float, list[int]] | None:
        """The best allowed way to bring arc ``a`` in, if it gains more than ``floor``: alone,
        or evicting one arc of its list, of its promotion or of its pair, or one of its list and
        one of its promotion. Locked arcs are never evicted."""
        # Candidates the rules would refuse anyway are never priced: while a list, the
        # promotion or the pair is full, whatever leaves must free a place in it. So every
        # candidate keeps the promotion and pair rules, and only the list's days are checked
        # (what `allowed` would find).
        locked, fits = self.locked, self.fits
        i, j = self.a_list[a], self.a_promo[a]
        on_list, on_promo = self.on_list[i], self.on_promo[j]  # read, never changed, below
        listed = on_list  # every chosen arc of the list, locked ones too
        list_full = len(on_list) >= self.list_cap[i]
        promo_full = len(on_promo) >= self.promo_want[j]
        pair = self.on_pair.get(self.a_owners[a], ())
        pair_full = len(pair) >= self.pair_cap
        if self.any_locked:
            on_list = [b for b in on_list if not locked[b]]
            on_promo = [c for c in on_promo if not locked[c]]
        best: tuple[float, list[int]] | None = None
        if not (list_full or promo_full or pair_full):
            d = self._solo_gain(a, adding=True)
            if d > floor and fits(i, [*listed, a]):
                best, floor = (d, []), d
        if not (list_full and promo_full):
            singles = on_promo if promo_full else on_list if list_full else on_list + on_promo
            if pair_full:
                singles = [b for b in singles if b in pair]
                if not (list_full or promo_full):
                    singles += [b for b in pair if not locked[b] and b not in singles]
            for b in singles:
                d = self._replace_gain(b, a)
                if d > floor and fits(i, [x for x in listed if x != b] + [a]):
                    best, floor = (d, [b]), d
        if promo_full:  # b of the list, c of the promotion (never of the list: that is a)
            pairs = [(b, c) for b in on_list for c in on_promo]
            if pair_full:  # one of the two must free a place in the pair
                pairs = [(b, c) for b, c in pairs if b in pair or c in pair]
            for (b, c), d in zip(pairs, self._double_gains(a, pairs), strict=True):
                if d > floor and fits(i, [x for x in listed if x != b] + [a]):
                    best, floor = (d, [b, c]), d
        return best

    def anneal(self, rng: random.Random, rounds: int, temperature: float) -> None:
        """``rounds`` random moves at a temperature falling linearly to 0.

        A move picks an arc at random: a chosen arc may leave; another may come in, evicting
        what it must. The move is kept when it raises the score, or lowers it by less than the
        current temperature times the arc's value (a relative rule: values span five orders of
        magnitude between the smallest and the largest lists).

        The loop runs compiled where it can (:mod:`jvmail.scheduler.kernel`): the same moves,
        the same board and generator left behind; the Python loop below is the reference. A
        change to the moves here (this loop, :meth:`best_insertion`, :meth:`fits`, the gains,
        :meth:`toggle`) must be made in ``_anneal.c`` too: ``tests/scheduler/test_kernel.py``
        compares the two.
        """
        if kernel.anneal(self, rng, rounds, temperature):
            return
        n = len(self.arcs)
        value, chosen, locked = self.a_value, self.chosen, self.locked
        draw, solo, toggle, insertion = (
            rng.random,
            self._solo_gain,
            self.toggle,
            self.best_insertion,
        )
        for step in range(rounds):
            a = int(draw() * n)
            floor = _EPS - temperature * (1.0 - step / rounds) * value[a]
            if chosen[a]:
                if not locked[a] and solo(a, False) > floor:
                    toggle(a)
                continue
            found = insertion(a, floor)
            if found is not None:
                self.swap(found[1], a)


def _penalty(tau: list[float], w1: float, w2: float) -> Callable[[int, float], float]:
    """Partner p's balance penalty at net b (see :func:`jvmail.scheduler.balance.penalty`), as
    a closure over plain lists: the search calls it millions of times."""

    def pen(p: int, b: float) -> float:
        size = b if b > 0 else -b
        over = size - tau[p]
        return w1 * size + w2 * over if over > 0 else w1 * size

    return pen
