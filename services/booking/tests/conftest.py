"""Fixtures for booking's integration tests: two in-process booking replicas on the session's
real database and broker, test access tokens from a local JWKS, and catalog facts published
through the real broker (catalog and identity are other services; their events are contracts).
"""

from __future__ import annotations

import contextlib
import itertools
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from dropslot_booking.adapters.invariants import violations
from dropslot_booking.adapters.sql import one
from dropslot_booking.config import Settings
from dropslot_booking.main import create_app
from dropslot_booking.service.runtime import Booking
from dropslot_contracts import Envelope
from dropslot_contracts.events.catalog import DropLive, DropPublished, DropSnapshot, StoreCreated
from dropslot_kit.broker import Messaging, envelopes_in
from dropslot_kit.settings import KitSettings
from dropslot_kit.testing import Infra, drop_test_resources, eventually, fresh_settings
from dropslot_kit.testkeys import JwksServer, TestSigner


class Replica:
    def __init__(self, app: Any):
        self.app = app
        self.client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://booking/api/v1",
                                        timeout=30.0)

    @property
    def booking(self) -> Booking:
        return self.app.state.rt.extras["booking"]


class Cluster:
    """Two booking replicas; requests alternate between them (as the gateway's choice does while
    neither is busier), so concurrent requests meet in both replicas."""

    def __init__(self, replicas: list[Replica], signer: TestSigner, producer: Messaging, settings: Settings):
        self.replicas = replicas
        self.signer = signer
        self.producer = producer
        self.settings = settings
        self._rr = itertools.cycle(range(len(replicas)))

    @property
    def booking(self) -> Booking:
        return self.replicas[0].booking

    def client(self) -> httpx.AsyncClient:
        return self.replicas[next(self._rr)].client

    async def request(self, method: str, path: str, user: dict[str, Any] | None = None, **kw: Any) -> httpx.Response:
        headers = dict(kw.pop("headers", {}) or {})
        if user is not None:
            headers["Authorization"] = f"Bearer {user['token']}"
        return await self.client().request(method, path, headers=headers, **kw)

    def user(self, *, email_verified: bool = True, roles: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        uid = uuid.uuid4()
        token = self.signer.token(uid, ttl=3600, email=f"{uid.hex[:10]}@example.com", email_verified=email_verified,
                                  roles=roles)
        return {"id": uid, "token": token}

    async def publish(self, event: Any, *, store_id: uuid.UUID, tenant_key: str,
                      occurred_at: datetime | None = None) -> Envelope:
        env = Envelope.wrap(event, producer="catalog", store_id=store_id, tenant_key=tenant_key)
        if occurred_at is not None:
            env = env.model_copy(update={"occurred_at": occurred_at})
        await self.producer.publish_raw(env.routing_key, env.model_dump_json().encode(), message_id=str(env.id),
                                        headers={})
        return env

    async def store(self, owner: dict[str, Any]) -> dict[str, Any]:
        store_id, tenant = uuid.uuid4(), f"t-{uuid.uuid4().hex[:8]}"
        await self.publish(StoreCreated(store_id=store_id, tenant_key=tenant, name="Shop", slug=f"shop-{tenant}",
                                        owner_user_id=owner["id"]), store_id=store_id, tenant_key=tenant)

        async def member() -> bool:
            async with self.booking.db.uow() as uow:
                return await one(uow.conn, "SELECT 1 AS x FROM store_members WHERE store_id = :s", s=store_id) is not None

        await eventually(member, timeout=20, what="store membership from catalog.store.created")
        return {"id": store_id, "tenant_key": tenant, "owner": owner}

    async def drop(
        self, store: dict[str, Any], *, price_cents: int = 0, rule: dict[str, Any] | None = None,
        status: str = "LIVE", starts_at: datetime | None = None, hours: float = 6.0,
    ) -> DropSnapshot:
        now = datetime.now(UTC)
        starts = starts_at or now
        snap = DropSnapshot(
            drop_id=uuid.uuid4(), store_id=store["id"], tenant_key=store["tenant_key"], store_name="Shop",
            product_id=uuid.uuid4(), product_name="Sneaker", name="Launch", status=status, starts_at=starts,
            ends_at=starts + timedelta(hours=hours), opens_at=now, reservation_rule=rule or {},
            price_cents=price_cents, currency="EUR",
        )
        event = DropLive(drop=snap) if status == "LIVE" else DropPublished(drop=snap)
        await self.publish(event, store_id=store["id"], tenant_key=store["tenant_key"])
        await self.wait_drop(snap.drop_id, status)
        return snap

    async def wait_drop(self, drop_id: uuid.UUID, status: str) -> None:
        async def seen() -> bool:
            async with self.booking.db.uow() as uow:
                row = await one(uow.conn, "SELECT status FROM drops WHERE drop_id = :d", d=drop_id)
            return row is not None and row["status"] == status

        await eventually(seen, timeout=20, what=f"drop {drop_id} {status} in booking")

    async def slot(self, store: dict[str, Any], drop: DropSnapshot, *, capacity: int = 10,
                   start_in: timedelta = timedelta(hours=1), length: timedelta = timedelta(minutes=30)) -> dict[str, Any]:
        start = datetime.now(UTC) + start_in
        r = await self.request("POST", f"/drops/{drop.drop_id}/slots", store["owner"], json={
            "start_time": start.isoformat(), "end_time": (start + length).isoformat(), "capacity_total": capacity,
        })
        assert r.status_code == 201, r.text
        return dict(r.json())

    async def reserve(self, user: dict[str, Any], slot_id: Any, key: str | None = None, **body: Any) -> httpx.Response:
        headers = {"Idempotency-Key": key} if key else {}
        return await self.request("POST", "/reservations", user, json={"slot_id": str(slot_id), **body},
                                  headers=headers)

    async def invariants(self) -> list[str]:
        async with self.booking.db.uow() as uow:
            return await violations(uow.conn)


def booking_settings(base: KitSettings, jwks_url: str, **overrides: Any) -> Settings:
    values = {**base.model_dump(), "service": "booking", "jwks_url": jwks_url, "log_level": "WARNING",
              "booking_minute_seconds": 1.0, "booking_sweep_seconds": 0.2, "booking_payment_grace_seconds": 2.0,
              "booking_drop_wait_seconds": 3.0, "retry_delays_ms": [200, 500, 1000],
              "public_base_url": "http://gateway.test", "db_pool_size": 3, "db_max_overflow": 5,
              "booking_pool_size": 3}
    values.update(overrides)
    return Settings(**values)


@pytest.fixture(scope="session")
async def signer() -> AsyncIterator[tuple[TestSigner, str]]:
    s = TestSigner()
    server = JwksServer(s)
    url = await server.start()
    yield s, url
    await server.stop()


@pytest.fixture(scope="session")
def booking_test_settings(infra: Infra) -> Iterator[KitSettings]:
    """A database and broker namespace of booking's own: these tests fake catalog and payments
    events, and the shared test system's real payments service must not answer them."""
    settings = fresh_settings(infra, "tb")
    yield settings
    drop_test_resources(settings)


@pytest.fixture(scope="session")
async def cluster(booking_test_settings: KitSettings, signer: tuple[TestSigner, str]) -> AsyncIterator[Cluster]:
    test_settings = booking_test_settings
    key, url = signer
    settings = booking_settings(test_settings, url)
    async with contextlib.AsyncExitStack() as stack:
        replicas = []
        for _ in range(2):
            app = create_app(settings)
            await stack.enter_async_context(app.router.lifespan_context(app))
            replica = Replica(app)
            stack.push_async_callback(replica.client.aclose)
            replicas.append(replica)
        producer = Messaging(KitSettings(**{**test_settings.model_dump(), "service": "catalog"}), None)
        await producer.start()
        stack.push_async_callback(producer.stop)
        yield Cluster(replicas, key, producer, settings)


class EventTap:
    """Every event booking publishes, read from a private queue bound to the real exchange."""

    def __init__(self, settings: KitSettings):
        self.settings = settings
        self.seen: list[Envelope] = []
        self._conn: Any = None

    async def start(self) -> None:
        import aio_pika

        self._conn = await aio_pika.connect_robust(self.settings.rabbit_url)
        channel = await self._conn.channel()
        exchange = await channel.get_exchange(f"{self.settings.broker_namespace}.events")
        queue = await channel.declare_queue(exclusive=True, auto_delete=True)
        await queue.bind(exchange, routing_key="booking.#")

        async def on_message(message: Any) -> None:
            async with message.process():
                self.seen.extend(envelopes_in(message.body))

        await queue.consume(on_message)

    async def stop(self) -> None:
        if self._conn is not None:
            await self._conn.close()

    async def wait_for(self, event_type: str, within: float = 20.0, **match: Any) -> Envelope:
        def hit(env: Envelope) -> bool:
            if env.type != event_type:
                return False
            data = env.data
            for k, v in match.items():
                cur: Any = data
                for part in k.split("__"):
                    cur = cur.get(part) if isinstance(cur, dict) else None
                if str(cur) != str(v):
                    return False
            return True

        async def found() -> Envelope | None:
            return next((e for e in self.seen if hit(e)), None)

        result = await eventually(found, timeout=within, what=f"{event_type} {match}")
        assert result is not None
        return result


@pytest.fixture(scope="session")
async def tap(cluster: Cluster, booking_test_settings: KitSettings) -> AsyncIterator[EventTap]:
    t = EventTap(booking_test_settings)
    await t.start()
    yield t
    await t.stop()
