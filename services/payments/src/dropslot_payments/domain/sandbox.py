"""The sandbox card processor's rules, no I/O: intent states, test cards, the events it reports.

It behaves like Stripe's PaymentIntents with `capture_method=manual`:

    requires_payment_method --confirm--> processing --(settles)--> requires_capture --capture--> succeeded
                    |            \\--3-D Secure card--> requires_action --authenticate(ok)--> processing
                    |             \\--declined card--> requires_payment_method + last_payment_error
                    \\--cancel (from requires_payment_method / requires_action / requires_capture)--> canceled

A succeeded intent can be refunded, partially or in full, never above what was captured.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from .payment import IntentStatus


class CardBehavior(StrEnum):
    SUCCEED = "succeed"
    DECLINE = "decline"
    AUTHENTICATE = "authenticate"  # 3-D Secure: the customer must complete an extra step
    SLOW = "slow"  # authorizes, but stays `processing` much longer
    SILENT = "silent"  # authorizes, but the callbacks about it get lost (reconciliation finds it)


@dataclass(frozen=True)
class TestCard:
    number: str
    behavior: CardBehavior
    decline_code: str | None = None
    description: str = ""


TEST_CARDS: dict[str, TestCard] = {c.number: c for c in (
    TestCard("4242424242424242", CardBehavior.SUCCEED, description="authorizes"),
    TestCard("4000000000000002", CardBehavior.DECLINE, "generic_decline", "declined"),
    TestCard("4000000000009995", CardBehavior.DECLINE, "insufficient_funds", "declined: insufficient funds"),
    TestCard("4000000000000069", CardBehavior.DECLINE, "expired_card", "declined: expired card"),
    TestCard("4000002500003155", CardBehavior.AUTHENTICATE, description="needs 3-D Secure authentication"),
    TestCard("4000000000000259", CardBehavior.SLOW, description="authorizes after a long `processing`"),
    TestCard("4000000000000341", CardBehavior.SILENT, description="authorizes; its callbacks are lost"),
)}


def normalize_card_number(raw: str) -> str:
    return "".join(ch for ch in raw if not ch.isspace() and ch != "-")


def luhn_ok(number: str) -> bool:
    if not number.isdigit() or not 12 <= len(number) <= 19:
        return False
    total = 0
    for i, ch in enumerate(reversed(number)):
        d = int(ch)
        if i % 2 == 1:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


class SandboxError(Exception):
    """A request the processor refuses (Stripe answers these with 400 or 402)."""

    code = "invalid_request"

    def __init__(self, message: str, *, status: IntentStatus | None = None):
        super().__init__(message)
        self.status = status


class UnexpectedState(SandboxError):
    code = "payment_intent_unexpected_state"


class AmountTooLarge(SandboxError):
    code = "amount_too_large"


class UnknownCard(SandboxError):
    code = "incorrect_number"


@dataclass(frozen=True)
class SandboxIntent:
    id: str
    amount: int
    currency: str
    status: IntentStatus
    client_secret: str
    created_at: datetime
    metadata: dict[str, str] = field(default_factory=dict)
    amount_capturable: int = 0
    amount_received: int = 0
    amount_refunded: int = 0
    last_payment_error: dict[str, Any] | None = None
    next_action: dict[str, Any] | None = None
    cancellation_reason: str | None = None
    behavior: CardBehavior | None = None  # of the card last confirmed with
    settle_at: datetime | None = None  # when `processing` resolves
    callbacks_lost: bool = False

    def public(self) -> dict[str, Any]:
        """The intent as the processor shows it (Stripe's shape, with lower-case currency)."""
        return {
            "id": self.id, "object": "payment_intent", "amount": self.amount, "currency": self.currency.lower(),
            "status": self.status.value, "capture_method": "manual", "client_secret": self.client_secret,
            "amount_capturable": self.amount_capturable, "amount_received": self.amount_received,
            "amount_refunded": self.amount_refunded, "metadata": dict(self.metadata),
            "last_payment_error": self.last_payment_error, "next_action": self.next_action,
            "cancellation_reason": self.cancellation_reason, "created": int(self.created_at.timestamp()),
        }


# Event types the sandbox reports (Stripe's names).
EV_CREATED = "payment_intent.created"
EV_PROCESSING = "payment_intent.processing"
EV_REQUIRES_ACTION = "payment_intent.requires_action"
EV_FAILED = "payment_intent.payment_failed"
EV_CAPTURABLE = "payment_intent.amount_capturable_updated"
EV_SUCCEEDED = "payment_intent.succeeded"
EV_CANCELED = "payment_intent.canceled"
EV_REFUNDED = "charge.refunded"

Step = tuple[SandboxIntent, list[str]]  # the intent after a step, and the events it caused


def confirm(intent: SandboxIntent, card: TestCard, *, now: datetime, processing: timedelta,
            slow_processing: timedelta, authenticate_url: str) -> Step:
    if intent.status not in (IntentStatus.REQUIRES_PAYMENT_METHOD, IntentStatus.REQUIRES_CONFIRMATION):
        raise UnexpectedState(f"This PaymentIntent's status is {intent.status.value}; it cannot be confirmed.",
                              status=intent.status)
    cleared = replace(intent, last_payment_error=None, next_action=None, behavior=card.behavior)
    match card.behavior:
        case CardBehavior.DECLINE:
            error = {"type": "card_error", "code": "card_declined", "decline_code": card.decline_code,
                     "message": "Your card was declined."}
            return replace(cleared, status=IntentStatus.REQUIRES_PAYMENT_METHOD, last_payment_error=error), [EV_FAILED]
        case CardBehavior.AUTHENTICATE:
            action = {"type": "sandbox_authenticate",
                      "sandbox_authenticate": {"method": "POST", "url": authenticate_url,
                                               "body": {"succeed": True}}}
            return replace(cleared, status=IntentStatus.REQUIRES_ACTION, next_action=action), [EV_REQUIRES_ACTION]
        case _:
            wait = slow_processing if card.behavior == CardBehavior.SLOW else processing
            return replace(cleared, status=IntentStatus.PROCESSING, settle_at=now + wait,
                           callbacks_lost=card.behavior == CardBehavior.SILENT), [EV_PROCESSING]


def authenticate(intent: SandboxIntent, *, succeed: bool, now: datetime, processing: timedelta) -> Step:
    if intent.status != IntentStatus.REQUIRES_ACTION:
        raise UnexpectedState(f"This PaymentIntent's status is {intent.status.value}; nothing to authenticate.",
                              status=intent.status)
    if not succeed:
        error = {"type": "card_error", "code": "payment_intent_authentication_failure",
                 "message": "The customer failed to authenticate."}
        return replace(intent, status=IntentStatus.REQUIRES_PAYMENT_METHOD, next_action=None,
                       last_payment_error=error), [EV_FAILED]
    after = replace(intent, status=IntentStatus.PROCESSING, next_action=None, settle_at=now + processing)
    return after, [EV_PROCESSING]


def settle(intent: SandboxIntent) -> Step:
    """The card network answered: the amount is authorized (held) and capturable."""
    if intent.status != IntentStatus.PROCESSING:
        return intent, []
    return replace(intent, status=IntentStatus.REQUIRES_CAPTURE, amount_capturable=intent.amount,
                   settle_at=None), [EV_CAPTURABLE]


def capture(intent: SandboxIntent, amount: int | None = None) -> Step:
    if intent.status != IntentStatus.REQUIRES_CAPTURE:
        raise UnexpectedState(f"This PaymentIntent could not be captured because it has a status of "
                              f"{intent.status.value}.", status=intent.status)
    amount = intent.amount_capturable if amount is None else amount
    if not 0 < amount <= intent.amount_capturable:
        raise AmountTooLarge(f"amount_to_capture must be between 1 and {intent.amount_capturable}")
    return replace(intent, status=IntentStatus.SUCCEEDED, amount_received=amount, amount_capturable=0), [EV_SUCCEEDED]


def cancel(intent: SandboxIntent, reason: str = "requested_by_customer") -> Step:
    if intent.status not in (IntentStatus.REQUIRES_PAYMENT_METHOD, IntentStatus.REQUIRES_CONFIRMATION,
                             IntentStatus.REQUIRES_ACTION, IntentStatus.REQUIRES_CAPTURE):
        raise UnexpectedState(f"You cannot cancel this PaymentIntent because it has a status of "
                              f"{intent.status.value}.", status=intent.status)
    return replace(intent, status=IntentStatus.CANCELED, cancellation_reason=reason, amount_capturable=0,
                   next_action=None, settle_at=None), [EV_CANCELED]


def refund(intent: SandboxIntent, amount: int | None = None) -> tuple[SandboxIntent, list[str], int]:
    if intent.status != IntentStatus.SUCCEEDED:
        raise UnexpectedState(f"This PaymentIntent has a status of {intent.status.value}; only succeeded "
                              "payments can be refunded.", status=intent.status)
    remaining = intent.amount_received - intent.amount_refunded
    amount = remaining if amount is None else amount
    if not 0 < amount <= remaining:
        raise AmountTooLarge(f"Refund amount ({amount}) is greater than unrefunded amount on charge ({remaining})")
    return replace(intent, amount_refunded=intent.amount_refunded + amount), [EV_REFUNDED], amount
