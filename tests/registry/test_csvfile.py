"""Reading subscriber CSVs: encodings, line endings, headers, extra columns and bad rows."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from jvmail.errors import SubscriberImportError
from jvmail.registry.csvfile import BadRow, CsvRow, read_subscribers


def _read(tmp_path: Path, data: bytes) -> list[CsvRow | BadRow]:
    path = tmp_path / "list.csv"
    path.write_bytes(data)
    return list(read_subscribers(path, "list.csv"))


def test_bom_crlf_and_extra_columns(tmp_path: Path) -> None:
    rows = _read(tmp_path, b"\xef\xbb\xbfEmail,First Name,Plan\r\nAda@Example.com,Ada,pro\r\n")
    assert rows == [
        CsvRow(2, "ada@example.com", "Ada", json.dumps({"Plan": "pro"}, separators=(",", ":")))
    ]


def test_no_header_means_address_then_name(tmp_path: Path) -> None:
    rows = _read(tmp_path, b"ada@example.com,Ada\ngrace@example.org\n")
    assert [(r.line, r.email, r.first_name) for r in rows if isinstance(r, CsvRow)] == [
        (1, "ada@example.com", "Ada"),
        (2, "grace@example.org", ""),
    ]


def test_bad_rows_are_reported_with_their_line(tmp_path: Path) -> None:
    data = "email,name\nok@example.com,A\nnot-an-address,B\n\nzoë@example.com,Zoë\n,C\n"
    data_bytes = data.encode() + b"caf\xe9@example.com,Latin1\n"
    rows = _read(tmp_path, data_bytes)
    bad = [r for r in rows if isinstance(r, BadRow)]
    good = [r.email for r in rows if isinstance(r, CsvRow)]
    assert good == ["ok@example.com", "zoë@example.com"]
    assert [(b.line, b.reason.split(" ")[0]) for b in bad] == [
        (3, "invalid"),
        (6, "invalid"),
        (7, "contains"),
    ]
    assert str(bad[2]).startswith("list.csv:7: contains bytes that are not UTF-8")


def test_quoted_fields_spanning_lines_report_the_last_line(tmp_path: Path) -> None:
    rows = _read(tmp_path, b'email,note\na@example.com,"two\nlines"\nb@example.com,x\n')
    assert [r.line for r in rows] == [3, 4]


def test_header_without_email_column(tmp_path: Path) -> None:
    with pytest.raises(SubscriberImportError, match="no email column"):
        _read(tmp_path, b"name,phone\nAda,123\n")


def test_empty_file(tmp_path: Path) -> None:
    assert _read(tmp_path, b"") == []


def test_attributes_are_canonical_json(tmp_path: Path) -> None:
    data = 'email,zeta,Alpha,"quo""te",,zeta\na@example.com,"x, ""y""",é\\,  sp ,blank,dup\n'
    [row] = _read(tmp_path, data.encode())
    assert isinstance(row, CsvRow)
    expected = {"Alpha": "é\\", "column_5": "blank", 'quo"te': "sp", "zeta": 'x, "y"'}
    canonical = json.dumps(expected, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    assert row.attributes == canonical
