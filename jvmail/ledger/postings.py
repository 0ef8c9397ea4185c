"""Posting rules and derived balances: pure functions over ledger entries, no database.

Entries are never changed. Each mailing moves through stages, each recorded as a new entry that
carries the mailing's whole value at that stage: ``expected`` when planned, ``pending`` when first
measured, ``final`` once the hub's credit window has passed, or ``missed`` (value 0: a commitment
not kept earns nothing). A mailing's effective value is that of its latest stage plus the sum of
its ``correction`` entries. Balances are derived from effective values, so they can always be
recomputed from the entries and audited line by line.

Signs: a partner's *net* is value given minus value received. Positive: the hub owes it.
"""

from __future__ import annotations

import enum
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from jvmail.db.models import LedgerKind

__all__ = [
    "Entry",
    "MailingValue",
    "Transfer",
    "View",
    "counted",
    "effective_values",
    "net_positions",
    "pair_balances",
    "reliability",
    "settlements",
]


# Later stages replace earlier ones; corrections add on top of whichever stage is current.
_RANK = {LedgerKind.EXPECTED: 0, LedgerKind.PENDING: 1, LedgerKind.FINAL: 2, LedgerKind.MISSED: 2}


class View(enum.StrEnum):
    """Which mailings a balance counts."""

    MEASURED = "measured"  # only what tracking has measured (pending, final, missed)
    PROJECTED = "projected"  # measured, plus the expected value of mailings not yet measured


@dataclass(frozen=True, slots=True)
class Entry:
    """One ledger line: ``giver`` mailed for ``receiver``. ``seq`` orders entries (the row id)."""

    seq: int
    mailing: int
    giver: str
    receiver: str
    stage: LedgerKind
    value: float


@dataclass(frozen=True, slots=True)
class MailingValue:
    mailing: int
    giver: str
    receiver: str
    stage: LedgerKind  # the latest non-correction stage
    value: float  # that stage's value plus all corrections


def effective_values(entries: Iterable[Entry]) -> dict[int, MailingValue]:
    """Each mailing's current value. Among entries of equal rank the later ``seq`` wins."""
    latest: dict[int, Entry] = {}
    corrections: dict[int, float] = defaultdict(float)
    for entry in sorted(entries, key=lambda e: e.seq):
        if entry.stage is LedgerKind.CORRECTION:
            corrections[entry.mailing] += entry.value
            continue
        current = latest.get(entry.mailing)
        if current is None or _RANK[entry.stage] >= _RANK[current.stage]:
            latest[entry.mailing] = entry
    return {
        m: MailingValue(m, e.giver, e.receiver, e.stage, e.value + corrections[m])
        for m, e in latest.items()
    }


def counted(values: Mapping[int, MailingValue], view: View) -> Iterable[MailingValue]:
    """The mailings a balance in ``view`` counts."""
    for mv in values.values():
        if view is View.PROJECTED or mv.stage is not LedgerKind.EXPECTED:
            yield mv


def net_positions(values: Mapping[int, MailingValue], view: View) -> dict[str, float]:
    """Each partner's net against the hub: given minus received. The values sum to zero."""
    net: dict[str, float] = defaultdict(float)
    for mv in counted(values, view):
        net[mv.giver] += mv.value
        net[mv.receiver] -= mv.value
    return dict(net)


def pair_balances(values: Mapping[int, MailingValue], view: View) -> dict[tuple[str, str], float]:
    """For each pair (a, b) with a < b: what a gave b minus what b gave a."""
    pairs: dict[tuple[str, str], float] = defaultdict(float)
    for mv in counted(values, view):
        if mv.giver < mv.receiver:
            pairs[(mv.giver, mv.receiver)] += mv.value
        else:
            pairs[(mv.receiver, mv.giver)] -= mv.value
    return dict(pairs)


@dataclass(frozen=True, slots=True)
class Transfer:
    """After netting, ``debtor`` owes ``creditor`` this much value (in mailings' worth)."""

    debtor: str
    creditor: str
    value: float


def settlements(net: Mapping[str, float], tolerance: float = 1e-9) -> list[Transfer]:
    """Who owes whom after multilateral netting, in at most (partners - 1) transfers.

    Largest debtor pays largest creditor first; ties break on the partner id, so the answer is
    deterministic. A cycle A->B->C->A has all nets at zero and so needs no transfer at all.
    """
    debtors = sorted(
        ((-v, p) for p, v in net.items() if v < -tolerance), key=lambda t: (-t[0], t[1])
    )
    creditors = sorted(
        ((v, p) for p, v in net.items() if v > tolerance), key=lambda t: (-t[0], t[1])
    )
    transfers: list[Transfer] = []
    i = j = 0
    owe = [d for d, _ in debtors]
    due = [c for c, _ in creditors]
    while i < len(debtors) and j < len(creditors):
        amount = min(owe[i], due[j])
        transfers.append(Transfer(debtors[i][1], creditors[j][1], amount))
        owe[i] -= amount
        due[j] -= amount
        if owe[i] <= tolerance:
            i += 1
        if due[j] <= tolerance:
            j += 1
    return transfers


def reliability(values: Mapping[int, MailingValue]) -> dict[str, tuple[int, int]]:
    """Per sending partner: (commitments kept, commitments due). Expected-only ones are not due."""
    kept: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for mv in values.values():
        if mv.stage is LedgerKind.EXPECTED:
            continue
        kept[mv.giver][1] += 1
        if mv.stage is not LedgerKind.MISSED:
            kept[mv.giver][0] += 1
    return {p: (k, d) for p, (k, d) in kept.items()}
