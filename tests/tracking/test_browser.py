"""The unsubscribe page in a real browser (headless Chromium) against `jvmail serve`: a link
scanner's GET changes nothing; a person's click on the button unsubscribes, with no redirect."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from sqlalchemy import select

from jvmail.db import make_engine, make_sessionmaker
from jvmail.db.models import Subscriber, SubscriberStatus, Suppression
from jvmail.tracking.links import Keyring
from tests.conftest import unavailable
from tests.tracking.serving import sent_hub, serving

playwright = pytest.importorskip("playwright.sync_api")

ARTIFACTS = Path(__file__).parents[2] / "artifacts"


@pytest.fixture(scope="module")
def chromium_path() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        unavailable("Chromium", "no chromium on PATH; on Debian: apt-get install chromium")
    assert found is not None
    return found


@pytest.fixture
def browser(chromium_path: str) -> Iterator[object]:
    with playwright.sync_playwright() as p:
        launched = p.chromium.launch(executable_path=chromium_path, args=["--no-sandbox"])
        yield launched
        launched.close()


def _statuses(url: str, email: str) -> tuple[list[SubscriberStatus], list[str]]:
    engine = make_engine(url)
    with make_sessionmaker(engine)() as session:
        statuses = list(session.scalars(select(Subscriber.status).where(Subscriber.email == email)))
        suppressed = list(session.scalars(select(Suppression.email)))
    engine.dispose()
    return statuses, suppressed


@pytest.mark.parametrize("width", [390, 1280], ids=["phone", "desktop"])
def test_unsubscribing_in_a_browser(browser: object, tmp_path: Path, width: int) -> None:
    url, mailing, first = sent_hub(tmp_path)
    email = "reader0@mail.example"  # the first delivery's reader, on both sender lists
    token = Keyring.from_hex(["ab" * 32]).sign(mailing, first, 0)
    with serving(url) as (base, _):
        # A link scanner fetches the link: it sees the page, nobody is unsubscribed.
        scanned = requests.get(f"{base}/u/{token}", timeout=5)
        assert scanned.status_code == 200
        assert _statuses(url, email) == ([SubscriberStatus.SUBSCRIBED] * 2, [])
        page = browser.new_page(viewport={"width": width, "height": 800})  # type: ignore[attr-defined]
        page.goto(f"{base}/u/{token}")
        assert "Sender" in page.inner_text("body")
        overflow = page.evaluate("document.documentElement.scrollWidth > window.innerWidth")
        assert overflow is False
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / f"unsubscribe-{width}.png"))
        with page.expect_response(lambda r: r.request.method == "POST") as posted:
            page.click("button")
        answer = posted.value
        assert answer.status == 200  # answered in place: no redirect
        assert page.url == f"{base}/u/{token}"
        assert "You are unsubscribed" in page.inner_text("h1")
        page.screenshot(path=str(ARTIFACTS / f"unsubscribed-{width}.png"))
        page.close()
    assert _statuses(url, email) == ([SubscriberStatus.UNSUBSCRIBED] * 2, [email])
