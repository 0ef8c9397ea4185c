"""The `jvmail` command: the one place that reads settings and wires engine, sessions and output.

Every command brings the database schema up to date before it touches it. Errors print as one
line and a fix (exit 1, or 2 for bad input); `--debug` shows the traceback instead.
"""

from __future__ import annotations

import datetime as dt
import os
import shlex
import sys
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.progress import Progress
from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from jvmail import __version__
from jvmail.broker import make_broker
from jvmail.config import Hub, load_config
from jvmail.console import (
    ImportBar,
    print_error,
    print_json,
    print_sync_report,
    print_table,
)
from jvmail.db import DEFAULT_DATABASE_URL, make_engine, make_sessionmaker, upgrade
from jvmail.db.migrate import current_revision
from jvmail.db.models import MailingStatus
from jvmail.dispatch.actors import QUEUE, RELAY_AFTER, Runtime, declare
from jvmail.dispatch.control import cancel as cancel_mailings
from jvmail.dispatch.control import pause as pause_mailings
from jvmail.dispatch.control import resume as resume_mailings
from jvmail.dispatch.pipeline import due_mailings
from jvmail.dispatch.runner import RunReport, run_due
from jvmail.errors import DatabaseError, Interrupted, JvmailError, UsageError
from jvmail.faults import fault
from jvmail.ledger import View, summarize
from jvmail.mailings import FIND_IDS, MailingRow, awaiting_approval, rows_by_id, week_mailings
from jvmail.mailings import approve as approve_mailings
from jvmail.mailings import decline as decline_mailings
from jvmail.plan_report import plan_json, print_plan
from jvmail.planner import (
    PlannedWeek,
    build_problem,
    mailings_in_week,
    parse_week,
    save_plan,
)
from jvmail.providers.base import Provider
from jvmail.providers.outbox import OutboxProvider
from jvmail.registry import SyncReport, sync_hub
from jvmail.registry.subscribers import refresh_statistics
from jvmail.registry.views import list_rows, partner_rows, promotion_rows
from jvmail.scaffold import example_hub_dir, scaffold, write_demo_subscribers
from jvmail.scheduler import Plan, Problem, Settings, plan_figures, solve
from jvmail.scheduler.explain import shortfalls
from jvmail.scheduler.relax import lp_bound
from jvmail.scheduler.synth import synthetic_problem

__all__ = ["cli", "main"]

# The example hub's promotions are dated around this week.
DEMO_WEEK = "2026-W49"


class App:
    """What every command shares: the database URL, consoles, and a lazily built engine."""

    def __init__(self, database_url: str | None, debug: bool) -> None:
        self.database_url = database_url
        self.debug = debug
        self.out = Console(highlight=False)
        self.err = Console(stderr=True, highlight=False)
        self._engine: Engine | None = None

    def engine(self) -> Engine:
        """The engine, schema at head. URL: --db / JVMAIL_DATABASE_URL, else the default."""
        if self._engine is None:
            url = self.database_url or DEFAULT_DATABASE_URL
            self._engine = make_engine(url)
            upgrade(self._engine)
        return self._engine

    def command(self) -> str:
        """How to call jvmail on this database in a hint: with --db when a plain `jvmail`
        would open another one (the demo's, or one given with --db)."""
        url = self.database_url
        if url is None or url == os.environ.get("JVMAIL_DATABASE_URL"):
            return "jvmail"
        return f"jvmail --db {shlex.quote(url)}"

    def close(self) -> None:
        if self._engine is not None:
            self._engine.dispose()
            self._engine = None

    @contextmanager
    def session(self) -> Iterator[Session]:
        with make_sessionmaker(self.engine())() as session:
            yield session


pass_app = click.make_pass_decorator(App)
_JSON = click.option("--json", "as_json", is_flag=True, help="Print JSON for machines.")
_ALL = click.option("--all", "include_archived", is_flag=True, help="Include archived rows.")
_PARTNER = click.option("--partner", metavar="ID", help="Only this partner's rows.")


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option(
    "--db",
    "database_url",
    envvar="JVMAIL_DATABASE_URL",
    metavar="URL",
    help="Database URL (env JVMAIL_DATABASE_URL). Default: sqlite:///jvmail.db",
)
@click.option("--debug", is_flag=True, help="Show tracebacks instead of one-line errors.")
@click.version_option(__version__, prog_name="jvmail")
@click.pass_context
def cli(ctx: click.Context, database_url: str | None, debug: bool) -> None:
    """jvmail: fair joint-venture email swaps between partners.

    \b
    Start here:
      jvmail demo                    # the example hub, end to end, in ./.jvmail-demo
      jvmail init my-hub             # a commented config directory to fill in
      jvmail sync my-hub             # validate it and load it into the database
      jvmail partners                # what the registry holds
    """
    ctx.obj = App(database_url, debug)
    ctx.call_on_close(ctx.obj.close)


