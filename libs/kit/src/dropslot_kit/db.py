"""Async engine per service schema, and the unit of work that commits state and events together."""

from __future__ import annotations

import json
import uuid
from types import TracebackType
from typing import Any

from dropslot_contracts import Envelope, Event, TraceContext
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from . import context, telemetry
from .settings import KitSettings


class Database:
    """One pool per service, connecting as the service's own role with its schema on the path."""

    def __init__(self, settings: KitSettings, *, schema: str | None = None):
        self.settings = settings
        self.schema = schema or settings.service
        self.engine: AsyncEngine = create_async_engine(
            settings.service_dsn(),
            pool_size=settings.db_pool_size,
            max_overflow=settings.db_max_overflow,
            pool_pre_ping=False,
            connect_args={
                "server_settings": {"search_path": self.schema, "application_name": f"dropslot-{settings.service}"},
                # Cached prepared statements break when a migration changes a table under a live pool.
                "statement_cache_size": 256,
            },
        )

    def uow(self, *, tenant_key: str | None = None) -> UnitOfWork:
        return UnitOfWork(self, tenant_key=tenant_key)

    async def ping(self) -> None:
        async with self.engine.connect() as conn:
            await conn.execute(text("SELECT 1"))

    async def dispose(self) -> None:
        await self.engine.dispose()


class UnitOfWork:
    """A transaction. Events emitted inside it go to the outbox in the same commit.

    Handlers never commit: leaving the block without an exception commits once, with
    the outbox rows; an exception rolls everything back, events included.
    """

    def __init__(self, db: Database, *, tenant_key: str | None = None):
        self.db = db
        self.tenant_key = tenant_key
        self.events: list[Envelope] = []
        self._conn: AsyncConnection | None = None

    @property
    def conn(self) -> AsyncConnection:
        assert self._conn is not None, "unit of work not entered"
        return self._conn

    async def __aenter__(self) -> UnitOfWork:
        self._conn = await self.db.engine.connect()
        await self._conn.begin()
        if self.tenant_key is not None:
            await self.set_tenant(self.tenant_key)
        return self

    async def set_tenant(self, tenant_key: str) -> None:
        """Row-level security reads `dropslot.tenant`; it lasts for this transaction only."""
        self.tenant_key = tenant_key
        await self.conn.execute(text("SELECT set_config('dropslot.tenant', :t, true)"), {"t": tenant_key})

    async def switch_tenant(self, tenant_key: str | None) -> None:
        """Make `tenant_key` the transaction's tenant (None: no tenant, so tenant rows stay
        hidden), skipping the round trip when it already is. Batched consumers call it per event."""
        if tenant_key == self.tenant_key:
            return
        if tenant_key is None:
            await self.conn.execute(text("SELECT set_config('dropslot.tenant', '', true)"))
            self.tenant_key = None
        else:
            await self.set_tenant(tenant_key)

    async def execute(self, sql: str, params: dict[str, Any] | None = None) -> Any:
        return await self.conn.execute(text(sql), params or {})

    def emit(
        self,
        event: Event,
        *,
        store_id: uuid.UUID | None = None,
        tenant_key: str | None = None,
        before: dict[str, Any] | None = None,
        after: dict[str, Any] | None = None,
    ) -> Envelope:
        ctx = context.current()
        env = Envelope.wrap(
            event,
            producer=self.db.settings.service,
            store_id=store_id,
            tenant_key=tenant_key if tenant_key is not None else self.tenant_key,
            actor=ctx.actor,
            correlation_id=ctx.correlation_id or ctx.request_id,
            trace=TraceContext(**_trace_headers()),
            before=before,
            after=after,
        )
        self.events.append(env)
        return env

    async def commit(self) -> None:
        if self.events:
            await write_outbox(self.conn, self.events)
            self.events = []
        await self.conn.commit()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        try:
            if exc_type is None:
                await self.commit()
            else:
                await self.conn.rollback()
        finally:
            await self.conn.close()
            self._conn = None


def _trace_headers() -> dict[str, str]:
    carrier = telemetry.inject_headers()
    return {k: v for k, v in carrier.items() if k in ("traceparent", "tracestate")}


OUTBOX_INSERT = text(
    "INSERT INTO outbox (id, routing_key, envelope, traceparent) VALUES (:id, :rk, :env, :tp)"
)


async def write_outbox(conn: AsyncConnection, events: list[Envelope]) -> None:
    await conn.execute(
        OUTBOX_INSERT,
        [
            {"id": e.id, "rk": e.routing_key, "env": e.model_dump_json(), "tp": e.trace.traceparent}
            for e in events
        ],
    )


def envelope_json(env: Envelope) -> str:
    return env.model_dump_json()


def loads(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str | bytes) else value
