"""Rich rendering for people: tables, the sync diff, import progress and errors.

Commands print through these so every table looks alike; `--json` bypasses them entirely.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from rich.text import Text

from jvmail.errors import ConfigError, JvmailError
from jvmail.registry import SyncReport

__all__ = ["ImportBar", "print_error", "print_json", "print_sync_report", "print_table"]

_HEADERS = {
    "max_sends_per_week": "per week",
    "mailings_wanted": "wanted",
    "expected_value": "expected",
}
_BAD_ROWS_SHOWN = 5
_WRAP_WIDTH = 30  # characters a wrapped column keeps however narrow the terminal
_ACTION_STYLE = {"added": "green", "changed": "yellow", "archived": "red", "restored": "cyan"}


def print_json(console: Console, data: Any) -> None:
    console.print_json(json.dumps(data, default=str, sort_keys=True))


def _cell(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else ""
    if isinstance(value, list | tuple):
        return ", ".join(str(v) for v in value)
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:,.1f}"
    return str(value)


def print_table(
    console: Console,
    title: str,
    rows: Sequence[dict[str, Any]],
    columns: Iterable[str],
    wrap: Iterable[str] = (),
) -> None:
    """One line per row: long text is cut with an ellipsis, except in the first column, which
    holds the ids people copy (on a narrow terminal the other columns give way), and in the
    ``wrap`` columns, whose sentences wrap onto more lines instead."""
    cols = list(columns)
    wrapped = set(wrap)
    headers = [_HEADERS.get(col, col.replace("_", " ")) for col in cols]
    cells = [[_cell(row.get(col, "")) for col in cols] for row in rows]
    widths = _widths(console.width, headers, cells, [col in wrapped for col in cols])
    table = Table(title=title, title_justify="left", header_style="bold")
    for position, (col, header) in enumerate(zip(cols, headers, strict=True)):
        sample = rows[0].get(col) if rows else None
        numeric = isinstance(sample, int | float) and not isinstance(sample, bool)
        table.add_column(
            header,
            justify="right" if numeric else "left",
            no_wrap=col not in wrapped,
            overflow="fold" if col in wrapped else "ellipsis",
            min_width=None if position else widths[0],
            max_width=widths[position] if position and col not in wrapped else None,
        )
    for row in cells:
        table.add_row(*(Text(cell) for cell in row))  # as written: "[x]" is no markup here
    console.print(table)


def _widths(
    width: int, headers: list[str], cells: list[list[str]], wrapped: list[bool]
) -> list[int]:
    """Column widths that fit ``width``: the first column whole, a wrapped column at least a
    readable width, and the other columns cut widest first to make room.

    Each column takes a space either side and one border line, plus the closing border. Wrapped
    columns get no limit here: rich gives them whatever is left.
    """
    natural = [max([len(h), *(len(row[i]) for row in cells)]) for i, h in enumerate(headers)]
    reserved = sum(min(n, _WRAP_WIDTH) for n, w in zip(natural, wrapped, strict=True) if w)
    room = width - 3 * len(headers) - 1 - natural[0] - reserved
    rest = iter(_fit([n for n, w in zip(natural[1:], wrapped[1:], strict=True) if not w], room))
    return [natural[0], *(0 if w else next(rest) for w in wrapped[1:])]


def _fit(widths: list[int], room: int) -> list[int]:
    """``widths`` cut down, widest first, until they sum to at most ``room`` (each at least 1)."""
    fitted = list(widths)
    while fitted and sum(fitted) > room and max(fitted) > 1:
        widest = fitted.index(max(fitted))
        fitted[widest] -= 1
    return fitted


def print_sync_report(console: Console, report: SyncReport, *, dry_run: bool) -> None:
    verb = "would change" if dry_run else "changed"
    if report.changes:
        table = Table(title=f"Registry ({verb})", title_justify="left", header_style="bold")
        for col in ("kind", "id", "action", "fields"):
            table.add_column(col)
        for ch in report.changes:
            style = _ACTION_STYLE.get(ch.action, "")
            table.add_row(ch.kind, ch.slug, f"[{style}]{ch.action}[/]", ", ".join(ch.fields))
        console.print(table)
    if report.imports:
        table = Table(title=f"Subscribers ({verb})", title_justify="left", header_style="bold")
        for col in ("list", "rows", "added", "changed", "archived", "duplicates", "bad rows"):
            table.add_column(col, justify="left" if col == "list" else "right")
        for r in report.imports:
            cells = (r.rows, r.added, r.changed, r.archived, r.duplicates, r.bad_count)
            table.add_row(r.list_slug, *(f"{n:,}" for n in cells))
        console.print(table)
    bad_rows = [bad for r in report.imports for bad in r.bad]
    for bad in bad_rows[:_BAD_ROWS_SHOWN]:
        console.print(f"[yellow]skipped[/] {bad}", soft_wrap=True)
    hidden = sum(r.bad_count for r in report.imports) - min(len(bad_rows), _BAD_ROWS_SHOWN)
    if hidden > 0:
        console.print(f"[yellow]... and {hidden:,} more bad rows[/] (all of them: --json)")
    if report.is_noop:
        console.print("[green]Nothing changed:[/] the database already matches the config.")


class ImportBar:
    """A rich progress bar per subscriber file, driven by bytes read."""

    def __init__(self, console: Console) -> None:
        self._progress = Progress(
            TextColumn("importing [bold]{task.description}"),
            BarColumn(),
            DownloadColumn(),
            TimeRemainingColumn(),
            console=console,
            transient=True,
        )
        self._task: TaskID | None = None

    def __enter__(self) -> ImportBar:
        self._progress.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._progress.stop()

    def start(self, list_slug: str, total_bytes: int) -> Callable[[int], None]:
        if self._task is not None:
            self._progress.remove_task(self._task)
        task = self._progress.add_task(list_slug, total=total_bytes)
        self._task = task

        def advance(done: int) -> None:
            self._progress.update(task, completed=done)

        return advance


def print_error(console: Console, error: JvmailError) -> None:
    """The error and how to fix it, its text shown as written: a ``[provider]`` table name or a
    bracket in a partner's template is not taken for markup."""
    if isinstance(error, ConfigError):
        for problem in error.problems:
            console.print(f"[red]error:[/] {escape(str(problem))}", highlight=False, soft_wrap=True)
    console.print(f"[red]error:[/] {escape(error.message)}", highlight=False, soft_wrap=True)
    if error.fix:
        console.print(f"[bold]fix:[/] {escape(error.fix)}", highlight=False, soft_wrap=True)
