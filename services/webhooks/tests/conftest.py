"""Fixtures of the webhooks tests.

Integration tests run the service's own pieces in-process (fan-out, delivery workers, the
use cases) against a database of their own, so the webhooks replica of an end-to-end system
started in the same session (which shares `test_settings`' database) cannot take their
deliveries.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from dropslot_contracts import Envelope
from dropslot_kit.auth import Principal
from dropslot_kit.bootstrap import bootstrap, drop_database
from dropslot_kit.broker import json_events_in
from dropslot_kit.db import Database
from dropslot_kit.migrate import upgrade
from dropslot_kit.testing import Infra, settings_for
from dropslot_webhooks import service
from dropslot_webhooks.adapters import repository as repo
from dropslot_webhooks.config import Settings
from dropslot_webhooks.delivery import DeliveryWorker
from dropslot_webhooks.service import EndpointInput, Webhooks
from sqlalchemy import text


@pytest.fixture(scope="session")
def wh_settings(infra: Infra) -> Iterator[Settings]:
    suffix = uuid.uuid4().hex[:10]
    base = settings_for(infra, f"dropslot_twh_{suffix}", f"twh{suffix}", service="webhooks")
    asyncio.run(bootstrap(base, services=("webhooks",)))
    upgrade("webhooks", base)
    settings = Settings(
        **{**base.model_dump(), "service": "webhooks", "log_json": False},
        webhooks_allow_http=True,
        webhooks_allowed_networks=["127.0.0.0/8", "::1/128"],
        webhooks_retry_scale=0.01,
        webhooks_poll_seconds=0.1,
        webhooks_timeout_seconds=5.0,
    )
    yield settings
    with contextlib.suppress(Exception):
        asyncio.run(drop_database(base))


ADMIN = Principal(user_id=uuid.uuid4(), roles=(("platform_admin", None),))


class Harness:
    """The webhooks service without HTTP and broker: use cases, fan-out and workers."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.db = Database(settings)
        self.svc = Webhooks(settings, self.db)
        self.store_id = uuid.uuid4()
        self.workers: list[tuple[DeliveryWorker, asyncio.Task[None]]] = []
        self.endpoints: list[uuid.UUID] = []

    async def endpoint(self, url: str, event_types: list[str] | None = None,
                       store_id: uuid.UUID | None = None) -> dict[str, Any]:
        ep = await self.svc.create_endpoint(ADMIN, store_id or self.store_id,
                                            EndpointInput(url, event_types or [], None))
        self.endpoints.append(ep["id"])
        return ep

    async def fan_out(self, *envs: Envelope) -> int:
        n = 0
        async with self.db.uow() as uow:
            for env in envs:
                n += await service.fan_out(env, uow)
        return n

    def start_worker(self, settings: Settings | None = None, name: str | None = None) -> DeliveryWorker:
        worker = DeliveryWorker(settings or self.settings, self.db, self.svc.box, name=name)
        self.workers.append((worker, asyncio.create_task(worker.run())))
        return worker

    async def stop_workers(self) -> None:
        for _, task in self.workers:
            task.cancel()
        await asyncio.gather(*(t for _, t in self.workers), return_exceptions=True)
        self.workers = []

    async def system(self, sql: str, params: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        async with self.db.uow() as uow:
            await repo.scope_system(uow.conn)
            result = await uow.conn.execute(text(sql), params or {})
            return [dict(r) for r in result.mappings()] if result.returns_rows else []

    async def deliveries(self, endpoint_id: uuid.UUID) -> list[dict[str, Any]]:
        return await self.system("SELECT * FROM webhook_events WHERE endpoint_id = :e ORDER BY seq",
                                 {"e": endpoint_id})

    async def attempts(self, delivery_id: uuid.UUID) -> list[dict[str, Any]]:
        return await self.system("SELECT * FROM webhook_attempts WHERE webhook_event_id = :d ORDER BY id",
                                 {"d": delivery_id})

    async def close(self) -> None:
        await self.stop_workers()
        if self.endpoints:  # leave nothing pending for later tests' workers
            await self.system("DELETE FROM webhook_endpoints WHERE id = ANY(:ids)", {"ids": self.endpoints})
        await self.db.dispose()


@pytest.fixture
async def harness(wh_settings: Settings) -> AsyncIterator[Harness]:
    h = Harness(wh_settings)
    yield h
    await h.close()


# --- end to end ----------------------------------------------------------------------------------
class Bus:
    """Publishes envelopes to the system's exchange exactly as a producer's outbox relay does
    (routing key = event type), for producers a test cannot drive through the API yet; and
    taps events the system emits."""

    def __init__(self, rabbit_url: str, namespace: str):
        self.rabbit_url = rabbit_url
        self.exchange_name = f"{namespace}.events"
        self._conn: Any = None
        self._exchange: Any = None
        self.tapped: list[dict[str, Any]] = []

    async def start(self) -> Bus:
        import aio_pika

        self._conn = await aio_pika.connect(self.rabbit_url)
        channel = await self._conn.channel(publisher_confirms=True)
        self._exchange = await channel.declare_exchange(self.exchange_name, aio_pika.ExchangeType.TOPIC,
                                                        durable=True)
        queue = await channel.declare_queue(exclusive=True, auto_delete=True)
        await queue.bind(self._exchange, routing_key="webhooks.#")
        await queue.consume(self._on_message)
        return self

    async def _on_message(self, message: Any) -> None:

        async with message.process():
            self.tapped.extend(json_events_in(message.body))

    async def publish(self, *envs: Envelope) -> None:
        import aio_pika

        await asyncio.gather(*(self._exchange.publish(
            aio_pika.Message(env.model_dump_json().encode(), message_id=str(env.id), content_type="application/json",
                             delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
            routing_key=env.routing_key) for env in envs))

    async def close(self) -> None:
        if self._conn is not None:
            await self._conn.close()


@pytest.fixture(scope="session")
async def bus(system: Any) -> AsyncIterator[Bus]:
    b = await Bus(system.settings.rabbit_url, system.settings.broker_namespace).start()
    yield b
    await b.close()
