"""Who payments' events name (`Envelope.actor`, what the audit trail shows), against the real
PostgreSQL and RabbitMQ: the customer who reserved for `created` (emitted later by the ops
worker), the customer's own request for the card step, the owner for an owner's refund, and
nobody for what the provider's callbacks bring. See `service/payments.py`."""

from __future__ import annotations

import json
import uuid
from typing import Any

from dropslot_contracts import Actor, Envelope
from dropslot_kit.context import CallContext
from dropslot_kit.testing import eventually
from dropslot_payments.adapters import repository as repo
from sqlalchemy import text

from .conftest import Harness, Reservation

SUCCESS, DECLINED = "4242424242424242", "4000000000000002"
NOBODY = Actor()


def customer_request(user_id: uuid.UUID, ua: str) -> Actor:
    return Actor(user_id=user_id, ip="203.0.113.7", user_agent=ua)


async def reserved_by_a_customer(pay: Harness, **kwargs: Any) -> tuple[Reservation, Actor, str]:
    """A reservation booking made for a customer's request (its envelope carries their actor)."""
    user = uuid.uuid4()
    actor, correlation = customer_request(user, f"Reserver/1.0 ({user.hex[:6]})"), f"req-{uuid.uuid4().hex}"
    r = await pay.reserve(user_id=user, actor=actor, correlation_id=correlation, **kwargs)
    return r, actor, correlation


async def status_change(pay: Harness, payment_id: Any, to: str) -> Envelope:
    async def seen() -> Envelope | None:
        found = [e for e in pay.emitted("payments.payment.status_changed", payment_id) if e.data["status"] == to]
        return found[0] if found else None

    return await eventually(seen, timeout=25, what=f"status_changed to {to} for {payment_id}")


def as_json(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str) else value


async def op_origins(pay: Harness, payment_id: Any, kind: str) -> list[dict[str, Any] | None]:
    rows = await pay.query("SELECT origin FROM payment_ops WHERE payment_id = :p AND kind = :k ORDER BY id",
                           p=uuid.UUID(str(payment_id)), k=kind)
    return [as_json(r.origin) for r in rows]


async def test_intent_created_by_the_worker_names_the_customer_who_reserved(pay: Harness) -> None:
    r, actor, correlation = await reserved_by_a_customer(pay)
    p = await pay.payment_of(r)
    created = await pay.wait_event("payments.payment.created", p["id"])
    assert created.actor == actor  # user, address and user agent of the reserve request
    assert created.correlation_id == correlation
    # The consumer kept that context on the queued provider call; the worker ran it under it.
    assert await op_origins(pay, p["id"], "create") == [
        {"actor": {"user_id": str(r.user_id), "ip": "203.0.113.7", "user_agent": actor.user_agent},
         "correlation_id": correlation}]


async def test_intent_of_an_anonymous_booking_event_names_nobody(pay: Harness) -> None:
    r = await pay.reserve()  # no actor: e.g. a reservation made by one of booking's own loops
    p = await pay.payment_of(r)
    created = await pay.wait_event("payments.payment.created", p["id"])
    assert created.actor == NOBODY
    assert await op_origins(pay, p["id"], "create") == [None]


async def test_card_confirm_is_the_customers_step_and_the_providers_callbacks_name_nobody(pay: Harness) -> None:
    r, _, _ = await reserved_by_a_customer(pay)
    p = await pay.payment_of(r)
    resp = await pay.confirm_card(p, r, SUCCESS, headers={"User-Agent": "Payer/2.0", "X-Real-IP": "198.51.100.9"})
    assert resp.status_code == 200, resp.text
    # The payment took the step's result in that request, before any callback.
    assert (await pay.payment_of(r))["status"] in ("processing", "requires_capture")
    paying = await status_change(pay, p["id"], "processing")
    assert paying.actor == Actor(user_id=r.user_id, ip="198.51.100.9", user_agent="Payer/2.0")
    assert (paying.before, paying.after) == ({"status": "requires_payment_method"}, {"status": "processing"})
    assert paying.data["previous_status"] == "requires_payment_method"
    assert resp.headers["x-request-id"] == paying.correlation_id

    authorized = await pay.wait_event("payments.payment.authorized", p["id"])
    assert authorized.actor == NOBODY  # the provider's signed callback: not a person
    assert (await status_change(pay, p["id"], "requires_capture")).actor == NOBODY
    await pay.quiet(p)
    # The (duplicated, shuffled) callbacks about the same change found nothing new to announce.
    to_processing = [e for e in pay.emitted("payments.payment.status_changed", p["id"])
                     if e.data["status"] == "processing"]
    assert len(to_processing) == 1
    assert [t for t in await pay.transitions(p["id"]) if t[1] == "processing"] == [
        ("requires_payment_method", "processing", "sandbox_confirm")]
    # Re-fetches the callbacks queued carry no person either.
    assert all(o is None or o["actor"] == {} for o in await op_origins(pay, p["id"], "sync"))

    await pay.confirm_reservation(r)  # booking's confirmation of `authorized`: nobody's either
    succeeded = await pay.wait_event("payments.payment.succeeded", p["id"])
    assert succeeded.actor == NOBODY


