"""config/jvmail.example.toml documents every key the models accept, and its live part is valid."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
from pydantic import BaseModel

from jvmail.config.loader import _PARTNER_MODELS
from jvmail.config.models import REFUSED_KEYS, HubFile, HubSettings, SchedulerSettings

REFERENCE = Path(__file__).parents[2] / "config" / "jvmail.example.toml"


@pytest.mark.parametrize(
    "model", [HubSettings, SchedulerSettings, *_PARTNER_MODELS], ids=lambda m: m.__name__
)
def test_every_key_is_documented(model: type[BaseModel]) -> None:
    text = REFERENCE.read_text()
    found = re.findall(r"^#? ?(?:\[\[?([a-z_]+)\]\]?|([a-z_]+) = )", text, re.M)
    documented = {table or key for table, key in found}
    missing = [f for f in model.model_fields if f not in documented and f not in REFUSED_KEYS]
    assert missing == []


def test_the_live_tables_are_valid() -> None:
    hub = HubFile.model_validate(tomllib.loads(REFERENCE.read_text()))
    assert hub.scheduler.niche_groups["webflow"] == "web-design"
