"""aiosmtpd's Sink handler (accepts every message, keeps nothing) served by ``--processes``
processes on one port (``SO_REUSEPORT``: the kernel spreads the connections among them).

One aiosmtpd process takes about a core for 1,700 messages/s, so with a single process the
sink, not the sender, sets the pace of ``bench/send.py``'s SMTP path.

    python bench/smtp_sink.py --port 2525 --processes 2
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import signal

from aiosmtpd.handlers import Sink
from aiosmtpd.smtp import SMTP


def _serve(host: str, port: int) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(
            lambda: SMTP(Sink(), hostname="sink.example"), host, port, reuse_port=True
        )
        stop = asyncio.Event()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        async with server:
            await stop.wait()

    asyncio.run(main())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--processes", type=int, default=1)
    args = parser.parse_args()
    children = [
        multiprocessing.Process(target=_serve, args=(args.host, args.port))
        for _ in range(args.processes)
    ]
    for child in children:
        child.start()

    def stop(*_: object) -> None:
        for child in children:
            child.terminate()

    signal.signal(signal.SIGTERM, stop)
    for child in children:
        child.join()


if __name__ == "__main__":
    main()
