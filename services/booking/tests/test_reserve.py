"""Reserving against the real database, through two in-process replicas (group commit on)."""

from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta

import pytest

from .conftest import Cluster, EventTap

pytestmark = pytest.mark.asyncio


def slug(r) -> str:
    return r.json().get("type", "").rsplit("/", 1)[-1]


async def test_free_drop_confirms_at_once_with_a_checkin_token(cluster: Cluster, tap: EventTap) -> None:
    owner = cluster.user()
    store = await cluster.store(owner)
    drop = await cluster.drop(store)
    slot = await cluster.slot(store, drop, capacity=3)
    customer = cluster.user()
    r = await cluster.reserve(customer, slot["id"], customer_note="blue please")
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["state"] == "CONFIRMED" and body["slot_id"] == slot["id"] and body["drop_id"] == str(drop.drop_id)
    assert body["checkin_token"] and body["qr_code_url"].endswith(f"/api/v1/reservations/{body['id']}/qr.svg")
    assert body["payment"] is None and body["expires_at"] is None
    got = await cluster.request("GET", f"/reservations/{body['id']}", customer)
    assert got.status_code == 200 and got.json()["state"] == "CONFIRMED"
    other = await cluster.request("GET", f"/reservations/{body['id']}", cluster.user())
    assert other.status_code == 404
    slots = (await cluster.request("GET", f"/drops/{drop.drop_id}/slots")).json()["items"]
    assert [s["available"] for s in slots] == [2]
    assert await cluster.invariants() == []
    # The reserve transaction's events (written inside reserve_seats) reach the broker.
    created = await tap.wait_for("booking.reservation.created", reservation__reservation_id=body["id"])
    confirmed = await tap.wait_for("booking.reservation.confirmed", reservation__reservation_id=body["id"])
    assert created.data["reservation"]["state"] == "CONFIRMED" and confirmed.store_id == store["id"]
    assert confirmed.data["reservation"]["checkin_token"] == body["checkin_token"]
    assert created.actor.user_id == customer["id"] and created.tenant_key == store["tenant_key"]
    # Two events of their own (ids, types), about the same reservation, by the same actor.
    assert confirmed.id != created.id and confirmed.actor == created.actor
    assert confirmed.tenant_key == created.tenant_key and confirmed.after == created.after
    assert type(confirmed.typed()).__name__ == "ReservationConfirmed" and confirmed.data == created.data


async def test_paid_drop_holds_the_seat_pending_payment(cluster: Cluster) -> None:
    owner = cluster.user()
    store = await cluster.store(owner)
    drop = await cluster.drop(store, price_cents=2500, rule={"hold_minutes": 10})
    slot = await cluster.slot(store, drop)
    r = await cluster.reserve(cluster.user(), slot["id"])
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["state"] == "PENDING" and body["checkin_token"] is None and body["qr_code_url"] is None
    assert body["expires_at"] is not None
    assert body["payment"] == {"required": True, "id": None, "status": None, "provider": None,
                               "amount_cents": 2500, "currency": "EUR"}


async def test_sold_out_says_whether_the_waitlist_is_open(cluster: Cluster) -> None:
    store = await cluster.store(cluster.user())
    drop = await cluster.drop(store, rule={"waitlist_enabled": False})
    slot = await cluster.slot(store, drop, capacity=1)
    assert (await cluster.reserve(cluster.user(), slot["id"])).status_code == 201
    r = await cluster.reserve(cluster.user(), slot["id"])
    assert r.status_code == 409 and slug(r) == "sold-out" and r.json()["waitlist_open"] is False
    drop2 = await cluster.drop(store)
    slot2 = await cluster.slot(store, drop2, capacity=1)
    assert (await cluster.reserve(cluster.user(), slot2["id"])).status_code == 201
    r = await cluster.reserve(cluster.user(), slot2["id"])
    assert r.status_code == 409 and r.json()["waitlist_open"] is True
    assert r.headers["content-type"].startswith("application/problem+json")


async def test_many_users_racing_for_few_seats_get_exactly_the_seats(cluster: Cluster) -> None:
    store = await cluster.store(cluster.user())
    drop = await cluster.drop(store)
    slot = await cluster.slot(store, drop, capacity=25)
    users = [cluster.user() for _ in range(200)]
    results = await asyncio.gather(*(cluster.reserve(u, slot["id"], key=uuid.uuid4().hex) for u in users))
    codes = sorted(r.status_code for r in results)
    assert codes.count(201) == 25 and codes.count(409) == 175, codes
    assert {slug(r) for r in results if r.status_code == 409} == {"sold-out"}
    s = (await cluster.request("GET", f"/slots/{slot['id']}")).json()
    assert s["available"] == 0 and s["capacity_reserved"] == 25
    assert await cluster.invariants() == []


