"""Tables for people: on a narrow terminal the id column stays whole and the table still fits."""

from __future__ import annotations

import io

import pytest
from rich.console import Console

from jvmail.console import print_error, print_table
from jvmail.errors import ConfigError, ConfigProblem, JvmailError


@pytest.mark.parametrize("ident", [12, "clear-ledger-freelancers"])
def test_narrow_tables_keep_the_id_column_whole(ident: int | str) -> None:
    out = io.StringIO()
    rows = [{"id": ident, "name": "a long name " * 3, "when": "Tue 01 Dec 09:00", "value": 1.5}]
    print_table(Console(file=out, width=50), "Things", rows, ["id", "name", "when", "value"])
    lines = out.getvalue().splitlines()
    assert any(f" {ident} " in line for line in lines)
    assert max(len(line) for line in lines) <= 50
    assert "…" in out.getvalue()  # the other columns gave way


def test_wrapped_columns_keep_every_word_and_the_table_fits() -> None:
    out = io.StringIO()
    sentence = "one more mailing would push its owner further into debt (-50.0 after the week)"
    rows = [{"promotion": "desk-worker-reset", "got": 0, "reason": sentence}]
    print_table(
        Console(file=out, width=60), "Why", rows, ["promotion", "got", "reason"], ["reason"]
    )
    lines = out.getvalue().splitlines()
    assert max(len(line) for line in lines) <= 60
    words = " ".join(line.split("│")[3] for line in lines if line.count("│") == 4).split()
    assert " ".join(words) == sentence


def test_errors_are_printed_as_written_brackets_included() -> None:
    out = io.StringIO()
    problem = ConfigProblem("partners/a.toml", 3, "provider", "[provider] needs [bold] kind", "")
    print_error(Console(file=out, width=200), ConfigError([problem]))
    print_error(Console(file=out, width=200), JvmailError("template {{ x[/y] }}", "remove [/y]"))
    text = out.getvalue()
    assert "[provider] needs [bold] kind" in text
    assert "error: template {{ x[/y] }}" in text
    assert "fix: remove [/y]" in text


def test_table_cells_are_printed_as_written_brackets_included() -> None:
    out = io.StringIO()
    rows = [{"id": 12, "error": "set api_key_env of its [provider]", "name": "[bold]x[/]"}]
    print_table(Console(file=out, width=200), "Mailings", rows, ["id", "error", "name"])
    assert "set api_key_env of its [provider]" in out.getvalue()
    assert "[bold]x[/]" in out.getvalue()
