"""Paying for a reservation, end to end: the whole system started as `make dev` starts it
(shared `system` fixture, default settings), driven through the gateway's public API only.
The payments schema is read directly only to count how often something happened."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from dropslot_kit.testing import RunningSystem, eventually, sign_up

from .flows import (
    DECLINED,
    SILENT,
    SUCCESS,
    THREE_DS,
    WEBHOOK,
    PaymentsDb,
    available,
    confirm_card,
    intent_id_of,
    paid_slot,
    payment_of,
    reservation,
    reserve,
    signed,
    wait_state,
)

pytestmark = pytest.mark.e2e


@pytest.fixture
async def db(system: RunningSystem) -> AsyncIterator[PaymentsDb]:
    d = PaymentsDb(system.settings)
    yield d
    await d.dispose()


async def pay_and_confirm(http: httpx.AsyncClient, price_cents: int = 2500) -> dict[str, Any]:
    """Reserve a paid slot and pay with the success card, up to a CONFIRMED reservation."""
    shop = await paid_slot(http, price_cents=price_cents)
    customer = await sign_up(http)
    r = await reserve(http, customer, shop["slot"]["id"])
    assert r.status_code == 201, r.text
    res = r.json()
    assert res["state"] == "PENDING"
    payment = await payment_of(http, customer, res["id"], "requires_payment_method")
    assert (payment["amount_cents"], payment["currency"]) == (price_cents, "EUR")
    ok = await confirm_card(http, customer, payment["id"], SUCCESS)
    assert ok.status_code == 200, ok.text
    confirmed = await wait_state(http, customer, res["id"], "CONFIRMED")
    return {**shop, "customer": customer, "reservation": confirmed, "payment": payment}


async def test_reserve_pay_confirmed_with_qr(http: httpx.AsyncClient) -> None:
    flow = await pay_and_confirm(http, price_cents=3450)
    res, customer = flow["reservation"], flow["customer"]
    assert res["qr_code_url"] and res["checkin_token"]
    qr = await http.get(f"/reservations/{res['id']}/qr.svg", headers=customer["headers"])
    assert qr.status_code == 200 and "<svg" in qr.text
    captured = await payment_of(http, customer, res["id"], "succeeded")
    assert (captured["amount_cents"], captured["captured_cents"], captured["currency"]) == (3450, 3450, "EUR")
    one = await http.get(f"/payments/{captured['id']}", headers=customer["headers"])
    assert one.status_code == 200 and one.json()["reservation_id"] == res["id"]
    assert one.json()["client_secret"]
    shown = await reservation(http, customer, res["id"])
    assert shown["payment"]["id"] == captured["id"]
    stranger = await sign_up(http)
    assert (await http.get(f"/payments/{captured['id']}", headers=stranger["headers"])).status_code == 404


async def test_declined_card_cancels_the_reservation_and_frees_the_seat(http: httpx.AsyncClient) -> None:
    shop = await paid_slot(http, capacity=1)
    slot, drop = shop["slot"], shop["drop"]
    first, second = await sign_up(http), await sign_up(http)
    res = (await reserve(http, first, slot["id"])).json()
    assert (await reserve(http, second, slot["id"])).status_code == 409  # sold out
    payment = await payment_of(http, first, res["id"])
    declined = await confirm_card(http, first, payment["id"], DECLINED)
    assert declined.status_code == 402 and declined.json()["type"].endswith("/card-declined")
    cancelled = await wait_state(http, first, res["id"], "CANCELLED")
    assert cancelled["checkin_token"] is None
    failed = await payment_of(http, first, res["id"], "failed")
    assert failed["failure_reason"] == "generic_decline"
    await eventually(lambda: _seat_free(http, drop["id"], slot["id"]), timeout=30, what="the seat back")

    async def reserved_again() -> httpx.Response | None:
        # A replica that saw the slot sold out keeps that hint for its slot-cache TTL (0.25 s):
        # a sold-out answer just after the seat came back is that hint, not a lost seat.
        r = await reserve(http, second, slot["id"])
        return None if r.status_code == 409 and r.json()["type"].endswith("/sold-out") else r

    again = await eventually(reserved_again, timeout=5, what="the freed seat to be reservable")
    assert again.status_code == 201, again.text


async def _seat_free(http: httpx.AsyncClient, drop_id: str, slot_id: str) -> bool:
    return await available(http, drop_id, slot_id) == 1


async def test_extra_authentication_then_success(http: httpx.AsyncClient) -> None:
    shop = await paid_slot(http)
    customer = await sign_up(http)
    res = (await reserve(http, customer, shop["slot"]["id"])).json()
    payment = await payment_of(http, customer, res["id"])
    r = await confirm_card(http, customer, payment["id"], THREE_DS)
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "requires_action"
    step = r.json()["next_action"]["sandbox_authenticate"]
    assert step["method"] == "POST" and step["url"].endswith(f"/payments/{payment['id']}/sandbox/authenticate")
    waiting = await payment_of(http, customer, res["id"], "requires_action")
    assert waiting["next_action"]["type"] == "sandbox_authenticate"
    assert (await reservation(http, customer, res["id"]))["state"] == "PENDING"
    done = await http.post(f"/payments/{payment['id']}/sandbox/authenticate", json={"succeed": True},
                           headers=customer["headers"])
    assert done.status_code == 200, done.text
    await wait_state(http, customer, res["id"], "CONFIRMED")
    await payment_of(http, customer, res["id"], "succeeded")


async def test_duplicate_and_out_of_order_callbacks_have_one_effect(http: httpx.AsyncClient, db: PaymentsDb) -> None:
    flow = await pay_and_confirm(http)
    customer, res = flow["customer"], flow["reservation"]
    payment = await payment_of(http, customer, res["id"], "succeeded")
    await db.quiet(payment)
    before = await db.transitions(payment["id"])
    real = await db.sandbox_events(intent_id_of(payment))
    assert [e["type"] for e in real][:1] == ["payment_intent.created"]
    # The processor's own callbacks again, newest first, each twice: all known, none acts.
    for event in reversed(real * 2):
        body, headers = signed(event)
        r = await http.post(WEBHOOK, content=body, headers=headers)
        assert r.status_code == 200 and r.json()["duplicate"] is True
    # New events that arrive late and out of order (an old "requires_payment_method" after the
    # capture, a "canceled" that never happened): payments re-fetches the intent and keeps the truth.
    intent = real[-1]["data"]["object"]
    for kind, status in (("payment_intent.created", "requires_payment_method"),
                         ("payment_intent.canceled", "canceled"), ("payment_intent.processing", "processing")):
        stale = {"id": f"evt_sbx_{uuid.uuid4().hex[:24]}", "object": "event", "type": kind, "created": 1,
                 "data": {"object": {**intent, "status": status}}}
        body, headers = signed(stale)
        r = await http.post(WEBHOOK, content=body, headers=headers)
        assert r.status_code == 200 and r.json()["duplicate"] is False
    await db.quiet(payment)
    assert await db.transitions(payment["id"]) == before
    assert (await payment_of(http, customer, res["id"]))["status"] == "succeeded"
    assert (await reservation(http, customer, res["id"]))["state"] == "CONFIRMED"
    statuses = [t[1] for t in before]
    assert statuses.count("requires_capture") == 1 and statuses.count("succeeded") == 1


async def test_callback_with_a_bad_signature_is_refused_and_changes_nothing(
        http: httpx.AsyncClient, db: PaymentsDb) -> None:
    shop = await paid_slot(http)
    customer = await sign_up(http)
    res = (await reserve(http, customer, shop["slot"]["id"])).json()
    payment = await payment_of(http, customer, res["id"])
    await db.quiet(payment)
    forged = {"id": f"evt_sbx_{uuid.uuid4().hex[:24]}", "object": "event", "type": "payment_intent.succeeded",
              "created": 1, "data": {"object": {"id": intent_id_of(payment), "object": "payment_intent",
                                                "status": "succeeded", "amount_received": 2500}}}
    body, bad_sig = signed(forged, secret="whsec_not_the_sandbox_secret")
    for headers in (bad_sig, {"content-type": "application/json"}):
        r = await http.post(WEBHOOK, content=body, headers=headers)  # no token: the provider has none
        assert r.status_code == 400, r.text
        assert r.json()["type"].endswith("/invalid-signature")
    stored = await db.rows("SELECT count(*) AS n FROM provider_events WHERE event_id = :e", e=forged["id"])
    assert stored[0].n == 0
    await asyncio.sleep(1)
    assert (await payment_of(http, customer, res["id"]))["status"] == "requires_payment_method"
    assert (await reservation(http, customer, res["id"]))["state"] == "PENDING"


async def test_store_owner_refunds_never_above_what_was_captured(http: httpx.AsyncClient) -> None:
    flow = await pay_and_confirm(http, price_cents=5000)
    owner, customer, res = flow["owner"], flow["customer"], flow["reservation"]
    payment = await payment_of(http, customer, res["id"], "succeeded")
    url = f"/payments/{payment['id']}/refund"
    assert (await http.post(url, json={"amount_cents": 100}, headers=customer["headers"])).status_code == 404
    r = await http.post(url, json={"amount_cents": 2000}, headers=owner["headers"])
    assert r.status_code == 202, r.text
    assert r.json()["amount_cents"] == 2000
    over = await http.post(url, json={"amount_cents": 3001}, headers=owner["headers"])
    assert over.status_code == 409 and over.json()["type"].endswith("/refund-exceeds-captured")
    partial = await payment_of(http, customer, res["id"], "partially_refunded")
    assert (partial["captured_cents"], partial["refunded_cents"]) == (5000, 2000)
    rest = await http.post(url, headers=owner["headers"])
    assert rest.status_code == 202 and rest.json()["amount_cents"] == 3000
    full = await payment_of(http, customer, res["id"], "refunded")
    assert full["refunded_cents"] == 5000
    assert (await http.post(url, json={"amount_cents": 1}, headers=owner["headers"])).status_code == 409


async def test_reconciliation_repairs_a_missed_callback(http: httpx.AsyncClient, db: PaymentsDb) -> None:
    """The "silent" test card authorizes but its callbacks are lost on the way; the periodic
    reconciliation asks the processor and the reservation is confirmed anyway."""
    shop = await paid_slot(http)
    customer = await sign_up(http)
    res = (await reserve(http, customer, shop["slot"]["id"])).json()
    payment = await payment_of(http, customer, res["id"])
    await db.quiet(payment)  # nothing else in flight that would re-fetch the intent
    assert (await confirm_card(http, customer, payment["id"], SILENT)).status_code == 200
    await wait_state(http, customer, res["id"], "CONFIRMED", within=90)
    causes = [cause for _, to, cause in await db.transitions(payment["id"]) if to == "requires_capture"]
    assert causes == ["sync:reconcile"]
    await payment_of(http, customer, res["id"], "succeeded")
