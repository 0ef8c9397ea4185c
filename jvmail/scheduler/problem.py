"""The scheduling problem and its plan: plain frozen data, JSON in and out, no database.

A :class:`Problem` is everything the scheduler may look at for one week; a :class:`Plan` is what
it decides. Both serialize to a documented JSON format (``to_json`` / ``from_json``) so a real
hub's week can be exported, attached to a bug report and solved again byte for byte.

JSON format (version 1)::

    {"version": 1, "week_start": "2026-11-30",            # a Monday
     "settings": {"pair_cap": 2, "balance_weight": 1.0, "excess_weight": 2.0, "tolerance": 0.15},
     "niche_groups": {"webflow": "web-design", ...},      # niche -> category (optional)
     "balances": {"partner-id": 12.5, ...},                # carried net: given - received
     "lists": [{"id", "owner", "size", "click_rate", "niches", "weekly_cap", "daily_slots",
                "days": ["2026-12-01", ...], "send_hour", "overlap": {"partner-id": 0.2}}],
     "promotions": [{"id", "owner", "niches", "start", "end", "wanted", "exclude": [...]}],
     "fixed": [{"day", "hour", "list", "promotion", "value"}],      # optional
     "previous": [{"day", "hour", "list", "promotion", "value"}]}   # optional

``days`` are the list's sendable dates this week (allowed weekdays minus blackouts), already
resolved in the list owner's time zone; ``hour`` is the list's local send hour.

Re-planning a week: ``fixed`` are mailings already sent or approved. They stay in the plan as
they are, use up capacity and count in the balances. ``previous`` is the rest of the week's
earlier plan: the solver keeps those mailings where it can (each is worth ``stability`` times
its value extra to the solver, never in the reported figures) and changes as little as it can.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["Assignment", "ListSpec", "Plan", "Problem", "PromotionSpec", "Settings"]

FORMAT_VERSION = 1


@dataclass(frozen=True)
class Settings:
    """Objective weights. ``tolerance`` is relative to a partner's weekly trading volume."""

    pair_cap: int = 2  # mailings one partner does for one other partner per week
    balance_weight: float = 1.0  # lambda1 on sum |b_p|; must exceed 1/2 (see SCHEDULING notes)
    excess_weight: float = 2.0  # lambda2 on |b_p| beyond the tolerance
    tolerance: float = 0.15
    stability: float = 0.2  # when re-planning: bonus, as a share of value, to keep a mailing


@dataclass(frozen=True, order=True)
class Assignment:
    """The list's owner mails ``promotion`` to ``list`` on ``day`` at ``hour`` (list-local)."""

    day: dt.date
    list: str
    promotion: str
    value: float
    hour: int


@dataclass(frozen=True)
class ListSpec:
    id: str
    owner: str
    size: int
    click_rate: float
    niches: tuple[str, ...]
    weekly_cap: int
    daily_slots: int  # 1, or 2 for a digest
    days: tuple[dt.date, ...]
    send_hour: int
    overlap: dict[str, float] = field(default_factory=dict)  # partner -> shared audience share


@dataclass(frozen=True)
class PromotionSpec:
    id: str
    owner: str
    niches: tuple[str, ...]
    start: dt.date
    end: dt.date
    wanted: int
    exclude: tuple[str, ...] = ()


@dataclass(frozen=True)
class Problem:
    week_start: dt.date
    lists: tuple[ListSpec, ...]
    promotions: tuple[PromotionSpec, ...]
    balances: dict[str, float] = field(default_factory=dict)
    niche_groups: dict[str, str] = field(default_factory=dict)
    settings: Settings = Settings()
    fixed: tuple[Assignment, ...] = ()
    previous: tuple[Assignment, ...] = ()

    @property
    def week(self) -> tuple[dt.date, ...]:
        return tuple(self.week_start + dt.timedelta(days=n) for n in range(7))

    def to_json(self) -> str:
        data = {"version": FORMAT_VERSION, **asdict(self)}
        return json.dumps(data, default=_encode, sort_keys=True, indent=1)

    @classmethod
    def from_json(cls, text: str) -> Problem:
        data: dict[str, Any] = json.loads(text)
        if data.pop("version", None) != FORMAT_VERSION:
            raise ValueError(f"unsupported problem format; expected version {FORMAT_VERSION}")
        return cls(
            week_start=dt.date.fromisoformat(data["week_start"]),
            lists=tuple(_list(d) for d in data["lists"]),
            promotions=tuple(_promotion(d) for d in data["promotions"]),
            balances={k: float(v) for k, v in data.get("balances", {}).items()},
            niche_groups=dict(data.get("niche_groups", {})),
            settings=Settings(**data.get("settings", {})),
            fixed=tuple(_assignment(d) for d in data.get("fixed", ())),
            previous=tuple(_assignment(d) for d in data.get("previous", ())),
        )


def _encode(value: object) -> str:
    if isinstance(value, dt.date):
        return value.isoformat()
    raise TypeError(f"cannot encode {type(value).__name__}")


def _list(d: dict[str, Any]) -> ListSpec:
    return ListSpec(
        id=d["id"],
        owner=d["owner"],
        size=int(d["size"]),
        click_rate=float(d["click_rate"]),
        niches=tuple(d["niches"]),
        weekly_cap=int(d["weekly_cap"]),
        daily_slots=int(d["daily_slots"]),
        days=tuple(dt.date.fromisoformat(x) for x in d["days"]),
        send_hour=int(d["send_hour"]),
        overlap={k: float(v) for k, v in d.get("overlap", {}).items()},
    )


def _assignment(d: dict[str, Any]) -> Assignment:
    return Assignment(
        day=dt.date.fromisoformat(d["day"]),
        list=d["list"],
        promotion=d["promotion"],
        value=float(d["value"]),
        hour=int(d["hour"]),
    )


def _promotion(d: dict[str, Any]) -> PromotionSpec:
    return PromotionSpec(
        id=d["id"],
        owner=d["owner"],
        niches=tuple(d["niches"]),
        start=dt.date.fromisoformat(d["start"]),
        end=dt.date.fromisoformat(d["end"]),
        wanted=int(d["wanted"]),
        exclude=tuple(d.get("exclude", ())),
    )


@dataclass(frozen=True)
class Plan:
    assignments: tuple[Assignment, ...]