async def test_declined_card_fails_the_payment_in_the_customers_name(pay: Harness) -> None:
    r, _, _ = await reserved_by_a_customer(pay)
    p = await pay.payment_of(r)
    resp = await pay.confirm_card(p, r, DECLINED, headers={"User-Agent": "Payer/3.0", "X-Real-IP": "198.51.100.10"})
    assert resp.status_code == 402, resp.text
    customer = Actor(user_id=r.user_id, ip="198.51.100.10", user_agent="Payer/3.0")
    failed = await pay.wait_event("payments.payment.failed", p["id"])
    assert (failed.actor, failed.data["reason"]) == (customer, "generic_decline")
    assert (await status_change(pay, p["id"], "failed")).actor == customer
    assert (await pay.payment_of(r))["status"] == "failed"


async def test_owner_refund_names_the_owner(pay: Harness) -> None:
    store = await pay.new_store()
    r, _, _ = await reserved_by_a_customer(pay, amount_cents=3000, store=store)
    p = await pay.payment_of(r)
    assert (await pay.confirm_card(p, r, SUCCESS)).status_code == 200
    await pay.wait_event("payments.payment.authorized", p["id"])
    await pay.confirm_reservation(r)
    await pay.wait_status(r, "succeeded")
    owner = store[1]
    resp = await pay.client.post(f"/api/v1/payments/{p['id']}/refund", json={"amount_cents": 1000},
                                 headers={**pay.tokens.headers(owner), "User-Agent": "Owner/1.0",
                                          "X-Real-IP": "192.0.2.44"})
    assert resp.status_code == 202, resp.text
    refunded = await pay.wait_event("payments.payment.refunded", p["id"])
    owner_request = Actor(user_id=owner, ip="192.0.2.44", user_agent="Owner/1.0")
    assert refunded.actor == owner_request  # the worker made the call, in the owner's name
    assert (await status_change(pay, p["id"], "partially_refunded")).actor == owner_request


async def test_an_op_asked_for_again_while_running_reruns_for_the_new_asker(pay: Harness) -> None:
    """A waiting op keeps whoever queued it first; one asked for again while it runs runs once
    more afterwards, for the new asker. (In a transaction rolled back: the worker never sees it.)"""
    r = await pay.reserve()
    p = await pay.payment_of(r)
    pid = uuid.UUID(p["id"])
    first = CallContext(actor=Actor(user_id=uuid.uuid4(), ip="192.0.2.1"), correlation_id="first")
    second = CallContext(actor=Actor(user_id=uuid.uuid4(), ip="192.0.2.2"), correlation_id="second")
    third = CallContext(correlation_id="third")  # nobody in particular

    async with pay.engine.connect() as conn:
        await conn.execute(text("SELECT set_config('dropslot.tenant', '*', false)"))

        async def row() -> tuple[str, Any, bool]:
            found = (await conn.execute(text(
                "SELECT cause, origin, again FROM payment_ops WHERE payment_id = :p AND kind = 'capture'"
                " AND status = 'pending'"), {"p": pid})).one()
            return found.cause, as_json(found.origin), found.again

        await repo.enqueue_op(conn, pid, "capture", cause="one", origin=first)
        await repo.enqueue_op(conn, pid, "capture", cause="two", origin=second)
        assert await row() == (
            "one", {"actor": {"user_id": str(first.actor.user_id), "ip": "192.0.2.1"}, "correlation_id": "first"},
            False)

        await conn.execute(text("UPDATE payment_ops SET locked_until = now() + interval '1 minute'"
                                " WHERE payment_id = :p AND kind = 'capture'"), {"p": pid})  # a worker runs it
        await repo.enqueue_op(conn, pid, "capture", cause="three", origin=third)
        assert await row() == ("three", {"actor": {}, "correlation_id": "third"}, True)
        await repo.enqueue_op(conn, pid, "capture", cause="four", origin=CallContext())
        assert await row() == ("four", None, True)
        await conn.rollback()
