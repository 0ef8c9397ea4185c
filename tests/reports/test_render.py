"""Statements rendered as email, from hand-built samples (tests/reports/samples.py): every figure
in both parts, the headline's wording, escaping of partner-written names, the quiet week, review
links, charts, preview files and the coordinator's summary. Then the same from statements built
out of a real database (the builder's fixtures in conftest.py), through to a browser."""

from __future__ import annotations

import dataclasses
import datetime as dt
import io
import re
import shutil
from pathlib import Path

import pytest
from matplotlib import image as mpimg
from sqlalchemy.orm import Session

from jvmail.db.models import Partner
from jvmail.reports.build import build_statements, build_summary
from jvmail.reports.charts import clicks_chart, history_chart
from jvmail.reports.model import Statement
from jvmail.reports.render import (
    CLICKS_CID,
    HISTORY_CID,
    amount,
    headline,
    number,
    percent,
    render_statement,
    render_summary,
    write_files,
)
from jvmail.reports.send import statement_message
from tests.conftest import unavailable
from tests.reports import samples
from tests.reports.conftest import MONDAY

ARTIFACTS = Path(__file__).parents[2] / "artifacts"
PNG = b"\x89PNG\r\n\x1a\n"
EVIL = "<script>alert(1)</script>"
EMAIL = re.compile(r"[\w.+-]+@[\w-]+\.[\w.-]+")


def _parts(st: Statement) -> tuple[str, str]:
    out = render_statement(st)
    return out.html, out.text


@pytest.mark.parametrize(
    ("value", "shown"),
    [(0, "0"), (7, "7"), (1234, "1,234"), (1_234_567.0, "1,234,567"), (12.26, "12.3"),
     (4.5, "4.5"), (-0.04, "0"), (0.96, "1")],
)  # fmt: skip
def test_numbers_are_for_people(value: float, shown: str) -> None:
    assert number(value) == shown


def test_units_and_percentages() -> None:
    assert amount(1, "clicks") == "1 click"
    assert amount(2.5, "conversions") == "2.5 conversions"
    assert amount(1_046, "delivered") == "1,046 deliveries"
    assert percent(23, 24) == "95%"
    assert percent(199, 200) == "99%"  # 100% only when every commitment was kept
    assert percent(5, 5) == "100%"


@pytest.mark.parametrize(
    ("net", "metric", "line"),
    [
        (42, "clicks", "The alliance owes you 42 clicks"),
        (-18, "clicks", "You owe the alliance 18 clicks"),
        (0, "clicks", "You and the alliance are even"),
        (0.4, "clicks", "You and the alliance are even"),  # under half a click
        (1, "clicks", "The alliance owes you 1 click"),
        (-1_234.56, "delivered", "You owe the alliance 1,234.6 deliveries"),
        (0.4, "conversions", "The alliance owes you 0.4 conversions"),
        (-0.04, "conversions", "You and the alliance are even"),
    ],
)
def test_the_headline_answers_is_it_fair(net: float, metric: str, line: str) -> None:
    st = dataclasses.replace(samples.busy(), net=net, metric=metric)
    assert headline(st) == line
    out = render_statement(st)
    assert out.subject.startswith(line)
    assert out.text.splitlines()[3] == line  # after the hub, the partner and the week
    assert line in out.html


def test_the_top_says_the_balance_then_what_to_send() -> None:
    html, text = _parts(samples.busy())
    expected = "Next week you send: Tue 1 Dec for Harbor Yoga and Thu 3 Dec for Lumen Labs."
    assert expected in text
    top = text.split("\n\n")[1]  # the first block after the heading
    assert top.startswith("The alliance owes you 131 clicks\n")
    assert expected in top
    assert html.index("The alliance owes you 131 clicks") < html.index("Next week you send")
    assert html.index("Next week you send") < html.index("This week")
    one = dataclasses.replace(samples.busy(), next_week=samples.busy().next_week[:1])
    assert (
        "Next week you send: \u201cMindful Mornings course\u201d for Harbor Yoga to "
        "Pine Notes Weekly, Tue 1 Dec." in render_statement(one).text
    )
    assert "Next week you send: nothing planned yet." in _parts(samples.taker())[1]


