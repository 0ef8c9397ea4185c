"""What a worker process reads from its environment, as `jvmail worker` boots it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

PRINT_PARTS = "from jvmail.dispatch import boot; print(boot._runtime.parts)"


def _boot(tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("JVMAIL_")}
    clean["JVMAIL_DATABASE_URL"] = f"sqlite:///{tmp_path / 'jvmail.db'}"
    return subprocess.run(
        [sys.executable, "-c", PRINT_PARTS],
        env=clean | env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_materialize_parts_come_from_the_environment(tmp_path: Path) -> None:
    assert _boot(tmp_path).stdout.strip() == "2"
    assert _boot(tmp_path, JVMAIL_MATERIALIZE_PARTS="4").stdout.strip() == "4"


@pytest.mark.parametrize("value", ["0", "two", "-1", "2.5"])
def test_a_bad_materialize_parts_is_named_and_stops_the_boot(tmp_path: Path, value: str) -> None:
    booted = _boot(tmp_path, JVMAIL_MATERIALIZE_PARTS=value)
    assert booted.returncode != 0
    assert f"JVMAIL_MATERIALIZE_PARTS={value!r}: expected a whole number of 1 or more" in (
        booted.stderr
    )
