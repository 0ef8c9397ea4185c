"""Find the line of a key path in TOML text, for error messages.

`tomllib` reports positions only for syntax errors, so for validation errors we index the file's
table headers and `key =` lines ourselves. The index covers what config files use: tables,
arrays of tables and (dotted) keys; keys inside inline tables point at their parent's line.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

__all__ = ["KeyIndex"]

_HEADER = re.compile(r"^\s*(\[\[?)\s*([^\]]+?)\s*\]\]?\s*(?:#.*)?$")
_PART = r"""(?:[A-Za-z0-9_-]+|"[^"]*"|'[^']*')"""
_KEY = re.compile(rf"^\s*({_PART}(?:\s*\.\s*{_PART})*)\s*=")
_TRIPLE = re.compile(r'"""|\'\'\'')

Path_ = tuple[str | int, ...]


def _split_dotted(text: str) -> tuple[str, ...]:
    return tuple(part.strip().strip("\"'") for part in text.split("."))


class KeyIndex:
    """Maps key paths such as ``("lists", 1, "niches")`` to 1-based line numbers."""

    def __init__(self, text: str) -> None:
        self._lines: dict[Path_, int] = {}
        self._build(text.splitlines())
        self._prefixes = {path[:n] for path in self._lines for n in range(1, len(path) + 1)}

    def _build(self, lines: Sequence[str]) -> None:
        table: Path_ = ()
        counts: dict[Path_, int] = {}
        in_string = False
        for number, line in enumerate(lines, start=1):
            if in_string:
                in_string = len(_TRIPLE.findall(line)) % 2 == 0
                continue
            header = _HEADER.match(line)
            if header:
                table = self._enter(header.group(1), _split_dotted(header.group(2)), counts)
                self._lines.setdefault(table, number)
                continue
            key = _KEY.match(line)
            if key:
                self._lines.setdefault(table + _split_dotted(key.group(1)), number)
                in_string = len(_TRIPLE.findall(line)) % 2 == 1

    def _enter(self, bracket: str, names: tuple[str, ...], counts: dict[Path_, int]) -> Path_:
        # Arrays of tables get an index per occurrence, so the second `[[lists]]` is ("lists", 1).
        path: Path_ = ()
        for depth, name in enumerate(names):
            path = (*path, name)
            is_last = depth == len(names) - 1
            if is_last and bracket == "[[":
                counts[path] = counts.get(path, -1) + 1
                path = (*path, counts[path])
            elif path in counts:
                path = (*path, counts[path])
        return path

    def line_of(self, loc: Sequence[str | int]) -> int | None:
        """The line of the longest known prefix of ``loc``; parts the file lacks are skipped.

        Skipping lets a pydantic location like ``("provider", "sendgrid", "api_key_env")`` (the
        union's tag is part of it) still find ``[provider]`` / ``api_key_env``.
        """
        path: Path_ = ()
        best: int | None = None
        for part in loc:
            candidate = (*path, part)
            if candidate in self._prefixes:
                path = candidate
                best = self._lines.get(candidate, best)
        return best
