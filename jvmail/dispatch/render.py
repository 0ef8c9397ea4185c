"""Render a mailing once; fill in each recipient's parts by plain substitution.

The promotion's subject, HTML and text are written by partners, so they are rendered in Jinja2's
sandbox with limits: a deadline (checked on every call, every loop step over ``range`` and every
``*`` or ``**``), a cap on the output size, and the sandbox's own refusal of unsafe attributes.
Those checks run between the template's steps, and one step can be a single long call (a string
method or filter asked for a width of billions, ``lipsum`` asked for millions of paragraphs): so
where the system can fork, the three parts are rendered in a child process of their own with a
memory cap, killed once it has had its time (its CPU time: a child stopped or starved
meanwhile is given the time it did not get, up to ten times the deadline in all). Whatever the
template does, the worker that renders
it keeps its memory, its time and its other threads. A template that breaks a limit or fails to
render raises :class:`TemplateProblem` naming the promotion and the reason; the caller fails
that mailing and carries on with the others.

The rendered content then sits inside the list owner's wrapper (``templates/wrapper.*.j2``,
trusted) with the owner's introduction and the footer: postal address and unsubscribe link. CSS
is inlined once, here. What differs per recipient is left as markers (``%%JV_FIRST_NAME%%``,
``%%JV_LINK_3%%``, ``%%JV_UNSUBSCRIBE%%``, ``%%JV_OPEN%%``): every http(s) link of the content
is registered in order and replaced by its marker, so each recipient's copy gets its own signed
tracking link. :func:`fill` replaces the markers in one regex pass; providers with their own
substitution (SendGrid, Mailgun, SES) translate the markers to their syntax instead.
"""

from __future__ import annotations

import gc
import html as html_lib
import json
import os
import re
import select
import signal
import time
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import css_inline
from jinja2 import Environment, FileSystemLoader, StrictUndefined, TemplateError, select_autoescape
from jinja2.runtime import Context
from jinja2.sandbox import SandboxedEnvironment
from markupsafe import Markup, escape

from jvmail.errors import JvmailError

__all__ = [
    "LIMITS",
    "Limits",
    "Mailer",
    "MarkerNames",
    "Rendered",
    "TemplateProblem",
    "batch_forms",
    "fill",
    "for_provider",
    "markers",
    "render",
    "templates_dir",
]

FIRST_NAME = "%%JV_FIRST_NAME%%"
UNSUBSCRIBE = "%%JV_UNSUBSCRIBE%%"
OPEN = "%%JV_OPEN%%"
_MARKER = re.compile(r"%%JV_([A-Z]+(?:_[0-9]+)?|FIRST_NAME)%%")
_HREF = re.compile(r"""(href\s*=\s*)(["'])(https?://[^"'\s]+)\2""", re.IGNORECASE)
_TEXT_URL = re.compile(r"https?://[^\s<>\"')\]]+")


class TemplateProblem(JvmailError):
    """A promotion's template cannot be rendered; its mailing fails, nothing else does."""


@dataclass(frozen=True)
class Limits:
    seconds: float = 2.0  # rendering time of one part
    output_chars: int = 500_000  # size of one rendered part
    operand_chars: int = 100_000  # a string or list that '*' may build
    memory_bytes: int = 512 * 2**20  # what rendering the three parts may allocate

    @property
    def wall_seconds(self) -> float:
        """When a render of the three parts is stopped, whatever it is doing: each part's
        deadline, and a second for starting and compiling."""
        return 3 * self.seconds + 1.0


LIMITS = Limits()


@dataclass(frozen=True)
class Mailer:
    """Who sends and for whom: what the wrapper and footer need."""

    sender_name: str
    postal_address: str
    list_name: str
    owner_name: str  # the promotion's owner
    introduction: str = ""


@dataclass(frozen=True)
class Rendered:
    """One mailing's message, markers in place of each recipient's parts."""

    subject: str
    html: str
    text: str
    links: tuple[str, ...]  # %%JV_LINK_n%% is links[n - 1]


def templates_dir() -> Path:
    """The wrapper templates: inside the installed package, or the repository's."""
    packaged = Path(__file__).resolve().parent.parent / "templates"
    return packaged if packaged.is_dir() else Path(__file__).resolve().parents[2] / "templates"


