"""Payment rules, no I/O: what a provider's intent snapshot means for our payment, and which
provider command the saga needs next.

The provider is the source of truth. We never move a payment because an event *says* so;
we fetch the intent and map its current state (`apply_snapshot`). So duplicates and
out-of-order callbacks converge: applying the same truth twice changes nothing.

`next_command` is declarative: given everything we know about a payment (its status and
the reservation's state as booking told us), it names the one provider call still
needed, or None. It is evaluated after every change, so a lost or failed command is
simply decided again later (by the next event or by reconciliation).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any


class Status(StrEnum):
    CREATING = "creating"  # our row exists, the provider intent not yet (never shown by the API)
    REQUIRES_PAYMENT_METHOD = "requires_payment_method"
    REQUIRES_ACTION = "requires_action"
    PROCESSING = "processing"
    REQUIRES_CAPTURE = "requires_capture"
    SUCCEEDED = "succeeded"
    PARTIALLY_REFUNDED = "partially_refunded"
    REFUNDED = "refunded"
    CANCELED = "canceled"
    FAILED = "failed"


class IntentStatus(StrEnum):
    """A provider intent's states (Stripe's PaymentIntent vocabulary)."""

    REQUIRES_PAYMENT_METHOD = "requires_payment_method"
    REQUIRES_CONFIRMATION = "requires_confirmation"
    REQUIRES_ACTION = "requires_action"
    PROCESSING = "processing"
    REQUIRES_CAPTURE = "requires_capture"
    SUCCEEDED = "succeeded"
    CANCELED = "canceled"


CAPTURED = frozenset({Status.SUCCEEDED, Status.PARTIALLY_REFUNDED, Status.REFUNDED})
# Waiting on the customer or the provider: reconciliation asks about these when they linger.
OPEN = frozenset({
    Status.CREATING, Status.REQUIRES_PAYMENT_METHOD, Status.REQUIRES_ACTION, Status.PROCESSING,
    Status.REQUIRES_CAPTURE,
})
# The intent can still be canceled at the provider (Stripe's rule; `processing` cannot).
CANCELABLE_INTENT = frozenset({
    IntentStatus.REQUIRES_PAYMENT_METHOD, IntentStatus.REQUIRES_CONFIRMATION, IntentStatus.REQUIRES_ACTION,
    IntentStatus.REQUIRES_CAPTURE,
})


class ReservationState(StrEnum):
    PENDING = "PENDING"
    CONFIRMED = "CONFIRMED"
    CHECKED_IN = "CHECKED_IN"
    CANCELLED = "CANCELLED"
    EXPIRED = "EXPIRED"


ENDED = frozenset({ReservationState.CANCELLED, ReservationState.EXPIRED})


class Milestone(StrEnum):
    AUTHORIZED = "authorized"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELED = "canceled"
    REFUNDED = "refunded"


class Command(StrEnum):
    CREATE = "create"
    CAPTURE = "capture"
    CANCEL = "cancel"
    REFUND_REMAINING = "refund_remaining"
    ABANDON = "abandon"  # no intent was ever created and none is needed: close the row locally


@dataclass(frozen=True)
class IntentSnapshot:
    """A provider intent as the provider reports it now (provider-neutral)."""

    id: str
    status: IntentStatus
    amount: int
    currency: str  # ISO 4217, upper case
    amount_capturable: int = 0
    amount_received: int = 0
    amount_refunded: int = 0
    client_secret: str | None = None
    last_error_code: str | None = None
    last_error_message: str | None = None
    next_action: dict[str, Any] | None = None
    cancellation_reason: str | None = None
    metadata: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class PaymentFacts:
    """What the rules need to know about one payment."""

    status: Status
    amount_cents: int
    has_intent: bool = False
    intent_status: IntentStatus | None = None
    captured_cents: int = 0
    refunded_cents: int = 0
    failure_reason: str | None = None
    reservation_state: ReservationState = ReservationState.PENDING
    reservation_confirmed: bool = False  # booking confirmed it at some point
    refund_on_cancel: bool = False  # booking's cancellation said refund=True
    refund_requested: bool = False  # booking.refund.requested (a late payment for a lost seat)
    cancel_requested: bool = False  # we asked the provider to cancel
    refund_ledger_cents: int = 0  # refunds we asked for that did not fail (pending or done)


@dataclass(frozen=True)
class Outcome:
    status: Status
    intent_status: IntentStatus
    captured_cents: int
    refunded_cents: int
    failure_reason: str | None
    next_action: dict[str, Any] | None
    milestones: tuple[Milestone, ...] = ()
    refunded_delta: int = 0

    def changed(self, before: PaymentFacts) -> bool:
        return (
            self.status != before.status
            or self.intent_status != before.intent_status
            or self.captured_cents != before.captured_cents
            or self.refunded_cents != before.refunded_cents
        )


def captured_status(captured: int, refunded: int) -> Status:
    if refunded <= 0:
        return Status.SUCCEEDED
    return Status.REFUNDED if refunded >= captured else Status.PARTIALLY_REFUNDED


def apply_snapshot(p: PaymentFacts, snap: IntentSnapshot) -> Outcome:
    """Our payment after learning the intent's true state. Pure; idempotent."""
    base = Outcome(
        status=p.status, intent_status=snap.status, captured_cents=p.captured_cents,
        refunded_cents=p.refunded_cents, failure_reason=p.failure_reason,
        next_action=snap.next_action if snap.status == IntentStatus.REQUIRES_ACTION else None,
    )
    # Money that moved is never forgotten: captured and refunded amounts only grow.
    if p.status in CAPTURED or snap.status == IntentStatus.SUCCEEDED:
        captured = max(p.captured_cents, snap.amount_received)
        refunded = min(captured, max(p.refunded_cents, snap.amount_refunded))
        if captured <= 0:  # a stale snapshot of a captured payment: nothing new
            return replace(base, intent_status=p.intent_status or snap.status)
        milestones: list[Milestone] = []
        if p.status not in CAPTURED:
            milestones.append(Milestone.SUCCEEDED)
        delta = refunded - p.refunded_cents
        if delta > 0:
            milestones.append(Milestone.REFUNDED)
        return replace(
            base, status=captured_status(captured, refunded), intent_status=IntentStatus.SUCCEEDED,
            captured_cents=captured, refunded_cents=refunded, milestones=tuple(milestones), refunded_delta=delta,
            next_action=None,
        )
    if p.status == Status.CANCELED:
        return replace(base, intent_status=snap.status)  # terminal; only a capture (above) could follow
    match snap.status:
        case IntentStatus.REQUIRES_CAPTURE:
            ms = () if p.status == Status.REQUIRES_CAPTURE else (Milestone.AUTHORIZED,)
            return replace(base, status=Status.REQUIRES_CAPTURE, milestones=ms)
        case IntentStatus.CANCELED:
            if p.status == Status.FAILED:
                return base  # cleaning up a declined intent is not news
            if p.cancel_requested:
                return replace(base, status=Status.CANCELED, milestones=(Milestone.CANCELED,))
            reason = f"canceled_by_provider:{snap.cancellation_reason or 'unknown'}"
            return replace(base, status=Status.FAILED, failure_reason=reason, milestones=(Milestone.FAILED,))
        case IntentStatus.REQUIRES_PAYMENT_METHOD | IntentStatus.REQUIRES_CONFIRMATION:
            if snap.last_error_code:
                if p.status == Status.FAILED:
                    return base
                return replace(base, status=Status.FAILED, failure_reason=snap.last_error_code,
                               milestones=(Milestone.FAILED,))
            if p.status == Status.FAILED:
                return base  # a failure is final for us; booking already cancelled the reservation
            return replace(base, status=Status.REQUIRES_PAYMENT_METHOD)
        case IntentStatus.REQUIRES_ACTION:
            return replace(base, status=Status.REQUIRES_ACTION)
        case IntentStatus.PROCESSING:
            return replace(base, status=Status.PROCESSING)
    raise ValueError(f"unknown intent status {snap.status!r}")  # pragma: no cover