@cli.command()
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@pass_app
def init(app: App, directory: Path) -> None:
    """Create a commented config directory to start a hub from.

    Existing files are left alone.

    \b
    Example:
      jvmail init my-hub && jvmail sync my-hub
    """
    written = scaffold(directory)
    for path in written:
        app.out.print(f"created {path}")
    if not written:
        app.out.print(f"{directory} already has every starter file; nothing written")
    app.out.print(f"\nNext: edit {directory}/partners/*.toml, then run `jvmail sync {directory}`.")


@cli.command()
@click.argument("config_dir", type=click.Path(path_type=Path))
@click.option("--dry-run", is_flag=True, help="Show what would change; write nothing.")
@click.option("--strict", is_flag=True, help="Fail the whole sync on any bad CSV row.")
@_JSON
@pass_app
def sync(app: App, config_dir: Path, dry_run: bool, strict: bool, as_json: bool) -> None:
    """Validate CONFIG_DIR and make the database match it, in one transaction.

    Partners, lists and promotions are added, changed, or archived when removed (never deleted);
    each list's subscriber CSV is imported. Bad CSV rows are reported and skipped (or, with
    --strict, fail the sync). Unsubscribed, bounced and complained addresses stay that way.

    \b
    Examples:
      jvmail sync config/            # apply
      jvmail sync config/ --dry-run  # preview the diff
      jvmail sync config/ --json     # machine-readable diff
    """
    hub = load_config(config_dir)
    report = _run_sync(app, hub, dry_run=dry_run, strict=strict, progress=not as_json)
    if as_json:
        print_json(app.out, _report_json(report, dry_run))
    else:
        print_sync_report(app.out, report, dry_run=dry_run)
        if dry_run:
            app.out.print("[bold]--dry-run:[/] nothing was written.")


def _run_sync(app: App, hub: Hub, *, dry_run: bool, strict: bool, progress: bool) -> SyncReport:
    with app.session() as session:
        if progress:
            with ImportBar(app.err) as bar:
                report = sync_hub(session, hub, strict=strict, progress=bar)
        else:
            report = sync_hub(session, hub, strict=strict)
        session.flush()
        fault("sync:before-commit")  # a crash here must leave the database as it was
        if dry_run:
            session.rollback()
            return report
        session.commit()
        if any(not result.is_noop for result in report.imports):
            refresh_statistics(session.connection())
            session.commit()
    return report


def _report_json(report: SyncReport, dry_run: bool) -> dict[str, Any]:
    return {
        "dry_run": dry_run,
        "changed": not report.is_noop,
        "registry": [
            {"kind": c.kind, "id": c.slug, "action": c.action, "fields": list(c.fields)}
            for c in report.changes
        ],
        "subscribers": [
            {
                "list": r.list_slug,
                "rows": r.rows,
                "added": r.added,
                "changed": r.changed,
                "archived": r.archived,
                "duplicates": r.duplicates,
                "bad_rows": r.bad_count,
                "bad": [{"file": b.file, "line": b.line, "reason": b.reason} for b in r.bad],
            }
            for r in report.imports
        ],
    }


def _check_partner(session: Session, partner: str | None) -> None:
    if partner is None:
        return
    known = [row["id"] for row in partner_rows(session, include_archived=True)]
    if partner not in known:
        raise UsageError(
            f"no partner {partner!r} in the registry",
            f"use one of: {', '.join(known)}" if known else "run `jvmail sync CONFIG_DIR` first",
        )


def _show(app: App, title: str, rows: list[dict[str, Any]], cols: list[str], as_json: bool) -> None:
    if as_json:
        print_json(app.out, rows)
    elif not rows:
        app.out.print(f"No {title.lower()} yet: run `jvmail sync CONFIG_DIR` first.")
    else:
        print_table(app.out, title, rows, cols)


@cli.command()
@_ALL
@_JSON
@pass_app
def partners(app: App, include_archived: bool, as_json: bool) -> None:
    """List the partners in the registry.

    \b
    Example:
      jvmail partners --json | jq '.[].id'
    """
    with app.session() as session:
        rows = partner_rows(session, include_archived)
    cols = ["id", "name", "categories", "provider", "lists", "promotions", "subscribers"]
    _show(app, "Partners", rows, [*cols, "archived"] if include_archived else cols, as_json)


@cli.command("lists")
@_PARTNER
@_ALL
@_JSON
@pass_app
def lists_(app: App, partner: str | None, include_archived: bool, as_json: bool) -> None:
    """List the mailing lists, with their subscribed counts.

    \b
    Example:
      jvmail lists --partner pixel-and-pine
    """
    with app.session() as session:
        _check_partner(session, partner)
        rows = list_rows(session, partner, include_archived)
    cols = ["id", "partner", "name", "niches", "subscribers", "max_sends_per_week", "send_days"]
    _show(app, "Lists", rows, cols, as_json)


