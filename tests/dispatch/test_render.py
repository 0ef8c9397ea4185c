"""Rendering partner-written content: sandbox, limits, links, markers and the owner's wrapper."""

from __future__ import annotations

import email
import email.policy
import os
import resource
import threading
import time
from email.message import EmailMessage

import pytest
from markupsafe import escape

from jvmail.dispatch import render as render_module
from jvmail.dispatch.mime import skeleton
from jvmail.dispatch.render import (
    Limits,
    Mailer,
    MarkerNames,
    Rendered,
    TemplateProblem,
    batch_forms,
    fill,
    for_provider,
    html_escape,
    markers,
    render,
)
from jvmail.tracking.links import Keyring, Link, click_url, unsubscribe_url

MAILER = Mailer("Sender & Co", "1 Canal Street, Springfield", "Sender Weekly", "Owner Inc")
HTML = (
    "<h1>Hello {{ first_name }}</h1>"
    "<p><a href='https://owner.example/offer?a=1&b=2'>Offer</a> and "
    '<a href="https://owner.example/more">more</a>; again '
    '<a href="https://owner.example/more">more</a></p>'
)
TEXT = "Hi {{ first_name }},\nsee https://owner.example/offer?a=1&b=2.\n"
KEY = Keyring((b"k" * 32,))


def _render(html: str = HTML, text: str = TEXT, subject: str = "For {{ first_name }}") -> object:
    return render("owner-offer", subject, html, text, MAILER)


def test_links_are_registered_once_in_order_and_replaced_by_markers() -> None:
    r = render("owner-offer", "For {{ first_name }}", HTML, TEXT, MAILER)
    assert r.links == ("https://owner.example/offer?a=1&b=2", "https://owner.example/more")
    assert "owner.example" not in r.html
    assert "owner.example" not in r.text
    assert "%%JV_LINK_1%%." in r.text  # the sentence's full stop stays outside the link
    assert r.html.count("%%JV_LINK_2%%") == 2
    assert "Sender &amp; Co, 1 Canal Street, Springfield" in r.html  # footer, escaped
    assert "%%JV_UNSUBSCRIBE%%" in r.html
    assert "%%JV_UNSUBSCRIBE%%" in r.text
    assert "style=" in r.html  # CSS was inlined
    assert "<style>" not in r.html


def test_first_names_are_escaped_in_html_and_plain_in_text() -> None:
    r = render("owner-offer", "For {{ first_name }}", HTML, TEXT, MAILER)
    values = markers("<Ann & Bo>", list(r.links), "https://jv.example/u/x", "https://jv.example/o")
    assert "Hello &lt;Ann &amp; Bo&gt;" in fill(r.html, values, html=True)
    assert "Hi <Ann & Bo>," in fill(r.text, values, html=False)
    assert "Hi there," in fill(r.text, markers("", list(r.links), "u", "o"), html=False)


@pytest.mark.parametrize(
    ("source", "reason"),
    [
        ("{{ ''.__class__.__mro__[1].__subclasses__() }}", "cannot be rendered"),
        (
            "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
            "took longer",
        ),
        ("{% macro f() %}{{ f() }}{% endmacro %}{{ f() }}", ""),
        ("{{ 'x' * 10000000 }}", "'*' would build"),
        ("{{ 10 ** 10000000 }}", "too large"),
        ("{{ ((((9 ** 9) ** 9) ** 9) ** 9) ** 9 }}", "too large"),
        ("{% for i in range(99999) %}{{ 'y' * 99 }}{% endfor %}", "renders more than"),
        ("{{ unknown_variable }}", "cannot be rendered"),
        ("{% if %}", "cannot be rendered"),
        ("Hello %%JV_LINK_1%%", "reserved"),
    ],
)
def test_hostile_or_broken_templates_fail_with_a_reason(source: str, reason: str) -> None:
    limits = Limits(seconds=0.5, output_chars=200_000)
    with pytest.raises(TemplateProblem) as caught:
        render("owner-offer", "Subject", source, "text", MAILER, limits=limits)
    assert "promotion owner-offer: html" in caught.value.message
    assert reason in caught.value.message
    assert caught.value.fix


