"""Tracking: signed links in every message, and (to come) the HTTP side that answers them."""