def test_every_figure_of_the_busy_sample_is_in_both_parts() -> None:
    st = samples.busy()
    html, text = _parts(st)
    figures = [
        "521", "295", "4,862", "4,731",  # this week and since joining
        "212 clicks", "81 clicks",  # who owes whom
        "+338", "\u2212270", "\u2212109", "+172", "1,840", "1,390", "1,000", "828",  # pairs
        "expected 180 clicks", "expected 140.5 clicks", "expected 160 clicks",  # next week
        "95%", "23 of your 24", "91%", "31 of 34",  # reliability
        "1,502 clicks", "1,011 clicks",  # allies
        "Mon 23 Nov", "Thu 26 Nov", "Fri 27 Nov", "Tue 1 Dec", "Wed 2 Dec",
        "the alliance owes it 260 clicks",
    ]  # fmt: skip
    for line in [*st.gave, *st.received]:
        figures += [
            f"{number(line.delivered)} delivered",
            f"{line.human_clicks} clicks",
            f"{number(line.conversions)} conversions",
            line.promotion,
            line.list,
        ]
    for part in (html, text):
        missing = [f for f in figures if f not in part]
        assert missing == []
    assert "12,480 delivered" in html
    assert "4.5 conversions" in text
    assert "paused" in html  # a mailing that is not simply sent says so
    assert "Thank you to Lumen Labs, Northwind Coaching and Copper Kettle" in html


def test_a_taker_is_flagged_gently() -> None:
    html, text = _parts(samples.taker())
    for part in (html, text):
        assert "You owe the alliance 960 clicks" in part
        assert "So far you have received 1,380 clicks and given 420" in part
        assert "Mailing for a partner below would even things out" in part
        assert "you want to meet coaching partners" in part
        assert "owed 210 clicks" in part  # not in its "why", so said apart
    assert "owed 340" not in text  # already in its "why"
    assert "even things out" not in _parts(samples.busy())[1]


def test_pending_approvals_link_to_their_review_page() -> None:
    st = samples.approvals()
    html, text = _parts(st)
    linked, _ = st.pending_approvals
    assert linked.review_url is not None
    assert f'href="{linked.review_url.replace("&", "&amp;")}"' in html
    assert html.count(">Approve or decline</a>") == 1  # the second has no link
    assert f"Approve or decline: {linked.review_url}" in text
    assert "2 mailings on your lists need your approval" in html
    assert "expected 95 clicks" in text
    assert "expected 42 clicks" in html
    hostile = dataclasses.replace(linked, review_url="javascript:alert(1)")
    html, _ = _parts(dataclasses.replace(st, pending_approvals=[hostile]))
    assert "javascript:" not in html


def test_partner_written_strings_are_escaped_in_html_and_plain_in_text() -> None:
    st = samples.busy()
    evil = dataclasses.replace(
        st,
        partner=EVIL,
        hub=f"{EVIL} hub",
        gave=[dataclasses.replace(m, promotion=EVIL, owner=EVIL, list=EVIL) for m in st.gave],
        allies=[dataclasses.replace(a, partner=EVIL) for a in st.allies],
        pays=[dataclasses.replace(p, partner=EVIL) for p in st.pays],
        suggestions=[dataclasses.replace(s, why=EVIL) for s in st.suggestions],
        clicks_by_partner={EVIL: 5, "$5 Deals $$": 4, "50% off_{x}^2": 3},  # no mathtext
    )
    out = render_statement(evil)
    assert "<script" not in out.html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in out.html
    assert EVIL in out.text
    assert (
        out.subject
        == f"The alliance owes you 131 clicks \u00b7 {EVIL} hub statement, 23\u201329 Nov 2026"
    )
    assert out.images[CLICKS_CID].startswith(PNG)


def test_a_quiet_week_is_short_and_friendly() -> None:
    st = samples.quiet()
    assert st.quiet
    out = render_statement(st)
    assert len(out.text) < 1500
    assert out.images == {}
    assert "cid:" not in out.html
    assert "<table" not in out.html  # no empty tables
    for part in (out.html, out.text):
        assert "The alliance owes you 172 clicks" in part
        assert "A quiet week" in part
        assert "Nothing to do" in part
        assert "Harbor Yoga would welcome a mailing" in part  # one friendly suggestion
        assert "You mailed for others" not in part


