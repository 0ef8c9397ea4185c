"""Sample statements and a coordinator summary, built by hand for the renderer's tests.

Aggregates only, like the real ones: no subscriber address anywhere. Numbers are distinct on
purpose, so a test can find each one in the rendered output.
"""

from __future__ import annotations

import dataclasses
import datetime as dt

from jvmail.reports.model import (
    Ally,
    Commitment,
    CoordinatorSummary,
    MailingLine,
    PairLine,
    PartnerFigure,
    ProviderHealth,
    Statement,
    Suggestion,
    WeekPoint,
)

__all__ = ["SAMPLES", "approvals", "busy", "long_names", "quiet", "summary", "taker"]

HUB = "Growth Circle"
MONDAY = dt.date(2026, 11, 23)  # 2026-W48
NEXT = MONDAY + dt.timedelta(weeks=1)
REVIEW = "https://hub.example/review/m-4821?sig=3f9a1c&exp=1765152000"


def _history(given_end: float, received_end: float) -> list[WeekPoint]:
    """Twelve weeks of cumulative value, ending at the given totals."""
    points = []
    for n in range(12):
        share = (n + 4) / 15
        week = (MONDAY - dt.timedelta(weeks=11 - n)).isocalendar()
        points.append(
            WeekPoint(
                f"{week.year}-W{week.week:02d}",
                round(given_end * share if n < 11 else given_end),
                round(received_end * (share + 0.02 * (n % 3)) if n < 11 else received_end),
            )
        )
    return points


def busy() -> Statement:
    """A busy week for a fair partner: the alliance owes it 131 clicks."""
    gave = [
        MailingLine(MONDAY, "Winter Sprint Planner", "Lumen Labs", "Pixel & Pine",
                    "Pine Notes Weekly", "sent", 12_480, 317, 12, 317),
        MailingLine(MONDAY + dt.timedelta(days=3), "Coaching Intensive: January cohort",
                    "Northwind Coaching", "Pixel & Pine", "Pine Notes Weekly", "sent",
                    8_215, 204, 4.5, 204),
    ]  # fmt: skip
    received = [
        MailingLine(MONDAY + dt.timedelta(days=1), "Brush Pen Masterclass", "Pixel & Pine",
                    "Copper Kettle", "Kettle Crafters", "sent", 3_907, 96, 0, 96),
        MailingLine(MONDAY + dt.timedelta(days=2), "Brush Pen Masterclass", "Pixel & Pine",
                    "Lumen Labs", "Lumen Letters", "sent", 5_112, 141, 7, 141),
        MailingLine(MONDAY + dt.timedelta(days=4), "Lettering Starter Kit", "Pixel & Pine",
                    "Harbor Yoga", "Harbor Breath", "paused", 1_046, 58, 2, 58),
    ]  # fmt: skip
    return Statement(
        partner_slug="pixel-and-pine",
        partner="Pixel & Pine",
        hub=HUB,
        week="2026-W48",
        start=MONDAY,
        end=MONDAY + dt.timedelta(days=6),
        timezone="Europe/Paris",
        metric="clicks",
        gave=gave,
        received=received,
        given_week=521,
        received_week=295,
        given_total=4_862,
        received_total=4_731,
        net=131,
        pairs=[
            PairLine("Lumen Labs", 1_840, 1_502, 338),
            PairLine("Northwind Coaching", 1_120, 1_390, -270),
            PairLine("Copper Kettle", 902, 1_011, -109),
            PairLine("Harbor Yoga", 1_000, 828, 172),
        ],
        pays=[PairLine("Lumen Labs", 0, 0, 212), PairLine("Copper Kettle", 0, 0, -81)],
        next_week=[
            Commitment(
                NEXT + dt.timedelta(days=1),
                "Pixel & Pine",
                "Pine Notes Weekly",
                "Mindful Mornings course",
                "Harbor Yoga",
                "approved",
                180,
            ),
            Commitment(
                NEXT + dt.timedelta(days=3),
                "Pixel & Pine",
                "Pine Notes Weekly",
                "Spring Launch Toolkit",
                "Lumen Labs",
                "awaiting_approval",
                140.5,
                REVIEW,
            ),
        ],
        incoming=[
            Commitment(
                NEXT + dt.timedelta(days=2),
                "Copper Kettle",
                "Kettle Crafters",
                "Brush Pen Masterclass",
                "Pixel & Pine",
                "planned",
                160,
            ),
        ],
        pending_approvals=[
            Commitment(
                NEXT + dt.timedelta(days=3),
                "Pixel & Pine",
                "Pine Notes Weekly",
                "Spring Launch Toolkit",
                "Lumen Labs",
                "awaiting_approval",
                140.5,
                REVIEW,
            ),
        ],
        kept=23,
        due=24,
        partners_kept=31,
        partners_due=34,
        allies=[
            Ally("Lumen Labs", 1_502),
            Ally("Northwind Coaching", 1_390),
            Ally("Copper Kettle", 1_011),
        ],
        taker=False,
        suggestions=[
            Suggestion(
                "Harbor Yoga",
                260,
                "Mindful Mornings course",
                "Pine Notes Weekly",
                "the alliance owes it 260 clicks",
            ),
        ],
        history=_history(4_862, 4_731),
        clicks_by_partner={
            "Lumen Labs": 458,
            "Northwind Coaching": 204,
            "Copper Kettle": 96,
            "Harbor Yoga": 58,
        },
    )


