"""Planning a week of the example hub from the database, on SQLite and PostgreSQL."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from jvmail.config import load_config
from jvmail.db.models import HubRecord, LedgerEntry, LedgerKind, Mailing, MailingList, Partner
from jvmail.errors import UsageError
from jvmail.ledger import View, post, summarize
from jvmail.planner import build_problem, parse_week, save_plan
from jvmail.registry import sync_hub
from jvmail.scheduler import Problem, solve, verify
from jvmail.scheduler.explain import shortfalls
from jvmail.scheduler.synth import synthetic_problem
from tests.test_cli import run


@pytest.fixture
def synced(session: Session, example_hub: Path) -> Session:
    sync_hub(session, load_config(example_hub))
    session.commit()
    return session


def test_plan_saves_mailings_with_expected_entries(
    synced: Session, db_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(capsys, "--db", db_url, "plan", "--week", "2026-W49", "--json")
    assert code == 0, err
    data = json.loads(out)
    assert data["violations"] == 0
    assert data["saved"] is True
    assert len(data["mailings"]) >= 10
    assert 0 < data["value"] <= data["value_max"] + 1e-6
    mailings = synced.scalar(select(func.count()).select_from(Mailing))
    expected = synced.scalar(select(func.count()).where(LedgerEntry.kind == LedgerKind.EXPECTED))
    assert mailings == expected == len(data["mailings"])
    code, out, _ = run(capsys, "--db", db_url, "ledger", "--view", "projected", "--json")
    nets = {row["partner"]: row["net"] for row in json.loads(out)["partners"]}
    after = {w["partner"]: w["after"] for w in data["partners"]}
    assert nets == pytest.approx({p: v for p, v in after.items() if p in nets})
    code, _, err = run(capsys, "--db", db_url, "plan", "--week", "2026-W49")
    assert code == 2
    assert "already has" in err


def test_dry_run_and_exported_problems_reproduce_the_plan(
    synced: Session, db_url: str, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    problem_file = tmp_path / "w49.json"
    args = ["--db", db_url, "plan", "--week", "2026-W49", "--dry-run", "--json"]
    code, first, _ = run(capsys, *args, "--export-problem", str(problem_file))
    assert code == 0
    assert synced.scalar(select(func.count()).select_from(Mailing)) == 0
    code, again, _ = run(capsys, "plan", "--problem", str(problem_file), "--json")
    assert code == 0
    assert json.loads(again)["mailings"] == json.loads(first)["mailings"]
    full = json.loads(again)
    assert full["bound"] is not None
    assert full["gap"] is not None
    assert full["solve_seconds"] > 0
    # --no-bound: the same plan, without V_max, the LP bound and the gap.
    code, quick, _ = run(capsys, "plan", "--problem", str(problem_file), "--json", "--no-bound")
    assert code == 0
    lean = json.loads(quick)
    assert lean["mailings"] == full["mailings"]
    assert (lean["bound"], lean["gap"], lean["value_max"]) == (None, None, None)
    assert lean["sum_abs_balance_over_value"] == full["sum_abs_balance_over_value"]


def test_bad_week_and_bad_problem_file(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="not an ISO week") as caught:
        parse_week("2026-48")
    assert "YYYY-Www" in caught.value.fix
    with pytest.raises(UsageError):
        parse_week("2026-W54")
    assert parse_week("2026-W49").isoformat() == "2026-11-30"
    bad = tmp_path / "bad.json"
    bad.write_text('{"version": 1, "week_start": "2026-11-30"}')
    code, _, err = run(capsys, "plan", "--problem", str(bad))
    assert code == 2
    assert "not a valid problem file" in err


def test_scheduler_settings_and_overlap_reach_the_problem(
    session: Session, example_hub: Path
) -> None:
    config = example_hub / "jvmail.toml"
    config.write_text(
        config.read_text()
        + '\n[scheduler]\npair_cap = 1\nniche_groups = { webflow = "web-design" }\n'
    )
    partner = example_hub / "partners" / "pixel-and-pine.toml"
    partner.write_text(
        partner.read_text().replace(
            "click_rate = 0.031", 'click_rate = 0.031\noverlap = { "squarely-studio" = 0.4 }'
        )
    )
    report = sync_hub(session, load_config(example_hub))
    session.commit()
    assert ("hub", "settings", "added") in {(c.kind, c.slug, c.action) for c in report.changes}
    problem = build_problem(session, parse_week("2026-W49"))
    assert problem.settings.pair_cap == 1
    assert problem.niche_groups == {"webflow": "web-design"}
    [notes] = [lst for lst in problem.lists if lst.id == "pixel-notes"]
    assert notes.overlap == {"squarely-studio": 0.4}
    plan = solve(problem)
    assert verify(problem, plan) == []


def test_json_output_is_clean_even_when_the_solver_prints(tmp_path: Path) -> None:
    problem = synthetic_problem(4, seed=3)
    path = tmp_path / "p.json"
    path.write_text(problem.to_json())
    command = [sys.executable, "-m", "jvmail", "plan", "--problem", str(path), "--json"]
    done = subprocess.run(command, check=False, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["violations"] == 0


def test_synthetic_hubs_are_deterministic() -> None:
    first = synthetic_problem(30, seed=7)
    assert first.to_json() == synthetic_problem(30, seed=7).to_json()
    assert first.to_json() != synthetic_problem(30, seed=8).to_json()
    assert 30 <= len(first.lists) <= 90
    assert all(500 <= lst.size <= 500_000 for lst in first.lists)
    assert Problem.from_json(first.to_json()) == first


def _rates(problem: Problem) -> dict[str, float]:
    return {lst.id: lst.click_rate for lst in problem.lists}


def test_the_value_metric_sets_each_lists_prior_rate(synced: Session) -> None:
    week = parse_week("2026-W49")
    clicks = _rates(build_problem(synced, week))
    assert clicks["pixel-notes"] == 0.031  # the list's click_rate from config
    hub = synced.get(HubRecord, 1)
    assert hub is not None
    hub.value_metric = "delivered"
    assert set(_rates(build_problem(synced, week)).values()) == {1.0}
    hub.value_metric = "conversions"
    hub.scheduler = {**hub.scheduler, "conversion_rate": 0.05}
    conversions = _rates(build_problem(synced, week))
    assert conversions == pytest.approx({k: v * 0.05 for k, v in clicks.items()})


def _measure(session: Session, mailing: Mailing, kind: LedgerKind, value: float) -> None:
    sender = session.get(Partner, mailing.sender_id)
    assert sender is not None
    post(session, mailing=mailing, giver=sender, kind=kind, value=value)


def test_list_rates_learn_from_measured_mailings_only(synced: Session) -> None:
    w49, w50 = parse_week("2026-W49"), parse_week("2026-W50")
    problem = build_problem(synced, w49)
    priors = _rates(problem)
    save_plan(synced, problem, solve(problem))
    first_on_list: dict[str, Mailing] = {}
    for m in synced.scalars(select(Mailing).order_by(Mailing.id)):
        lst = synced.get(MailingList, m.list_id)
        assert lst is not None
        first_on_list.setdefault(lst.slug, m)
    (clicked, m1), (missed, m2), (unmeasured, _) = list(first_on_list.items())[:3]
    assert m1.planned_rate == priors[clicked]
    _measure(synced, m1, LedgerKind.PENDING, 2 * m1.expected_value)
    _measure(synced, m2, LedgerKind.MISSED, 0.0)
    rates = _rates(build_problem(synced, w50))
    # One mailing that brought twice what was expected moves the rate half way: x1.5.
    assert rates[clicked] == pytest.approx(1.5 * priors[clicked])
    # A missed mailing was never sent, an unmeasured one says nothing yet.
    assert (rates[missed], rates[unmeasured]) == (priors[missed], priors[unmeasured])
    # Planning the week those mailings were in again does not use them: no look-ahead.
    assert _rates(build_problem(synced, w49)) == priors


def test_debt_decay_weighs_old_balances_less_and_leaves_the_ledger_alone(
    synced: Session,
) -> None:
    w49, w51 = parse_week("2026-W49"), parse_week("2026-W51")
    problem = build_problem(synced, w49)
    save_plan(synced, problem, solve(problem))
    mailing = synced.scalars(select(Mailing).order_by(Mailing.id)).first()
    assert mailing is not None
    _measure(synced, mailing, LedgerKind.FINAL, 10.0)
    sender = _partner_slug(synced, mailing.sender_id)
    assert build_problem(synced, w51).balances[sender] == 10.0  # no decay by default
    hub = synced.get(HubRecord, 1)
    assert hub is not None
    hub.scheduler = {**hub.scheduler, "debt_decay": 0.5}
    at = mailing.scheduled_at.replace(tzinfo=dt.UTC)
    weeks = (dt.datetime(2026, 12, 14, tzinfo=dt.UTC) - at) / dt.timedelta(weeks=1)
    decayed = build_problem(synced, w51).balances
    assert decayed[sender] == pytest.approx(10.0 * 0.5**weeks, abs=1e-6)
    assert sum(decayed.values()) == pytest.approx(0.0, abs=1e-6)
    ledger = {b.partner: b.net for b in summarize(synced, View.MEASURED).partners}
    assert ledger[sender] == 10.0  # `jvmail ledger` shows the raw balance


def _partner_slug(session: Session, partner_id: int) -> str:
    row = session.get(Partner, partner_id)
    assert row is not None
    return row.slug


def test_bench_problem_writes_the_synthetic_hub(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    code, out, err = run(capsys, "bench-problem", "--partners", "4", "--seed", "3")
    assert code == 0, err
    assert Problem.from_json(out) == synthetic_problem(4, seed=3)
    path = tmp_path / "hub4.json"
    code, out, err = run(
        capsys, "bench-problem", "--partners", "4", "--seed", "3", "--out", str(path)
    )
    assert (code, out) == (0, "")
    assert f"wrote {path}" in err
    assert Problem.from_json(path.read_text()) == synthetic_problem(4, seed=3)
    code, out, _ = run(capsys, "plan", "--problem", str(path), "--json")
    assert code == 0
    assert json.loads(out)["violations"] == 0
    code, out, err = run(capsys, "bench-problem", "--partners", "1")
    assert (code, out) == (2, "")
    assert "at least 2 partners" in err


def test_explain_shows_senders_send_times_and_why_promotions_fell_short(
    synced: Session,
    db_url: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("COLUMNS", "250")
    args = ["--db", db_url, "plan", "--week", "2026-W49", "--dry-run"]
    code, out, err = run(capsys, *args, "--json")
    assert code == 0, err
    data = json.loads(out)
    problem = build_problem(synced, parse_week("2026-W49"))
    expected = shortfalls(problem, solve(problem))
    assert expected
    assert [(s["promotion"], s["reason"]) for s in data["shortfalls"]] == [
        (s.promotion, s.reason.value) for s in expected
    ]
    [lumen] = [m for m in data["mailings"] if m["list"] == "lumen-light"]
    assert (lumen["sender"], lumen["send_time"]) == ("lumen-photo", "Thu 03 Dec 09:00")
    assert lumen["local_time"] == "2026-12-03T09:00:00"
    code, out, _ = run(capsys, *args, "--explain")
    assert code == 0
    [row] = [line for line in out.splitlines() if "│ lumen-light " in line]
    cells = [cell.strip() for cell in row.split("│")[1:-1]]
    assert cells[:5] == [
        "Thu 03 Dec 09:00",
        "lumen-photo",
        "lumen-light",
        lumen["promotion"],
        lumen["owner"],
    ]
    assert "Balances per partner" in out
    assert "Why promotions got fewer mailings" in out
    assert f"{expected[0].reason.value}: {expected[0].why}" in out
    code, out, _ = run(capsys, *args)
    assert "Why promotions" not in out
    assert f"{len(expected)} promotions got fewer mailings than they wanted (" in out
