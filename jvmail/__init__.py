"""jvmail: joint-venture email cross-promotion with a fair, auditable reciprocity ledger."""

__version__ = "0.1.0"

__all__ = ["__version__"]
