"""`jvmail report`: the week's reciprocity statements and the coordinator's summary."""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
import socket
import time
from pathlib import Path
from typing import Any

import click

from jvmail.cli import _JSON, _PARTNER, App, cli, pass_app
from jvmail.console import print_json, print_table
from jvmail.db import DEFAULT_DATABASE_URL, make_sessionmaker
from jvmail.errors import UsageError
from jvmail.planner import parse_week
from jvmail.reports.build import build_statements, build_summary
from jvmail.reports.model import CoordinatorSummary, Statement
from jvmail.reports.send import Courier, OutboxCourier, SmtpCourier, send_statements


def _row(st: Statement) -> dict[str, Any]:
    return {
        "partner": st.partner_slug,
        "given": st.given_week,
        "received": st.received_week,
        "net": st.net,
        "sends_next_week": len(st.next_week),
        "approvals": len(st.pending_approvals),
        "reliability": f"{st.kept}/{st.due}" if st.due else "-",
    }


def write_reports(
    statements: list[Statement], summary: CoordinatorSummary | None, out: Path
) -> list[Path]:
    """Write each statement, and the coordinator's summary, as .html, .txt and .png files into
    ``out``; returns the files written."""
    from jvmail.reports.render import render_statement, render_summary, write_files

    out.mkdir(parents=True, exist_ok=True)
    files: list[Path] = []
    for st in statements:
        files += write_files(render_statement(st), out, f"{st.week}-{st.partner_slug}")
    if summary is not None:
        files += write_files(render_summary(summary), out, f"{summary.week}-coordinator")
    return files


def demo_reports(app: App, week: str, out: Path, step: int) -> None:
    """The demo's last step: the week's statements as files, and where they are."""
    app.out.print(f"[bold]{step}. Statements[/] for {week}, as each partner will receive them")
    with app.session() as session:
        monday = parse_week(week)
        statements = build_statements(session, monday)
        summary = build_summary(session, monday)
    files = write_reports(statements, summary, out)
    app.out.print(
        f"{len(statements)} statements and the coordinator's summary: {len(files)} files in "
        f"{out.resolve()}/ (open the .html files in a browser)",
        soft_wrap=True,
    )


@cli.command()
@click.option("--week", required=True, metavar="YYYY-Www", help="The ISO week, e.g. 2026-W48.")
@_PARTNER
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    help="Write each statement as .html, .txt and .png files into this folder, to preview.",
)
@click.option("--send", is_flag=True, help="Send the statements (each partner's once).")
@click.option("--resend", is_flag=True, help="With --send: send again those already sent.")
@_JSON
@pass_app
def report(  # noqa: PLR0917 - one parameter per option
    app: App,
    week: str,
    partner: str | None,
    out: Path | None,
    send: bool,
    resend: bool,
    as_json: bool,
) -> None:
    """The week's reciprocity statements: what each partner gave and received, who owes whom,
    what comes next week; and the coordinator's summary of the hub.

    \b
    Examples:
      jvmail report --week 2026-W49
      jvmail report --week 2026-W49 --partner pixel-and-pine --out reports/
      jvmail report --week 2026-W49 --json
      JVMAIL_OUTBOX=outbox jvmail report --week 2026-W49 --send

    Statements are sent to the SMTP relay JVMAIL_STATEMENTS_SMTP (host:port) when it is set,
    else written into the outbox folder JVMAIL_OUTBOX (default ./outbox).
    """
    if resend and not send:
        raise UsageError("--resend only goes with --send", "add --send")
    monday = parse_week(week)
    with app.session() as session:
        statements = build_statements(session, monday, [partner] if partner else None)
        if partner and not statements:
            raise UsageError(f"no partner {partner!r}", "`jvmail partners` lists their ids")
        summary = build_summary(session, monday)
    if out is not None:
        files = write_reports(statements, None if partner else summary, out)
        app.out.print(f"{len(files)} files written into {out}/")
    if send:
        with app.session() as session:
            sent = send_statements(
                session, monday, [partner] if partner else None, courier_from_env(), resend=resend
            )
        app.out.print(
            f"{sent} statement(s) sent; {len(statements) - sent} already sent before"
            + ("" if resend else " (--resend sends them again)")
        )
    if as_json:
        data: dict[str, Any] = {"statements": [dataclasses.asdict(s) for s in statements]}
        if partner is None:
            data["summary"] = dataclasses.asdict(summary)
        print_json(app.out, data)
        return
    if out is None:
        print_table(
            app.out,
            f"Statements for {week} ({summary.metric})",
            [_row(s) for s in statements],
            ["partner", "given", "received", "net", "sends_next_week", "approvals", "reliability"],
        )


def _enqueue(actor: Any) -> None:
    actor.send(None)


def courier_from_env() -> Courier:
    """Statements go to the SMTP relay JVMAIL_STATEMENTS_SMTP (host:port, with
    JVMAIL_STATEMENTS_SMTP_USER / _PASSWORD), or else to the outbox folder JVMAIL_OUTBOX
    (default ./outbox)."""
    relay = os.environ.get("JVMAIL_STATEMENTS_SMTP", "")
    if relay:
        host, _, port = relay.partition(":")
        return SmtpCourier(
            host,
            int(port or 587),
            user=os.environ.get("JVMAIL_STATEMENTS_SMTP_USER", ""),
            password=os.environ.get("JVMAIL_STATEMENTS_SMTP_PASSWORD", ""),
        )
    return OutboxCourier(Path(os.environ.get("JVMAIL_OUTBOX", "outbox")))


@cli.command()
@click.option("--once", is_flag=True, help="Run the jobs due now, then exit (for cron or tests).")
@pass_app
def scheduler(app: App, once: bool) -> None:
    """Run the hub's clock: every minute a tick for the workers (and mailings that missed
    their time by more than missed_grace_hours are held), the ledger credited every five
    minutes, next week planned on plan_day, statements sent on report_day in each partner's
    morning. Start it on one machine or several: only one acts at a time.

    \b
    Example:
      JVMAIL_REDIS_URL=redis://10.0.0.5:6379/0 jvmail scheduler
    """
    from jvmail.broker import make_broker
    from jvmail.cli import _no_provider, _redis_url
    from jvmail.dispatch.actors import Runtime, declare
    from jvmail.periodic import Periodic

    broker = make_broker(_redis_url(), namespace=os.environ.get("JVMAIL_REDIS_NAMESPACE", "jvmail"))
    url = app.database_url or DEFAULT_DATABASE_URL
    actors = declare(broker, Runtime(url, _no_provider))
    courier = courier_from_env()
    periodic = Periodic(
        make_sessionmaker(app.engine()),
        holder=f"{socket.gethostname()}:{os.getpid()}",
        enqueue_tick=lambda now: _enqueue(actors.tick),
        send_statements=lambda s, monday, slugs: send_statements(s, monday, slugs, courier),
    )
    try:
        while True:
            for line in periodic.step(dt.datetime.now(dt.UTC)):
                app.out.print(line)
            if once:
                return
            time.sleep(60 - time.time() % 60)  # wake at the start of each minute
    finally:
        broker.close()
