from __future__ import annotations

import uuid

from ..envelope import Event
from ..registry import register


class PaymentEvent(Event):
    payment_id: uuid.UUID
    store_id: uuid.UUID | None = None
    reservation_id: uuid.UUID
    user_id: uuid.UUID | None = None
    provider: str
    status: str
    amount_cents: int
    currency: str
    # Additive (optional): the provider's intent id, and what was captured / refunded so far.
    provider_intent_id: str | None = None
    captured_cents: int | None = None
    total_refunded_cents: int | None = None


@register
class PaymentCreated(PaymentEvent):
    TYPE = "payments.payment.created"


@register
class PaymentStatusChanged(PaymentEvent):
    TYPE = "payments.payment.status_changed"
    previous_status: str


@register
class PaymentAuthorized(PaymentEvent):
    """The provider holds the money (intent `requires_capture`); captured once booking confirms."""

    TYPE = "payments.payment.authorized"


@register
class PaymentSucceeded(PaymentEvent):
    TYPE = "payments.payment.succeeded"


@register
class PaymentFailed(PaymentEvent):
    TYPE = "payments.payment.failed"
    reason: str


@register
class PaymentCanceled(PaymentEvent):
    TYPE = "payments.payment.canceled"
    reason: str | None = None  # why payments canceled the intent (reservation_expired, refund_requested, ...)


@register
class PaymentRefunded(PaymentEvent):
    TYPE = "payments.payment.refunded"
    refunded_cents: int  # this refund
    total_refunded_cents: int
    refund_id: uuid.UUID | None = None
    reason: str | None = None  # store_owner | reservation_cancelled | refund_requested
