"""`stripe`: PaymentIntents through the official SDK's async client.

- intents use `capture_method=manual` (authorize on confirmation, capture once booking
  confirms the reservation, or cancel to release the hold);
- every mutating call sends an `Idempotency-Key` derived from (reservation, operation);
- refunds go through the Refunds API; what was refunded is read back from the intent's
  `latest_charge` (expanded on retrieve);
- callbacks are verified with `Stripe-Signature` (`WebhookSignature.verify_header`,
  300 s tolerance) before anything is read from them.

Switching it on: see the payments package docstring (README).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import stripe

from ...config import Settings
from ...domain.payment import IntentSnapshot, IntentStatus
from .base import (
    InvalidCallback,
    ProviderEvent,
    ProviderRefund,
    ProviderRejected,
    ProviderStateError,
    ProviderUnavailable,
)

SIGNATURE_HEADER = "Stripe-Signature"
# Invalid-request codes that mean "not in a state for that", not "your request is wrong".
STATE_CODES = {"payment_intent_unexpected_state", "charge_already_refunded", "charge_already_captured",
               "amount_too_large", "resource_missing", "charge_disputed"}


def _plain(obj: Any) -> dict[str, Any]:
    """The SDK's objects as plain dicts (StripeObject is not a Mapping since v15)."""
    if hasattr(obj, "to_dict"):
        return dict(obj.to_dict())
    return dict(obj)


def snapshot_of(obj: Any) -> IntentSnapshot:
    pi = _plain(obj)
    charge = pi.get("latest_charge")
    refunded = charge.get("amount_refunded") or 0 if isinstance(charge, dict) else 0
    err = pi.get("last_payment_error") or None
    return IntentSnapshot(
        id=str(pi["id"]),
        status=IntentStatus(str(pi["status"])),
        amount=int(pi.get("amount") or 0),
        currency=str(pi.get("currency") or "").upper(),
        amount_capturable=int(pi.get("amount_capturable") or 0),
        amount_received=int(pi.get("amount_received") or 0),
        amount_refunded=int(refunded),
        client_secret=pi.get("client_secret"),
        last_error_code=(err.get("decline_code") or err.get("code")) if err else None,
        last_error_message=err.get("message") if err else None,
        next_action=pi.get("next_action") or None,
        cancellation_reason=pi.get("cancellation_reason"),
        metadata={str(k): str(v) for k, v in (pi.get("metadata") or {}).items()},
    )


def _translate(exc: stripe.StripeError) -> Exception:
    if isinstance(exc, stripe.InvalidRequestError):
        if exc.code in STATE_CODES:
            return ProviderStateError(str(exc.user_message or exc))
        return ProviderRejected(str(exc.user_message or exc), code=exc.code)
    if isinstance(exc, stripe.IdempotencyError):
        return ProviderRejected(str(exc), code="idempotency_error")
    if isinstance(exc, stripe.CardError):
        return ProviderRejected(str(exc.user_message or exc), code=exc.code)
    # Connection trouble, rate limits, Stripe 5xx, and bad keys: retry later (an operator
    # fixes keys; payments must not be marked failed because our configuration is wrong).
    return ProviderUnavailable(f"{type(exc).__name__}: {exc}")


class StripeProvider:
    name = "stripe"

    def __init__(self, settings: Settings, *, api_key: str | None = None, webhook_secret: str | None = None,
                 api_base: str | None = None):
        key = api_key or (settings.stripe_api_key.get_secret_value() if settings.stripe_api_key else None)
        secret = webhook_secret or (
            settings.stripe_webhook_secret.get_secret_value() if settings.stripe_webhook_secret else None)
        if not key or not secret:
            raise ValueError("the stripe provider needs DROPSLOT_STRIPE_API_KEY and DROPSLOT_STRIPE_WEBHOOK_SECRET")
        self._webhook_secret = secret
        self._tolerance = settings.payments_webhook_tolerance_seconds
        base = api_base or settings.stripe_api_base
        self._http = stripe.HTTPXClient(timeout=settings.stripe_timeout_seconds)
        self.client = stripe.StripeClient(
            key,
            http_client=self._http,
            base_addresses={"api": base} if base else None,
            max_network_retries=settings.stripe_max_network_retries,
        )

    async def create_intent(
        self, amount: int, currency: str, idempotency_key: str, metadata: Mapping[str, str]
    ) -> IntentSnapshot:
        params: Any = {
            "amount": amount, "currency": currency.lower(), "capture_method": "manual",
            "metadata": dict(metadata), "automatic_payment_methods": {"enabled": True},
        }
        try:
            pi = await self.client.v1.payment_intents.create_async(params, {"idempotency_key": idempotency_key})
        except stripe.StripeError as exc:
            raise _translate(exc) from exc
        return snapshot_of(pi)

    async def retrieve(self, intent_id: str) -> IntentSnapshot:
        try:
            pi = await self.client.v1.payment_intents.retrieve_async(intent_id, {"expand": ["latest_charge"]})
        except stripe.StripeError as exc:
            raise _translate(exc) from exc
        return snapshot_of(pi)

    async def capture(self, intent_id: str, idempotency_key: str) -> IntentSnapshot:
        try:
            pi = await self.client.v1.payment_intents.capture_async(
                intent_id, {"expand": ["latest_charge"]}, {"idempotency_key": idempotency_key})
        except stripe.StripeError as exc:
            raise _translate(exc) from exc
        return snapshot_of(pi)

    async def cancel(self, intent_id: str, idempotency_key: str) -> IntentSnapshot:
        try:
            pi = await self.client.v1.payment_intents.cancel_async(
                intent_id, {"cancellation_reason": "abandoned"}, {"idempotency_key": idempotency_key})
        except stripe.StripeError as exc:
            raise _translate(exc) from exc
        return snapshot_of(pi)

    async def refund(self, intent_id: str, amount: int | None, idempotency_key: str) -> ProviderRefund:
        params: Any = {"payment_intent": intent_id}
        if amount is not None:
            params["amount"] = amount
        try:
            re = await self.client.v1.refunds.create_async(params, {"idempotency_key": idempotency_key})
        except stripe.StripeError as exc:
            raise _translate(exc) from exc
        r = _plain(re)
        return ProviderRefund(str(r["id"]), int(r.get("amount") or 0), str(r.get("status") or "pending"))

    def verify_and_parse_callback(self, headers: Mapping[str, str], body: bytes) -> ProviderEvent:
        header = next((v for k, v in headers.items() if k.lower() == SIGNATURE_HEADER.lower()), None)
        try:
            stripe.WebhookSignature.verify_header(body, header, self._webhook_secret, self._tolerance)
            payload = json.loads(body)
            obj = payload["data"]["object"]
            kind = obj.get("object")
            intent_id = obj.get("id") if kind == "payment_intent" else obj.get("payment_intent")
            return ProviderEvent(
                id=str(payload["id"]), type=str(payload["type"]), intent_id=intent_id,
                created=payload.get("created"), payload=payload, metadata=dict(obj.get("metadata") or {}),
            )
        except stripe.SignatureVerificationError as exc:
            raise InvalidCallback(str(exc)) from None
        except (ValueError, KeyError, TypeError, AttributeError, UnicodeDecodeError):
            raise InvalidCallback("malformed callback body") from None

    async def close(self) -> None:
        await self._http.close_async()
