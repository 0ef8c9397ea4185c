"""Benchmark: the SMTP client's own CPU per message, jvmail's transaction against smtplib's.

Both send the same 10 KB message over one kept-open connection to a local aiosmtpd sink (its
own process, `bench/smtp_sink.py`), one after the other; printed: messages per second (the
sink's pace, the same for both) and this process's user and system CPU per message. The
floor is ``smtplib.SMTP.sendmail``, what the provider called before.

    python bench/smtp_client.py [--messages N]
"""

from __future__ import annotations

import argparse
import resource
import smtplib
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from jvmail.providers.smtp import _transaction

HERE = Path(__file__).parent
MESSAGE = (
    b"From: a@sender.example\r\nTo: b@mail.example\r\nSubject: hi\r\nMessage-ID: <1@x>\r\n\r\n"
    + b"a line of an ordinary message body, of ordinary length\r\n" * 190
)


def _port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _timed(label: str, send: Callable[[], object], n: int) -> float:
    before = resource.getrusage(resource.RUSAGE_SELF)
    start = time.perf_counter()
    for _ in range(n):
        send()
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_SELF)
    user = (after.ru_utime - before.ru_utime) / n * 1e6
    system = (after.ru_stime - before.ru_stime) / n * 1e6
    print(
        f"{label}: {n / wall:,.0f} messages/s, user {user:.0f} us, system {system:.0f} us a message"
    )
    return user


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=3000)
    args = parser.parse_args()
    port = _port()
    sink = subprocess.Popen([sys.executable, str(HERE / "smtp_sink.py"), "--port", str(port)])
    try:
        for _ in range(100):
            try:
                conn = smtplib.SMTP("127.0.0.1", port, timeout=10)
                break
            except OSError:
                time.sleep(0.05)  # the sink is still starting
        conn.ehlo()
        print(f"{len(MESSAGE):,} bytes a message, one connection")
        floor = _timed(
            "floor, smtplib sendmail",
            lambda: conn.sendmail("a@sender.example", ["b@mail.example"], MESSAGE),
            args.messages,
        )
        ours = _timed(
            "jvmail transaction",
            lambda: _transaction(conn, "a@sender.example", "b@mail.example", MESSAGE),
            args.messages,
        )
        print(f"user CPU: {ours / floor:.2f}x the floor")
        conn.quit()
    finally:
        sink.terminate()
        sink.wait(timeout=10)


if __name__ == "__main__":
    main()
