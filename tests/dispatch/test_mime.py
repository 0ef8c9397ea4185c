"""A single message written straight to bytes reads back, with the stdlib's parser, as what was
given: headers, both alternatives, the images inline by Content-ID; 7-bit, CRLF, short lines."""

from __future__ import annotations

import email
import email.policy
import re
from email.message import EmailMessage

from jvmail.dispatch.mime import skeleton, whole_message
from jvmail.dispatch.render import Mailer, markers, render

PNG = bytes(range(256)) * 40  # binary, with every byte value, over many base64 lines
TEXT = "Héllo Zoë,\nyour week: 1,234 clicks.\n\n" + "a long line " * 20 + "\n=_jv_ not a boundary\n"
HTML = "<p>Héllo <b>Zoë</b></p><img src='cid:history@jvmail'>" + "<i>x</i>" * 50


def _message(
    images: dict[str, bytes], subject: str = "Your week — 2026-W48 ✓"
) -> tuple[bytes, EmailMessage]:
    raw = whole_message(
        sender="Hub Ünion <statements@jv.example>",
        to="team@acme.example",
        subject=subject,
        text=TEXT,
        html=HTML,
        images=images,
        message_id="<statement.7@jv.example>",
    )
    parsed = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(parsed, EmailMessage)
    return raw, parsed


def test_a_whole_message_reads_back_as_given() -> None:
    _, msg = _message({"history@jvmail": PNG, "clicks@jvmail": PNG[::-1]})
    assert msg["Subject"] == "Your week — 2026-W48 ✓"
    assert msg["From"].addresses[0].display_name == "Hub Ünion"
    assert msg["From"].addresses[0].addr_spec == "statements@jv.example"
    assert msg["To"] == "team@acme.example"
    assert msg["Message-ID"] == "<statement.7@jv.example>"
    assert msg.get_content_type() == "multipart/alternative"
    text, related = msg.iter_parts()
    assert text.get_content().replace("\r\n", "\n") == TEXT
    assert related.get_content_type() == "multipart/related"
    html, *pngs = related.iter_parts()
    assert html.get_content().replace("\r\n", "\n") == HTML
    shown = {p["Content-ID"]: (p.get_filename(), p.get_content()) for p in pngs}
    assert shown == {
        "<history@jvmail>": ("history.png", PNG),
        "<clicks@jvmail>": ("clicks.png", PNG[::-1]),
    }
    assert all(p.get_content_disposition() == "inline" for p in pngs)
    assert all(p.defects == [] for p in msg.walk())


def _relay_ready(raw: bytes) -> None:
    assert raw.isascii()
    assert b"\n" not in re.sub(rb"\r\n", b"", raw)  # every line ends in CRLF: no bare LF
    assert max(len(line) for line in raw.split(b"\r\n")) <= 78


def test_a_whole_message_is_7_bit_with_crlf_lines_mail_relays_take() -> None:
    subject = "Ta semaine — 2026-W48 : " + "déjà 1 234 clics, merci à tous " * 4
    raw, msg = _message({"history@jvmail": PNG}, subject)
    _relay_ready(raw)
    assert msg["Subject"] == subject.strip()


def test_a_mailing_message_is_relay_ready_too() -> None:
    rendered = render(
        "owner-offer",
        "Hi {{ first_name }} — " + "an offer you will like " * 5,
        "<p>Hi {{ first_name }}, <a href='https://o.example/x'>see</a></p>" + "<i>x</i>" * 60,
        "Hi {{ first_name }}, https://o.example/x",
        Mailer("Sendér", "1 Canal Street, Springfield", "Sender Weekly", "Owner Inc"),
    )
    laid = skeleton(
        rendered, from_name="Sendér", from_addr="team@s.example", mailing_id=3, domain="s.example"
    )
    values = markers("Zoë", ["https://jv.example/c/1"], "https://jv.example/u/1", "")
    _relay_ready(laid.message(9, "zoe@mail.example", values, "mailto:u@s.example"))


def test_without_images_the_html_is_the_second_alternative() -> None:
    _, msg = _message({})
    assert [p.get_content_type() for p in msg.iter_parts()] == ["text/plain", "text/html"]
