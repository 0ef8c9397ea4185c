"""The fault suite's selection: `make test` runs the scenarios marked quick; `make test-faults`
(JVMAIL_FAULTS=all) runs them all, at full size."""

from __future__ import annotations

import os

import pytest

FULL = os.environ.get("JVMAIL_FAULTS") == "all"
READERS = int(os.environ.get("JVMAIL_FAULTS_READERS", "20000" if FULL else "3000"))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if FULL:
        return
    here = os.path.dirname(__file__)
    kept, dropped = [], []
    for item in items:
        inside = str(item.path).startswith(here)
        (dropped if inside and item.get_closest_marker("quick") is None else kept).append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = kept
