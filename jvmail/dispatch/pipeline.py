"""From a due mailing to accepted messages: dispatch it, then send it batch by batch.

:func:`dispatch` materializes a due mailing's deliveries and commits, and only then returns the
batches (id ranges) to send: whatever carries them (a dramatiq message, a loop in `jvmail run`)
carries ids and bounds, never bodies. :func:`send_batch` is what a worker does with one batch:

1. claim the batch's rows (lease + fence, suppressions re-checked; the batch is stamped
   claimed, for the relay) and commit;
2. render the mailing once (a broken template fails the mailing with its reason);
3. book the rows against the sender's account (pace, daily quota, a hold the provider asked
   for): wait for their turn, or give them back unsent to be retried later;
4. mark the claimed rows in flight and commit: a worker that lost its lease stops here, and so
   does one whose mailing was paused or cancelled since its claim (its rows go back unsent);
   then mark the recipients in the send guard (:mod:`jvmail.dispatch.guard`, outside the
   database): those another copy of this database already handed over are recorded ``dead``
   and not sent;
5. one provider call per provider-sized piece; a refusal with Retry-After holds the whole
   account (every batch of it, in every worker) for that long;
6. record each recipient's outcome under its fence and commit.

Each step is its own transaction, so a crash anywhere leaves rows either claimable again
(before 4) or ``unknown`` for the reconciler (after 4), never sent twice.
"""

from __future__ import annotations

import datetime as dt
import logging
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from urllib.parse import quote, urlsplit

import redis
from sqlalchemy import Select, exists, func, select, update
from sqlalchemy.orm import Session, aliased

from jvmail.db.engine import analyze, bind, param
from jvmail.db.models import (
    Delivery,
    DeliveryBatch,
    DeliveryStatus,
    HubRecord,
    Mailing,
    MailingList,
    MailingStatus,
    Partner,
    Promotion,
)
from jvmail.dispatch.deliveries import (
    SENDABLE,
    Claim,
    Claimed,
    Outcome,
    batch_bounds,
    claimed,
    fail_unsent,
    record,
    recorded,
    release,
    started,
    tally,
    unclaim,
    unfinished,
)
from jvmail.dispatch.guard import GuardDown, Mark, SendGuard
from jvmail.dispatch.limits import SYSTEM_CLOCK, Booking, Clock, Limiter, account_key
from jvmail.dispatch.mime import Skeleton, skeleton
from jvmail.dispatch.outbox import materialize, why_nobody
from jvmail.dispatch.relay import record as record_batches
from jvmail.dispatch.render import Mailer, TemplateProblem, markers, render
from jvmail.faults import fault
from jvmail.providers.base import OutboundBatch, Provider, ProviderError, Recipient, Sent
from jvmail.tracking.links import Keyring, delivery_urls

__all__ = [
    "BatchReport",
    "Message",
    "dispatch",
    "due_mailings",
    "fail_mailing",
    "finish_settled",
    "load_message",
    "pause_mailing",
    "send_batch",
]

logger = logging.getLogger(__name__)

LEASE = dt.timedelta(minutes=10)
SENDING_NOW = (MailingStatus.QUEUED, MailingStatus.SENDING)  # a mailing being sent
STOPPED = (MailingStatus.CANCELLED, MailingStatus.FAILED)  # a mailing that sends no more


@dataclass(frozen=True)
class Message:
    """A mailing's message laid out once, with what each recipient's copy needs."""

    mailing_id: int
    skeleton: Skeleton
    base_url: str
    keys: Keyring
    sender_email: str
    sender_id: int = 0
    per_second: float | None = None  # the sender's account limits
    per_day: int | None = None
    promotion_id: int = 0  # with the mailing id, the send guard's name for the mailing
    list_id: int = 0

    @property
    def mark(self) -> Mark:
        return Mark(self.mailing_id, self.promotion_id, self.list_id)

    def recipient(self, delivery_id: int, email: str, first_name: str) -> Recipient:
        links, unsubscribe, pixel = delivery_urls(
            self.base_url,
            self.keys,
            self.mailing_id,
            delivery_id,
            len(self.skeleton.rendered.links),
        )
        return Recipient(delivery_id, email, markers(first_name, links, unsubscribe, pixel))

    def mailto(self) -> str:
        return f"mailto:{self.sender_email}?subject={quote('unsubscribe')}"


