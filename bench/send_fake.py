"""A fake SendGrid /v3/mail/send for bench/send.py, run as its own process.

It reads the delivery id of every recipient of every body, adds ``--latency`` ms per request
(a provider far away), counts the recipients it accepted and any it saw twice, and reports the
counts at GET /stats. The ids are read by a scan of the body's bytes, not a JSON parse: the
fake runs on the workers' own cores, where parsing a 750 kB body took 3 to 5 ms, CPU that a
provider far away does not take from them (the providers' contract tests in tests/providers
check the bodies themselves).
"""

from __future__ import annotations

import argparse
import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

DELIVERY = re.compile(rb'"jv_delivery":"(\d+)"')  # SendGrid custom_args, as jvmail writes them


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--latency", type=float, default=10.0)
    args = parser.parse_args()
    seen: set[bytes] = set()
    counts = {"requests": 0, "accepted": 0, "duplicates": 0}
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            ids = DELIVERY.findall(body)
            if not body.startswith(b'{"personalizations":[') or not ids:
                self.send_response(400)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            time.sleep(args.latency / 1000)  # the provider's own latency, simulated
            with lock:
                counts["requests"] += 1
                counts["accepted"] += len(ids)
                counts["duplicates"] += sum(1 for i in ids if i in seen)
                seen.update(ids)
            self.send_response(202)
            self.send_header("X-Message-Id", f"bench{counts['requests']}")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def do_GET(self) -> None:
            data = json.dumps(counts).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: object) -> None:
            return

    server = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    server.daemon_threads = True
    server.serve_forever()


if __name__ == "__main__":
    main()
