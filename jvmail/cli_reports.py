"""`jvmail report`: the week's reciprocity statements and the coordinator's summary."""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import os
import socket
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
import dramatiq

from jvmail.cli import _JSON, _PARTNER, App, cli, pass_app
from jvmail.console import print_json, print_table
from jvmail.db import DEFAULT_DATABASE_URL, make_sessionmaker
from jvmail.db.models import HubRecord
from jvmail.dispatch.actors import QUEUE
from jvmail.errors import JvmailError, UsageError
from jvmail.planner import parse_week
from jvmail.reports.build import build_statements, build_summary
from jvmail.reports.model import CoordinatorSummary, Statement
from jvmail.reports.send import Sending, hub_provider, send_statements

if TYPE_CHECKING:
    from jvmail.jobs import Enqueue


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
    ``out``; returns the files written. Statements are rendered in one process per core when
    there are many."""
    from jvmail.reports.render import (
        processes_for,
        render_statements,
        render_summary,
        write_files,
    )

    out.mkdir(parents=True, exist_ok=True)
    files: list[Path] = []
    processes = processes_for(len(statements))
    for st, rendered in render_statements(statements, processes=processes):
        files += write_files(rendered, out, f"{st.week}-{st.partner_slug}")
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
      jvmail report --week 2026-W49 --send
      JVMAIL_OUTBOX=/tmp/out jvmail report --week 2026-W49 --send --resend

    Statements are sent through the hub's own account ([hub.provider] in jvmail.toml; by
    default .eml files in ./outbox), each (partner, week) once; JVMAIL_OUTBOX writes them into
    that folder instead, like the workers' mailings.
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
        _send(app, monday, partner, resend)
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


def _send(app: App, monday: dt.date, partner: str | None, resend: bool) -> None:
    """Send the week's statements through the hub's account (or JVMAIL_OUTBOX) and say what
    became of each."""
    outbox = os.environ.get("JVMAIL_OUTBOX")
    with app.session() as session:
        hub = session.get(HubRecord, 1)
        if hub is None:
            raise UsageError("no hub in the database yet", "run `jvmail sync DIR` first")
        provider = hub_provider(hub, outbox=Path(outbox) if outbox else None)
        done = send_statements(
            session, monday, [partner] if partner else None, provider, resend=resend
        )
    app.out.print(
        f"{done.summary()}; {len(done.skipped)} skipped, sent or tried before"
        + ("" if resend else " (--resend sends them again)"),
        soft_wrap=True,
    )
    _refused(done)


def _refused(done: Sending) -> None:
    if done.stopped is not None:
        raise JvmailError(
            f"the hub's account cannot send: {done.stopped.message}",
            "check the secrets that the hub.provider table in jvmail.toml names; the "
            "statements not sent go with the next run",
        )
    if done.failed or done.retry or done.unknown:
        raise JvmailError(
            "some statements were not sent (listed above)",
            "those to try again go with the next run; failed or in-doubt ones only with "
            "--resend, once you have checked the provider's log",
        )


@cli.command()
@click.option("--once", is_flag=True, help="Run the jobs due this minute, then exit (cron).")
@pass_app
def scheduler(app: App, once: bool) -> None:
    """Run the hub's clock: every minute a tick for the workers (and mailings that missed
    their time by more than missed_grace_hours are held), the ledger credited every five
    minutes, next week planned on plan_day, statements sent through the hub's own account
    ([hub.provider]) on report_day in each partner's morning. Each is a job for the workers.
    Start it on one machine or several: only one acts at a time.

    With JVMAIL_REDIS_URL the jobs go to Redis for `jvmail worker`s. Without it this process
    is its own worker (the embedded default: no services). Wherever the jobs run,
    JVMAIL_OUTBOX sends every message, statements too, into that folder instead of through
    the accounts.

    \b
    Examples:
      JVMAIL_REDIS_URL=redis://10.0.0.5:6379/0 jvmail scheduler
      JVMAIL_OUTBOX=outbox jvmail scheduler --once
    """
    from jvmail.periodic import Periodic

    sessions = make_sessionmaker(app.engine())
    broker, enqueue, worker = _clock_broker(app)
    periodic = Periodic(sessions, holder=f"{socket.gethostname()}:{os.getpid()}", enqueue=enqueue)
    try:
        while True:
            for line in periodic.step(dt.datetime.now(dt.UTC)):
                app.out.print(line)
            if once:
                if worker is not None:
                    _drain(broker, worker)
                return
            time.sleep(60 - time.time() % 60)  # wake at the start of each minute
    finally:
        if worker is not None:
            worker.stop()
        broker.close()


def _clock_broker(app: App) -> tuple[dramatiq.Broker, Enqueue, dramatiq.Worker | None]:
    """The scheduler's broker, what it enqueues there, and its own worker when it has no
    Redis (then it runs the workers' code, :mod:`jvmail.dispatch.boot`, in this process)."""
    from jvmail.broker import make_broker
    from jvmail.cli import _no_provider
    from jvmail.dispatch.actors import Runtime, declare
    from jvmail.jobs import Enqueue, declare_jobs

    url = app.database_url or DEFAULT_DATABASE_URL
    redis_url = os.environ.get("JVMAIL_REDIS_URL")
    if redis_url:
        broker = make_broker(
            redis_url, namespace=os.environ.get("JVMAIL_REDIS_NAMESPACE", "jvmail")
        )
        runtime = Runtime(url, _no_provider)
        return broker, Enqueue(declare(broker, runtime), declare_jobs(broker, runtime)), None
    os.environ["JVMAIL_DATABASE_URL"] = url  # what the workers' code reads
    from jvmail.dispatch import boot

    logging.getLogger("jvmail").addHandler(logging.StreamHandler())
    logging.getLogger("jvmail").setLevel(logging.INFO)
    boot.broker.emit_after("process_boot")
    worker = dramatiq.Worker(boot.broker, worker_threads=4, worker_timeout=100)
    worker.start()
    return boot.broker, Enqueue(boot.actors, boot.jobs), worker


def _drain(broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
    """Wait until the in-process worker has done what was enqueued (and what that enqueued);
    retries waiting out a delay are left: the database keeps them for the next run."""
    broker.queues[QUEUE].join()
    worker.join()
