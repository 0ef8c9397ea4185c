"""Send the week's statements, each (partner, week) once.

A statement is claimed before it is sent: a ``statement_send`` row for (partner, week, copy) is
inserted and committed first, and only the process whose insert went in sends it. Running the
job again, or two schedulers at once, sends nothing twice; ``resend`` adds a new copy on purpose.
A send that fails is recorded with its reason and not retried blindly (``--resend`` does).

The message is the rendered statement: plain text and HTML alternatives, the charts as inline
images (``multipart/related``, referenced by Content-ID), from the hub to the partner's
contact address. It goes through a `Courier`: the hub's outbox folder (.eml files), or SMTP.
"""

from __future__ import annotations

import datetime as dt
import os
import smtplib
from collections.abc import Sequence
from email.message import EmailMessage
from email.utils import format_datetime, formataddr, make_msgid
from pathlib import Path
from typing import Protocol
from urllib.parse import urlsplit

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from jvmail.db.engine import insert_or_skip
from jvmail.db.models import HubRecord, Partner, StatementSend
from jvmail.reports.build import build_statements
from jvmail.reports.render import RenderedStatement, render_statement

__all__ = ["Courier", "OutboxCourier", "SmtpCourier", "send_statements", "statement_message"]


class Courier(Protocol):
    def send(self, message: EmailMessage) -> None: ...


class OutboxCourier:
    """Statements as .eml files: ``<folder>/statements/<week>/<partner>[-<copy>].eml``."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def send(self, message: EmailMessage) -> None:
        week, name = str(message["X-Jvmail-Statement"]).split("/", 1)
        where = self.folder / "statements" / week
        where.mkdir(parents=True, exist_ok=True)
        partial = where / f".{name}.eml.part"
        partial.write_bytes(bytes(message))
        os.replace(partial, where / f"{name}.eml")


class SmtpCourier:
    """Statements through an SMTP relay (STARTTLS unless ``plain``)."""

    def __init__(
        self, host: str, port: int = 587, *, user: str = "", password: str = "", plain: bool = False
    ) -> None:
        self.host, self.port, self.user, self.password, self.plain = (
            host,
            port,
            user,
            password,
            plain,
        )

    def send(self, message: EmailMessage) -> None:
        with smtplib.SMTP(self.host, self.port, timeout=30) as smtp:
            if not self.plain:
                smtp.starttls()
            if self.user:
                smtp.login(self.user, self.password)
            smtp.send_message(message)


def statement_message(
    rendered: RenderedStatement, *, hub: str, from_addr: str, to_addr: str, tag: str, domain: str
) -> EmailMessage:
    """The statement as one message: text, then HTML with its charts inline."""
    msg = EmailMessage()
    msg["Subject"] = rendered.subject
    msg["From"] = formataddr((hub, from_addr))
    msg["To"] = to_addr
    msg["Date"] = format_datetime(dt.datetime.now(dt.UTC))
    msg["Message-ID"] = make_msgid("statement", domain=domain)
    msg["X-Jvmail-Statement"] = tag
    msg.set_content(rendered.text)
    msg.add_alternative(rendered.html, subtype="html")
    html_part = msg.get_body(("html",))
    assert isinstance(html_part, EmailMessage), "the alternative just added"
    for cid, png in rendered.images.items():
        html_part.add_related(png, "image", "png", cid=f"<{cid}>")
    return msg


def _claim(session: Session, partner_id: int, week: str, resend: bool) -> int | None:
    """Insert the (partner, week, copy) row and commit; its id, or None if it was taken."""
    copy = 0
    if resend:
        last = session.scalar(
            select(func.max(StatementSend.copy)).where(
                StatementSend.partner_id == partner_id, StatementSend.week == week
            )
        )
        copy = 0 if last is None else last + 1
    claimed = session.execute(
        insert_or_skip(session, StatementSend)
        .values(partner_id=partner_id, week=week, copy=copy, status="sending")
        .on_conflict_do_nothing(index_elements=["partner_id", "week", "copy"])
        .returning(StatementSend.id)
    ).scalar()
    session.commit()
    return claimed


def send_statements(
    session: Session,
    monday: dt.date,
    partners: Sequence[str] | None,
    courier: Courier,
    *,
    resend: bool = False,
) -> int:
    """Send the statements of the week starting ``monday`` (to ``partners``, or all); returns
    how many were sent now."""
    hub = session.get(HubRecord, 1)
    domain = (urlsplit(hub.base_url).hostname if hub else None) or "jvmail.invalid"
    contacts = dict(session.execute(select(Partner.slug, Partner.contact_email)).all())
    ids = dict(session.execute(select(Partner.slug, Partner.id)).all())
    sent = 0
    for st in build_statements(session, monday, partners):
        claimed = _claim(session, ids[st.partner_slug], st.week, resend)
        if claimed is None:
            continue  # sent before, or being sent by another run
        copy = session.scalar(select(StatementSend.copy).where(StatementSend.id == claimed)) or 0
        tag = f"{st.week}/{st.partner_slug}" + (f"-{copy}" if copy else "")
        message = statement_message(
            render_statement(st),
            hub=st.hub,
            from_addr=f"statements@{domain}",
            to_addr=contacts[st.partner_slug],
            tag=tag,
            domain=domain,
        )
        error = None
        try:
            courier.send(message)
        except (OSError, smtplib.SMTPException) as exc:
            error = f"{type(exc).__name__}: {exc}"[:1000]
        session.execute(
            update(StatementSend)
            .where(StatementSend.id == claimed)
            .values(
                status="failed" if error else "sent",
                error=error,
                message_id=str(message["Message-ID"]),
                sent_at=None if error else dt.datetime.now(dt.UTC),
            )
        )
        session.commit()
        sent += error is None
    return sent
