"""The few HTML pages the tracking server shows people: small, self-contained, never cached."""

from __future__ import annotations

import html

from starlette.responses import HTMLResponse

__all__ = ["NO_STORE", "not_found", "page"]

NO_STORE = {"Cache-Control": "no-store, private", "Referrer-Policy": "no-referrer"}


def page(title: str, body: str, status: int = 200) -> HTMLResponse:
    document = (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        '<meta name=viewport content="width=device-width,initial-scale=1">'
        f"<title>{html.escape(title)}</title><style>"
        "body{font:16px/1.5 system-ui,sans-serif;max-width:32rem;margin:3rem auto;padding:0 1rem;"
        "color:#222}button{font:inherit;padding:.6rem 1.2rem;border:0;border-radius:6px;"
        "background:#1f5fbf;color:#fff;cursor:pointer;margin:0 .5rem .5rem 0}"
        "button.quiet{background:#e4e7ec;color:#222}input{font:inherit;width:100%;"
        "box-sizing:border-box;margin:.5rem 0 1rem;padding:.4rem}</style></head>"
        f"<body>{body}</body></html>"
    )
    return HTMLResponse(document, status, headers=NO_STORE)


NOT_FOUND = "This link is not valid. If you copied it, check that it is complete."


def not_found() -> HTMLResponse:
    return page("Not found", f"<h1>Link not found</h1><p>{NOT_FOUND}</p>", 404)
