"""The worker processes of the soak: `dramatiq tests.faults.soak_worker`.

Production's own boot (:mod:`jvmail.dispatch.boot`: the Redis broker and namespace, the
RedisLimiter, the lease and the relay delay from JVMAIL_LEASE_SECONDS), with one change: each
mailing goes through its sender's account at a local fake of that account's provider (the
sender's ``provider_kind``: SendGrid, Mailgun, Postmark or SES), one client per sender and
worker thread, as production builds them.

* ``JVMAIL_SOAK_PROVIDERS``: JSON, provider kind -> the fake's base URL.
* ``JVMAIL_SOAK_TIMEOUT``: the clients' read timeout, seconds.
* ``JVMAIL_TEST_BATCH``: deliveries per batch message (default: the pipeline's).
"""

from __future__ import annotations

import json
import os

from jvmail.dispatch import boot
from jvmail.dispatch.accounts import senders_accounts
from jvmail.providers.base import Provider
from jvmail.providers.http import TIMEOUT
from jvmail.providers.mailgun import MailgunProvider
from jvmail.providers.postmark import PostmarkProvider
from jvmail.providers.sendgrid import SendGridProvider
from jvmail.providers.ses import SesProvider

# The accounts' credentials, as the fakes check them.
SENDGRID_KEY = "SG.soak"
MAILGUN_KEY = "key-soak"
MAILGUN_DOMAIN = "mg.soak.example"
POSTMARK_TOKEN = "pm-soak-token"
SES_KEY_ID = "AKIASOAKEXAMPLE"
SES_REGION = "us-east-1"

_urls: dict[str, str] = json.loads(os.environ.get("JVMAIL_SOAK_PROVIDERS", "{}"))
_timeout = (TIMEOUT[0], float(os.environ.get("JVMAIL_SOAK_TIMEOUT", TIMEOUT[1])))


def client(kind: str, from_addr: str, from_name: str) -> Provider:
    """A client of the fake ``kind`` provider, from the sender's address and name."""
    url = _urls[kind]
    if kind == "sendgrid":
        return SendGridProvider(
            SENDGRID_KEY, from_addr=from_addr, from_name=from_name, api=url, timeout=_timeout
        )
    if kind == "mailgun":
        return MailgunProvider(
            MAILGUN_KEY,
            MAILGUN_DOMAIN,
            from_addr=from_addr,
            from_name=from_name,
            api=url,
            timeout=_timeout,
        )
    if kind == "postmark":
        return PostmarkProvider(
            POSTMARK_TOKEN, from_addr=from_addr, from_name=from_name, api=url, timeout=_timeout
        )
    if kind == "ses":
        return SesProvider(
            SES_REGION,
            from_addr=from_addr,
            from_name=from_name,
            access_key_id=SES_KEY_ID,
            secret_access_key="soak-secret",
            endpoint_url=url,
            timeout=_timeout,
        )
    raise ValueError(f"no fake for {kind}")


runtime = boot._runtime  # the actors read runtime.provider and runtime.batch at each message
# Mailing id -> its sender's fake, one client per sender and thread.
runtime.provider = senders_accounts(
    runtime, None, lambda sender: client(sender.provider_kind, sender.contact_email, sender.name)
)
runtime.batch = int(os.environ.get("JVMAIL_TEST_BATCH", runtime.batch))
broker, actors = boot.broker, boot.actors
