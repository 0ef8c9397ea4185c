"""The example hub in config/example validates, syncs on both databases, and re-syncs clean."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy.orm import Session

from jvmail.config import load_config
from jvmail.registry import sync_hub


def test_example_hub_syncs_and_resyncs_clean(session: Session, example_hub: Path) -> None:
    first = sync_hub(session, load_config(example_hub))
    session.commit()
    hub = load_config(example_hub)
    assert len(hub.partners) >= 10
    assert sum(r.added for r in first.imports) > 50_000
    assert sum(r.bad_count for r in first.imports) > 0  # the generator plants a few
    assert sync_hub(session, load_config(example_hub)).is_noop
