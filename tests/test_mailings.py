"""Mailings after planning: listing a week, approving and declining, on SQLite and PostgreSQL."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from jvmail.config import load_config
from jvmail.db.models import LedgerEntry, LedgerKind, Mailing, MailingStatus
from jvmail.registry import sync_hub
from tests.test_cli import run

WEEK = "2026-W49"


@pytest.fixture
def planned(
    session: Session, example_hub: Path, db_url: str, capsys: pytest.CaptureFixture[str]
) -> Session:
    """The example hub's week planned and saved; lumen-photo and pixel-and-pine approve."""
    partner = example_hub / "partners" / "pixel-and-pine.toml"
    text = partner.read_text()
    partner.write_text(text.replace("\n[provider]", "approve_mailings = true\n\n[provider]", 1))
    sync_hub(session, load_config(example_hub))
    session.commit()
    code, _, err = run(capsys, "--db", db_url, "plan", "--week", WEEK, "--json")
    assert code == 0, err
    return session


def _jv(capsys: pytest.CaptureFixture[str], db_url: str, *args: str) -> tuple[int, Any, str]:
    code, out, err = run(capsys, "--db", db_url, *args)
    return code, json.loads(out) if code == 0 and "--json" in args else out, err


def _week(capsys: pytest.CaptureFixture[str], db_url: str, *args: str) -> list[dict[str, Any]]:
    code, rows, err = _jv(capsys, db_url, "mailings", "--week", WEEK, "--json", *args)
    assert code == 0, err
    assert isinstance(rows, list)
    return rows


def _statuses(session: Session) -> dict[int, MailingStatus]:
    session.expire_all()
    return dict(session.execute(select(Mailing.id, Mailing.status)).all())


def _awaiting(rows: list[dict[str, Any]], sender: str) -> list[int]:
    return [r["id"] for r in rows if r["sender"] == sender]


