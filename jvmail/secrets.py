"""Provider secrets at rest: the ``partner_secret`` table, encrypted and bound to their partner.

A partner's `[provider]` names environment variables for its secrets (``api_key_env = "ACME_SG"``).
Where the variable is not set, the secret may instead be stored in the database under the same
name (`jvmail secrets set acme ACME_SG`); the environment always wins, so a deployment that
exports its secrets never reads the store.

Stored values are Fernet tokens under the master keys in ``JVMAIL_SECRET_KEYS`` (comma-separated
Fernet keys: the first encrypts, all decrypt; `jvmail secrets rotate` re-encrypts every token
under the first, after which the others can be dropped). What is encrypted is a small JSON
document naming the partner (id and slug) and the secret's name beside the value, and reading
checks them against the row asked for: a token copied to another partner's row, or to another
name, is refused.

No value is ever logged, printed or put in an error: errors name the partner and the secret.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from sqlalchemy import inspect, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session
from sqlalchemy.pool import NullPool

from jvmail.config.models import ENV_NAME_PATTERN
from jvmail.db import DEFAULT_DATABASE_URL, make_engine
from jvmail.db.engine import normalize_url
from jvmail.db.models import Partner, PartnerSecret
from jvmail.errors import JvmailError

__all__ = [
    "KEYS_ENV",
    "Keys",
    "Lookup",
    "SecretError",
    "check_name",
    "database_lookup",
    "delete",
    "listing",
    "lookup",
    "put",
    "rotate",
]

KEYS_ENV = "JVMAIL_SECRET_KEYS"
NEW_KEY = (
    "python -c 'from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())'"
)

Lookup = Callable[[str, str], str | None]  # (partner slug, secret name) -> value, None if unset


class SecretError(JvmailError):
    """A stored secret cannot be written or read: no or bad master keys, a token that no key
    decrypts, or one bound to another partner or name. Names the secret, never its value."""

    exit_code = 2


@dataclass(frozen=True)
class Keys:
    """The master keys: ``primary`` (the first) encrypts, ``all`` decrypt."""

    primary: Fernet
    all: MultiFernet

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Keys:
        """The keys in ``env``'s ``JVMAIL_SECRET_KEYS``.

        Raises:
            SecretError: it is not set, or one of its keys is not a Fernet key (by position).
        """
        parts = [p.strip() for p in env.get(KEYS_ENV, "").split(",") if p.strip()]
        if not parts:
            raise SecretError(
                f"{KEYS_ENV} is not set: provider secrets in the database need its master keys",
                f"export {KEYS_ENV}=KEY on every machine (a new key: {NEW_KEY})",
            )
        keys: list[Fernet] = []
        for n, part in enumerate(parts, start=1):
            try:
                keys.append(Fernet(part))
            except ValueError as exc:  # the message never quotes the key
                raise SecretError(
                    f"key {n} of {len(parts)} in {KEYS_ENV} is not a Fernet key "
                    "(32 url-safe base64-encoded bytes)",
                    f"correct or remove it in {KEYS_ENV} (a new key: {NEW_KEY})",
                ) from exc
        return cls(keys[0], MultiFernet(keys))


def _document(partner: Partner, name: str, value: str) -> bytes:
    doc = {"partner_id": partner.id, "partner": partner.slug, "name": name, "value": value}
    return json.dumps(doc, sort_keys=True).encode()


def _open(keys: Keys, partner_id: int, slug: str, name: str, token: str) -> str:
    """The value sealed in ``token``, once it is shown to belong to (partner, name)."""
    fix = f"set it again: `jvmail secrets set {slug} {name}` (the value on stdin)"
    try:
        doc: Any = json.loads(keys.all.decrypt(token.encode("ascii")))
    except InvalidToken:
        raise SecretError(
            f"partner {slug}'s secret {name} cannot be decrypted with any key in {KEYS_ENV}",
            f"add the key it was encrypted with to {KEYS_ENV} (after the new one), or {fix}",
        ) from None
    except (ValueError, UnicodeError):
        doc = None
    if not isinstance(doc, dict) or not isinstance(doc.get("value"), str):
        doc = {}
    if (doc.get("partner_id"), doc.get("partner"), doc.get("name")) != (partner_id, slug, name):
        raise SecretError(
            f"partner {slug}'s secret {name} holds a token sealed for another partner or "
            "secret: refused",
            f"a token cannot be copied between rows; {fix}",
        )
    return str(doc["value"])


def check_name(name: str) -> None:
    """Raises :class:`SecretError` unless ``name`` can be an environment variable's name."""
    if not re.fullmatch(ENV_NAME_PATTERN, name) or len(name) > 128:
        raise SecretError(
            f"{name!r} is not an environment variable name (A-Z, 0-9 and _, from a letter)",
            "give the name its provider table names, e.g. ACME_SENDGRID_KEY",
        )


def _row(session: Session, partner_id: int, name: str) -> PartnerSecret | None:
    return session.scalars(
        select(PartnerSecret).where(
            PartnerSecret.partner_id == partner_id, PartnerSecret.name == name
        )
    ).first()


