"""What payments consumes: booking's reservation lifecycle (one queue, so the events of one
reservation are seen in the order booking published them, retries aside) and store
memberships for the owner-only refund."""

from __future__ import annotations

from typing import Any

from dropslot_contracts import Envelope
from dropslot_kit.broker import EventConsumers
from dropslot_kit.db import UnitOfWork
from dropslot_kit.memberships import consume_memberships

from .config import Settings
from .service import payments as uc

BOOKING_EVENTS = (
    "booking.reservation.created", "booking.reservation.confirmed", "booking.reservation.cancelled",
    "booking.reservation.expired", "booking.reservation.expiring", "booking.refund.requested",
)


def _may_need_payment(event_type: str, data: dict[str, Any]) -> bool:
    """False only for a reservation event that plainly needs no payment (a free drop's): in a
    storm on a free drop those are nearly all booking publishes, and payments would otherwise
    validate each, and spend a transaction and an inbox row on it, just to ignore it. Anything
    else (including a shape it does not recognise) goes to the handler."""
    r = data.get("reservation")
    if event_type == "booking.refund.requested" or not isinstance(r, dict):
        return True
    return r.get("requires_payment") is not False and r.get("amount_cents") != 0


def build_consumers(settings: Settings) -> EventConsumers:
    consumers = EventConsumers("payments")
    consume_memberships(consumers)

    @consumers.on(*BOOKING_EVENTS, name="reservations", wants=_may_need_payment)
    async def on_booking(env: Envelope, uow: UnitOfWork) -> None:
        if env.type == "booking.refund.requested":
            await uc.on_refund_requested(uow, env)
        else:
            await uc.on_reservation_event(uow, env, provider=settings.payments_provider)

    return consumers
