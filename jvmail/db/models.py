"""Typed SQLAlchemy 2.0 models: the registry, the plan, the outbox, tracking and the ledger.

Status columns are enums stored as strings (no native PostgreSQL enum types, so a new status is a
plain migration). Rows that leave the config are archived (``archived_at``), never deleted, so
mailings, deliveries and ledger entries that point at them keep their meaning.
"""

from __future__ import annotations

import datetime as dt
import enum
from typing import Annotated, Any

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    Enum,
    ForeignKey,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    false,
    func,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

__all__ = [
    "Base",
    "Delivery",
    "DeliveryBatch",
    "DeliveryStatus",
    "EventType",
    "HubRecord",
    "LedgerEntry",
    "LedgerKind",
    "Mailing",
    "MailingList",
    "MailingStatus",
    "Partner",
    "PartnerSecret",
    "Promotion",
    "Subscriber",
    "SubscriberStatus",
    "Suppression",
    "SuppressionReason",
    "TrackingEvent",
]

# Constraint names are fixed so migrations can refer to them on every database.
NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

IntPk = Annotated[int, mapped_column(Integer, primary_key=True)]
BigPk = Annotated[
    int, mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
]
Slug = Annotated[str, mapped_column(String(64), unique=True)]
Stamp = Annotated[dt.datetime, mapped_column(DateTime(timezone=True), server_default=func.now())]
MaybeStamp = Annotated[dt.datetime | None, mapped_column(DateTime(timezone=True))]
JsonList = Annotated[list[Any], mapped_column(JSON, default=list)]
JsonDict = Annotated[dict[str, Any], mapped_column(JSON, default=dict)]


def _enum(kind: type[enum.Enum], length: int = 16) -> Enum:
    return Enum(
        kind,
        native_enum=False,
        length=length,
        values_callable=lambda members: [m.value for m in members],
        validate_strings=True,
    )


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class SubscriberStatus(enum.StrEnum):
    SUBSCRIBED = "subscribed"
    UNSUBSCRIBED = "unsubscribed"
    BOUNCED = "bounced"
    COMPLAINED = "complained"


class SuppressionReason(enum.StrEnum):
    UNSUBSCRIBED = "unsubscribed"
    BOUNCED = "bounced"
    COMPLAINED = "complained"
    MANUAL = "manual"


class MailingStatus(enum.StrEnum):
    """Where a mailing is. The send pipeline picks up ``planned`` and ``approved`` ones.

    A mailing on the list of a partner that approves each mailing starts ``awaiting_approval``
    and becomes ``approved`` or ``declined`` (`jvmail approve` / `jvmail decline`).
    """

    PLANNED = "planned"
    AWAITING_APPROVAL = "awaiting_approval"
    APPROVED = "approved"
    DECLINED = "declined"
    QUEUED = "queued"
    SENDING = "sending"
    SENT = "sent"
    PAUSED = "paused"
    CANCELLED = "cancelled"
    FAILED = "failed"


class DeliveryStatus(enum.StrEnum):
    """See jvmail.dispatch.deliveries for the transitions."""

    PENDING = "pending"
    CLAIMED = "claimed"
    SENDING = "sending"  # handed to the provider call: never claimed again
    ACCEPTED = "accepted"
    UNKNOWN = "unknown"
    SUPPRESSED = "suppressed"
    FAILED = "failed"
    DEAD = "dead"


class EventType(enum.StrEnum):
    QUEUED = "queued"
    SENT = "sent"
    DELIVERED = "delivered"
    DEFERRED = "deferred"
    BOUNCED = "bounced"
    REJECTED = "rejected"
    COMPLAINED = "complained"
    UNSUBSCRIBED = "unsubscribed"
    OPENED = "opened"
    CLICKED = "clicked"
    CONVERTED = "converted"
    UNKNOWN = "unknown"


