"""Local servers that speak the providers' documented send APIs, for the provider tests.

Each checks auth, validates the request body against the provider's published schema (copied
under tests/providers/specs, with their sources and licences in its README), enforces the
documented limits, answers with the documented success and error bodies, and records every
recipient it accepted. Tests
can script answers: a status with headers, or a hang past the client's timeout; queued in order
(``script``), or decided at each request (``rule``: a share of requests, a storm for a while).
The fake SendGrid can also be told which addresses it deems invalid (``invalid``): it then
refuses a request that carries any of them with SendGrid's 400, naming each one's field.

Each also serves the provider's way of sending one whole message with inline images (SendGrid's
``attachments``, Postmark's ``/email``, Mailgun's ``messages.mime``, SES's ``SendEmail`` with raw
content) and records it as the recipient would see it (:class:`Single`).
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
from email.header import decode_header, make_header
from email.message import EmailMessage
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
    """Answer with the next scripted answer, if the test queued one, else with the rule's
    answer for this request, if it gives one (after its hang)."""
    if fake.script:
        scripted: Scripted | None = fake.script.pop(0)
    else:
        scripted = fake.rule() if fake.rule is not None else None
    if scripted is None:
        return None
    time.sleep(scripted.hang)  # the fake provider being slow, not a test waiting
    if scripted.drop:
        h.close_connection = True  # no answer: the connection closes, the request read whole
    elif scripted.raw is not None:
        h.send_response(scripted.status)
        h.send_header("Content-Length", str(len(scripted.raw)))
        h.end_headers()
        h.wfile.write(scripted.raw)
    else:
        _answer(h, scripted.status, scripted.body, scripted.headers)
    return scripted


@dataclass
class Scripted:
    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: dict[str, Any] | list[Any] = field(default_factory=dict)
    hang: float = 0.0  # seconds to wait before answering (past the client's timeout)
    drop: bool = False  # close the connection instead of answering
    raw: bytes | None = None  # the answer's body as it is, instead of ``body`` as JSON


@dataclass
class Single:
    """One whole message a fake took, as its recipient would see it."""

    sender: str
    to: str
    subject: str
    text: str
    html: str
    images: dict[str, bytes]  # Content-ID -> content
    metadata: dict[str, str]  # what the provider would report in its events


@dataclass
class Fake:
    url: str = ""
    accepted: list[tuple[str, str]] = field(default_factory=list)  # (address, delivery id)
    requests: int = 0
    script: list[Scripted] = field(default_factory=list)
    bodies: list[dict[str, Any]] = field(default_factory=list)
    singles: list[Single] = field(default_factory=list)
    # Once the script is used up: called at each request, the answer to give instead of the
    # provider's own (None: the provider answers).
    rule: Callable[[], Scripted | None] | None = None
    invalid: frozenset[str] = frozenset()  # addresses SendGrid or Mailgun refuse as invalid (400)


def from_mime(raw: bytes, metadata: dict[str, str]) -> Single:
    """A MIME message as its recipient would see it: the parts a mail client shows, the inline
    images by Content-ID. Raw bytes must be 7-bit clean, as a relay passes them on."""
    raw.decode("ascii")  # raises on anything not 7-bit
    msg = BytesParser(policy=email.policy.default).parsebytes(raw)
    assert isinstance(msg, EmailMessage)
    text, html = msg.get_body(("plain",)), msg.get_body(("html",))
    assert text is not None
    assert html is not None
    images = {}
    for part in msg.walk():
        if part.get_content_maintype() == "image":
            assert part.get_content_disposition() == "inline"
            payload = part.get_payload(decode=True)
            assert isinstance(payload, bytes)
            images[str(part["Content-ID"]).strip("<>")] = payload
    return Single(
        str(msg["From"]),
        str(msg["To"]),
        str(msg["Subject"]),
        _lines(text.get_content()),
        _lines(html.get_content()),
        images,
        metadata,
    )


def _lines(text: str) -> str:
    return text.replace("\r\n", "\n")


def _shown(header: str) -> str:
    """A header value as a mail client shows it (RFC 2047 words decoded)."""
    return str(make_header(decode_header(header)))


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
        refused = _invalid_addresses(fake, body)
        if refused:
            _answer(h, 400, {"errors": refused})
            return
        _take(fake, body)
        _answer(h, 202, None, {"X-Message-Id": f"sg{fake.requests}"})

    return handle


def _invalid_addresses(fake: Fake, body: dict[str, Any]) -> list[dict[str, str]]:
    """SendGrid's errors for the recipients whose address it deems invalid: the whole request
    is refused (400), each error naming its recipient's field."""
    return [
        {
            "message": "Does not contain a valid address.",
            "field": f"personalizations.{n}.to.{m}.email",
            "help": "http://sendgrid.com/docs/API_Reference/Web_API_v3/Mail/errors.html"
            "#message.personalizations.to",
        }
        for n, p in enumerate(body.get("personalizations", []))
        for m, to in enumerate(p.get("to", []))
        if to.get("email") in fake.invalid
    ]


