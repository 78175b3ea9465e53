"""Public-API steps the end-to-end tests share (everything through the gateway)."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from dropslot_kit.settings import KitSettings
from dropslot_kit.testing import create_store, eventually, sign_up
from dropslot_payments.config import DEV_SANDBOX_SECRET
from dropslot_payments.domain import signature
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

SUCCESS, DECLINED, THREE_DS = "4242424242424242", "4000000000000002", "4000002500003155"
SLOW, SILENT = "4000000000000259", "4000000000000341"
WEBHOOK = "/payments/providers/sandbox/webhook"


async def paid_slot(http: httpx.AsyncClient, *, price_cents: int = 2500, currency: str = "EUR", capacity: int = 1,
                    rule: dict[str, Any] | None = None) -> dict[str, Any]:
    """A store (with its owner), a product with a price, a LIVE drop and one slot."""
    owner = await sign_up(http)
    store = await create_store(http, owner)
    h = owner["headers"]
    r = await http.post(f"/stores/{store['id']}/products", headers=h, json={
        "name": "Sneaker", "sku": f"SKU-{uuid.uuid4().hex[:8]}", "description": "A shoe", "images": [],
        "price_cents": price_cents, "currency": currency, "is_active": True})
    assert r.status_code == 201, r.text
    product = r.json()
    now = datetime.now(UTC)
    r = await http.post(f"/stores/{store['id']}/drops", headers=h, json={
        "product_id": product["id"], "name": "Launch", "starts_at": (now + timedelta(hours=1)).isoformat(),
        "ends_at": (now + timedelta(days=2)).isoformat(), "reservation_rule": rule or {}})
    assert r.status_code == 201, r.text
    drop = r.json()
    r = await http.post(f"/drops/{drop['id']}/publish", headers=h)
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "LIVE", r.json()
    start = now + timedelta(hours=3)

    async def slot_created() -> dict[str, Any] | None:
        resp = await http.post(f"/drops/{drop['id']}/slots", headers=h, json={
            "start_time": start.isoformat(), "end_time": (start + timedelta(minutes=30)).isoformat(),
            "capacity_total": capacity})
        if resp.status_code == 404:  # booking has not heard of the drop yet
            return None
        assert resp.status_code == 201, resp.text
        return dict(resp.json())

    slot = await eventually(slot_created, timeout=30, what="the slot")
    return {"owner": owner, "store": store, "product": product, "drop": drop, "slot": slot}


async def reserve(http: httpx.AsyncClient, customer: dict[str, Any], slot_id: str) -> httpx.Response:
    return await http.post("/reservations", json={"slot_id": slot_id},
                           headers={**customer["headers"], "Idempotency-Key": uuid.uuid4().hex})


async def reservation(http: httpx.AsyncClient, customer: dict[str, Any], rid: str) -> dict[str, Any]:
    r = await http.get(f"/reservations/{rid}", headers=customer["headers"])
    assert r.status_code == 200, r.text
    return dict(r.json())


async def wait_state(http: httpx.AsyncClient, customer: dict[str, Any], rid: str, state: str,
                     within: float = 30) -> dict[str, Any]:
    async def reached() -> dict[str, Any] | None:
        body = await reservation(http, customer, rid)
        return body if body["state"] == state else None

    return await eventually(reached, timeout=within, what=f"reservation {state}")


async def payment_of(http: httpx.AsyncClient, customer: dict[str, Any], rid: str,
                     *statuses: str, within: float = 30) -> dict[str, Any]:
    async def found() -> dict[str, Any] | None:
        r = await http.get("/payments", params={"reservation_id": rid}, headers=customer["headers"])
        assert r.status_code == 200, r.text
        items = r.json()["items"]
        if items and (not statuses or items[0]["status"] in statuses):
            return dict(items[0])
        return None

    return await eventually(found, timeout=within, what=f"the payment ({statuses or 'any status'})")


async def confirm_card(http: httpx.AsyncClient, customer: dict[str, Any], payment_id: str,
                       card: str) -> httpx.Response:
    return await http.post(f"/payments/{payment_id}/sandbox/confirm", json={"card_number": card},
                           headers=customer["headers"])


async def available(http: httpx.AsyncClient, drop_id: str, slot_id: str) -> int:
    r = await http.get(f"/drops/{drop_id}/slots")
    assert r.status_code == 200, r.text
    body = r.json()
    slots = body["items"] if isinstance(body, dict) else body
    return int(next(s for s in slots if s["id"] == slot_id)["available"])


def signed(payload: dict[str, Any], secret: str = DEV_SANDBOX_SECRET) -> tuple[bytes, dict[str, str]]:
    body = json.dumps(payload, separators=(",", ":")).encode()
    return body, {"content-type": "application/json", "Sandbox-Signature": signature.sign_header(secret, body)}


def intent_id_of(payment: dict[str, Any]) -> str:
    return str(payment["client_secret"]).split("_secret_")[0]


class PaymentsDb:
    """Read-only looks into the payments schema, for assertions the API cannot show
    (how many times something happened)."""

    def __init__(self, settings: KitSettings):
        self.engine: AsyncEngine = create_async_engine(settings.model_copy(update={"service": "payments"}).service_dsn())

    async def rows(self, sql: str, **params: Any) -> list[Any]:
        async with self.engine.connect() as conn:
            await conn.execute(text("SELECT set_config('dropslot.tenant', '*', false)"))
            return list((await conn.execute(text(sql), params)).all())

    async def transitions(self, payment_id: str) -> list[tuple[str | None, str, str]]:
        rows = await self.rows("SELECT from_status, to_status, cause FROM payment_transitions WHERE payment_id = :p"
                               " ORDER BY id", p=uuid.UUID(payment_id))
        return [(r.from_status, r.to_status, r.cause) for r in rows]

    async def sandbox_events(self, intent_id: str) -> list[dict[str, Any]]:
        rows = await self.rows("SELECT payload FROM sandbox_events WHERE intent_id = :i ORDER BY created_at", i=intent_id)
        return [r.payload if isinstance(r.payload, dict) else json.loads(r.payload) for r in rows]

    async def quiet(self, payment: dict[str, Any], within: float = 30) -> None:
        """Every callback about the intent delivered and every provider call made."""
        intent = intent_id_of(payment)

        async def idle() -> bool:
            pending = await self.rows(
                "SELECT count(*) AS n FROM sandbox_callbacks c JOIN sandbox_events e ON e.id = c.event_id"
                " WHERE e.intent_id = :i AND c.delivered_at IS NULL AND NOT c.lost", i=intent)
            ops = await self.rows("SELECT count(*) AS n FROM payment_ops WHERE payment_id = :p AND status = 'pending'",
                                  p=uuid.UUID(payment["id"]))
            return pending[0].n == 0 and ops[0].n == 0

        await eventually(idle, timeout=within, what="callbacks and provider calls to settle")

    async def dispose(self) -> None:
        await self.engine.dispose()
