"""Stream subscriber rows out of a CSV file, one row at a time (memory is flat in file size).

Accepted: UTF-8 with or without a BOM, LF or CRLF, a header row or none. With a header, the email
column is found by name and every other column is kept as an attribute; without one, the first
column is the address and the second, if any, the first name.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from json.encoder import encode_basestring
from pathlib import Path
from typing import NamedTuple

from jvmail.errors import SubscriberImportError
from jvmail.registry.addresses import AddressError, normalize_address

__all__ = ["BadRow", "CsvRow", "read_subscribers"]

_EMAIL_NAMES = ("email", "e-mail", "email address", "email_address", "emailaddress", "mail")
_FIRST_NAMES = ("first_name", "first name", "firstname", "given name", "given_name", "name")
_EMPTY_ATTRIBUTES = "{}"
_MAX_ATTRIBUTE_CHARS = 10_000


class CsvRow(NamedTuple):
    """A good row. A plain tuple in staging-column order, so it goes to the driver as is."""

    line: int
    email: str
    first_name: str
    attributes: str  # canonical JSON text: keys sorted, no spaces


@dataclass(frozen=True, slots=True)
class BadRow:
    file: str
    line: int
    reason: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.reason}"


@dataclass(frozen=True)
class _Layout:
    email: int
    first_name: int | None
    # Extra columns sorted by name, each with its name already encoded as a JSON key.
    extra: tuple[tuple[int, str], ...]


def _layout(first: list[str], path: Path) -> tuple[_Layout, bool]:
    """Column layout, and whether ``first`` was a header row."""
    if any("@" in cell for cell in first):
        return _Layout(0, 1 if len(first) > 1 else None, ()), False
    names = [cell.strip().lower() for cell in first]
    email = next((i for i, n in enumerate(names) if n in _EMAIL_NAMES), None)
    if email is None:
        raise SubscriberImportError(
            f"{path}: no email column in the header ({', '.join(first) or 'empty'})",
            "name the address column 'email' (or put addresses in the first column, no header)",
        )
    first_name = next((i for i, n in enumerate(names) if n in _FIRST_NAMES and i != email), None)
    named: dict[str, int] = {}
    for i, cell in enumerate(first):
        if i not in (email, first_name):
            named.setdefault(cell.strip() or f"column_{i + 1}", i)  # a repeated name: first wins
    extra = tuple((i, encode_basestring(name) + ":") for name, i in sorted(named.items()))
    return _Layout(email, first_name, extra), True


def read_subscribers(
    path: Path, label: str, on_bytes: Callable[[int], None] | None = None
) -> Iterator[CsvRow | BadRow]:
    """Yield each data row of ``path`` as a :class:`CsvRow`, or a :class:`BadRow` saying why not.

    ``on_bytes`` is called now and then with how many bytes have been read so far.

    Raises:
        SubscriberImportError: the file cannot be read, or has a header without an email column.
    """
    try:
        raw = path.open("rb")
    except OSError as exc:
        raise SubscriberImportError(
            f"{label}: cannot open ({exc.strerror})", "check the list's `subscribers` path"
        ) from exc
    with raw:
        # surrogateescape keeps going past a bad byte, so the row can be reported and skipped.
        text = io.TextIOWrapper(raw, encoding="utf-8-sig", errors="surrogateescape", newline="")
        reader = csv.reader(text)
        first = next(reader, None)
        if first is None:
            return
        layout, had_header = _layout(first, path)
        if not had_header:
            yield _parse(first, reader.line_num, layout, label)
        for count, cells in enumerate(reader):
            if on_bytes is not None and count % 4096 == 0:
                on_bytes(raw.tell())
            if cells:
                yield _parse(cells, reader.line_num, layout, label)
        if on_bytes is not None:
            on_bytes(raw.tell())


def _parse(cells: list[str], line: int, layout: _Layout, label: str) -> CsvRow | BadRow:
    if layout.email >= len(cells):
        return BadRow(label, line, "no address in this row")
    joined = "".join(cells)
    if not joined.isascii() and _has_bad_bytes(joined):
        return BadRow(label, line, "contains bytes that are not UTF-8; save the file as UTF-8")
    try:
        email = normalize_address(cells[layout.email])
    except AddressError as exc:
        return BadRow(label, line, f"invalid address {cells[layout.email].strip()!r}: {exc}")
    first_name = ""
    if layout.first_name is not None and layout.first_name < len(cells):
        first_name = cells[layout.first_name].strip()[:200]
    attributes = _EMPTY_ATTRIBUTES
    if layout.extra:
        # Same text as json.dumps(sort_keys=True, separators=(",", ":"), ensure_ascii=False),
        # built from pre-encoded keys: this runs once per row of a million-row import.
        width = len(cells)
        pairs = [key + encode_basestring(cells[i].strip()) for i, key in layout.extra if i < width]
        attributes = "{" + ",".join(pairs) + "}"
        if len(attributes) > _MAX_ATTRIBUTE_CHARS:
            return BadRow(label, line, f"extra columns exceed {_MAX_ATTRIBUTE_CHARS} characters")
    return CsvRow(line, email, first_name, attributes)


def _has_bad_bytes(text: str) -> bool:
    return any("\udc80" <= ch <= "\udcff" for ch in text)
