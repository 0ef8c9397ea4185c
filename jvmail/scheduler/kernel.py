"""The annealing loop of :class:`~jvmail.scheduler.search.Board`, compiled: the same moves, faster.

``_anneal.c`` makes exactly the decisions of the Python loop in :meth:`Board.anneal`: the same
floating-point operations in the same order, the candidates in the same order, and the random
draws of the same generator (drawn here, one a round, before the loop). The board it leaves is
the one the Python loop leaves, down to the order of every membership list, so a plan is the
same, byte for byte, with or without it; it takes a few percent of the Python loop's time.

The source ships inside the package. At first use it is compiled with the system C compiler
(``$CC``, else ``cc``) into a shared library cached per user (``$XDG_CACHE_HOME/jvmail``, else
``~/.cache/jvmail``, else the temporary directory), named by a hash of the source, the flags
and the platform, and loaded with :mod:`ctypes`. Where there is no compiler, or compiling or
loading fails, the Python loop runs instead (logged at debug level).
``JVMAIL_SCHEDULER_KERNEL=python`` always runs the Python loop.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import itertools
import logging
import os
import platform
import random
import shlex
import subprocess
import sys
import tempfile
from array import array
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from jvmail.scheduler.search import Board

__all__ = ["anneal", "available", "load"]

log = logging.getLogger(__name__)

ENV = "JVMAIL_SCHEDULER_KERNEL"
SOURCE = "_anneal.c"
# Strict IEEE doubles: no reassociation, no fused multiply-add (Python rounds each operation).
FLAGS = ("-O2", "-std=c99", "-fPIC", "-shared", "-fno-fast-math", "-ffp-contract=off")

_INT = ctypes.POINTER(ctypes.c_int)
_INT_MAX = 2 ** (8 * ctypes.sizeof(ctypes.c_int) - 1) - 1
_DOUBLE = ctypes.POINTER(ctypes.c_double)
_BYTE = ctypes.POINTER(ctypes.c_ubyte)


class _Board(ctypes.Structure):
    """``jv_board`` of ``_anneal.c``, field for field."""

    _fields_ = [
        *((name, ctypes.c_int) for name in ("n_arcs", "n_lists", "n_promos", "n_partners")),
        *((name, ctypes.c_int) for name in ("n_pairs", "words", "pair_cap", "any_locked")),
        ("w1", ctypes.c_double),
        ("w2", ctypes.c_double),
        *((name, _INT) for name in ("a_list", "a_promo", "a_giver", "a_taker", "a_pair")),
        *((name, _INT) for name in ("a_first", "a_last", "a_rank")),
        ("a_partial", _BYTE),
        ("locked", _BYTE),
        ("a_value", _DOUBLE),
        ("a_bonus", _DOUBLE),
        ("a_niches", ctypes.POINTER(ctypes.c_ulonglong)),
        *((name, _INT) for name in ("list_cap", "list_slots", "list_days", "promo_want")),
        ("tau", _DOUBLE),
        ("chosen", _BYTE),
        ("balance", _DOUBLE),
        ("pen_now", _DOUBLE),
        ("totals", _DOUBLE),
        *((name, _INT) for name in ("list_start", "promo_start", "pair_start")),
        *((name, _INT) for name in ("list_count", "promo_count", "pair_count")),
        *((name, _INT) for name in ("list_items", "promo_items", "pair_items")),
        ("pair_seen", _BYTE),
        ("pair_new", _INT),
        ("pair_new_count", _INT),
        ("partner_touched", _BYTE),
    ]


def _forced_python() -> bool:
    return os.environ.get(ENV, "").strip().lower() == "python"


def available() -> bool:
    """Whether :func:`anneal` would run the compiled loop (and not leave it to Python)."""
    return not _forced_python() and load() is not None


def _cache_dir() -> Path:
    """Where compiled libraries are kept: per user, reused across processes. The temporary
    directory is the last resort, in a directory only this user may write to."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    path = Path(base) / "jvmail"
    try:
        path.mkdir(parents=True, exist_ok=True)
        if os.access(path, os.W_OK):
            return path
    except OSError:
        pass
    uid = os.getuid() if hasattr(os, "getuid") else 0
    path = Path(tempfile.gettempdir()) / f"jvmail-{uid}"
    path.mkdir(mode=0o700, exist_ok=True)
    if hasattr(os, "getuid") and (path.stat().st_uid != uid or path.stat().st_mode & 0o022):
        raise PermissionError(f"{path} is not this user's alone")
    return path


def _compiler() -> list[str]:
    return shlex.split(os.environ.get("CC") or "cc")


def _library_name(source: bytes) -> str:
    """A name that changes with the source, the flags, the interpreter and the platform."""
    key = hashlib.sha256(source)
    for part in (*FLAGS, sys.implementation.cache_tag or "", sys.platform, platform.machine()):
        key.update(b"\0" + part.encode())
    suffix = ".dll" if sys.platform == "win32" else ".so"
    return f"anneal-{key.hexdigest()[:20]}{suffix}"


