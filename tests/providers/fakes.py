"""Local servers that speak the providers' documented send APIs, for the provider tests.

Each checks auth, validates the request body against the provider's published schema (copied
under tests/providers/specs, with their sources and licences in its README), enforces the
documented limits, answers with the documented success and error bodies, and records every
recipient it accepted. Tests
can script answers: a status with headers, or a hang past the client's timeout.
"""

from __future__ import annotations

import base64
import contextlib
import email.policy
import json
import re
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from email.parser import BytesParser
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from jsonschema import Draft4Validator, Draft202012Validator

from jvmail.dispatch.mime import skeleton
from jvmail.dispatch.render import Mailer, markers, render
from jvmail.providers.base import OutboundBatch, Recipient

SPECS = Path(__file__).parent / "specs"
MAILER = Mailer("Sender Co", "1 Canal Street, Springfield", "Weekly", "Owner Inc")


def sample_batch(
    emails: list[str], mailing_id: int, name: Callable[[int], str] = lambda n: f"<R{n}>"
) -> OutboundBatch:
    """A rendered mailing with one link, to ``emails``: recipient n (from 1) is called
    ``name(n)`` and has the links https://jv.example/c/n and /u/n."""
    rendered = render(
        "offer",
        "Hi {{ first_name }}",
        "<p>Hi {{ first_name }}, <a href='https://o.example/x'>x</a></p>",
        "Hi {{ first_name }}, https://o.example/x",
        MAILER,
    )
    layout = skeleton(
        rendered,
        from_name="Sender Co",
        from_addr="news@s.example",
        mailing_id=mailing_id,
        domain="jv.example",
    )
    people = tuple(
        Recipient(
            n, e, markers(name(n), [f"https://jv.example/c/{n}"], f"https://jv.example/u/{n}", "o")
        )
        for n, e in enumerate(emails, start=1)
    )
    return OutboundBatch(mailing_id, layout, "mailto:news@s.example", people)


def _scripted(fake: Fake, h: BaseHTTPRequestHandler) -> Scripted | None:
    """Answer with the next scripted answer, if the test queued one (after its hang)."""
    if not fake.script:
        return None
    scripted = fake.script.pop(0)
    time.sleep(scripted.hang)  # the fake provider being slow, not a test waiting
    _answer(h, scripted.status, scripted.body, scripted.headers)
    return scripted


@dataclass
class Scripted:
    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: dict[str, Any] = field(default_factory=dict)
    hang: float = 0.0  # seconds to wait before answering (past the client's timeout)


@dataclass
class Fake:
    url: str = ""
    accepted: list[tuple[str, str]] = field(default_factory=list)  # (address, delivery id)
    requests: int = 0
    script: list[Scripted] = field(default_factory=list)
    bodies: list[dict[str, Any]] = field(default_factory=list)


def _error(message: str) -> dict[str, Any]:
    return {"errors": [{"message": message, "field": None}]}


def _sendgrid_validator() -> Draft202012Validator:
    spec = json.loads((SPECS / "sendgrid" / "tsg_mail_v3.json").read_text())
    root = dict(spec)
    root["$ref"] = "#/components/requestBodies/PostMailSend/content/application~1json/schema"
    return Draft202012Validator(root)


def sendgrid_handler(fake: Fake, key: str) -> Callable[[BaseHTTPRequestHandler], None]:
    validator = _sendgrid_validator()

    def handle(h: BaseHTTPRequestHandler) -> None:
        fake.requests += 1
        raw = h.rfile.read(int(h.headers.get("Content-Length", "0")))
        scripted = _scripted(fake, h)
        if scripted is not None:
            if scripted.status == 202:  # taken, though the answer came too late
                _take(fake, json.loads(raw))
            return
        if h.path != "/v3/mail/send":
            _answer(h, 404, _error("not found"))
            return
        if h.headers.get("Authorization") != f"Bearer {key}":
            _answer(h, 401, _error("authorization required"))
            return
        if len(raw) >= 30 * 1024 * 1024:
            _answer(h, 413, _error("content too large"))
            return
        try:
            body = json.loads(raw)
        except ValueError:
            _answer(h, 400, _error("invalid request"))
            return
        problems = sorted(e.message for e in validator.iter_errors(body))
        recipients = sum(len(p.get("to", [])) for p in body.get("personalizations", []))
        if recipients > 1000:
            problems.append(f"{recipients} recipients in one request; the limit is 1000")
        if problems:
            _answer(h, 400, {"errors": [{"message": m, "field": None} for m in problems]})
            return
        _take(fake, body)
        _answer(h, 202, None, {"X-Message-Id": f"sg{fake.requests}"})

    return handle


