"""Reservation and waitlist state machines."""

from __future__ import annotations

from typing import Final

PENDING: Final = "PENDING"
CONFIRMED: Final = "CONFIRMED"
CHECKED_IN: Final = "CHECKED_IN"
CANCELLED: Final = "CANCELLED"
EXPIRED: Final = "EXPIRED"

RESERVATION_STATES: Final = (PENDING, CONFIRMED, CHECKED_IN, CANCELLED, EXPIRED)
# A reservation in one of these holds a seat (counted in slots.capacity_reserved) and counts
# against the rule's max_per_user.
ACTIVE: Final = frozenset({PENDING, CONFIRMED, CHECKED_IN})
CANCELLABLE: Final = frozenset({PENDING, CONFIRMED})

WAITING: Final = "WAITING"
OFFERED: Final = "OFFERED"
ACCEPTED: Final = "ACCEPTED"
LAPSED: Final = "LAPSED"
LEFT: Final = "LEFT"
WAITLIST_STATES: Final = (WAITING, OFFERED, ACCEPTED, LAPSED, LEFT)
# A waitlist entry in one of these is "in line" (one per user per slot).
IN_LINE: Final = frozenset({WAITING, OFFERED})

# Payment statuses (the provider's intent) during which the money may still arrive: a hold in
# one of these is extended once instead of expiring (SAGA.md).
PAYMENT_IN_FLIGHT: Final = frozenset({"processing", "requires_action", "requires_capture"})

_TRANSITIONS: Final = {
    PENDING: {CONFIRMED, CANCELLED, EXPIRED},
    CONFIRMED: {CHECKED_IN, CANCELLED},
    CHECKED_IN: set(),
    CANCELLED: set(),
    # A payment that lands after the hold lapsed may still win the seat back (SAGA.md).
    EXPIRED: {CONFIRMED},
}


def can_transition(current: str, new: str) -> bool:
    return new in _TRANSITIONS.get(current, set())


def initial_state(price_cents: int) -> str:
    """A free drop confirms at once; a paid one waits for its payment."""
    return CONFIRMED if price_cents <= 0 else PENDING