def _compile(source: Path, target: Path) -> None:
    """Compile ``source`` to ``target`` atomically: to a private name, then renamed, so that
    processes compiling at the same time never load a half-written library."""
    fd, temporary = tempfile.mkstemp(dir=target.parent, prefix=target.stem, suffix=".tmp")
    os.close(fd)
    try:
        subprocess.run(
            [*_compiler(), *FLAGS, "-o", temporary, str(source)],
            check=True,
            capture_output=True,
            timeout=120,
        )
        os.replace(temporary, target)
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)


@functools.cache
def load() -> ctypes.CDLL | None:
    """The compiled loop, compiled first if this source has not been yet; None where it cannot
    be built or loaded. Tried once a process (``load.cache_clear()`` tries again)."""
    try:
        with resources.as_file(resources.files(__package__ or "jvmail.scheduler") / SOURCE) as src:
            target = _cache_dir() / _library_name(src.read_bytes())
            if not target.exists():
                _compile(src, target)
        library = ctypes.CDLL(str(target))
        function = library.jv_anneal
    except (OSError, subprocess.SubprocessError, AttributeError) as error:
        log.debug("compiled annealing unavailable, the Python loop runs: %s", error)
        return None
    function.argtypes = [
        ctypes.POINTER(_Board),
        _DOUBLE,
        ctypes.c_longlong,
        ctypes.c_double,
    ]
    function.restype = ctypes.c_int
    return library


def anneal(board: Board, rng: random.Random, rounds: int, temperature: float) -> bool:
    """Run :meth:`Board.anneal`'s loop compiled, if it is available: True when it ran (the board
    and ``rng`` are then exactly as the Python loop leaves them), False when it did not (both
    untouched: the caller runs the Python loop)."""
    if rounds <= 0 or not board.arcs or _forced_python():
        return False
    library = load()
    if library is None:
        return False
    try:
        flat = _Flat(board)
    except (OverflowError, TypeError, ValueError) as error:  # a figure no C int or double holds
        log.debug("compiled annealing declined, the Python loop runs: %s", error)
        return False
    state = rng.getstate()
    draws = _draws(rng, rounds)
    code = library.jv_anneal(
        ctypes.byref(flat.struct), _pointer(draws, ctypes.c_double), rounds, float(temperature)
    )
    if code != 0:  # nothing changed: the Python loop takes over from the same draws
        log.debug("compiled annealing declined (code %d), the Python loop runs", code)
        rng.setstate(state)
        return False
    flat.write_back(board)
    return True


def _draws(rng: random.Random, rounds: int, chunk: int = 1 << 16) -> array[float]:
    """``rounds`` values of ``rng.random()``, in order: what the Python loop draws, one a
    round. Drawn in chunks, so no list of millions of floats is ever built."""
    draw, draws = rng.random, array("d")
    for start in range(0, rounds, chunk):
        draws.extend([draw() for _ in itertools.repeat(None, min(chunk, rounds - start))])
    return draws


def _pointer(buffer: Any, kind: Any) -> Any:
    """A ctypes pointer into ``buffer`` (an array or bytearray), which must outlive its use."""
    return ctypes.cast((kind * len(buffer)).from_buffer(buffer), ctypes.POINTER(kind))


def _groups(sizes: list[int]) -> array[int]:
    """Start offsets of consecutive groups of ``sizes`` (one more entry than groups)."""
    start = array("i", [0])
    for size in sizes:
        start.append(start[-1] + size)
    return start


def _fill(groups: list[list[int]], start: array[int], total: int) -> tuple[array[int], array[int]]:
    """Each group's arcs copied to its place in one flat array, with each group's count."""
    items = array("i", [0]) * total
    counts = array("i", [len(g) for g in groups])
    for g, members in enumerate(groups):
        items[start[g] : start[g] + len(members)] = array("i", members)
    return items, counts