@dataclass
class BatchReport:
    claimed: int = 0
    sent: int = 0  # accepted by the provider
    refused: int = 0  # refused by the provider for that recipient
    suppressed: int = 0  # found suppressed at claim or start time
    stale: int = 0  # rows this worker had lost before the provider call
    duplicates: int = 0  # rows the send guard found handed over already: recorded dead
    error: str = ""  # why the mailing or the request failed as a whole
    retry: bool = False  # the provider asked to wait; the rows it did not take are pending
    retry_after: float | None = None  # ... this many seconds, when it said (Retry-After)


def due_mailings(session: Session, now: dt.datetime) -> list[int]:
    """Mailings waiting to be sent whose time has come, oldest first."""
    return list(
        session.scalars(
            select(Mailing.id)
            .where(Mailing.status.in_(SENDABLE), Mailing.scheduled_at <= now)
            .order_by(Mailing.scheduled_at, Mailing.id)
        )
    )


ANALYZE_AFTER = 10_000  # deliveries materialized at once: then the table's statistics are renewed


def dispatch(
    session: Session, mailing_id: int, batch_size: int, parts: int = 1
) -> list[tuple[int, int]]:
    """Materialize the mailing's deliveries (a large list in ``parts`` at once on PostgreSQL)
    and record its batches as enqueued, and commit; the batches to send (none when another
    dispatcher already took it, or nobody on the list can be mailed). The caller enqueues one
    message per batch."""
    made = materialize(session, mailing_id, parts)
    if made is None:
        session.commit()
        return []
    if not made.rows:
        session.execute(
            update(Mailing)
            .where(Mailing.id == mailing_id)
            .values(error=why_nobody(session, mailing_id))
        )
    bounds = made.batches(batch_size)
    if bounds is None:
        bounds = batch_bounds(session, mailing_id, batch_size)
    record_batches(session, mailing_id, bounds, dt.datetime.now(dt.UTC))
    session.commit()
    if made.rows >= ANALYZE_AFTER:
        # Until the statistics count the new rows, PostgreSQL may plan each claim as a walk of
        # the mailing's every row instead of a probe of its batch's id range: 106 ms a claim
        # instead of 16 at 1,000,000 rows.
        analyze(session.connection(), "delivery")
        session.commit()
    if not bounds:
        _finish(session, mailing_id)
    return bounds


# (database, mailing, promotion, sender and hub versions) -> the mailing's rendered message
_RENDERED: dict[tuple[str, int, object, object, object], Message] = {}
_RENDERED_MAX = 64


def load_message(session: Session, mailing_id: int) -> Message:
    """The mailing's message, rendered once per process and kept while its promotion and its
    sender's settings stay as they are; raises :class:`TemplateProblem` for a broken
    template."""
    versions = session.connection().execute(_versions_statement(), bind(m=mailing_id)).one()
    key = (str(session.connection().engine.url), mailing_id, *versions)
    cached = _RENDERED.get(key)
    if cached is None:
        cached = _render_message(session, mailing_id)
        register_links(session, mailing_id, cached.skeleton.rendered.links)
        if len(_RENDERED) >= _RENDERED_MAX:
            _RENDERED.pop(next(iter(_RENDERED)))
        _RENDERED[key] = cached
    return cached


@cache
def _versions_statement() -> Select[dt.datetime, dt.datetime, dt.datetime]:
    """When the mailing's promotion, its sender and the hub last changed, by parameter ``m``
    (built once: it runs for every batch)."""
    return (
        select(Promotion.updated_at, Partner.updated_at, HubRecord.updated_at)
        .join(Mailing, Mailing.promotion_id == Promotion.id)
        .join(Partner, Partner.id == Mailing.sender_id)
        .join(HubRecord, HubRecord.id == 1)
        .where(Mailing.id == param("m", Mailing.id))
    )


