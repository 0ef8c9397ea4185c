"""Sync a validated config directory into the database: upsert, archive, import subscribers.

:func:`sync_hub` works inside the caller's session and never commits: the CLI commits once at the
end (or rolls back for ``--dry-run``), so a sync is all or nothing. Running it twice in a row
reports no changes the second time.
"""

from __future__ import annotations

import datetime as dt
import secrets
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar

from sqlalchemy import select, text
from sqlalchemy.orm import Session

from jvmail.config import Hub, ListConfig, PartnerConfig, PromotionConfig, ProviderAccount
from jvmail.db.models import HubRecord, MailingList, Partner, Promotion
from jvmail.registry.subscribers import ImportResult, import_subscribers

__all__ = ["Change", "ImportProgress", "SyncReport", "sync_hub"]


@dataclass(frozen=True)
class Change:
    """One registry row that a sync added, changed, archived or restored."""

    kind: str  # hub | partner | list | promotion
    slug: str
    action: str  # added | changed | archived | restored
    fields: tuple[str, ...] = ()


@dataclass
class SyncReport:
    changes: list[Change] = field(default_factory=list)
    imports: list[ImportResult] = field(default_factory=list)

    @property
    def is_noop(self) -> bool:
        return not self.changes and all(r.is_noop for r in self.imports)


class ImportProgress(Protocol):
    """Told about each list's import: ``start`` with the file size, then bytes read so far."""

    def start(self, list_slug: str, total_bytes: int) -> Callable[[int], None]: ...


class _Row(Protocol):
    slug: str
    archived_at: dt.datetime | None
    updated_at: dt.datetime


RowT = TypeVar("RowT", Partner, MailingList, Promotion)


def sync_hub(
    session: Session,
    hub: Hub,
    *,
    strict: bool = False,
    progress: ImportProgress | None = None,
    now: dt.datetime | None = None,
) -> SyncReport:
    """Make the registry match ``hub`` and import every list's subscribers.

    Raises:
        SubscriberImportError: a CSV could not be read, or a row is bad and ``strict`` is set.
    """
    _lock_registry(session)
    now = now or dt.datetime.now(dt.UTC)
    report = SyncReport()
    _sync_hub_record(session, hub, report, now)
    partners = _sync_kind(session, Partner, _partner_rows(hub), report, now)
    lists = _sync_kind(session, MailingList, _list_rows(hub, partners), report, now)
    _sync_kind(session, Promotion, _promotion_rows(hub, partners), report, now)
    session.flush()
    for partner in hub.partners:
        for lst in partner.lists:
            path = hub.path(lst.subscribers)
            on_bytes = progress.start(lst.id, path.stat().st_size) if progress else None
            result = import_subscribers(
                session.connection(),
                list_id=lists[lst.id].id,
                list_slug=lst.id,
                owner_id=partners[partner.id].id,
                path=path,
                label=_label(hub, path),
                strict=strict,
                on_bytes=on_bytes,
                now=now,
            )
            report.imports.append(result)
    return report


# Any constant works; it only has to be the same in every jvmail process.
_SYNC_LOCK_KEY = 0x6A76_7379


def _lock_registry(session: Session) -> None:
    """Serialize syncs: a second one waits for the first to commit, then sees its rows.

    PostgreSQL takes a transaction-scoped advisory lock; SQLite begins with the write lock
    (`BEGIN IMMEDIATE`, waiting up to the busy timeout). It must run before the session's first
    statement to get the SQLite lock up front; a caller already in a transaction gets the write
    lock at the first write instead.
    """
    fresh = not session.in_transaction()
    conn = session.connection(
        execution_options={"sqlite_begin": "BEGIN IMMEDIATE"} if fresh else None
    )
    if conn.dialect.name == "postgresql":
        conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _SYNC_LOCK_KEY})


def _label(hub: Hub, path: Path) -> str:
    try:
        return str(path.relative_to(hub.root.parent))
    except ValueError:
        return str(path)


def _sync_kind(
    session: Session,
    model: type[RowT],
    wanted: Iterable[tuple[str, dict[str, Any]]],
    report: SyncReport,
    now: dt.datetime,
) -> dict[str, RowT]:
    """Upsert ``wanted`` (slug, column values) and archive rows the config no longer has."""
    kind = {"partner": "partner", "mailing_list": "list", "promotion": "promotion"}[
        model.__tablename__
    ]
    existing = {row.slug: row for row in session.scalars(select(model))}
    current: dict[str, RowT] = {}
    for slug, values in wanted:
        row = existing.get(slug)
        if row is None:
            row = model(slug=slug, created_at=now, updated_at=now, **values)
            session.add(row)
            report.changes.append(Change(kind, slug, "added"))
        else:
            _update(row, values, kind, report, now)
        current[slug] = row
    for slug, row in sorted(existing.items()):
        if slug not in current and row.archived_at is None:
            row.archived_at = now
            row.updated_at = now
            report.changes.append(Change(kind, slug, "archived"))
    return current


