"""Waitlist order, offers held and lapsing, accept/leave; check-in with every refusal; slots admin."""

from __future__ import annotations

import asyncio
import base64
import json
import uuid
from datetime import timedelta

import pytest
from dropslot_kit.testing import eventually

from .conftest import Cluster, EventTap

pytestmark = pytest.mark.asyncio


def slug(r) -> str:
    return r.json().get("type", "").rsplit("/", 1)[-1]


async def entry(cluster: Cluster, user, eid) -> dict:
    r = await cluster.request("GET", f"/waitlist/{eid}", user)
    assert r.status_code == 200, r.text
    return dict(r.json())


async def slot_of(cluster: Cluster, sid) -> dict:
    return dict((await cluster.request("GET", f"/slots/{sid}")).json())


async def test_waitlist_is_first_come_and_offers_pass_along(cluster: Cluster, tap: EventTap) -> None:
    store = await cluster.store(cluster.user())
    drop = await cluster.drop(store, rule={"waitlist_offer_minutes": 2, "cancel_until_minutes_before": 0})
    slot = await cluster.slot(store, drop, capacity=1)
    holder = cluster.user()
    held = (await cluster.reserve(holder, slot["id"])).json()
    first, second, third = cluster.user(), cluster.user(), cluster.user()

    r = await cluster.request("POST", f"/slots/{slot['id']}/waitlist", first)
    assert r.status_code == 201 and r.json()["position"] == 1 and r.json()["state"] == "WAITING"
    e1 = r.json()
    e2 = (await cluster.request("POST", f"/slots/{slot['id']}/waitlist", second)).json()
    e3 = (await cluster.request("POST", f"/slots/{slot['id']}/waitlist", third)).json()
    assert (e2["position"], e3["position"]) == (2, 3)
    dup = await cluster.request("POST", f"/slots/{slot['id']}/waitlist", second)
    assert dup.status_code == 409 and slug(dup) == "already-on-waitlist"
    assert (await slot_of(cluster, slot["id"]))["waitlist_length"] == 3
    early = await cluster.request("POST", f"/waitlist/{e1['id']}/accept", first)
    assert early.status_code == 409 and slug(early) == "no-offer"

    # A seat frees: it goes to the first in line, held for them, not to the public.
    assert (await cluster.request("POST", f"/reservations/{held['id']}/cancel", holder)).status_code == 200
    assert (await entry(cluster, first, e1["id"]))["state"] == "OFFERED"
    await tap.wait_for("booking.waitlist.offered", entry__entry_id=e1["id"])
    s = await slot_of(cluster, slot["id"])
    assert (s["available"], s["capacity_waitlist"]) == (0, 1)
    r = await cluster.reserve(cluster.user(), slot["id"])
    assert r.status_code == 409 and slug(r) == "sold-out"
    assert (await entry(cluster, second, e2["id"]))["position"] == 1
    assert await cluster.invariants() == []

    # The first does not answer: the offer lapses (2 s here) and passes to the second.
    async def offered_to_second() -> bool:
        return (await entry(cluster, second, e2["id"]))["state"] == "OFFERED"

    await eventually(offered_to_second, timeout=20, what="offer passing to the second in line")
    assert (await entry(cluster, first, e1["id"]))["state"] == "LAPSED"
    late = await cluster.request("POST", f"/waitlist/{e1['id']}/accept", first)
    assert late.status_code == 409 and slug(late) == "offer-expired"
    env = await tap.wait_for("booking.waitlist.lapsed", entry__entry_id=e1["id"])
    assert env.data["reason"] == "offer_expired"

    # The second accepts: a reservation (free drop: confirmed), the seat moves from offer to reserved.
    r = await cluster.request("POST", f"/waitlist/{e2['id']}/accept", second)
    assert r.status_code == 201, r.text
    res = r.json()
    assert res["state"] == "CONFIRMED" and res["waitlist_entry_id"] == e2["id"]
    again = await cluster.request("POST", f"/waitlist/{e2['id']}/accept", second)
    assert again.status_code == 201 and again.json()["id"] == res["id"]
    s = await slot_of(cluster, slot["id"])
    assert (s["capacity_reserved"], s["capacity_waitlist"], s["available"]) == (1, 0, 0)
    await tap.wait_for("booking.waitlist.accepted", entry__entry_id=e2["id"])

    # The third leaves; leaving twice is fine; leaving someone else's entry is not.
    assert (await cluster.request("DELETE", f"/waitlist/{e3['id']}", first)).status_code == 404
    assert (await cluster.request("DELETE", f"/waitlist/{e3['id']}", third)).status_code == 204
    assert (await cluster.request("DELETE", f"/waitlist/{e3['id']}", third)).status_code == 204
    assert (await entry(cluster, third, e3["id"]))["state"] == "LEFT"
    assert await cluster.invariants() == []