# One step of these is a single long call the sandbox's checks cannot interrupt: a string
# method or filter asked for billions of characters, lipsum asked for millions of paragraphs,
# a string doubled by concatenation, a nested list printed whole. Those that run out of memory
# are given time enough that on a busy machine it is the memory cap that stops them.
BOMBS = [
    ("{{ lipsum(10**7) }}", 0.3, "html took longer than 1.9 s to render and was stopped"),
    ("{{ 'a'.center(10**10) }}", 5.0, "html needs more than 64 MB"),
    ("{{ ('a' * 100000)|replace('a', 'a' * 100000) }}", 5.0, "html needs more than 64 MB"),
    (
        "{% set ns = namespace(s='x') %}{% for i in range(40) %}"
        "{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s }}",
        5.0,
        "html needs more than 64 MB",
    ),
    ("{{ [[1] * 100000] * 100000 }}", 0.3, ""),
]


@pytest.mark.parametrize(("source", "seconds", "reason"), BOMBS)
def test_one_long_call_is_stopped_by_the_render_process_limits(
    source: str, seconds: float, reason: str
) -> None:
    limits = Limits(seconds=seconds, output_chars=200_000, memory_bytes=64 * 2**20)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB
    began = time.monotonic()
    with pytest.raises(TemplateProblem) as caught:
        render("owner-offer", "Subject", source, "text", MAILER, limits=limits)
    assert time.monotonic() - began < limits.wall_seconds + 2.0
    assert caught.value.message.startswith("promotion owner-offer: ")
    assert reason in caught.value.message
    assert caught.value.fix
    # The render's memory was its own process's: this one grew by no more than its cap.
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak < 64 * 1024


def test_a_render_beside_a_stopped_one_goes_on_in_other_threads() -> None:
    limits = Limits(seconds=0.5, memory_bytes=64 * 2**20)
    done: list[str] = []

    def hostile() -> None:
        with pytest.raises(TemplateProblem):
            render("hostile", "Subject", "{{ lipsum(10**7) }}", "text", MAILER, limits=limits)
        done.append("hostile")

    thread = threading.Thread(target=hostile)
    thread.start()
    took: list[float] = []
    first_done = False
    try:
        for _ in range(5):  # while the hostile render runs, others render in full
            began = time.monotonic()
            r = render("owner-offer", "For {{ first_name }}", HTML, TEXT, MAILER, limits=limits)
            took.append(time.monotonic() - began)
            assert r.subject == "For %%JV_FIRST_NAME%%"
            if len(took) == 1:
                first_done = not done  # the hostile render still ran when the first was done
    finally:
        thread.join(timeout=limits.wall_seconds + 5.0)
    assert done == ["hostile"]
    assert first_done
    # None waited for the hostile render's child (each of them lasts a few milliseconds).
    assert max(took) < limits.wall_seconds / 2, took


