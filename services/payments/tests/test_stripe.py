"""The stripe adapter: callbacks signed the way Stripe signs them, and the official SDK's async
client against an HTTP-level fake of Stripe's API (fake_stripe.py)."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web
from dropslot_kit.launcher import free_port
from dropslot_payments.adapters.providers.base import InvalidCallback, ProviderStateError, ProviderUnavailable
from dropslot_payments.adapters.providers.stripe import StripeProvider
from dropslot_payments.config import Settings
from dropslot_payments.domain.payment import IntentStatus

from .fake_stripe import FakeStripe

SECRET = "whsec_test_0123456789abcdef"


def stripe_signed(payload: bytes, secret: str = SECRET, timestamp: int | None = None) -> str:
    """What Stripe sends: `t=<unix>,v1=<hex HMAC-SHA256(secret, "<t>.<raw body>")>`."""
    t = int(time.time()) if timestamp is None else timestamp
    mac = hmac.new(secret.encode(), f"{t}.".encode() + payload, hashlib.sha256).hexdigest()
    return f"t={t},v1={mac}"


def provider(api_base: str | None = None, **overrides: Any) -> StripeProvider:
    settings = Settings(stripe_max_network_retries=0, **overrides)
    return StripeProvider(settings, api_key="sk_test_fake", webhook_secret=SECRET, api_base=api_base)


EVENT = {
    "id": "evt_1QxYZ", "object": "event", "type": "payment_intent.amount_capturable_updated", "created": 1732480000,
    "api_version": "2024-06-20", "livemode": False,
    "data": {"object": {"id": "pi_3QxYZ", "object": "payment_intent", "status": "requires_capture",
                        "amount": 2500, "currency": "eur", "metadata": {"payment_id": "p-1"}}},
}


def test_callback_signed_like_stripe_is_accepted_and_parsed() -> None:
    body = json.dumps(EVENT).encode()
    ev = provider().verify_and_parse_callback({"Stripe-Signature": stripe_signed(body)}, body)
    assert (ev.id, ev.type, ev.intent_id, ev.metadata) == (
        "evt_1QxYZ", "payment_intent.amount_capturable_updated", "pi_3QxYZ", {"payment_id": "p-1"})


def test_refund_callbacks_name_their_intent() -> None:
    charge = {**EVENT, "id": "evt_2", "type": "charge.refunded",
              "data": {"object": {"id": "ch_1", "object": "charge", "payment_intent": "pi_3QxYZ"}}}
    body = json.dumps(charge).encode()
    assert provider().verify_and_parse_callback({"stripe-signature": stripe_signed(body)}, body).intent_id == "pi_3QxYZ"


@pytest.mark.parametrize("header", [
    stripe_signed(json.dumps(EVENT).encode(), secret="whsec_wrong"),
    stripe_signed(json.dumps(EVENT).encode(), timestamp=int(time.time()) - 301),  # outside the 300 s tolerance
    "t=123",
    "",
])
def test_bad_or_stale_signatures_are_refused(header: str) -> None:
    body = json.dumps(EVENT).encode()
    with pytest.raises(InvalidCallback):
        provider().verify_and_parse_callback({"Stripe-Signature": header} if header else {}, body)


def test_tampered_body_is_refused() -> None:
    body = json.dumps(EVENT).encode()
    header = stripe_signed(body)
    with pytest.raises(InvalidCallback):
        provider().verify_and_parse_callback({"Stripe-Signature": header}, body.replace(b"2500", b"1"))


def test_needs_keys() -> None:
    with pytest.raises(ValueError, match="DROPSLOT_STRIPE_API_KEY"):
        StripeProvider(Settings(stripe_api_key=None, stripe_webhook_secret=None))


@pytest.fixture
async def fake() -> AsyncIterator[tuple[FakeStripe, str]]:
    fs = FakeStripe()
    runner = web.AppRunner(fs.app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    yield fs, f"http://127.0.0.1:{port}"
    await runner.cleanup()


async def test_intent_lifecycle_through_the_sdk(fake: tuple[FakeStripe, str]) -> None:
    fs, base = fake
    stripe = provider(base)
    try:
        created = await stripe.create_intent(2500, "EUR", "r-1:create", {"payment_id": "p-1", "reservation_id": "r-1"})
        assert (created.status, created.amount, created.currency) == (IntentStatus.REQUIRES_PAYMENT_METHOD, 2500, "EUR")
        assert created.client_secret and created.metadata["reservation_id"] == "r-1"
        sent = fs.intents[created.id]
        assert (sent["capture_method"], sent["currency"]) == ("manual", "eur")
        again = await stripe.create_intent(2500, "EUR", "r-1:create", {"payment_id": "p-1", "reservation_id": "r-1"})
        assert again.id == created.id and len(fs.intents) == 1  # the idempotency key at work

        with pytest.raises(ProviderStateError):
            await stripe.capture(created.id, "r-1:capture")  # not authorized yet
        fs.authorize(created.id)
        authorized = await stripe.retrieve(created.id)
        assert (authorized.status, authorized.amount_capturable) == (IntentStatus.REQUIRES_CAPTURE, 2500)
        captured = await stripe.capture(created.id, "r-1:capture-2")
        assert (captured.status, captured.amount_received) == (IntentStatus.SUCCEEDED, 2500)

        refund = await stripe.refund(created.id, 1000, "r-1:refund:a")
        assert (refund.amount, refund.status) == (1000, "succeeded")
        replay = await stripe.refund(created.id, 1000, "r-1:refund:a")
        assert replay.id == refund.id  # retried with the same key: one refund only
        with pytest.raises(ProviderStateError):
            await stripe.refund(created.id, 2000, "r-1:refund:b")  # above what is left
        after = await stripe.retrieve(created.id)
        assert after.amount_refunded == 1000  # read from the expanded latest_charge
        keys = [k for m, path, k, _ in fs.requests if m == "POST"]
        assert "r-1:create" in keys and "r-1:refund:a" in keys
    finally:
        await stripe.close()


async def test_cancel_and_errors(fake: tuple[FakeStripe, str]) -> None:
    fs, base = fake
    stripe = provider(base)
    try:
        pi = await stripe.create_intent(900, "usd", "r-2:create", {})
        canceled = await stripe.cancel(pi.id, "r-2:cancel")
        assert canceled.status == IntentStatus.CANCELED
        with pytest.raises(ProviderStateError):
            await stripe.cancel(pi.id, "r-2:cancel-again")
        with pytest.raises(ProviderStateError):
            await stripe.retrieve("pi_missing")
        fs.fail_next(1)
        with pytest.raises(ProviderUnavailable):
            await stripe.retrieve(pi.id)
        assert (await stripe.retrieve(pi.id)).status == IntentStatus.CANCELED
    finally:
        await stripe.close()


async def test_unreachable_stripe_is_retryable() -> None:
    stripe = provider(f"http://127.0.0.1:{free_port()}")
    try:
        with pytest.raises(ProviderUnavailable):
            await stripe.retrieve("pi_x")
    finally:
        await stripe.close()