async def test_leaving_with_an_open_offer_passes_the_seat_on(cluster: Cluster) -> None:
    store = await cluster.store(cluster.user())
    drop = await cluster.drop(store, rule={"cancel_until_minutes_before": 0})
    slot = await cluster.slot(store, drop, capacity=1)
    holder, a, b = cluster.user(), cluster.user(), cluster.user()
    held = (await cluster.reserve(holder, slot["id"])).json()
    ea = (await cluster.request("POST", f"/slots/{slot['id']}/waitlist", a)).json()
    eb = (await cluster.request("POST", f"/slots/{slot['id']}/waitlist", b)).json()
    await cluster.request("POST", f"/reservations/{held['id']}/cancel", holder)
    assert (await entry(cluster, a, ea["id"]))["state"] == "OFFERED"
    assert (await cluster.request("DELETE", f"/waitlist/{ea['id']}", a)).status_code == 204
    assert (await entry(cluster, b, eb["id"]))["state"] == "OFFERED"
    assert await cluster.invariants() == []


async def test_waitlist_refusals(cluster: Cluster) -> None:
    store = await cluster.store(cluster.user())
    drop = await cluster.drop(store)
    slot = await cluster.slot(store, drop, capacity=1)
    r = await cluster.request("POST", f"/slots/{slot['id']}/waitlist", cluster.user())
    assert r.status_code == 409 and slug(r) == "seats-available"
    holder = cluster.user()
    await cluster.reserve(holder, slot["id"])
    r = await cluster.request("POST", f"/slots/{slot['id']}/waitlist", holder)
    assert r.status_code == 409 and slug(r) == "already-reserved"
    closed = await cluster.drop(store, rule={"waitlist_enabled": False})
    slot2 = await cluster.slot(store, closed, capacity=1)
    await cluster.reserve(cluster.user(), slot2["id"])
    r = await cluster.request("POST", f"/slots/{slot2['id']}/waitlist", cluster.user())
    assert r.status_code == 409 and slug(r) == "waitlist-closed"


async def test_growing_capacity_serves_the_waitlist_first(cluster: Cluster) -> None:
    owner = cluster.user()
    store = await cluster.store(owner)
    drop = await cluster.drop(store)
    slot = await cluster.slot(store, drop, capacity=1)
    await cluster.reserve(cluster.user(), slot["id"])
    waiting = cluster.user()
    e = (await cluster.request("POST", f"/slots/{slot['id']}/waitlist", waiting)).json()
    r = await cluster.request("PATCH", f"/slots/{slot['id']}", owner, json={"capacity_total": 3})
    assert r.status_code == 200 and r.json()["available"] == 1 and r.json()["capacity_waitlist"] == 1
    assert (await entry(cluster, waiting, e["id"]))["state"] == "OFFERED"
    r = await cluster.request("PATCH", f"/slots/{slot['id']}", owner, json={"capacity_total": 1})
    assert r.status_code == 409 and slug(r) == "capacity-below-taken"
    r = await cluster.request("PATCH", f"/slots/{slot['id']}", cluster.user(), json={"capacity_total": 5})
    assert r.status_code == 404
    assert await cluster.invariants() == []


# --- slots admin -----------------------------------------------------------------------------------
async def test_slots_are_made_by_the_store_inside_the_drop_window(cluster: Cluster) -> None:
    owner = cluster.user()
    store = await cluster.store(owner)
    drop = await cluster.drop(store, hours=2)
    start = drop.starts_at
    body = {"start_time": (start - timedelta(minutes=5)).isoformat(),
            "end_time": (start + timedelta(minutes=25)).isoformat(), "capacity_total": 5}
    r = await cluster.request("POST", f"/drops/{drop.drop_id}/slots", owner, json=body)
    assert r.status_code == 422 and slug(r) == "slot-outside-drop"
    r = await cluster.request("POST", f"/drops/{drop.drop_id}/slots", cluster.user(), json={
        **body, "start_time": start.isoformat()})
    assert r.status_code == 404
    r = await cluster.request("POST", f"/drops/{drop.drop_id}/slots", owner, json={**body, "capacity_total": 0})
    assert r.status_code == 422
    r = await cluster.request("POST", f"/drops/{drop.drop_id}/slots/generate", owner,
                              json={"every_minutes": 30, "capacity_total": 10})
    assert r.status_code == 201 and len(r.json()["items"]) == 4
    again = await cluster.request("POST", f"/drops/{drop.drop_id}/slots/generate", owner,
                                  json={"every_minutes": 30, "capacity_total": 10})
    assert again.status_code == 201 and again.json()["items"] == []
    page1 = (await cluster.request("GET", f"/drops/{drop.drop_id}/slots?limit=3")).json()
    assert len(page1["items"]) == 3 and page1["next_cursor"]
    page2 = (await cluster.request("GET", f"/drops/{drop.drop_id}/slots?limit=3&cursor={page1['next_cursor']}")).json()
    assert len(page2["items"]) == 1 and page2["next_cursor"] is None
    assert all(s["available"] == 10 and s["waitlist_length"] == 0 for s in page1["items"] + page2["items"])