def _render_message(session: Session, mailing_id: int) -> Message:
    owner = aliased(Partner)
    row = session.execute(
        select(Mailing, Promotion, MailingList, Partner, owner)
        .join(Promotion, Promotion.id == Mailing.promotion_id)
        .join(MailingList, MailingList.id == Mailing.list_id)
        .join(Partner, Partner.id == Mailing.sender_id)
        .join(owner, owner.id == Promotion.partner_id)
        .where(Mailing.id == mailing_id)
    ).one()
    mailing, promo, lst, sender, promo_owner = row
    hub = session.get(HubRecord, 1)
    if hub is None or not hub.link_keys:
        raise TemplateProblem("the hub has no settings yet", "run `jvmail sync CONFIG_DIR` first")
    rendered = render(
        promo.slug,
        promo.subject,
        promo.html,
        promo.text,
        Mailer(sender.name, sender.postal_address, lst.name, promo_owner.name),
    )
    domain = urlsplit(hub.base_url).hostname or "jvmail.invalid"
    layout = skeleton(
        rendered,
        from_name=sender.name,
        from_addr=sender.contact_email,
        mailing_id=mailing.id,
        domain=domain,
    )
    account = sender.provider
    return Message(
        mailing.id,
        layout,
        hub.base_url,
        Keyring.from_hex(hub.link_keys),
        sender.contact_email,
        sender.id,
        account.get("max_per_second"),
        account.get("max_per_day"),
        mailing.promotion_id,
        mailing.list_id,
    )


def register_links(session: Session, mailing_id: int, links: Sequence[str]) -> None:
    """Record where the mailing's links go, once: the tracking server redirects a click on link
    n to the n-th URL here and nowhere else. A later render must find the same links (a
    promotion edited mid-mailing would send old clicks to new pages): it fails the mailing."""
    session.execute(
        update(Mailing)
        .where(Mailing.id == mailing_id, Mailing.links.is_(None))
        .values(links=list(links))
    )
    session.commit()
    stored = session.scalar(select(Mailing.links).where(Mailing.id == mailing_id))
    if stored != list(links):
        raise TemplateProblem(
            "the promotion's links changed after this mailing started sending",
            "cancel this mailing (`jvmail cancel`) and plan the promotion again",
        )


def send_batch(
    session: Session,
    provider: Provider,
    mailing_id: int,
    bounds: tuple[int, int],
    *,
    limit: int = 1000,
    lease: dt.timedelta = LEASE,
    limiter: Limiter | None = None,
    clock: Clock = SYSTEM_CLOCK,
    guard: SendGuard | None = None,
) -> BatchReport:
    """Send one batch of one mailing through ``provider`` (see the module docstring);
    ``clock`` is what the account's limits are booked and waited with; ``guard``, when given,
    keeps a copy of this database from sending again what another already sent."""
    report = BatchReport()
    got = _claim(session, mailing_id, bounds, lease=lease, limit=limit)
    fault("send:after-claim")
    held = got.held
    report.claimed = len(held)
    report.suppressed = got.suppressed
    if not held:
        _finish(session, mailing_id)
        return report
    try:
        message = load_message(session, mailing_id)
    except TemplateProblem as exc:
        fail_mailing(session, mailing_id, f"{exc.message} (fix: {exc.fix})")
        report.error = exc.message
        return report
    if limiter is not None and not _paced(
        session, message, held, report, limiter=limiter, clock=clock
    ):
        return report
    going = _in_flight(session, message, held, report, guard, lease=lease, clock=clock)
    if not going:
        return report
    batch = OutboundBatch(
        mailing_id,
        message.skeleton,
        message.mailto(),
        tuple(message.recipient(c.delivery_id, c.email, c.first_name) for c in going),
    )
    sent = provider.send(batch)
    fault("send:after-provider")
    if limiter is not None and sent.error is not None:
        _hold(limiter, clock, message, sent.error)  # first: the account's other batches wait
    tally(session, mailing_id, bounds[0], recorded(session, _outcomes(going, sent), held=going))
    later = {r.delivery_id for r in sent.results if r.retry}
    report.retry = bool(later)
    untried = set(sent.untried) | later
    back = [c for c in going if c.delivery_id in untried]
    _unmark(guard, message, back)
    _give_back(session, mailing_id, back)
    results = [r for r in sent.results if not r.retry]
    if sent.error is not None:
        # Doubtful rows stay in flight until their lease ends, then become unknown for the
        # reconciler: they may have left, so they are never sent again blindly.
        problem = sent.error
        report.error = problem.message
        why = f"{provider.name}: {problem.message} (fix: {problem.fix})"
        if problem.auth:
            pause_mailing(session, mailing_id, why)
        elif not problem.transient:
            fail_mailing(session, mailing_id, why)
        else:
            report.retry = report.retry or bool(sent.untried)
            report.retry_after = problem.retry_after
    session.commit()
    report.sent = sum(1 for r in results if r.accepted)
    report.refused = len(results) - report.sent
    if report.refused:
        _pause_if_failing(session, mailing_id)
    _finish(session, mailing_id)
    return report