class LedgerKind(enum.StrEnum):
    """Stages of a mailing's value (see jvmail.ledger.postings), plus corrections."""

    EXPECTED = "expected"
    PENDING = "pending"
    FINAL = "final"
    MISSED = "missed"
    CORRECTION = "correction"


class HubRecord(Base):
    """The hub's own settings, synced from `jvmail.toml` (one row)."""

    __tablename__ = "hub"

    id: Mapped[IntPk]
    name: Mapped[str] = mapped_column(String(500))
    base_url: Mapped[str] = mapped_column(String(500))
    timezone: Mapped[str] = mapped_column(String(64))
    value_metric: Mapped[str] = mapped_column(String(16))
    report_day: Mapped[str] = mapped_column(String(3))
    credit_window_days: Mapped[int]
    soft_bounce_days: Mapped[int] = mapped_column(default=3, server_default="3")
    # The periodic jobs (`jvmail scheduler`): next week is planned on plan_day at plan_hour (hub
    # time); statements go out on report_day from report_hour (each partner's local time);
    # mailings more than missed_grace_hours late wait for `jvmail resume`.
    plan_day: Mapped[str] = mapped_column(String(3), default="thu", server_default="thu")
    plan_hour: Mapped[int] = mapped_column(default=9, server_default="9")
    report_hour: Mapped[int] = mapped_column(default=8, server_default="8")
    missed_grace_hours: Mapped[int] = mapped_column(default=6, server_default="6")
    scheduler: Mapped[JsonDict]
    # HMAC keys for tracking links, hex, newest first: made at the first sync, never synced
    # from config (a secret does not belong in files that get shared).
    link_keys: Mapped[list[str]] = mapped_column(JSON, default=list, server_default="[]")
    # The hub's own sending account (`[hub.provider]`, for the statements): env-var names only.
    provider: Mapped[dict[str, Any]] = mapped_column(
        JSON,
        default=lambda: {"kind": "outbox", "directory": "outbox"},
        server_default='{"kind": "outbox", "directory": "outbox"}',
    )
    updated_at: Mapped[Stamp]


class Partner(Base):
    """A business in the hub. ``provider`` holds its account settings: env-var names, no secrets."""

    __tablename__ = "partner"

    id: Mapped[IntPk]
    slug: Mapped[Slug]
    name: Mapped[str] = mapped_column(String(500))
    contact_email: Mapped[str] = mapped_column(String(320))
    postal_address: Mapped[str] = mapped_column(String(300))
    timezone: Mapped[str] = mapped_column(String(64))
    categories: Mapped[JsonList]
    wants_to_meet: Mapped[JsonList]
    provider_kind: Mapped[str] = mapped_column(String(16))
    provider: Mapped[JsonDict]
    # Mailings planned onto its lists wait for its approval before they are sent.
    approve_mailings: Mapped[bool] = mapped_column(default=False, server_default=false())
    # The env var holding the secret its conversion postbacks are signed with.
    postback_secret_env: Mapped[str | None] = mapped_column(String(128))
    created_at: Mapped[Stamp]
    updated_at: Mapped[Stamp]
    archived_at: Mapped[MaybeStamp]

    lists: Mapped[list[MailingList]] = relationship(back_populates="partner")
    promotions: Mapped[list[Promotion]] = relationship(back_populates="partner")


class PartnerSecret(Base):
    """One of a partner's provider secrets at rest (see jvmail.secrets): ``name`` is the
    environment variable its `[provider]` names, ``token`` the Fernet token of the value, sealed
    together with the partner and the name so that it reads only from this row."""

    __tablename__ = "partner_secret"
    __table_args__ = (UniqueConstraint("partner_id", "name"),)

    id: Mapped[IntPk]
    partner_id: Mapped[int] = mapped_column(ForeignKey("partner.id"))
    name: Mapped[str] = mapped_column(String(128))
    token: Mapped[str] = mapped_column(Text)
    created_at: Mapped[Stamp]  # when this value was set
    rotated_at: Mapped[MaybeStamp]  # when it was last re-encrypted under a new master key


