"""Statements sent through the hub's account, each (partner, week) once, on SQLite and
PostgreSQL: claimed before the provider is called, and what became of each kept (sent, failed,
retry, unknown); a refusal for now goes with the next run, one in doubt or refused for good only
with a resend; a run that died mid-send leaves its statement in doubt after the lease, never
resent; and two runs at once send each statement once."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from jvmail.db.models import HubRecord, Partner, StatementSend
from jvmail.dispatch.limits import Clock
from jvmail.providers.base import ProviderError, SingleMessage
from jvmail.providers.outbox import OutboxProvider
from jvmail.providers.sendgrid import SendGridProvider
from jvmail.reports.render import CLICKS_CID, HISTORY_CID
from jvmail.reports.send import LEASE, hub_provider, send_statements, settled
from tests.providers.fakes import Fake, Scripted, from_mime, sendgrid_handler, serve
from tests.reports.conftest import MONDAY

WEEK = "2026-W43"
NOW = dt.datetime(2026, 10, 26, 8, tzinfo=dt.UTC)  # the Monday after: statements are due
KEY = "SG.hub"


@pytest.fixture
def fake() -> Iterator[Fake]:
    state = Fake()
    with serve(sendgrid_handler(state, KEY), state):
        yield state


def _sendgrid(fake: Fake, key: str = KEY) -> SendGridProvider:
    return SendGridProvider(
        key, from_addr="statements@jv.example", from_name="Test hub", api=fake.url,
        timeout=(1.0, 0.3),
    )  # fmt: skip


def _rows(session: Session) -> dict[tuple[str, int], tuple[str, str | None]]:
    session.expire_all()
    rows = session.execute(
        select(Partner.slug, StatementSend.copy, StatementSend.status, StatementSend.error).join(
            Partner, Partner.id == StatementSend.partner_id
        )
    ).all()
    return {(slug, copy): (status, error) for slug, copy, status, error in rows}


def _ids(session: Session) -> dict[str, int]:
    rows = session.execute(
        select(Partner.slug, StatementSend.id)
        .join(Partner, Partner.id == StatementSend.partner_id)
        .where(StatementSend.copy == 0)
    ).all()
    return {str(slug): int(row_id) for slug, row_id in rows}


def test_each_statement_goes_once_through_the_hubs_account(
    session: Session, hub: dict[str, Partner], tmp_path: Path
) -> None:
    record = session.get(HubRecord, 1)
    assert record is not None
    assert record.provider["kind"] == "outbox"  # the default account
    record.provider = {"kind": "outbox", "directory": str(tmp_path / "hub")}
    session.commit()
    done = send_statements(session, MONDAY, None, hub_provider(record), now=NOW)
    assert sorted(done.sent) == ["ana", "ben", "cho"]
    folder = tmp_path / "hub" / "statements" / WEEK
    assert sorted(p.name for p in folder.iterdir()) == ["ana.eml", "ben.eml", "cho.eml"]
    ana = from_mime((folder / "ana.eml").read_bytes(), {})
    assert ana.to == "team@ana.example"
    assert ana.sender == "Test hub <statements@jv.example>"
    assert set(ana.images) == {HISTORY_CID, CLICKS_CID}
    assert all(f"cid:{cid}" in ana.html for cid in ana.images)
    assert "canary" not in ana.html + ana.text  # aggregates only: no subscriber address
    ids = _ids(session)
    sent = session.scalars(select(StatementSend).where(StatementSend.id == ids["ana"])).one()
    assert (sent.status, sent.message_id) == ("sent", f"<statement.{ids['ana']}@jv.example>")

    again = send_statements(session, MONDAY, None, hub_provider(record), now=NOW)
    assert (again.sent, sorted(again.skipped)) == ([], ["ana", "ben", "cho"])
    resent = send_statements(session, MONDAY, ["ana"], hub_provider(record), resend=True, now=NOW)
    assert resent.sent == ["ana"]
    assert (folder / "ana-1.eml").exists()
    assert _rows(session)[("ana", 1)] == ("sent", None)


def _hub_account(session: Session, **outbox: object) -> HubRecord:
    """The hub's account made an outbox with these settings."""
    record = session.get(HubRecord, 1)
    assert record is not None
    record.provider = {"kind": "outbox", **outbox}
    session.commit()
    return record


def test_statements_keep_to_the_hub_accounts_pace(
    session: Session, hub: dict[str, Partner], tmp_path: Path
) -> None:
    record = _hub_account(session, directory=str(tmp_path), max_per_second=4)
    moment = [NOW.timestamp()]
    waits: list[float] = []

    def sleep(seconds: float) -> None:
        waits.append(seconds)
        moment[0] += seconds

    clock = Clock(now=lambda: moment[0], sleep=sleep)
    done = send_statements(session, MONDAY, None, hub_provider(record), now=NOW, clock=clock)
    assert sorted(done.sent) == ["ana", "ben", "cho"]
    assert waits == [0.25, 0.25]  # the first at once, then one every quarter of a second