class _Flat:
    """The board as the flat arrays ``_anneal.c`` reads and writes; kept alive while it runs."""

    def __init__(self, board: Board) -> None:
        n = len(board.arcs)
        givers = array("i", [o for o, _ in board.a_owners])
        takers = array("i", [q for _, q in board.a_owners])
        self.pair_keys: list[tuple[int, int]] = []
        pair_ids: dict[tuple[int, int], int] = {}
        for owners in board.a_owners:
            if owners not in pair_ids:
                pair_ids[owners] = len(self.pair_keys)
                self.pair_keys.append(owners)
        a_pair = array("i", [pair_ids[owners] for owners in board.a_owners])
        words, niches = _niche_words(board.a_niches)
        self.list_start = _groups([len(x) for x in board.list_arcs])
        self.promo_start = _groups(_sizes(board.a_promo, len(board.promo_want)))
        self.pair_start = _groups(_sizes(a_pair, len(self.pair_keys)))
        self.list_items, self.list_count = _fill(board.on_list, self.list_start, n)
        self.promo_items, self.promo_count = _fill(board.on_promo, self.promo_start, n)
        pairs = [board.on_pair.get(key, []) for key in self.pair_keys]
        self.pair_items, self.pair_count = _fill(pairs, self.pair_start, n)
        self.pair_seen = bytearray(key in board.on_pair for key in self.pair_keys)
        self.pair_new = array("i", [0]) * len(self.pair_keys)
        self.pair_new_count = array("i", [0])
        self.partner_touched = bytearray(len(board.partners))
        self.balance = array("d", board.balance)
        self.pen_now = array("d", board.pen_now)
        self.totals = array("d", [board.value, board.kept])
        self.chosen = board.chosen
        self.keep: list[Any] = [
            array("i", board.a_list),
            array("i", board.a_promo),
            givers,
            takers,
            a_pair,
            array("i", board.a_first),
            array("i", board.a_last),
            array("i", board.a_rank),
            board.a_partial,
            board.locked,
            array("d", board.a_value),
            array("d", board.bonus),
            niches,
            array("i", board.list_cap),
            array("i", board.list_slots),
            array("i", board.list_days),
            array("i", board.promo_want),
            array("d", board.tau),
        ]
        self.struct = self._struct(board, words)

    def _struct(self, board: Board, words: int) -> _Board:
        i, d, b = ctypes.c_int, ctypes.c_double, ctypes.c_ubyte
        k = self.keep
        return _Board(
            len(board.arcs),
            len(board.list_cap),
            len(board.promo_want),
            len(board.partners),
            len(self.pair_keys),
            words,
            max(-1, min(board.pair_cap, _INT_MAX)),  # the same answers: counts are >= 0
            int(board.any_locked),
            board.w1,
            board.w2,
            *(_pointer(x, i) for x in k[0:8]),
            _pointer(k[8], b),
            _pointer(k[9], b),
            _pointer(k[10], d),
            _pointer(k[11], d),
            _pointer(k[12], ctypes.c_ulonglong),
            *(_pointer(x, i) for x in k[13:17]),
            _pointer(k[17], d),
            _pointer(self.chosen, b),
            _pointer(self.balance, d),
            _pointer(self.pen_now, d),
            _pointer(self.totals, d),
            *(_pointer(x, i) for x in (self.list_start, self.promo_start, self.pair_start)),
            *(_pointer(x, i) for x in (self.list_count, self.promo_count, self.pair_count)),
            *(_pointer(x, i) for x in (self.list_items, self.promo_items, self.pair_items)),
            _pointer(self.pair_seen, b),
            _pointer(self.pair_new, i),
            _pointer(self.pair_new_count, i),
            _pointer(self.partner_touched, b),
        )

    def write_back(self, board: Board) -> None:
        """Leave in ``board`` what the Python loop would: the lists in place and in order, the
        pairs that became keys in the order they did, and floats only where it wrote them."""
        _read_groups(board.on_list, self.list_items, self.list_start, self.list_count)
        _read_groups(board.on_promo, self.promo_items, self.promo_start, self.promo_count)
        for pid in self.pair_new[: self.pair_new_count[0]]:
            board.on_pair[self.pair_keys[pid]] = []
        for pid, key in enumerate(self.pair_keys):
            if self.pair_seen[pid]:
                start, count = self.pair_start[pid], self.pair_count[pid]
                board.on_pair[key][:] = self.pair_items[start : start + count]
        for p, touched in enumerate(self.partner_touched):
            if touched:
                board.balance[p] = self.balance[p]
                board.pen_now[p] = self.pen_now[p]
        board.value, board.kept = self.totals


def _read_groups(
    groups: list[list[int]], items: array[int], start: array[int], counts: array[int]
) -> None:
    for g, members in enumerate(groups):
        members[:] = items[start[g] : start[g] + counts[g]]


def _sizes(keys: Any, groups: int) -> list[int]:
    """How many of ``keys`` fall in each of ``groups`` groups."""
    sizes = [0] * groups
    for key in keys:
        sizes[key] += 1
    return sizes


def _niche_words(niches: list[frozenset[int]]) -> tuple[int, array[int]]:
    """Each arc's niches as a bitmask of ``words`` 64-bit words (one bit a niche)."""
    count = 1 + max((x for arc in niches for x in arc), default=-1)
    words = max(1, (count + 63) // 64)
    masks: dict[frozenset[int], list[int]] = {}
    flat = array("Q")
    for arc in niches:
        mask = masks.get(arc)
        if mask is None:
            mask = [0] * words
            for x in arc:
                mask[x // 64] |= 1 << (x % 64)
            masks[arc] = mask
        flat.extend(mask)
    return words, flat