def _update(
    row: _Row, values: Mapping[str, Any], kind: str, report: SyncReport, now: dt.datetime
) -> None:
    changed = tuple(sorted(k for k, v in values.items() if getattr(row, k) != v))
    restored = row.archived_at is not None
    for key in changed:
        setattr(row, key, values[key])
    if restored:
        row.archived_at = None
    if changed or restored:
        row.updated_at = now
        report.changes.append(
            Change(kind, row.slug, "restored" if restored else "changed", changed)
        )


def _sync_hub_record(session: Session, hub: Hub, report: SyncReport, now: dt.datetime) -> None:
    values: dict[str, Any] = {
        "name": hub.settings.name,
        "base_url": hub.settings.base_url,
        "timezone": hub.settings.timezone,
        "value_metric": hub.settings.value_metric.value,
        "report_day": hub.settings.report_day,
        "credit_window_days": hub.settings.credit_window_days,
        "soft_bounce_days": hub.settings.soft_bounce_days,
        "plan_day": hub.settings.plan_day,
        "plan_hour": hub.settings.plan_hour,
        "report_hour": hub.settings.report_hour,
        "missed_grace_hours": hub.settings.missed_grace_hours,
        "scheduler": hub.scheduler.model_dump(mode="json"),
        "provider": _account(hub, hub.settings.provider),
    }
    row = session.get(HubRecord, 1)
    if row is None:
        key = secrets.token_hex(32)
        session.add(HubRecord(id=1, updated_at=now, link_keys=[key], **values))
        report.changes.append(Change("hub", "settings", "added"))
        return
    if not row.link_keys:  # a hub synced before tracking links existed
        row.link_keys = [secrets.token_hex(32)]
    changed = tuple(sorted(k for k, v in values.items() if getattr(row, k) != v))
    for key in changed:
        setattr(row, key, values[key])
    if changed:
        row.updated_at = now
        report.changes.append(Change("hub", "settings", "changed", changed))


def _account(hub: Hub, account: ProviderAccount) -> dict[str, Any]:
    """A provider account as stored: an outbox's folder resolved against the config directory,
    so that every process writes to the same one, wherever it was started."""
    values: dict[str, Any] = account.model_dump(mode="json")
    if values["kind"] == "outbox":
        values["directory"] = str(hub.path(values["directory"]))
    return values


def _partner_rows(hub: Hub) -> Iterable[tuple[str, dict[str, Any]]]:
    for p in hub.partners:
        yield p.id, _partner_values(hub, p)


def _partner_values(hub: Hub, p: PartnerConfig) -> dict[str, Any]:
    return {
        "name": p.name,
        "contact_email": str(p.contact_email),
        "postal_address": p.postal_address,
        "timezone": p.timezone,
        "categories": list(p.categories),
        "wants_to_meet": list(p.wants_to_meet),
        "provider_kind": p.provider.kind,
        "provider": _account(hub, p.provider),
        "approve_mailings": p.approve_mailings,
        "postback_secret_env": p.postback_secret_env,
    }


def _list_rows(hub: Hub, partners: Mapping[str, Partner]) -> Iterable[tuple[str, dict[str, Any]]]:
    for p in hub.partners:
        for lst in p.lists:
            yield lst.id, _list_values(lst, partners[p.id])


def _list_values(lst: ListConfig, owner: Partner) -> dict[str, Any]:
    return {
        "partner": owner,
        "name": lst.name,
        "subscribers_path": lst.subscribers,
        "niches": list(lst.niches),
        "max_sends_per_week": lst.max_sends_per_week,
        "send_days": list(lst.send_days),
        "send_hour": lst.send_hour,
        "blackout_dates": sorted(d.isoformat() for d in lst.blackout_dates),
        "click_rate": lst.click_rate,
        "digest": lst.digest,
        "overlap": dict(sorted(lst.overlap.items())),
    }


def _promotion_rows(
    hub: Hub, partners: Mapping[str, Partner]
) -> Iterable[tuple[str, dict[str, Any]]]:
    for p in hub.partners:
        for promo in p.promotions:
            yield promo.id, _promotion_values(hub, promo, partners[p.id])


def _body(hub: Hub, inline: str | None, template: str | None) -> str:
    if inline is not None:
        return inline
    assert template is not None  # the config model requires one of the two
    return hub.path(template).read_text(encoding="utf-8")


def _promotion_values(hub: Hub, promo: PromotionConfig, owner: Partner) -> dict[str, Any]:
    return {
        "partner": owner,
        "subject": promo.subject,
        "preheader": promo.preheader,
        "html": _body(hub, promo.html, promo.html_template),
        "text": _body(hub, promo.text, promo.text_template),
        "landing_urls": [str(u) for u in promo.landing_urls],
        "window_start": promo.window_start,
        "window_end": promo.window_end,
        "niches": list(promo.niches),
        "mailings_wanted": promo.mailings_wanted,
        "exclude_partners": sorted(promo.exclude_partners),
    }
