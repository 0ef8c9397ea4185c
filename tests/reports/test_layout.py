"""The sample statements and summary in a real browser (headless Chromium), at a phone's width and
a desktop's: nothing overflows sideways, every chart loads, and the answer to "is it fair to
me?" and what to send next week are on the first phone screen. Screenshots go to artifacts/
(statement-<sample>-<width>.png), for a person to look at."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from jvmail.reports.model import Statement
from jvmail.reports.render import RenderedStatement, render_statement, render_summary, write_files
from tests.conftest import unavailable
from tests.reports.samples import SAMPLES, summary

playwright = pytest.importorskip("playwright.sync_api")

ARTIFACTS = Path(__file__).parents[2] / "artifacts"
VIEWPORTS = {"phone": (390, 844), "desktop": (1280, 900)}
OVERFLOWING = """() => [...document.querySelectorAll('body *')]
    .filter(e => e.getBoundingClientRect().right > window.innerWidth + 0.5)
    .map(e => `${e.tagName.toLowerCase()}.${e.className}: right edge at ${
        Math.round(e.getBoundingClientRect().right)}px`)"""


def _renders() -> dict[str, Callable[[], RenderedStatement]]:
    def statement(make: Callable[[], Statement]) -> Callable[[], RenderedStatement]:
        return lambda: render_statement(make())

    found = {f"statement-{name}": statement(make) for name, make in SAMPLES.items()}
    return found | {"coordinator-summary": lambda: render_summary(summary())}


RENDERS = _renders()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        unavailable("Chromium", "no chromium on PATH; on Debian: apt-get install chromium")
    with playwright.sync_playwright() as p:
        launched = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        yield launched
        launched.close()


@pytest.mark.parametrize("viewport", VIEWPORTS, ids=list(VIEWPORTS))
@pytest.mark.parametrize("name", RENDERS)
def test_fits_the_screen(browser: Any, tmp_path: Path, name: str, viewport: str) -> None:
    width, height = VIEWPORTS[viewport]
    files = write_files(RENDERS[name](), tmp_path, name)
    html = next(f for f in files if f.suffix == ".html")
    page = browser.new_page(viewport={"width": width, "height": height})
    try:
        page.goto(html.as_uri())
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / f"{name}-{width}.png"), full_page=True)
        assert page.evaluate("document.documentElement.scrollWidth") <= width
        assert page.evaluate(OVERFLOWING) == []
        loaded = page.evaluate("[...document.images].map(i => i.complete && i.naturalWidth > 0)")
        assert all(loaded)
        if name.startswith("statement-"):
            assert len(loaded) == (0 if name == "statement-quiet" else 2)
            # The ten-second answer: the balance and next week's sending, on the first screen.
            for selector in (".headline", ".next"):
                box = page.locator(selector).bounding_box()
                assert box is not None
                assert box["y"] + box["height"] <= height, selector
    finally:
        page.close()
