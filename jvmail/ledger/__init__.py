"""The ledger: append-only entries of value given and received, and the balances derived."""

from jvmail.ledger.book import (
    PartnerBalance,
    Summary,
    finalize_due,
    load_entries,
    post,
    summarize,
)
from jvmail.ledger.postings import Entry, Transfer, View, settlements

__all__ = [
    "Entry",
    "PartnerBalance",
    "Summary",
    "Transfer",
    "View",
    "finalize_due",
    "load_entries",
    "post",
    "settlements",
    "summarize",
]
