"""The floor bench/tracking.py compares the tracking server with: the same stack (Starlette under
uvicorn, started as `jvmail serve` starts it: same loop and HTTP implementation, access log at
info, proxy headers) answering with no work.

- ``GET /c/{token}``: a constant 302 to a constant URL, with the same headers as a click;
- ``POST /webhooks/{provider}/{account}``: reads the whole body and answers constant JSON;
- ``GET /healthz``.

Usage:
    python bench/tracking_floor.py [--port 8001] [--workers 1]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Route

HERE = Path(__file__).parent
URL = "https://owner.example/offer"
HEADERS = {"Cache-Control": "no-store, private", "Referrer-Policy": "no-referrer"}


async def click(_request: Request) -> Response:
    return RedirectResponse(URL, 302, headers=HEADERS)


async def webhook(request: Request) -> Response:
    await request.body()
    return JSONResponse({"accepted": 0, "confirmed": False})


async def healthz(_request: Request) -> Response:
    return JSONResponse({"ok": True})


def app() -> Starlette:
    return Starlette(
        routes=[
            Route("/c/{token}", click, methods=["GET", "HEAD"]),
            Route("/webhooks/{provider}/{account}", webhook, methods=["POST"]),
            Route("/healthz", healthz, methods=["GET"]),
        ]
    )


def main() -> None:
    import uvicorn

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8001)
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args()
    uvicorn.run(  # the same options as `jvmail serve` (jvmail/cli_tracking.py)
        "tracking_floor:app",
        app_dir=str(HERE),
        factory=True,
        host=args.host,
        port=args.port,
        workers=args.workers,
        proxy_headers=True,
        log_level="info",
    )


if __name__ == "__main__":
    main()
