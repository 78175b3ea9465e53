"""One module per producing service; importing this package registers every event."""

from . import audit, booking, catalog, identity, notifications, payments, webhooks

__all__ = ["audit", "booking", "catalog", "identity", "notifications", "payments", "webhooks"]