@cli.command()
@_PARTNER
@_ALL
@_JSON
@pass_app
def promotions(app: App, partner: str | None, include_archived: bool, as_json: bool) -> None:
    """List the promotions partners want mailed.

    \b
    Example:
      jvmail promotions --partner pixel-and-pine --json
    """
    with app.session() as session:
        _check_partner(session, partner)
        rows = promotion_rows(session, partner, include_archived)
    cols = ["id", "partner", "subject", "window_start", "window_end", "mailings_wanted"]
    _show(app, "Promotions", rows, cols, as_json)


@cli.command()
@_PARTNER
@click.option(
    "--view",
    type=click.Choice([v.value for v in View]),
    default=View.MEASURED.value,
    show_default=True,
    help="measured: what tracking measured; projected: plus planned mailings' expected value.",
)
@_JSON
@pass_app
def ledger(app: App, partner: str | None, view: str, as_json: bool) -> None:
    """Balances per partner, derived from the append-only ledger, and who owes whom after netting.

    Net = value given - value received: positive means the hub owes the partner. Netting is
    multilateral: A mailing for B, B for C and C for A owes nobody anything.

    \b
    Examples:
      jvmail ledger
      jvmail ledger --partner pixel-and-pine --view projected --json
    """
    with app.session() as session:
        _check_partner(session, partner)
        summary = summarize(session, View(view))
    rows = [asdict(b) | {"reliability": _ratio(b.kept, b.due)} for b in summary.partners]
    transfers = [asdict(t) for t in summary.transfers]
    pairs = [{"partner": a, "with": b, "net": v} for (a, b), v in sorted(summary.pairs.items())]
    if partner:
        rows = [r for r in rows if r["partner"] == partner]
        transfers = [t for t in transfers if partner in (t["debtor"], t["creditor"])]
        pairs = [_from_side(p, partner) for p in pairs if partner in (p["partner"], p["with"])]
    if as_json:
        print_json(app.out, {"view": view, "partners": rows, "pairs": pairs, "owes": transfers})
        return
    if not rows:
        app.out.print("The ledger is empty: nothing has been planned or measured yet.")
        return
    print_table(
        app.out, f"Balances ({view})", rows, ["partner", "given", "received", "net", "reliability"]
    )
    if partner:
        print_table(app.out, "With each partner", pairs, ["partner", "with", "net"])
    if transfers:
        print_table(app.out, "After netting", transfers, ["debtor", "creditor", "value"])


def _ratio(kept: int, due: int) -> str:
    return f"{kept}/{due}" if due else "-"


def _from_side(pair: dict[str, Any], partner: str) -> dict[str, Any]:
    """Show a pair balance from ``partner``'s side: net > 0 means the other owes it."""
    if pair["partner"] == partner:
        return pair
    return {"partner": partner, "with": pair["partner"], "net": -pair["net"]}


@cli.command()
@click.option("--week", metavar="YYYY-Www", help="ISO week to plan, e.g. 2026-W49.")
@click.option("--dry-run", is_flag=True, help="Show the plan; save nothing.")
@click.option(
    "--explain",
    is_flag=True,
    help="Show each mailing's sender, owner and send time, and why promotions fell short.",
)
@click.option(
    "--problem",
    "problem_file",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    help="Solve a problem JSON file instead of the database's hub (nothing is saved).",
)
@click.option(
    "--export-problem",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write the week's problem as JSON (for bug reports and benchmarks).",
)
@click.option(
    "--no-bound",
    is_flag=True,
    help="Skip V_max and the LP bound (minutes on a hub of thousands of partners).",
)
@_JSON
@pass_app
def plan(
    app: App,
    *,
    week: str | None,
    dry_run: bool,
    explain: bool,
    problem_file: Path | None,
    export_problem: Path | None,
    no_bound: bool,
    as_json: bool,
) -> None:
    """Plan a week of mailings: who mails whose promotion, on which list and day.

    The plan maximizes expected value while keeping each partner's net balance small (old debt
    is carried from the ledger). Each planned mailing gets an `expected` ledger entry.

    --explain adds each mailing's sender, the promotion's owner and the local send time, and a
    table of why promotions got fewer mailings than they wanted (no-eligible-list, window,
    lists-exhausted, capacity, pair-cap, balance); --json always includes those reasons.

    --no-bound leaves out V_max and the LP bound (and so V / V_max and the gap): on a hub of
    thousands of partners they take minutes, the plan itself seconds.

    \b
    Examples:
      jvmail plan --week 2026-W49 --dry-run --explain
      jvmail plan --week 2026-W49 --export-problem week49.json
      jvmail plan --problem week49.json --json --no-bound
    """
    if problem_file is not None:
        problem = _read_problem(problem_file)
        footer = f"Solved {problem_file}: nothing was saved (a problem file is not a hub)."
        chosen, took = _timed_solve(problem)
        _report_plan(
            app,
            problem,
            chosen,
            took,
            as_json=as_json,
            saved=False,
            explain=explain,
            footer=footer,
            bound=not no_bound,
        )
        return
    if week is None:
        raise UsageError("which week?", "give --week YYYY-Www (or --problem FILE)")
    with app.session() as session:
        problem = build_problem(session, parse_week(week))
        if export_problem is not None:
            export_problem.write_text(problem.to_json(), encoding="utf-8")
        chosen, took = _timed_solve(problem)
        footer = ""
        if not dry_run:
            footer = _saved_footer(app, save_plan(session, problem, chosen), problem.week_start)
            session.commit()
    _report_plan(
        app,
        problem,
        chosen,
        took,
        as_json=as_json,
        saved=not dry_run,
        explain=explain,
        footer=footer,
        bound=not no_bound,
    )


