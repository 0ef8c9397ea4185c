"""Send the week's statements through the hub's own account, each (partner, week) once.

A statement is claimed before any provider call: a ``statement_send`` row for (partner, week,
copy) is inserted as ``sending`` and committed, and only the process whose insert went in sends
it. Then the outcome is recorded on the row:

- ``sent``: the provider took it; its id for the message is kept;
- ``failed``: refused for good, with the reason; sent again only by ``resend``;
- ``retry``: refused for now (429 or 5xx, no connection, the account's credentials refused):
  the next run takes it again by moving the row from ``retry`` back to ``sending``, which only
  one run can do, so it is never in two sends at once;
- ``unknown``: the request may have reached the provider (no answer after sending): never sent
  again automatically; ``resend`` is the deliberate way.

A process that dies between claim and record leaves its row ``sending``; once that is older than
:data:`LEASE` (far longer than any one request takes) the next run marks it ``unknown``, not
resent. ``resend`` adds a new copy on purpose, whatever became of the earlier ones.

The message is the rendered statement (text, and HTML with its charts inline by Content-ID) to
the partner's contact address, from the hub's account (``[hub.provider]``; its ``from_email``,
else ``statements@`` the hub's domain). It carries the row's id as the ``jv_statement``
metadata: a number, so no partner identity sits in the providers' long-kept metadata, and never
``jv_delivery``, so webhooks never take it for a subscriber's delivery.
"""

from __future__ import annotations

import datetime as dt
import email
import email.policy
import enum
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.utils import formataddr
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from sqlalchemy import func, or_, select, update
from sqlalchemy.orm import Session

from jvmail.db.engine import begin_writing, insert_or_skip
from jvmail.db.models import HubRecord, Partner, StatementSend
from jvmail.dispatch.limits import SYSTEM_CLOCK, Clock, MemoryLimiter
from jvmail.providers.base import Provider, ProviderError, SingleMessage
from jvmail.providers.factory import HUB, build_provider
from jvmail.reports.build import build_statements

if TYPE_CHECKING:
    from jvmail.reports.render import RenderedStatement

__all__ = [
    "LEASE",
    "STATEMENT_KEY",
    "Sending",
    "Status",
    "expire_sending",
    "hub_provider",
    "send_statements",
    "settled",
    "statement_letter",
    "statement_message",
    "week_label",
]

LEASE = dt.timedelta(minutes=15)  # a row `sending` this long was left by a process that died
HUB_ACCOUNT = "hub"  # the limiter key of the hub's own account
STATEMENT_KEY = "jv_statement"  # the metadata key of a statement: its statement_send id


class Status(enum.StrEnum):
    SENDING = "sending"
    SENT = "sent"
    FAILED = "failed"
    RETRY = "retry"
    UNKNOWN = "unknown"


@dataclass
class Sending:
    """What one run did: partners whose statement was sent, refused for good (with why), left
    to try again, or left in doubt; those skipped (sent or being sent already); ``stopped`` when
    the account's credentials were refused, so the rest were not tried."""

    sent: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    retry: dict[str, str] = field(default_factory=dict)
    unknown: dict[str, str] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)
    retry_after: float | None = None  # seconds the provider asked to wait, if it said
    stopped: ProviderError | None = None

    def summary(self) -> str:
        parts = [f"{len(self.sent)} statement(s) sent"]
        for what, partners in (
            ("failed", self.failed),
            ("to try again", self.retry),
            ("in doubt", self.unknown),
        ):
            if partners:
                parts.append(f"{len(partners)} {what} ({'; '.join(_reasons(partners))})")
        return ", ".join(parts)


def _reasons(partners: Mapping[str, str]) -> list[str]:
    return [f"{slug}: {why}" for slug, why in sorted(partners.items())]


def week_label(monday: dt.date) -> str:
    """``2026-W49``: the ISO week starting ``monday``."""
    year, week, _ = monday.isocalendar()
    return f"{year}-W{week:02d}"