async def test_staff_granted_later_may_create_slots(cluster: Cluster) -> None:
    owner, staff = cluster.user(), cluster.user()
    store = await cluster.store(owner)
    drop = await cluster.drop(store)
    assert (await cluster.request("POST", f"/drops/{drop.drop_id}/slots/generate", staff,
                                  json={"every_minutes": 60, "capacity_total": 1})).status_code == 404
    staff_token = dict(staff, token=cluster.signer.token(staff["id"], ttl=600, roles=[
        {"code": "store_staff", "store_id": str(store["id"])}]))
    r = await cluster.request("POST", f"/drops/{drop.drop_id}/slots/generate", staff_token,
                              json={"every_minutes": 60, "capacity_total": 1})
    assert r.status_code == 201


# --- check-in --------------------------------------------------------------------------------------
def tamper(token: str) -> str:
    header, payload, sig = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims["sub"] = uuid.uuid4().hex
    forged = base64.urlsafe_b64encode(json.dumps(claims).encode()).decode().rstrip("=")
    return ".".join([header, forged, sig])


async def test_checkin_redeems_once_for_the_right_store_in_the_window(cluster: Cluster, tap: EventTap) -> None:
    owner = cluster.user()
    store = await cluster.store(owner)
    other_owner = cluster.user()
    await cluster.store(other_owner)
    drop = await cluster.drop(store, price_cents=500)
    # Check-in opens 60 "minutes" (here seconds) before the slot starts.
    soon = await cluster.slot(store, drop, start_in=timedelta(seconds=20))
    later = await cluster.slot(store, drop, start_in=timedelta(hours=2))
    customer = cluster.user()
    pending = (await cluster.reserve(customer, soon["id"])).json()
    assert pending["checkin_token"] is None
    r = await cluster.request("GET", f"/reservations/{pending['id']}/qr.svg", customer)
    assert r.status_code == 409 and slug(r) == "reservation-not-confirmed"

    from dropslot_contracts.events.payments import PaymentSucceeded

    from .test_lifecycle import pay_event

    await pay_event(cluster, PaymentSucceeded, pending, store, status="succeeded")

    async def confirmed() -> dict | None:
        body = (await cluster.request("GET", f"/reservations/{pending['id']}", customer)).json()
        return body if body["state"] == "CONFIRMED" else None

    res = await eventually(confirmed, timeout=20, what="payment confirming the reservation")
    token = res["checkin_token"]
    svg = await cluster.request("GET", f"/reservations/{res['id']}/qr.svg", customer)
    assert svg.status_code == 200 and svg.headers["content-type"].startswith("image/svg+xml") and b"<svg" in svg.content
    png = await cluster.request("GET", f"/reservations/{res['id']}/qr.png", customer)
    assert png.status_code == 200 and png.content[:4] == b"\x89PNG"
    assert (await cluster.request("GET", f"/reservations/{res['id']}/qr.png", cluster.user())).status_code == 404

    key = (await cluster.request("GET", "/checkins/public-key")).json()
    assert key["jwk"]["crv"] == "Ed25519" and key["pem"].startswith("-----BEGIN PUBLIC KEY-----")

    async def checkin(user, tok):
        return await cluster.request("POST", "/checkins", user, json={"token": tok})

    r = await checkin(owner, tamper(token))
    assert r.status_code == 400 and slug(r) == "invalid-token"
    r = await checkin(owner, "not-a-token")
    assert r.status_code == 400 and slug(r) == "invalid-token"
    r = await checkin(other_owner, token)
    assert r.status_code == 403 and slug(r) == "wrong-store"
    r = await checkin(customer, token)
    assert r.status_code == 403 and slug(r) == "wrong-store"
    r = await checkin(owner, token)
    assert r.status_code == 200, r.text
    assert r.json()["reservation_id"] == res["id"] and r.json()["state"] == "CHECKED_IN"
    r = await checkin(owner, token)
    assert r.status_code == 409 and slug(r) == "already-checked-in"
    await tap.wait_for("booking.reservation.checked_in", reservation__reservation_id=res["id"])
    r = await cluster.request("POST", f"/reservations/{res['id']}/cancel", customer)
    assert r.status_code == 409

    # Outside the window: a confirmed reservation two hours ahead.
    free = await cluster.drop(store)
    far = await cluster.slot(store, free, start_in=timedelta(hours=2))
    res2 = (await cluster.reserve(customer, far["id"])).json()
    r = await checkin(owner, res2["checkin_token"])
    assert r.status_code == 409 and slug(r) == "not-checkin-window"
    # Cancelled: refused as not confirmed.
    await cluster.request("POST", f"/reservations/{res2['id']}/cancel", owner)
    r = await checkin(owner, res2["checkin_token"])
    assert r.status_code == 409 and slug(r) == "reservation-not-confirmed"
    assert later["id"]


