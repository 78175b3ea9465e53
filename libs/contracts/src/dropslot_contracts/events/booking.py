from __future__ import annotations

import uuid
from datetime import datetime

from pydantic import BaseModel

from ..envelope import Event
from ..registry import register


class ReservationSnapshot(BaseModel):
    reservation_id: uuid.UUID
    slot_id: uuid.UUID
    drop_id: uuid.UUID
    store_id: uuid.UUID
    user_id: uuid.UUID
    state: str
    slot_start: datetime
    slot_end: datetime
    amount_cents: int
    currency: str
    requires_payment: bool
    expires_at: datetime | None = None
    drop_name: str | None = None
    product_name: str | None = None
    qr_code_url: str | None = None
    checkin_token: str | None = None
    # Added (optional): enough for notifications/webhooks to describe the reservation alone.
    store_name: str | None = None
    customer_note: str | None = None
    payment_id: uuid.UUID | None = None
    payment_status: str | None = None
    cancel_reason: str | None = None
    created_at: datetime | None = None
    confirmed_at: datetime | None = None
    cancelled_at: datetime | None = None
    expired_at: datetime | None = None
    checked_in_at: datetime | None = None


@register
class SlotCreated(Event):
    TYPE = "booking.slot.created"
    slot_id: uuid.UUID
    drop_id: uuid.UUID
    store_id: uuid.UUID
    start_time: datetime
    end_time: datetime
    capacity_total: int


@register
class SlotUpdated(Event):
    TYPE = "booking.slot.updated"
    slot_id: uuid.UUID
    drop_id: uuid.UUID
    store_id: uuid.UUID
    capacity_total: int


class ReservationEvent(Event):
    reservation: ReservationSnapshot


@register
class ReservationCreated(ReservationEvent):
    TYPE = "booking.reservation.created"


@register
class ReservationConfirmed(ReservationEvent):
    TYPE = "booking.reservation.confirmed"


@register
class ReservationCancelled(ReservationEvent):
    TYPE = "booking.reservation.cancelled"
    reason: str  # customer | store | payment_failed | drop_cancelled
    refund: bool = False


@register
class ReservationExpired(ReservationEvent):
    TYPE = "booking.reservation.expired"


@register
class ReservationCheckedIn(ReservationEvent):
    TYPE = "booking.reservation.checked_in"


@register
class HoldExpiring(ReservationEvent):
    """A hold is about to lapse: a reminder for the customer, and for payments a prompt to ask
    the provider for the intent's true status (`final_check`: booking deferred the expiry once
    because the payment was still in flight)."""

    TYPE = "booking.reservation.expiring"
    final_check: bool = False


@register
class RefundRequested(Event):
    """Booking asks payments to give money back (a late payment for a lost seat)."""

    TYPE = "booking.refund.requested"
    reservation_id: uuid.UUID
    user_id: uuid.UUID
    reason: str


class WaitlistEntry(BaseModel):
    entry_id: uuid.UUID
    slot_id: uuid.UUID
    drop_id: uuid.UUID
    store_id: uuid.UUID
    user_id: uuid.UUID
    position: int
    state: str
    offer_expires_at: datetime | None = None
    slot_start: datetime | None = None
    drop_name: str | None = None
    # Added (optional).
    slot_end: datetime | None = None
    product_name: str | None = None
    store_name: str | None = None


class WaitlistEvent(Event):
    entry: WaitlistEntry


@register
class WaitlistJoined(WaitlistEvent):
    TYPE = "booking.waitlist.joined"


@register
class WaitlistOfferMade(WaitlistEvent):
    TYPE = "booking.waitlist.offered"


@register
class WaitlistOfferLapsed(WaitlistEvent):
    """An entry left the line without a seat: its offer lapsed ("offer_expired"), or the slot
    started / the drop ended or was cancelled while it waited (added, optional: `reason`)."""

    TYPE = "booking.waitlist.lapsed"
    reason: str | None = None


@register
class WaitlistAccepted(WaitlistEvent):
    TYPE = "booking.waitlist.accepted"
    reservation_id: uuid.UUID


@register
class WaitlistLeft(WaitlistEvent):
    TYPE = "booking.waitlist.left"
