"""Fixtures for audit's tests: the audit service in this process against real PostgreSQL and
RabbitMQ, test access tokens from a local JWKS, and a publisher that sends envelopes through
the real broker as any producing service would.

These tests get a database and broker namespace of their own (audit schema only), not the
session's: when an e2e run has the whole system up, its audit process would otherwise relay
our outbox rows and compete for our queues."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from dropslot_audit.config import Settings
from dropslot_audit.main import create_app
from dropslot_contracts import Actor, Envelope, Event
from dropslot_kit.bootstrap import bootstrap
from dropslot_kit.broker import Messaging
from dropslot_kit.migrate import upgrade
from dropslot_kit.settings import KitSettings
from dropslot_kit.testing import Infra, delete_namespace, drop_test_resources, settings_for
from dropslot_kit.testkeys import JwksServer, TestSigner


@pytest.fixture(scope="session")
def audit_db(infra: Infra) -> Iterator[KitSettings]:
    """A fresh database with only the audit schema migrated, and its own broker namespace."""
    suffix = uuid.uuid4().hex[:10]
    settings = settings_for(infra, f"dropslot_audit_t_{suffix}", f"ta{suffix}", service="audit")
    asyncio.run(bootstrap(settings, services=("audit",)))
    upgrade("audit", settings)
    yield settings
    drop_test_resources(settings)


def audit_settings(base_settings: KitSettings, **overrides: Any) -> Settings:
    """That database, with a broker namespace of its own for each app."""
    base = base_settings.model_dump(exclude={"service"})
    ns = f"{base_settings.broker_namespace}x{uuid.uuid4().hex[:6]}"
    return Settings(**{**base, "broker_namespace": ns, "log_json": False, "log_level": "WARNING",
                       "retry_delays_ms": [200, 500], "db_pool_size": 3, "db_max_overflow": 2, **overrides})


@pytest.fixture(scope="session")
async def keys() -> AsyncIterator[tuple[TestSigner, JwksServer]]:
    signer = TestSigner()
    server = JwksServer(signer)
    await server.start()
    yield signer, server
    await server.stop()


class Publisher:
    """Sends envelopes to `<namespace>.events` with the kit's own publishing path."""

    def __init__(self, settings: KitSettings):
        self.messaging = Messaging(settings.model_copy(update={"service": "probe"}), None)

    async def start(self) -> None:
        await self.messaging.start()

    async def send(self, env: Envelope) -> Envelope:
        await self.messaging.publish_raw(env.routing_key, env.model_dump_json().encode(),
                                         message_id=str(env.id), headers={})
        return env

    async def emit(self, event: Event, *, producer: str, actor: Actor | None = None,
                   store_id: uuid.UUID | None = None, **kw: Any) -> Envelope:
        return await self.send(Envelope.wrap(event, producer=producer, actor=actor, store_id=store_id, **kw))

    async def stop(self) -> None:
        await self.messaging.stop()


@dataclass
class AuditUnderTest:
    app: Any
    settings: Settings
    http: httpx.AsyncClient
    publisher: Publisher
    signer: TestSigner

    def as_user(self, user_id: uuid.UUID, roles: list[dict[str, Any]] | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.signer.token(user_id, roles=roles)}"}

    def as_admin(self) -> dict[str, str]:
        return self.as_user(uuid.uuid4(), roles=[{"code": "platform_admin", "store_id": None}])

    async def logs(self, headers: dict[str, str] | None = None, **params: Any) -> list[dict[str, Any]]:
        """Every page of the trail for these filters, following the cursor."""
        items: list[dict[str, Any]] = []
        cursor = None
        while True:
            query = {k: str(v) for k, v in params.items() if v is not None}
            if cursor:
                query["cursor"] = cursor
            r = await self.http.get("/audit-logs", params=query, headers=headers or self.as_admin())
            assert r.status_code == 200, r.text
            body = r.json()
            items += body["items"]
            cursor = body["next_cursor"]
            if not cursor:
                return items


@pytest.fixture(scope="module")
async def audit(audit_db: KitSettings, keys: tuple[TestSigner, JwksServer]) -> AsyncIterator[AuditUnderTest]:
    signer, server = keys
    settings = audit_settings(audit_db, jwks_url=server.url)
    app = create_app(settings)
    publisher = Publisher(settings)
    async with app.router.lifespan_context(app):
        await publisher.start()
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://audit.test/api/v1", timeout=20) as http:
            yield AuditUnderTest(app, settings, http, publisher, signer)
        await publisher.stop()
    with contextlib.suppress(Exception):
        await delete_namespace(settings)
