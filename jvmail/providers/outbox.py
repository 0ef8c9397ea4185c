"""The embedded default: every message becomes a real .eml file in a folder.

``<folder>/<mailing id>/<delivery id>.eml``, written to a temporary name and renamed, so a file
is either whole or absent. Any mail client opens the files. ``<folder>/journal.log`` gets one
line per message handed over (``<mailing id> <delivery id>``), appended in one write per
request from any number of processes: the outbox's record of what it was given, as a real
provider's logs would be.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from jvmail.providers.base import Capabilities, OutboundBatch, Provider, Recipient, Result

__all__ = ["OutboxProvider"]


class OutboxProvider(Provider):
    name = "outbox"
    capabilities = Capabilities(max_batch=1000, substitution=False, metadata=True)

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def _send(self, batch: OutboundBatch, recipients: Sequence[Recipient]) -> list[Result]:
        where = self.folder / str(batch.mailing_id)
        where.mkdir(parents=True, exist_ok=True)
        results = []
        for r in recipients:
            data = batch.skeleton.message(
                r.delivery_id, r.email, r.values, batch.unsubscribe_mailto
            )
            final = where / f"{r.delivery_id}.eml"
            partial = where / f".{r.delivery_id}.eml.part"
            partial.write_bytes(data)
            os.replace(partial, final)
            results.append(Result(r.delivery_id, True, batch.skeleton.message_id(r.delivery_id)))
        lines = "".join(f"{batch.mailing_id} {r.delivery_id}\n" for r in recipients)
        fd = os.open(self.folder / "journal.log", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, lines.encode("ascii"))
        finally:
            os.close(fd)
        return results