class _Sandbox(SandboxedEnvironment):
    intercepted_binops = frozenset({"*", "**"})

    def __init__(self, limits: Limits, *, html: bool) -> None:
        super().__init__(autoescape=html, undefined=StrictUndefined)
        self.limits = limits
        self.deadline = 0.0
        self.globals["range"] = self._range

    def _tick(self) -> None:
        if time.thread_time() > self.deadline:
            raise TemplateProblem(f"took longer than {self.limits.seconds:g} s to render")

    def _range(self, *args: int) -> Iterator[int]:
        for n in range(*args):
            self._tick()
            yield n

    def call(self, context: Context, obj: Any, *args: Any, **kwargs: Any) -> Any:
        self._tick()
        return super().call(context, obj, *args, **kwargs)

    def call_binop(self, context: Context, operator: str, left: Any, right: Any) -> Any:
        self._tick()
        if operator == "**" and isinstance(right, int | float):
            bits = left.bit_length() if isinstance(left, int) else 64
            if abs(right) > 64 or bits * abs(right) > 100_000:
                raise TemplateProblem("'**' would build a number too large to print")
        if operator == "*":
            for seq, times in ((left, right), (right, left)):
                sized = isinstance(seq, str | list | tuple) and isinstance(times, int)
                if sized and len(seq) * times > self.limits.operand_chars:
                    raise TemplateProblem(
                        f"'*' would build {len(seq) * times:,} items; "
                        f"the limit is {self.limits.operand_chars:,}"
                    )
        return super().call_binop(context, operator, left, right)

    def render_limited(self, source: str, values: Mapping[str, object]) -> str:
        template = self.from_string(source)
        # The thread's own CPU time: a process stopped or starved meanwhile (a SIGSTOP, a
        # paused machine) has not spent it, and the template is not blamed for the pause.
        self.deadline = time.thread_time() + self.limits.seconds
        out: list[str] = []
        size = 0
        for chunk in template.generate(**values):
            size += len(chunk)
            if size > self.limits.output_chars:
                raise TemplateProblem(f"renders more than {self.limits.output_chars:,} characters")
            out.append(chunk)
            self._tick()
        return "".join(out)


def _content(promo: str, part: str, source: str, limits: Limits, *, html: bool) -> str:
    if "%%JV_" in source:
        raise TemplateProblem(f"promotion {promo}: {part} contains the reserved text '%%JV_'", _FIX)
    sandbox = _Sandbox(limits, html=html)
    first_name: object = Markup(FIRST_NAME) if html else FIRST_NAME
    try:
        return sandbox.render_limited(source, {"first_name": first_name})
    except TemplateProblem as exc:
        raise TemplateProblem(f"promotion {promo}: {part} {exc.message}", _FIX) from exc
    except MemoryError as exc:
        megabytes = limits.memory_bytes // 2**20
        raise TemplateProblem(
            f"promotion {promo}: {part} needs more than {megabytes:,} MB to render", _FIX
        ) from exc
    except (TemplateError, RecursionError, ArithmeticError, TypeError, ValueError) as exc:
        what = f"{exc.__class__.__name__}: {exc}"[:300]
        raise TemplateProblem(
            f"promotion {promo}: {part} cannot be rendered ({what})", _FIX
        ) from exc


_FIX = "fix the promotion's template (only {{ first_name }} is available) and run `jvmail sync`"


_PARTS = ("html", "text", "subject")
_MAX_FD = os.sysconf("SC_OPEN_MAX") if hasattr(os, "sysconf") else 1 << 16


def _parts(
    promo: str,
    sources: tuple[str, str, str],
    limits: Limits,
    starting: Callable[[str], None] = lambda _part: None,
) -> tuple[str, str, str]:
    """The partner-written (html, text, subject), rendered in this process; ``starting`` is
    told each part's name as its render begins."""
    done: list[str] = []
    for part, source in zip(_PARTS, sources, strict=True):
        starting(part)
        done.append(_content(promo, part, source, limits, html=part == "html"))
    return done[0], done[1], done[2]


def _isolated(promo: str, sources: tuple[str, str, str], limits: Limits) -> tuple[str, str, str]:
    """:func:`_parts` in a child process (where the system can fork): its memory capped at
    ``limits.memory_bytes`` more than this process's, killed at ``limits.wall_seconds``. The
    child writes a line naming each part as it begins it, then its answer as a line of JSON
    (data only), through a pipe read as it comes so that the child never blocks on it."""
    if not hasattr(os, "fork"):
        return _parts(promo, sources, limits)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read)
        _child(write, promo, sources, limits)
    os.close(write)
    try:
        raw, status = _collect(read, pid, limits.wall_seconds)
    finally:
        os.close(read)
    *lines, last = raw.split(b"\n")
    begun = [line.decode() for line in lines if line.decode() in _PARTS]
    part = begun[-1] if begun else "template"
    if status is None:
        raise TemplateProblem(
            f"promotion {promo}: {part} took longer than {limits.wall_seconds:g} s to render "
            "and was stopped",
            _FIX,
        )
    answer = _answer(lines[-1] if lines and not last else b"")
    if answer is None:
        why = f"signal {-status}" if status < 0 else f"exit status {status}"
        raise TemplateProblem(f"promotion {promo}: {part} crashed its render ({why})", _FIX)
    if "problem" in answer:
        raise TemplateProblem(str(answer["problem"]), str(answer.get("fix", _FIX)))
    html, text, subject = (str(rendered) for rendered in answer["parts"])
    return html, text, subject