def postmark_handler(fake: Fake, token: str) -> Callable[[BaseHTTPRequestHandler], None]:
    spec = json.loads((SPECS / "postmark" / "sending.swagger.json").read_text())
    root = dict(spec)
    root["$ref"] = "#/definitions/SendEmailBatchRequest"
    validator = Draft4Validator(root)

    def handle(h: BaseHTTPRequestHandler) -> None:
        fake.requests += 1
        raw = h.rfile.read(int(h.headers.get("Content-Length", "0")))
        if _scripted(fake, h) is not None:
            return
        if h.headers.get("X-Postmark-Server-Token") != token:
            _answer(h, 401, {"ErrorCode": 10, "Message": "Bad or missing Server API token."})
            return
        body = json.loads(raw)
        problems = sorted(e.message for e in validator.iter_errors(body))
        if isinstance(body, list) and len(body) > 500:
            problems.append(f"{len(body)} messages; a batch takes at most 500")
        if problems:
            _answer(h, 422, {"ErrorCode": 300, "Message": "; ".join(problems)})
            return
        results = []
        for n, message in enumerate(body):
            if message["To"].startswith("inactive"):
                results.append(
                    {
                        "ErrorCode": 406,
                        "Message": "You tried to send to a recipient that has been marked as "
                        "inactive.",
                        "To": message["To"],
                    }
                )
                continue
            fake.accepted.append((message["To"], message["Metadata"]["jv_delivery"]))
            results.append(
                {
                    "ErrorCode": 0,
                    "Message": "OK",
                    "MessageID": f"pm-{fake.requests}-{n}",
                    "To": message["To"],
                    "SubmittedAt": "2026-12-01T09:00:00Z",
                }
            )
        fake.bodies.append({"messages": body})
        _answer(h, 200, results)

    return handle


def _multipart(content_type: str, raw: bytes) -> list[tuple[str, str]]:
    head = f"Content-Type: {content_type}\r\n\r\n".encode()
    message = BytesParser(policy=email.policy.HTTP).parsebytes(head + raw)
    fields = []
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        payload = part.get_payload(decode=True)
        assert isinstance(name, str)
        assert isinstance(payload, bytes)
        fields.append((name, payload.decode()))
    return fields


def mailgun_handler(fake: Fake, key: str, domain: str) -> Callable[[BaseHTTPRequestHandler], None]:
    spec = json.loads((SPECS / "mailgun" / "messages.openapi.json").read_text())
    root = dict(spec)
    root["$ref"] = (
        "#/components/schemas/POST-v3-domain_name-messages-multipart-form-data-RequestBody"
    )
    validator = Draft202012Validator(root)
    arrays = {"to", "cc", "bcc", "o:tag", "attachment", "inline"}
    expected_auth = "Basic " + base64.b64encode(f"api:{key}".encode()).decode()

    def handle(h: BaseHTTPRequestHandler) -> None:
        fake.requests += 1
        raw = h.rfile.read(int(h.headers.get("Content-Length", "0")))
        if _scripted(fake, h) is not None:
            return
        if h.path != f"/v3/{domain}/messages":
            _answer(h, 404, {"message": "Domain not found"})
            return
        if h.headers.get("Authorization") != expected_auth:
            _answer(h, 401, "Forbidden")
            return
        fields = _multipart(h.headers["Content-Type"], raw)
        form: dict[str, Any] = {}
        for name, value in fields:
            if name in arrays:
                form.setdefault(name, []).append(value)
            else:
                form[name] = value
        problems = sorted(e.message for e in validator.iter_errors(form))
        options = sum(len(v) for k, v in form.items() if k[:2] in ("o:", "h:", "v:", "t:"))
        if options > 16 * 1024:
            problems.append(
                "Send options (parameters starting with o:, h:, or v:) are limited to 16KB total"
            )
        people = json.loads(form.get("recipient-variables", "{}"))
        if len(form.get("to", [])) > 1000:
            problems.append("too many recipients: at most 1000 with recipient-variables")
        if problems:
            _answer(h, 400, {"message": "; ".join(problems)})
            return
        for to in form["to"]:
            values = people[to]
            filled = {
                k: re.sub(r"%recipient\.([a-z0-9_]+)%", lambda m, v=values: v[m[1]], str(form[k]))
                for k in ("subject", "text", "html", "h:List-Unsubscribe", "v:jv_delivery")
            }
            fake.bodies.append({"to": to, **filled})
            fake.accepted.append((to, filled["v:jv_delivery"]))
        _answer(h, 200, {"id": f"<mg{fake.requests}@{domain}>", "message": "Queued. Thank you."})

    return handle