def _at(moment: dt.datetime) -> Clock:
    return Clock(now=moment.timestamp, sleep=lambda _: None)


def test_statements_past_the_hub_accounts_daily_limit_wait_for_midnight(
    session: Session, hub: dict[str, Partner], tmp_path: Path
) -> None:
    record = _hub_account(session, directory=str(tmp_path), max_per_day=2)
    today = dt.datetime.now(dt.UTC)  # sent_at is stamped with the real time
    done = send_statements(session, MONDAY, None, hub_provider(record), clock=_at(today))
    assert len(done.sent) == 2
    (left,) = done.retry
    assert "limit of 2 messages a day" in done.retry[left]
    midnight = dt.datetime.combine(today.date() + dt.timedelta(days=1), dt.time(), dt.UTC)
    assert done.retry_after == (midnight - today).total_seconds()
    again = send_statements(session, MONDAY, None, hub_provider(record), clock=_at(today))
    assert (again.sent, list(again.retry)) == ([], [left])  # today's two are spent
    tomorrow = send_statements(session, MONDAY, None, hub_provider(record), clock=_at(midnight))
    assert tomorrow.sent == [left]
    assert _rows(session)[(left, 0)] == ("sent", None)


def test_a_refusal_for_now_goes_with_the_next_run(
    session: Session, hub: dict[str, Partner], fake: Fake
) -> None:
    fake.script.append(Scripted(429, {"Retry-After": "30"}, {"errors": [{"message": "slow"}]}))
    done = send_statements(session, MONDAY, ["ana", "ben"], _sendgrid(fake), now=NOW)
    assert (done.sent, list(done.retry), done.retry_after) == (["ben"], ["ana"], 30.0)
    status, error = _rows(session)[("ana", 0)]
    assert status == "retry"
    assert "429" in (error or "")
    assert ("ana", WEEK) not in settled(session)  # the scheduler will offer it again
    assert ("ben", WEEK) in settled(session)

    later = send_statements(session, MONDAY, None, _sendgrid(fake), now=NOW)
    assert (sorted(later.sent), later.skipped) == (["ana", "cho"], ["ben"])
    assert _rows(session)[("ana", 0)] == ("sent", None)  # the same row, sent at last
    ids = _ids(session)
    assert sorted(s.metadata["jv_statement"] for s in fake.singles) == sorted(
        str(ids[slug]) for slug in ("ana", "ben", "cho")
    )
    assert all("jv_delivery" not in s.metadata for s in fake.singles)


def test_refused_for_good_or_in_doubt_only_a_resend_sends_again(
    session: Session, hub: dict[str, Partner], fake: Fake
) -> None:
    fake.script.append(Scripted(400, body={"errors": [{"message": "unverified sender"}]}))
    fake.script.append(Scripted(202, hang=1.0))  # taken, but the answer comes too late
    done = send_statements(session, MONDAY, ["ana", "ben"], _sendgrid(fake), now=NOW)
    assert list(done.failed) == ["ana"]
    assert list(done.unknown) == ["ben"]
    rows = _rows(session)
    assert rows[("ana", 0)][0] == "failed"
    assert "unverified sender" in (rows[("ana", 0)][1] or "")
    assert rows[("ben", 0)][0] == "unknown"
    assert fake.requests == 2  # ben's reached the provider, which took it (late)

    again = send_statements(session, MONDAY, ["ana", "ben"], _sendgrid(fake), now=NOW)
    assert (again.sent, sorted(again.skipped)) == ([], ["ana", "ben"])
    assert fake.requests == 2
    resent = send_statements(session, MONDAY, ["ana", "ben"], _sendgrid(fake), resend=True, now=NOW)
    assert sorted(resent.sent) == ["ana", "ben"]
    assert fake.requests == 4
    assert _rows(session)[("ana", 1)] == ("sent", None)
    assert _rows(session)[("ben", 1)] == ("sent", None)


def test_refused_credentials_stop_the_run_and_leave_the_rest_untouched(
    session: Session, hub: dict[str, Partner], fake: Fake
) -> None:
    done = send_statements(session, MONDAY, None, _sendgrid(fake, key="SG.wrong"), now=NOW)
    assert done.stopped is not None
    assert done.stopped.auth
    assert list(done.retry) == ["ana"]
    rows = _rows(session)
    assert list(rows) == [("ana", 0)]  # ben and cho: not claimed, free for the next run
    assert rows[("ana", 0)][0] == "retry"
    assert "key was refused" in (rows[("ana", 0)][1] or "")
    assert fake.requests == 1  # ben and cho were not tried with a refused key