class MailingList(Base):
    """A list a partner owns; only that partner ever mails it."""

    __tablename__ = "mailing_list"

    id: Mapped[IntPk]
    slug: Mapped[Slug]
    partner_id: Mapped[int] = mapped_column(ForeignKey("partner.id"), index=True)
    name: Mapped[str] = mapped_column(String(500))
    subscribers_path: Mapped[str] = mapped_column(String(1000))
    niches: Mapped[JsonList]
    max_sends_per_week: Mapped[int]
    send_days: Mapped[JsonList]
    send_hour: Mapped[int]
    blackout_dates: Mapped[JsonList]
    click_rate: Mapped[float]
    digest: Mapped[bool]
    # partner slug -> share of this list's audience also on that partner's lists
    overlap: Mapped[dict[str, float]] = mapped_column(JSON, default=dict, server_default="{}")
    created_at: Mapped[Stamp]
    updated_at: Mapped[Stamp]
    archived_at: Mapped[MaybeStamp]

    partner: Mapped[Partner] = relationship(back_populates="lists")


class Subscriber(Base):
    """One address on one list. ``email`` is normalized (lowercased domain, NFC)."""

    __tablename__ = "subscriber"
    __table_args__ = (UniqueConstraint("list_id", "email"),)

    id: Mapped[BigPk]
    list_id: Mapped[int] = mapped_column(ForeignKey("mailing_list.id"))
    email: Mapped[str] = mapped_column(String(320))
    first_name: Mapped[str] = mapped_column(String(200), default="")
    attributes: Mapped[JsonDict]
    status: Mapped[SubscriberStatus] = mapped_column(
        _enum(SubscriberStatus), default=SubscriberStatus.SUBSCRIBED
    )
    source: Mapped[str] = mapped_column(String(32), default="import")
    created_at: Mapped[Stamp]
    updated_at: Mapped[Stamp]
    status_changed_at: Mapped[MaybeStamp]
    archived_at: Mapped[MaybeStamp]


class Suppression(Base):
    """An address the list owner must never mail again, across all of its lists."""

    __tablename__ = "suppression"
    __table_args__ = (UniqueConstraint("partner_id", "email"),)

    id: Mapped[IntPk]
    partner_id: Mapped[int] = mapped_column(ForeignKey("partner.id"))
    email: Mapped[str] = mapped_column(String(320))
    reason: Mapped[SuppressionReason] = mapped_column(_enum(SuppressionReason))
    source: Mapped[str] = mapped_column(String(64), default="")
    created_at: Mapped[Stamp]


class Promotion(Base):
    """An offer its owner wants other partners to mail to their lists."""

    __tablename__ = "promotion"

    id: Mapped[IntPk]
    slug: Mapped[Slug]
    partner_id: Mapped[int] = mapped_column(ForeignKey("partner.id"), index=True)
    subject: Mapped[str] = mapped_column(String(200))
    preheader: Mapped[str] = mapped_column(String(200), default="")
    html: Mapped[str] = mapped_column(Text)
    text: Mapped[str] = mapped_column(Text)
    landing_urls: Mapped[JsonList]
    window_start: Mapped[dt.date]
    window_end: Mapped[dt.date]
    niches: Mapped[JsonList]
    mailings_wanted: Mapped[int]
    exclude_partners: Mapped[JsonList]
    created_at: Mapped[Stamp]
    updated_at: Mapped[Stamp]
    archived_at: Mapped[MaybeStamp]

    partner: Mapped[Partner] = relationship(back_populates="promotions")


