"""The statement's two charts as PNG bytes, drawn with matplotlib's object API.

A :class:`~matplotlib.figure.Figure` is made directly, without pyplot, so no global figure
manager is touched. Each thread keeps its own figures: the history chart's, and one clicks
chart's per number of bars. They are set up once and only their data, limits and labels are
replaced per partner, which is what makes a statement cheap to draw; a figure is drawn by one
thread only. Every call starts the layout from where a new figure starts, so a reused figure gives
the same bytes as a new one. The history chart's margins depend only on its tick labels, which
many partners share: a figure remembers the margins it found per set of labels.

Output is deterministic: fixed size and dpi, drawn once by Agg, encoded here as an RGB PNG (the
canvas is opaque, so no alpha channel is lost) with unfiltered rows and fast zlib compression,
and no metadata beyond the pixel density. The same data gives the same bytes. Images are 1200 px
wide, shown at up to 560 CSS px (sharp on 2x screens). No data gives ``b""``: the caller leaves
the chart out.

Partner names are drawn with ``parse_math=False``: a ``$`` in a name is text, not mathtext.
"""

from __future__ import annotations

import struct
import threading
import zlib
from collections.abc import Hashable, Sequence

import numpy as np
import numpy.typing as npt
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.collections import PolyCollection
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, MaxNLocator

from jvmail.reports.model import WeekPoint

__all__ = ["GIVEN_COLOR", "RECEIVED_COLOR", "clicks_chart", "history_chart", "png_bytes"]

GIVEN_COLOR = "#0f766e"  # teal: what the partner gave
RECEIVED_COLOR = "#6366f1"  # indigo: what it received
_INK = "#1f2933"
_MUTED = "#52606d"
_RULE = "#e4e7eb"
_FILL = "#cbd5e1"
_WIDTH_IN = 5.0  # at _DPI: 1200 px; narrow in inches, so text stays legible on a phone
_DPI = 240
_TOP_PARTNERS = 8
_NAME_CHARS = 22
_LAYOUTS = 256  # layouts remembered per figure
_ZLIB_LEVEL = 1  # charts are mostly flat colour: level 1 is ~3x faster than 6, ~25% larger


def history_chart(points: list[WeekPoint], metric: str) -> bytes:
    """Cumulative value given vs received, one point per week, oldest first."""
    if not points or not any(p.given or p.received for p in points):
        return b""
    return _FIGURES.history().draw(points)


def clicks_chart(clicks: dict[str, int]) -> bytes:
    """This week's clicks by partner, as horizontal bars: the top eight, most first."""
    top = sorted(((n, name) for name, n in clicks.items() if n > 0), key=lambda c: (-c[0], c[1]))
    top = top[:_TOP_PARTNERS]
    if not top:
        return b""
    return _FIGURES.clicks(len(top)).draw([n for n, _ in top], [name for _, name in top])


class _Chart:
    """A figure with one axes on an Agg canvas, and how a new figure lays it out."""

    def __init__(self, height_in: float) -> None:
        self.fig = Figure(figsize=(_WIDTH_IN, height_in), dpi=_DPI, facecolor="white")
        self.canvas = FigureCanvasAgg(self.fig)
        self.ax = self.fig.add_subplot()
        self._start = self._margins()
        self._layouts: dict[Hashable, dict[str, float]] = {}

    def _margins(self) -> dict[str, float]:
        p = self.fig.subplotpars
        return {
            "left": p.left,
            "bottom": p.bottom,
            "right": p.right,
            "top": p.top,
            "wspace": p.wspace,
            "hspace": p.hspace,
        }

    def png(self, layout_key: Hashable = None) -> bytes:
        """Lay the figure out as a new one would be, draw it once, and encode it.

        ``layout_key`` names everything the layout depends on (the tick labels' texts): a key
        seen before reuses the margins ``tight_layout`` found then, which is a fifth of a
        chart's time. ``None`` always lays out afresh."""
        known = self._layouts.get(layout_key) if layout_key is not None else None
        if known is not None:
            self.fig.subplots_adjust(**known)
        else:
            self.fig.subplots_adjust(**self._start)  # tight_layout starts from the same place
            self.fig.tight_layout(pad=0.6)
            if layout_key is not None:
                if len(self._layouts) >= _LAYOUTS:
                    self._layouts.clear()
                self._layouts[layout_key] = self._margins()
        self.canvas.draw()  # type: ignore[no-untyped-call]  # backend_agg has no stubs
        rgba = np.asarray(self.canvas.buffer_rgba())  # type: ignore[no-untyped-call]
        return png_bytes(rgba, _DPI)


