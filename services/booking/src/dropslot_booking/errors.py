"""Booking's problem types (API.md), mapped to problem+json by the kit."""

from __future__ import annotations

from dropslot_kit.errors import Conflict, Forbidden, NotFound, Problem


class SoldOut(Conflict):
    slug, title = "sold-out", "Slot is sold out"


class LimitReached(Conflict):
    slug, title = "limit-reached", "Reservation limit reached"


class DropNotLive(Conflict):
    slug, title = "drop-not-live", "Drop is not live"


class SlotClosed(Conflict):
    slug, title = "slot-closed", "Slot has started or closed"


class EmailNotVerified(Forbidden):
    slug, title = "email-not-verified", "Verify your email address first"


class TooLateToCancel(Conflict):
    slug, title = "too-late-to-cancel", "Too late to cancel"


class NotCancellable(Conflict):
    slug, title = "reservation-not-cancellable", "Reservation cannot be cancelled in its state"


class OfferExpired(Conflict):
    slug, title = "offer-expired", "The waitlist offer has expired"


class NoOffer(Conflict):
    slug, title = "no-offer", "This waitlist entry has no seat offered yet"


class WaitlistClosed(Conflict):
    slug, title = "waitlist-closed", "This slot has no waitlist"


class SeatsAvailable(Conflict):
    slug, title = "seats-available", "Seats are available: reserve instead of joining the waitlist"


class AlreadyOnWaitlist(Conflict):
    slug, title = "already-on-waitlist", "You are already on this slot's waitlist"


class AlreadyReserved(Conflict):
    slug, title = "already-reserved", "You already hold a reservation for this slot"


class NotOnWaitlist(Conflict):
    slug, title = "not-on-waitlist", "This waitlist entry is closed"


class AlreadyCheckedIn(Conflict):
    slug, title = "already-checked-in", "Reservation is already checked in"


class NotCheckinWindow(Conflict):
    slug, title = "not-checkin-window", "Outside the check-in window"


class ReservationNotConfirmed(Conflict):
    slug, title = "reservation-not-confirmed", "Reservation is not confirmed"


class WrongStore(Forbidden):
    slug, title = "wrong-store", "This reservation belongs to another store"


class InvalidCheckinToken(Problem):
    status, slug, title = 400, "invalid-token", "The check-in token is invalid"


class IdempotencyKeyReused(Problem):
    status, slug, title = 422, "idempotency-key-reused", "Idempotency-Key was used for a different request"


class CapacityBelowTaken(Conflict):
    slug, title = "capacity-below-taken", "Capacity cannot shrink below the seats taken"


class SlotExists(Conflict):
    slug, title = "slot-exists", "A slot with these times already exists"


class DropClosed(Conflict):
    slug, title = "drop-closed", "The drop has ended or was cancelled"


class SlotOutsideDrop(Problem):
    status, slug, title = 422, "slot-outside-drop", "Slots must lie within the drop's time window"


class UnknownDrop(NotFound):
    slug, title = "not-found", "Drop not found"