def hub_provider(
    hub: HubRecord, *, outbox: Path | None = None, env: Mapping[str, str] = os.environ
) -> Provider:
    """The hub's own account (``[hub.provider]`` as synced), or the ``outbox`` folder instead.

    Raises:
        ProviderError: a secret's environment variable is not set (named, with the table).
    """
    return build_provider(HUB, _from_addr(hub), hub.provider, name=hub.name, outbox=outbox, env=env)


def _domain(hub: HubRecord | None) -> str:
    return (urlsplit(hub.base_url).hostname if hub else None) or "jvmail.invalid"


def _from_addr(hub: HubRecord) -> str:
    return f"statements@{_domain(hub)}"


def statement_letter(
    rendered: RenderedStatement, *, to_addr: str, row_id: int, name: str, domain: str
) -> SingleMessage:
    """The statement as one message for the provider; ``row_id`` is its ``statement_send`` id,
    ``name`` where an outbox files it."""
    return SingleMessage(
        to=to_addr,
        subject=rendered.subject,
        text=rendered.text,
        html=rendered.html,
        images=rendered.images,
        message_id=f"<statement.{row_id}@{domain}>",
        metadata=(STATEMENT_KEY, str(row_id)),
        name=name,
    )


def statement_message(
    rendered: RenderedStatement, *, hub: str, from_addr: str, to_addr: str, tag: str, domain: str
) -> EmailMessage:
    """The statement as a whole MIME message, as SMTP, SES and Mailgun carry it and an outbox
    files it (``tag`` names it), to look at."""
    letter = SingleMessage(
        to=to_addr,
        subject=rendered.subject,
        text=rendered.text,
        html=rendered.html,
        images=rendered.images,
        message_id=f"<statement.{tag.replace('/', '.')}@{domain}>",
        metadata=(STATEMENT_KEY, tag),
        name=tag,
    )
    raw = letter.mime(formataddr((hub, from_addr)))
    parsed = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(parsed, EmailMessage), "the default policy parses to EmailMessage"
    return parsed


def expire_sending(session: Session, now: dt.datetime, lease: dt.timedelta = LEASE) -> int:
    """Mark ``unknown`` the rows left ``sending`` longer than ``lease`` (their process died
    between claim and record); commits what the session had open first; how many."""
    begin_writing(session)
    gone = session.connection().execute(
        update(StatementSend)
        .where(
            StatementSend.status == Status.SENDING,
            or_(StatementSend.sent_at < now - lease, StatementSend.sent_at.is_(None)),
        )
        .values(
            status=Status.UNKNOWN,
            error="the send was interrupted: it may have gone; not resent (--resend sends it)",
        )
        .execution_options(preserve_rowcount=True)
    )
    session.commit()
    return int(gone.rowcount)


def settled(session: Session) -> set[tuple[str, str]]:
    """(partner slug, ISO week) of every statement that needs no automatic send: its latest
    copy is anything but ``retry``."""
    latest = (
        select(
            StatementSend.partner_id, StatementSend.week, func.max(StatementSend.copy).label("top")
        )
        .group_by(StatementSend.partner_id, StatementSend.week)
        .subquery()
    )
    rows = session.execute(
        select(Partner.slug, StatementSend.week)
        .join(Partner, Partner.id == StatementSend.partner_id)
        .join(
            latest,
            (latest.c.partner_id == StatementSend.partner_id)
            & (latest.c.week == StatementSend.week)
            & (latest.c.top == StatementSend.copy),
        )
        .where(StatementSend.status != Status.RETRY)
    ).all()
    return {(slug, week) for slug, week in rows}


@dataclass(frozen=True)
class _Latest:
    """A partner's latest copy of the week's statement, as read before the run."""

    id: int
    copy: int
    status: str


@dataclass(frozen=True)
class _Outcome:
    """What became of one statement's send, to be recorded on its row."""

    row_id: int
    status: Status
    message_id: str | None = None
    error: str | None = None


