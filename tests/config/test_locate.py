from __future__ import annotations

from jvmail.config.locate import KeyIndex

TEXT = '''\
id = "a"
[provider]
kind = "sendgrid"

[[lists]]
id = "one"
body = """
not_a_key = 1
"""
[[lists]]
id = "two"
dotted.key = 3
'''


def test_keys_tables_and_arrays_of_tables() -> None:
    index = KeyIndex(TEXT)
    assert index.line_of(["id"]) == 1
    assert index.line_of(["provider", "kind"]) == 3
    assert index.line_of(["lists", 0, "id"]) == 6
    assert index.line_of(["lists", 1, "id"]) == 11
    assert index.line_of(["lists", 1, "dotted", "key"]) == 12


def test_multiline_strings_are_not_keys() -> None:
    assert KeyIndex(TEXT).line_of(["lists", 0, "not_a_key"]) == 5  # falls back to the table


def test_parts_the_file_lacks_are_skipped() -> None:
    index = KeyIndex(TEXT)
    assert index.line_of(["provider", "sendgrid", "kind"]) == 3
    assert index.line_of(["lists", 1, "missing"]) == 10
    assert index.line_of(["nothing"]) is None
