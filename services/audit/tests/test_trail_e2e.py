"""End to end through the gateway: a whole flow - sign-up, store, product, drop, slot,
reservation, sandbox payment, check-in - leaves a complete trail in time order, each step with
the actor, address and user agent of the request that caused it (steps the payment provider
causes name nobody). Public API only (API.md); the platform admin is made with the real command
line, as `make admin` does."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from dropslot_kit.testing import create_store, env_for, eventually, sign_up, unique_email

pytestmark = pytest.mark.e2e

ADMIN_PASSWORD = "audit admin horse battery 4"


def make_admin(settings: Any, email: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "dropslot_identity.admin", "--email", email,
                           "--password", ADMIN_PASSWORD], env={**os.environ, **env_for(settings)},
                          capture_output=True, text=True, timeout=60)


async def trail(http: httpx.AsyncClient, headers: dict[str, str], **params: Any) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    cursor = None
    while True:
        query = {**{k: str(v) for k, v in params.items()}, "limit": "200", **({"cursor": cursor} if cursor else {})}
        r = await http.get("/audit-logs", params=query, headers=headers)
        assert r.status_code == 200, r.text
        items += r.json()["items"]
        cursor = r.json()["next_cursor"]
        if not cursor:
            return items


async def test_a_whole_flow_leaves_a_complete_ordered_trail_with_actor_ip_and_user_agent(system):
    tag = uuid.uuid4().hex[:8]
    owner_ua, customer_ua = f"AuditE2E-Owner/1.0 ({tag})", f"AuditE2E-Customer/2.0 ({tag})"
    as_owner = httpx.AsyncClient(base_url=system.api, timeout=30, headers={"User-Agent": owner_ua})
    # The customer also claims another address: the gateway trusts no proxy here, so the address
    # it saw stays (uvicorn's own proxy-header handling, which believes 127.0.0.1, is off there).
    as_customer = httpx.AsyncClient(base_url=system.api, timeout=30,
                                    headers={"User-Agent": customer_ua, "X-Forwarded-For": "203.0.113.66"})
    async with as_owner, as_customer:
        # --- the flow, as its people do it -------------------------------------------------------
        owner = await sign_up(as_owner)
        store = await create_store(as_owner, owner)
        oh = owner["headers"]
        r = await as_owner.post(f"/stores/{store['id']}/products", headers=oh, json={
            "name": "Audited sneaker", "sku": f"AUD-{tag}", "description": "traced", "images": [],
            "price_cents": 2500, "currency": "EUR", "is_active": True})
        assert r.status_code == 201, r.text
        product = r.json()
        now = datetime.now(UTC)
        r = await as_owner.post(f"/stores/{store['id']}/drops", headers=oh, json={
            "product_id": product["id"], "name": "Audited launch", "starts_at": now.isoformat(),
            "ends_at": (now + timedelta(hours=8)).isoformat(), "reservation_rule": {}})
        assert r.status_code == 201, r.text
        drop = r.json()
        r = await as_owner.post(f"/drops/{drop['id']}/publish", headers=oh)
        assert r.status_code == 200, r.text
        start = now + timedelta(minutes=10)  # inside the check-in window

        async def slot_created() -> dict[str, Any] | None:
            resp = await as_owner.post(f"/drops/{drop['id']}/slots", headers=oh, json={
                "start_time": start.isoformat(), "end_time": (start + timedelta(minutes=30)).isoformat(),
                "capacity_total": 3})
            if resp.status_code == 404:  # booking has not heard of the drop yet
                return None
            assert resp.status_code == 201, resp.text
            return dict(resp.json())

        slot = await eventually(slot_created, timeout=30, what="the slot")

        customer = await sign_up(as_customer)
        ch = customer["headers"]

        async def reserved() -> dict[str, Any] | None:
            resp = await as_customer.post("/reservations", json={"slot_id": slot["id"]},
                                          headers={**ch, "Idempotency-Key": uuid.uuid4().hex})
            if resp.status_code == 409 and resp.json()["type"].endswith("/drop-not-live"):
                return None  # booking's copy of the drop is not LIVE yet
            assert resp.status_code == 201, resp.text
            return dict(resp.json())

        reservation = await eventually(reserved, timeout=30, what="the reservation")
        rid = reservation["id"]

        async def payment() -> dict[str, Any] | None:
            resp = await as_customer.get("/payments", params={"reservation_id": rid}, headers=ch)
            items = resp.json().get("items", []) if resp.status_code == 200 else []
            return items[0] if items else None

        pay = await eventually(payment, timeout=30, what="the payment intent")
        r = await as_customer.post(f"/payments/{pay['id']}/sandbox/confirm", headers=ch,
                                   json={"card_number": "4242424242424242"})
        assert r.status_code in (200, 202), r.text

        async def confirmed() -> dict[str, Any] | None:
            body = (await as_customer.get(f"/reservations/{rid}", headers=ch)).json()
            return body if body["state"] == "CONFIRMED" else None

        res = await eventually(confirmed, timeout=45, what="the paid reservation to be confirmed")
        r = await as_owner.post("/checkins", headers=oh, json={"token": res["checkin_token"]})
        assert r.status_code == 200, r.text

        # --- the trail, as a platform admin reads it ----------------------------------------------
        admin_email = unique_email("auditadmin")
        done = await asyncio.to_thread(make_admin, system.settings, admin_email)
        assert done.returncode == 0, done.stderr
        r = await as_owner.post("/auth/login", json={"email": admin_email, "password": ADMIN_PASSWORD})
        assert r.status_code == 200, r.text
        ah = {"Authorization": f"Bearer {r.json()['access_token']}"}
        ids = {"owner": owner["id"], "customer": customer["id"], "store": store["id"], "product": product["id"],
               "drop": drop["id"], "slot": slot["id"], "reservation": rid, "payment": pay["id"]}
        # (step, action, entity id or None: any, who acted: "owner" | "customer" | None: not a person,
        #  the status the entity went to or None: any)
        expected = [
            ("owner signs up", "identity.user.registered", ids["owner"], "owner", None),
            ("owner signs in", "identity.session.created", None, "owner", None),  # entity: the new session
            ("store", "catalog.store.created", ids["store"], "owner", None),
            ("product", "catalog.product.created", ids["product"], "owner", None),
            ("drop", "catalog.drop.created", ids["drop"], "owner", None),
            ("publish", "catalog.drop.published", ids["drop"], "owner", None),
            ("slot", "booking.slot.created", ids["slot"], "owner", None),
            ("customer signs up", "identity.user.registered", ids["customer"], "customer", None),
            ("customer signs in", "identity.session.created", None, "customer", None),
            ("reserve", "booking.reservation.created", rid, "customer", None),
            # payments' worker creates the intent later, in the name of the reserve that asked for it
            ("intent", "payments.payment.created", ids["payment"], "customer", None),
            # the customer's card confirm: the payment is processing
            ("pay", "payments.payment.status_changed", ids["payment"], "customer", "processing"),
            # the provider's signed callback, not a person, authorizes the payment
            ("authorized", "payments.payment.authorized", ids["payment"], None, None),
            ("confirmed", "booking.reservation.confirmed", rid, None, None),
            ("captured", "payments.payment.succeeded", ids["payment"], None, None),
            ("check-in", "booking.reservation.checked_in", rid, "owner", None),
        ]

        missing: list[str] = []

        async def complete() -> list[dict[str, Any]] | None:
            rows: dict[str, dict[str, Any]] = {}
            for params in ({"actor_user_id": ids["owner"]}, {"actor_user_id": ids["customer"]},
                           {"store_id": ids["store"]}):
                for row in await trail(as_owner, ah, **params):
                    rows[row["id"]] = row
            ordered = sorted(rows.values(), key=lambda x: (datetime.fromisoformat(x["created_at"]), x["id"]))
            missing[:] = [step for step, *want in expected if not [x for x in ordered if is_step(x, *want)]]
            return None if missing else ordered

        def is_step(row: dict[str, Any], action: str, entity_id: str | None, who: str | None,
                    status: str | None) -> bool:
            return row["action"] == action and (
                row["entity_id"] == entity_id if entity_id else row["actor_user_id"] == ids.get(str(who))
            ) and (status is None or (row["after"] or {}).get("status") == status)

        try:
            # Polled gently: the gateway rate-limits a user to 600 requests a minute.
            rows = await eventually(complete, timeout=60, interval=1.0, what="every step of the flow in the trail")
        except AssertionError:
            raise AssertionError(f"trail incomplete, missing: {missing}") from None

        positions = []
        for step, action, entity_id, who, status in expected:
            matches = [i for i, x in enumerate(rows) if is_step(x, action, entity_id, who, status)]
            assert len(matches) == 1, f"{step}: {len(matches)} rows (one event, one row)"
            row = rows[matches[0]]
            positions.append(matches[0])
            if who is not None:
                ua = owner_ua if who == "owner" else customer_ua
                assert row["actor_user_id"] == ids[who], (step, row)
                assert row["ua"] == ua, (step, row)
                assert row["ip"] == "127.0.0.1", (step, row)  # the test client, as the gateway saw it
            else:
                assert (row["actor_user_id"], row["ip"], row["ua"]) == (None, None, None), (step, row)
            if action.startswith(("catalog.", "booking.", "payments.")):
                assert row["store_id"] == ids["store"], (step, row)
        # In the order things happened. The capture runs after the confirmation, concurrently with
        # the check-in the test makes as soon as it sees CONFIRMED: only its place after the
        # confirmation is fixed. The customer pays once they see the intent, and the provider
        # authorizes what they paid: "pay" lies between "intent" and "authorized".
        steps = [e[0] for e in expected]
        at = dict(zip(steps, positions, strict=True))
        sequence = [at[s] for s in steps if s != "captured"]
        assert sequence == sorted(sequence), sorted(at, key=lambda s: at[s])
        assert at["confirmed"] < at["captured"]
        # A change carries the before/after snapshots its producer put in the event.
        published = rows[at["publish"]]
        assert published["before"]["status"] == "DRAFT" and published["after"]["status"] == "LIVE", published
        # No secret is copied into the trail: the check-in token and the client secret are redacted.
        confirmed_row = rows[at["confirmed"]]
        assert confirmed_row["data"]["reservation"].get("checkin_token") in (None, "[redacted]")
        assert res["checkin_token"] not in str(rows)

        # --- who may read it ----------------------------------------------------------------------
        owner_view = await trail(as_owner, oh, store_id=ids["store"])
        assert {x["id"] for x in owner_view} >= {x["id"] for x in rows if x["store_id"] == ids["store"]}
        assert not [x for x in owner_view if x["action"].startswith("identity.user.")]  # sign-ups: admin only
        assert all(x["store_id"] == ids["store"] for x in await trail(as_owner, oh))
        r = await as_customer.get("/audit-logs", headers=ch)
        assert r.status_code == 403 and r.headers["content-type"] == "application/problem+json"
        r = await as_owner.get("/audit-logs", params={"entity": "reservation", "entity_id": rid}, headers=oh)
        assert [x["action"] for x in r.json()["items"]][:2] == ["booking.reservation.created",
                                                              "booking.reservation.confirmed"]