def _postmark_validator(definition: str) -> Draft4Validator:
    spec = json.loads((SPECS / "postmark" / "sending.swagger.json").read_text())
    root = dict(spec)
    root["$ref"] = f"#/definitions/{definition}"
    return Draft4Validator(root)


def postmark_handler(fake: Fake, token: str) -> Callable[[BaseHTTPRequestHandler], None]:
    validator = _postmark_validator("SendEmailBatchRequest")
    single = _postmark_validator("SendEmailRequest")

    def handle(h: BaseHTTPRequestHandler) -> None:
        fake.requests += 1
        raw = h.rfile.read(int(h.headers.get("Content-Length", "0")))
        if _scripted(fake, h) is not None:
            return
        if h.headers.get("X-Postmark-Server-Token") != token:
            _answer(h, 401, {"ErrorCode": 10, "Message": "Bad or missing Server API token."})
            return
        if h.path == "/email":
            _postmark_single(fake, h, json.loads(raw), single)
            return
        if h.path != "/email/batch":
            _answer(h, 404, {"ErrorCode": 404, "Message": "not found"})
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


def _postmark_single(
    fake: Fake, h: BaseHTTPRequestHandler, body: dict[str, Any], validator: Draft4Validator
) -> None:
    """``POST /email``: one message; a refused recipient is a 422 with Postmark's ErrorCode."""
    problems = sorted(e.message for e in validator.iter_errors(body))
    if not body.get("To") or not (body.get("HtmlBody") or body.get("TextBody")):
        problems.append("To and a body are required")
    attachments = body.get("Attachments", [])
    if any(not str(a.get("ContentID", "")).startswith("cid:") for a in attachments):
        problems.append("an inline attachment's ContentID is written cid:<id>")
    if problems:
        _answer(h, 422, {"ErrorCode": 300, "Message": "; ".join(problems)})
        return
    if body["To"].startswith("inactive"):
        message = "You tried to send to a recipient that has been marked as inactive."
        _answer(h, 422, {"ErrorCode": 406, "Message": message})
        return
    images = {
        a["ContentID"].removeprefix("cid:"): base64.b64decode(a["Content"], validate=True)
        for a in attachments
    }
    fake.singles.append(
        Single(
            _shown(body["From"]),
            body["To"],
            body["Subject"],
            body["TextBody"],
            body["HtmlBody"],
            images,
            body.get("Metadata", {}),
        )
    )
    message_id = f"pm-{fake.requests}"
    answer = {"ErrorCode": 0, "Message": "OK", "MessageID": message_id, "To": body["To"]}
    _answer(h, 200, answer | {"SubmittedAt": "2026-12-01T09:00:00Z"})


def _multipart(
    content_type: str, raw: bytes, files: dict[str, bytes] | None = None
) -> list[tuple[str, str]]:
    """The form's fields; a file's content goes into ``files`` (by field name) and its field
    holds the file name, as a schema of ``format: binary`` strings sees it."""
    head = f"Content-Type: {content_type}\r\n\r\n".encode()
    message = BytesParser(policy=email.policy.HTTP).parsebytes(head + raw)
    fields = []
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        payload = part.get_payload(decode=True)
        assert isinstance(name, str)
        assert isinstance(payload, bytes)
        filename = part.get_filename()
        if filename is not None and files is not None:
            files[name] = payload
            fields.append((name, filename))
        else:
            fields.append((name, payload.decode()))
    return fields


def _mailgun_validator(endpoint: str) -> Draft202012Validator:
    spec = json.loads((SPECS / "mailgun" / "messages.openapi.json").read_text())
    root = dict(spec)
    root["$ref"] = (
        f"#/components/schemas/POST-v3-domain_name-{endpoint}-multipart-form-data-RequestBody"
    )
    return Draft202012Validator(root)