def _saved_footer(app: App, saved: PlannedWeek, week_start: dt.date) -> str:
    waiting = saved.awaiting_approval
    if not waiting:
        return "Saved as planned mailings."
    jv = app.command()
    return (
        f"Saved as planned mailings; awaiting their sender's approval: {waiting} "
        f"(`{jv} mailings --week {week_start:%G-W%V} --status awaiting_approval`, "
        f"then `{jv} approve`)."
    )


@cli.command("bench-problem")
@click.option("--partners", type=int, required=True, metavar="N", help="Partners in the hub (2+).")
@click.option("--seed", type=int, default=0, show_default=True, help="Same seed, same hub.")
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write the problem JSON here instead of to stdout.",
)
@pass_app
def bench_problem(app: App, partners: int, seed: int, out: Path | None) -> None:
    """Write a synthetic hub's week as problem JSON, for benchmarks and bug reports.

    The hub is deterministic: the same --partners and --seed always give the same file.
    Realistic spreads: list sizes 500 to 500,000, click rates 0.3% to 10%, 1-3 lists and 1-5
    promotions per partner, blackouts, digests and audience overlaps.

    \b
    Examples:
      jvmail bench-problem --partners 100 --seed 1 --out hub100.json
      jvmail plan --problem hub100.json
    """
    if partners < 2:
        raise UsageError(
            f"--partners {partners}: a hub needs at least 2 partners to swap mailings",
            "give --partners 2 or more",
        )
    text = synthetic_problem(partners, seed=seed).to_json()
    if out is None:
        click.echo(text)
        return
    out.write_text(text + "\n", encoding="utf-8")
    app.err.print(f"wrote {out} ({partners} partners, seed {seed})", soft_wrap=True)


def _read_problem(path: Path) -> Problem:
    try:
        return Problem.from_json(path.read_text(encoding="utf-8"))
    except (ValueError, KeyError, TypeError) as exc:
        raise UsageError(
            f"{path}: not a valid problem file ({exc.__class__.__name__}: {exc})",
            "export one with `jvmail plan --week W --export-problem FILE`",
        ) from exc


def _timed_solve(problem: Problem) -> tuple[Plan, float]:
    start = time.perf_counter()
    plan = solve(problem)
    return plan, time.perf_counter() - start


def _report_plan(
    app: App,
    problem: Problem,
    chosen: Plan,
    took: float,
    *,
    as_json: bool,
    saved: bool,
    explain: bool = False,
    footer: str = "",
    bound: bool = True,
) -> None:
    v_max = lp = None
    if bound:
        value_only = Problem(
            problem.week_start,
            problem.lists,
            problem.promotions,
            niche_groups=problem.niche_groups,
            settings=Settings(
                pair_cap=problem.settings.pair_cap, balance_weight=0, excess_weight=0
            ),
        )
        v_max = sum(a.value for a in solve(value_only).assignments)
        lp = lp_bound(problem)
    figures = plan_figures(problem, chosen, value_max=v_max, bound=lp, solve_seconds=took)
    short = shortfalls(problem, chosen)
    if as_json:
        print_json(app.out, plan_json(problem, chosen, figures, short, saved=saved))
        return
    print_plan(app.out, problem, chosen, figures, short, explain=explain)
    default = "Saved as planned mailings." if saved else "[bold]--dry-run:[/] nothing was saved."
    app.out.print(footer or default, soft_wrap=True)


_MAILING_COLS = [
    "id",
    "send_time",
    "sender",
    "list",
    "promotion",
    "owner",
    "status",
    "progress",
    "expected_value",
]


def _mailing_json(row: MailingRow) -> dict[str, Any]:
    return asdict(row) | {
        "day": row.day.isoformat(),
        "local_time": row.local_time.isoformat(),
        "status": row.status.value,
    }


def _show_mailings(app: App, title: str, rows: list[MailingRow], as_json: bool) -> None:
    if as_json:
        print_json(app.out, [_mailing_json(r) for r in rows])
    else:
        table = [
            asdict(r) | {"progress": f"{r.sent:,}/{r.total:,}" if r.total else ""} for r in rows
        ]
        print_table(app.out, title, table, _MAILING_COLS)
        _say_why(app, [(r.id, r.status, r.total, r.error) for r in rows])


def _say_why(app: App, rows: Iterable[tuple[int, MailingStatus, int, str]]) -> None:
    """A line under a table of mailings for each (id, status, deliveries, error) that failed,
    paused, or was sent to nobody, with the reason."""
    for mailing_id, status, total, error in rows:
        nobody = status == MailingStatus.SENT and not total
        if error and (nobody or status in (MailingStatus.FAILED, MailingStatus.PAUSED)):
            said = f"mailing {mailing_id} {status.value}: {error}"
            app.out.print(said, soft_wrap=True, markup=False, highlight=False)


