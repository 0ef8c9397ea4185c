"""Tables for people: on a narrow terminal the id column stays whole and the table still fits."""

from __future__ import annotations

import io

import pytest
from rich.console import Console

from jvmail.console import print_table


@pytest.mark.parametrize("ident", [12, "clear-ledger-freelancers"])
def test_narrow_tables_keep_the_id_column_whole(ident: int | str) -> None:
    out = io.StringIO()
    rows = [{"id": ident, "name": "a long name " * 3, "when": "Tue 01 Dec 09:00", "value": 1.5}]
    print_table(Console(file=out, width=50), "Things", rows, ["id", "name", "when", "value"])
    lines = out.getvalue().splitlines()
    assert any(f" {ident} " in line for line in lines)
    assert max(len(line) for line in lines) <= 50
    assert "…" in out.getvalue()  # the other columns gave way
