"""Providers: one module per way of handing messages over, behind one contract (base.py)."""
