"""What the HTTP providers share: one request, its answer classified.

* 2xx: the provider took the request.
* 3xx: not followed (no provider's send API redirects; a request sent on to another address
  could take the account's key with it): the account's mailings pause, as for a refused key.
* 401 / 403: the account's key was refused: the account's mailings pause (``auth``).
* 429 and 5xx: a passing refusal, retried later (``Retry-After`` honoured when given, in
  seconds or as an HTTP-date).
* other 4xx: the request itself is wrong: not retried; the message carries the provider's own
  words so the cause can be fixed (:class:`Refused`, with the answer's status and body, for a
  provider whose answer names the recipients it refused).
* no connection made (refused, a name that does not resolve, no answer to the connect, the
  proxy or the TLS handshake failing): retried later; nothing left.
* a request requests will not send (a key with a newline cannot be a header): the account's
  mailings pause, saying why.
* the connection lost once it was made (reset, closed before the answer), a timeout after the
  request was sent, an answer cut off: the provider may have the request: ``maybe_sent``,
  never resent.

Bodies are serialized with orjson. A provider's credentials are only those it was given:
requests would otherwise look up ``~/.netrc`` for every request without its own ``auth``, and
an entry there for the provider's host would replace the key in its ``Authorization`` header.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Mapping, Sequence
from email.utils import parsedate_to_datetime
from typing import Any

import orjson
import requests
from urllib3.exceptions import (
    ConnectTimeoutError,
    MaxRetryError,
    NewConnectionError,
    ProtocolError,
    ProxyError,
    SSLError,
)

from jvmail.providers.base import ProviderError

__all__ = ["TIMEOUT", "FormValue", "Refused", "post"]

TIMEOUT = (5.0, 30.0)  # seconds to connect, seconds to wait for the answer
# A multipart field: text, or a file as (file name, content, content type).
FormValue = str | tuple[str, bytes, str]


class _HeadersOnly(requests.auth.AuthBase):
    """The credentials are in the request's headers already: no ``~/.netrc`` lookup."""

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        return request


_HEADERS_ONLY = _HeadersOnly()


class Refused(ProviderError):
    """The provider refused the request itself (a 4xx but 401, 403 and 429): not retried as it
    is. ``status`` and ``body`` are its answer."""

    def __init__(self, message: str, fix: str, *, status: int, body: str) -> None:
        super().__init__(message, fix, transient=False)
        self.status, self.body = status, body


def post(
    session: requests.Session,
    name: str,
    url: str,
    *,
    json: object | None = None,
    data: Mapping[str, Any] | list[tuple[str, str]] | None = None,
    form: Sequence[tuple[str, FormValue]] | None = None,
    headers: Mapping[str, str] | None = None,
    auth: tuple[str, str] | None = None,
    timeout: tuple[float, float] = TIMEOUT,
) -> requests.Response:
    """POST ``json`` (orjson), ``data`` (form-urlencoded) or ``form`` (multipart/form-data, text
    fields and files) and return a 2xx answer; anything else raises :class:`ProviderError`."""
    sent_headers = dict(headers or {})
    body: bytes | Mapping[str, Any] | list[tuple[str, str]] | None = data
    if json is not None:
        body = orjson.dumps(json)
        sent_headers["Content-Type"] = "application/json"
    files = None
    if form is not None:  # multipart: every field a part, files with their name and type
        files = [(k, v if isinstance(v, tuple) else (None, v)) for k, v in form]
    try:
        answer = session.post(
            url,
            data=body,
            files=files,
            headers=sent_headers,
            auth=auth or _HEADERS_ONLY,
            timeout=timeout,
            allow_redirects=False,
        )
    except _MALFORMED as exc:  # refused by requests itself: nothing left this machine
        # Its words may quote the header, which holds the key: only its kind is told.
        raise ProviderError(
            f"{name}: the request could not be made ({exc.__class__.__name__})",
            "check the API key env var (a stray newline?) and the account's settings in the "
            "partner's [provider]; its mailings are paused",
            transient=False,
            auth=True,
        ) from exc
    except requests.RequestException as exc:
        if _not_connected(exc):
            raise ProviderError(
                f"{name}: cannot connect ({_cause(exc)})",
                "the provider or the network is down; the batch is retried later",
                transient=True,
            ) from exc
        said = (
            f"no answer within {timeout[1]:g} s after sending"
            if isinstance(exc, requests.Timeout)
            else f"the connection was lost after sending ({_cause(exc)})"
        )
        raise ProviderError(
            f"{name}: {said}",
            "the provider may have taken these messages: they wait for its events, not resent",
            transient=True,
            maybe_sent=True,
        ) from exc
    status = answer.status_code
    if 200 <= status < 300:
        return answer
    said = answer.text[:300].strip()
    if 300 <= status < 400:
        raise ProviderError(
            f"{name}: the API answered {status} {answer.reason}, sending the request on to "
            f"{answer.headers.get('Location') or 'no address'}; it was not followed",
            "check the network between this machine and the provider (a proxy or a captive "
            "portal answers so); the account's mailings are paused until `jvmail resume`",
            transient=False,
            auth=True,
        )
    if status in (401, 403):
        raise ProviderError(
            f"{name}: the account's key was refused ({status}: {said})",
            "check the API key env var named in the partner's [provider]; its mailings are paused",
            transient=False,
            auth=True,
        )
    if status == 429 or status >= 500:
        raise ProviderError(
            f"{name}: {status} {answer.reason} ({said})",
            "a passing refusal; the batch is retried later",
            transient=True,
            retry_after=_seconds(answer.headers.get("Retry-After")),
        )
    raise Refused(
        f"{name}: the request was refused ({status}: {said})",
        "the provider's message above says what to change",
        status=status,
        body=answer.text,
    )


# What requests refuses to send at all: a header value it cannot carry, a URL it cannot use.
_MALFORMED = (
    requests.exceptions.InvalidHeader,
    requests.exceptions.InvalidURL,
    requests.exceptions.InvalidSchema,
    requests.exceptions.MissingSchema,
)


def _not_connected(exc: requests.RequestException) -> bool:
    """Whether the request failed before a connection was made, so that no byte of it left:
    urllib3 reports those (refused, unresolvable, connect timeout, the proxy or the TLS
    handshake failing) as its retries exhausted on that error. Anything after (a reset, a
    close before the answer) may follow a request the provider read whole."""
    reason = exc.args[0] if exc.args else None
    if not isinstance(reason, MaxRetryError):
        return False
    return isinstance(
        reason.reason, NewConnectionError | ConnectTimeoutError | ProxyError | SSLError
    )


def _cause(exc: BaseException) -> str:
    """The innermost reason of a requests error, e.g. ``ConnectionRefusedError``."""
    while exc.__context__ is not None and exc.__context__ is not exc:
        exc = exc.__context__
    reason = exc.args[0] if isinstance(exc, MaxRetryError | ProtocolError) and exc.args else exc
    return reason.__class__.__name__ if isinstance(reason, BaseException) else type(exc).__name__


def _seconds(value: str | None) -> float | None:
    """A Retry-After header in seconds from now: it is either a number of seconds or an
    HTTP-date (RFC 9110, section 10.2.3); None when absent or unreadable."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:  # an HTTP-date is always GMT
        when = when.replace(tzinfo=dt.UTC)
    return max(0.0, when.timestamp() - time.time())