def put(
    session: Session, keys: Keys, partner: Partner, name: str, value: str, *, now: dt.datetime
) -> bool:
    """Store ``value`` as ``partner``'s secret ``name`` (replacing any); True if it is new.
    Surrounding whitespace (the newline of `echo`) is dropped. Does not commit: the caller
    begins the transaction with :func:`jvmail.db.engine.begin_writing`.

    Raises:
        SecretError: the name is not an environment variable name, or the value is empty.
    """
    check_name(name)
    value = value.strip()
    if not value:
        raise SecretError(
            f"the value given for partner {partner.slug}'s secret {name} is empty",
            'pipe the value in: printf %s "$VALUE" | jvmail secrets set PARTNER NAME',
        )
    token = keys.primary.encrypt(_document(partner, name, value)).decode("ascii")
    row = _row(session, partner.id, name)
    if row is None:
        session.add(PartnerSecret(partner_id=partner.id, name=name, token=token, created_at=now))
        session.flush()
        return True
    row.token, row.created_at, row.rotated_at = token, now, None
    session.flush()
    return False


def delete(session: Session, partner: Partner, name: str) -> bool:
    """Remove ``partner``'s secret ``name``; False if there was none. Does not commit."""
    row = _row(session, partner.id, name)
    if row is None:
        return False
    session.delete(row)
    session.flush()
    return True


def listing(session: Session) -> list[dict[str, Any]]:
    """Every stored secret: partner, name, created and rotated; never a value or a token."""
    rows = session.execute(
        select(Partner.slug, PartnerSecret.name, PartnerSecret.created_at, PartnerSecret.rotated_at)
        .join(Partner, Partner.id == PartnerSecret.partner_id)
        .order_by(Partner.slug, PartnerSecret.name)
    )
    return [
        {"partner": slug, "name": name, "created": created, "rotated": rotated}
        for slug, name, created, rotated in rows
    ]


def lookup(
    session: Session, env: Mapping[str, str], partner_id: int, slug: str, name: str
) -> str | None:
    """The stored value of the partner's secret ``name``, or None if none is stored (the master
    keys are needed only when one is).

    Raises:
        SecretError: the keys are missing or bad, or the token is not this row's.
    """
    row = _row(session, partner_id, name)
    if row is None:
        return None
    return _open(Keys.from_env(env), partner_id, slug, name, row.token)


def rotate(
    session: Session,
    keys: Keys,
    now: dt.datetime,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[int, int]:
    """Re-encrypt every token not yet under the primary key; (re-encrypted, already current).
    Each token is opened (and its binding checked) first, so a run that meets one it cannot
    open raises having changed nothing, once the caller rolls back. ``progress`` is told
    (done, total) after each row. A second run re-encrypts nothing. Does not commit: the
    caller begins the transaction with :func:`jvmail.db.engine.begin_writing`.

    Raises:
        SecretError: a token that no key opens, or one bound to another partner or name.
    """
    rows = session.execute(
        select(PartnerSecret, Partner.slug)
        .join(Partner, Partner.id == PartnerSecret.partner_id)
        .order_by(PartnerSecret.id)
        .with_for_update(of=PartnerSecret)
    ).all()
    changed = 0
    for done, (row, slug) in enumerate(rows, start=1):
        _open(keys, row.partner_id, slug, row.name, row.token)
        try:
            keys.primary.decrypt(row.token.encode("ascii"))
        except InvalidToken:
            row.token = keys.all.rotate(row.token.encode("ascii")).decode("ascii")
            row.rotated_at = now
            changed += 1
        if progress is not None:
            progress(done, len(rows))
    session.flush()
    return changed, len(rows) - changed


def database_lookup(env: Mapping[str, str]) -> Lookup:
    """The store in the database ``env``'s ``JVMAIL_DATABASE_URL`` names (the default when
    unset), as workers find it; opened for each lookup, which a worker makes once per account
    it builds. A SQLite file that does not exist, or a database not yet migrated, holds none.

    Raises (from the lookup):
        SecretError: the database cannot be read, or as :func:`lookup`.
    """
    url = env.get("JVMAIL_DATABASE_URL") or DEFAULT_DATABASE_URL

    def find(slug: str, name: str) -> str | None:
        parsed = normalize_url(url)
        if parsed.get_backend_name() == "sqlite":
            path = parsed.database or ""
            if path in ("", ":memory:") or not Path(path).expanduser().exists():
                return None
        engine = make_engine(url, poolclass=NullPool)
        try:
            with Session(engine) as session:
                if not inspect(session.connection()).has_table(PartnerSecret.__tablename__):
                    return None
                partner_id = session.scalar(select(Partner.id).where(Partner.slug == slug))
                if partner_id is None:
                    return None
                return lookup(session, env, partner_id, slug, name)
        except SQLAlchemyError as exc:
            raise SecretError(
                f"the secret store at {engine.url.render_as_string()} cannot be read "
                f"({exc.__class__.__name__}) for partner {slug}'s secret {name}",
                "check JVMAIL_DATABASE_URL and that the database is reachable",
            ) from exc
        finally:
            engine.dispose()

    return find
