"""End to end through the gateway: identity signs users up, catalog creates and publishes the
drop, booking (2 replicas) sells it, payments (sandbox) takes the money. Public API only, except
the invariant query, which reads booking's schema directly."""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from dropslot_booking.adapters.invariants import violations
from dropslot_kit.auth import PROOF_HEADER, body_proof, gateway_proof
from dropslot_kit.db import Database
from dropslot_kit.testing import create_store, eventually, sign_up

# Signing 500 users up through argon2 takes a while on 2 shared cores.
pytestmark = [pytest.mark.e2e, pytest.mark.timeout(1200)]


def slug(r: httpx.Response) -> str:
    return str(r.json().get("type", "")).rsplit("/", 1)[-1]


async def gather_limited(n: int, coros: list[Any]) -> list[Any]:
    sem = asyncio.Semaphore(n)

    async def run(c: Any) -> Any:
        async with sem:
            return await c

    return await asyncio.gather(*(run(c) for c in coros))


async def sign_up_patiently(http: httpx.AsyncClient) -> dict[str, Any]:
    """sign_up, retried while identity (argon2, two hashes at a time) is saturated."""
    for attempt in range(6):
        try:
            return await sign_up(http)
        except (AssertionError, httpx.TimeoutException):
            if attempt == 5:
                raise
            await asyncio.sleep(1 + attempt)
    raise AssertionError("unreachable")


@pytest.fixture(scope="session")
async def crowd(system: Any) -> list[dict[str, Any]]:
    """500 signed-up users (argon2 makes this the slow part: about a minute on 2 cores)."""
    async with httpx.AsyncClient(base_url=system.api, timeout=60) as http:
        return list(await gather_limited(6, [sign_up_patiently(http) for _ in range(500)]))


@pytest.fixture(scope="session")
async def booking_db(system: Any) -> Any:
    db = Database(system.settings.model_copy(update={"service": "booking"}))
    yield db
    await db.dispose()


async def invariants(db: Database) -> list[str]:
    async with db.uow() as uow:
        return await violations(uow.conn)


