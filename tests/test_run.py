"""`jvmail run`: the example hub's planned week sent into an outbox, once, on both databases."""

from __future__ import annotations

import datetime as dt
import email
import email.policy
import json
from pathlib import Path

import pytest
from sqlalchemy import update
from sqlalchemy.orm import Session

from jvmail.db import make_engine
from jvmail.db.models import DeliveryBatch, Mailing, Partner, Subscriber, SubscriberStatus
from jvmail.dispatch.pipeline import dispatch
from tests.test_cli import run

WEEK = "2026-W49"
KEEP = 12  # subscribers kept per list, so the week sends quickly


@pytest.fixture
def small_hub(example_hub: Path) -> Path:
    for csv in (example_hub / "subscribers").glob("*.csv"):
        lines = csv.read_text(encoding="utf-8").splitlines()
        csv.write_text("\n".join(lines[: KEEP + 1]) + "\n", encoding="utf-8")
    return example_hub


def _json(capsys: pytest.CaptureFixture[str], *args: str) -> dict[str, object]:
    code, out, err = run(capsys, *args, "--json")
    assert code == 0, err
    data = json.loads(out)
    assert isinstance(data, dict)
    return data


def _planned(capsys: pytest.CaptureFixture[str], db_url: str, hub: Path) -> list[int]:
    """The hub synced and its week planned: the ids of the week's mailings waiting to be sent."""
    db = ("--db", db_url)
    assert run(capsys, *db, "sync", str(hub))[0] == 0
    assert run(capsys, *db, "plan", "--week", WEEK)[0] == 0
    code, out, err = run(capsys, *db, "mailings", "--week", WEEK, "--json")
    assert code == 0, err
    return [m["id"] for m in json.loads(out) if m["status"] in ("planned", "approved")]


def test_run_sends_the_planned_week_once_into_eml_files(
    small_hub: Path, db_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = ("--db", db_url)
    due = _planned(capsys, db_url, small_hub)
    assert due
    outbox = tmp_path / "outbox"
    # Nothing is due before the week starts.
    early = _json(capsys, *db, "run", "--outbox", str(outbox), "--until", "2026-11-29T00:00:00")
    assert early["sent"] == 0
    sent = _json(capsys, *db, "run", "--outbox", str(outbox), "--week", WEEK)
    mailings = sent["mailings"]
    assert isinstance(mailings, list)
    assert sorted(m["mailing_id"] for m in mailings) == sorted(due)
    files = sorted(outbox.glob("*/*.eml"))
    assert len(files) == sent["sent"]
    assert 0 < len(files) <= KEEP * len(mailings)
    for path in files[:40]:
        msg = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
        assert msg["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
        assert "https://" in msg["List-Unsubscribe"]
        assert "mailto:" in msg["List-Unsubscribe"]
        body = msg.get_body(("plain",))
        assert body is not None
        assert "Unsubscribe: https://" in body.get_content()
    again = _json(capsys, *db, "run", "--outbox", str(outbox), "--week", WEEK)
    assert again == {"outbox": str(outbox), "sent": 0, "unknown": 0, "mailings": []}
    assert sorted(outbox.glob("*/*.eml")) == files


def test_a_mailing_that_reaches_nobody_says_why(
    small_hub: Path, db_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = ("--db", db_url)
    nobody = _planned(capsys, db_url, small_hub)[0]
    engine = make_engine(db_url)
    with Session(engine) as session:
        mailing = session.get(Mailing, nobody)
        assert mailing is not None
        session.execute(
            update(Subscriber)
            .where(Subscriber.list_id == mailing.list_id)
            .values(status=SubscriberStatus.UNSUBSCRIBED)
        )
        session.commit()
    engine.dispose()
    why = f"of the list's {KEEP} addresses, {KEEP} unsubscribed, bounced or complained"
    code, out, err = run(capsys, *db, "run", "--outbox", str(tmp_path / "out"), "--week", WEEK)
    assert code == 0, err
    assert why in " ".join(out.split())
    code, out, err = run(capsys, *db, "mailings", "--week", WEEK)
    assert code == 0, err
    assert f"mailing {nobody} sent: nobody to mail: {why}" in " ".join(out.split())


def test_run_refuses_bad_times(db_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "--db", db_url, "run", "--until", "next tuesday")
    assert code == 2
    assert "--until 'next tuesday' is not an ISO time" in err
    code, _, err = run(capsys, "--db", db_url, "run", "--week", "2026-W49", "--until", "2026-12-01")
    assert code == 2
    assert "not both" in err


def test_a_week_ends_in_each_senders_own_time_zone(
    small_hub: Path, db_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Next Monday 07:00 in Berlin is 06:00 UTC: before the week has ended everywhere, and yet
    # a mailing of the next week, which `run --week` of this one must leave for later.
    db = ("--db", db_url)
    due = _planned(capsys, db_url, small_hub)
    moved = due[0]
    engine = make_engine(db_url)
    with Session(engine) as session:
        mailing = session.get(Mailing, moved)
        assert mailing is not None
        sender = session.get(Partner, mailing.sender_id)
        assert sender is not None
        sender.timezone = "Europe/Berlin"
        mailing.scheduled_at = dt.datetime(2026, 12, 7, 6, tzinfo=dt.UTC)
        session.commit()
    engine.dispose()
    code, out, err = run(capsys, *db, "mailings", "--week", "2026-W50", "--json")
    assert code == 0, err
    assert moved in [m["id"] for m in json.loads(out)]
    sent = _json(capsys, *db, "run", "--outbox", str(tmp_path / "outbox"), "--week", WEEK)
    mailings = sent["mailings"]
    assert isinstance(mailings, list)
    assert sorted(m["mailing_id"] for m in mailings) == sorted(set(due) - {moved})


def test_a_run_finishes_and_reports_what_a_stopped_run_left_queued(
    small_hub: Path, db_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A run stopped (Ctrl-C, a crash) after it dispatched a mailing and before its batches
    # went: a run right after says it waits; once the mailing has shown no progress for the
    # relay's two minutes, a run sends the rest and reports it.
    db = ("--db", db_url)
    due = _planned(capsys, db_url, small_hub)
    engine = make_engine(db_url)
    with Session(engine) as session:
        assert dispatch(session, due[0], batch_size=5)  # queued, its messages lost
        code, out, _ = run(
            capsys, *db, "run", "--outbox", str(tmp_path / "soon"), "--until", "2026-11-25T00:00:00"
        )
        assert code == 0
        assert f"still queued: {due[0]}, left by a run that stopped" in out
        # Two minutes later, by its batches' clock: no progress since.
        session.execute(
            update(DeliveryBatch).values(
                enqueued_at=DeliveryBatch.enqueued_at - dt.timedelta(minutes=3)
            )
        )
        session.commit()
    engine.dispose()
    outbox = tmp_path / "outbox"
    sent = _json(capsys, *db, "run", "--outbox", str(outbox), "--until", "2026-11-25T00:00:00")
    mailings = sent["mailings"]
    assert isinstance(mailings, list)
    assert [m["mailing_id"] for m in mailings] == [due[0]]  # nothing else is due yet
    assert mailings[0]["status"] == "sent"
    assert sent["sent"] == mailings[0]["sent"] == len(list(outbox.glob(f"{due[0]}/*.eml"))) > 0