def _mailgun_mime(
    fake: Fake, h: BaseHTTPRequestHandler, raw: bytes, validator: Draft202012Validator
) -> None:
    """``POST /v3/{domain}/messages.mime``: ``to`` and the whole message as a file."""
    files: dict[str, bytes] = {}
    form: dict[str, Any] = {}
    for name, value in _multipart(h.headers["Content-Type"], raw, files):
        if name == "to":
            form.setdefault(name, []).append(value)
        else:
            form[name] = value
    problems = sorted(e.message for e in validator.iter_errors(form))
    if "message" not in files:
        problems.append("message: the MIME message must be sent as a file")
    if problems:
        _answer(h, 400, {"message": "; ".join(problems)})
        return
    variables = {k[2:]: v for k, v in form.items() if k.startswith("v:")}
    single = from_mime(files["message"], variables)
    if form["to"] != [single.to]:
        _answer(h, 400, {"message": f"to {form['to']} is not the message's To {single.to}"})
        return
    fake.singles.append(single)
    _answer(h, 200, {"id": f"<mg{fake.requests}@mg.example>", "message": "Queued. Thank you."})


def mailgun_handler(fake: Fake, key: str, domain: str) -> Callable[[BaseHTTPRequestHandler], None]:
    validator = _mailgun_validator("messages")
    mime = _mailgun_validator("messages-mime")
    arrays = {"to", "cc", "bcc", "o:tag", "attachment", "inline"}
    expected_auth = "Basic " + base64.b64encode(f"api:{key}".encode()).decode()

    def handle(h: BaseHTTPRequestHandler) -> None:
        fake.requests += 1
        raw = h.rfile.read(int(h.headers.get("Content-Length", "0")))
        if _scripted(fake, h) is not None:
            return
        if h.path not in (f"/v3/{domain}/messages", f"/v3/{domain}/messages.mime"):
            _answer(h, 404, {"message": "Domain not found"})
            return
        if h.headers.get("Authorization") != expected_auth:
            _answer(h, 401, "Forbidden")
            return
        if h.path.endswith(".mime"):
            _mailgun_mime(fake, h, raw, mime)
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
        if fake.invalid & set(form["to"]):  # Mailgun's answer names no address
            message = "'to' parameter is not a valid address. please check documentation"
            _answer(h, 400, {"message": message})
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


def _ses_single(fake: Fake, h: BaseHTTPRequestHandler, body: dict[str, Any]) -> None:
    """SendEmail with raw content: the destination must be the message's own To; a suppressed
    address is MessageRejected."""
    (to,) = body["Destination"]["ToAddresses"]
    if to.startswith("reject"):
        _answer(
            h,
            400,
            {"message": "Email address is on the suppression list"},
            {"x-amzn-ErrorType": "MessageRejected"},
        )
        return
    tags = {t["Name"]: t["Value"] for t in body.get("EmailTags", [])}
    single = from_mime(base64.b64decode(body["Content"]["Raw"]["Data"], validate=True), tags)
    if single.to != to:
        _answer(
            h,
            400,
            {"message": f"destination {to} is not the message's To {single.to}"},
            {"x-amzn-ErrorType": "BadRequestException"},
        )
        return
    fake.singles.append(single)
    _answer(h, 200, {"MessageId": f"ses-{fake.requests}"})


def ses_handler(fake: Fake, key_id: str) -> Callable[[BaseHTTPRequestHandler], None]:
    """SES v2 SendBulkEmail and SendEmail (REST-JSON). boto3 checks the request against SES's
    own model before it leaves; here the signature's key id, the 50-destination limit and
    answers."""

    def handle(h: BaseHTTPRequestHandler) -> None:
        fake.requests += 1
        raw = h.rfile.read(int(h.headers.get("Content-Length", "0")))
        if _scripted(fake, h) is not None:
            return
        if h.path not in ("/v2/email/outbound-bulk-emails", "/v2/email/outbound-emails"):
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
        if h.path == "/v2/email/outbound-emails":
            _ses_single(fake, h, json.loads(raw))
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
            if to.startswith("quota"):
                results.append({"Status": "ACCOUNT_DAILY_QUOTA_EXCEEDED", "Error": "quota"})
                continue
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
        if "jv_delivery" in p["custom_args"]:
            fake.accepted += [(t["email"], p["custom_args"]["jv_delivery"]) for t in p["to"]]
            continue
        (to,) = p["to"]
        parts = {c["type"]: c["value"] for c in body["content"]}
        images = {
            a["content_id"]: base64.b64decode(a["content"], validate=True)
            for a in body.get("attachments", [])
            if a.get("disposition") == "inline"
        }
        sender = f"{body['from'].get('name', '')} <{body['from']['email']}>"
        fake.singles.append(
            Single(
                sender,
                to["email"],
                body["subject"],
                parts["text/plain"],
                parts["text/html"],
                images,
                p["custom_args"],
            )
        )


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
