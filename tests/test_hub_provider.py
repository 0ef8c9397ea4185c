"""The hub's own sending account, `[hub.provider]` in jvmail.toml: validated like a partner's,
synced into the hub's row, used by `jvmail report --send`; a wrong key or a missing secret is a
clear message naming what and where, and changes nothing. And `jvmail scheduler --once` with no
services: it runs this minute's jobs with its own worker."""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from jvmail.cli import cli, main
from jvmail.config import load_config
from jvmail.db import make_engine, make_sessionmaker, upgrade
from jvmail.db.models import HubRecord, StatementSend
from jvmail.errors import ConfigError
from jvmail.periodic import Periodic
from jvmail.registry import sync_hub
from tests.dispatch.conftest import build_hub

POSTMARK = '\n[hub.provider]\nkind = "postmark"\nserver_token_env = "HUB_PM_TOKEN"\n'


def _with_account(hub_dir: Path, table: str) -> None:
    config = hub_dir / "jvmail.toml"
    config.write_text(config.read_text() + table)


def test_a_wrong_key_names_the_file_line_and_key(starter_hub: Path) -> None:
    _with_account(starter_hub, POSTMARK + 'server_token = "pm-secret"\n')
    with pytest.raises(ConfigError) as caught:
        load_config(starter_hub)
    (problem,) = caught.value.problems
    lines = (starter_hub / "jvmail.toml").read_text().splitlines()
    assert problem.file.endswith("jvmail.toml")
    assert problem.line is not None
    assert lines[problem.line - 1].startswith("server_token = ")
    assert (problem.key, problem.message) == ("hub.provider.server_token", "unknown key")


def _main(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    """The `jvmail` command as a shell runs it: its exit code and what it printed on stderr."""
    try:
        main(list(args))
    except SystemExit as exc:
        return int(exc.code or 0), capsys.readouterr().err
    return 0, capsys.readouterr().err


def test_a_wrong_key_writes_nothing(
    starter_hub: Path, db_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    _with_account(starter_hub, '\n[hub.provider]\nkind = "sendgrid"\napi_key = "SG.secret"\n')
    code, err = _main(capsys, "--db", db_url, "sync", str(starter_hub))
    assert code == 2
    assert "hub.provider.api_key: unknown key" in err
    assert "hub.provider.api_key_env: field required" in err.lower()
    engine = make_engine(db_url)
    upgrade(engine)  # (the rejected sync did not even reach the database)
    with make_sessionmaker(engine)() as session:
        assert session.get(HubRecord, 1) is None
    engine.dispose()


def test_the_account_is_synced_into_the_hubs_row(session: Session, starter_hub: Path) -> None:
    sync_hub(session, load_config(starter_hub))
    session.commit()
    hub = session.get(HubRecord, 1)
    assert hub is not None
    assert hub.provider["kind"] == "outbox"  # the default: .eml files in "outbox"
    # ... of the config directory, wherever the workers and the scheduler are started
    assert hub.provider["directory"] == str(starter_hub.resolve() / "outbox")
    _with_account(starter_hub, POSTMARK)
    report = sync_hub(session, load_config(starter_hub))
    session.commit()
    assert [(c.kind, c.action, c.fields) for c in report.changes] == [
        ("hub", "changed", ("provider",))
    ]
    session.refresh(hub)
    assert hub.provider["server_token_env"] == "HUB_PM_TOKEN"
    assert hub.provider["kind"] == "postmark"
    assert sync_hub(session, load_config(starter_hub)).changes == []


def test_report_send_with_a_missing_secret_sends_nothing(
    starter_hub: Path,
    db_url: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    _with_account(starter_hub, POSTMARK)
    monkeypatch.delenv("HUB_PM_TOKEN", raising=False)
    monkeypatch.delenv("JVMAIL_OUTBOX", raising=False)
    assert _main(capsys, "--db", db_url, "sync", str(starter_hub))[0] == 0
    code, err = _main(capsys, "--db", db_url, "report", "--week", "2026-W49", "--send")
    assert code == 1
    assert (
        "variable HUB_PM_TOKEN (server_token_env of the hub.provider table in jvmail.toml)" in err
    )
    assert "export HUB_PM_TOKEN=" in err
    engine = make_engine(db_url)
    with make_sessionmaker(engine)() as session:
        assert session.scalar(select(func.count()).select_from(StatementSend)) == 0
    engine.dispose()


def test_report_send_uses_the_default_account(
    starter_hub: Path, db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("JVMAIL_OUTBOX", raising=False)
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    assert runner.invoke(cli, ["--db", db_url, "sync", str(starter_hub)]).exit_code == 0
    result = runner.invoke(cli, ["--db", db_url, "report", "--week", "2026-W49", "--send"])
    assert result.exit_code == 0, result.output
    assert "1 statement(s) sent" in result.output
    # The outbox is the config directory's, not the one of the folder the command ran in.
    assert (starter_hub / "outbox" / "statements" / "2026-W49" / "your-business.eml").exists()
    assert not (tmp_path / "outbox").exists()


class Recorded:
    def __init__(self) -> None:
        self.jobs: list[str] = []

    def tick(self, now: dt.datetime) -> None:
        self.jobs.append("tick")

    def credit(self) -> None:
        self.jobs.append("credit")

    def plan(self, monday: dt.date) -> None:
        self.jobs.append("plan")

    def statements(self, monday: dt.date, slugs: object) -> None:
        self.jobs.append("statements")


def test_a_first_step_runs_the_jobs_of_its_minute(session: Session) -> None:
    build_hub(session)
    sessions = make_sessionmaker(session.get_bind())  # type: ignore[arg-type]
    recorded = Recorded()
    scheduler = Periodic(sessions, holder="cron", enqueue=recorded)
    # Monday 08:00:40: tick, credit and statements fire at 08:00, within this minute.
    scheduler.step(dt.datetime(2026, 11, 30, 8, 0, 40, tzinfo=dt.UTC))
    assert recorded.jobs == ["tick", "credit", "statements"]
    later = Periodic(sessions, holder="cron", enqueue=Recorded())
    later.step(dt.datetime(2026, 11, 30, 8, 7, 40, tzinfo=dt.UTC))
    assert isinstance(later.enqueue, Recorded)
    assert later.enqueue.jobs == ["tick"]


def test_the_scheduler_runs_its_jobs_itself_without_redis(
    starter_hub: Path, tmp_path: Path
) -> None:
    url = f"sqlite:///{tmp_path / 'jvmail.db'}"
    engine = make_engine(url)
    upgrade(engine)
    with make_sessionmaker(engine)() as session:
        sync_hub(session, load_config(starter_hub))
        session.commit()
    engine.dispose()
    env = {k: v for k, v in os.environ.items() if not k.startswith("JVMAIL_")}
    env |= {"JVMAIL_OUTBOX": str(tmp_path / "outbox"), "COLUMNS": "200"}
    command = [sys.executable, "-m", "jvmail", "--db", url, "scheduler", "--once"]
    done = subprocess.run(
        command, check=False, env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert "tick: tick enqueued" in done.stdout
