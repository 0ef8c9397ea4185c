"""A HiGHS instance set up for reproducible solves: quiet, one thread, a fixed seed."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager

import highspy
import numpy as np

__all__ = ["RowBuffer", "add_columns", "new_highs"]


@contextmanager
def _banner_muted() -> Iterator[None]:
    """HiGHS prints a banner on fd 1 when constructed, before any option can silence it: it
    goes nowhere, so `--json` output on stdout stays parseable and stderr says only what
    people need."""
    sys.stdout.flush()
    saved = os.dup(1)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 1)
        yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)
        os.close(devnull)


def add_columns(h: highspy.Highs, costs: list[float], upper: list[float]) -> None:
    """Columns with these objective costs, each from 0 to its ``upper``, in no row yet."""
    h.addCols(
        len(costs),
        np.array(costs),
        np.zeros(len(costs)),
        np.array(upper),
        0,
        np.array([], dtype=np.int32),
        np.array([], dtype=np.int32),
        np.array([]),
    )


def new_highs() -> highspy.Highs:
    """A silent single-threaded HiGHS with a fixed random seed: the same model, the same answer."""
    with _banner_muted():
        h = highspy.Highs()  # type: ignore[no-untyped-call]
    h.setOptionValue("output_flag", False)
    h.setOptionValue("threads", 1)
    h.setOptionValue("random_seed", 0)
    return h


class RowBuffer:
    """Rows gathered in CSR form, added to HiGHS in one call."""

    def __init__(self) -> None:
        self.lower: list[float] = []
        self.upper: list[float] = []
        self.starts: list[int] = []
        self.index: list[int] = []
        self.value: list[float] = []

    def add(self, lower: float, upper: float, terms: dict[int, float]) -> None:
        self.lower.append(lower)
        self.upper.append(upper)
        self.starts.append(len(self.index))
        for col in sorted(terms):
            self.index.append(col)
            self.value.append(terms[col])

    def flush(self, h: highspy.Highs) -> int:
        n = len(self.lower)
        if n:
            h.addRows(
                n,
                np.array(self.lower),
                np.array(self.upper),
                len(self.index),
                np.array(self.starts, dtype=np.int32),
                np.array(self.index, dtype=np.int32),
                np.array(self.value),
            )
        self.__init__()  # type: ignore[misc]
        return n
