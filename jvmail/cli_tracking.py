"""Tracking commands: `jvmail serve`, `credit`, `suppress`, `rotate-link-key` and `reconcile`."""

from __future__ import annotations

import datetime as dt
import secrets
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import click
from email_validator import EmailNotValidError, validate_email
from sqlalchemy import select

from jvmail.cli import _JSON, App, cli, pass_app
from jvmail.console import print_json, print_table
from jvmail.db import DEFAULT_DATABASE_URL, make_sessionmaker
from jvmail.db.models import HubRecord, Mailing, Partner, SuppressionReason
from jvmail.dispatch.reconcile import GIVE_UP, reconcile
from jvmail.errors import UsageError
from jvmail.mailings import awaiting_approval, rows_of
from jvmail.tracking.app import Settings
from jvmail.tracking.credit import credit_measured
from jvmail.tracking.inbox import drain
from jvmail.tracking.links import Keyring, review_url
from jvmail.tracking.store import suppress as suppress_address
from jvmail.tracking.throttle import Budget, Limits, parse_proxies

KEYS_KEPT = 3  # link keys a hub keeps: the newest signs, all of them verify


def _budget_option(family: str, what: str) -> Callable[[Callable[..., None]], Callable[..., None]]:
    return click.option(
        f"--throttle-{family}",
        f"throttle_{family}",
        default=str(getattr(Limits(), family)),
        show_default=True,
        envvar=f"JVMAIL_THROTTLE_{family.upper()}",
        metavar="BURST/PER_S",
        callback=lambda _ctx, _param, text: _parsed(Budget.parse, text),
        help=f"{what} one client address may make: BURST at once, refilled at PER_S a "
        "second; 0: no limit.",
    )


def _parsed(parse: Callable[[str], object], text: str) -> object:
    try:
        return parse(text)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from exc


@cli.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=click.IntRange(1, 65535), default=8000, show_default=True)
@click.option("--workers", type=click.IntRange(1, 64), default=1, show_default=True)
@click.option("--access-log", is_flag=True, help="Log every request (costs about a sixth).")
@_budget_option("clicks", "Clicks and opens")
@_budget_option("unsubscribe", "Unsubscribe pages and one-click POSTs")
@_budget_option("webhooks", "Refused webhook requests (signed ones never count)")
@_budget_option("postbacks", "Refused conversion postbacks (signed ones never count)")
@click.option(
    "--trusted-proxies",
    default=",".join(Limits().trusted_proxies),
    show_default=True,
    envvar="JVMAIL_TRUSTED_PROXIES",
    metavar="ADDRESSES",
    callback=lambda _ctx, _param, text: _parsed(parse_proxies, text),
    help="Comma-separated proxy addresses or networks whose X-Forwarded-For names the client; "
    "empty: none.",
)
@click.option(
    "--drainers",
    type=click.IntRange(0, 16),
    default=Settings.drainers,
    show_default=True,
    envvar="JVMAIL_DRAINERS",
    help="Transactions at once storing the webhook inbox's events (PostgreSQL; SQLite: one). "
    "0: this server only fills the inbox, and another server, or the workers' tick, stores it.",
)
@pass_app
def serve(
    app: App,
    *,
    host: str,
    port: int,
    workers: int,
    access_log: bool,
    drainers: int,
    throttle_clicks: Budget,
    throttle_unsubscribe: Budget,
    throttle_webhooks: Budget,
    throttle_postbacks: Budget,
    trusted_proxies: tuple[str, ...],
) -> None:
    """Serve clicks, opens, unsubscribes, provider webhooks and conversion postbacks.

    Put it behind your HTTPS proxy at the hub's base_url. Provider webhooks go to
    {base_url}/webhooks/{provider}/{partner id}; conversion postbacks to
    {base_url}/postback/{promotion id}.

    A client address over a budget is answered 429 with Retry-After and nothing is recorded.
    Budgets are per worker process: with --workers N a client may get up to N of them.

    \b
    Examples:
      JVMAIL_DATABASE_URL=postgresql://jvmail@db/jvmail jvmail serve --port 8000 --workers 4
      jvmail serve --port 8001 --drainers 0   # answers only; another server stores the inbox
    """
    import os

    import uvicorn

    limits = Limits(
        throttle_clicks,
        throttle_unsubscribe,
        throttle_webhooks,
        throttle_postbacks,
        trusted_proxies=trusted_proxies,
    )
    app.engine()  # fail here, clearly, if the database is unreachable; migrate it once
    os.environ["JVMAIL_DATABASE_URL"] = app.database_url or DEFAULT_DATABASE_URL
    os.environ.update(limits.env())  # what each worker's app reads (jvmail.tracking.serve)
    os.environ["JVMAIL_DRAINERS"] = str(drainers)
    app.close()
    uvicorn.run(
        "jvmail.tracking.serve:app",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        # uvicorn takes the client from X-Forwarded-For for the same proxies only, so the
        # address a click records is the one the limits are kept for.
        proxy_headers=bool(trusted_proxies),
        forwarded_allow_ips=",".join(trusted_proxies),
        access_log=access_log,
        log_level="info",
    )


