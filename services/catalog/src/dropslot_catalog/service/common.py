"""What every use case shares: the writing unit of work, store scoping and lookups."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator, Iterable
from typing import Any

from dropslot_kit.app import ServiceRuntime
from dropslot_kit.auth import Principal
from dropslot_kit.db import UnitOfWork
from dropslot_kit.errors import NotFound
from dropslot_kit.memberships import OWNER, authorize_store, member_store_ids
from sqlalchemy.ext.asyncio import AsyncConnection

from ..adapters import repo
from ..adapters.cache import PublicCache

Row = repo.Row


def cache(rt: ServiceRuntime) -> PublicCache:
    return rt.extras["cache"]  # type: ignore[no-any-return]


@contextlib.asynccontextmanager
async def writing(rt: ServiceRuntime) -> AsyncIterator[UnitOfWork]:
    """A unit of work for a write; after it commits, public answers are invalidated."""
    assert rt.db is not None
    async with rt.db.uow() as uow:
        yield uow
    await cache(rt).invalidate()


@contextlib.asynccontextmanager
async def reading(rt: ServiceRuntime) -> AsyncIterator[UnitOfWork]:
    assert rt.db is not None
    async with rt.db.uow() as uow:
        yield uow


@contextlib.asynccontextmanager
async def public_reading(rt: ServiceRuntime) -> AsyncIterator[AsyncConnection]:
    """A connection for public reads: no tenant, and no explicit transaction (each public
    read is one or two independent statements, so BEGIN/COMMIT would only add round trips
    on the path a cache miss takes). The tenant setting is transaction-local, so a pooled
    connection never carries one over from an earlier request."""
    assert rt.db is not None
    async with rt.db.engine.connect() as conn:
        yield await conn.execution_options(isolation_level="AUTOCOMMIT")


async def store_scope(uow: UnitOfWork, principal: Principal, store_id: uuid.UUID,
                      roles: Iterable[str] = OWNER) -> Row:
    """The store, once the caller is known to hold one of `roles` in it; from here on the
    transaction runs in the store's tenant. Outsiders get 404, as if it did not exist."""
    store = await repo.get_store(uow.conn, store_id)
    if store is None:
        raise NotFound("no such store")
    await authorize_store(uow.conn, principal, store_id, roles)
    await uow.set_tenant(store["tenant_key"])
    return store


async def locate(uow: UnitOfWork, principal: Principal, table: str, row_id: uuid.UUID,
                 roles: Iterable[str] = OWNER) -> Row:
    """The store owning a product/drop addressed by its id alone (`/drops/{id}/publish`).

    A published row is visible without a tenant (public policy). A private one (a draft)
    can only be seen inside its own tenant, so it is looked for in the caller's stores,
    one tenant at a time (usually one or two). Anything else is 404.
    """
    roles = tuple(roles)
    store_id = await repo.find_store_of(uow.conn, table, row_id)
    if store_id is None:
        mine = await member_store_ids(uow.conn, principal, roles)
        for store in await repo.stores_by_ids(uow.conn, sorted(mine)):
            await uow.set_tenant(store["tenant_key"])
            if await repo.find_store_of(uow.conn, table, row_id) == store["id"]:
                store_id = store["id"]
                break
    if store_id is None:
        raise NotFound(f"no such {table[:-1]}")
    return await store_scope(uow, principal, store_id, roles)


def changed(current: Row, given: dict[str, Any]) -> dict[str, Any]:
    """The given fields whose value differs from the current one."""
    return {k: v for k, v in given.items() if current.get(k) != v}
