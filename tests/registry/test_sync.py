"""Sync on SQLite and PostgreSQL: diffs, idempotence, archiving and suppressions that stick."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from jvmail.config import load_config
from jvmail.db.models import (
    MailingList,
    Partner,
    Promotion,
    Subscriber,
    SubscriberStatus,
    Suppression,
    SuppressionReason,
)
from jvmail.errors import SubscriberImportError
from jvmail.registry import SyncReport, sync_hub

CSV = "subscribers/your-newsletter.csv"


def _sync(session: Session, hub_dir: Path, strict: bool = False) -> SyncReport:
    report = sync_hub(session, load_config(hub_dir), strict=strict)
    session.commit()
    return report


def _actions(report: SyncReport) -> set[tuple[str, str, str]]:
    return {(c.kind, c.slug, c.action) for c in report.changes}


def _statuses(session: Session) -> dict[str, tuple[SubscriberStatus, bool]]:
    rows = session.execute(select(Subscriber.email, Subscriber.status, Subscriber.archived_at))
    return {email: (status, archived is not None) for email, status, archived in rows}


def test_first_sync_adds_and_second_changes_nothing(session: Session, starter_hub: Path) -> None:
    first = _sync(session, starter_hub)
    assert _actions(first) == {
        ("hub", "settings", "added"),
        ("partner", "your-business", "added"),
        ("list", "your-newsletter", "added"),
        ("promotion", "free-site-review", "added"),
    }
    assert [(r.added, r.rows) for r in first.imports] == [(2, 2)]
    second = _sync(session, starter_hub)
    assert second.is_noop
    assert second.changes == []
    assert [(r.added, r.changed, r.archived) for r in second.imports] == [(0, 0, 0)]


def test_changes_are_reported_field_by_field(session: Session, starter_hub: Path) -> None:
    _sync(session, starter_hub)
    partner_file = starter_hub / "partners" / "your-business.toml"
    text = partner_file.read_text().replace("max_sends_per_week = 1", "max_sends_per_week = 2")
    partner_file.write_text(text.replace('"Your Newsletter"', '"The Newsletter"'))
    (starter_hub / CSV).write_text(
        "email,first_name\nada@example.com,Ada L.\nlinus@example.net,Linus\n"
    )
    report = _sync(session, starter_hub)
    assert [(c.slug, c.action, c.fields) for c in report.changes] == [
        ("your-newsletter", "changed", ("max_sends_per_week", "name"))
    ]
    [result] = report.imports
    assert (result.added, result.changed, result.archived) == (1, 1, 1)
    assert _statuses(session) == {
        "ada@example.com": (SubscriberStatus.SUBSCRIBED, False),
        "grace@example.org": (SubscriberStatus.SUBSCRIBED, True),
        "linus@example.net": (SubscriberStatus.SUBSCRIBED, False),
    }
    assert session.scalar(select(MailingList.max_sends_per_week)) == 2


def test_removed_config_is_archived_not_deleted_and_can_return(
    session: Session, starter_hub: Path
) -> None:
    _sync(session, starter_hub)
    partner_file = starter_hub / "partners" / "your-business.toml"
    original = partner_file.read_text()
    partner_file.write_text(original.split("[[promotions]]")[0])
    report = _sync(session, starter_hub)
    assert _actions(report) == {("promotion", "free-site-review", "archived")}
    assert session.scalar(select(Promotion.archived_at)) is not None
    partner_file.write_text(original)
    restored = _sync(session, starter_hub)
    assert _actions(restored) == {("promotion", "free-site-review", "restored")}
    assert session.scalar(select(Promotion.archived_at)) is None


def test_removing_a_partner_archives_it(session: Session, starter_hub: Path) -> None:
    _sync(session, starter_hub)
    (starter_hub / "partners" / "your-business.toml").unlink()
    report = _sync(session, starter_hub)
    assert {a for _, _, a in _actions(report)} == {"archived"}
    assert len(report.changes) == 3
    assert session.scalar(select(func.count()).select_from(Partner)) == 1


def test_resync_never_resubscribes(session: Session, starter_hub: Path) -> None:
    _sync(session, starter_hub)
    ada = session.scalars(select(Subscriber).where(Subscriber.email == "ada@example.com")).one()
    ada.status = SubscriberStatus.UNSUBSCRIBED
    session.commit()
    (starter_hub / CSV).write_text("email,first_name\nADA@example.com,Ada Lovelace\n")
    report = _sync(session, starter_hub)
    assert report.imports[0].changed == 1  # the name changed, the status did not
    assert _statuses(session)["ada@example.com"] == (SubscriberStatus.UNSUBSCRIBED, False)


def test_new_address_arrives_suppressed(session: Session, starter_hub: Path) -> None:
    _sync(session, starter_hub)
    owner = session.scalars(select(Partner)).one()
    session.add(
        Suppression(partner_id=owner.id, email="new@example.com", reason=SuppressionReason.BOUNCED)
    )
    session.commit()
    (starter_hub / CSV).write_text("email\nada@example.com\ngrace@example.org\nnew@example.com\n")
    _sync(session, starter_hub)
    assert _statuses(session)["new@example.com"] == (SubscriberStatus.BOUNCED, False)


def test_duplicates_collapse_to_the_first(session: Session, starter_hub: Path) -> None:
    (starter_hub / CSV).write_text(
        "email,first_name,city\nada@example.com,Ada,London\nADA@example.com,Augusta,Paris\n"
    )
    report = _sync(session, starter_hub)
    assert (report.imports[0].rows, report.imports[0].duplicates) == (2, 1)
    row = session.scalars(select(Subscriber)).one()
    assert (row.first_name, row.attributes) == ("Ada", {"city": "London"})


def test_bad_rows_are_skipped_or_fail_strict(session: Session, starter_hub: Path) -> None:
    (starter_hub / CSV).write_text("email\nada@example.com\nnope\n")
    with pytest.raises(SubscriberImportError, match=r"your-newsletter.csv:3"):
        sync_hub(session, load_config(starter_hub), strict=True)
    session.rollback()
    assert session.scalar(select(func.count()).select_from(Partner)) == 0
    report = _sync(session, starter_hub)
    assert (report.imports[0].added, report.imports[0].bad_count) == (1, 1)
    assert report.imports[0].bad[0].line == 3


def test_first_import_of_a_new_list_honours_the_owners_suppressions(
    session: Session, starter_hub: Path
) -> None:
    _sync(session, starter_hub)
    owner = session.scalars(select(Partner)).one()
    session.add(
        Suppression(
            partner_id=owner.id, email="grace@example.org", reason=SuppressionReason.COMPLAINED
        )
    )
    session.commit()
    partner_file = starter_hub / "partners" / "your-business.toml"
    partner_file.write_text(
        partner_file.read_text().replace(
            "[[promotions]]",
            '[[lists]]\nid = "second-list"\nname = "Second"\nsubscribers = "second.csv"\n'
            'niches = ["web-design"]\n\n[[promotions]]',
        )
    )
    (starter_hub / "second.csv").write_text("email\nGrace@example.org\nnew@example.com\n")
    report = _sync(session, starter_hub)
    assert [(r.list_slug, r.added) for r in report.imports] == [
        ("your-newsletter", 0),
        ("second-list", 2),
    ]
    second = session.scalars(select(MailingList).where(MailingList.slug == "second-list")).one()
    rows = session.execute(
        select(Subscriber.email, Subscriber.status).where(Subscriber.list_id == second.id)
    )
    assert dict(rows.all()) == {
        "grace@example.org": SubscriberStatus.COMPLAINED,
        "new@example.com": SubscriberStatus.SUBSCRIBED,
    }
