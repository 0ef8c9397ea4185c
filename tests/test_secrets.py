"""Provider secrets at rest: the encrypted store, its binding to the partner, key rotation, the
fallback from the environment (sending and webhooks), and `jvmail secrets`; on SQLite and
PostgreSQL."""

from __future__ import annotations

import base64
import datetime as dt
import io
import json
from pathlib import Path

import pytest
from sqlalchemy import Engine, select, update
from sqlalchemy.orm import Session

from jvmail.cli import main
from jvmail.db import make_sessionmaker
from jvmail.db.models import Partner, PartnerSecret
from jvmail.providers.base import ProviderError
from jvmail.providers.factory import build_provider
from jvmail.providers.postmark import PostmarkProvider
from jvmail.providers.sendgrid import SendGridProvider
from jvmail.secrets import KEYS_ENV, Keys, SecretError, database_lookup, listing, lookup, put
from jvmail.secrets import rotate as rotate_keys
from jvmail.tracking import accounts
from jvmail.tracking.events import Rejected
from tests.dispatch.conftest import partner
from tests.tracking.signing import NOW, basic_auth, load_fixture

# Fixed keys, so every test process collects the same parameters.
OLD, NEW = (base64.urlsafe_b64encode(c * 32).decode() for c in (b"o", b"n"))
CANARY = "SG.canary-3f9d1c0b7e"
WHEN = dt.datetime(2026, 12, 1, 9, tzinfo=dt.UTC)
SENDGRID = {"kind": "sendgrid", "api_key_env": "ACME_SG_KEY"}


def env(*keys: str, **more: str) -> dict[str, str]:
    return {KEYS_ENV: ",".join(keys), **more}


@pytest.fixture
def acme(session: Session) -> Partner:
    row = partner(session, "acme")
    row.provider_kind, row.provider = "sendgrid", dict(SENDGRID)
    partner(session, "beta")
    session.commit()
    return row


def _stored(session: Session, slug: str, name: str = "ACME_SG_KEY") -> PartnerSecret:
    return session.scalars(
        select(PartnerSecret)
        .join(Partner, Partner.id == PartnerSecret.partner_id)
        .where(Partner.slug == slug, PartnerSecret.name == name)
    ).one()


def _value(session: Session, keys: dict[str, str], slug: str = "acme") -> str | None:
    row = session.scalars(select(Partner).where(Partner.slug == slug)).one()
    return lookup(session, keys, row.id, slug, "ACME_SG_KEY")


# The store ---------------------------------------------------------------------------------


def test_a_value_is_stored_encrypted_and_read_back(session: Session, acme: Partner) -> None:
    assert put(session, Keys.from_env(env(OLD)), acme, "ACME_SG_KEY", CANARY + "\n", now=WHEN)
    session.commit()
    token = _stored(session, "acme").token
    assert CANARY not in token
    assert _value(session, env(OLD)) == CANARY  # the newline of `echo` is dropped
    assert _value(session, env(OLD), "beta") is None
    [row] = listing(session)
    assert (row["partner"], row["name"], row["rotated"]) == ("acme", "ACME_SG_KEY", None)
    assert CANARY not in repr(row)
    # Setting it again replaces the value.
    assert not put(session, Keys.from_env(env(OLD)), acme, "ACME_SG_KEY", "SG.second", now=WHEN)
    assert _value(session, env(OLD)) == "SG.second"