@cli.command()
@pass_app
def credit(app: App) -> None:
    """Credit the ledger with what tracking measured so far (a `pending` entry per mailing
    whose measured value changed). Run it as often as you like: nothing changes twice.

    \b
    Example:
      jvmail credit && jvmail ledger
    """
    stored = drain(make_sessionmaker(app.engine()))  # the events servers have not stored yet
    with app.session() as session:
        posted = credit_measured(session)
        session.commit()
    if stored.events:
        app.out.print(f"{stored.events} webhook event(s) stored from the inbox")
    app.out.print(f"{posted} mailing(s) credited with their measured value")


@cli.command()
@click.argument("partner")
@click.argument("emails", nargs=-1, required=True)
@click.option(
    "--reason",
    type=click.Choice([r.value for r in SuppressionReason]),
    default=SuppressionReason.UNSUBSCRIBED.value,
    show_default=True,
)
@_JSON
@pass_app
def suppress(app: App, partner: str, emails: tuple[str, ...], reason: str, as_json: bool) -> None:
    """Stop mailing addresses from PARTNER's lists, for good (a re-import never undoes it).

    This is the path for unsubscribe requests that arrive by email: the List-Unsubscribe
    mailto address of each message is the sending partner's contact address.

    \b
    Example:
      jvmail suppress acme-coaching reader@example.com
    """
    addresses = []
    for raw in emails:
        try:
            addresses.append(validate_email(raw, check_deliverability=False).normalized.lower())
        except EmailNotValidError as exc:
            raise UsageError(
                f"{raw!r} is not an email address: {exc}", "check the address"
            ) from exc
    with app.session() as session:
        owner = session.scalar(select(Partner.id).where(Partner.slug == partner))
        if owner is None:
            raise UsageError(f"no partner {partner!r}", "`jvmail partners` lists their ids")
        rows = [
            {
                "email": email,
                "new": suppress_address(
                    session, owner, email, SuppressionReason(reason), source="manual"
                ),
            }
            for email in addresses
        ]
        session.commit()
    if as_json:
        print_json(app.out, rows)
        return
    print_table(app.out, f"Suppressed for {partner} ({reason})", rows, ["email", "new"])


@cli.command("rotate-link-key")
@pass_app
def rotate_link_key(app: App) -> None:
    """Sign new tracking links with a new key. Links already sent keep working while their key
    is among the newest three; `jvmail serve` picks the new key up within a minute.

    \b
    Example:
      jvmail rotate-link-key
    """
    with app.session() as session:
        hub = session.get(HubRecord, 1)
        if hub is None:
            raise UsageError("the hub has no settings yet", "run `jvmail sync CONFIG_DIR` first")
        hub.link_keys = [secrets.token_hex(32), *hub.link_keys][:KEYS_KEPT]
        hub.updated_at = dt.datetime.now(dt.UTC)  # workers render new messages with it
        session.commit()
        kept = len(hub.link_keys)
    app.out.print(f"new link key in use; {kept} key(s) verify links")


