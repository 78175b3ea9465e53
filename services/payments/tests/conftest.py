"""Fixtures for payments' integration tests.

`pay` runs the payments app in this process (uvicorn on a free port) against a database and a
broker namespace of its own, with the real outbox relay, consumers, ops worker, reconciler and
sandbox loops. The sandbox posts its callbacks over HTTP to that server. Booking is played by
the test: it publishes booking envelopes to the real exchange, exactly as booking's outbox
relay would. Access tokens are minted with a key whose JWKS this module serves itself.

The app runs with chaos on: every sandbox callback is sent twice and in random order.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import aio_pika
import httpx
import jwt
import pytest
import uvicorn
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from dropslot_contracts import Actor, Envelope, Event
from dropslot_contracts.events.booking import (
    HoldExpiring,
    RefundRequested,
    ReservationCancelled,
    ReservationConfirmed,
    ReservationCreated,
    ReservationExpired,
    ReservationSnapshot,
)
from dropslot_contracts.events.catalog import StoreCreated
from dropslot_kit.bootstrap import bootstrap
from dropslot_kit.broker import envelopes_in
from dropslot_kit.launcher import free_port
from dropslot_kit.migrate import upgrade
from dropslot_kit.testing import Infra, drop_test_resources, eventually, settings_for
from dropslot_payments.config import Settings
from dropslot_payments.main import create_app
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

ISSUER, AUDIENCE = "dropslot-identity", "dropslot"


class Tokens:
    """An Ed25519 signing key and the JWKS that publishes it, like identity's."""

    def __init__(self) -> None:
        self.key = Ed25519PrivateKey.generate()
        self.kid = uuid.uuid4().hex[:12]
        jwk = json.loads(jwt.algorithms.OKPAlgorithm.to_jwk(self.key.public_key()))
        self.jwks = {"keys": [{**jwk, "kid": self.kid, "alg": "EdDSA", "use": "sig"}]}

    def mint(self, user_id: uuid.UUID, roles: list[dict[str, Any]] | None = None) -> str:
        now = int(time.time())
        claims = {"sub": str(user_id), "iat": now, "exp": now + 900, "iss": ISSUER, "aud": AUDIENCE,
                  "typ": "access", "roles": roles or []}
        return jwt.encode(claims, self.key, algorithm="EdDSA", headers={"kid": self.kid})

    def headers(self, user_id: uuid.UUID) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.mint(user_id)}"}


@dataclass
class Reservation:
    reservation_id: uuid.UUID
    user_id: uuid.UUID
    store_id: uuid.UUID
    tenant_key: str
    amount_cents: int
    currency: str
    snapshot: ReservationSnapshot

    def with_state(self, state: str) -> ReservationSnapshot:
        return self.snapshot.model_copy(update={"state": state})


