"""The statement's two charts as PNG bytes, drawn with matplotlib's object API.

A :class:`~matplotlib.figure.Figure` is made directly, without pyplot, so no global figure
manager is touched and charts can be drawn from several threads at once. Output is
deterministic: fixed size and dpi, Agg (the default canvas for PNG), and no ``Software``
metadata, so the same data gives the same bytes. Images are 1200 px wide, shown at up to 560 CSS px
(sharp on 2x screens). No data gives ``b""``: the caller leaves the chart out.

Partner names are drawn with ``parse_math=False``: a ``$`` in a name is text, not mathtext.
"""

from __future__ import annotations

import io

from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, MaxNLocator

from jvmail.reports.model import WeekPoint

__all__ = ["GIVEN_COLOR", "RECEIVED_COLOR", "clicks_chart", "history_chart"]

GIVEN_COLOR = "#0f766e"  # teal: what the partner gave
RECEIVED_COLOR = "#6366f1"  # indigo: what it received
_INK = "#1f2933"
_MUTED = "#52606d"
_RULE = "#e4e7eb"
_WIDTH_IN = 5.0  # at _DPI: 1200 px; narrow in inches, so text stays legible on a phone
_DPI = 240
_TOP_PARTNERS = 8
_NAME_CHARS = 22


def history_chart(points: list[WeekPoint], metric: str) -> bytes:
    """Cumulative value given vs received, one point per week, oldest first."""
    if not points or not any(p.given or p.received for p in points):
        return b""
    fig = Figure(figsize=(_WIDTH_IN, 2.9), dpi=_DPI, facecolor="white")
    ax = fig.add_subplot()
    xs = list(range(len(points)))
    given = [p.given for p in points]
    received = [p.received for p in points]
    ax.fill_between(xs, given, received, color="#cbd5e1", alpha=0.35, linewidth=0)
    ax.plot(xs, given, color=GIVEN_COLOR, linewidth=2.4, marker="o", markersize=3.5)
    ax.plot(xs, received, color=RECEIVED_COLOR, linewidth=2.4, marker="o", markersize=3.5)
    ax.plot([], [], color=GIVEN_COLOR, linewidth=2.4, label="You gave")
    ax.plot([], [], color=RECEIVED_COLOR, linewidth=2.4, label="You received")
    step = max(1, (len(points) + 5) // 6)  # at most about six week labels
    ax.set_xticks(xs[::step], [p.week.rpartition("-")[2] for p in points][::step])
    ax.set_xlim(-0.3, len(points) - 0.7)
    ax.set_ylim(bottom=0)
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
    return _png(fig)


def clicks_chart(clicks: dict[str, int]) -> bytes:
    """This week's clicks by partner, as horizontal bars: the top eight, most first."""
    top = sorted(((n, name) for name, n in clicks.items() if n > 0), key=lambda c: (-c[0], c[1]))
    top = top[:_TOP_PARTNERS]
    if not top:
        return b""
    fig = Figure(figsize=(_WIDTH_IN, 0.5 + 0.4 * len(top)), dpi=_DPI, facecolor="white")
    ax = fig.add_subplot()
    ys = list(range(len(top)))
    counts = [n for n, _ in top]
    ax.barh(ys, counts, height=0.62, color=GIVEN_COLOR)
    labels = [_short(name) for _, name in top]
    ax.set_yticks(ys, labels, parse_math=False, fontsize=11, color=_INK)
    ax.invert_yaxis()  # most clicks on top
    ax.set_xlim(0, max(counts) * 1.18)
    for y, n in zip(ys, counts, strict=True):
        ax.text(n, y, f" {n:,}", va="center", ha="left", fontsize=11, color=_INK)
    ax.set_xticks([])
    _tidy(ax)
    ax.spines["bottom"].set_visible(False)
    ax.tick_params(axis="y", length=0)
    return _png(fig)


def _short(name: str) -> str:
    name = " ".join(name.split())
    return name if len(name) <= _NAME_CHARS else name[: _NAME_CHARS - 1].rstrip() + "…"


def _tidy(ax: Axes) -> None:
    for side in ("top", "right", "left"):
        ax.spines[side].set_visible(False)
    ax.spines["bottom"].set_color(_RULE)
    ax.tick_params(colors=_MUTED, labelsize=10, length=0)
    ax.set_axisbelow(True)


def _png(fig: Figure) -> bytes:
    fig.tight_layout(pad=0.6)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=_DPI, metadata={"Software": None})
    return buffer.getvalue()
