"""The charts' figures are made once per thread and redrawn per partner: a reused figure gives
the bytes a new one gives, whatever was drawn on it before; the PNG encoder is lossless; and the
statements rendered in worker processes are those rendered here, byte for byte, taken lazily
from their source."""

from __future__ import annotations

import dataclasses
import io
import itertools
import struct
import zlib
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pytest
from matplotlib.figure import Figure
from PIL import Image

from jvmail.reports.charts import clicks_chart, history_chart, png_bytes
from jvmail.reports.model import Statement, WeekPoint
from jvmail.reports.render import processes_for, render_statement, render_statements
from tests.reports import samples

PNG = b"\x89PNG\r\n\x1a\n"


def _in_a_new_thread(draw: Callable[[], bytes]) -> bytes:
    """``draw()`` in a thread of its own: with figures of its own, made for this call."""
    with ThreadPoolExecutor(1) as thread:
        return thread.submit(draw).result()


def _points(n: int, scale: float) -> list[WeekPoint]:
    return [WeekPoint(f"2026-W{w + 1:02d}", scale * w, scale * w * 0.8 + 3) for w in range(n)]


def _pixels(png: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(png)) as image:
        return np.asarray(image.convert("RGB"))


def test_a_reused_history_figure_draws_what_a_new_one_does() -> None:
    busy = samples.busy().history
    new = _in_a_new_thread(lambda: history_chart(busy, "clicks"))
    others = [_points(3, 10_000), _points(1, 7), _points(14, 0.5), busy[:5]]
    drawn = [history_chart(points, "clicks") for points in [*others, busy]]
    assert drawn[-1] == new  # after other week counts, scales and labels: the same bytes
    assert len(set(drawn)) == len(drawn)  # and each of them is its own chart
    assert history_chart(busy, "clicks") == new


def test_a_reused_clicks_figure_draws_what_a_new_one_does() -> None:
    three = {"Lumen Labs": 458, "Copper Kettle": 96, "Harbor Yoga": 58}
    new = _in_a_new_thread(lambda: clicks_chart(three))
    before = [
        {"$5 Deals $$": 9_999_999, "A very long partner name indeed, far too long": 1, "B": 2},
        {"Solo": 1},
        {f"Partner {n}": n for n in range(1, 12)},
    ]
    drawn = [clicks_chart(clicks) for clicks in [*before, three]]
    assert drawn[-1] == new
    assert len(set(drawn)) == len(drawn)


def test_a_remembered_layout_draws_what_a_fresh_layout_does(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def nudged(points: list[WeekPoint], by: float) -> list[WeekPoint]:
        return [WeekPoint(p.week, p.given * by, p.received) for p in points]

    # Each pair has the same tick labels and different data: the second of a pair is drawn with
    # the margins found for the first, and must come out as a fresh layout would draw it.
    pairs = [(_points(12, 100), 0.99), (_points(12, 9_000), 0.98), (_points(5, 3), 0.9)]
    history_chart(_points(1, 1), "clicks")  # this thread's figure exists
    layouts = []
    real = Figure.tight_layout

    def counted(fig: Figure, *args: Any, **kwargs: Any) -> None:
        layouts.append(fig)
        real(fig, *args, **kwargs)

    monkeypatch.setattr(Figure, "tight_layout", counted)
    for points, by in pairs:
        first = history_chart(points, "clicks")
        before = len(layouts)
        second = history_chart(nudged(points, by), "clicks")
        assert len(layouts) == before  # the first's layout was reused
        assert first != second
        fresh = _in_a_new_thread(lambda p=points, b=by: history_chart(nudged(p, b), "clicks"))
        assert fresh == second
        assert len(layouts) == before + 1  # the new thread's figure laid it out afresh


def test_png_bytes_is_lossless_rgb_with_the_density() -> None:
    rng = np.random.default_rng(7)
    rgba = np.full((37, 53, 4), 255, np.uint8)
    rgba[..., :3] = rng.integers(0, 256, (37, 53, 3), dtype=np.uint8)
    png = png_bytes(rgba, 240)
    assert png.startswith(PNG)
    width, height, depth, colour = struct.unpack(">IIBB", png[16:26])
    assert (width, height, depth, colour) == (53, 37, 8, 2)  # 8-bit RGB
    with Image.open(io.BytesIO(png)) as image:
        assert image.info["dpi"] == pytest.approx((240, 240), abs=0.01)
        assert np.array_equal(np.asarray(image), rgba[..., :3])
    chunks = []
    at = len(PNG)
    while at < len(png):
        (size,) = struct.unpack(">I", png[at : at + 4])
        kind, data = png[at + 4 : at + 8], png[at + 8 : at + 8 + size]
        assert png[at + 8 + size : at + 12 + size] == struct.pack(">I", zlib.crc32(kind + data))
        chunks.append(kind)
        at += 12 + size
    assert chunks == [b"IHDR", b"pHYs", b"IDAT", b"IEND"]  # no text chunks: no metadata


def test_charts_are_opaque_and_as_wide_as_ever() -> None:
    st = samples.busy()
    for png in (history_chart(st.history, st.metric), clicks_chart(st.clicks_by_partner)):
        pixels = _pixels(png)
        assert pixels.shape[1] == 1200
        assert (pixels[0, 0] == 255).all()  # a white canvas
        assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 50  # drawn, antialiased


def _variants(count: int) -> Iterator[Statement]:
    """``count`` statements made from the samples, each with its own charts."""
    makers = itertools.cycle(samples.SAMPLES.values())
    for n in range(count):
        st = next(makers)()
        history = [dataclasses.replace(p, given=p.given + 17 * n) for p in st.history]
        clicks = {name: c + n for name, c in st.clicks_by_partner.items()}
        yield dataclasses.replace(
            st, partner_slug=f"{st.partner_slug}-{n}", history=history, clicks_by_partner=clicks
        )


def test_worker_processes_render_the_same_bytes_as_this_one() -> None:
    statements = list(_variants(40))
    here = [render_statement(st) for st in statements]
    there = list(render_statements(statements, processes=2))
    assert [st for st, _ in there] == statements  # in the order given
    assert [r for _, r in there] == here
    assert sum(len(r.images) for r in here) > 40  # the quiet ones have none


def test_statements_are_taken_lazily_so_memory_stays_bounded() -> None:
    taken = 0

    def endless() -> Iterator[Statement]:
        nonlocal taken
        for st in _variants(10**9):
            taken += 1
            yield st

    rendered = render_statements(endless(), processes=2)
    first = list(itertools.islice(rendered, 20))
    rendered.close()  # stops the workers
    assert [st.partner_slug for st, _ in first][:2] == ["pixel-and-pine-0", "harbor-yoga-1"]
    handed_out, ahead = 2, 2 * 2  # chunks of 16: the 20 results, and two per worker
    assert taken <= (handed_out + ahead) * 16


def test_an_error_in_a_worker_is_raised_to_the_caller() -> None:
    broken = dataclasses.replace(samples.busy(), metric="clicks", history=[object()])  # type: ignore[list-item]
    statements = [*_variants(20), broken]
    with pytest.raises(AttributeError):
        list(render_statements(statements, processes=2))


def test_small_batches_are_rendered_here() -> None:
    assert processes_for(0) == 1
    assert processes_for(3) == 1  # a pool would cost more than it saves
    assert 1 <= processes_for(2_000) <= 2_000 // 16