def _outcomes(going: list[Claimed], sent: Sent) -> list[Outcome]:
    """The provider's answers to record, each under its row's fence (not the retry-later
    ones: they go back to pending)."""
    fences = {c.delivery_id: c.fence for c in going}
    return [
        Outcome(
            r.delivery_id,
            fences[r.delivery_id],
            DeliveryStatus.ACCEPTED if r.accepted else DeliveryStatus.FAILED,
            r.message_id,
            r.error,
        )
        for r in sent.results
        if not r.retry
    ]


def _in_flight(
    session: Session,
    message: Message,
    held: list[Claimed],
    report: BatchReport,
    guard: SendGuard | None,
    *,
    lease: dt.timedelta,
    clock: Clock,
) -> list[Claimed]:
    """Mark the claimed rows in flight and ask the send guard about them; the rows to send."""
    going = _start(session, message.mailing_id, held, report, lease)
    if going and guard is not None:
        going = _guarded(session, guard, message, going, report, clock=clock)
        if not going:  # every one of them went out already, from another copy
            _finish(session, message.mailing_id)
    return going


def _claim(
    session: Session, mailing_id: int, bounds: tuple[int, int], *, lease: dt.timedelta, limit: int
) -> Claim:
    """Claim the batch's rows (which stamps the batch claimed and open) and commit."""
    got = claimed(session, mailing_id, bounds, lease=lease, limit=limit)
    session.commit()
    return got


def _start(
    session: Session, mailing_id: int, held: list[Claimed], report: BatchReport, lease: dt.timedelta
) -> list[Claimed]:
    """Mark the claimed rows in flight and commit; the rows that may go out (none when the
    mailing was paused or cancelled since the claim: they go back unsent)."""
    if not _still_running(session, mailing_id):
        unclaim(session, held)
        session.commit()
        return []
    moved = started(session, held, lease=lease)
    session.commit()
    report.suppressed += moved.suppressed
    report.stale = len(held) - len(moved.going) - moved.suppressed
    return moved.going


ALREADY_SENT = (
    "already handed to the provider from another copy of this hub's database (a restored "
    "backup?); not sent again"
)


# Seconds between asking the send guard again when it did not answer; None: the last try.
GUARD_WAITS: tuple[float | None, ...] = (0.25, 0.5, 1.0, 1.5, None)


def _guarded(
    session: Session,
    guard: SendGuard,
    message: Message,
    going: list[Claimed],
    report: BatchReport,
    *,
    clock: Clock,
) -> list[Claimed]:
    """Mark the in-flight rows' recipients in the send guard; the rows still to send. Those
    marked already (sent from another copy of this database: a restored backup beside the
    live one) are recorded ``dead`` under their fence and committed, with an alert in the log.
    When the guard cannot be asked, it is asked again for the same attempt a few times over a
    few seconds (a Redis restarting from its file: its answer, had it given one, was kept);
    then nothing goes: the rows go back to pending, to retry (had it marked them before its
    answer was lost, their retry records them dead: never twice)."""
    subscribers = [c.subscriber_id for c in going]
    attempt = secrets.token_hex(8)
    for wait in GUARD_WAITS:
        try:
            seen = guard.mark(message.mark, subscribers, attempt)
            break
        except GuardDown as exc:
            if wait is None:
                _give_back(session, message.mailing_id, going)
                session.commit()
                report.retry = True
                report.error = f"the send guard (Redis) did not answer: {exc}; retried later"
                return []
            clock.sleep(wait)
    if not seen:
        return going
    copies = [c for c in going if c.subscriber_id in seen]
    dead = [
        Outcome(c.delivery_id, c.fence, DeliveryStatus.DEAD, None, ALREADY_SENT) for c in copies
    ]
    record(session, dead)
    session.commit()
    report.duplicates = len(copies)
    logger.error(
        "mailing %s: %d recipient(s) were already handed to the provider from another copy of "
        "this hub's database (a restored backup running beside the live one?); recorded dead, "
        "not sent again: stop the other copy",
        message.mailing_id,
        len(copies),
    )
    return [c for c in going if c.subscriber_id not in seen]


