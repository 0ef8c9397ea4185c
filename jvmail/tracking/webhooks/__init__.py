"""Webhook parsers, one module per provider: ``parse(headers, body, keys, now) -> list[Event]``.

Each is a pure function of the request: it verifies the raw body first (signature, credentials,
freshness), then maps every provider event to a `jvmail.tracking.events.Event`, or raises
`jvmail.tracking.events.Rejected` for the whole request. Shared steps are in `common`.
"""
