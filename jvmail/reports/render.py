"""Render a statement or the coordinator's summary as an email: subject, HTML and plain text.

Templates are the trusted ``templates/statement.*.j2`` and ``templates/summary.*.j2`` (found like
the mailing wrapper, see :func:`jvmail.dispatch.render.templates_dir`). Names, subjects and list
names are written by partners, so the HTML is autoescaped; undefined values raise
(``StrictUndefined``). CSS is inlined once, with css_inline, as for mailings: mail clients drop
``<style>``, and the layout is fluid (single column, at most 600 px) so it needs no media query.

The charts are PNGs in :attr:`RenderedStatement.images`, keyed by Content-ID; the HTML shows
them as ``cid:<id>``. :func:`write_files` rewrites those references to PNG files beside the HTML,
so a statement previews in a browser.

A hub's statements are rendered by :func:`render_statements`, in one worker process per core
when there are enough of them (:func:`processes_for`): the charts take most of a statement's
time, and a process draws one chart at a time.

Numbers are for people: ``1,234``; at most one decimal (``12.5``); reliability in whole percent,
never rounded up to 100% unless every commitment was kept.
"""

from __future__ import annotations

import datetime as dt
import math
import multiprocessing
import os
import re
from collections import deque
from collections.abc import Generator, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass
from itertools import islice
from pathlib import Path

import css_inline
from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape

from jvmail.dispatch.render import templates_dir
from jvmail.reports.charts import clicks_chart, history_chart
from jvmail.reports.model import Commitment, CoordinatorSummary, Statement

__all__ = [
    "CLICKS_CID",
    "HISTORY_CID",
    "RenderedStatement",
    "amount",
    "headline",
    "number",
    "processes_for",
    "render_statement",
    "render_statements",
    "render_summary",
    "write_files",
]

HISTORY_CID = "history@jvmail"
CLICKS_CID = "clicks@jvmail"
_UNITS = {  # metric -> (one, many)
    "clicks": ("click", "clicks"),
    "delivered": ("delivery", "deliveries"),
    "conversions": ("conversion", "conversions"),
}
_WHOLE_METRICS = {"clicks", "delivered"}  # counted in whole units: under half a unit is even
_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_CID_SRC = re.compile(r"""(src\s*=\s*["'])cid:([^"']+)(["'])""", re.IGNORECASE)
_CHUNK = 16  # statements per task of a worker process: enough to make passing them cheap


@dataclass(frozen=True)
class RenderedStatement:
    """One message: ``images`` maps Content-ID -> PNG, shown in ``html`` as ``cid:<id>``."""

    subject: str
    html: str
    text: str
    images: dict[str, bytes]


def number(value: float) -> str:
    """``1234`` -> ``1,234``; ``12.25`` -> ``12.2``: at most one decimal, none when whole."""
    rounded = round(value, 1)
    if rounded == int(rounded):
        return f"{int(rounded):,}"
    return f"{rounded:,.1f}"


def amount(value: float, metric: str) -> str:
    """``42 clicks``, ``1 click``, ``3.5 deliveries``: a value with its unit."""
    one, many = _UNITS.get(metric, (metric, metric))
    shown = number(value)
    return f"{shown} {one if shown == '1' else many}"


def percent(part: int, whole: int) -> str:
    """``23 of 24`` -> ``95%``: rounded down, so 100% means every one."""
    return f"{math.floor(100 * part / whole)}%" if whole else ""


def rate(value: float, decimals: int) -> str:
    """A rate as a percentage: ``0.0621`` -> ``6.2%``."""
    return f"{100 * value:.{decimals}f}%"


def signed(value: float) -> str:
    """``+338``, ``0``, and ``-270`` written with a true minus sign (U+2212)."""
    shown = number(abs(value))
    if shown == "0":
        return shown
    return f"+{shown}" if value > 0 else f"\u2212{shown}"


