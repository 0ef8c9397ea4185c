"""A provider's events about a statement carry its metadata key (``jv_statement``), and no
webhook parser reads that as a subscriber's delivery: the event names no delivery (so it is
stored unattached: no suppression, no credit, no delivery settled by it). The same samples with
``jv_delivery`` do name one, so each check could fail."""

from __future__ import annotations

import json
from typing import Any

import pytest

from jvmail.reports.send import STATEMENT_KEY
from jvmail.tracking.events import Event
from jvmail.tracking.webhooks import mailgun, postmark, sendgrid, ses
from tests.tracking.signing import (
    CERT_URL,
    NOW,
    SnsSigner,
    basic_auth,
    ec_key,
    load_fixture,
    mailgun_body,
    sendgrid_headers,
)

TOPIC = "arn:aws:sns:eu-west-1:123456789012:jvmail-ses-events"


def _sendgrid(metadata: dict[str, str]) -> list[Event]:
    event = load_fixture("sendgrid", "delivered.json")
    del event["jv_delivery"]
    body = json.dumps([event | metadata]).encode()
    private, public = ec_key()
    keys = sendgrid.SendGridKeys((public,))
    return sendgrid.parse(sendgrid_headers(private, body), body, keys, NOW)


def _mailgun(metadata: dict[str, str]) -> list[Event]:
    event = load_fixture("mailgun", "delivered.json")
    event["user-variables"] = metadata
    body = mailgun_body("signing-key", event, "a" * 50)
    return mailgun.parse({}, body, mailgun.MailgunKeys(("signing-key",)), NOW)


def _postmark(metadata: dict[str, str]) -> list[Event]:
    record = load_fixture("postmark", "Delivery.json")
    record["Metadata"] = metadata
    keys = postmark.PostmarkKeys((("jvmail", "pw"),))
    return postmark.parse(basic_auth("jvmail", "pw"), json.dumps(record).encode(), keys, NOW)


def _ses(metadata: dict[str, str]) -> list[Event]:
    event = load_fixture("ses", "Delivery.json")
    tags = {k: v for k, v in event["mail"]["tags"].items() if k != "jv_delivery"}
    event["mail"]["tags"] = tags | {k: [v] for k, v in metadata.items()}
    signer = SnsSigner.create()
    notification: dict[str, Any] = {
        "Type": "Notification",
        "MessageId": "22b80b92-fdea-4c2c-8f9d-bdfb0c7bf324",
        "TopicArn": TOPIC,
        "Message": json.dumps(event),
        "Timestamp": NOW.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
    }
    body = json.dumps(signer.sign(notification, cert_url=CERT_URL)).encode()
    ses.clear_certificate_cache()
    keys = ses.SesKeys(frozenset({TOPIC}), fetch=lambda url: signer.pem)
    try:
        return ses.parse({}, body, keys, NOW)
    finally:
        ses.clear_certificate_cache()


@pytest.mark.parametrize("parse", [_sendgrid, _mailgun, _postmark, _ses], ids=lambda p: p.__name__)
def test_a_statements_events_name_no_delivery(parse: Any) -> None:
    [statement] = parse({STATEMENT_KEY: "4711"})
    assert statement.delivery_id is None
    [mailing] = parse({"jv_delivery": "4711"})
    assert mailing.delivery_id == 4711
