"""Real signatures for webhook tests: ECDSA for SendGrid, HMAC for Mailgun, basic auth for
Postmark, and an RSA key with a self-signed certificate for SNS. Built here independently of the
parsers, from the providers' descriptions, so a parser bug cannot sign its own way to green.

The payloads they sign are the provider samples in tests/fixtures/webhooks (see its README)."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.oid import NameOID

NOW = dt.datetime(2024, 5, 14, 12, 0, 0, tzinfo=dt.UTC)


def unix(when: dt.datetime) -> int:
    return int(when.timestamp())


# Provider samples ----------------------------------------------------------------------------

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "webhooks"


def fixture_names(provider: str) -> list[str]:
    """The sample files of ``provider`` (sendgrid, mailgun, postmark, ses), sorted."""
    return sorted(path.name for path in (FIXTURES / provider).glob("*.json"))


def load_fixture(provider: str, name: str) -> Any:
    """A fresh copy of one unsigned provider sample."""
    return json.loads((FIXTURES / provider / name).read_text(encoding="utf-8"))


# SendGrid ----------------------------------------------------------------------------------


def ec_key() -> tuple[ec.EllipticCurvePrivateKey, str]:
    """A P-256 key and its public half as the dashboard shows it (base64 DER SPKI)."""
    private = ec.generate_private_key(ec.SECP256R1())
    der = private.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return private, base64.b64encode(der).decode()


def sendgrid_headers(
    private: ec.EllipticCurvePrivateKey, body: bytes, when: dt.datetime = NOW
) -> dict[str, str]:
    timestamp = str(unix(when))
    signature = private.sign(timestamp.encode() + body, ec.ECDSA(hashes.SHA256()))
    return {
        "x-twilio-email-event-webhook-signature": base64.b64encode(signature).decode(),
        "x-twilio-email-event-webhook-timestamp": timestamp,
        "content-type": "application/json",
    }


# Mailgun -----------------------------------------------------------------------------------


def mailgun_body(key: str, event_data: object, token: str, when: dt.datetime = NOW) -> bytes:
    timestamp = str(unix(when))
    digest = hmac.new(key.encode(), (timestamp + token).encode(), hashlib.sha256).hexdigest()
    signature = {"timestamp": timestamp, "token": token, "signature": digest}
    return json.dumps({"signature": signature, "event-data": event_data}).encode()


# Postmark ----------------------------------------------------------------------------------


def basic_auth(user: str, password: str) -> dict[str, str]:
    encoded = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"authorization": f"Basic {encoded}"}


# SNS ---------------------------------------------------------------------------------------

CERT_URL = "https://sns.eu-west-1.amazonaws.com/SimpleNotificationService-0123456789abcdef.pem"
_NOTIFICATION = ("Message", "MessageId", "Subject", "Timestamp", "TopicArn", "Type")
_SUBSCRIPTION = ("Message", "MessageId", "SubscribeURL", "Timestamp", "Token", "TopicArn", "Type")


@dataclass(frozen=True)
class SnsSigner:
    """An RSA key with a self-signed certificate standing in for the SNS signing certificate."""

    key: rsa.RSAPrivateKey
    pem: bytes

    @classmethod
    def create(cls) -> SnsSigner:
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "sns.amazonaws.com")])
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(NOW - dt.timedelta(days=1))
            .not_valid_after(NOW + dt.timedelta(days=365))
            .sign(key, hashes.SHA256())
        )
        return cls(key, cert.public_bytes(serialization.Encoding.PEM))

    def sign(
        self, message: dict[str, Any], version: str = "2", cert_url: str = CERT_URL
    ) -> dict[str, Any]:
        """``message`` with SignatureVersion, SigningCertURL and a genuine Signature."""
        fields = _NOTIFICATION if message["Type"] == "Notification" else _SUBSCRIPTION
        canonical = "".join(f"{k}\n{message[k]}\n" for k in fields if k in message)
        algorithm = hashes.SHA1() if version == "1" else hashes.SHA256()
        signature = self.key.sign(canonical.encode(), padding.PKCS1v15(), algorithm)
        return message | {
            "SignatureVersion": version,
            "Signature": base64.b64encode(signature).decode(),
            "SigningCertURL": cert_url,
        }