def test_a_token_moved_to_another_partners_row_is_refused(session: Session, acme: Partner) -> None:
    keys = Keys.from_env(env(OLD))
    beta = session.scalars(select(Partner).where(Partner.slug == "beta")).one()
    put(session, keys, acme, "ACME_SG_KEY", CANARY, now=WHEN)
    put(session, keys, beta, "ACME_SG_KEY", "SG.beta", now=WHEN)
    put(session, keys, acme, "ACME_OTHER_KEY", "SG.other", now=WHEN)
    session.commit()
    stolen = _stored(session, "acme").token
    session.execute(
        update(PartnerSecret)
        .where(PartnerSecret.partner_id == beta.id)
        .values(token=stolen)  # one partner's key copied into another's row
    )
    session.execute(
        update(PartnerSecret).where(PartnerSecret.name == "ACME_OTHER_KEY").values(token=stolen)
    )
    session.commit()
    with pytest.raises(SecretError, match=r"partner beta's secret ACME_SG_KEY .* another") as beta_:
        _value(session, env(OLD), "beta")
    with pytest.raises(SecretError, match="partner acme's secret ACME_OTHER_KEY"):
        lookup(session, env(OLD), acme.id, "acme", "ACME_OTHER_KEY")
    assert CANARY not in f"{beta_.value.message} {beta_.value.fix}"
    assert _value(session, env(OLD)) == CANARY  # the row it was sealed for still reads


def test_no_key_a_malformed_key_or_the_wrong_key_is_a_clear_error(
    session: Session, acme: Partner
) -> None:
    with pytest.raises(SecretError, match=f"{KEYS_ENV} is not set"):
        Keys.from_env({})
    with pytest.raises(SecretError, match=f"key 2 of 2 in {KEYS_ENV} is not a Fernet key"):
        Keys.from_env(env(OLD, "not-a-key"))
    put(session, Keys.from_env(env(OLD)), acme, "ACME_SG_KEY", CANARY, now=WHEN)
    session.commit()
    with pytest.raises(SecretError, match="acme's secret ACME_SG_KEY cannot be decrypted") as bad:
        _value(session, env(NEW))
    assert CANARY not in f"{bad.value.message} {bad.value.fix}"
    with pytest.raises(SecretError, match=f"{KEYS_ENV} is not set"):
        _value(session, {})
    with pytest.raises(SecretError, match="not an environment variable name"):
        put(session, Keys.from_env(env(OLD)), acme, "acme key", CANARY, now=WHEN)
    with pytest.raises(SecretError, match="is empty"):
        put(session, Keys.from_env(env(OLD)), acme, "ACME_SG_KEY", " \n", now=WHEN)


def test_rotation_moves_every_token_to_the_first_key(session: Session, acme: Partner) -> None:
    beta = session.scalars(select(Partner).where(Partner.slug == "beta")).one()
    put(session, Keys.from_env(env(OLD)), acme, "ACME_SG_KEY", CANARY, now=WHEN)
    put(session, Keys.from_env(env(OLD)), beta, "ACME_SG_KEY", "SG.beta", now=WHEN)
    session.commit()
    with pytest.raises(SecretError, match="cannot be decrypted"):  # the old key dropped too soon
        _value(session, env(NEW))
    later = WHEN + dt.timedelta(days=1)
    assert rotate_keys(session, Keys.from_env(env(NEW, OLD)), later) == (2, 0)
    session.commit()
    assert _value(session, env(NEW)) == CANARY
    assert _value(session, env(NEW), "beta") == "SG.beta"
    assert {r["rotated"].replace(tzinfo=dt.UTC) for r in listing(session)} == {later}
    before = [r.token for r in session.scalars(select(PartnerSecret))]
    assert rotate_keys(session, Keys.from_env(env(NEW, OLD)), later) == (0, 2)  # idempotent
    assert [r.token for r in session.scalars(select(PartnerSecret))] == before


def test_rotation_stops_at_a_token_it_cannot_open(session: Session, acme: Partner) -> None:
    put(session, Keys.from_env(env(OLD)), acme, "ACME_SG_KEY", CANARY, now=WHEN)
    session.commit()
    with pytest.raises(SecretError, match="acme's secret ACME_SG_KEY cannot be decrypted"):
        rotate_keys(session, Keys.from_env(env(NEW)), WHEN)
    session.rollback()
    assert _value(session, env(OLD)) == CANARY


# Where secrets are read: the factory and the webhooks ---------------------------------------


