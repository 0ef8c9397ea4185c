"""The embedded default: every message becomes a real .eml file in a folder.

``<folder>/<mailing id>/<delivery id>.eml``, written to a temporary name and renamed, so a file
is either whole or absent. Any mail client opens the files. ``<folder>/journal.log`` gets one
line per message handed over (``<mailing id> <delivery id>``), appended in one write per
request from any number of processes: the outbox's record of what it was given, as a real
provider's logs would be.

A single message (a statement) is filed under its name, ``<folder>/<name>.eml``, the same way
(it is no mailing's, so it is not in the journal).
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from email.utils import formataddr
from pathlib import Path

from jvmail.providers.base import (
    Capabilities,
    OutboundBatch,
    Provider,
    ProviderError,
    Recipient,
    Result,
    SingleMessage,
)

__all__ = ["OutboxProvider"]

_PART = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")  # a file or folder name, never .. or hidden


class OutboxProvider(Provider):
    name = "outbox"
    capabilities = Capabilities(max_batch=1000, substitution=False, metadata=True, single=True)

    def __init__(self, folder: Path, *, from_addr: str = "", from_name: str = "") -> None:
        self.folder = folder
        self.sender = formataddr((from_name, from_addr)) if from_addr else ""

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

    def _send_message(self, message: SingleMessage) -> str:
        parts = message.name.split("/")
        if not all(_PART.match(p) for p in parts):
            raise ValueError(f"not a plain relative name: {message.name!r}")
        final = self.folder.joinpath(*parts[:-1], f"{parts[-1]}.eml")
        partial = final.with_name(f".{final.name}.part")
        try:
            final.parent.mkdir(parents=True, exist_ok=True)
            partial.write_bytes(message.mime(self.sender))
            os.replace(partial, final)
        except OSError as exc:
            raise ProviderError(
                f"outbox: cannot write {final}: {exc.strerror}",
                "check the folder exists and can be written; it is tried again later",
                transient=True,
            ) from exc
        return message.message_id