def test_charts_are_small_valid_deterministic_pngs() -> None:
    st = samples.busy()
    out = render_statement(st)
    assert set(out.images) == {HISTORY_CID, CLICKS_CID}
    for png in out.images.values():
        assert png.startswith(PNG)
        assert len(png) < 150_000
        pixels = mpimg.imread(io.BytesIO(png), format="png")
        assert pixels.shape[1] == 1200  # 600 CSS px at 2x
        assert 300 <= pixels.shape[0] <= 1000
    assert render_statement(st).images == out.images  # the same data, the same bytes
    assert history_chart(st.history, st.metric) == out.images[HISTORY_CID]
    assert f'src="cid:{HISTORY_CID}"' in out.html
    assert f'src="cid:{CLICKS_CID}"' in out.html


def test_the_clicks_chart_shows_the_top_eight() -> None:
    clicks = {f"Partner {n}": 10 * n for n in range(1, 11)}
    top = {f"Partner {n}": 10 * n for n in range(3, 11)}
    assert clicks_chart(clicks) == clicks_chart(top)
    assert clicks_chart(dict(reversed(clicks.items()))) == clicks_chart(clicks)  # order-free
    assert clicks_chart(clicks) != clicks_chart({**top, "Partner 3": 31})


def test_no_data_no_chart() -> None:
    assert history_chart([], "clicks") == b""
    flat = [dataclasses.replace(p, given=0, received=0) for p in samples.busy().history]
    assert history_chart(flat, "clicks") == b""
    assert clicks_chart({}) == b""
    assert clicks_chart({"Idle": 0}) == b""
    out = render_statement(dataclasses.replace(samples.busy(), clicks_by_partner={}))
    assert set(out.images) == {HISTORY_CID}
    assert "cid:clicks" not in out.html


def test_write_files_previews_in_a_browser(tmp_path: Path) -> None:
    out = render_statement(samples.busy())
    files = write_files(out, tmp_path / "preview", "statement")
    names = sorted(f.name for f in files)
    assert names == [
        "statement-clicks.png",
        "statement-history.png",
        "statement.html",
        "statement.txt",
    ]
    assert all(f.is_file() for f in files)
    html = (tmp_path / "preview" / "statement.html").read_text(encoding="utf-8")
    sources = re.findall(r'<img[^>]* src="([^"]+)"', html)
    assert sorted(sources) == ["statement-clicks.png", "statement-history.png"]
    assert (tmp_path / "preview" / "statement-history.png").read_bytes() == out.images[HISTORY_CID]
    assert "cid:" not in html
    assert (tmp_path / "preview" / "statement.txt").read_text(encoding="utf-8") == out.text


def test_no_address_in_any_output() -> None:
    outputs = [render_statement(make()) for make in samples.SAMPLES.values()]
    outputs.append(render_summary(samples.summary()))
    for out in outputs:
        assert EMAIL.findall(out.text) == []
        assert set(EMAIL.findall(out.html)) <= {HISTORY_CID, CLICKS_CID}


def test_the_coordinator_summary() -> None:
    out = render_summary(samples.summary())
    assert out.images == {}
    assert out.subject == (
        "Growth Circle coordinator summary, 2026-W48: 38 mailings, 6,482 human clicks, "
        "2 sending accounts to check"
    )
    for part in (out.html, out.text):
        for figure in ("38", "214,560 delivered", "6,482", "6,397.5 clicks", "\u2212960", "+612",
                       "+131", "20,695 sent", "bounces 6.7% (342)", "complaints 0.15% (6)",
                       "bounces 1.1% (231)", "complaints 0.01% (3)"):  # fmt: skip
            assert figure in part
        assert "Quarry Street Bakery" in part
        assert "Northwind Coaching" in part
        assert "ounces above 5%: providers review accounts past this" in part
        assert "omplaints above 0.1%: providers review accounts past this" in part
    calm = dataclasses.replace(samples.summary(), missed=[], providers=[])
    out = render_summary(calm)
    assert "every commitment due this week was kept" in out.text
    assert "to check" not in out.subject


# Statements built from a database by jvmail.reports.build, rendered end to end.


def _statements(session: Session) -> dict[str, Statement]:
    return {s.partner_slug: s for s in build_statements(session, MONDAY)}


