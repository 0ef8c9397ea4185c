"""The config schema: frozen pydantic models for `jvmail.toml` and `partners/*.toml`.

Every model forbids unknown keys, so a typo is an error rather than a silently ignored setting.
Secrets never appear here: a provider account names the environment variables that hold them.
Cross-file rules (unique ids, references between partners, files that must exist) are checked by
:mod:`jvmail.config.loader`, which sees every file at once.
"""

from __future__ import annotations

import datetime as dt
import enum
import zoneinfo
from typing import Annotated, Literal, NoReturn

from pydantic import (
    AfterValidator,
    AnyHttpUrl,
    BaseModel,
    ConfigDict,
    EmailStr,
    Field,
    StringConstraints,
    model_validator,
)
from pydantic_core import PydanticCustomError

__all__ = [
    "ENV_NAME_PATTERN",
    "PROVIDER_KINDS",
    "REFUSED_KEYS",
    "SLUG_PATTERN",
    "WEEKDAYS",
    "HubFile",
    "HubSettings",
    "ListConfig",
    "MailgunAccount",
    "OutboxAccount",
    "PartnerConfig",
    "PostmarkAccount",
    "PromotionConfig",
    "ProviderAccount",
    "SchedulerSettings",
    "SendGridAccount",
    "SesAccount",
    "SmtpAccount",
    "ValueMetric",
    "Weekday",
]

SLUG_PATTERN = r"^[a-z0-9]+(?:-[a-z0-9]+)*$"
ENV_NAME_PATTERN = r"^[A-Z][A-Z0-9_]*$"

Slug = Annotated[str, StringConstraints(pattern=SLUG_PATTERN, max_length=64)]
EnvVarName = Annotated[str, StringConstraints(pattern=ENV_NAME_PATTERN, max_length=128)]
Text = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=500)]
Weekday = Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
WEEKDAYS: tuple[Weekday, ...] = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


def _check_timezone(name: str) -> str:
    try:
        zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError) as exc:
        raise PydanticCustomError(
            "jvmail",
            "unknown time zone {name!r}",
            {"name": name, "fix": "use an IANA name such as 'Europe/London' or 'America/Denver'"},
        ) from exc
    return name


def _check_base_url(url: AnyHttpUrl) -> str:
    text = str(url).rstrip("/")
    if url.query or url.fragment:
        raise PydanticCustomError(
            "jvmail",
            "base_url must not carry a query or fragment",
            {"fix": "give the public root of the tracking server, e.g. 'https://jv.example.org'"},
        )
    return text


def _unique(items: list[str]) -> list[str]:
    if len(set(items)) != len(items):
        raise PydanticCustomError("jvmail", "an entry is repeated", {"fix": "list each value once"})
    return items


def _not_in_config(url: str | None) -> NoReturn:
    # Every command must open the same database and Redis, and only `jvmail sync` reads the
    # config directory: a URL here would reach that one command and no other.
    raise PydanticCustomError(
        "jvmail",
        "belongs in the environment, not in jvmail.toml: every command must reach the same one",
        {
            "fix": "remove the line; export JVMAIL_DATABASE_URL (or pass --db) and "
            "JVMAIL_REDIS_URL wherever jvmail runs"
        },
    )


NotInConfig = Annotated[str | None, AfterValidator(_not_in_config)]
REFUSED_KEYS = ("database_url", "redis_url")  # accepted by name only to say where they go
Timezone = Annotated[str, AfterValidator(_check_timezone)]
BaseUrl = Annotated[AnyHttpUrl, AfterValidator(_check_base_url)]
SlugList = Annotated[list[Slug], AfterValidator(_unique)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=True)


class ValueMetric(enum.StrEnum):
    """What counts as value given: the unit of every balance in the ledger."""

    CLICKS = "clicks"
    DELIVERED = "delivered"
    CONVERSIONS = "conversions"


class HubSettings(_Strict):
    """The `[hub]` table of `jvmail.toml`."""

    name: Text
    base_url: BaseUrl
    timezone: Timezone = "UTC"
    value_metric: ValueMetric = ValueMetric.CLICKS
    report_day: Weekday = "mon"
    credit_window_days: Annotated[int, Field(ge=1, le=90)] = 14
    # An address that soft-bounces on this many distinct days (no delivery in between) is
    # suppressed for that list owner.
    soft_bounce_days: Annotated[int, Field(ge=1, le=30)] = 3
    # `jvmail scheduler`: plan next week on plan_day at plan_hour (hub time); send statements
    # on report_day from report_hour (each partner's time); hold mailings this late.
    plan_day: Weekday = "thu"
    plan_hour: Annotated[int, Field(ge=0, le=23)] = 9
    report_hour: Annotated[int, Field(ge=0, le=23)] = 8
    missed_grace_hours: Annotated[int, Field(ge=1, le=168)] = 6
    # Refused with a fix: the URLs come from the environment, the same for every command.
    database_url: NotInConfig = None
    redis_url: NotInConfig = None
    # `[hub.provider]`: the hub's own sending account, for the weekly statements; the same keys
    # as a partner's `[provider]`. Default: .eml files in the `outbox` folder.
    provider: ProviderAccount = Field(default_factory=lambda: OutboxAccount(kind="outbox"))


class SchedulerSettings(_Strict):
    """The optional `[scheduler]` table of `jvmail.toml`: how the weekly plan trades value for
    balance."""

    pair_cap: Annotated[int, Field(ge=1, le=14)] = 2
    balance_weight: Annotated[float, Field(gt=0.5, le=10)] = 1.0
    excess_weight: Annotated[float, Field(ge=0, le=100)] = 2.0
    tolerance: Annotated[float, Field(ge=0, le=1)] = 0.15
    niche_groups: dict[Slug, Slug] = {}
    # Planner inputs, not solver weights: they shape the rates and balances the solver sees.
    conversion_rate: Annotated[float, Field(gt=0, le=1)] = 0.02
    debt_decay: Annotated[float, Field(ge=0, le=1)] = 0.0