def next_command(p: PaymentFacts) -> Command | None:
    """The provider call the saga still needs for this payment, or None (see SAGA.md)."""
    ended = p.reservation_state in ENDED
    wants_money_back = p.refund_requested or (
        p.reservation_state == ReservationState.CANCELLED and p.refund_on_cancel
    )
    if not p.has_intent:
        if p.status != Status.CREATING:
            return None
        return Command.ABANDON if ended else Command.CREATE
    match p.status:
        case Status.REQUIRES_PAYMENT_METHOD | Status.REQUIRES_ACTION:
            # Unpaid and the hold is gone: nobody may pay for it any more.
            return Command.CANCEL if ended else None
        case Status.FAILED:
            # A declined intent still accepts another card at the provider; close it.
            if ended and p.intent_status in CANCELABLE_INTENT:
                return Command.CANCEL
            return None
        case Status.REQUIRES_CAPTURE:
            if wants_money_back:
                return Command.CANCEL  # release the authorization instead of capture-then-refund
            if p.reservation_state in (ReservationState.CONFIRMED, ReservationState.CHECKED_IN):
                return Command.CAPTURE
            if p.reservation_state == ReservationState.CANCELLED and p.reservation_confirmed:
                return Command.CAPTURE  # cancelled after confirmation without refund: the store keeps it
            # Authorized while the hold lapsed: booking decides (seat again -> confirmed,
            # else booking.refund.requested). Until then the authorization just waits.
            return None
        case Status.SUCCEEDED | Status.PARTIALLY_REFUNDED:
            if wants_money_back and p.refund_ledger_cents < p.captured_cents:
                return Command.REFUND_REMAINING
            return None
    return None


def refundable_cents(p: PaymentFacts) -> int:
    """What a store owner may still refund: captured minus everything refunded or in flight."""
    if p.status not in CAPTURED:
        return 0
    return max(0, p.captured_cents - max(p.refunded_cents, p.refund_ledger_cents))