@cli.command("mailings")
@click.option("--week", metavar="YYYY-Www", help="ISO week, e.g. 2026-W49.")
@click.option("--partner", metavar="ID", help="Only mailings this partner sends or receives.")
@click.option(
    "--status",
    type=click.Choice([s.value for s in MailingStatus]),
    help="Only mailings with this status.",
)
@_JSON
@pass_app
def mailings_(
    app: App, week: str | None, partner: str | None, status: str | None, as_json: bool
) -> None:
    """List a week's saved mailings: when, who sends what to which list, status, expected value.

    Send times are local to the sender. Use the ids with `jvmail approve` / `jvmail decline`.

    \b
    Examples:
      jvmail mailings --week 2026-W49
      jvmail mailings --week 2026-W49 --status awaiting_approval --partner lumen-photo
    """
    if week is None:
        raise UsageError("which week?", "give --week YYYY-Www, e.g. --week 2026-W49")
    week_start = parse_week(week)
    with app.session() as session:
        _check_partner(session, partner)
        rows = week_mailings(
            session, week_start, partner=partner, status=MailingStatus(status) if status else None
        )
    if not rows and not as_json:
        app.out.print(f"No mailings in the week of {week_start} match.")
        return
    _show_mailings(app, f"Mailings, week of {week_start}", rows, as_json)


@cli.command()
@click.argument("mailing_ids", nargs=-1, type=int, metavar="MAILING_ID...")
@click.option(
    "--all", "every", is_flag=True, help="Every mailing awaiting approval (narrow it below)."
)
@click.option("--partner", metavar="ID", help="With --all: only mailings on this partner's lists.")
@click.option("--week", metavar="YYYY-Www", help="With --all: only this week's mailings.")
@_JSON
@pass_app
def approve(
    app: App,
    *,
    mailing_ids: tuple[int, ...],
    every: bool,
    partner: str | None,
    week: str | None,
    as_json: bool,
) -> None:
    """Approve mailings awaiting approval, so they are sent as planned.

    Partners with `approve_mailings = true` review each mailing planned onto their lists.
    Approving anything not awaiting approval is an error and changes nothing.

    \b
    Examples:
      jvmail approve 12 13
      jvmail approve --all --partner lumen-photo --week 2026-W49
    """
    with app.session() as session:
        ids = _approval_ids(session, mailing_ids, every=every, partner=partner, week=week)
        if not ids:
            app.out.print("No mailings await approval there; nothing changed.")
            return
        rows = approve_mailings(session, ids, now=dt.datetime.now(dt.UTC))
        session.commit()
    _show_mailings(app, f"Approved {len(rows)} mailings", rows, as_json)


def _approval_ids(
    session: Session,
    given: tuple[int, ...],
    *,
    every: bool,
    partner: str | None,
    week: str | None,
) -> list[int]:
    """The ids to approve: those given, or with --all those awaiting approval that match."""
    if given and every:
        raise UsageError("give MAILING_ID... or --all, not both", "drop the ids or drop --all")
    if not every and (partner or week):
        raise UsageError(
            "--partner and --week narrow --all", "add --all, or give the mailing ids instead"
        )
    if not every:
        if not given:
            raise UsageError("which mailings?", f"give MAILING_ID... or --all; {FIND_IDS}")
        return list(given)
    _check_partner(session, partner)
    week_start = parse_week(week) if week else None
    return awaiting_approval(session, sender=partner, week_start=week_start)


@cli.command()
@click.argument("mailing_ids", nargs=-1, required=True, type=int, metavar="MAILING_ID...")
@click.option("--reason", default="", metavar="TEXT", help="Why, kept with the mailing.")
@_JSON
@pass_app
def decline(app: App, mailing_ids: tuple[int, ...], reason: str, as_json: bool) -> None:
    """Decline mailings awaiting approval: they are not sent and their expected value is dropped.

    The ledger is append-only, so each declined mailing gets a `correction` entry cancelling
    its `expected` one; projected balances drop it, and it is not a missed commitment.
    Declining anything not awaiting approval is an error and changes nothing.

    \b
    Example:
      jvmail decline 14 --reason "we ran a similar offer last week"
    """
    with app.session() as session:
        rows = decline_mailings(session, mailing_ids, now=dt.datetime.now(dt.UTC), reason=reason)
        session.commit()
    _show_mailings(app, f"Declined {len(rows)} mailings", rows, as_json)


_IDS = click.argument("mailing_ids", nargs=-1, required=True, type=int, metavar="MAILING_ID...")


def _mailings(count: int) -> str:
    return "1 mailing" if count == 1 else f"{count:,} mailings"