def _latest(session: Session, week: str, partner_ids: Sequence[int]) -> dict[int, _Latest]:
    """Each partner's latest copy of the week's statement, in one query."""
    top = (
        select(StatementSend.partner_id, func.max(StatementSend.copy).label("copy"))
        .where(StatementSend.week == week, StatementSend.partner_id.in_(partner_ids))
        .group_by(StatementSend.partner_id)
        .subquery()
    )
    rows = session.execute(
        select(StatementSend.partner_id, StatementSend.id, StatementSend.copy, StatementSend.status)
        .join(
            top, (top.c.partner_id == StatementSend.partner_id) & (top.c.copy == StatementSend.copy)
        )
        .where(StatementSend.week == week)
    ).all()
    return {pid: _Latest(row_id, copy, status) for pid, row_id, copy, status in rows}


def _claim(
    session: Session,
    partner_id: int,
    week: str,
    *,
    last: _Latest | None,
    resend: bool,
    now: dt.datetime,
    done: _Outcome | None,
) -> tuple[int, int] | None:
    """Record the previous statement's outcome (``done``), claim (partner, week) and commit, in
    one transaction: the row id and copy, or None if it is not ours to send (sent, being sent,
    failed or in doubt). ``last`` is its latest copy as read before the run: a run that took it
    since makes this insert or update miss. ``resend`` claims a new copy."""
    begin_writing(session)
    if done is not None:
        _record(session, done)
    claimed: tuple[int, int] | None = None
    if last is None or resend:
        copy = 0 if last is None else last.copy + 1
        row_id = session.execute(
            insert_or_skip(session, StatementSend)
            .values(partner_id=partner_id, week=week, copy=copy, status=Status.SENDING, sent_at=now)
            .on_conflict_do_nothing(index_elements=["partner_id", "week", "copy"])
            .returning(StatementSend.id)
        ).scalar()
        claimed = None if row_id is None else (row_id, copy)
    elif last.status == Status.RETRY:  # one run moves it back to `sending`; the others miss
        row_id = session.execute(
            update(StatementSend)
            .where(StatementSend.id == last.id, StatementSend.status == Status.RETRY)
            .values(status=Status.SENDING, sent_at=now)
            .returning(StatementSend.id)
        ).scalar()
        claimed = None if row_id is None else (row_id, last.copy)
    session.commit()
    return claimed


def _record(session: Session, done: _Outcome) -> None:
    """The outcome of the row's send (the caller commits). ``sent_at`` is when the last attempt
    began until the provider takes it, then when it did."""
    values: dict[str, object] = {"status": done.status, "message_id": done.message_id}
    values["error"] = done.error[:1000] if done.error is not None else None
    if done.status is Status.SENT:
        values["sent_at"] = dt.datetime.now(dt.UTC)
    session.execute(
        update(StatementSend)
        .where(StatementSend.id == done.row_id, StatementSend.status == Status.SENDING)
        .values(values)
    )


def _outcome(exc: ProviderError) -> Status:
    if exc.maybe_sent:
        return Status.UNKNOWN
    if exc.transient or exc.auth:
        return Status.RETRY
    return Status.FAILED


