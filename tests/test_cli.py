"""The CLI end to end: exit codes, one-line errors, --json, --help, and an interrupted sync."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import click
import pytest
from sqlalchemy import func, select

from jvmail.cli import cli, main
from jvmail.db import make_engine, make_sessionmaker, upgrade
from jvmail.db.models import Partner, Subscriber, Suppression
from jvmail.errors import ConfigError


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    try:
        main(list(args))
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def _count(db_url: str, model: type[Partner] | type[Subscriber] | type[Suppression]) -> int:
    engine = make_engine(db_url)
    upgrade(engine)
    with make_sessionmaker(engine)() as session:
        count = session.scalar(select(func.count()).select_from(model)) or 0
    engine.dispose()
    return count


def test_init_sync_and_list(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'j.db'}"
    hub = tmp_path / "hub"
    assert run(capsys, "init", str(hub))[0] == 0
    code, out, _ = run(capsys, "--db", db, "sync", str(hub), "--json")
    assert code == 0
    report = json.loads(out)
    assert report["changed"] is True
    assert report["subscribers"][0]["added"] == 2
    code, out, _ = run(capsys, "--db", db, "sync", str(hub), "--json")
    assert json.loads(out)["changed"] is False
    code, out, _ = run(capsys, "--db", db, "partners", "--json")
    [partner] = json.loads(out)
    assert (partner["id"], partner["subscribers"], partner["lists"]) == ("your-business", 2, 1)
    code, out, _ = run(capsys, "--db", db, "lists")
    assert code == 0
    assert "your-newsletter" in out


def test_bad_config_exits_2_and_writes_nothing(
    capsys: pytest.CaptureFixture[str], starter_hub: Path, db_url: str
) -> None:
    partner = starter_hub / "partners" / "your-business.toml"
    partner.write_text(
        partner.read_text().replace("send_hour = 9", "send_hour = 9\nsend_hours = 3")
    )
    code, _, err = run(capsys, "--db", db_url, "sync", str(starter_hub))
    assert code == 2
    lines = partner.read_text().splitlines()
    line = next(n for n, text in enumerate(lines, 1) if text.startswith("send_hours = 3"))
    assert f"your-business.toml:{line}: lists[0].send_hours: unknown key" in err
    assert "did you mean `send_hour`?" in err
    assert "Traceback" not in err
    assert _count(db_url, Partner) == 0


def test_dry_run_writes_nothing(
    capsys: pytest.CaptureFixture[str], starter_hub: Path, db_url: str
) -> None:
    code, out, _ = run(capsys, "--db", db_url, "sync", str(starter_hub), "--dry-run")
    assert code == 0
    assert "would change" in out
    assert "nothing was written" in out
    assert _count(db_url, Partner) == 0


def test_strict_sync_fails_and_writes_nothing(
    capsys: pytest.CaptureFixture[str], starter_hub: Path, db_url: str
) -> None:
    (starter_hub / "subscribers" / "your-newsletter.csv").write_text("email\nok@example.com\nbad\n")
    code, _, err = run(capsys, "--db", db_url, "sync", str(starter_hub), "--strict")
    assert code == 2
    assert "your-newsletter.csv:3: invalid address 'bad'" in err
    assert _count(db_url, Partner) == 0


def test_unreachable_database_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "--db", "postgresql://nobody@127.0.0.1:1/none", "partners")
    assert code == 1
    assert "cannot migrate the database" in err
    assert "fix:" in err
    assert "Traceback" not in err


def _commands(group: click.Group, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    found: list[tuple[str, ...]] = []
    for name, command in sorted(group.commands.items()):
        if isinstance(command, click.Group):
            found += _commands(command, (*prefix, name))
        else:
            found.append((*prefix, name))
    return found


@pytest.mark.parametrize("command", _commands(cli), ids=" ".join)
def test_every_command_has_help_with_an_example(
    capsys: pytest.CaptureFixture[str], command: tuple[str, ...]
) -> None:
    code, out, _ = run(capsys, *command, "--help")
    assert code == 0
    assert "Example" in out


def test_killed_sync_leaves_the_database_as_before(starter_hub: Path, db_url: str) -> None:
    env = {**os.environ, "COLUMNS": "200"}
    base = [sys.executable, "-m", "jvmail", "--db", db_url, "sync", str(starter_hub), "--json"]
    first = subprocess.run(base, check=False, env=env, capture_output=True, text=True, timeout=120)
    assert first.returncode == 0, first.stderr
    csv = starter_hub / "subscribers" / "your-newsletter.csv"
    csv.write_text("email\n" + "".join(f"user{n}@example.com\n" for n in range(5000)))
    partner = starter_hub / "partners" / "your-business.toml"
    partner.write_text(partner.read_text().replace('"Your Business"', '"Renamed"'))
    fault = {**env, "JVMAIL_FAULT": "sync:before-commit"}
    killed = subprocess.run(base, check=False, env=fault, capture_output=True, timeout=120)
    assert killed.returncode == -signal.SIGKILL
    assert _count(db_url, Subscriber) == 2
    engine = make_engine(db_url)
    with make_sessionmaker(engine)() as session:
        assert session.scalar(select(Partner.name)) == "Your Business"
    engine.dispose()
    again = subprocess.run(base, check=False, env=env, capture_output=True, text=True, timeout=120)
    assert json.loads(again.stdout)["subscribers"][0]["added"] == 5000


def test_demo_runs_twice_and_the_second_sync_changes_nothing(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    code, out, _ = run(capsys, "demo", "--dir", str(tmp_path / "demo"))
    assert code == 0
    assert "Nothing changed" not in out
    assert "violations 0" in out
    assert "Saved as planned mailings; awaiting their sender's approval: 1 " in out
    db_url = f"sqlite:///{(tmp_path / 'demo' / 'jvmail.db').resolve()}"
    assert _count(db_url, Partner) >= 10
    # Each command it suggests opens the demo's database, not the default one.
    said = " ".join(out.split())
    assert f"`jvmail --db {db_url} mailings --week 2026-W49 --status awaiting_approval`" in said
    assert f"See more: jvmail --db {db_url} ledger --view projected" in said
    # The readers clicked over HTTP, and the ledger was credited with it.
    clicks = re.search(r"([\d,]+) clicks and ([\d,]+) one-click unsubscribes over HTTP", out)
    assert clicks is not None
    assert int(clicks[1].replace(",", "")) > 1000
    assert int(clicks[2].replace(",", "")) > 0
    credited = re.search(r"(\d+) mailing\(s\) credited", out)
    assert credited is not None
    assert int(credited[1]) > 0
    assert "Balances (measured)" in out
    reports = tmp_path / "demo" / "reports"
    assert "statements and the coordinator's summary" in out
    assert len(list(reports.glob("2026-W49-*.html"))) == _count(db_url, Partner) + 1
    assert 0 < _count(db_url, Suppression) <= int(clicks[2].replace(",", ""))
    code, out, _ = run(capsys, "demo", "--dir", str(tmp_path / "demo"))
    assert code == 0
    assert "0 mailing(s) credited" in out  # the same readers: nothing new to credit
    assert "Nothing changed" in out
    said = " ".join(out.split())
    assert "planned by an earlier demo run, and that plan stands" in said
    assert f"(`jvmail --db {db_url} mailings --week 2026-W49` shows the saved one)" in said
    assert f"Database: {db_url}" in out


def test_unknown_partner_filter_is_a_usage_error(
    capsys: pytest.CaptureFixture[str], starter_hub: Path, tmp_path: Path
) -> None:
    db = f"sqlite:///{tmp_path / 'j.db'}"
    assert run(capsys, "--db", db, "sync", str(starter_hub))[0] == 0
    code, out, err = run(capsys, "--db", db, "lists", "--partner", "nobody")
    assert (code, out) == (2, "")
    assert "no partner 'nobody' in the registry" in err
    assert "use one of: your-business" in err


def test_debug_shows_the_traceback(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        main(["--debug", "sync", str(tmp_path / "missing")])
    code, _, err = run(capsys, "sync", str(tmp_path / "missing"))
    assert code == 2
    assert "config directory not found" in err


def test_a_sync_that_imported_rows_refreshes_the_planner_statistics(
    capsys: pytest.CaptureFixture[str], starter_hub: Path, db_url: str
) -> None:
    engine = make_engine(db_url)
    query = (
        "SELECT count(*) FROM sqlite_master WHERE name = 'sqlite_stat1'"
        if db_url.startswith("sqlite")
        else "SELECT count(*) FROM pg_class WHERE oid = 'subscriber'::regclass AND reltuples > 0"
    )
    try:
        assert run(capsys, "--db", db_url, "sync", str(starter_hub))[0] == 0
        with engine.connect() as conn:
            assert conn.exec_driver_sql(query).scalar_one() == 1
            if db_url.startswith("sqlite"):
                stat = "SELECT count(*) FROM sqlite_stat1 WHERE tbl = 'subscriber'"
                assert conn.exec_driver_sql(stat).scalar_one() > 0
    finally:
        engine.dispose()


def test_concurrent_syncs_wait_for_each_other(starter_hub: Path, db_url: str) -> None:
    env = {**os.environ, "COLUMNS": "200"}
    command = [sys.executable, "-m", "jvmail", "--db", db_url, "sync", str(starter_hub), "--json"]
    procs = [
        subprocess.Popen(
            command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for _ in range(3)
    ]
    outputs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], outputs
    changed = sorted(json.loads(out)["changed"] for out, _ in outputs)
    assert changed == [False, False, True]  # exactly one of them added the rows
    assert _count(db_url, Partner) == 1