async def live_drop(http: httpx.AsyncClient, owner: dict[str, Any], *, price_cents: int = 0,
                    rule: dict[str, Any] | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    store = await create_store(http, owner)
    h = owner["headers"]
    r = await http.post(f"/stores/{store['id']}/products", headers=h, json={
        "name": "Sneaker", "sku": f"sku-{uuid.uuid4().hex[:8]}", "price_cents": price_cents, "currency": "EUR",
    })
    assert r.status_code == 201, r.text
    now = datetime.now(UTC)
    r = await http.post(f"/stores/{store['id']}/drops", headers=h, json={
        "product_id": r.json()["id"], "name": "Launch", "starts_at": now.isoformat(),
        "ends_at": (now + timedelta(hours=8)).isoformat(), "reservation_rule": rule or {},
    })
    assert r.status_code == 201, r.text
    drop = r.json()
    r = await http.post(f"/drops/{drop['id']}/publish", headers=h)
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "LIVE"
    return store, drop


async def make_slot(http: httpx.AsyncClient, owner: dict[str, Any], drop: dict[str, Any], capacity: int,
                    start_in: timedelta = timedelta(hours=1)) -> dict[str, Any]:
    start = datetime.now(UTC) + start_in
    # Right after publishing, booking may not have catalog's event yet: it waits a few seconds for it.
    r = await http.post(f"/drops/{drop['id']}/slots", headers=owner["headers"], json={
        "start_time": start.isoformat(), "end_time": (start + timedelta(minutes=30)).isoformat(),
        "capacity_total": capacity,
    })
    assert r.status_code == 201, r.text
    slot = r.json()

    async def sellable() -> bool:
        return bool((await http.get(f"/slots/{slot['id']}")).json()["sellable"])

    await eventually(sellable, timeout=30, what="slot of a LIVE drop is sellable")
    return dict(slot)


async def test_500_users_race_for_50_seats(http: httpx.AsyncClient, crowd: list[dict[str, Any]],
                                           booking_db: Database) -> None:
    owner = crowd[0]
    _, drop = await live_drop(http, owner)
    slot = await make_slot(http, owner, drop, capacity=50)
    results = await asyncio.gather(*(
        http.post("/reservations", headers={**u["headers"], "Idempotency-Key": uuid.uuid4().hex},
                  json={"slot_id": slot["id"]})
        for u in crowd
    ))
    codes = [r.status_code for r in results]
    odd = {r.text[:300] for r in results if r.status_code not in (201, 409)}
    assert codes.count(201) == 50 and codes.count(409) == 450, (sorted(set(codes)), odd)
    assert {slug(r) for r in results if r.status_code == 409} == {"sold-out"}
    assert all(r.json()["waitlist_open"] is True for r in results if r.status_code == 409)
    accepted = {r.json()["id"] for r in results if r.status_code == 201}
    assert len(accepted) == 50
    s = (await http.get(f"/slots/{slot['id']}")).json()
    assert s["available"] == 0 and s["capacity_reserved"] == 50
    listing = (await http.get(f"/stores/{drop['store_id']}/reservations?slot_id={slot['id']}&limit=200",
                              headers=owner["headers"])).json()
    assert {i["id"] for i in listing["items"]} == accepted
    assert await invariants(booking_db) == []


async def test_one_user_firing_20_requests_gets_max_per_user(http: httpx.AsyncClient, crowd: list[dict[str, Any]],
                                                             booking_db: Database) -> None:
    owner, user = crowd[1], crowd[2]
    _, drop = await live_drop(http, owner, rule={"max_per_user": 3})
    slots = [await make_slot(http, owner, drop, capacity=10, start_in=timedelta(hours=1, minutes=i))
             for i in range(5)]
    results = await asyncio.gather(*(
        http.post("/reservations", headers=user["headers"], json={"slot_id": slots[i % 5]["id"]})
        for i in range(20)
    ))
    codes = [r.status_code for r in results]
    assert codes.count(201) == 3, codes
    assert {slug(r) for r in results if r.status_code != 201} == {"limit-reached"}
    mine = (await http.get("/reservations", headers=user["headers"])).json()["items"]
    assert len([m for m in mine if m["drop_id"] == drop["id"]]) == 3
    assert await invariants(booking_db) == []


async def test_retries_with_one_idempotency_key_make_one_reservation(
    http: httpx.AsyncClient, crowd: list[dict[str, Any]], booking_db: Database
) -> None:
    owner, user = crowd[3], crowd[4]
    _, drop = await live_drop(http, owner)
    slot = await make_slot(http, owner, drop, capacity=5)
    key = uuid.uuid4().hex
    results = await asyncio.gather(*(
        http.post("/reservations", headers={**user["headers"], "Idempotency-Key": key}, json={"slot_id": slot["id"]})
        for _ in range(10)
    ))
    assert {r.status_code for r in results} == {201}
    assert len({r.json()["id"] for r in results}) == 1
    r = await http.post("/reservations", headers={**user["headers"], "Idempotency-Key": key},
                        json={"slot_id": slot["id"], "customer_note": "different"})
    assert r.status_code == 422 and slug(r) == "idempotency-key-reused"
    assert (await http.get(f"/slots/{slot['id']}")).json()["capacity_reserved"] == 1
    assert await invariants(booking_db) == []


async def test_paid_reservation_confirmed_by_the_sandbox_and_checked_in(
    http: httpx.AsyncClient, crowd: list[dict[str, Any]], booking_db: Database
) -> None:
    owner, user = crowd[5], crowd[6]
    store, drop = await live_drop(http, owner, price_cents=2500)
    slot = await make_slot(http, owner, drop, capacity=2, start_in=timedelta(minutes=10))
    r = await http.post("/reservations", headers=user["headers"], json={"slot_id": slot["id"]})
    assert r.status_code == 201 and r.json()["state"] == "PENDING", r.text
    rid = r.json()["id"]

    async def payment() -> dict[str, Any] | None:
        p = await http.get(f"/payments?reservation_id={rid}", headers=user["headers"])
        items = p.json().get("items", []) if p.status_code == 200 else []
        return items[0] if items else None

    pay = await eventually(payment, timeout=30, what="payments creating the intent")
    r = await http.post(f"/payments/{pay['id']}/sandbox/confirm", headers=user["headers"],
                        json={"card_number": "4242424242424242"})
    assert r.status_code in (200, 202), r.text

    async def confirmed() -> dict[str, Any] | None:
        body = (await http.get(f"/reservations/{rid}", headers=user["headers"])).json()
        return body if body["state"] == "CONFIRMED" else None

    res = await eventually(confirmed, timeout=30, what="payment success confirming the reservation")
    assert res["checkin_token"] and res["payment"]["id"] == pay["id"]
    qr = await http.get(f"/reservations/{rid}/qr.svg", headers=user["headers"])
    assert qr.status_code == 200 and b"<svg" in qr.content
    r = await http.post("/checkins", headers=user["headers"], json={"token": res["checkin_token"]})
    assert r.status_code == 403 and slug(r) == "wrong-store"
    r = await http.post("/checkins", headers=owner["headers"], json={"token": res["checkin_token"]})
    assert r.status_code == 200 and r.json() == {**r.json(), "reservation_id": rid, "state": "CHECKED_IN"}
    r = await http.post("/checkins", headers=owner["headers"], json={"token": res["checkin_token"]})
    assert r.status_code == 409 and slug(r) == "already-checked-in"
    assert store["id"] == drop["store_id"]
    assert await invariants(booking_db) == []


async def test_unpaid_hold_expires_and_the_seat_returns(
    http: httpx.AsyncClient, crowd: list[dict[str, Any]], booking_db: Database
) -> None:
    """hold_minutes=1 is the shortest hold a rule allows: this test waits about a minute."""
    owner, user, next_user = crowd[7], crowd[8], crowd[9]
    _, drop = await live_drop(http, owner, price_cents=1000, rule={"hold_minutes": 1})
    slot = await make_slot(http, owner, drop, capacity=1)
    r = await http.post("/reservations", headers=user["headers"], json={"slot_id": slot["id"]})
    assert r.status_code == 201 and r.json()["state"] == "PENDING"
    rid = r.json()["id"]
    r = await http.post("/reservations", headers=next_user["headers"], json={"slot_id": slot["id"]})
    assert r.status_code == 409 and slug(r) == "sold-out"

    async def expired() -> bool:
        return (await http.get(f"/reservations/{rid}", headers=user["headers"])).json()["state"] == "EXPIRED"

    await eventually(expired, timeout=150, interval=1.0, what="the one-minute hold to expire")
    assert (await http.get(f"/slots/{slot['id']}")).json()["available"] == 1
    r = await http.post("/reservations", headers=next_user["headers"], json={"slot_id": slot["id"]})
    assert r.status_code == 201
    assert await invariants(booking_db) == []


def metric(text: str, name: str) -> float:
    """A counter's value in a Prometheus text page (0 if it was never incremented)."""
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return 0.0


async def test_the_gateway_repeats_a_sold_out_refusal_but_not_over_a_stored_answer(
    http: httpx.AsyncClient, crowd: list[dict[str, Any]], booking_db: Database, system: Any
) -> None:
    """Booking marks its sold-out answers as repeatable; the gateway then gives them itself (kit
    refusals), byte for byte, except to a request whose Idempotency-Key has a stored answer:
    a retry of a reservation that succeeded still gets its 201, a key reused for another
    request its 422. A cancellation through the gateway shows the freed seat at once."""
    owner, buyer, other, late = crowd[10], crowd[11], crowd[12], crowd[13]
    fans = crowd[14:44]
    _, drop = await live_drop(http, owner)
    # Starting in three hours: the customer may cancel until an hour before (the rule's default).
    slot = await make_slot(http, owner, drop, capacity=1, start_in=timedelta(hours=3))
    second = await make_slot(http, owner, drop, capacity=1, start_in=timedelta(hours=4))
    key = uuid.uuid4().hex
    first = await http.post("/reservations", headers={**buyer["headers"], "Idempotency-Key": key},
                            json={"slot_id": slot["id"]})
    assert first.status_code == 201, first.text
    r = await http.post("/reservations", headers=other["headers"], json={"slot_id": second["id"]})
    assert r.status_code == 201, r.text

    async with httpx.AsyncClient(base_url=system.url, timeout=20) as root:
        async def repeated() -> float:
            return metric((await root.get("/metrics")).text, "gateway_refusals_repeated_total")

        refusal = None
        start = await repeated()
        for _ in range(50):  # rounds until the gateway has repeated refusals (for 0.1 s after each)
            # One refusal first, which the gateway learns if it was not repeating one already.
            r = await http.post("/reservations", headers=late["headers"], json={"slot_id": slot["id"]})
            assert r.status_code == 409, r.text
            answers = await asyncio.gather(
                http.post("/reservations", headers={**buyer["headers"], "Idempotency-Key": key},
                          json={"slot_id": slot["id"]}),  # the retry of a success
                http.post("/reservations", headers={**buyer["headers"], "Idempotency-Key": key},
                          json={"slot_id": second["id"]}),  # the same key for another request
                *(http.post("/reservations", headers={**f["headers"], "Idempotency-Key": uuid.uuid4().hex},
                            json={"slot_id": slot["id"]}) for f in fans),
                *(http.post("/reservations", headers=f["headers"], json={"slot_id": slot["id"]}) for f in fans[:5]),
            )
            retry, reused, refused = answers[0], answers[1], answers[2:]
            assert retry.status_code == 201 and retry.content == first.content
            assert reused.status_code == 422 and slug(reused) == "idempotency-key-reused", reused.text
            assert {r.status_code for r in refused} == {409}
            assert len({r.content for r in refused}) == 1  # the same bytes, from booking or the gateway
            assert all("x-dropslot-repeatable-refusal" not in r.headers for r in answers)
            assert len({r.headers["x-request-id"] for r in refused}) == len(refused)
            refusal = refused[0]
            if await repeated() > start:
                break
        else:
            raise AssertionError("the gateway never repeated a sold-out refusal")
    assert refusal is not None and slug(refusal) == "sold-out" and refusal.json()["slot_id"] == slot["id"]
    assert refusal.headers["content-type"] == "application/problem+json"
    # What the gateway asks booking about the buyer's key: it has a stored answer.
    proof_key = json.loads(system.system.env["DROPSLOT_GATEWAY_PROOF_KEYS"])[0]
    body = json.dumps({"keys": [[str(uuid.uuid4()), key], [buyer["id"], key]]})
    async with httpx.AsyncClient(base_url=system.service_url("booking-2"), timeout=20) as booking:
        r = await booking.post("/internal/v1/idempotency-lookups", content=body,
                               headers={PROOF_HEADER: body_proof(proof_key, body)})
    assert r.status_code == 200 and r.json() == {"found": [1]}, r.text

    # The buyer cancels through the gateway: the next request is not refused from memory.
    r = await http.post(f"/reservations/{first.json()['id']}/cancel", headers=buyer["headers"])
    assert r.status_code == 200, r.text

    async def seat_taken() -> bool:
        r = await http.post("/reservations", headers=late["headers"], json={"slot_id": slot["id"]})
        return r.status_code == 201

    # Another replica may still hold its own 0.25 s read of the slot.
    await eventually(seat_taken, timeout=5, interval=0.1, what="the freed seat to be reserved")
    assert (await http.get(f"/slots/{slot['id']}")).json()["capacity_reserved"] == 1
    assert await invariants(booking_db) == []


async def test_only_the_gateway_may_look_up_idempotency_keys(system: Any) -> None:
    """Booking's lookup behind the gateway's repeated refusals answers only a body the gateway
    vouched for, and is no public path."""
    body = json.dumps({"keys": [[str(uuid.uuid4()), "never-used"]]})
    key = json.loads(system.system.env["DROPSLOT_GATEWAY_PROOF_KEYS"])[0]
    path = "/internal/v1/idempotency-lookups"
    async with httpx.AsyncClient(base_url=system.service_url("booking-1"), timeout=20) as booking:
        # No proof, a forged one, another body's, and a token proof of the body's very text.
        for proof in (None, "forged", body_proof(key, body + " "), gateway_proof(key, body)):
            r = await booking.post(path, content=body, headers={"content-type": "application/json",
                                                                **({PROOF_HEADER: proof} if proof else {})})
            assert r.status_code == 403 and slug(r) == "forbidden", r.text
        r = await booking.post(path, content=body, headers={PROOF_HEADER: body_proof(key, body)})
        assert r.status_code == 200 and r.json() == {"found": []}, r.text
        bad = json.dumps({"keys": [["not-a-uuid", "k"]]})
        r = await booking.post(path, content=bad, headers={PROOF_HEADER: body_proof(key, bad)})
        assert r.status_code == 422, r.text
    async with httpx.AsyncClient(base_url=system.url, timeout=20) as root:
        assert (await root.post(path, content=body)).status_code == 404