def send_statements(
    session: Session,
    monday: dt.date,
    partners: Sequence[str] | None,
    provider: Provider,
    *,
    resend: bool = False,
    now: dt.datetime | None = None,
    clock: Clock = SYSTEM_CLOCK,
) -> Sending:
    """Send the statements of the week starting ``monday`` to ``partners`` (slugs; None: every
    active partner) through ``provider``, each once (``resend``: a new copy each), at the hub
    account's pace (``max_per_second``, waited on ``clock``) and within its ``max_per_day`` (UTC
    days, counting the statements sent earlier that day): the rest are left to retry after
    midnight."""
    from jvmail.reports.render import processes_for, render_statements  # matplotlib: here only

    now = now or dt.datetime.fromtimestamp(clock.now(), dt.UTC)
    expire_sending(session, now)
    week = week_label(monday)
    done = Sending()
    wanted = _to_send(session, week, partners, resend, done)
    if not wanted:
        return done
    hub = session.get(HubRecord, 1)
    domain = _domain(hub)
    account = hub.provider if hub is not None else {}
    per_second, per_day = account.get("max_per_second"), account.get("max_per_day")
    left = None if per_day is None else max(0, int(per_day) - _sent_on(session, now.date()))
    pace = MemoryLimiter()  # this run is the hub account's only sender
    people = {
        slug: (pid, contact)
        for slug, pid, contact in session.execute(
            select(Partner.slug, Partner.id, Partner.contact_email)
        ).all()
    }
    latest = _latest(session, week, [people[slug][0] for slug in wanted if slug in people])
    statements = build_statements(session, monday, wanted)
    # Rendered ahead, in worker processes when there are many; claimed only when sent. Each
    # outcome is recorded in the next statement's claim transaction: one commit a statement.
    rendering = render_statements(statements, processes=processes_for(len(statements)))
    outcome: _Outcome | None = None
    try:
        for st, rendered in rendering:
            turn = pace.reserve(
                HUB_ACCOUNT,
                1,
                per_second=per_second,
                per_day=left,
                now=clock.now(),
                max_wait=math.inf,
            )
            if not turn.booked:  # the day's quota is used up
                done.retry[st.partner_slug] = (
                    f"the hub account's limit of {per_day} messages a day is reached; "
                    "sent after midnight (UTC)"
                )
                done.retry_after = turn.wait
                continue
            if turn.wait > 0:
                clock.sleep(turn.wait)
            pid, contact = people[st.partner_slug]
            last = latest.get(pid)
            claim = _claim(session, pid, week, last=last, resend=resend, now=now, done=outcome)
            outcome = None
            if claim is None:
                done.skipped.append(st.partner_slug)  # another run took it meanwhile
                continue
            row_id, copy = claim
            name = f"statements/{week}/{st.partner_slug}" + (f"-{copy}" if copy else "")
            letter = statement_letter(
                rendered, to_addr=contact, row_id=row_id, name=name, domain=domain
            )
            outcome = _send_one(provider, letter, row_id=row_id, slug=st.partner_slug, done=done)
            if done.stopped is not None:
                break
    finally:
        rendering.close()  # stops the workers, when the account failed before the end
        provider.close()
        if outcome is not None:  # the last statement's, or one whose next claim failed
            session.rollback()
            _record(session, outcome)
            session.commit()
    return done


def _sent_on(session: Session, day: dt.date) -> int:
    """How many statements went to the provider on this UTC day."""
    start = dt.datetime.combine(day, dt.time(), dt.UTC)
    return int(
        session.scalar(
            select(func.count())
            .select_from(StatementSend)
            .where(
                StatementSend.sent_at >= start,
                StatementSend.sent_at < start + dt.timedelta(days=1),
            )
        )
        or 0
    )


def _to_send(
    session: Session, week: str, partners: Sequence[str] | None, resend: bool, done: Sending
) -> list[str]:
    """The partners whose statement this run should try; the others go to ``done.skipped``."""
    active = select(Partner.slug).where(Partner.archived_at.is_(None))
    slugs = list(partners) if partners is not None else list(session.scalars(active))
    if resend:
        return slugs
    taken = {slug for slug, w in settled(session) if w == week}
    done.skipped += [s for s in slugs if s in taken]
    return [s for s in slugs if s not in taken]


def _send_one(
    provider: Provider, letter: SingleMessage, *, row_id: int, slug: str, done: Sending
) -> _Outcome:
    """Hand ``letter`` over: what became of it, to record. ``done.stopped`` is set when the
    account cannot send (the rest would be refused the same way)."""
    try:
        message_id = provider.send_message(letter)
    except ProviderError as exc:
        status = _outcome(exc)
        why = f"{exc.message} (fix: {exc.fix})" if exc.fix else exc.message
        {Status.FAILED: done.failed, Status.RETRY: done.retry, Status.UNKNOWN: done.unknown}[
            status
        ][slug] = exc.message
        if status is Status.RETRY and exc.retry_after is not None:
            done.retry_after = max(done.retry_after or 0.0, exc.retry_after)
        if exc.auth:
            done.stopped = exc
        return _Outcome(row_id, status, error=why)
    done.sent.append(slug)
    return _Outcome(row_id, Status.SENT, message_id=message_id)