class HubFile(_Strict):
    """The whole of `jvmail.toml`."""

    hub: HubSettings
    scheduler: SchedulerSettings = SchedulerSettings()


class _Account(_Strict):
    from_email: EmailStr | None = None
    from_name: Text | None = None
    # The account's own sending limits: messages per second, and per day (UTC days).
    max_per_second: Annotated[float, Field(gt=0, le=100_000)] | None = None
    max_per_day: Annotated[int, Field(ge=1)] | None = None


class OutboxAccount(_Account):
    """Writes each message as an .eml file into ``directory`` (relative to the config dir)."""

    kind: Literal["outbox"]
    directory: str = "outbox"


class SendGridAccount(_Account):
    kind: Literal["sendgrid"]
    api_key_env: EnvVarName
    webhook_public_key_env: EnvVarName | None = None


class MailgunAccount(_Account):
    kind: Literal["mailgun"]
    domain: Annotated[str, StringConstraints(min_length=3, max_length=253)]
    region: Literal["us", "eu"] = "us"
    api_key_env: EnvVarName
    webhook_signing_key_env: EnvVarName | None = None


class PostmarkAccount(_Account):
    kind: Literal["postmark"]
    server_token_env: EnvVarName
    message_stream: Slug = "broadcast"
    webhook_username: Text | None = None
    webhook_password_env: EnvVarName | None = None


class SesAccount(_Account):
    kind: Literal["ses"]
    region: Annotated[str, StringConstraints(pattern=r"^[a-z]{2}(-[a-z]+)+-\d$")]
    access_key_id_env: EnvVarName | None = None
    secret_access_key_env: EnvVarName | None = None
    configuration_set: Text | None = None
    sns_topic_arn: Text | None = None


class SmtpAccount(_Account):
    kind: Literal["smtp"]
    host: Text
    port: Annotated[int, Field(ge=1, le=65535)] = 587
    security: Literal["starttls", "tls", "none"] = "starttls"
    username_env: EnvVarName | None = None
    password_env: EnvVarName | None = None


PROVIDER_KINDS = frozenset({"outbox", "sendgrid", "mailgun", "postmark", "ses", "smtp"})

ProviderAccount = Annotated[
    OutboxAccount | SendGridAccount | MailgunAccount | PostmarkAccount | SesAccount | SmtpAccount,
    Field(discriminator="kind"),
]


class ListConfig(_Strict):
    """One `[[lists]]` entry: a mailing list the partner owns and mails itself."""

    id: Slug
    name: Text
    subscribers: Annotated[str, StringConstraints(min_length=1)]
    niches: Annotated[SlugList, Field(min_length=1)]
    max_sends_per_week: Annotated[int, Field(ge=1, le=14)] = 1
    send_days: Annotated[list[Weekday], Field(min_length=1)] = ["tue", "wed", "thu"]
    send_hour: Annotated[int, Field(ge=0, le=23)] = 9
    blackout_dates: list[dt.date] = []
    click_rate: Annotated[float, Field(gt=0, le=1)] = 0.02
    digest: bool = False
    overlap: dict[Slug, Annotated[float, Field(ge=0, lt=1)]] = {}


class PromotionConfig(_Strict):
    """One `[[promotions]]` entry: an offer the partner wants others to mail."""

    id: Slug
    subject: Annotated[str, StringConstraints(min_length=1, max_length=200)]
    preheader: Annotated[str, StringConstraints(max_length=200)] = ""
    html: str | None = None
    html_template: str | None = None
    text: str | None = None
    text_template: str | None = None
    landing_urls: Annotated[list[AnyHttpUrl], Field(min_length=1)]
    window_start: dt.date
    window_end: dt.date
    niches: Annotated[SlugList, Field(min_length=1)]
    mailings_wanted: Annotated[int, Field(ge=1, le=100)] = 1
    exclude_partners: SlugList = []

    @model_validator(mode="after")
    def _bodies_and_window(self) -> PromotionConfig:
        for part in ("html", "text"):
            inline, path = getattr(self, part), getattr(self, f"{part}_template")
            if (inline is None) == (path is None):
                raise PydanticCustomError(
                    "jvmail",
                    "give exactly one of `{part}` and `{part}_template`",
                    {"part": part, "fix": f"keep either the inline `{part}` or the file path"},
                )
        if self.window_end < self.window_start:
            raise PydanticCustomError(
                "jvmail",
                "window_end {end} is before window_start {start}",
                {
                    "end": self.window_end.isoformat(),
                    "start": self.window_start.isoformat(),
                    "fix": "make window_end the same day as window_start or later",
                },
            )
        return self


class PartnerConfig(_Strict):
    """A whole `partners/<id>.toml` file."""

    id: Slug
    name: Text
    contact_email: EmailStr
    postal_address: Annotated[str, StringConstraints(min_length=10, max_length=300)]
    timezone: Timezone = "UTC"
    categories: Annotated[SlugList, Field(min_length=1)]
    wants_to_meet: SlugList = []
    provider: ProviderAccount
    approve_mailings: bool = False
    # The env var holding the secret this partner's conversion postbacks are signed with.
    postback_secret_env: EnvVarName | None = None
    lists: list[ListConfig] = []
    promotions: list[PromotionConfig] = []