def test_a_message_per_recipient_carries_its_own_signed_links_and_both_unsubscribe_headers() -> (
    None
):
    r = render("owner-offer", "For {{ first_name }}", HTML, TEXT, MAILER)
    sk = skeleton(
        r,
        from_name="Sender & Co",
        from_addr="news@sender.example",
        mailing_id=7,
        domain="jv.example",
    )
    base = "https://jv.example"
    messages = {}
    for delivery, name in ((101, "Ann"), (102, "Zoë")):
        links = [click_url(base, KEY, 7, delivery, n) for n in range(1, len(r.links) + 1)]
        values = markers(name, links, unsubscribe_url(base, KEY, 7, delivery), f"{base}/o/x.gif")
        raw = sk.message(
            delivery,
            f"{name.lower()}@mail.example",
            values,
            "mailto:unsub@sender.example?subject=unsubscribe",
        )
        parsed = email.message_from_bytes(raw, policy=email.policy.default)
        assert isinstance(parsed, EmailMessage)
        messages[delivery] = parsed
    for delivery, msg in messages.items():
        assert msg["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
        https, mailto = (part.strip(" <>") for part in msg["List-Unsubscribe"].split(","))
        assert KEY.read(https.rsplit("/", 1)[1]) == Link(7, delivery, 0)
        assert mailto.startswith("mailto:")
        assert msg["Message-ID"] == f"<jv.{delivery}@jv.example>"
        html = msg.get_body(("html",)).get_content()  # type: ignore[union-attr]
        text = msg.get_body(("plain",)).get_content()  # type: ignore[union-attr]
        assert "1 Canal Street, Springfield" in html
        assert "1 Canal Street, Springfield" in text
        tokens = [u.rsplit("/", 1)[1] for u in text.split() if "/c/" in u]
        assert [KEY.read(t.rstrip(".")) for t in tokens] == [Link(7, delivery, 1)]
    assert messages[102]["Subject"] == "For Zoë"
    assert "Hello Zoë" in messages[102].get_body(("html",)).get_content()  # type: ignore[union-attr]


def test_tokens_refuse_tampering() -> None:
    token = click_url("https://jv.example", KEY, 42, 123456, 3).rsplit("/", 1)[1]
    assert KEY.read(token) == Link(42, 123456, 3)
    assert Keyring((b"other" * 8,)).read(token) is None
    head, sig = token.split(".")
    assert KEY.read(head[:-1] + ("A" if head[-1] != "A" else "B") + "." + sig) is None
    assert KEY.read(token[:-2]) is None
    assert KEY.read(token + "=") is None
    assert KEY.read("garbage") is None
    assert KEY.read("") is None


def test_tokens_survive_a_key_rotation() -> None:
    old = Keyring.from_hex(["aa" * 32])
    token = old.sign(1, 2, 3)
    rotated = Keyring.from_hex(["bb" * 32, "aa" * 32])  # newest first, as the hub keeps them
    assert rotated.read(token) == Link(1, 2, 3)
    fresh = rotated.sign(1, 2, 3)
    assert fresh != token
    assert rotated.read(fresh) == Link(1, 2, 3)
    assert old.read(fresh) is None  # signed with a key the old ring never had
    retired = Keyring.from_hex(["bb" * 32])
    assert retired.read(token) is None


@pytest.mark.parametrize(
    "value",
    ["Ann", "", "https://jv.example/c/AAfAxAcC.kOrEKtm92PsESn1u", "O'Brien & <Co>", 'say "hi"'],
)
def test_values_are_escaped_as_markupsafe_escapes_them(value: str) -> None:
    assert html_escape(value) == str(escape(value))
    forms, escaped = batch_forms([{"FIRST_NAME": value}])
    copy = {"FIRST_NAME_H": str(escape(value))} if str(escape(value)) != value else {}
    assert forms == [{"FIRST_NAME": value} | copy]
    assert escaped == ({"FIRST_NAME"} if copy else set())


def test_a_batch_sends_an_escaped_copy_only_of_what_some_recipient_needs_escaped() -> None:
    url = "https://jv.example/c/AAfAxAcC.kOrEKtm92PsESn1u"
    values = [{"FIRST_NAME": "Ann", "LINK_1": url}, {"FIRST_NAME": "O'Brien", "LINK_1": url}]
    forms, escaped = batch_forms(values, MarkerNames(str.lower))
    assert escaped == {"FIRST_NAME"}
    assert forms == [
        {"first_name": "Ann", "link_1": url, "first_name_h": "Ann"},
        {"first_name": "O'Brien", "link_1": url, "first_name_h": "O&#39;Brien"},
    ]
    rendered = Rendered(
        "Hi %%JV_FIRST_NAME%%",
        "<p>Hi %%JV_FIRST_NAME%%, <a href='%%JV_LINK_1%%'>read</a></p>",
        "Hi %%JV_FIRST_NAME%%, read %%JV_LINK_1%%",
        (url,),
    )
    subject, text, html = for_provider(rendered, lambda m: f"%{m.lower()}%", escaped)
    assert subject == "Hi %first_name%"
    assert text == "Hi %first_name%, read %link_1%"
    # The HTML names the escaped copy of the name, and the link as it is.
    assert html == "<p>Hi %first_name_h%, <a href='%link_1%'>read</a></p>"
    # A batch of names with nothing to escape: no copies at all.
    _, none = batch_forms([{"FIRST_NAME": "Ann", "LINK_1": url}])
    assert none == set()


def test_a_render_child_stopped_meanwhile_is_given_the_time_it_did_not_have() -> None:
    # A worker stopped (SIGSTOP, a paused machine) while its render child ran: the child's
    # wall time passes its deadline, its CPU time does not, and it finishes. A child that
    # keeps the CPU busy is stopped at its deadline, as the bombs above are.
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read)
        time.sleep(0.6)  # not running, as a stopped child is not: three times its 0.2 s
        os.write(write, b'{"parts": []}\n')
        os._exit(0)
    os.close(write)
    try:
        raw, status = render_module._collect(read, pid, 0.2)
    finally:
        os.close(read)
    assert (raw, status) == (b'{"parts": []}\n', 0)