def _give_back(session: Session, mailing_id: int, back: list[Claimed]) -> None:
    """In-flight rows that did not go out: pending again for a later batch, or ``failed`` with
    the mailing's reason when it was cancelled or failed meanwhile (a pending row of a stopped
    mailing would wait forever). The mailing is read under a lock kept until the caller's
    commit: a cancel that comes meanwhile waits for it, then fails these rows itself. It is the
    lock an update of the mailing takes (``FOR NO KEY UPDATE``), as the caller may pause or
    fail the mailing next: two workers each holding a share lock would each wait for the other
    to let go of it."""
    if not back:
        return
    status, error = session.execute(
        select(Mailing.status, Mailing.error)
        .where(Mailing.id == mailing_id)
        .with_for_update(key_share=True)
    ).one()
    if status not in STOPPED:
        release(session, back)
        return
    why = error or f"the mailing {status.value}"
    record(
        session, [Outcome(c.delivery_id, c.fence, DeliveryStatus.FAILED, None, why) for c in back]
    )


def _unmark(guard: SendGuard | None, message: Message, back: list[Claimed]) -> None:
    """Clear the guard's marks of rows going back unsent, so a later try may send them. When
    the guard cannot be reached the marks stay: a later try then records those rows dead
    (never a duplicate), and the log says why."""
    if guard is None or not back:
        return
    try:
        guard.clear(message.mark, [c.subscriber_id for c in back])
    except GuardDown as exc:
        logger.warning(
            "mailing %s: the send guard (Redis) did not answer (%s); %d recipient(s) given "
            "back unsent keep their marks and will be recorded dead on their next try",
            message.mailing_id,
            exc,
            len(back),
        )


def _still_running(session: Session, mailing_id: int) -> bool:
    """Whether the mailing may still send (not paused or cancelled since the claim), read under
    a share lock kept until the caller's commit: a pause or cancel waits for the rows this
    transaction marks in flight, and a start that comes after one sees it. So once a pause has
    committed, the only rows that may still reach the provider are those then ``sending``."""
    running = session.connection().execute(_running_statement(), bind(m=mailing_id)).scalar()
    return running is not None


@cache
def _running_statement() -> Select[int]:
    return (
        select(Mailing.id)
        .where(
            Mailing.id == param("m", Mailing.id),
            Mailing.status.in_(SENDING_NOW),
        )
        .with_for_update(read=True)
    )


def _hold(limiter: Limiter, clock: Clock, message: Message, problem: ProviderError) -> None:
    """The provider said how long to wait (Retry-After): hold the sender's whole account. A
    limiter that cannot be reached (Redis down) costs the hold, never the provider's answers,
    which are recorded next: the batches then wait out their own backoff instead."""
    if not problem.retry_after:
        return
    now = clock.now()
    try:
        limiter.hold(account_key(message.sender_id), now + problem.retry_after, now=now)
    except redis.RedisError as exc:
        logger.warning(
            "mailing %s: could not hold the sender's account for %.0f s as the provider asked "
            "(%s); its batches retry with their own backoff",
            message.mailing_id,
            problem.retry_after,
            exc,
        )


# A mailing whose provider refuses this share of its recipients stops itself: a list that
# bounces like this hurts the sender's reputation, and someone should look before it goes on.
FAILING_SHARE = 0.2
FAILING_AFTER = 50  # ... judged once this many recipients have an answer


def _pause_if_failing(session: Session, mailing_id: int) -> None:
    # The batches' tallies: a sum over a row per batch, not a count of the mailing's rows.
    accepted, refused = session.execute(
        select(
            func.coalesce(func.sum(DeliveryBatch.accepted), 0),
            func.coalesce(func.sum(DeliveryBatch.refused), 0),
        ).where(DeliveryBatch.mailing_id == mailing_id)
    ).one()
    failed, total = int(refused), int(accepted) + int(refused)
    if (
        unfinished(session, mailing_id)
        and total >= FAILING_AFTER
        and failed > FAILING_SHARE * total
    ):
        pause_mailing(
            session,
            mailing_id,
            f"paused itself: the provider refused {failed} of {total} recipients "
            f"(more than {FAILING_SHARE:.0%}); check the list's addresses, then "
            "`jvmail resume` it or `jvmail cancel` it",
        )
        session.commit()


MAX_PACE_WAIT = 30.0  # seconds a worker waits for its account's pace; longer: retried later