def test_mailings_on_approving_partners_lists_wait_for_approval(
    planned: Session,
    db_url: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    rows = _week(capsys, db_url)
    assert len(rows) == len(_statuses(planned)) >= 10
    approvers = {"lumen-photo", "pixel-and-pine"}
    for row in rows:
        expected = "awaiting_approval" if row["sender"] in approvers else "planned"
        assert row["status"] == expected, row
    assert {r["sender"] for r in rows if r["status"] == "awaiting_approval"} == approvers
    [lumen] = [r for r in rows if r["list"] == "lumen-light"]
    assert lumen["send_time"] == "Thu 03 Dec 09:00"  # Lisbon time, the list's send hour
    assert lumen["day"] == "2026-12-03"
    assert lumen["local_time"] == "2026-12-03T09:00:00+00:00"  # Lisbon's winter offset
    waiting = _week(capsys, db_url, "--status", "awaiting_approval")
    assert {r["id"] for r in waiting} == {r["id"] for r in rows if r["sender"] in approvers}
    mine = _week(capsys, db_url, "--partner", "lumen-photo")
    assert {r["id"] for r in mine} == {
        r["id"] for r in rows if "lumen-photo" in (r["sender"], r["owner"])
    }
    monkeypatch.setenv("COLUMNS", "200")
    code, out, _ = _jv(capsys, db_url, "mailings", "--week", WEEK)
    assert code == 0
    assert f"│ {lumen['id']} │ Thu 03 Dec 09:00 │ lumen-photo " in out
    assert "awaiting_approval" in out


def test_approve_marks_mailings_approved_and_refuses_anything_else(
    planned: Session, db_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    rows = _week(capsys, db_url)
    [lumen] = _awaiting(rows, "lumen-photo")
    ordinary = next(r["id"] for r in rows if r["status"] == "planned")
    code, done, err = _jv(capsys, db_url, "approve", str(lumen), "--json")
    assert code == 0, err
    assert [(r["id"], r["status"]) for r in done] == [(lumen, "approved")]
    before = _statuses(planned)
    assert before[lumen] is MailingStatus.APPROVED
    pixel = _awaiting(rows, "pixel-and-pine")
    for ids in ([str(lumen)], [str(ordinary)], [str(pixel[0]), str(ordinary)]):
        code, _, err = _jv(capsys, db_url, "approve", *ids)
        assert code == 2
        assert "nothing was changed" in err
        assert "fix: `jvmail approve` takes mailings awaiting approval" in err
    assert _statuses(planned) == before


def test_approve_all_narrowed_by_partner_and_week(
    planned: Session, db_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    rows = _week(capsys, db_url)
    lumen, pixel = _awaiting(rows, "lumen-photo"), _awaiting(rows, "pixel-and-pine")
    args = ["approve", "--all", "--partner", "lumen-photo", "--week", WEEK, "--json"]
    code, done, err = _jv(capsys, db_url, *args)
    assert code == 0, err
    assert [r["id"] for r in done] == lumen
    assert {r["id"] for r in _week(capsys, db_url, "--status", "awaiting_approval")} == set(pixel)
    code, done, _ = _jv(capsys, db_url, "approve", "--all", "--json")
    assert sorted(r["id"] for r in done) == sorted(pixel)
    code, out, _ = _jv(capsys, db_url, "approve", "--all")
    assert (code, out.strip()) == (0, "No mailings await approval there; nothing changed.")


_USAGE_ERRORS = [
    ([], "which mailings?"),
    (["1", "--all"], "give MAILING_ID... or --all, not both"),
    (["--partner", "lumen-photo"], "--partner and --week narrow --all"),
    (["--all", "--partner", "nobody"], "no partner 'nobody' in the registry"),
    (["--all", "--week", "2026-49"], "not an ISO week"),
    (["99999"], "no mailing with id 99999"),
]


def test_approve_usage_errors_change_nothing(
    planned: Session, db_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    before = _statuses(planned)
    for args, message in _USAGE_ERRORS:
        code, _, err = _jv(capsys, db_url, "approve", *args)
        assert (code, message in err, "fix:" in err) == (2, True, True), (args, err)
    assert _statuses(planned) == before


def _ledger(capsys: pytest.CaptureFixture[str], db_url: str, view: str) -> dict[str, Any]:
    code, data, err = _jv(capsys, db_url, "ledger", "--view", view, "--json")
    assert code == 0, err
    return {row["partner"]: row for row in data["partners"]}


def test_decline_drops_the_expected_value_without_a_missed_commitment(
    planned: Session, db_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    [lumen] = [r for r in _week(capsys, db_url) if r["sender"] == "lumen-photo"]
    projected = _ledger(capsys, db_url, "projected")
    args = ["decline", str(lumen["id"]), "--reason", "ran a similar offer", "--json"]
    code, [done], err = _jv(capsys, db_url, *args)
    assert code == 0, err
    assert (done["status"], done["review_note"]) == ("declined", "ran a similar offer")
    [correction] = planned.scalars(
        select(LedgerEntry).where(
            LedgerEntry.mailing_id == lumen["id"], LedgerEntry.kind == LedgerKind.CORRECTION
        )
    )
    assert correction.value == pytest.approx(-lumen["expected_value"])
    assert "ran a similar offer" in correction.note
    after = _ledger(capsys, db_url, "projected")
    value = lumen["expected_value"]
    assert after["lumen-photo"]["net"] == pytest.approx(projected["lumen-photo"]["net"] - value)
    assert after[lumen["owner"]]["net"] == pytest.approx(projected[lumen["owner"]]["net"] + value)
    assert (after["lumen-photo"]["reliability"], after["lumen-photo"]["due"]) == ("-", 0)
    code, _, err = _jv(capsys, db_url, "decline", str(lumen["id"]))
    assert code == 2
    assert f"cannot decline mailing {lumen['id']}: it is declined" in err
    code, _, err = _jv(capsys, db_url, "approve", str(lumen["id"]))
    assert code == 2


def test_decline_needs_ids_and_a_short_reason(
    planned: Session, db_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    [lumen] = _awaiting(_week(capsys, db_url), "lumen-photo")
    code, _, err = _jv(capsys, db_url, "decline")
    assert code == 2
    assert "Missing argument" in err
    code, _, err = _jv(capsys, db_url, "decline", str(lumen), "--reason", "x" * 401)
    assert code == 2
    assert "at most 400" in err
    assert _statuses(planned)[lumen] is MailingStatus.AWAITING_APPROVAL