def day(value: dt.date) -> str:
    """``Tue 1 Dec``, the same in every locale."""
    return f"{_DAYS[value.weekday()]} {value.day} {_MONTHS[value.month - 1]}"


def span(start: dt.date, end: dt.date) -> str:
    """``23-29 Nov 2026``, ``30 Nov - 6 Dec 2026``, ``28 Dec 2026 - 3 Jan 2027`` (en dashes)."""
    last = f"{end.day} {_MONTHS[end.month - 1]} {end.year}"
    if start.year != end.year:
        return f"{start.day} {_MONTHS[start.month - 1]} {start.year} \u2013 {last}"
    if start.month != end.month:
        return f"{start.day} {_MONTHS[start.month - 1]} \u2013 {last}"
    return f"{start.day}\u2013{last}"


def tone(st: Statement) -> str:
    """``owed`` (the alliance owes P), ``owing`` or ``even``: the headline's colour."""
    if _even(st.net, st.metric):
        return "even"
    return "owed" if st.net > 0 else "owing"


def headline(st: Statement) -> str:
    """The one line that says whether the alliance is fair to the partner."""
    if _even(st.net, st.metric):
        return "You and the alliance are even"
    if st.net > 0:
        return f"The alliance owes you {amount(st.net, st.metric)}"
    return f"You owe the alliance {amount(-st.net, st.metric)}"


def _even(net: float, metric: str) -> bool:
    return abs(net) < (0.5 if metric in _WHOLE_METRICS else 0.05)


def sending(commitments: list[Commitment]) -> str:
    """What follows "Next week you send:" in the headline."""
    if not commitments:
        return "nothing planned yet."
    if len(commitments) == 1:
        c = commitments[0]
        return f"\u201c{c.promotion}\u201d for {c.owner} to {c.list}, {day(c.day)}."
    shown = [f"{day(c.day)} for {c.owner}" for c in commitments[:4]]
    if len(commitments) > len(shown):
        shown.append(f"{len(commitments) - len(shown)} more")
    return f"{', '.join(shown[:-1])} and {shown[-1]}."


