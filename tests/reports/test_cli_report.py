"""`jvmail report` as a user runs it: a table, preview files, JSON, and sending each statement
once (again only with --resend)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import select
from sqlalchemy.orm import Session

from jvmail.cli import cli
from jvmail.db.models import Partner, StatementSend

WEEK = "2026-W43"


def test_report_previews_prints_and_sends_once(
    db_url: str,
    session: Session,
    hub: dict[str, Partner],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("JVMAIL_OUTBOX", str(tmp_path / "outbox"))
    monkeypatch.delenv("JVMAIL_STATEMENTS_SMTP", raising=False)
    runner = CliRunner()

    def run(*args: str) -> str:
        result = runner.invoke(cli, ["--db", db_url, "report", "--week", WEEK, *args])
        assert result.exit_code == 0, result.output
        return result.output

    table = run()
    assert "ana" in table
    assert "cho" in table
    data = json.loads(run("--json"))
    assert {s["partner_slug"] for s in data["statements"]} == {"ana", "ben", "cho"}
    assert data["summary"]["mailings"] == 4
    run("--out", str(tmp_path / "preview"))
    names = {p.name for p in (tmp_path / "preview").iterdir()}
    assert {"2026-W43-ana.html", "2026-W43-ana.txt", "2026-W43-coordinator.html"} <= names
    assert "3 statement(s) sent" in run("--send")
    assert "0 statement(s) sent" in run("--send")  # each (partner, week) once
    assert "1 statement(s) sent" in run("--send", "--resend", "--partner", "ana")
    sent = sorted((tmp_path / "outbox" / "statements" / WEEK).glob("*.eml"))
    assert [p.name for p in sent] == ["ana-1.eml", "ana.eml", "ben.eml", "cho.eml"]
    session.commit()
    assert len(session.scalars(select(StatementSend)).all()) == 4
    wrong = runner.invoke(cli, ["--db", db_url, "report", "--week", WEEK, "--resend"])
    assert wrong.exit_code != 0