class Died(BaseException):
    """The process ends mid-send (killed)."""


class DiesWhileSending(OutboxProvider):
    def _send_message(self, message: SingleMessage) -> str:
        raise Died


def test_a_run_that_died_mid_send_leaves_its_statement_in_doubt_after_the_lease(
    session: Session, hub: dict[str, Partner], tmp_path: Path
) -> None:
    with pytest.raises(Died):
        send_statements(session, MONDAY, ["ana"], DiesWhileSending(tmp_path), now=NOW)
    session.rollback()
    assert _rows(session)[("ana", 0)][0] == "sending"
    outbox = OutboxProvider(tmp_path)
    soon = send_statements(session, MONDAY, ["ana"], outbox, now=NOW + LEASE / 2)
    assert (soon.sent, soon.skipped) == ([], ["ana"])
    assert _rows(session)[("ana", 0)][0] == "sending"  # still its sender's, for all we know
    late = send_statements(session, MONDAY, ["ana"], outbox, now=NOW + LEASE * 2)
    assert (late.sent, late.skipped) == ([], ["ana"])
    status, error = _rows(session)[("ana", 0)]
    assert status == "unknown"
    assert "--resend" in (error or "")
    assert not (tmp_path / "statements").exists()  # never sent blindly


class RunsAnotherMeanwhile(OutboxProvider):
    """While it sends the first statement, a second run (another process, its own session)
    sends the same week's statements."""

    def __init__(self, folder: Path, sessions: sessionmaker[Session]) -> None:
        super().__init__(folder)
        self.sessions = sessions
        self.other: list[str] = []

    def _send_message(self, message: SingleMessage) -> str:
        if not self.other:
            with self.sessions() as other:
                done = send_statements(other, MONDAY, None, OutboxProvider(self.folder), now=NOW)
            self.other = sorted(done.sent) or ["nothing"]
        return super()._send_message(message)


@pytest.mark.parametrize("first", ["new", "retry"])
def test_two_runs_at_once_send_each_statement_once(
    session: Session, hub: dict[str, Partner], tmp_path: Path, first: str
) -> None:
    if first == "retry":  # ana's statement was refused for now by an earlier run
        session.add(StatementSend(partner_id=hub["ana"].id, week=WEEK, status="retry"))
        session.commit()
    sessions = sessionmaker(session.get_bind(), expire_on_commit=False)
    provider = RunsAnotherMeanwhile(tmp_path, sessions)
    done = send_statements(session, MONDAY, None, provider, now=NOW)
    assert done.sent == ["ana"]  # the first; the other run took ben and cho meanwhile
    assert provider.other == ["ben", "cho"]
    assert sorted(done.skipped) == ["ben", "cho"]
    files = sorted(p.name for p in (tmp_path / "statements" / WEEK).iterdir())
    assert files == ["ana.eml", "ben.eml", "cho.eml"]
    assert {k: v[0] for k, v in _rows(session).items()} == {
        ("ana", 0): "sent",
        ("ben", 0): "sent",
        ("cho", 0): "sent",
    }


def test_a_missing_secret_names_the_variable_and_the_table(
    session: Session, hub: dict[str, Partner]
) -> None:
    record = session.get(HubRecord, 1)
    assert record is not None
    record.provider = {"kind": "postmark", "server_token_env": "HUB_PM_TOKEN"}
    with pytest.raises(ProviderError) as caught:
        hub_provider(record, env={})
    assert caught.value.message == (
        "the hub: environment variable HUB_PM_TOKEN (server_token_env of the hub.provider table "
        "in jvmail.toml) is not set"
    )
    built = hub_provider(record, env={"HUB_PM_TOKEN": "t"})
    assert built.name == "postmark"
    overridden = hub_provider(record, outbox=Path("elsewhere"), env={})
    assert isinstance(overridden, OutboxProvider)


def test_a_run_whose_session_has_read_sends_after_another_connection_wrote(
    session: Session, hub: dict[str, Partner], tmp_path: Path
) -> None:
    """A session that has read (as the statements job reads the hub's account first) and
    another connection writing meanwhile (a scheduler's tick): on SQLite the run's first write
    would fail at once ("database is locked") if its transaction went on from the read."""
    assert session.get(HubRecord, 1) is not None  # the session's transaction has read
    sessions = sessionmaker(session.get_bind(), expire_on_commit=False)
    with sessions() as other:
        other.add(StatementSend(partner_id=hub["ben"].id, week="2026-W42", status="sent"))
        other.commit()
    done = send_statements(session, MONDAY, None, OutboxProvider(tmp_path), now=NOW)
    assert sorted(done.sent) == ["ana", "ben", "cho"]