@cli.command("pause")
@_IDS
@_JSON
@pass_app
def pause_(app: App, mailing_ids: tuple[int, ...], as_json: bool) -> None:
    """Pause mailings waiting or being sent: no further batch is taken for them.

    Batches already handed to a provider finish; `jvmail resume` goes on where it stopped. A
    mailing paused already stays as it is.

    \b
    Example:
      jvmail pause 12 13
    """
    with app.session() as session:
        rows = pause_mailings(session, mailing_ids, dt.datetime.now(dt.UTC))
        session.commit()
    _show_mailings(app, f"Paused {_mailings(len(rows))}", rows, as_json)


@cli.command("resume")
@_IDS
@_JSON
@pass_app
def resume_(app: App, mailing_ids: tuple[int, ...], as_json: bool) -> None:
    """Resume paused or failed mailings: only what was not sent yet goes out, at the next tick
    or run.

    One paused before it started waits again for its sender's approval if the sender reviews
    mailings and had not approved it. Resume a failed mailing once its cause (shown by
    `jvmail mailings`: a template, a missing secret) is fixed; addresses the provider refused
    stay refused.

    \b
    Example:
      jvmail resume 12 13 && jvmail run
    """
    with app.session() as session:
        rows = resume_mailings(session, mailing_ids, dt.datetime.now(dt.UTC))
        session.commit()
    _show_mailings(app, f"Resumed {_mailings(len(rows))}", rows, as_json)


@cli.command("cancel")
@_IDS
@click.option("--reason", default="", metavar="TEXT", help="Why, kept with the mailing.")
@_JSON
@pass_app
def cancel_(app: App, mailing_ids: tuple[int, ...], reason: str, as_json: bool) -> None:
    """Cancel mailings not yet sent, paused half way, or failed: what was not sent never will be.

    If nothing of a mailing went out, its expected value leaves the projected balances (a
    `correction` entry); it is not counted as a missed commitment.

    \b
    Example:
      jvmail cancel 12 --reason "the offer closed early"
    """
    with app.session() as session:
        rows = cancel_mailings(session, mailing_ids, dt.datetime.now(dt.UTC), reason)
        session.commit()
    _show_mailings(app, f"Cancelled {_mailings(len(rows))}", rows, as_json)


@cli.group()
def db() -> None:
    """Database maintenance."""


@db.command("upgrade")
@pass_app
def db_upgrade(app: App) -> None:
    """Bring the database schema to the latest version.

    Every other command does this by itself; this one only makes it explicit.

    \b
    Example:
      JVMAIL_DATABASE_URL=postgresql://jvmail@db/jvmail jvmail db upgrade
    """
    engine = app.engine()
    app.out.print(f"database at revision {current_revision(engine)} (latest)")


def _send_due(
    app: App, outbox: Path, until: dt.datetime, *, quiet: bool, only: list[int] | None = None
) -> RunReport:
    """Send what is due until ``until`` (of ``only``, when given) into ``outbox``, with a
    progress bar."""
    app.engine()  # the schema is at head before any worker thread opens a session
    provider = OutboxProvider(outbox)
    url = app.database_url or DEFAULT_DATABASE_URL
    runtime = Runtime(url, lambda _mailing: provider)
    threads = 1 if url.startswith("sqlite") else 4  # SQLite writes one at a time anyway
    with Progress(console=app.err, transient=True, disable=quiet) as bar:
        task = bar.add_task("sending", total=None)

        def tick(accepted: int) -> None:
            bar.update(task, completed=accepted, description=f"{accepted:,} messages")

        try:
            return run_due(runtime, until, threads=threads, progress=tick, only=only)
        except KeyboardInterrupt:
            raise Interrupted(
                "interrupted: what was handed over is recorded; the rest waits",
                "run the same `jvmail run` again to send the rest: nothing is sent twice",
            ) from None
        finally:
            runtime.close()


def _parse_until(text: str) -> dt.datetime:
    try:
        until = dt.datetime.fromisoformat(text)
    except ValueError:
        raise UsageError(
            f"--until {text!r} is not an ISO time", "e.g. 2026-12-02T12:00:00+00:00"
        ) from None
    return until if until.tzinfo else until.replace(tzinfo=dt.UTC)


def _week_end(week: str) -> dt.datetime:
    """The Monday after ISO week ``week`` at 14:00 UTC: the week is over in every time zone."""
    monday = parse_week(week) + dt.timedelta(days=7)
    return dt.datetime.combine(monday, dt.time(14), tzinfo=dt.UTC)


def _through_week(app: App, week: str) -> list[int]:
    """The mailings due by the end of ``week`` whose send day, in their sender's own time zone,
    is in that week or before it: by then another week has begun in some zones, and its
    mailings are not this week's."""
    end = parse_week(week) + dt.timedelta(days=7)
    with app.session() as session:
        rows = rows_by_id(session, due_mailings(session, _week_end(week)))
    return [r.id for r in rows if r.day < end]


