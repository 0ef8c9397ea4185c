"""A sender's approve/decline page for a mailing planned onto its list (`review_url`).

``GET /review/{token}`` shows what would be sent (promotion, its owner, the list, the local send
time, the expected value) with two buttons; only the ``POST`` decides, so a mail scanner that
fetches the link changes nothing. Deciding twice, or on a mailing no longer awaiting approval,
changes nothing and says where the mailing stands.
"""

from __future__ import annotations

import datetime as dt
import html

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from jvmail.db.models import Mailing, MailingStatus
from jvmail.errors import Busy, UsageError
from jvmail.mailings import MAX_REASON, MailingRow, approve, decline, rows_of
from jvmail.tracking.links import REVIEW
from jvmail.tracking.pages import not_found, page

__all__ = ["review_action", "review_page"]


def _row(request: Request, mailing: int) -> MailingRow | None:
    tracker = request.app.state.tracker
    with tracker.sessions() as session:
        found = session.get(Mailing, mailing)
        return rows_of(session, [found])[0] if found is not None else None


def _details(row: MailingRow) -> str:
    e = html.escape
    return (
        f"<p><b>{e(row.owner)}</b> asks <b>{e(row.sender)}</b> to mail its promotion "
        f"<i>{e(row.promotion)}</i> to the list <i>{e(row.list)}</i> on {e(row.send_time)} "
        f"(expected value {row.expected_value:g}).</p>"
    )


async def _mailing_of(request: Request) -> int | None:
    link = await request.app.state.tracker.link(request.path_params["token"])
    if link is None or link.delivery != REVIEW or link.link != 0:
        return None
    return int(link.mailing)


async def review_page(request: Request) -> Response:
    mailing = await _mailing_of(request)
    row = await run_in_threadpool(_row, request, mailing) if mailing is not None else None
    if row is None:
        return not_found()
    if row.status != MailingStatus.AWAITING_APPROVAL:
        return page(
            "Mailing", f"<h1>Mailing {row.id}</h1>{_details(row)}<p>It is {row.status}.</p>"
        )
    return page(
        "Approve this mailing?",
        f"<h1>Approve this mailing?</h1>{_details(row)}<form method=post>"
        f'<label>Reason if you decline (optional)<input name=reason maxlength="{MAX_REASON}">'
        "</label><button name=action value=approve>Approve</button>"
        "<button class=quiet name=action value=decline>Decline</button></form>",
    )


def _decide(request: Request, mailing: int, action: str, reason: str) -> MailingRow:
    tracker = request.app.state.tracker
    now = dt.datetime.now(dt.UTC)
    with tracker.writing() as session:
        rows = (
            approve(session, [mailing], now)
            if action == "approve"
            else decline(session, [mailing], now, reason)
        )
        session.commit()
    return rows[0]


async def review_action(request: Request) -> Response:
    mailing = await _mailing_of(request)
    if mailing is None:
        return not_found()
    form = await request.form()
    action, reason = str(form.get("action", "")), str(form.get("reason", "")).strip()
    if action not in ("approve", "decline") or len(reason) > MAX_REASON:
        return page(
            "Nothing changed", "<h1>Nothing changed</h1><p>Choose Approve or Decline.</p>", 400
        )
    try:
        row = await run_in_threadpool(_decide, request, mailing, action, reason)
    except UsageError:  # not awaiting approval (any more): say where it stands
        current = await run_in_threadpool(_row, request, mailing)
        if current is None:
            return not_found()
        return page(
            "Already decided",
            f"<h1>Mailing {current.id} is {current.status}</h1>{_details(current)}"
            "<p>Nothing changed.</p>",
            409,
        )
    except Busy:  # held by a worker that stopped half way: nothing changed
        return page(
            "Try again",
            "<h1>Nothing changed</h1><p>The mailing is busy; try again in a minute.</p>",
            503,
        )
    verb = "approved: it will be sent as planned" if action == "approve" else "declined"
    return page("Done", f"<h1>Mailing {row.id} {verb}</h1>{_details(row)}")
