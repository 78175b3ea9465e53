"""The payments side of the saga against the real PostgreSQL and RabbitMQ (see conftest.py):
booking events in through the broker, the sandbox's callbacks over HTTP (each sent twice, in
random order), payments events out through the outbox."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from dropslot_kit.testing import eventually

from .conftest import Harness, intent_id_of

SUCCESS, DECLINED, THREE_DS = "4242424242424242", "4000000000000002", "4000002500003155"
SLOW, SILENT = "4000000000000259", "4000000000000341"


async def test_paid_reservation_gets_an_intent_for_its_exact_amount(pay: Harness) -> None:
    r = await pay.reserve(amount_cents=1999, currency="usd")
    p = await pay.payment_of(r)
    assert (p["status"], p["amount_cents"], p["currency"], p["provider"]) == (
        "requires_payment_method", 1999, "USD", "sandbox")
    assert p["reservation_id"] == str(r.reservation_id)
    intent = await pay.sandbox_intent(intent_id_of(p))
    assert (intent.amount, intent.currency, intent.status) == (1999, "USD", "requires_payment_method")
    created = await pay.wait_event("payments.payment.created", p["id"])
    assert created.data["user_id"] == str(r.user_id) and created.data["store_id"] == str(r.store_id)
    assert created.store_id == r.store_id and created.tenant_key == r.tenant_key
    # The same reservation event again (a redelivery) creates nothing new.
    await pay.publish(pay_created_again(r), store_id=r.store_id, tenant_key=r.tenant_key)
    await asyncio.sleep(0.5)
    rows = await pay.query("SELECT count(*) AS n FROM payments WHERE reservation_id = :r", r=r.reservation_id)
    assert rows[0].n == 1


def pay_created_again(r):  # type: ignore[no-untyped-def]
    from dropslot_contracts.events.booking import ReservationCreated

    return ReservationCreated(reservation=r.snapshot)


async def test_free_reservation_has_no_payment(pay: Harness) -> None:
    r = await pay.reserve(amount_cents=0)
    marker = await pay.reserve()
    await pay.payment_of(marker)  # consumed after the free one (same queue)
    rows = await pay.query("SELECT count(*) AS n FROM payments WHERE reservation_id = :r", r=r.reservation_id)
    assert rows[0].n == 0


async def test_success_card_authorizes_then_confirmation_captures(pay: Harness) -> None:
    r = await pay.reserve(amount_cents=4200)
    p = await pay.payment_of(r)
    resp = await pay.confirm_card(p, r, SUCCESS)
    assert resp.status_code == 200, resp.text
    assert resp.json()["status"] == "processing"
    authorized = await pay.wait_event("payments.payment.authorized", p["id"])
    assert authorized.data["status"] == "requires_capture" and authorized.data["amount_cents"] == 4200
    await pay.wait_status(r, "requires_capture")
    await pay.confirm_reservation(r)  # booking confirms on `authorized`
    succeeded = await pay.wait_event("payments.payment.succeeded", p["id"])
    assert succeeded.data["captured_cents"] == 4200
    done = await pay.wait_status(r, "succeeded")
    assert done["captured_cents"] == 4200
    intent = await pay.sandbox_intent(intent_id_of(p))
    assert (intent.status, intent.amount_received) == ("succeeded", 4200)


async def test_duplicated_shuffled_callbacks_have_one_effect(pay: Harness) -> None:
    """Every sandbox callback in this module is sent twice, in random order; each event and
    each transition still happens exactly once."""
    r = await pay.reserve(amount_cents=1500)
    p = await pay.payment_of(r)
    assert (await pay.confirm_card(p, r, SUCCESS)).status_code == 200
    await pay.wait_event("payments.payment.authorized", p["id"])
    await pay.confirm_reservation(r)
    await pay.wait_status(r, "succeeded")
    intent = intent_id_of(p)

    async def all_delivered() -> bool:
        rows = await pay.query(
            "SELECT count(*) FILTER (WHERE c.delivered_at IS NULL) AS pending, count(*) AS total"
            " FROM sandbox_callbacks c JOIN sandbox_events e ON e.id = c.event_id WHERE e.intent_id = :i", i=intent)
        return rows[0].pending == 0 and rows[0].total > 0

    await eventually(all_delivered, timeout=20, what="every callback delivered")
    received = await pay.query("SELECT count(*) AS n FROM provider_events WHERE intent_id = :i", i=intent)
    sent = await pay.query("SELECT count(*) AS n FROM sandbox_callbacks c JOIN sandbox_events e ON e.id = c.event_id"
                           " WHERE e.intent_id = :i", i=intent)
    assert sent[0].n == 2 * received[0].n  # each event twice on the wire, stored once
    await asyncio.sleep(0.5)  # let any straggling duplicate be processed before counting
    for kind in ("created", "authorized", "succeeded"):
        assert len(pay.emitted(f"payments.payment.{kind}", p["id"])) == 1, kind
    statuses = [t[1] for t in await pay.transitions(p["id"])]
    assert statuses == ["requires_payment_method", "processing", "requires_capture", "succeeded"] or \
        statuses == ["requires_payment_method", "requires_capture", "succeeded"]


async def test_declined_card_fails_the_payment(pay: Harness) -> None:
    r = await pay.reserve()
    p = await pay.payment_of(r)
    resp = await pay.confirm_card(p, r, DECLINED)
    assert resp.status_code == 402
    assert resp.json()["type"].endswith("/card-declined") and resp.json()["decline_code"] == "generic_decline"
    failed = await pay.wait_event("payments.payment.failed", p["id"])
    assert failed.data["reason"] == "generic_decline"
    await pay.wait_status(r, "failed")
    # Paying again is refused: booking cancels the reservation on `failed`.
    again = await pay.confirm_card(p, r, SUCCESS)
    assert again.status_code == 409 and again.json()["type"].endswith("/payment-not-confirmable")
    await pay.cancel_reservation(r, reason="payment_failed", refund=False)

    async def intent_closed() -> bool:
        return (await pay.sandbox_intent(intent_id_of(p))).status == "canceled"

    await eventually(intent_closed, timeout=20, what="the declined intent canceled at the provider")
    assert (await pay.payment_of(r))["status"] == "failed"
    assert pay.emitted("payments.payment.canceled", p["id"]) == []


async def test_three_d_secure_then_success(pay: Harness) -> None:
    r = await pay.reserve()
    p = await pay.payment_of(r)
    resp = await pay.confirm_card(p, r, THREE_DS)
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["status"] == "requires_action"
    step = body["next_action"]["sandbox_authenticate"]
    assert step["url"].endswith(f"/api/v1/payments/{p['id']}/sandbox/authenticate")
    waiting = await pay.wait_status(r, "requires_action")
    assert waiting["next_action"]["type"] == "sandbox_authenticate"
    ok = await pay.client.post(f"/api/v1/payments/{p['id']}/sandbox/authenticate", json={"succeed": True},
                               headers=pay.tokens.headers(r.user_id))
    assert ok.status_code == 200 and ok.json()["status"] == "processing"
    await pay.wait_event("payments.payment.authorized", p["id"])


async def test_failed_authentication_fails_the_payment(pay: Harness) -> None:
    r = await pay.reserve()
    p = await pay.payment_of(r)
    assert (await pay.confirm_card(p, r, THREE_DS)).status_code == 200
    bad = await pay.client.post(f"/api/v1/payments/{p['id']}/sandbox/authenticate", json={"succeed": False},
                                headers=pay.tokens.headers(r.user_id))
    assert bad.status_code == 402 and bad.json()["type"].endswith("/authentication-failed")
    failed = await pay.wait_event("payments.payment.failed", p["id"])
    assert failed.data["reason"] == "payment_intent_authentication_failure"


async def test_hold_expiring_before_payment_cancels_the_intent(pay: Harness) -> None:
    r = await pay.reserve()
    p = await pay.payment_of(r)
    await pay.expire_reservation(r)
    canceled = await pay.wait_event("payments.payment.canceled", p["id"])
    assert canceled.data["reason"] == "reservation_expired"
    await pay.wait_status(r, "canceled")
    assert (await pay.sandbox_intent(intent_id_of(p))).status == "canceled"
    late = await pay.confirm_card(p, r, SUCCESS)
    assert late.status_code == 409


async def test_payment_landing_after_expiry_is_released_when_the_seat_is_gone(pay: Harness) -> None:
    """Slow card: still `processing` when the hold's final check asks and when the hold expires
    (a processing intent cannot be canceled); it authorizes later, booking has no seat left and
    asks for the money back: the authorization is released."""
    r = await pay.reserve()
    p = await pay.payment_of(r)
    assert (await pay.confirm_card(p, r, SLOW)).status_code == 200
    await pay.wait_status(r, "processing")
    await pay.final_check(r)
    await pay.expire_reservation(r)
    await asyncio.sleep(0.5)
    assert (await pay.payment_of(r))["status"] == "processing"  # not canceled: money may be coming
    await pay.wait_event("payments.payment.authorized", p["id"], within=30)
    assert pay.emitted("payments.payment.canceled", p["id"]) == []  # booking decides, not us
    await pay.request_refund(r)
    canceled = await pay.wait_event("payments.payment.canceled", p["id"])
    assert canceled.data["reason"] == "refund_requested"
    intent = await pay.sandbox_intent(intent_id_of(p))
    assert (intent.status, intent.amount_received) == ("canceled", 0)


async def test_final_check_picks_up_an_authorization_whose_callbacks_were_lost(pay: Harness) -> None:
    r = await pay.reserve()
    p = await pay.payment_of(r)
    await pay.quiet(p)
    assert (await pay.confirm_card(p, r, SILENT)).status_code == 200  # its callbacks get lost

    async def authorized_at_provider() -> bool:
        return (await pay.sandbox_intent(intent_id_of(p))).status == "requires_capture"

    await eventually(authorized_at_provider, timeout=10, what="the sandbox to authorize")
    await pay.final_check(r)  # booking's sweeper, before expiring the hold
    await pay.wait_event("payments.payment.authorized", p["id"])
    causes = [t[2] for t in await pay.transitions(p["id"]) if t[1] == "requires_capture"]
    assert causes == ["sync:hold_final_check"]


async def test_reconciliation_repairs_a_missed_callback(pay: Harness) -> None:
    r = await pay.reserve()
    p = await pay.payment_of(r)
    await pay.quiet(p)  # the `created` callbacks are in; nothing else will arrive
    assert (await pay.confirm_card(p, r, SILENT)).status_code == 200  # its callbacks get lost
    await pay.wait_event("payments.payment.authorized", p["id"], within=30)
    causes = [t[2] for t in await pay.transitions(p["id"]) if t[1] == "requires_capture"]
    assert causes == ["sync:reconcile"]
    lost = await pay.query("SELECT count(*) AS n FROM sandbox_callbacks c JOIN sandbox_events e ON e.id = c.event_id"
                           " WHERE e.intent_id = :i AND c.lost", i=intent_id_of(p))
    assert lost[0].n > 0


async def test_cancelled_confirmed_reservation_is_refunded_per_rule(pay: Harness) -> None:
    r = await pay.reserve(amount_cents=3000)
    p = await pay.payment_of(r)
    await pay.confirm_card(p, r, SUCCESS)
    await pay.wait_event("payments.payment.authorized", p["id"])
    await pay.confirm_reservation(r)
    await pay.wait_status(r, "succeeded")
    await pay.cancel_reservation(r, reason="customer", refund=True)
    refunded = await pay.wait_event("payments.payment.refunded", p["id"])
    assert (refunded.data["refunded_cents"], refunded.data["total_refunded_cents"]) == (3000, 3000)
    await pay.wait_status(r, "refunded")
    assert (await pay.sandbox_intent(intent_id_of(p))).amount_refunded == 3000


async def test_cancelled_without_refund_keeps_the_money(pay: Harness) -> None:
    r = await pay.reserve(amount_cents=3000)
    p = await pay.payment_of(r)
    await pay.confirm_card(p, r, SUCCESS)
    await pay.wait_event("payments.payment.authorized", p["id"])
    await pay.confirm_reservation(r)
    await pay.wait_status(r, "succeeded")
    await pay.cancel_reservation(r, reason="customer", refund=False)
    marker = await pay.reserve()
    await pay.payment_of(marker)  # the cancellation was consumed before this
    await asyncio.sleep(0.5)
    assert (await pay.payment_of(r))["status"] == "succeeded"
    assert pay.emitted("payments.payment.refunded", p["id"]) == []


async def test_owner_refunds_partially_never_above_captured(pay: Harness) -> None:
    store = await pay.new_store()
    store_id, owner, _ = store
    r = await pay.reserve(amount_cents=5000, store=store)
    p = await pay.payment_of(r)
    owner_headers = pay.tokens.headers(owner)
    early = await pay.client.post(f"/api/v1/payments/{p['id']}/refund", json={"amount_cents": 100},
                                  headers=owner_headers)
    assert early.status_code == 409 and early.json()["type"].endswith("/payment-not-captured")
    await pay.confirm_card(p, r, SUCCESS)
    await pay.wait_event("payments.payment.authorized", p["id"])
    await pay.confirm_reservation(r)
    await pay.wait_status(r, "succeeded")

    stranger = await pay.client.post(f"/api/v1/payments/{p['id']}/refund", json={"amount_cents": 100},
                                     headers=pay.tokens.headers(uuid.uuid4()))
    assert stranger.status_code == 404
    customer = await pay.client.post(f"/api/v1/payments/{p['id']}/refund", json={"amount_cents": 100},
                                     headers=pay.tokens.headers(r.user_id))
    assert customer.status_code == 404

    first = await pay.client.post(f"/api/v1/payments/{p['id']}/refund", json={"amount_cents": 2000},
                                  headers=owner_headers)
    assert first.status_code == 202, first.text
    assert (first.json()["amount_cents"], first.json()["status"]) == (2000, "pending")
    too_much = await pay.client.post(f"/api/v1/payments/{p['id']}/refund", json={"amount_cents": 3001},
                                     headers=owner_headers)
    assert too_much.status_code == 409
    assert too_much.json()["type"].endswith("/refund-exceeds-captured")
    assert too_much.json()["refundable_cents"] == 3000
    invalid = await pay.client.post(f"/api/v1/payments/{p['id']}/refund", json={"amount_cents": -5},
                                    headers=owner_headers)
    assert invalid.status_code == 422
    partial = await pay.wait_status(r, "partially_refunded")
    assert partial["refunded_cents"] == 2000
    rest = await pay.client.post(f"/api/v1/payments/{p['id']}/refund", headers=owner_headers)
    assert rest.status_code == 202 and rest.json()["amount_cents"] == 3000
    done = await pay.wait_status(r, "refunded")
    assert done["refunded_cents"] == 5000
    events = await eventually(lambda: _two(pay.emitted("payments.payment.refunded", p["id"])), timeout=20,
                              what="two refunded events")
    assert sorted(e.data["refunded_cents"] for e in events) == [2000, 3000]
    assert (await pay.sandbox_intent(intent_id_of(p))).amount_refunded == 5000
    nothing_left = await pay.client.post(f"/api/v1/payments/{p['id']}/refund", json={"amount_cents": 1},
                                         headers=owner_headers)
    assert nothing_left.status_code == 409


async def _two(items: list) -> list | None:  # type: ignore[type-arg]
    return items if len(items) >= 2 else None


async def test_concurrent_refunds_cannot_exceed_captured(pay: Harness) -> None:
    store = await pay.new_store()
    r = await pay.reserve(amount_cents=1000, store=store)
    p = await pay.payment_of(r)
    await pay.confirm_card(p, r, SUCCESS)
    await pay.wait_event("payments.payment.authorized", p["id"])
    await pay.confirm_reservation(r)
    await pay.wait_status(r, "succeeded")
    headers = pay.tokens.headers(store[1])
    answers = await asyncio.gather(*(
        pay.client.post(f"/api/v1/payments/{p['id']}/refund", json={"amount_cents": 400}, headers=headers)
        for _ in range(5)))
    codes = sorted(a.status_code for a in answers)
    assert codes == [202, 202, 409, 409, 409]
    done = await pay.wait_status(r, "partially_refunded")
    await eventually(lambda: _refunded(pay, r, 800), timeout=20, what="800 refunded")
    assert done["captured_cents"] == 1000


async def _refunded(pay: Harness, r, cents: int) -> bool:  # type: ignore[no-untyped-def]
    return (await pay.payment_of(r))["refunded_cents"] == cents


async def test_callback_with_a_bad_signature_is_refused_and_changes_nothing(pay: Harness) -> None:
    r = await pay.reserve()
    p = await pay.payment_of(r)
    await pay.quiet(p)
    intent = intent_id_of(p)
    before = await pay.query("SELECT count(*) AS n FROM provider_events WHERE intent_id = :i", i=intent)
    forged_id = f"evt_forged_{uuid.uuid4().hex[:12]}"
    body = ('{"id":"' + forged_id + '","type":"payment_intent.succeeded","created":1,"data":{"object":'
            f'{{"id":"{intent}","object":"payment_intent","status":"succeeded"}}}}}}').encode()
    for header in ("t=1,v1=deadbeef", None, "garbage"):
        headers = {"content-type": "application/json"}
        if header:
            headers["Sandbox-Signature"] = header
        resp = await pay.client.post("/api/v1/payments/providers/sandbox/webhook", content=body, headers=headers)
        assert resp.status_code == 400 and resp.json()["type"].endswith("/invalid-signature")
    after = await pay.query("SELECT count(*) AS n FROM provider_events WHERE intent_id = :i", i=intent)
    assert after[0].n == before[0].n
    assert (await pay.query("SELECT count(*) AS n FROM provider_events WHERE event_id = :e", e=forged_id))[0].n == 0
    ops = await pay.query("SELECT count(*) AS n FROM payment_ops WHERE payment_id = :p AND status = 'pending'",
                          p=uuid.UUID(p["id"]))
    assert ops[0].n == 0
    assert (await pay.payment_of(r))["status"] == "requires_payment_method"
    assert (await pay.client.post("/api/v1/payments/providers/nope/webhook", content=b"{}")).status_code == 404


async def test_payments_are_visible_to_their_customer_only(pay: Harness) -> None:
    r = await pay.reserve()
    p = await pay.payment_of(r)
    assert p["client_secret"]
    other = pay.tokens.headers(uuid.uuid4())
    assert (await pay.client.get(f"/api/v1/payments/{p['id']}", headers=other)).status_code == 404
    listed = await pay.client.get("/api/v1/payments", params={"reservation_id": str(r.reservation_id)},
                                  headers=other)
    assert listed.json()["items"] == []
    assert (await pay.client.get(f"/api/v1/payments/{p['id']}")).status_code == 401
    mine = await pay.client.get(f"/api/v1/payments/{p['id']}", headers=pay.tokens.headers(r.user_id))
    assert mine.status_code == 200 and mine.json()["client_secret"] == p["client_secret"]
    assert (await pay.confirm_card(p, r, "4111111111111111")).status_code == 422
    stranger_pays = await pay.client.post(f"/api/v1/payments/{p['id']}/sandbox/confirm",
                                          json={"card_number": SUCCESS}, headers=other)
    assert stranger_pays.status_code == 404


async def test_list_is_cursor_paginated(pay: Harness) -> None:
    store = await pay.new_store()
    first = await pay.reserve(store=store)
    user = first.user_id
    reservations = [first]
    for _ in range(2):
        r = await pay.reserve(store=store)
        # Same customer for all three.
        r2 = r.snapshot.model_copy(update={"reservation_id": uuid.uuid4(), "user_id": user})
        from dropslot_contracts.events.booking import ReservationCreated

        await pay.publish(ReservationCreated(reservation=r2), store_id=store[0], tenant_key=store[2])
        reservations.append(type(r)(r2.reservation_id, user, store[0], store[2], 2500, "EUR", r2))
    for r in reservations:
        await pay.payment_of(r)
    headers = pay.tokens.headers(user)
    page1 = (await pay.client.get("/api/v1/payments", params={"limit": 2}, headers=headers)).json()
    assert len(page1["items"]) == 2 and page1["next_cursor"]
    page2 = (await pay.client.get("/api/v1/payments", params={"limit": 2, "cursor": page1["next_cursor"]},
                                  headers=headers)).json()
    assert len(page2["items"]) == 1 and page2["next_cursor"] is None
    ids = {i["id"] for i in page1["items"] + page2["items"]}
    assert len(ids) == 3
    bad = await pay.client.get("/api/v1/payments", params={"cursor": "!!"}, headers=headers)
    assert bad.status_code == 422


@pytest.mark.parametrize("reason", ["customer", "store"])
async def test_cancel_before_payment_cancels_the_intent(pay: Harness, reason: str) -> None:
    r = await pay.reserve()
    p = await pay.payment_of(r)
    await pay.cancel_reservation(r, reason=reason, refund=True)
    canceled = await pay.wait_event("payments.payment.canceled", p["id"])
    assert canceled.data["reason"] == "reservation_cancelled"
    assert pay.emitted("payments.payment.refunded", p["id"]) == []


async def test_housekeeping_forgets_finished_work_only(pay: Harness) -> None:
    from dropslot_payments.adapters.repository import forget_old

    r = await pay.reserve()
    p = await pay.payment_of(r)
    await pay.quiet(p)
    pid = uuid.UUID(p["id"])
    async with pay.engine.begin() as conn:
        from sqlalchemy import text

        await conn.execute(text("SELECT set_config('dropslot.tenant', '*', true)"))
        await conn.execute(text(
            "INSERT INTO payment_ops (payment_id, kind, dedup_key, status, due_at, updated_at) VALUES"
            " (:p, 'sync', 'old-done', 'done', now() - interval '8 days', now() - interval '8 days'),"
            " (:p, 'sync', 'old-pending', 'pending', now() + interval '1 hour', now() - interval '8 days')"), {"p": pid})
        await forget_old(conn)
    left = await pay.query("SELECT dedup_key FROM payment_ops WHERE payment_id = :p AND dedup_key LIKE 'old-%'", p=pid)
    assert [row.dedup_key for row in left] == ["old-pending"]
    recent = await pay.query("SELECT count(*) AS n FROM payment_ops WHERE payment_id = :p AND status = 'done'", p=pid)
    assert recent[0].n > 0  # this week's finished ops are kept


async def test_row_level_security_scopes_payments_to_a_tenant(pay: Harness) -> None:
    """As the service's own role: no tenant set, nothing visible; a tenant, only its rows."""
    from sqlalchemy import text

    a, b = await pay.reserve(), await pay.reserve()
    await pay.payment_of(a)
    await pay.payment_of(b)

    async def visible(scope: str | None) -> set[str]:
        async with pay.engine.connect() as conn:
            if scope is not None:
                await conn.execute(text("SELECT set_config('dropslot.tenant', :t, false)"), {"t": scope})
            rows = await conn.execute(text("SELECT reservation_id FROM payments WHERE reservation_id = ANY(:r)"),
                                      {"r": [a.reservation_id, b.reservation_id]})
            return {str(r.reservation_id) for r in rows}

    assert await visible(None) == set()
    assert await visible(a.tenant_key) == {str(a.reservation_id)}
    assert await visible("*") == {str(a.reservation_id), str(b.reservation_id)}
    async with pay.engine.connect() as conn:
        await conn.execute(text("SELECT set_config('dropslot.tenant', :t, false)"), {"t": a.tenant_key})
        moved = await conn.execute(text("UPDATE payments SET status = 'canceled' WHERE reservation_id = :r"),
                                   {"r": b.reservation_id})
        assert moved.rowcount == 0
        await conn.rollback()
