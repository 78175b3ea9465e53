"""The whole payments service with the `stripe` provider: the official SDK talks to an HTTP fake
of Stripe's API, which sends Stripe-signed webhooks back to the service, as Stripe does.
Booking is played through the real broker (see conftest.py)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest
from aiohttp import web
from dropslot_kit.launcher import free_port
from dropslot_kit.testing import Infra, eventually
from pydantic import SecretStr

from .conftest import Harness, intent_id_of, running_payments
from .fake_stripe import FakeStripe, stripe_signature

SECRET = "whsec_fake_0123456789"


@pytest.fixture(scope="module")
async def stripe_pay(infra: Infra) -> AsyncIterator[tuple[Harness, FakeStripe]]:
    app_port = free_port()
    fake = FakeStripe(f"http://127.0.0.1:{app_port}/api/v1/payments/providers/stripe/webhook", SECRET)
    runner = web.AppRunner(fake.app)
    await runner.setup()
    api_port = free_port()
    await web.TCPSite(runner, "127.0.0.1", api_port).start()
    try:
        async with running_payments(
            infra, port=app_port, payments_provider="stripe", stripe_api_key=SecretStr("sk_test_fake"),
            stripe_webhook_secret=SecretStr(SECRET), stripe_api_base=f"http://127.0.0.1:{api_port}",
            stripe_max_network_retries=0,
        ) as harness:
            yield harness, fake
    finally:
        await runner.cleanup()


async def test_stripe_intent_authorized_by_webhook_captured_on_confirmation_refunded(
        stripe_pay: tuple[Harness, FakeStripe]) -> None:
    pay, fake = stripe_pay
    store = await pay.new_store()
    r = await pay.reserve(amount_cents=1234, currency="usd", store=store)
    p = await pay.payment_of(r)
    assert (p["provider"], p["status"], p["amount_cents"], p["currency"]) == (
        "stripe", "requires_payment_method", 1234, "USD")
    intent_id = intent_id_of(p)
    sent = fake.intents[intent_id]
    assert (sent["amount"], sent["currency"], sent["capture_method"]) == (1234, "usd", "manual")
    assert sent["metadata"]["reservation_id"] == str(r.reservation_id)
    creates = [k for m, path, k, _ in fake.requests if m == "POST" and path == "/v1/payment_intents"]
    assert creates == [f"{r.reservation_id}:create"]
    # The sandbox's card form is not for Stripe payments (Stripe.js confirms with the client secret).
    card = await pay.confirm_card(p, r, "4242424242424242")
    assert card.status_code == 409 and card.json()["type"].endswith("/not-sandbox-payment")

    fake.authorize(intent_id)  # the customer confirmed with Stripe.js; Stripe sends a webhook
    await pay.wait_event("payments.payment.authorized", p["id"])
    await pay.confirm_reservation(r)
    succeeded = await pay.wait_event("payments.payment.succeeded", p["id"])
    assert succeeded.data["captured_cents"] == 1234
    assert fake.intents[intent_id]["status"] == "succeeded"
    captures = [k for m, path, k, _ in fake.requests if path.endswith("/capture")]
    assert captures and all(k.startswith(f"{r.reservation_id}:capture:") for k in captures)

    refund = await pay.client.post(f"/api/v1/payments/{p['id']}/refund", json={"amount_cents": 234},
                                   headers=pay.tokens.headers(store[1]))
    assert refund.status_code == 202, refund.text
    refunded = await pay.wait_event("payments.payment.refunded", p["id"])
    assert (refunded.data["refunded_cents"], refunded.data["total_refunded_cents"]) == (234, 234)
    assert (await pay.wait_status(r, "partially_refunded"))["refunded_cents"] == 234
    over = await pay.client.post(f"/api/v1/payments/{p['id']}/refund", json={"amount_cents": 1001},
                                 headers=pay.tokens.headers(store[1]))
    assert over.status_code == 409


async def test_stripe_webhooks_replayed_or_forged(stripe_pay: tuple[Harness, FakeStripe]) -> None:
    pay, fake = stripe_pay
    r = await pay.reserve(amount_cents=500, currency="eur")
    p = await pay.payment_of(r)
    fake.authorize(intent_id_of(p))
    await pay.wait_event("payments.payment.authorized", p["id"])
    await eventually(lambda: _delivered(fake, intent_id_of(p)), timeout=10, what="the webhook delivered")
    body, header = next((b, h) for b, h, _ in fake.sent if intent_id_of(p).encode() in b)
    url = "/api/v1/payments/providers/stripe/webhook"
    replay = await pay.client.post(url, content=body, headers={"Stripe-Signature": header})
    assert replay.status_code == 200 and replay.json()["duplicate"] is True
    forged = body.replace(b"requires_capture", b"succeeded")
    bad = await pay.client.post(url, content=forged, headers={"Stripe-Signature": header})
    assert bad.status_code == 400 and bad.json()["type"].endswith("/invalid-signature")
    wrong_secret = await pay.client.post(url, content=forged,
                                         headers={"Stripe-Signature": stripe_signature("whsec_other", forged)})
    assert wrong_secret.status_code == 400
    assert len(pay.emitted("payments.payment.authorized", p["id"])) == 1
    assert (await pay.payment_of(r))["status"] == "requires_capture"
    await pay.expire_reservation(r)  # unpaid... but authorized: booking decides; then it asks for a refund
    await pay.request_refund(r)
    await pay.wait_event("payments.payment.canceled", p["id"])
    assert fake.intents[intent_id_of(p)]["status"] == "canceled"
    cancels = [k for m, path, k, _ in fake.requests if path.endswith("/cancel")]
    assert any(k and k.startswith(f"{r.reservation_id}:cancel:") for k in cancels)


async def _delivered(fake: FakeStripe, intent_id: str) -> bool:
    return any(intent_id.encode() in b and status == 200 for b, _, status in fake.sent)


async def test_stripe_outage_is_retried(stripe_pay: tuple[Harness, FakeStripe]) -> None:
    pay, fake = stripe_pay
    fake.fail_next(2)  # the first attempts to create the intent get a 500
    r = await pay.reserve(amount_cents=700)
    p = await pay.payment_of(r)
    assert p["status"] == "requires_payment_method"
    creates = [k for m, path, k, _ in fake.requests if m == "POST" and path == "/v1/payment_intents"
               and k == f"{r.reservation_id}:create"]
    assert len(creates) >= 2  # retried with the same key
    assert len([i for i in fake.intents.values() if i["metadata"].get("reservation_id") == str(r.reservation_id)]) == 1


async def test_an_intent_the_provider_no_longer_knows_fails_the_op_not_the_payment(
        stripe_pay: tuple[Harness, FakeStripe]) -> None:
    pay, fake = stripe_pay
    r = await pay.reserve(amount_cents=300)
    p = await pay.payment_of(r)
    intent = intent_id_of(p)
    fake.intents.pop(intent)  # e.g. created under another Stripe account
    body = (b'{"id":"evt_gone_' + intent.encode() + b'","object":"event","type":"payment_intent.processing",'
            b'"data":{"object":{"id":"' + intent.encode() + b'","object":"payment_intent"}}}')
    r2 = await pay.client.post("/api/v1/payments/providers/stripe/webhook", content=body,
                               headers={"Stripe-Signature": stripe_signature(SECRET, body)})
    assert r2.status_code == 200

    async def failed_op() -> bool:
        rows = await pay.query("SELECT status, last_error FROM payment_ops WHERE payment_id = :p AND kind = 'sync'",
                               p=uuid.UUID(p["id"]))
        return any(row.status == "failed" and "No such payment_intent" in (row.last_error or "") for row in rows)

    await eventually(failed_op, timeout=15, what="the sync op failed")
    assert (await pay.payment_of(r))["status"] == "requires_payment_method"
