"""The registry: config synced into database rows, and subscriber imports."""

from jvmail.registry.subscribers import ImportResult, import_subscribers
from jvmail.registry.sync import Change, ImportProgress, SyncReport, sync_hub

__all__ = [
    "Change",
    "ImportProgress",
    "ImportResult",
    "SyncReport",
    "import_subscribers",
    "sync_hub",
]