class Mailing(Base):
    """A planned send: ``sender`` mails ``promotion`` to its own ``mailing_list``."""

    __tablename__ = "mailing"

    id: Mapped[IntPk]
    promotion_id: Mapped[int] = mapped_column(ForeignKey("promotion.id"), index=True)
    sender_id: Mapped[int] = mapped_column(ForeignKey("partner.id"), index=True)
    list_id: Mapped[int] = mapped_column(ForeignKey("mailing_list.id"), index=True)
    scheduled_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))
    status: Mapped[MailingStatus] = mapped_column(
        _enum(MailingStatus, length=32), default=MailingStatus.PLANNED
    )
    expected_value: Mapped[float] = mapped_column(default=0.0)
    # The list's per-recipient rate (in the hub's value metric) the plan assumed; expected_value
    # / planned_rate is the mailing's exposure, against which its measured value is compared.
    # NULL for mailings planned before it was recorded.
    planned_rate: Mapped[float | None]
    reviewed_at: Mapped[MaybeStamp]  # when the sender approved or declined it
    review_note: Mapped[str] = mapped_column(String(500), default="", server_default="")
    error: Mapped[str | None] = mapped_column(String(1000))  # why it failed or paused
    # Where its links go, registered when it is first rendered: a click on link n goes to
    # links[n - 1], whatever the token says.
    links: Mapped[list[str] | None] = mapped_column(JSON(none_as_null=True))
    created_at: Mapped[Stamp]
    updated_at: Mapped[Stamp]


class Delivery(Base):
    """One message of one mailing to one subscriber: the unit of exactly-once sending."""

    __tablename__ = "delivery"
    # No index names a column a send changes (status, fence, lease, outcome): then each of a
    # row's three steps (claim, start, record) is a heap-only update that rewrites the row in
    # its own page, which the fill factor keeps room in, and touches no index. The rows of a
    # mailing in some state are found through its batches' id ranges (DeliveryBatch).
    __table_args__ = (
        UniqueConstraint("mailing_id", "subscriber_id"),
        {"postgresql_with": {"fillfactor": 50}},
    )

    id: Mapped[BigPk]
    mailing_id: Mapped[int] = mapped_column(ForeignKey("mailing.id"))
    subscriber_id: Mapped[int] = mapped_column(ForeignKey("subscriber.id"))
    status: Mapped[DeliveryStatus] = mapped_column(
        _enum(DeliveryStatus), default=DeliveryStatus.PENDING
    )
    attempts: Mapped[int] = mapped_column(default=0)
    fence: Mapped[int] = mapped_column(default=0)
    lease_until: Mapped[MaybeStamp]
    provider_message_id: Mapped[str | None] = mapped_column(String(255))
    error: Mapped[str | None] = mapped_column(String(1000))
    updated_at: Mapped[Stamp]


class DeliveryBatch(Base):
    """One batch of a mailing's deliveries (ids ``lo`` to ``hi``), as its send messages carry
    it: when a message for it was last enqueued, and when a worker last claimed rows of it.
    The relay judges from these whether a queued mailing's messages are lost."""

    __tablename__ = "delivery_batch"

    mailing_id: Mapped[int] = mapped_column(ForeignKey("mailing.id"), primary_key=True)
    lo: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=False
    )
    hi: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"))
    enqueued_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))
    claimed_at: Mapped[MaybeStamp]
    # Set by every claim of its rows, cleared by the tick once none of them is claimed, in
    # flight or in doubt: the tick looks for ended leases and rows to reconcile here only.
    open: Mapped[bool] = mapped_column(default=False, server_default=false())
    # The batch's rows the provider accepted and refused, as of its last send: a mailing's
    # refusal share is the sum over its batches, not a count of its rows after every batch.
    accepted: Mapped[int] = mapped_column(default=0, server_default="0")
    refused: Mapped[int] = mapped_column(default=0, server_default="0")


