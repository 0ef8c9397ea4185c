"""dramatiq worker entry point: `dramatiq workers` (what `jvmail worker` runs).

The broker and the actors come from jvmail.dispatch.boot, configured from the environment.
"""

from jvmail.dispatch.boot import actors, broker

__all__ = ["actors", "broker"]
