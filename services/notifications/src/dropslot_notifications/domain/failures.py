"""Delivery failures: a transient one is retried with backoff, a permanent one is final."""

from __future__ import annotations


class DeliveryFailure(Exception):
    permanent: bool = False

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason[:1000]


class TransientFailure(DeliveryFailure):
    """Worth retrying: the server is down, busy, or said 4xx."""


class PermanentFailure(DeliveryFailure):
    """Retrying cannot help: a broken template, a refused address, a 5xx from SMTP."""

    permanent = True


class TemplateFailure(PermanentFailure):
    """The template did not render (syntax error, missing data)."""


def smtp_code_is_permanent(code: int) -> bool:
    """RFC 5321: 5yz is a permanent negative reply, 4yz transient. Authentication failures
    (530/534/535) are configuration problems an operator fixes, so they are retried."""
    return 500 <= code < 600 and code not in (530, 534, 535)


def http_status_is_permanent(status: int) -> bool:
    """A provider's 4xx means the request itself is wrong (bad number, unknown token), except
    for timeouts, conflicts on idempotency and throttling, which are worth another try."""
    return 400 <= status < 500 and status not in (408, 409, 425, 429)


class RecipientsNotKnownYet(Exception):
    """An event asks for a message to people notifications has not heard of yet (a store whose
    catalog.store.created is still on its way on another queue). Raised from a handler, it sends
    the event through the consumer's retry queues and, if they are still unknown, to its
    dead-letter queue, where an operator can see it and replay it."""
