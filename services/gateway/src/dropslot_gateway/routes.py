"""Which service answers which public path (API.md). First match wins."""

from __future__ import annotations

import re

_RULES: list[tuple[re.Pattern[str], str]] = [
    (re.compile(r"^/api/v1/(auth|users)(/|$)"), "identity"),
    (re.compile(r"^/api/v1/stores/[^/]+/reservations(/|$)"), "booking"),
    (re.compile(r"^/api/v1/stores/[^/]+/webhook-endpoints(/|$)"), "webhooks"),
    (re.compile(r"^/api/v1/drops/[^/]+/slots(/|$)"), "booking"),
    (re.compile(r"^/api/v1/drops/[^/]+/subscriptions?(/|$)"), "notifications"),
    (re.compile(r"^/api/v1/(stores|products|drops)(/|$)"), "catalog"),
    (re.compile(r"^/api/v1/(slots|reservations|waitlist|checkins)(/|$)"), "booking"),
    (re.compile(r"^/api/v1/payments(/|$)"), "payments"),
    (re.compile(r"^/api/v1/notifications(/|$)"), "notifications"),
    (re.compile(r"^/api/v1/webhook-endpoints(/|$)"), "webhooks"),
    (re.compile(r"^/api/v1/audit-logs(/|$)"), "audit"),
]


def service_for(path: str) -> str | None:
    for pattern, service in _RULES:
        if pattern.match(path):
            return service
    return None