class TrackingEvent(Base):
    """Something that happened to a delivery, normalized, with the provider's raw payload."""

    __tablename__ = "tracking_event"
    __table_args__ = (UniqueConstraint("provider", "provider_event_id", "recipient_hash", "type"),)

    id: Mapped[BigPk]
    delivery_id: Mapped[int | None] = mapped_column(ForeignKey("delivery.id"), index=True)
    mailing_id: Mapped[int | None] = mapped_column(ForeignKey("mailing.id"), index=True)
    type: Mapped[EventType] = mapped_column(_enum(EventType))
    provider: Mapped[str] = mapped_column(String(16))
    provider_event_id: Mapped[str] = mapped_column(String(255))
    recipient_hash: Mapped[str] = mapped_column(String(64), default="")
    human: Mapped[bool] = mapped_column(default=True)
    bounce: Mapped[str] = mapped_column(String(16), default="none", server_default="none")
    link_index: Mapped[int | None]  # which link a click was on
    amount: Mapped[float | None]  # a conversion's amount (negative: a refund)
    occurred_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))
    received_at: Mapped[Stamp]
    raw: Mapped[JsonDict]


class WebhookNonce(Base):
    """A signed webhook's one-time token (Mailgun's), kept to refuse a replay of it."""

    __tablename__ = "webhook_nonce"

    provider: Mapped[str] = mapped_column(String(16), primary_key=True)
    token: Mapped[str] = mapped_column(String(255), primary_key=True)
    seen_at: Mapped[Stamp]


class WebhookInbox(Base):
    """A verified webhook request's events, committed before the request is answered; the
    tracking server's drain stores them (see jvmail.tracking.inbox) and deletes the row in the
    same transaction."""

    __tablename__ = "webhook_inbox"

    id: Mapped[BigPk]
    partner_id: Mapped[int] = mapped_column(ForeignKey("partner.id"))  # the account's partner
    provider: Mapped[str] = mapped_column(String(16))
    received_at: Mapped[Stamp]
    events: Mapped[bytes] = mapped_column(LargeBinary)  # JSON lines (jvmail.tracking.inbox)
    count: Mapped[int]  # how many events
    # Drains that failed on this row alone; it is set aside once they reach the limit.
    attempts: Mapped[int] = mapped_column(default=0, server_default="0")
    error: Mapped[str | None] = mapped_column(String(1000))


class SchedulerLease(Base):
    """Which `jvmail scheduler` process acts: the holder renews it; another takes it only once
    it has expired."""

    __tablename__ = "scheduler_lease"

    name: Mapped[str] = mapped_column(String(32), primary_key=True)
    holder: Mapped[str] = mapped_column(String(128))
    expires_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))


class StatementSend(Base):
    """One weekly statement sent to one partner: (partner, week) is sent once; ``copy`` counts
    deliberate resends."""

    __tablename__ = "statement_send"
    __table_args__ = (UniqueConstraint("partner_id", "week", "copy"),)

    id: Mapped[IntPk]
    partner_id: Mapped[int] = mapped_column(ForeignKey("partner.id"))
    week: Mapped[str] = mapped_column(String(8))
    copy: Mapped[int] = mapped_column(default=0)
    status: Mapped[str] = mapped_column(String(16), default="sending")
    message_id: Mapped[str | None] = mapped_column(String(255))
    error: Mapped[str | None] = mapped_column(String(1000))
    created_at: Mapped[Stamp]
    sent_at: Mapped[MaybeStamp]


class LedgerEntry(Base):
    """Value ``giver`` delivered to ``receiver`` through one mailing. Never updated or deleted."""

    __tablename__ = "ledger_entry"

    id: Mapped[BigPk]
    mailing_id: Mapped[int | None] = mapped_column(ForeignKey("mailing.id"), index=True)
    giver_id: Mapped[int] = mapped_column(ForeignKey("partner.id"), index=True)
    receiver_id: Mapped[int] = mapped_column(ForeignKey("partner.id"), index=True)
    kind: Mapped[LedgerKind] = mapped_column(_enum(LedgerKind))
    value: Mapped[float]
    note: Mapped[str] = mapped_column(String(500), default="")
    created_at: Mapped[Stamp]
