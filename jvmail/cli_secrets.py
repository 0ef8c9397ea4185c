"""`jvmail secrets`: partners' provider secrets stored in the database, encrypted and bound to
their partner (see :mod:`jvmail.secrets`). Values are read from stdin or a hidden prompt, never
from the command line, and never printed."""

from __future__ import annotations

import datetime as dt
import os
import sys
from typing import Any

import click
from rich.progress import Progress
from sqlalchemy import select
from sqlalchemy.orm import Session

from jvmail import secrets as store
from jvmail.cli import _JSON, App, cli, pass_app
from jvmail.console import print_json, print_table
from jvmail.db.engine import begin_writing
from jvmail.db.models import Partner
from jvmail.errors import UsageError

_PARTNER = click.argument("partner", metavar="PARTNER")
_NAME = click.argument("name", metavar="NAME")


@cli.group("secrets")
def secrets_group() -> None:
    """Provider secrets kept in the database, encrypted under the keys in JVMAIL_SECRET_KEYS.

    A partner's provider table names environment variables for its secrets (api_key_env =
    "ACME_SENDGRID_KEY"). Where such a variable is not set on a worker, the secret stored under
    that name for that partner is used instead. JVMAIL_SECRET_KEYS holds comma-separated Fernet
    keys: the first encrypts, all decrypt; every machine that sends needs them.

    \b
    Examples:
      export JVMAIL_SECRET_KEYS=$(python -c 'from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())')
      printf %s "$KEY" | jvmail secrets set acme ACME_SENDGRID_KEY
      jvmail secrets list
      JVMAIL_SECRET_KEYS=NEW,OLD jvmail secrets rotate     # then drop OLD everywhere
      jvmail secrets delete acme ACME_SENDGRID_KEY
    """  # noqa: E501 - an example line to copy whole


def _partner(session: Session, slug: str) -> Partner:
    partner = session.scalars(select(Partner).where(Partner.slug == slug)).first()
    if partner is None:
        known = session.scalars(select(Partner.slug).order_by(Partner.slug)).all()
        raise UsageError(
            f"no partner {slug!r} in the registry",
            f"use one of: {', '.join(known)}" if known else "run `jvmail sync CONFIG_DIR` first",
        )
    return partner


def _read_value(name: str) -> str:
    """The value: piped in on stdin, else typed at a hidden prompt (twice)."""
    if sys.stdin.isatty():
        value: str = click.prompt(
            f"value of {name}", hide_input=True, confirmation_prompt=True, err=True
        )
        return value
    return sys.stdin.read()


@secrets_group.command("set")
@_PARTNER
@_NAME
@click.argument("argv_value", nargs=-1, metavar="")
@pass_app
def set_(app: App, partner: str, name: str, argv_value: tuple[str, ...]) -> None:
    """Store PARTNER's secret NAME (the environment variable its provider table names),
    replacing any value stored before.

    The value is read from stdin when it is piped in, else from a hidden prompt; never from
    the command line, where it would stay in the shell's history and the process list.

    \b
    Examples:
      printf %s "$SENDGRID_KEY" | jvmail secrets set acme ACME_SENDGRID_KEY
      jvmail secrets set acme ACME_SENDGRID_KEY          # asks for it, without echo
    """
    if argv_value:  # refused without echoing it back
        raise UsageError(
            "the value is never taken from the command line (the shell's history keeps it)",
            f'pipe it in: printf %s "$VALUE" | jvmail secrets set {partner} {name}',
        )
    keys = store.Keys.from_env(os.environ)
    store.check_name(name)
    with app.session() as session:
        account = _partner(session, partner).provider
    named = {str(v) for k, v in account.items() if k.endswith("_env")}
    value = _read_value(name)
    with app.session() as session:
        begin_writing(session)  # after the prompt: SQLite's write lock is not held while typing
        new = store.put(session, keys, _partner(session, partner), name, value, now=_now())
        session.commit()
    app.out.print(f"{'stored' if new else 'replaced'} partner {partner}'s secret {name}")
    if name not in named:
        app.err.print(
            f"note: partner {partner}'s provider table names no {name}: the secret is used "
            "once it does (`jvmail sync CONFIG_DIR`)",
            markup=False,
        )


def _when(value: dt.datetime | None) -> str:
    return value.isoformat(sep=" ", timespec="seconds") if value else ""


@secrets_group.command("list")
@_JSON
@pass_app
def list_(app: App, as_json: bool) -> None:
    """List the stored secrets: partner, name, when set and when last re-encrypted. Never the
    values, which no command prints.

    \b
    Example:
      jvmail secrets list --json
    """
    with app.session() as session:
        rows: list[dict[str, Any]] = [
            r | {"created": _when(r["created"]), "rotated": _when(r["rotated"])}
            for r in store.listing(session)
        ]
    if as_json:
        print_json(app.out, rows)
    elif not rows:
        app.out.print("No stored secrets: `jvmail secrets set PARTNER NAME` stores one.")
    else:
        print_table(app.out, "Stored secrets", rows, ["partner", "name", "created", "rotated"])


@secrets_group.command("delete")
@_PARTNER
@_NAME
@pass_app
def delete(app: App, partner: str, name: str) -> None:
    """Remove PARTNER's stored secret NAME. Workers that built the account keep the value
    until they restart; others then need the environment variable.

    \b
    Example:
      jvmail secrets delete acme ACME_SENDGRID_KEY
    """
    with app.session() as session:
        begin_writing(session)
        if not store.delete(session, _partner(session, partner), name):
            raise UsageError(
                f"partner {partner} has no secret {name} in the store",
                "see what is stored: jvmail secrets list",
            )
        session.commit()
    app.out.print(f"deleted partner {partner}'s secret {name}")


@secrets_group.command("rotate")
@pass_app
def rotate(app: App) -> None:
    """Re-encrypt every stored secret under the first key of JVMAIL_SECRET_KEYS.

    Put the new key first and keep the old ones after it, run this once, then drop the old
    keys everywhere. Secrets already under the first key are left as they are, so running it
    again changes nothing. A secret no key opens stops it, having changed nothing.

    \b
    Example:
      JVMAIL_SECRET_KEYS=NEW,OLD jvmail secrets rotate
    """
    keys = store.Keys.from_env(os.environ)
    with app.session() as session, Progress(console=app.err, transient=True) as bar:
        task = bar.add_task("re-encrypting", total=None)

        def tick(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        begin_writing(session)
        changed, current = store.rotate(session, keys, _now(), tick)
        session.commit()
    app.out.print(f"{changed} secret(s) re-encrypted under the first key; {current} already were")


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)