def test_every_figure_is_in_both_parts(session: Session, hub: dict[str, Partner]) -> None:
    ana = _statements(session)["ana"]
    out = render_statement(ana)
    for text in (out.html, out.text):
        assert "You owe the alliance 4 clicks" in text
        for value in (ana.given_week, ana.received_week, ana.given_total, ana.received_total):
            assert number(value) in text
        for line in [*ana.gave, *ana.received]:
            assert f"{line.human_clicks} clicks" in text
            assert f"{number(line.delivered)} delivered" in text
        assert "Cho" in text  # the ally thanked
    assert "Mailing for a partner below would even things out" in out.text  # the taker flag
    assert set(out.images) == {"history@jvmail", "clicks@jvmail"}
    assert all(png.startswith(PNG) for png in out.images.values())
    assert render_statement(ana).images == out.images  # the same data, the same bytes


def test_the_headline_says_who_owes_whom(session: Session, hub: dict[str, Partner]) -> None:
    ana = _statements(session)["ana"]
    assert headline(dataclasses.replace(ana, net=12.0)) == "The alliance owes you 12 clicks"
    delivered = dataclasses.replace(ana, net=-3.5, metric="delivered")
    assert headline(delivered) == "You owe the alliance 3.5 deliveries"
    assert headline(dataclasses.replace(ana, net=0.2)) == "You and the alliance are even"


def test_partner_names_from_the_database_are_escaped(
    session: Session, hub: dict[str, Partner]
) -> None:
    hub["cho"].name = "<script>alert(1)</script> & Co"
    session.commit()
    out = render_statement(_statements(session)["ana"])
    assert "<script>" not in out.html
    assert "&lt;script&gt;" in out.html
    assert "<script>alert(1)</script> & Co" in out.text  # plain text is plain


def test_a_quiet_built_week_is_short(session: Session, hub: dict[str, Partner]) -> None:
    (quiet,) = build_statements(session, MONDAY + dt.timedelta(weeks=6), ["cho"])
    out = render_statement(quiet)
    assert quiet.quiet
    assert "A quiet week" in out.text
    assert len(out.text) < 1500
    assert out.images == {}


def test_no_subscriber_address_in_any_output(
    session: Session, hub: dict[str, Partner], tmp_path: Path
) -> None:
    outputs = [render_statement(s) for s in build_statements(session, MONDAY)]
    outputs.append(render_summary(build_summary(session, MONDAY)))
    for out in outputs:
        message = statement_message(
            out,
            hub="Hub",
            from_addr="s@jv.example",
            to_addr="p@p.example",
            tag="w/x",
            domain="jv.example",
        )
        raw = bytes(message).decode("utf-8", "replace")
        assert "secret.example" not in raw
        assert "canary" not in out.html + out.text


def test_files_preview_in_a_browser_at_phone_and_desktop_widths(
    session: Session, hub: dict[str, Partner], tmp_path: Path
) -> None:
    chromium = shutil.which("chromium")
    if chromium is None:
        unavailable("Chromium", "no chromium on PATH; on Debian: apt-get install chromium")
    playwright = pytest.importorskip("playwright.sync_api")
    statements = build_statements(session, MONDAY)
    pages = []
    for st in statements:
        files = write_files(render_statement(st), tmp_path, f"statement-{st.partner_slug}")
        html = next(f for f in files if f.suffix == ".html")
        assert all((tmp_path / f.name).exists() for f in files)
        pages.append(html)
    pages.append(
        next(
            f
            for f in write_files(
                render_summary(build_summary(session, MONDAY)), tmp_path, "summary"
            )
            if f.suffix == ".html"
        )
    )
    ARTIFACTS.mkdir(exist_ok=True)
    overflowing = """() => [...document.querySelectorAll('body *')]
        .filter(e => e.getBoundingClientRect().right > window.innerWidth + 0.5)
        .map(e => e.tagName + '.' + e.className)"""
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        for width in (390, 1280):
            page = browser.new_page(viewport={"width": width, "height": 900})
            for html in pages:
                page.goto(html.as_uri())
                assert page.evaluate("document.documentElement.scrollWidth") <= width
                assert page.evaluate(overflowing) == []
                images = page.evaluate("[...document.images].map(i => i.naturalWidth)")
                assert all(w > 0 for w in images)  # every chart loaded
                page.screenshot(path=str(ARTIFACTS / f"{html.stem}-{width}.png"), full_page=True)
            page.close()
        browser.close()
