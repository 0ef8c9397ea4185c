"""Which failed requests left nothing at the provider: only those that never connected."""

from __future__ import annotations

from http.client import RemoteDisconnected

import pytest
import requests
from urllib3.exceptions import (
    ConnectTimeoutError,
    MaxRetryError,
    NewConnectionError,
    ProtocolError,
    ProxyError,
    SSLError,
)

from jvmail.providers.http import _not_connected


def _exhausted(reason: Exception) -> MaxRetryError:
    return MaxRetryError(None, "/v3/mail/send", reason)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("error", "never_sent"),
    [
        # As requests raises them (urllib3 2, no retries): the connect failed...
        (requests.ConnectTimeout(_exhausted(ConnectTimeoutError(None, "timed out"))), True),
        (requests.ConnectionError(_exhausted(NewConnectionError(None, "refused"))), True),  # type: ignore[arg-type]
        (requests.exceptions.SSLError(_exhausted(SSLError("certificate has expired"))), True),
        (requests.exceptions.ProxyError(_exhausted(ProxyError("no proxy", OSError()))), True),
        # ... or the request went out, and then:
        (requests.ConnectionError(ProtocolError("aborted", RemoteDisconnected("closed"))), False),
        (requests.ConnectionError(ProtocolError("aborted", ConnectionResetError(104))), False),
        (requests.ReadTimeout("read timed out"), False),
        (requests.exceptions.ChunkedEncodingError("cut off"), False),
    ],
)
def test_only_a_connection_never_made_left_nothing(
    error: requests.RequestException, never_sent: bool
) -> None:
    assert _not_connected(error) is never_sent