async def test_one_user_firing_in_parallel_gets_exactly_max_per_user(cluster: Cluster) -> None:
    store = await cluster.store(cluster.user())
    drop = await cluster.drop(store, rule={"max_per_user": 2})
    slots = [await cluster.slot(store, drop, capacity=50, start_in=timedelta(hours=1, minutes=i)) for i in range(4)]
    user = cluster.user()
    results = await asyncio.gather(*(cluster.reserve(user, slots[i % 4]["id"]) for i in range(20)))
    codes = [r.status_code for r in results]
    assert codes.count(201) == 2, codes
    assert {slug(r) for r in results if r.status_code != 201} == {"limit-reached"}
    # ... and the same slot many times: one reservation per person per slot.
    user2 = cluster.user()
    results = await asyncio.gather(*(cluster.reserve(user2, slots[0]["id"]) for _ in range(20)))
    assert [r.status_code for r in results].count(201) == 1
    mine = (await cluster.request("GET", "/reservations", user)).json()["items"]
    assert len(mine) == 2
    assert await cluster.invariants() == []


async def test_same_idempotency_key_creates_one_reservation(cluster: Cluster) -> None:
    store = await cluster.store(cluster.user())
    drop = await cluster.drop(store)
    slot = await cluster.slot(store, drop, capacity=5)
    user = cluster.user()
    key = uuid.uuid4().hex
    results = await asyncio.gather(*(cluster.reserve(user, slot["id"], key=key) for _ in range(10)))
    assert {r.status_code for r in results} == {201}
    assert len({r.json()["id"] for r in results}) == 1
    again = await cluster.reserve(user, slot["id"], key=key)
    assert again.status_code == 201 and again.json() == results[0].json()
    reused = await cluster.reserve(user, slot["id"], key=key, customer_note="other body")
    assert reused.status_code == 422 and slug(reused) == "idempotency-key-reused"
    # Another user's key space is their own.
    assert (await cluster.reserve(cluster.user(), slot["id"], key=key)).status_code == 201
    mine = (await cluster.request("GET", "/reservations", user)).json()["items"]
    assert len(mine) == 1
    assert await cluster.invariants() == []


async def test_retry_after_sell_out_still_gets_the_first_answer(cluster: Cluster) -> None:
    store = await cluster.store(cluster.user())
    drop = await cluster.drop(store)
    slot = await cluster.slot(store, drop, capacity=1)
    user, key = cluster.user(), uuid.uuid4().hex
    first = await cluster.reserve(user, slot["id"], key=key)
    assert first.status_code == 201
    assert (await cluster.reserve(cluster.user(), slot["id"])).status_code == 409
    retry = await cluster.reserve(user, slot["id"], key=key)
    assert retry.status_code == 201 and retry.json() == first.json()


async def test_refusals_before_the_seat(cluster: Cluster) -> None:
    store = await cluster.store(cluster.user())
    scheduled = await cluster.drop(store, status="SCHEDULED")
    slot = await cluster.slot(store, scheduled)
    r = await cluster.reserve(cluster.user(), slot["id"])
    assert r.status_code == 409 and slug(r) == "drop-not-live"

    strict = await cluster.drop(store, rule={"require_verified_email": True})
    slot = await cluster.slot(store, strict)
    r = await cluster.reserve(cluster.user(email_verified=False), slot["id"])
    assert r.status_code == 403 and slug(r) == "email-not-verified"
    assert (await cluster.reserve(cluster.user(email_verified=True), slot["id"])).status_code == 201

    soon = await cluster.drop(store)
    slot = await cluster.slot(store, soon, start_in=timedelta(seconds=1))
    await asyncio.sleep(1.2)
    r = await cluster.reserve(cluster.user(), slot["id"])
    assert r.status_code == 409 and slug(r) == "slot-closed"

    r = await cluster.reserve(cluster.user(), uuid.uuid4())
    assert r.status_code == 404
    r = await cluster.request("POST", "/reservations", cluster.user(), json={"slot_id": "nope"})
    assert r.status_code == 422
    r = await cluster.request("POST", "/reservations", None, json={"slot_id": str(uuid.uuid4())})
    assert r.status_code == 401


async def test_drop_going_live_opens_its_slots(cluster: Cluster) -> None:
    from dropslot_contracts.events.catalog import DropLive

    store = await cluster.store(cluster.user())
    drop = await cluster.drop(store, status="SCHEDULED")
    slot = await cluster.slot(store, drop, capacity=2)
    assert (await cluster.reserve(cluster.user(), slot["id"])).status_code == 409
    await cluster.publish(DropLive(drop=drop.model_copy(update={"status": "LIVE"})), store_id=store["id"],
                          tenant_key=store["tenant_key"])
    await cluster.wait_drop(drop.drop_id, "LIVE")
    await asyncio.sleep(0.3)  # the per-replica slot cache (0.25 s) forgets the closed state
    assert (await cluster.reserve(cluster.user(), slot["id"])).status_code == 201