def _environment() -> Environment:
    env = Environment(
        loader=FileSystemLoader(templates_dir()),
        autoescape=select_autoescape(["html.j2"]),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters.update(
        number=number, amount=amount, percent=percent, rate=rate, signed=signed, day=day
    )
    return env


_ENV = _environment()


def _one_line(text: str) -> str:
    return " ".join(text.split())


def render_statement(st: Statement) -> RenderedStatement:
    """The partner's weekly statement; a quiet week gets a short one, without charts."""
    images: dict[str, bytes] = {}
    if not st.quiet:
        charts = {
            HISTORY_CID: history_chart(st.history, st.metric),
            CLICKS_CID: clicks_chart(st.clicks_by_partner),
        }
        images = {cid: png for cid, png in charts.items() if png}
    verdict = headline(st)
    subject = _one_line(f"{verdict} \u00b7 {st.hub} statement, {span(st.start, st.end)}")
    values = {
        "s": st,
        "subject": subject,
        "headline": verdict,
        "tone": tone(st),
        "sending": sending(st.next_week),
        "span": span(st.start, st.end),
        "images": images,
        "history_cid": HISTORY_CID,
        "clicks_cid": CLICKS_CID,
        "unit": _UNITS.get(st.metric, (st.metric, st.metric))[1],
    }
    html = _ENV.get_template("statement.html.j2").render(values)
    text = _ENV.get_template("statement.txt.j2").render(values)
    return RenderedStatement(subject, css_inline.inline(html), text, images)


def processes_for(count: int) -> int:
    """How many processes are worth rendering ``count`` statements: one per core this process
    may run on, no more than there are chunks of them, and 1 (no pool) under two chunks, where
    starting the workers would cost more than they save."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, min(cores or 1, count // _CHUNK))


def render_statements(
    statements: Iterable[Statement], *, processes: int = 1
) -> Generator[tuple[Statement, RenderedStatement], None, None]:
    """Each statement with its rendering, in the order given; the same bytes as
    :func:`render_statement` gives.

    With ``processes`` above 1, chunks of statements are rendered by that many worker processes
    while the caller takes the results. The workers are started by a forkserver (spawned where
    there is none): they share nothing with this process, not its threads nor its database
    connections, and they import the program's main module, which must not act when imported
    (``if __name__ == "__main__":``), as :mod:`multiprocessing` requires. At most two
    chunks per worker are taken from ``statements`` ahead of the caller, so memory stays bounded
    however many there are, and ``statements`` may be a generator. An error in a worker is
    raised here; the workers are stopped when the generator is exhausted or closed."""
    if processes <= 1:
        for st in statements:
            yield st, render_statement(st)
        return
    chunks = _chunks(statements)
    methods = multiprocessing.get_all_start_methods()
    context = multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")
    context.set_forkserver_preload([__name__])  # its workers start with matplotlib loaded
    pool = ProcessPoolExecutor(processes, mp_context=context)
    try:
        ahead: deque[tuple[list[Statement], Future[list[RenderedStatement]]]] = deque()
        for chunk in islice(chunks, 2 * processes):
            ahead.append((chunk, pool.submit(_render_chunk, chunk)))
        while ahead:
            chunk, rendered = ahead.popleft()
            for following in islice(chunks, 1):
                ahead.append((following, pool.submit(_render_chunk, following)))
            yield from zip(chunk, rendered.result(), strict=True)
    finally:
        pool.shutdown(cancel_futures=True)


def _chunks(statements: Iterable[Statement]) -> Iterator[list[Statement]]:
    remaining = iter(statements)
    while chunk := list(islice(remaining, _CHUNK)):
        yield chunk


def _render_chunk(statements: list[Statement]) -> list[RenderedStatement]:
    """In a worker process: one task."""
    return [render_statement(st) for st in statements]


def render_summary(summary: CoordinatorSummary) -> RenderedStatement:
    """The coordinator's week: totals, balance extremes, missed commitments, account health."""
    warned = [p for p in summary.providers if p.warning]
    subject = (
        f"{summary.hub} coordinator summary, {summary.week}: {number(summary.mailings)} "
        f"mailings, {number(summary.human_clicks)} human clicks"
    )
    if warned:
        subject += f", {len(warned)} sending account{'s' if len(warned) > 1 else ''} to check"
    subject = _one_line(subject)
    values = {
        "s": summary,
        "subject": subject,
        "warned": warned,
        "unit": _UNITS.get(summary.metric, (summary.metric, summary.metric))[1],
    }
    html = _ENV.get_template("summary.html.j2").render(values)
    text = _ENV.get_template("summary.txt.j2").render(values)
    return RenderedStatement(subject, css_inline.inline(html), text, {})


def write_files(rendered: RenderedStatement, folder: Path, stem: str) -> list[Path]:
    """Write ``<stem>.html``, ``<stem>.txt`` and one ``<stem>-<name>.png`` per image (``name``
    is the Content-ID before ``@``), the HTML pointing at the PNGs, for a browser preview.
    Returns the paths written."""
    folder.mkdir(parents=True, exist_ok=True)
    names = {cid: f"{stem}-{cid.partition('@')[0]}.png" for cid in rendered.images}
    written = []
    for cid, png in rendered.images.items():
        path = folder / names[cid]
        path.write_bytes(png)
        written.append(path)
    html = _CID_SRC.sub(lambda m: f"{m[1]}{names.get(m[2], 'cid:' + m[2])}{m[3]}", rendered.html)
    for suffix, body in ((".html", html), (".txt", rendered.text)):
        path = folder / f"{stem}{suffix}"
        path.write_text(body, encoding="utf-8")
        written.append(path)
    return written