def _paced(
    session: Session,
    message: Message,
    held: list[Claimed],
    report: BatchReport,
    *,
    limiter: Limiter,
    clock: Clock,
) -> bool:
    """Book the batch against the sender's account and wait for its turn; False when it must
    wait longer (the rows go back to pending, unsent, for a later try). Every account is
    booked, limits or not: a hold (the provider's Retry-After) stops them all."""
    key = account_key(message.sender_id)
    booking = limiter.reserve(
        key,
        len(held),
        per_second=message.per_second,
        per_day=message.per_day,
        now=clock.now(),
        max_wait=MAX_PACE_WAIT,
    )
    if booking.booked and booking.wait > 0:
        clock.sleep(booking.wait)  # the account's turn: the rows stay claimed
        # Another batch may have been told to wait meanwhile (a 429): that hold counts too.
        now = clock.now()
        until = limiter.held_until(key, now)
        if until is not None:
            booking = Booking(until - now, booked=False, held=True)
    if booking.booked:
        return True
    if booking.quota:
        # Hold the account until midnight: the tick's relay passes over a held account, so the
        # rest waits quietly rather than being claimed and given back at every relay. (What is
        # left of the day's quota, less than this batch, goes unused.)
        now = clock.now()
        limiter.hold(key, now + booking.wait, now=now)
    unclaim(session, held)
    session.commit()
    report.retry = not booking.quota  # pace or hold: soon; daily quota: a tick after midnight
    report.retry_after = None if booking.quota else booking.wait
    if booking.quota:
        report.error = (
            f"the sender's account has sent its {message.per_day:,} messages for today; "
            "the rest go after midnight UTC"
        )
    elif booking.held:
        report.error = (
            f"the sender's provider asked to wait (Retry-After): the account is held for "
            f"{booking.wait:.0f} s more; retried then"
        )
    else:
        report.error = (
            f"the sender's account is at its pace of {message.per_second:g}/s; retried later"
        )
    return False


def _finish(session: Session, mailing_id: int) -> None:
    """Mark the mailing sent once none of its deliveries is unfinished (a probe along its
    batches' id ranges that stops at the first unfinished row, where a count would read them
    all after every batch)."""
    if not unfinished(session, mailing_id):
        session.execute(
            update(Mailing)
            .where(
                Mailing.id == mailing_id,
                Mailing.status.in_(SENDING_NOW),
            )
            .values(status=MailingStatus.SENT, updated_at=dt.datetime.now(dt.UTC))
        )
        session.commit()


def finish_settled(session: Session, mailing_ids: Sequence[int] | None = None) -> int:
    """Mark ``sent`` the queued or sending mailings (of ``mailing_ids``, or all) that have
    deliveries and none of them unfinished: those whose last batch ended in doubt and was
    settled later, by a webhook or the reconciler. Returns how many. The caller commits."""
    any_rows = select(Delivery.id).where(Delivery.mailing_id == Mailing.id)
    query = select(Mailing.id).where(Mailing.status.in_(SENDING_NOW), exists(any_rows))
    if mailing_ids is not None:
        query = query.where(Mailing.id.in_(list(mailing_ids)))
    done = [m for m in session.scalars(query) if not unfinished(session, m)]
    if not done:
        return 0
    stmt = (
        update(Mailing)
        .where(
            Mailing.id.in_(done),
            Mailing.status.in_(SENDING_NOW),
        )
        .values(status=MailingStatus.SENT, updated_at=dt.datetime.now(dt.UTC))
        .execution_options(preserve_rowcount=True)
    )
    return session.connection().execute(stmt).rowcount


def pause_mailing(session: Session, mailing_id: int, why: str) -> None:
    """The sender's account refused our credentials (or the mailing refuses too many): the
    mailing waits, saying why. Only a mailing being sent: one paused or cancelled by the
    coordinator meanwhile stays as they left it."""
    session.execute(
        update(Mailing)
        .where(Mailing.id == mailing_id, Mailing.status.in_(SENDING_NOW))
        .values(status=MailingStatus.PAUSED, error=why[:1000], updated_at=dt.datetime.now(dt.UTC))
    )


def fail_mailing(session: Session, mailing_id: int, why: str) -> None:
    """The mailing cannot be sent: it fails with the reason; its rows not handed over fail
    with it. Only a mailing being sent: one paused or cancelled meanwhile stays so."""
    now = dt.datetime.now(dt.UTC)
    failed = session.execute(
        update(Mailing)
        .where(Mailing.id == mailing_id, Mailing.status.in_(SENDING_NOW))
        .values(status=MailingStatus.FAILED, error=why[:1000], updated_at=now)
        .returning(Mailing.id)
    ).first()
    if failed is None:
        session.commit()
        return
    session.execute(fail_unsent(mailing_id, why, now))
    session.commit()