def test_the_factory_reads_the_environment_first_then_the_store(
    session: Session, acme: Partner, db_url: str
) -> None:
    put(session, Keys.from_env(env(OLD)), acme, "ACME_SG_KEY", CANARY, now=WHEN)
    session.commit()
    where = env(OLD, JVMAIL_DATABASE_URL=db_url)
    provider = build_provider("acme", "t@acme.example", SENDGRID, env=where)
    assert isinstance(provider, SendGridProvider)
    assert provider.api_key == CANARY
    exported = build_provider("acme", "t@acme.example", SENDGRID, env=where | {"ACME_SG_KEY": "e"})
    assert isinstance(exported, SendGridProvider)
    assert exported.api_key == "e"
    with pytest.raises(ProviderError) as neither:
        build_provider("beta", "t@beta.example", SENDGRID, env=where)
    assert "partner beta: environment variable ACME_SG_KEY" in neither.value.message
    assert "jvmail secrets set beta ACME_SG_KEY" in neither.value.fix
    with pytest.raises(ProviderError, match="acme's secret ACME_SG_KEY cannot be decrypted") as e:
        build_provider("acme", "t@acme.example", SENDGRID, env=where | {KEYS_ENV: NEW})
    assert not e.value.transient


def test_a_database_that_does_not_exist_holds_no_secret(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'none.db'}"
    assert database_lookup(env(OLD, JVMAIL_DATABASE_URL=url))("acme", "ACME_SG_KEY") is None
    assert not (tmp_path / "none.db").exists()
    account = {"kind": "postmark", "server_token_env": "PM_TOKEN"}
    with pytest.raises(ProviderError, match="PM_TOKEN"):
        build_provider("acme", "t@acme.example", account, env={"JVMAIL_DATABASE_URL": url})
    stored = build_provider(
        "acme", "t@a.example", account, env={}, store=lambda slug, name: f"{slug}:{name}"
    )
    assert isinstance(stored, PostmarkProvider)
    assert stored.token == "acme:PM_TOKEN"


def test_webhook_keys_fall_back_to_the_store(engine: Engine, session: Session) -> None:
    row = partner(session, "acme")
    row.provider_kind = "postmark"
    row.provider = {
        "kind": "postmark",
        "server_token_env": "ACME_PM_TOKEN",
        "webhook_username": "jvmail",
        "webhook_password_env": "ACME_PM_HOOK",
    }
    put(session, Keys.from_env(env(OLD)), row, "ACME_PM_HOOK", "hook-pw", now=WHEN)
    session.commit()
    account = accounts.load(make_sessionmaker(engine), "acme")
    assert account is not None
    body = json.dumps(load_fixture("postmark", "Delivery.json")).encode()
    policy = accounts.SnsPolicy()
    good = accounts.verify(
        account, basic_auth("jvmail", "hook-pw"), body, env(OLD), policy, now=NOW
    )
    assert good.events
    with pytest.raises(Rejected):
        accounts.verify(account, basic_auth("jvmail", "other"), body, env(OLD), policy, now=NOW)
    with pytest.raises(Rejected, match="cannot be decrypted") as refused:
        accounts.verify(account, basic_auth("jvmail", "hook-pw"), body, env(NEW), policy, now=NOW)
    assert refused.value.status == 403
    exported = env(NEW, ACME_PM_HOOK="from-env")  # the environment first: the store is not read
    accounts.verify(account, basic_auth("jvmail", "from-env"), body, exported, policy, now=NOW)


# `jvmail secrets` ------------------------------------------------------------------------------


