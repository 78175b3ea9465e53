"""Payments' problem types (RFC 9457), mapped to problem+json by the kit."""

from __future__ import annotations

from dropslot_kit.errors import Conflict, Problem


class InvalidSignature(Problem):
    status, slug, title = 400, "invalid-signature", "The callback signature is not valid"


class RefundExceedsCaptured(Conflict):
    slug, title = "refund-exceeds-captured", "Refund exceeds what was captured"


class PaymentNotCaptured(Conflict):
    slug, title = "payment-not-captured", "The payment has not been captured"


class PaymentNotConfirmable(Conflict):
    slug, title = "payment-not-confirmable", "The payment cannot be confirmed now"


class NotSandboxPayment(Conflict):
    slug, title = "not-sandbox-payment", "The payment does not use the sandbox provider"


class CardDeclined(Problem):
    # Stripe answers a declined card with 402 as well.
    status, slug, title = 402, "card-declined", "The card was declined"


class AuthenticationFailed(Problem):
    status, slug, title = 402, "authentication-failed", "The customer did not complete authentication"


class UnknownTestCard(Problem):
    status, slug, title = 422, "unknown-test-card", "Not a sandbox test card"


class InvalidCursor(Problem):
    status, slug, title = 422, "invalid-cursor", "The cursor is not valid"
