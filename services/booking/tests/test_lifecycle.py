"""Cancellation, expiry, the payments saga and drop cancellation, against the real database and
broker (rule minutes are seconds here: booking_minute_seconds=1)."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta

import pytest
from dropslot_contracts import Envelope
from dropslot_contracts.events.catalog import DropCancelled
from dropslot_contracts.events.payments import PaymentFailed, PaymentStatusChanged, PaymentSucceeded
from dropslot_kit.testing import eventually

from .conftest import Cluster, EventTap

pytestmark = pytest.mark.asyncio


def slug(r) -> str:
    return r.json().get("type", "").rsplit("/", 1)[-1]


async def get_res(cluster: Cluster, user, rid) -> dict:
    r = await cluster.request("GET", f"/reservations/{rid}", user)
    assert r.status_code == 200, r.text
    return dict(r.json())


async def available(cluster: Cluster, slot_id) -> int:
    return int((await cluster.request("GET", f"/slots/{slot_id}")).json()["available"])


async def pay_event(cluster: Cluster, event_cls, reservation: dict, store: dict, **extra) -> Envelope:
    fields = dict(payment_id=uuid.uuid4(), store_id=store["id"], reservation_id=reservation["id"],
                  user_id=reservation["user_id"], provider="sandbox", amount_cents=reservation["amount_cents"],
                  currency=reservation["currency"])
    fields.update(extra)
    env = Envelope.wrap(event_cls(**fields), producer="payments", store_id=store["id"],
                        tenant_key=store["tenant_key"])
    await cluster.producer.publish_raw(env.routing_key, env.model_dump_json().encode(), message_id=str(env.id),
                                       headers={})
    return env


async def test_customer_cancels_before_the_deadline_and_the_seat_comes_back(cluster: Cluster, tap: EventTap) -> None:
    store = await cluster.store(cluster.user())
    drop = await cluster.drop(store, price_cents=1000, rule={"cancel_until_minutes_before": 60, "refund_on_cancel": False})
    slot = await cluster.slot(store, drop, capacity=1, start_in=timedelta(hours=2))
    user = cluster.user()
    res = (await cluster.reserve(user, slot["id"])).json()
    assert await available(cluster, slot["id"]) == 0
    r = await cluster.request("POST", f"/reservations/{res['id']}/cancel", user)
    assert r.status_code == 200 and r.json()["state"] == "CANCELLED" and r.json()["cancel_reason"] == "customer"
    assert await available(cluster, slot["id"]) == 1
    again = await cluster.request("POST", f"/reservations/{res['id']}/cancel", user)
    assert again.status_code == 200 and again.json()["state"] == "CANCELLED"
    env = await tap.wait_for("booking.reservation.cancelled", reservation__reservation_id=res["id"])
    assert env.data["reason"] == "customer" and env.data["refund"] is False
    assert env.store_id == store["id"] and env.tenant_key == store["tenant_key"]
    assert env.actor.user_id == user["id"]
    assert await cluster.invariants() == []


async def test_too_late_for_the_customer_but_not_for_the_store(cluster: Cluster, tap: EventTap) -> None:
    owner = cluster.user()
    store = await cluster.store(owner)
    drop = await cluster.drop(store, price_cents=1000, rule={"cancel_until_minutes_before": 60, "refund_on_cancel": False})
    slot = await cluster.slot(store, drop, capacity=2, start_in=timedelta(seconds=30))
    user = cluster.user()
    res = (await cluster.reserve(user, slot["id"])).json()
    r = await cluster.request("POST", f"/reservations/{res['id']}/cancel", user)
    assert r.status_code == 409 and slug(r) == "too-late-to-cancel"
    stranger = await cluster.request("POST", f"/reservations/{res['id']}/cancel", cluster.user())
    assert stranger.status_code == 404
    r = await cluster.request("POST", f"/reservations/{res['id']}/cancel", owner)
    assert r.status_code == 200 and r.json()["cancel_reason"] == "store"
    env = await tap.wait_for("booking.reservation.cancelled", reservation__reservation_id=res["id"])
    assert env.data["refund"] is True  # the store took the seat away: always refunded
    listing = (await cluster.request("GET", f"/stores/{store['id']}/reservations?state=CANCELLED", owner)).json()
    assert [i["id"] for i in listing["items"]] == [res["id"]]
    assert (await cluster.request("GET", f"/stores/{store['id']}/reservations", user)).status_code == 404


async def test_unpaid_hold_expires_and_gives_the_seat_back(cluster: Cluster, tap: EventTap) -> None:
    store = await cluster.store(cluster.user())
    drop = await cluster.drop(store, price_cents=1500, rule={"hold_minutes": 1})
    slot = await cluster.slot(store, drop, capacity=1)
    user = cluster.user()
    res = (await cluster.reserve(user, slot["id"])).json()
    assert res["state"] == "PENDING"
    assert (await cluster.reserve(cluster.user(), slot["id"])).status_code == 409

    async def expired() -> bool:
        return (await get_res(cluster, user, res["id"]))["state"] == "EXPIRED"

    await eventually(expired, timeout=20, what="hold expiry")
    await tap.wait_for("booking.reservation.expired", reservation__reservation_id=res["id"])
    assert await available(cluster, slot["id"]) == 1
    assert (await cluster.reserve(cluster.user(), slot["id"])).status_code == 201
    assert await cluster.invariants() == []


async def test_reminder_before_a_hold_lapses(cluster: Cluster, tap: EventTap) -> None:
    store = await cluster.store(cluster.user())
    drop = await cluster.drop(store, price_cents=1500, rule={"hold_minutes": 5})
    slot = await cluster.slot(store, drop)
    res = (await cluster.reserve(cluster.user(), slot["id"])).json()
    env = await tap.wait_for("booking.reservation.expiring", reservation__reservation_id=res["id"])
    assert env.data["final_check"] is False
    # Sent about 3 rule-minutes (here seconds) before the hold lapses, while it still holds.
    assert env.data["reservation"]["state"] == "PENDING"
    expires = datetime.fromisoformat(env.data["reservation"]["expires_at"])
    assert timedelta(seconds=2) < expires - env.occurred_at <= timedelta(seconds=3.5)


async def test_payment_in_flight_defers_expiry_once_then_expires(cluster: Cluster, tap: EventTap) -> None:
    store = await cluster.store(cluster.user())
    drop = await cluster.drop(store, price_cents=1500, rule={"hold_minutes": 1})
    slot = await cluster.slot(store, drop, capacity=1)
    user = cluster.user()
    res = (await cluster.reserve(user, slot["id"])).json()
    await pay_event(cluster, PaymentStatusChanged, res, store, status="requires_action",
                    previous_status="requires_payment_method")
    env = await tap.wait_for("booking.reservation.expiring", reservation__reservation_id=res["id"],
                             final_check=True)
    assert env.data["reservation"]["state"] == "PENDING"
    assert (await get_res(cluster, user, res["id"]))["payment"]["status"] == "requires_action"

    async def expired() -> bool:
        return (await get_res(cluster, user, res["id"]))["state"] == "EXPIRED"

    await eventually(expired, timeout=20, what="expiry after the grace")
    assert await cluster.invariants() == []


async def test_payment_success_confirms_and_failure_cancels(cluster: Cluster, tap: EventTap) -> None:
    store = await cluster.store(cluster.user())
    drop = await cluster.drop(store, price_cents=4200)
    slot = await cluster.slot(store, drop, capacity=2)
    payer, decliner = cluster.user(), cluster.user()
    paid = (await cluster.reserve(payer, slot["id"])).json()
    declined = (await cluster.reserve(decliner, slot["id"])).json()
    pid = uuid.uuid4()
    await pay_event(cluster, PaymentSucceeded, paid, store, status="succeeded", payment_id=pid)
    await pay_event(cluster, PaymentFailed, declined, store, status="requires_payment_method", reason="card_declined")
    env = await tap.wait_for("booking.reservation.confirmed", reservation__reservation_id=paid["id"])
    assert env.data["reservation"]["checkin_token"] and env.data["reservation"]["qr_code_url"]
    body = await get_res(cluster, payer, paid["id"])
    assert body["state"] == "CONFIRMED" and body["checkin_token"] and body["payment"]["id"] == str(pid)
    env = await tap.wait_for("booking.reservation.cancelled", reservation__reservation_id=declined["id"])
    assert env.data["reason"] == "payment_failed"
    assert (await get_res(cluster, decliner, declined["id"]))["state"] == "CANCELLED"
    assert await available(cluster, slot["id"]) == 1
    # The same success again (a redelivery or a second event) changes nothing.
    await pay_event(cluster, PaymentSucceeded, paid, store, status="succeeded", payment_id=pid)
    assert await cluster.invariants() == []


async def test_late_payment_wins_the_seat_back_or_is_refunded(cluster: Cluster, tap: EventTap) -> None:
    store = await cluster.store(cluster.user())
    drop = await cluster.drop(store, price_cents=900, rule={"hold_minutes": 1})
    slot = await cluster.slot(store, drop, capacity=1)
    early, late = cluster.user(), cluster.user()
    res = (await cluster.reserve(early, slot["id"])).json()

    async def expired(user=early, rid=res["id"]) -> bool:
        return (await get_res(cluster, user, rid))["state"] == "EXPIRED"

    await eventually(expired, timeout=20, what="first hold expiry")
    await pay_event(cluster, PaymentSucceeded, res, store, status="succeeded")
    await tap.wait_for("booking.reservation.confirmed", reservation__reservation_id=res["id"])
    assert (await get_res(cluster, early, res["id"]))["state"] == "CONFIRMED"
    assert await available(cluster, slot["id"]) == 0

    # Now a hold that lapses and whose seat someone else takes: its payment is refunded.
    slot2 = await cluster.slot(store, drop, capacity=1, start_in=timedelta(hours=2))
    res2 = (await cluster.reserve(late, slot2["id"])).json()
    await eventually(lambda: expired(late, res2["id"]), timeout=20, what="second hold expiry")
    assert (await cluster.reserve(cluster.user(), slot2["id"])).status_code == 201
    await pay_event(cluster, PaymentSucceeded, res2, store, status="succeeded")
    env = await tap.wait_for("booking.refund.requested", reservation_id=res2["id"])
    assert env.data["reason"] == "seat_lost"
    assert (await get_res(cluster, late, res2["id"]))["state"] == "EXPIRED"
    assert await cluster.invariants() == []


async def test_cancelled_drop_cancels_its_reservations_and_lines(cluster: Cluster, tap: EventTap) -> None:
    store = await cluster.store(cluster.user())
    drop = await cluster.drop(store, price_cents=700)
    slot = await cluster.slot(store, drop, capacity=2)
    a, b, waiting = cluster.user(), cluster.user(), cluster.user()
    ra = (await cluster.reserve(a, slot["id"])).json()
    (await cluster.reserve(b, slot["id"])).json()
    entry = (await cluster.request("POST", f"/slots/{slot['id']}/waitlist", waiting)).json()
    await cluster.publish(DropCancelled(drop=drop.model_copy(update={"status": "CANCELLED"}), reason="supplier"),
                          store_id=store["id"], tenant_key=store["tenant_key"])
    env = await tap.wait_for("booking.reservation.cancelled", reservation__reservation_id=ra["id"])
    assert env.data["reason"] == "drop_cancelled" and env.data["refund"] is True
    await tap.wait_for("booking.waitlist.lapsed", entry__entry_id=entry["id"])

    async def all_closed() -> bool:
        return (await get_res(cluster, a, ra["id"]))["state"] == "CANCELLED" and await available(cluster, slot["id"]) == 2

    await eventually(all_closed, timeout=20, what="drop cancellation sweep")
    r = await cluster.reserve(cluster.user(), slot["id"])
    assert r.status_code == 409 and slug(r) == "drop-not-live"
    assert await cluster.invariants() == []
