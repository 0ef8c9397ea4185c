"""What a weekly reciprocity statement says, as plain data: built by
:mod:`jvmail.reports.build` from the ledger and tracking, rendered by
:mod:`jvmail.reports.render`. Aggregates only: no subscriber address is ever in here.

Values are in the hub's value metric (``metric``: clicks, delivered or conversions). Signs follow
the ledger: a partner's net is value given minus value received, so a positive net means the
alliance owes it.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

__all__ = [
    "Ally",
    "Commitment",
    "CoordinatorSummary",
    "MailingLine",
    "PairLine",
    "PartnerFigure",
    "ProviderHealth",
    "Statement",
    "Suggestion",
    "WeekPoint",
]


@dataclass(frozen=True)
class MailingLine:
    """One mailing of the week, seen from the statement's partner."""

    day: dt.date  # in the statement partner's timezone
    promotion: str  # the promotion's subject
    owner: str  # the promotion's owner (name)
    sender: str  # the partner that mailed it (name)
    list: str  # the list it went to (name)
    status: str  # sent, sending, paused, failed, cancelled...
    delivered: int
    human_clicks: int  # unique human clicks
    conversions: float  # net of refunds
    value: float  # what the ledger counts for it (measured, else expected)


@dataclass(frozen=True)
class PairLine:
    """The balance with one partner P deals with: ``net`` > 0 means that partner owes P."""

    partner: str
    given: float  # P gave to it, all time
    received: float  # P received from it, all time
    net: float


@dataclass(frozen=True)
class Commitment:
    """A mailing planned for next week, made by P or for P."""

    day: dt.date
    sender: str
    list: str
    promotion: str
    owner: str
    status: str  # planned, approved or awaiting_approval
    expected_value: float
    review_url: str | None = None  # P's approve/decline link, for P's own pending ones


@dataclass(frozen=True)
class Ally:
    partner: str
    given_to_you: float  # all time


@dataclass(frozen=True)
class Suggestion:
    """A partner P could help next: the alliance owes it, and one of P's lists fits."""

    partner: str
    owed: float  # that partner's net: what the alliance owes it
    promotion: str
    list: str  # P's list it fits
    why: str  # "the alliance owes it 120 clicks" / "you want to meet coaching partners"


@dataclass(frozen=True)
class WeekPoint:
    """Cumulative value at the end of an ISO week."""

    week: str  # "2026-W48"
    given: float
    received: float


@dataclass(frozen=True)
class Statement:
    partner_slug: str
    partner: str  # its name
    hub: str  # the hub's name
    week: str  # "2026-W48"
    start: dt.date  # Monday, in the partner's timezone
    end: dt.date  # Sunday
    timezone: str
    metric: str  # clicks, delivered or conversions
    gave: list[MailingLine]  # mailings P made for others this week
    received: list[MailingLine]  # mailings others made for P this week
    given_week: float
    received_week: float
    given_total: float  # since joining
    received_total: float
    net: float  # given_total - received_total
    pairs: list[PairLine]  # every partner P ever traded with, largest |net| first
    pays: list[PairLine]  # after multilateral netting: whom P owes (net < 0) or who owes P
    next_week: list[Commitment]  # P's commitments next week (P sends)
    incoming: list[Commitment]  # what others plan to send for P next week
    pending_approvals: list[Commitment]  # mailings onto P's lists awaiting P's approval
    kept: int  # P's commitments sent on time (all time)
    due: int  # P's commitments due (all time)
    partners_kept: int  # the same for the partners who mail for P
    partners_due: int
    allies: list[Ally]  # who gave P the most, most first (at most 3)
    taker: bool  # P has received much more than it gave: a gentle flag
    suggestions: list[Suggestion]
    history: list[WeekPoint]  # the last 12 weeks, oldest first, cumulative
    clicks_by_partner: dict[str, int] = field(default_factory=dict)  # this week, by counterpart

    @property
    def quiet(self) -> bool:
        """Nothing happened for P this week and nothing is planned."""
        return not (self.gave or self.received or self.next_week or self.incoming)


@dataclass(frozen=True)
class PartnerFigure:
    partner: str
    net: float
    given_week: float
    received_week: float


@dataclass(frozen=True)
class ProviderHealth:
    """One sending account's week: bounce and complaint rates against the providers' lines."""

    partner: str
    provider: str
    sent: int
    bounces: int
    complaints: int

    @property
    def bounce_rate(self) -> float:
        return self.bounces / self.sent if self.sent else 0.0

    @property
    def complaint_rate(self) -> float:
        return self.complaints / self.sent if self.sent else 0.0

    @property
    def warning(self) -> str:
        if self.bounce_rate > 0.05:
            return "bounces above 5%: providers review accounts past this"
        if self.complaint_rate > 0.001:
            return "complaints above 0.1%: providers review accounts past this"
        return ""


@dataclass(frozen=True)
class CoordinatorSummary:
    hub: str
    week: str
    metric: str
    mailings: int
    delivered: int
    human_clicks: int
    value: float
    most_balanced: list[PartnerFigure]
    least_balanced: list[PartnerFigure]
    missed: list[str]  # partners who missed commitments this week
    providers: list[ProviderHealth]
