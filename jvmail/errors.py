"""Every error jvmail raises on purpose derives from one root.

The tree::

    JvmailError                 anything jvmail reports as a clear message, never a traceback
    ├── ConfigError             the config directory is invalid; carries every problem found
    ├── SubscriberImportError   a subscriber CSV cannot be imported (unreadable, or strict mode)
    ├── UsageError              a command-line argument names something that does not exist
    ├── DatabaseError           the database cannot be reached or migrated
    └── BrokerError             the message broker cannot be reached

Each error has a ``fix``: one line telling the user what to do about it. Third-party errors are
wrapped with ``raise ... from`` so ``--debug`` still shows the cause.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

__all__ = [
    "BrokerError",
    "Busy",
    "ConfigError",
    "ConfigProblem",
    "DatabaseError",
    "Interrupted",
    "JvmailError",
    "SubscriberImportError",
    "UsageError",
]


class JvmailError(Exception):
    """Root of jvmail's errors. ``exit_code`` is what the CLI exits with."""

    exit_code = 1

    def __init__(self, message: str, fix: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.fix = fix


@dataclass(frozen=True)
class ConfigProblem:
    """One thing wrong in one config file.

    ``line`` is 1-based, or None where the position cannot be told; ``key`` is the dotted key path
    (``lists[1].max_sends_per_week``), or "" for a whole-file problem.
    """

    file: str
    line: int | None
    key: str
    message: str
    fix: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        key = f" {self.key}:" if self.key else ""
        return f"{where}:{key} {self.message} (fix: {self.fix})"


class ConfigError(JvmailError):
    """The config directory is invalid. ``problems`` lists all that was found in one pass."""

    exit_code = 2

    def __init__(self, problems: Sequence[ConfigProblem]) -> None:
        count = len(problems)
        noun = "problem" if count == 1 else "problems"
        super().__init__(
            f"{count} config {noun} found; nothing was written",
            "correct each line above and run the command again",
        )
        self.problems = tuple(problems)


class SubscriberImportError(JvmailError):
    """A subscriber CSV could not be imported; the sync that asked for it wrote nothing."""

    exit_code = 2


class UsageError(JvmailError):
    """A command-line argument is well-formed but names nothing known (e.g. a partner id)."""

    exit_code = 2


class Busy(JvmailError):
    """What the command needs is held by another process that does not let go; try again."""


class Interrupted(JvmailError):
    """The user stopped the command (Ctrl-C) half way; the message says what state it left."""

    exit_code = 130  # as a shell reports a command ended by SIGINT


class DatabaseError(JvmailError):
    """The database could not be reached, opened or migrated."""


class BrokerError(JvmailError):
    """The message broker could not be reached."""