def _print_run(app: App, report: RunReport, outbox: Path) -> None:
    rows = [asdict(m) for m in report.mailings]
    cols = ["mailing_id", "list", "promotion", "status", "sent", "refused", "suppressed"]
    print_table(app.out, "Mailings sent", rows, cols)
    _say_why(
        app, [(m.mailing_id, MailingStatus(m.status), m.total, m.error) for m in report.mailings]
    )
    if report.unknown:
        app.out.print(
            f"{report.unknown} messages were in flight when an earlier run stopped: marked "
            "unknown, never sent again.",
            soft_wrap=True,
        )
    waiting = [m.mailing_id for m in report.mailings if m.status in ("queued", "sending")]
    if waiting:
        app.out.print(
            f"still queued: {', '.join(map(str, waiting))}, left by a run that stopped (or being "
            f"sent elsewhere); a run sends the rest once they have shown no progress for "
            f"{RELAY_AFTER.seconds // 60} minutes",
            soft_wrap=True,
        )
    app.out.print(f"{report.sent:,} messages written to {outbox}/", soft_wrap=True)


@cli.command("run")
@click.option(
    "--outbox",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("outbox"),
    show_default=True,
    help="Folder for the .eml files (one subfolder per mailing).",
)
@click.option("--until", "until_text", metavar="WHEN", help="Send what is due by then (ISO time).")
@click.option(
    "--week",
    metavar="YYYY-Www",
    help="Send what is due by the end of this week, in each sender's own time zone.",
)
@_JSON
@pass_app
def run_(app: App, outbox: Path, until_text: str | None, week: str | None, as_json: bool) -> None:
    """Send the mailings that are due, in this process, into an outbox folder.

    Each due mailing (planned or approved, its time come) gets its deliveries, then its
    messages are rendered once and written as .eml files, one per recipient: both unsubscribe
    headers, the sender's postal address, signed tracking links. Run it again: nothing is sent
    twice. A mailing whose template cannot be rendered fails with the reason; the others go on.

    \b
    Examples:
      jvmail run                          # what is due now, into ./outbox
      jvmail run --week 2026-W49 --outbox /tmp/out
      jvmail run --until 2026-12-02T12:00:00+00:00 --json
    """
    if until_text and week:
        raise UsageError("give --until or --week, not both", "drop one of them")
    until, only = dt.datetime.now(dt.UTC), None
    if week:
        until, only = _week_end(week), _through_week(app, week)
    elif until_text:
        until = _parse_until(until_text)
    report = _send_due(app, outbox, until, quiet=as_json, only=only)
    if as_json:
        print_json(
            app.out,
            {
                "outbox": str(outbox),
                "sent": report.sent,
                "unknown": report.unknown,
                "mailings": [asdict(m) for m in report.mailings],
            },
        )
        return
    _print_run(app, report, outbox)


def _redis_url() -> str:
    url = os.environ.get("JVMAIL_REDIS_URL")
    if not url:
        raise UsageError(
            "workers share their work through Redis, and JVMAIL_REDIS_URL is not set",
            "export JVMAIL_REDIS_URL=redis://HOST:6379/0, or send through the partners' "
            "accounts in one process, no Redis: `jvmail scheduler`",
        )
    return url


@cli.command()
@click.option(
    "--processes",
    type=click.IntRange(1, 256),
    default=os.cpu_count() or 1,
    show_default="the number of cores",
    help="Worker processes on this machine.",
)
@click.option(
    "--threads",
    type=click.IntRange(1, 256),
    default=8,
    show_default=True,
    help="Threads per process.",
)
@pass_app
def worker(app: App, processes: int, threads: int) -> None:
    """Run send workers on this machine, taking work from Redis.

    Start as many as you like on any number of machines against one database: batches are
    claimed with a lease, so each message is sent once whoever takes it. Each mailing goes
    through its sender's own provider account or, when JVMAIL_OUTBOX names a folder, into it as
    .eml files (a trial run). Something must enqueue the periodic work: `jvmail scheduler`
    (one long-lived process; a second one started by mistake waits), or `jvmail tick` from
    cron every minute.

    \b
    Example:
      JVMAIL_REDIS_URL=redis://10.0.0.5:6379/0 \\
      JVMAIL_DATABASE_URL=postgresql://jvmail@db/jvmail jvmail worker --processes 4
    """
    _redis_url()
    app.engine()  # fail here, clearly, if the database is unreachable; migrate it once
    if app.database_url:
        os.environ["JVMAIL_DATABASE_URL"] = app.database_url
    args = [sys.executable, "-m", "dramatiq", "jvmail.dispatch.boot"]
    args += ["--processes", str(processes), "--threads", str(threads), "--queues", QUEUE]
    app.close()
    os.execv(sys.executable, args)


@cli.command()
@click.option("--until", "until_text", metavar="WHEN", help="Send what is due by then (ISO).")
@pass_app
def tick(app: App, until_text: str | None) -> None:
    """Enqueue one tick for the workers: dispatch what is due, relay stalled batches.

    \b
    Example (cron, every minute):
      * * * * *  JVMAIL_REDIS_URL=redis://10.0.0.5:6379/0 jvmail tick
    """
    until = _parse_until(until_text) if until_text else None
    broker = make_broker(_redis_url(), namespace=os.environ.get("JVMAIL_REDIS_NAMESPACE", "jvmail"))
    url = app.database_url or DEFAULT_DATABASE_URL
    actors = declare(broker, Runtime(url, _no_provider))
    actors.tick.send(until.isoformat() if until else None)
    broker.close()
    app.out.print("tick enqueued")