async def test_concurrent_redeems_check_in_once(cluster: Cluster) -> None:
    owner = cluster.user()
    store = await cluster.store(owner)
    drop = await cluster.drop(store)
    slot = await cluster.slot(store, drop, start_in=timedelta(seconds=20))
    res = (await cluster.reserve(cluster.user(), slot["id"])).json()
    results = await asyncio.gather(*(cluster.request("POST", "/checkins", owner, json={"token": res["checkin_token"]})
                                     for _ in range(8)))
    assert sorted(r.status_code for r in results) == [200] + [409] * 7


async def test_a_slots_availability_is_the_same_by_the_direct_route_and_by_fastapi(
    cluster: Cluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    """GET /slots/{id} is a direct route (one statement on the hot pool); FastAPI's route, which
    serves it while tracing is on, must answer the same, byte for byte: waiting list included,
    unknown and malformed ids too."""
    from dropslot_booking.api.fast import slot_answer
    from dropslot_kit import telemetry

    # Another test of this process may have turned tracing on, which turns direct routes off.
    monkeypatch.setattr(telemetry, "tracing_enabled", lambda: False)

    store = await cluster.store(cluster.user())
    drop = await cluster.drop(store)
    slot = await cluster.slot(store, drop, capacity=1)
    assert (await cluster.reserve(cluster.user(), slot["id"])).status_code == 201
    for _ in range(2):
        assert (await cluster.request("POST", f"/slots/{slot['id']}/waitlist", cluster.user())).status_code == 201
    replica = cluster.replicas[0]
    assert replica.app.direct_route("GET", f"/api/v1/slots/{slot['id']}").handler is slot_answer
    paths = [f"/slots/{slot['id']}", f"/slots/{uuid.uuid4()}", "/slots/not-a-uuid", f"/slots/{slot['id']}x"]
    direct = [await replica.client.get(p) for p in paths]
    saved = dict(replica.app.direct_routes)
    replica.app.direct_routes.clear()  # every request is FastAPI's now
    try:
        by_fastapi = [await replica.client.get(p) for p in paths]
    finally:
        replica.app.direct_routes.update(saved)
    assert [r.status_code for r in direct] == [200, 404, 422, 422]
    for d, f in zip(direct, by_fastapi, strict=True):
        assert (d.status_code, d.headers["content-type"], d.json()) == (f.status_code, f.headers["content-type"], f.json())
    assert direct[0].json()["waitlist_length"] == 2 and direct[0].json()["available"] == 0
    assert direct[1].json()["instance"] == f"/api/v1{paths[1]}"
    # The read widens row-level security for itself only: its caller's scope is as before.
    from dropslot_booking.adapters.hotpath import SLOT_AVAILABILITY

    hot = cluster.booking.hot
    assert hot.pool is not None
    async with hot.pool.acquire() as conn, conn.transaction():
        assert (await conn.fetchrow(SLOT_AVAILABILITY, uuid.UUID(slot["id"])))["waitlist_length"] == 2
        assert await conn.fetchval("SELECT current_setting('dropslot.scope', true)") in ("", None)
        assert await conn.fetchval("SELECT count(*) FROM booking.waitlist") == 0  # RLS: this caller sees none