@cli.command("reconcile")
@click.option(
    "--outbox",
    type=click.Path(file_okay=False, path_type=Path),
    help="The outbox folder the mailings went to: its journal settles what it holds.",
)
@click.option(
    "--give-up-days",
    type=click.IntRange(1, 60),
    default=GIVE_UP.days,
    show_default=True,
    help="Unknown deliveries older than this, with no provider event, become dead.",
)
@_JSON
@pass_app
def reconcile_command(app: App, outbox: Path | None, give_up_days: int, as_json: bool) -> None:
    """Settle deliveries left `unknown` by an interrupted send: from provider events, or the
    outbox journal; never by resending blindly. The provider events a server accepted and has
    not stored yet (its webhook inbox) are stored first. Workers do both on every tick too.

    \b
    Example:
      jvmail reconcile --json
    """
    stored = drain(make_sessionmaker(app.engine()))
    with app.session() as session:
        done = reconcile(
            session,
            dt.datetime.now(dt.UTC),
            outbox=outbox,
            give_up=dt.timedelta(days=give_up_days),
        )
        session.commit()
    figures = {"inbox_events_stored": stored.events, **asdict(done)}
    if as_json:
        print_json(app.out, figures)
        return
    print_table(app.out, "Unknown deliveries settled", [figures], list(figures))


def demo_readers(app: App, outbox: Path, step: int) -> None:
    """The demo's readers click and unsubscribe over HTTP; the ledger is credited with it."""
    from rich.progress import Progress

    from jvmail.tracking.readers import local_server, simulate_readers

    app.out.print(
        f"[bold]{step}. Readers[/] open their mail and click, through the tracking server"
    )
    url = app.database_url or DEFAULT_DATABASE_URL
    with app.session() as session:
        hub = session.get(HubRecord, 1)
        assert hub is not None, "the demo has synced its hub"
        base = hub.base_url
    with (
        local_server(url, base) as server,
        app.session() as session,
        Progress(console=app.err, transient=True) as bar,
    ):
        task = bar.add_task("readers", total=None)
        readers = simulate_readers(
            session,
            outbox,
            server,
            base,
            progress=lambda n, total: bar.update(task, completed=n, total=total),
        )
    with app.session() as session:
        credited = credit_measured(session)
        session.commit()
    app.out.print(
        f"{readers.clicks:,} clicks and {readers.unsubscribes:,} one-click unsubscribes over "
        f"HTTP to {server}; {credited} mailing(s) credited with their unique human clicks."
    )


@cli.command("review-links")
@click.option("--partner", metavar="ID", help="Only the mailings onto this partner's lists.")
@_JSON
@pass_app
def review_links(app: App, partner: str | None, as_json: bool) -> None:
    """Signed links that let a partner approve or decline, in a browser, each mailing awaiting
    its approval (served by `jvmail serve`; opening one decides nothing, its buttons do).

    \b
    Example:
      jvmail review-links --partner pixel-and-pine
    """
    with app.session() as session:
        hub = session.get(HubRecord, 1)
        if hub is None:
            raise UsageError("the hub has no settings yet", "run `jvmail sync CONFIG_DIR` first")
        keys = Keyring.from_hex(hub.link_keys)
        rows = [
            {
                "id": r.id,
                "sender": r.sender,
                "send_time": r.send_time,
                "promotion": r.promotion,
                "url": review_url(hub.base_url, keys, r.id),
            }
            for r in rows_of(
                session,
                [session.get_one(Mailing, i) for i in awaiting_approval(session, sender=partner)],
            )
        ]
    if as_json:
        print_json(app.out, rows)
        return
    if not rows:
        app.out.print("No mailing is awaiting approval.")
        return
    print_table(app.out, "Awaiting approval", rows, ["id", "sender", "send_time", "url"])