def taker() -> Statement:
    """A partner that has received much more than it gave: the gentle flag."""
    st = busy()
    return dataclasses.replace(
        st,
        partner_slug="quarry-street",
        partner="Quarry Street Bakery",
        gave=[],
        received=st.received[:2],
        given_week=0,
        received_week=237,
        given_total=420,
        received_total=1_380,
        net=-960,
        pairs=[PairLine("Lumen Labs", 120, 780, -660), PairLine("Copper Kettle", 300, 600, -300)],
        pays=[PairLine("Lumen Labs", 0, 0, -610), PairLine("Copper Kettle", 0, 0, -350)],
        next_week=[],
        pending_approvals=[],
        kept=3,
        due=5,
        partners_kept=12,
        partners_due=12,
        allies=[Ally("Lumen Labs", 780), Ally("Copper Kettle", 600)],
        taker=True,
        suggestions=[
            Suggestion(
                "Lumen Labs",
                340,
                "Winter Sprint Planner",
                "Quarry Crumbs",
                "the alliance owes it 340 clicks",
            ),
            Suggestion(
                "Northwind Coaching",
                210,
                "Coaching Intensive",
                "Quarry Crumbs",
                "you want to meet coaching partners",
            ),
        ],
        history=_history(420, 1_380),
        clicks_by_partner={"Copper Kettle": 96, "Lumen Labs": 141},
    )


def quiet() -> Statement:
    """Nothing happened and nothing is planned: a short, friendly note."""
    st = busy()
    return dataclasses.replace(
        st,
        partner_slug="harbor-yoga",
        partner="Harbor Yoga",
        timezone="America/Vancouver",
        gave=[],
        received=[],
        given_week=0,
        received_week=0,
        given_total=1_000,
        received_total=828,
        net=172,
        pays=[],
        next_week=[],
        incoming=[],
        pending_approvals=[],
        allies=[],
        clicks_by_partner={},
    )


def approvals() -> Statement:
    """Little traffic, but mailings onto the partner's list wait for its approval."""
    st = busy()
    pending = [
        Commitment(NEXT, "Copper Kettle", "Kettle Crafters", "Pottery Weekend Retreat",
                   "Lumen Labs", "awaiting_approval", 95, REVIEW.replace("4821", "4830")),
        Commitment(NEXT + dt.timedelta(days=4), "Copper Kettle", "Kettle Crafters",
                   "Glaze Recipes Ebook", "Northwind Coaching", "awaiting_approval", 42),
    ]  # fmt: skip
    return dataclasses.replace(
        st,
        partner_slug="copper-kettle",
        partner="Copper Kettle",
        gave=st.received[:1],
        received=[],
        given_week=96,
        received_week=0,
        given_total=1_011,
        received_total=1_011,
        net=0,
        pays=[],
        next_week=pending,
        incoming=[],
        pending_approvals=pending,
        taker=False,
        suggestions=[],
        allies=[Ally("Pixel & Pine", 902)],
        clicks_by_partner={"Pixel & Pine": 96},
    )


_LONG = "Supercalifragilisticexpialidociousnewsletterdigestforcreativeentrepreneurs"


def long_names() -> Statement:
    """Names and subjects far longer than a phone is wide, some without a space to break at."""
    st = busy()
    far = "The Extraordinarily Long-Named Mindfulness & Productivity Collective International"

    def stretch(line: MailingLine) -> MailingLine:
        return dataclasses.replace(
            line,
            promotion=f"{line.promotion}: the complete, unabridged, {_LONG} edition of 2027",
            owner=far,
            list=_LONG,
        )

    return dataclasses.replace(
        st,
        partner_slug="long",
        partner=far,
        hub=f"{HUB} of Independent Creative Businesses Across Europe and North America",
        gave=[stretch(m) for m in st.gave],
        received=[stretch(m) for m in st.received],
        pairs=[dataclasses.replace(p, partner=f"{p.partner} {_LONG}") for p in st.pairs],
        pays=[dataclasses.replace(p, partner=_LONG) for p in st.pays],
        next_week=[dataclasses.replace(c, owner=_LONG, list=_LONG) for c in st.next_week],
        pending_approvals=[
            dataclasses.replace(c, promotion=_LONG, review_url=f"{REVIEW}&pad={_LONG}")
            for c in st.pending_approvals
        ],
        allies=[dataclasses.replace(a, partner=f"{a.partner} {_LONG}") for a in st.allies],
        suggestions=[dataclasses.replace(s, partner=_LONG, list=_LONG) for s in st.suggestions],
        clicks_by_partner={f"{k} {_LONG}": v for k, v in st.clicks_by_partner.items()},
    )


def summary() -> CoordinatorSummary:
    return CoordinatorSummary(
        hub=HUB,
        week="2026-W48",
        metric="clicks",
        mailings=38,
        delivered=214_560,
        human_clicks=6_482,
        value=6_397.5,
        most_balanced=[
            PartnerFigure("Copper Kettle", 0, 96, 0),
            PartnerFigure("Harbor Yoga", 14, 0, 58),
            PartnerFigure("Pixel & Pine", 131, 521, 295),
        ],
        least_balanced=[
            PartnerFigure("Quarry Street Bakery", -960, 0, 237),
            PartnerFigure("Lumen Labs", 612, 237, 317),
        ],
        missed=["Quarry Street Bakery", "Northwind Coaching"],
        providers=[
            ProviderHealth("Pixel & Pine", "sendgrid", 20_695, 231, 3),
            ProviderHealth("Lumen Labs", "postmark", 5_112, 342, 1),  # bounces 6.7%
            ProviderHealth("Copper Kettle", "ses", 3_907, 40, 6),  # complaints 0.15%
        ],
    )


SAMPLES = {
    "busy": busy,
    "quiet": quiet,
    "taker": taker,
    "approvals": approvals,
    "long": long_names,
}
