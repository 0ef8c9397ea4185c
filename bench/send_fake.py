"""A fake SendGrid /v3/mail/send for bench/send.py, run as its own process.

It parses every body, adds ``--latency`` ms per request (a provider far away), counts the
recipients it accepted and any it saw twice, and reports the counts at GET /stats.
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import orjson


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--latency", type=float, default=10.0)
    args = parser.parse_args()
    seen: set[str] = set()
    counts = {"requests": 0, "accepted": 0, "duplicates": 0}
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            body = orjson.loads(self.rfile.read(int(self.headers["Content-Length"])))
            ids = [p["custom_args"]["jv_delivery"] for p in body["personalizations"]]
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