@dataclass
class Harness:
    settings: Settings
    base_url: str
    client: httpx.AsyncClient
    tokens: Tokens
    channel: Any
    exchange: Any
    engine: Any
    events: list[Envelope] = field(default_factory=list)

    # --- playing booking (and catalog) through the real broker ----------------------------------
    async def publish(self, event: Event, *, store_id: uuid.UUID | None = None, tenant_key: str | None = None,
                      occurred_at: datetime | None = None, actor: Actor | None = None,
                      correlation_id: str | None = None) -> Envelope:
        env = Envelope.wrap(event, producer="booking", store_id=store_id, tenant_key=tenant_key, actor=actor,
                            correlation_id=correlation_id)
        if occurred_at is not None:
            env = env.model_copy(update={"occurred_at": occurred_at})
        await self.exchange.publish(
            aio_pika.Message(env.model_dump_json().encode(), message_id=str(env.id), content_type="application/json",
                             delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
            routing_key=env.routing_key,
        )
        return env

    async def new_store(self) -> tuple[uuid.UUID, uuid.UUID, str]:
        """A store and its owner, announced the way catalog does (memberships follow from it)."""
        store_id, owner = uuid.uuid4(), uuid.uuid4()
        tenant = f"t_{store_id.hex[:12]}"
        await self.publish(StoreCreated(store_id=store_id, tenant_key=tenant, name="Shop", slug=f"s-{store_id.hex[:8]}",
                                        owner_user_id=owner), store_id=store_id, tenant_key=tenant)
        return store_id, owner, tenant

    async def reserve(self, *, amount_cents: int = 2500, currency: str = "EUR",
                      store: tuple[uuid.UUID, uuid.UUID, str] | None = None, user_id: uuid.UUID | None = None,
                      actor: Actor | None = None, correlation_id: str | None = None) -> Reservation:
        """A reservation.created as booking publishes it; `actor` is the customer's request as
        booking saw it (none by default)."""
        store_id, _, tenant = store or await self.new_store()
        now = datetime.now(UTC)
        snap = ReservationSnapshot(
            reservation_id=uuid.uuid4(), slot_id=uuid.uuid4(), drop_id=uuid.uuid4(), store_id=store_id,
            user_id=user_id or uuid.uuid4(), state="PENDING", slot_start=now + timedelta(days=1),
            slot_end=now + timedelta(days=1, hours=1), amount_cents=amount_cents, currency=currency,
            requires_payment=amount_cents > 0, expires_at=now + timedelta(minutes=10), drop_name="Drop",
        )
        r = Reservation(snap.reservation_id, snap.user_id, store_id, tenant, amount_cents, currency, snap)
        await self.publish(ReservationCreated(reservation=snap), store_id=store_id, tenant_key=tenant, actor=actor,
                           correlation_id=correlation_id)
        return r

    async def confirm_reservation(self, r: Reservation) -> None:
        await self.publish(ReservationConfirmed(reservation=r.with_state("CONFIRMED")), store_id=r.store_id,
                           tenant_key=r.tenant_key)

    async def cancel_reservation(self, r: Reservation, *, reason: str, refund: bool) -> None:
        await self.publish(ReservationCancelled(reservation=r.with_state("CANCELLED"), reason=reason, refund=refund),
                           store_id=r.store_id, tenant_key=r.tenant_key)

    async def expire_reservation(self, r: Reservation) -> None:
        await self.publish(ReservationExpired(reservation=r.with_state("EXPIRED")), store_id=r.store_id,
                           tenant_key=r.tenant_key)

    async def final_check(self, r: Reservation) -> None:
        await self.publish(HoldExpiring(reservation=r.snapshot, final_check=True), store_id=r.store_id,
                           tenant_key=r.tenant_key)

    async def request_refund(self, r: Reservation, reason: str = "seat_lost") -> None:
        await self.publish(RefundRequested(reservation_id=r.reservation_id, user_id=r.user_id, reason=reason),
                           store_id=r.store_id, tenant_key=r.tenant_key)

    # --- the customer, through the API ----------------------------------------------------------
    async def payment_of(self, r: Reservation, within: float = 20) -> dict[str, Any]:
        async def visible() -> dict[str, Any] | None:
            resp = await self.client.get("/api/v1/payments", params={"reservation_id": str(r.reservation_id)},
                                         headers=self.tokens.headers(r.user_id))
            assert resp.status_code == 200, resp.text
            items = resp.json()["items"]
            return items[0] if items else None

        return await eventually(visible, timeout=within, what="the payment to appear")

    async def wait_status(self, r: Reservation, *statuses: str, within: float = 25) -> dict[str, Any]:
        async def reached() -> dict[str, Any] | None:
            p = await self.payment_of(r)
            return p if p["status"] in statuses else None

        return await eventually(reached, timeout=within, what=f"payment status in {statuses}")

    async def confirm_card(self, payment: dict[str, Any], r: Reservation, card: str,
                           headers: dict[str, str] | None = None) -> httpx.Response:
        return await self.client.post(f"/api/v1/payments/{payment['id']}/sandbox/confirm",
                                      json={"card_number": card},
                                      headers={**self.tokens.headers(r.user_id), **(headers or {})})

    # --- what payments announced ------------------------------------------------------------------
    def emitted(self, event_type: str, payment_id: Any) -> list[Envelope]:
        return [e for e in self.events if e.type == event_type and e.data.get("payment_id") == str(payment_id)]

    async def wait_event(self, event_type: str, payment_id: Any, within: float = 25) -> Envelope:
        async def seen() -> Envelope | None:
            found = self.emitted(event_type, payment_id)
            return found[0] if found else None

        return await eventually(seen, timeout=within, what=f"{event_type} for {payment_id}")

    # --- direct looks at the tables (assertions only) ---------------------------------------------
    async def query(self, sql: str, **params: Any) -> list[Any]:
        async with self.engine.connect() as conn:
            await conn.execute(text("SELECT set_config('dropslot.tenant', '*', false)"))
            return list((await conn.execute(text(sql), params)).all())

    async def transitions(self, payment_id: Any) -> list[tuple[str | None, str, str]]:
        rows = await self.query("SELECT from_status, to_status, cause FROM payment_transitions"
                                " WHERE payment_id = :p ORDER BY id", p=uuid.UUID(str(payment_id)))
        return [(r.from_status, r.to_status, r.cause) for r in rows]

    async def quiet(self, payment: dict[str, Any], within: float = 20) -> None:
        """Wait until every callback about the payment's intent was delivered and handled."""
        intent = intent_id_of(payment)

        async def idle() -> bool:
            pending = await self.query(
                "SELECT count(*) AS n FROM sandbox_callbacks c JOIN sandbox_events e ON e.id = c.event_id"
                " WHERE e.intent_id = :i AND c.delivered_at IS NULL AND NOT c.lost", i=intent)
            ops = await self.query("SELECT count(*) AS n FROM payment_ops WHERE payment_id = :p AND status = 'pending'",
                                   p=uuid.UUID(str(payment["id"])))
            return pending[0].n == 0 and ops[0].n == 0

        await eventually(idle, timeout=within, what="callbacks and provider calls to settle")

    async def sandbox_intent(self, intent_id: str) -> Any:
        rows = await self.query("SELECT * FROM sandbox_intents WHERE id = :i", i=intent_id)
        return rows[0]


def intent_id_of(payment: dict[str, Any]) -> str:
    """The sandbox's client secret is `<intent id>_secret_<random>`, as Stripe's is."""
    return str(payment["client_secret"]).split("_secret_")[0]


@contextlib.asynccontextmanager
async def running_payments(infra: Infra, port: int | None = None, **overrides: Any) -> AsyncIterator[Harness]:
    """The payments app in this process, on its own database and broker namespace."""
    suffix = uuid.uuid4().hex[:10]
    kit = settings_for(infra, f"dropslot_pay_{suffix}", f"pay{suffix}", service="payments")
    await bootstrap(kit)
    await asyncio.to_thread(upgrade, "payments", kit)

    tokens = Tokens()
    jwks_app = web.Application()

    async def jwks(_: web.Request) -> web.Response:
        return web.json_response(tokens.jwks)

    jwks_app.router.add_get("/jwks.json", jwks)
    jwks_runner = web.AppRunner(jwks_app)
    await jwks_runner.setup()
    jwks_port = free_port()
    await web.TCPSite(jwks_runner, "127.0.0.1", jwks_port).start()

    port = port or free_port()
    base = {k: v for k, v in kit.model_dump().items() if k in Settings.model_fields and k != "service"}
    settings = Settings(**{**base, **dict(
        jwks_url=f"http://127.0.0.1:{jwks_port}/jwks.json",
        public_base_url=f"http://127.0.0.1:{port}",
        log_json=False, log_level="WARNING",
        retry_delays_ms=[200, 500, 1000],
    ), **overrides})
    app = create_app(settings)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on"))
    serving = asyncio.create_task(server.serve())
    while not server.started:
        if serving.done():
            serving.result()
        await asyncio.sleep(0.05)

    connection = await aio_pika.connect_robust(kit.rabbit_url)
    channel = await connection.channel()
    exchange = await channel.get_exchange(f"{kit.broker_namespace}.events")
    probe = await channel.declare_queue(exclusive=True, auto_delete=True)
    await probe.bind(exchange, routing_key="payments.#")
    engine = create_async_engine(kit.service_dsn())
    client = httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=20)
    harness = Harness(settings, f"http://127.0.0.1:{port}", client, tokens, channel, exchange, engine)

    async def collect(message: aio_pika.abc.AbstractIncomingMessage) -> None:
        async with message.process():
            harness.events.extend(envelopes_in(message.body))

    await probe.consume(collect)

    async def ready() -> bool:  # the consumers are attached (queues declared at start-up)
        return (await client.get("/ready")).status_code == 200

    try:
        await eventually(ready, timeout=30, what="payments ready")
        yield harness
    finally:
        await client.aclose()
        with contextlib.suppress(Exception):
            await connection.close()
        server.should_exit = True
        with contextlib.suppress(Exception):
            await asyncio.wait_for(serving, 15)
        await engine.dispose()
        await jwks_runner.cleanup()
        await asyncio.to_thread(drop_test_resources, kit)


@pytest.fixture(scope="module")
async def pay(infra: Infra) -> AsyncIterator[Harness]:
    """Sandbox chaos on: every callback twice, shuffled; short processing and reconciliation."""
    async with running_payments(
        infra,
        payments_sandbox_callback_delay_seconds=0.05,
        payments_sandbox_duplicate_rate=1.0,
        payments_sandbox_shuffle=True,
        payments_sandbox_shuffle_window_seconds=0.3,
        payments_sandbox_processing_seconds=0.2,
        payments_sandbox_slow_processing_seconds=4.0,
        payments_reconcile_stale_seconds=4.0,
        payments_reconcile_interval_seconds=0.5,
    ) as harness:
        yield harness
