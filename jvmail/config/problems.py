"""Turn pydantic validation errors into :class:`ConfigProblem`s that say where and how to fix.

Hints are a table keyed by pydantic's error type; a validator of ours puts its own hint in the
error context under ``fix``.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Iterator
from typing import Any

from pydantic import BaseModel, ValidationError

from jvmail.config.locate import KeyIndex
from jvmail.config.models import ENV_NAME_PATTERN, PROVIDER_KINDS, SLUG_PATTERN
from jvmail.errors import ConfigProblem

__all__ = ["dotted", "problems_from_validation"]

_EXAMPLE = "see config/jvmail.example.toml, which documents every key"

_HINTS: dict[str, str] = {
    "missing": "add `{key} = ...` here",
    "string_type": "write it as a quoted string",
    "int_type": "write a whole number without quotes",
    "int_parsing": "write a whole number without quotes",
    "float_parsing": "write a number without quotes, e.g. 0.02",
    "bool_type": "write true or false",
    "bool_parsing": "write true or false",
    "list_type": 'write a list in brackets, e.g. ["a", "b"]',
    "too_short": "give at least one value",
    "date_type": "write a date as YYYY-MM-DD without quotes, e.g. 2026-12-01",
    "date_from_datetime_parsing": "write a date as YYYY-MM-DD, e.g. 2026-12-01",
    "date_parsing": "write a date as YYYY-MM-DD, e.g. 2026-12-01",
    "url_parsing": "write a full URL starting with https://",
    "url_scheme": "write a full URL starting with https://",
    "value_error": _EXAMPLE,
    "string_too_short": "give a longer value",
    "string_too_long": "shorten it",
}


def dotted(loc: Iterable[str | int]) -> str:
    """``("lists", 1, "id")`` -> ``lists[1].id``."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
    return out


def _known_keys(models: Iterable[type[BaseModel]]) -> set[str]:
    keys: set[str] = set()
    for model in models:
        keys.update(model.model_fields)
    return keys


def _hint(error: Any, key_loc: tuple[str | int, ...], known: set[str]) -> str:
    kind = error["type"]
    ctx = error.get("ctx") or {}
    last = str(key_loc[-1]) if key_loc else ""
    if "fix" in ctx:
        return str(ctx["fix"])
    if kind == "extra_forbidden":
        close = difflib.get_close_matches(last, sorted(known), n=1)
        spelled = f"did you mean `{close[0]}`? " if close else ""
        return f"{spelled}remove the key or correct its spelling; {_EXAMPLE}"
    if kind == "string_pattern_mismatch":
        if ctx.get("pattern") == SLUG_PATTERN:
            return "use lowercase letters, digits and single hyphens, e.g. 'acme-news'"
        if ctx.get("pattern") == ENV_NAME_PATTERN:
            return "give the NAME of an environment variable (e.g. ACME_API_KEY), never a secret"
        return f"match the pattern {ctx.get('pattern')}"
    if kind in ("literal_error", "enum", "union_tag_invalid"):
        return f"use one of {ctx.get('expected') or ctx.get('expected_tags')}"
    if kind.startswith(("greater_than", "less_than")):
        return str(error["msg"]).lower().replace("input", "use a value")
    return _HINTS.get(kind, _EXAMPLE).format(key=last)


def problems_from_validation(
    exc: ValidationError,
    file: str,
    index: KeyIndex,
    models: Iterable[type[BaseModel]],
    prefix: tuple[str | int, ...] = (),
) -> Iterator[ConfigProblem]:
    """One :class:`ConfigProblem` per pydantic error, located in ``file`` through ``index``."""
    known = _known_keys(models)
    for error in exc.errors():
        loc = (*prefix, *error["loc"])
        # Drop the discriminator tags pydantic adds inside unions ("provider.sendgrid.x").
        key_loc = tuple(p for p in loc if not (isinstance(p, str) and p in PROVIDER_KINDS))
        message = error["msg"]
        if error["type"] == "extra_forbidden":
            message = "unknown key"
        yield ConfigProblem(
            file=file,
            line=index.line_of(loc),
            key=dotted(key_loc),
            message=message[0].lower() + message[1:] if message else message,
            fix=_hint(error, key_loc, known),
        )
