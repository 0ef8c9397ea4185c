"""Starter files for `jvmail init` and the example hub for `jvmail demo`."""

from __future__ import annotations

import random
import shutil
import tomllib
from pathlib import Path

__all__ = ["example_hub_dir", "scaffold", "write_demo_subscribers"]

_HERE = Path(__file__).parent
_STARTER = ("jvmail.toml", "partners/your-business.toml", "subscribers/your-newsletter.csv")
_COUNTS_FILE = "subscriber-counts.toml"
_DEFAULT_COUNT = 500

_FIRST_NAMES = (
    "Ada", "Ben", "Chloe", "Dev", "Elif", "Farah", "Gus", "Hana", "Ivo", "Jade", "Kofi", "Lena",
    "Mateo", "Nia", "Owen", "Priya", "Quinn", "Rosa", "Sami", "Tomás", "Uma", "Viktor", "Wen",
    "Xavi", "Yara", "Zoe",
)  # fmt: skip
_DOMAINS = ("example.com", "example.net", "example.org", "mail.example.com", "inbox.example.net")


def example_hub_dir() -> Path:
    """The example hub: packaged in a wheel, or `config/example` in a source checkout."""
    packaged = _HERE.parent / "example_hub"
    if packaged.is_dir():
        return packaged
    return _HERE.parents[1] / "config" / "example"


def scaffold(target: Path, *, source: Path | None = None, overwrite: bool = False) -> list[Path]:
    """Copy the starter config (or ``source``, a whole config dir) into ``target``.

    Existing files are kept unless ``overwrite``. Returns the files written.
    """
    written: list[Path] = []
    if source is None:
        files = [(_HERE / rel, target / rel) for rel in _STARTER]
    else:
        files = [
            (p, target / p.relative_to(source)) for p in sorted(source.rglob("*")) if p.is_file()
        ]
    for src, dst in files:
        if dst.exists() and not overwrite:
            continue
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dst)
        written.append(dst)
    return written


def write_demo_subscribers(hub_dir: Path) -> dict[str, int]:
    """Generate each example list's subscriber CSV, the same bytes on every run.

    Counts come from `subscriber-counts.toml`. Addresses use reserved example domains; about one
    row in 200 repeats an earlier address and one in 500 is malformed, as real exports do.
    """
    counts_path = hub_dir / _COUNTS_FILE
    counts: dict[str, int] = {}
    if counts_path.is_file():
        counts = tomllib.loads(counts_path.read_text(encoding="utf-8")).get("lists", {})
    written: dict[str, int] = {}
    for partner_file in sorted((hub_dir / "partners").glob("*.toml")):
        partner = tomllib.loads(partner_file.read_text(encoding="utf-8"))
        for lst in partner.get("lists", []):
            count = int(counts.get(lst["id"], _DEFAULT_COUNT))
            _write_csv(hub_dir / lst["subscribers"], lst["id"], count)
            written[lst["id"]] = count
    return written


def _write_csv(path: Path, list_id: str, count: int) -> None:
    rng = random.Random(f"jvmail-demo:{list_id}")
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8", newline="") as out:
        out.write("email,first_name,signup_source\n")
        for n in range(count):
            name = rng.choice(_FIRST_NAMES)
            if n % 500 == 499:
                address = f"{name.lower()}.at.{list_id}"  # malformed: no @
            elif n % 200 == 199:
                address = f"{list_id}.{n - 100}@{_DOMAINS[(n - 100) % len(_DOMAINS)]}"
            else:
                address = f"{list_id}.{n}@{_DOMAINS[n % len(_DOMAINS)]}"
            source = rng.choice(("website", "webinar", "lead-magnet", "podcast"))
            out.write(f"{address},{name},{source}\n")