class _History(_Chart):
    def __init__(self) -> None:
        super().__init__(2.9)
        ax = self.ax
        self.fill: PolyCollection | None = None
        (self.given,) = ax.plot(
            [], [], color=GIVEN_COLOR, linewidth=2.4, marker="o", markersize=3.5
        )
        (self.received,) = ax.plot(
            [], [], color=RECEIVED_COLOR, linewidth=2.4, marker="o", markersize=3.5
        )
        ax.plot([], [], color=GIVEN_COLOR, linewidth=2.4, label="You gave")
        ax.plot([], [], color=RECEIVED_COLOR, linewidth=2.4, label="You received")
        ax.yaxis.set_major_locator(MaxNLocator(nbins=4, integer=True))
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}"))
        _tidy(ax)
        ax.grid(axis="y", color=_RULE, linewidth=0.8)
        ax.legend(  # above the plot, where no line can run under it
            loc="lower left",
            bbox_to_anchor=(0, 1.0),
            frameon=False,
            fontsize=11,
            ncols=2,
            labelcolor=_INK,
            borderaxespad=0.2,
            handlelength=1.6,
        )

    def draw(self, points: Sequence[WeekPoint]) -> bytes:
        ax = self.ax
        xs = list(range(len(points)))
        given = [p.given for p in points]
        received = [p.received for p in points]
        if self.fill is not None:
            self.fill.remove()
        self.fill = ax.fill_between(xs, given, received, color=_FILL, alpha=0.35, linewidth=0)
        self.given.set_data(xs, given)
        self.received.set_data(xs, received)
        step = max(1, (len(points) + 5) // 6)  # at most about six week labels
        ax.set_xticks(xs[::step], [p.week.rpartition("-")[2] for p in points][::step])
        ax.set_xlim(-0.3, len(points) - 0.7)
        ax.relim()  # the data limits of these points alone, then the top as autoscaling puts it
        ax.set_autoscaley_on(True)
        ax.autoscale_view(scalex=False)
        ax.set_ylim(bottom=0)
        low, high = ax.get_ylim()
        ticks = [v for v in ax.yaxis.get_major_locator()() if low <= v <= high]
        labels = ax.yaxis.get_major_formatter().format_ticks(ticks)
        weeks = tuple(label.get_text() for label in ax.get_xticklabels())
        return self.png((len(points), weeks, tuple(labels)))


class _Clicks(_Chart):
    def __init__(self, bars: int) -> None:
        super().__init__(0.5 + 0.4 * bars)
        ax = self.ax
        self.ys = list(range(bars))
        self.bars = ax.barh(self.ys, [1] * bars, height=0.62, color=GIVEN_COLOR)
        ax.set_yticks(self.ys, [""] * bars, parse_math=False, fontsize=11, color=_INK)
        ax.invert_yaxis()  # most clicks on top
        self.counts = [
            ax.text(1, y, "", va="center", ha="left", fontsize=11, color=_INK) for y in self.ys
        ]
        ax.set_xticks([])
        _tidy(ax)
        ax.spines["bottom"].set_visible(False)
        ax.tick_params(axis="y", length=0)

    def draw(self, counts: list[int], names: list[str]) -> bytes:
        ax = self.ax
        for bar, text, y, n in zip(self.bars, self.counts, self.ys, counts, strict=True):
            bar.set_width(n)
            text.set_position((n, y))
            text.set_text(f" {n:,}")
        ax.set_yticks(self.ys, [_short(name) for name in names])
        ax.set_xlim(0, max(counts) * 1.18)
        return self.png()


class _Figures(threading.local):
    """This thread's figures, made on first use: the history chart's, and the clicks chart's
    per number of bars (at most eight)."""

    def __init__(self) -> None:
        self._history: _History | None = None
        self._clicks: dict[int, _Clicks] = {}

    def history(self) -> _History:
        if self._history is None:
            self._history = _History()
        return self._history

    def clicks(self, bars: int) -> _Clicks:
        if bars not in self._clicks:
            self._clicks[bars] = _Clicks(bars)
        return self._clicks[bars]


_FIGURES = _Figures()


def _short(name: str) -> str:
    name = " ".join(name.split())
    return name if len(name) <= _NAME_CHARS else name[: _NAME_CHARS - 1].rstrip() + "…"


def _tidy(ax: Axes) -> None:
    for side in ("top", "right", "left"):
        ax.spines[side].set_visible(False)
    ax.spines["bottom"].set_color(_RULE)
    ax.tick_params(colors=_MUTED, labelsize=10, length=0)
    ax.set_axisbelow(True)


def png_bytes(rgba: npt.NDArray[np.uint8], dpi: int) -> bytes:
    """An opaque ``(height, width, 4)`` image as PNG: 8-bit RGB, every row unfiltered, one
    IDAT chunk, and the density (``pHYs``) for ``dpi``. Filtering rows (what Pillow does) costs
    more than it saves on flat charts. See the PNG specification, sections 11.2 and 12."""
    height, width = rgba.shape[:2]
    rows = np.empty((height, 1 + 3 * width), np.uint8)
    rows[:, 0] = 0  # each row: its filter type (0, None), then its pixels
    rgb = rows[:, 1:].reshape(height, width, 3)  # a view into rows
    for channel in range(3):  # one channel at a time: ~5x faster than copying [..., :3]
        rgb[:, :, channel] = rgba[:, :, channel]
    per_metre = round(dpi / 0.0254)
    return b"".join(
        (
            b"\x89PNG\r\n\x1a\n",
            _chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)),
            _chunk(b"pHYs", struct.pack(">IIB", per_metre, per_metre, 1)),
            _chunk(b"IDAT", zlib.compress(rows.data, _ZLIB_LEVEL)),
            _chunk(b"IEND", b""),
        )
    )


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