def _answer(line: bytes) -> dict[str, Any] | None:
    """The child's answer line, or None when it wrote none."""
    try:
        answer = json.loads(line)
    except ValueError:
        return None
    return answer if isinstance(answer, dict) else None


_BACKSTOP = 10  # a child is stopped after this many times its time, whether it ran or not


def _collect(read: int, pid: int, allowed: float) -> tuple[bytes, int | None]:
    """What the child wrote, and its exit status (negative: the signal that ended it); None
    for the status when it had ``allowed`` seconds of running first (it is then killed). A
    child that was stopped or starved (its CPU time short of its wall time) gets the time it
    did not have, up to :data:`_BACKSTOP` times ``allowed`` in all."""
    chunks: list[bytes] = []
    began = time.monotonic()
    deadline = began + allowed
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([read], [], [], left)[0]:
                ran = _cpu_seconds(pid)
                now = time.monotonic()
                if ran is None or ran >= allowed or now - began >= _BACKSTOP * allowed:
                    return b"".join(chunks), None
                deadline = now + allowed - ran
                continue
            chunk = os.read(read, 1 << 16)
            if not chunk:
                break
            chunks.append(chunk)
        _, status = os.waitpid(pid, 0)
        pid = 0
        return b"".join(chunks), os.waitstatus_to_exitcode(status)
    finally:
        if pid:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)


