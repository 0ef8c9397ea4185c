"""Building a sender's provider from its synced [provider] table; secrets from the environment."""

from __future__ import annotations

from pathlib import Path

import pytest

from jvmail.providers.base import ProviderError
from jvmail.providers.factory import build_provider
from jvmail.providers.mailgun import MailgunProvider
from jvmail.providers.outbox import OutboxProvider
from jvmail.providers.postmark import PostmarkProvider
from jvmail.providers.sendgrid import SendGridProvider
from jvmail.providers.ses import SesProvider
from jvmail.providers.smtp import SmtpProvider

SMTP = {
    "kind": "smtp",
    "host": "smtp.sender.example",
    "port": 2525,
    "security": "tls",
    "username_env": "SENDER_SMTP_USER",
    "password_env": "SENDER_SMTP_PASSWORD",
}


def test_smtp_reads_its_secrets_from_the_named_variables() -> None:
    env = {"SENDER_SMTP_USER": "mailer", "SENDER_SMTP_PASSWORD": "pw"}
    provider = build_provider("sender", "team@sender.example", SMTP, env=env)
    assert isinstance(provider, SmtpProvider)
    assert (provider.host, provider.port, provider.security) == ("smtp.sender.example", 2525, "tls")
    assert (provider.username, provider.password) == ("mailer", "pw")
    assert provider.from_addr == "team@sender.example"


def test_a_missing_secret_names_the_variable_and_is_not_worth_retrying() -> None:
    with pytest.raises(ProviderError) as caught:
        build_provider("sender", "team@sender.example", SMTP, env={"SENDER_SMTP_USER": "m"})
    assert "SENDER_SMTP_PASSWORD" in caught.value.message
    assert "partner sender" in caught.value.message
    assert not caught.value.transient
    assert "export SENDER_SMTP_PASSWORD" in caught.value.fix


def test_an_outbox_overrides_every_account(tmp_path: Path) -> None:
    provider = build_provider(
        "sender", "t@s.example", {"kind": "sendgrid"}, outbox=tmp_path, env={}
    )
    assert isinstance(provider, OutboxProvider)
    assert provider.folder == tmp_path


def test_sendgrid_takes_its_key_and_the_partners_name() -> None:
    account = {"kind": "sendgrid", "api_key_env": "SENDER_SG_KEY"}
    provider = build_provider(
        "sender", "t@s.example", account, name="Sender Co", env={"SENDER_SG_KEY": "SG.k"}
    )
    assert isinstance(provider, SendGridProvider)
    assert (provider.api_key, provider.from_addr, provider.from_name) == (
        "SG.k",
        "t@s.example",
        "Sender Co",
    )
    with pytest.raises(ProviderError, match="SENDER_SG_KEY"):
        build_provider("sender", "t@s.example", account, env={})


def test_postmark_takes_its_server_token_and_stream() -> None:
    account = {"kind": "postmark", "server_token_env": "PM_TOKEN", "message_stream": "offers"}
    provider = build_provider("sender", "t@s.example", account, env={"PM_TOKEN": "tok"})
    assert isinstance(provider, PostmarkProvider)
    assert (provider.token, provider.stream) == ("tok", "offers")


def test_mailgun_takes_its_key_domain_and_region() -> None:
    account = {"kind": "mailgun", "api_key_env": "MG_KEY", "domain": "mg.s.example", "region": "eu"}
    provider = build_provider("sender", "t@s.example", account, env={"MG_KEY": "key-1"})
    assert isinstance(provider, MailgunProvider)
    assert (provider.api_key, provider.domain, provider.api) == (
        "key-1",
        "mg.s.example",
        "https://api.eu.mailgun.net",
    )


def test_ses_takes_its_region_keys_and_configuration_set() -> None:
    account = {
        "kind": "ses",
        "region": "eu-west-1",
        "access_key_id_env": "AWS_ID",
        "secret_access_key_env": "AWS_SECRET",
        "configuration_set": "jvmail-events",
    }
    env = {"AWS_ID": "AKIA1", "AWS_SECRET": "s"}
    provider = build_provider("sender", "t@s.example", account, env=env)
    assert isinstance(provider, SesProvider)
    assert provider.configuration_set == "jvmail-events"
    assert provider.client.meta.region_name == "eu-west-1"
    with pytest.raises(ProviderError, match="AWS_SECRET"):
        build_provider("sender", "t@s.example", account, env={"AWS_ID": "AKIA1"})


def test_an_unknown_kind_says_so() -> None:
    with pytest.raises(ProviderError, match="sending through carrier-pigeon is not available"):
        build_provider("sender", "t@s.example", {"kind": "carrier-pigeon"}, env={})