def ses_handler(fake: Fake, key_id: str) -> Callable[[BaseHTTPRequestHandler], None]:
    """SES v2 SendBulkEmail (REST-JSON). boto3 checks the request against SES's own model
    before it leaves; here the signature's key id, the 50-destination limit and answers."""

    def handle(h: BaseHTTPRequestHandler) -> None:
        fake.requests += 1
        raw = h.rfile.read(int(h.headers.get("Content-Length", "0")))
        if _scripted(fake, h) is not None:
            return
        if h.path != "/v2/email/outbound-bulk-emails":
            _answer(h, 404, {"message": "not found"}, {"x-amzn-ErrorType": "NotFoundException"})
            return
        if f"Credential={key_id}/" not in h.headers.get("Authorization", ""):
            _answer(
                h,
                403,
                {"message": "The security token included in the request is invalid."},
                {"x-amzn-ErrorType": "UnrecognizedClientException"},
            )
            return
        body = json.loads(raw)
        entries = body["BulkEmailEntries"]
        if len(entries) > 50:
            _answer(
                h,
                400,
                {"message": f"{len(entries)} destinations; at most 50"},
                {"x-amzn-ErrorType": "BadRequestException"},
            )
            return
        content = body["DefaultContent"]["Template"]["TemplateContent"]
        results = []
        for n, entry in enumerate(entries):
            (to,) = entry["Destination"]["ToAddresses"]
            if to.startswith("reject"):
                results.append(
                    {
                        "Status": "MESSAGE_REJECTED",
                        "Error": "Email address is on the suppression list",
                    }
                )
                continue
            data = json.loads(
                entry["ReplacementEmailContent"]["ReplacementTemplate"]["ReplacementTemplateData"]
            )
            filled = {
                k: re.sub(r"\{\{([a-z0-9_]+)\}\}", lambda m, d=data: d[m[1]], v)
                for k, v in content.items()
            }
            headers = {x["Name"]: x["Value"] for x in entry["ReplacementHeaders"]}
            delivery = {t["Name"]: t["Value"] for t in entry["ReplacementTags"]}["jv_delivery"]
            fake.bodies.append({"to": to, **filled, **headers})
            fake.accepted.append((to, delivery))
            results.append({"Status": "SUCCESS", "MessageId": f"ses-{fake.requests}-{n}"})
        _answer(h, 200, {"BulkEmailEntryResults": results})

    return handle


def _take(fake: Fake, body: dict[str, Any]) -> None:
    fake.bodies.append(body)
    for p in body["personalizations"]:
        fake.accepted += [(t["email"], p["custom_args"]["jv_delivery"]) for t in p["to"]]


def _answer(
    h: BaseHTTPRequestHandler,
    status: int,
    body: dict[str, Any] | list[Any] | str | None,
    headers: dict[str, str] | None = None,
) -> None:
    data = json.dumps(body).encode() if body is not None else b""
    h.send_response(status)
    for k, v in (headers or {}).items():
        h.send_header(k, v)
    h.send_header("Content-Length", str(len(data)))
    if data:
        h.send_header("Content-Type", "application/json")
    h.end_headers()
    with contextlib.suppress(BrokenPipeError):  # the client gave up waiting (hang scripts)
        h.wfile.write(data)


@contextmanager
def serve(handle: Callable[[BaseHTTPRequestHandler], None], fake: Fake) -> Iterator[Fake]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            handle(self)

        def log_message(self, format: str, *args: object) -> None:
            return

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    fake.url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        yield fake
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