def _cpu_seconds(pid: int) -> float | None:
    """The CPU time process ``pid`` has had (Linux's /proc); None where it cannot be read."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _child(write: int, promo: str, sources: tuple[str, str, str], limits: Limits) -> NoReturn:
    """The forked child: render, answer, and exit at once (no cleanup of what it shares with
    its parent: database and broker connections, files)."""
    code = 1
    try:
        # Drop every descriptor but the answer's pipe (and stdio): a render forked at the same
        # time by another thread must see its pipe's end of file when its own child exits,
        # not when this one does.
        os.closerange(3, write)
        os.closerange(write + 1, _MAX_FD)
        with suppress(ValueError):  # the parent's handlers are for the parent
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                signal.signal(sig, signal.SIG_DFL)
        gc.freeze()  # the parent's objects are not this process's to collect
        _cap_memory(limits.memory_bytes)
        answer: dict[str, object]
        try:
            parts = _parts(promo, sources, limits, lambda part: _write(write, f"{part}\n"))
            answer = {"parts": list(parts)}
        except TemplateProblem as exc:
            answer = {"problem": exc.message, "fix": exc.fix}
        except Exception as exc:  # whatever else a template makes Jinja2 raise
            what = f"{exc.__class__.__name__}: {exc}"[:300]
            answer = {"problem": f"promotion {promo}: cannot be rendered ({what})", "fix": _FIX}
        _write(write, json.dumps(answer) + "\n")
        code = 0
    finally:
        os._exit(code)


def _write(fd: int, text: str) -> None:
    data = text.encode()
    while data:
        data = data[os.write(fd, data) :]


def _cap_memory(extra: int) -> None:
    """Cap this process's address space at its present size and ``extra`` bytes (Linux)."""
    import resource

    try:
        with open("/proc/self/statm") as statm:
            size = int(statm.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        return
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    cap = size + extra if hard == resource.RLIM_INFINITY else min(size + extra, hard)
    resource.setrlimit(resource.RLIMIT_AS, (cap, hard))


def _text_link(links: list[str], found: str) -> str:
    url = found.rstrip(".,;:!?")  # sentence punctuation after a bare URL is not part of it
    return _register(links, url) + found[len(url) :]


def _register(links: list[str], url: str) -> str:
    if url not in links:
        links.append(url)
    return f"%%JV_LINK_{links.index(url) + 1}%%"


def render(
    promo: str,
    subject: str,
    html: str,
    text: str,
    mailer: Mailer,
    *,
    limits: Limits = LIMITS,
) -> Rendered:
    """Render promotion ``promo``'s parts inside the owner's wrapper, once per mailing."""
    links: list[str] = []
    body, plain, title = _isolated(promo, (html, text, subject), limits)
    body = _HREF.sub(
        lambda m: f"{m[1]}{m[2]}{_register(links, html_lib.unescape(m[3]))}{m[2]}", body
    )
    plain = _TEXT_URL.sub(lambda m: _text_link(links, m[0]), plain)
    title = " ".join(title.split())
    trusted = Environment(
        loader=FileSystemLoader(templates_dir()),
        autoescape=select_autoescape(["html.j2"]),
        undefined=StrictUndefined,
        keep_trailing_newline=True,
    )
    values = {
        "sender_name": mailer.sender_name,
        "owner_name": mailer.owner_name,
        "list_name": mailer.list_name,
        "postal_address": mailer.postal_address,
        "introduction": mailer.introduction,
        "subject": title,
        "unsubscribe_url": Markup(UNSUBSCRIBE),
        "open_url": Markup(OPEN),
    }
    page = trusted.get_template("wrapper.html.j2").render(values, content=Markup(body))
    words = trusted.get_template("wrapper.txt.j2").render(
        values | {"unsubscribe_url": UNSUBSCRIBE}, content=plain.strip()
    )
    return Rendered(title, css_inline.inline(page), words, tuple(links))


def markers(first_name: str, links: list[str], unsubscribe: str, open_pixel: str) -> dict[str, str]:
    """Marker name -> value for one recipient (plain text; :func:`fill` escapes for HTML)."""
    values = {"FIRST_NAME": first_name or "there", "UNSUBSCRIBE": unsubscribe, "OPEN": open_pixel}
    values |= {f"LINK_{n}": url for n, url in enumerate(links, start=1)}
    return values


def for_provider(
    rendered: Rendered, name: Callable[[str], str], escaped: Collection[str] = ()
) -> tuple[str, str, str]:
    """(subject, text, html) with each marker written as ``name(MARKER)`` for a provider that
    substitutes values itself. Such providers put the same raw text everywhere, so in the HTML
    part a marker in ``escaped`` names its HTML-escaped copy, ``name(MARKER_H)`` (see
    :func:`batch_forms`)."""
    text_parts = (rendered.subject, rendered.text)
    subject, text = (_MARKER.sub(lambda m: name(m[1]), part) for part in text_parts)
    html = _MARKER.sub(lambda m: name(f"{m[1]}_H" if m[1] in escaped else m[1]), rendered.html)
    return subject, text, html


_UNSAFE = re.compile(r"[&<>\"']")


def html_escape(value: str) -> str:
    """``value`` escaped for HTML as markupsafe escapes it; a value with nothing to escape (a
    signed URL, most names) is returned as it is, without building a Markup for it."""
    return str(escape(value)) if _UNSAFE.search(value) else value


class MarkerNames(dict[str, tuple[str, str]]):
    """Marker -> the names a provider gives its plain value and its HTML-escaped copy
    (``NAME_H``), made once per marker rather than once per recipient."""

    def __init__(self, name: Callable[[str], str]) -> None:
        super().__init__()
        self.name = name

    def __missing__(self, marker: str) -> tuple[str, str]:
        names = self[marker] = (self.name(marker), self.name(f"{marker}_H"))
        return names


_SAME = MarkerNames(str)


def batch_forms(
    values: Sequence[Mapping[str, str]], names: MarkerNames = _SAME
) -> tuple[list[dict[str, str]], frozenset[str]]:
    """A batch's values for a provider that substitutes them itself: each recipient's values
    under ``names``, and the markers whose value needs escaping in HTML for any recipient of
    the batch, which each recipient also gets HTML-escaped under ``NAME_H``
    (:func:`for_provider` names that copy in the HTML part). The tracking links, the
    unsubscribe link and most first names need none: they are sent once."""
    escaped = frozenset(k for one in values for k, v in one.items() if _UNSAFE.search(v))
    forms = []
    for one in values:
        form = {names[k][0]: v for k, v in one.items()}
        form.update({names[k][1]: html_escape(one[k]) for k in escaped})
        forms.append(form)
    return forms, escaped


def fill(part: str, values: Mapping[str, str], *, html: bool) -> str:
    """Replace every marker in ``part`` with its value (HTML-escaped in an HTML part)."""
    convert: Callable[[str], str] = html_escape if html else str
    return _MARKER.sub(lambda m: convert(values[m[1]]), part)