@pytest.fixture
def cli_db(acme: Partner, db_url: str, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv(KEYS_ENV, OLD)
    monkeypatch.delenv("JVMAIL_DATABASE_URL", raising=False)
    return db_url


def run(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    *args: str,
    stdin: str = "",
) -> tuple[int, str, str]:
    monkeypatch.setattr("sys.stdin", io.StringIO(stdin))
    try:
        main(list(args))
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    assert CANARY not in out + err, "a secret value was printed"
    return code, out, err


def _tokens(session: Session) -> list[str]:
    session.rollback()  # a fresh snapshot
    return [r.token for r in session.scalars(select(PartnerSecret).order_by(PartnerSecret.id))]


def test_set_list_rotate_and_delete(
    cli_db: str,
    session: Session,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    db = ("--db", cli_db, "secrets")
    code, out, _ = run(capsys, monkeypatch, *db, "set", "acme", "ACME_SG_KEY", stdin=CANARY)
    assert (code, out.strip()) == (0, "stored partner acme's secret ACME_SG_KEY")
    code, _, err = run(capsys, monkeypatch, *db, "set", "beta", "BETA_KEY", stdin="SG.b\n")
    assert code == 0
    assert "names no BETA_KEY" in err  # beta's [provider] does not name it (yet)
    session.rollback()
    assert _value(session, env(OLD)) == CANARY
    code, out, _ = run(capsys, monkeypatch, *db, "list", "--json")
    listed = json.loads(out)
    assert [(r["partner"], r["name"], r["rotated"]) for r in listed] == [
        ("acme", "ACME_SG_KEY", ""),
        ("beta", "BETA_KEY", ""),
    ]
    assert set(listed[0]) == {"partner", "name", "created", "rotated"}
    monkeypatch.setenv(KEYS_ENV, f"{NEW},{OLD}")
    code, out, _ = run(capsys, monkeypatch, *db, "rotate")
    assert (code, out.strip()) == (
        0,
        "2 secret(s) re-encrypted under the first key; 0 already were",
    )
    code, out, _ = run(capsys, monkeypatch, *db, "rotate")
    assert out.strip() == "0 secret(s) re-encrypted under the first key; 2 already were"
    session.rollback()  # a fresh snapshot
    assert _value(session, env(NEW)) == CANARY  # the old key is no longer needed
    code, out, _ = run(capsys, monkeypatch, *db, "list")
    assert "ACME_SG_KEY" in out
    code, out, _ = run(capsys, monkeypatch, *db, "delete", "beta", "BETA_KEY")
    assert (code, out.strip()) == (0, "deleted partner beta's secret BETA_KEY")
    code, _, err = run(capsys, monkeypatch, *db, "delete", "beta", "BETA_KEY")
    assert code == 2
    assert "partner beta has no secret BETA_KEY in the store" in err
    assert len(_tokens(session)) == 1


@pytest.mark.parametrize(
    ("keys", "args", "says"),
    [
        ("", ("set", "acme", "ACME_SG_KEY"), f"{KEYS_ENV} is not set"),
        (f"{OLD},short", ("set", "acme", "ACME_SG_KEY"), f"key 2 of 2 in {KEYS_ENV} is not a"),
        (OLD, ("set", "nobody", "ACME_SG_KEY"), "no partner 'nobody' in the registry"),
        (OLD, ("set", "acme", "acme-key"), "'acme-key' is not an environment variable name"),
        (OLD, ("set", "acme", "ACME_SG_KEY", CANARY), "never taken from the command line"),
        (NEW, ("rotate",), "partner acme's secret ACME_SG_KEY cannot be decrypted"),
        ("", ("rotate",), f"{KEYS_ENV} is not set"),
        (OLD, ("delete", "nobody", "ACME_SG_KEY"), "no partner 'nobody'"),
    ],
)
def test_bad_input_is_a_clear_error_and_changes_nothing(  # noqa: PLR0917 - the matrix
    cli_db: str,
    session: Session,
    acme: Partner,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    keys: str,
    args: tuple[str, ...],
    says: str,
) -> None:
    put(session, Keys.from_env(env(OLD)), acme, "ACME_SG_KEY", "v", now=WHEN)
    session.commit()
    before = _tokens(session)
    monkeypatch.setenv(KEYS_ENV, keys)
    code, _, err = run(capsys, monkeypatch, "--db", cli_db, "secrets", *args, stdin=CANARY)
    assert code == 2
    assert says in " ".join(err.split())
    assert _tokens(session) == before


def test_help_shows_examples(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    code, out, _ = run(capsys, monkeypatch, "secrets", "--help")
    assert code == 0
    assert "jvmail secrets set acme ACME_SENDGRID_KEY" in out
    assert "rotate" in out
    code, out, _ = run(capsys, monkeypatch, "secrets", "set", "--help")
    assert "printf %s" in out