def _no_provider(mailing_id: int) -> Provider:
    raise AssertionError(f"this process only enqueues; mailing {mailing_id} is sent by workers")


@cli.command()
@click.option(
    "--dir",
    "directory",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path(".jvmail-demo"),
    show_default=True,
    help="Scratch folder for the example hub and its database.",
)
@pass_app
def demo(app: App, directory: Path) -> None:
    """Run the example hub end to end on the embedded default (SQLite, no services).

    Copies the example hub into DIR, generates its subscriber CSVs, syncs it into
    DIR/jvmail.db and shows the registry. Run it again: the second sync changes nothing.

    \b
    Example:
      jvmail demo --dir /tmp/jv
    """
    hub_dir = directory / "hub"
    scaffold(hub_dir, source=example_hub_dir(), overwrite=True)
    counts = write_demo_subscribers(hub_dir)
    app.out.print(
        f"[bold]1. Example hub[/] in {hub_dir}: {len(counts)} subscriber CSVs "
        f"({sum(counts.values()):,} rows) generated."
    )
    if app.database_url is None:
        app.database_url = f"sqlite:///{(directory / 'jvmail.db').resolve()}"
    hub = load_config(hub_dir)
    app.out.print(f"[bold]2. Sync[/] into {app.database_url}")
    report = _run_sync(app, hub, dry_run=False, strict=False, progress=True)
    print_sync_report(app.out, report, dry_run=False)
    app.out.print("[bold]3. Registry[/]")
    with app.session() as session:
        partners_ = partner_rows(session)
        lists = list_rows(session)
    print_table(
        app.out, "Partners", partners_, ["id", "provider", "lists", "promotions", "subscribers"]
    )
    print_table(app.out, "Lists", lists, ["id", "partner", "subscribers", "max_sends_per_week"])
    week = parse_week(DEMO_WEEK)
    app.out.print(f"[bold]4. Plan[/] the week {DEMO_WEEK} (starting {week})")
    with app.session() as session:
        problem = build_problem(session, week)
        chosen, took = _timed_solve(problem)
        fresh = mailings_in_week(session, week) == 0
        footer = (
            "This week was planned by an earlier demo run, and that plan stands: the plan above "
            f"is what today's balances would choose, not saved (`{app.command()} mailings "
            f"--week {DEMO_WEEK}` shows the saved one)."
        )
        if fresh:
            footer = _saved_footer(app, save_plan(session, problem, chosen), week)
            session.commit()
    _report_plan(
        app, problem, chosen, took, as_json=False, saved=fresh, explain=True, footer=footer
    )
    outbox = directory / "outbox"
    app.out.print(f"[bold]5. Send[/] the week's mailings into {outbox}/")
    week_end, only = _week_end(DEMO_WEEK), _through_week(app, DEMO_WEEK)
    _print_run(app, _send_due(app, outbox, week_end, quiet=False, only=only), outbox)
    from jvmail.cli_tracking import demo_readers

    demo_readers(app, outbox, step=6)
    click.get_current_context().invoke(ledger, partner=None, view="measured", as_json=False)
    from jvmail.cli_reports import demo_reports

    demo_reports(app, DEMO_WEEK, directory / "reports", step=7)
    jv = app.command()
    app.out.print(
        f"\n[bold]Done.[/] Config: {hub_dir}\nDatabase: {app.database_url}\n"
        f"See more: {jv} ledger --view projected   |   {jv} promotions",
        soft_wrap=True,
    )


def _debug_requested(args: list[str]) -> bool:
    # Decided before click parses, so even a parse-time failure can show its traceback.
    return "--debug" in args or os.environ.get("JVMAIL_DEBUG") == "1"


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point: run the CLI and turn errors into one line plus a fix."""
    args = sys.argv[1:] if argv is None else argv
    err = Console(stderr=True, highlight=False)
    try:
        cli.main(args=args, prog_name="jvmail", standalone_mode=False)
    except click.exceptions.Abort:
        err.print("aborted")
        sys.exit(1)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except JvmailError as exc:
        if _debug_requested(args):
            raise
        print_error(err, exc)
        sys.exit(exc.exit_code)
    except SQLAlchemyError as exc:
        if _debug_requested(args):
            raise
        wrapped = DatabaseError(
            f"database error: {exc.__class__.__name__}: {str(exc).splitlines()[0]}",
            "check JVMAIL_DATABASE_URL and that the database is reachable; --debug shows more",
        )
        print_error(err, wrapped)
        sys.exit(1)


# Commands defined in their own modules register themselves on `cli` when imported.
from jvmail import cli_reports, cli_secrets, cli_tracking  # noqa: E402, F401
