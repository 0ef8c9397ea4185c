"""Was an open or a click made by a person? Machine-made ones are stored but never credited.

A request is machine-made when it is a HEAD (link checkers), carries no user agent or the bare
``Mozilla/5.0`` of Apple's Mail Privacy Protection prefetch, or names a known link scanner,
security gateway or HTTP library. Gmail's and Yahoo's image proxies fetch the pixel when a person
opens the message, so their opens count as human. Clicks that hit every link of a message within
a few seconds (a scanner following them all) are flagged afterwards, when they are stored
(:func:`jvmail.tracking.store.flag_link_sweeps`).
"""

from __future__ import annotations

__all__ = ["SWEEP_SECONDS", "machine_request"]

# Lowercased fragments of user agents that are never a person's browser.
MACHINE_AGENTS = (
    "bot",
    "spider",
    "crawl",
    "slurp",
    "preview",
    "scanner",
    "barracuda",
    "proofpoint",
    "mimecast",
    "safelinks",
    "existence discovery",  # Microsoft Office checking a link before it opens it
    "symantec",
    "trendmicro",
    "fortiguard",
    "headlesschrome",
    "python-requests",
    "python-urllib",
    "aiohttp",
    "httpx",
    "curl/",
    "wget/",
    "go-http-client",
    "okhttp",
    "java/",
    "libwww",
)
MPP_AGENT = "mozilla/5.0"  # Apple Mail Privacy Protection prefetches with nothing more
SWEEP_SECONDS = 10.0  # every link of a message clicked within this span: a scanner


def machine_request(method: str, user_agent: str | None) -> bool:
    """True when a click or open request was made by a machine, not a person."""
    if method.upper() == "HEAD":
        return True
    agent = (user_agent or "").strip().lower()
    if not agent or agent == MPP_AGENT:
        return True
    return any(fragment in agent for fragment in MACHINE_AGENTS)
