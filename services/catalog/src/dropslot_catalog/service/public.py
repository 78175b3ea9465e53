"""Public browsing: published data only.

Runs in a transaction with no tenant set, so row-level security shows only what its
`public_read` policies allow (drops that are not drafts, their products, the branches of
stores that have them); the queries also filter on status, so a caller can never widen
that. Answers are cached by the API layer (Redis + ETag), see `api.caching`.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from dropslot_kit.app import ServiceRuntime
from dropslot_kit.auth import Principal
from dropslot_kit.errors import NotFound
from dropslot_kit.memberships import STAFF

from .. import views
from ..adapters import repo
from ..domain.geo import BoundingBox
from .common import locate, public_reading, reading


@dataclass(frozen=True)
class DropQuery:
    statuses: frozenset[str]
    store_id: uuid.UUID | None = None
    store_slug: str | None = None
    window_from: datetime | None = None
    window_to: datetime | None = None
    near: tuple[float, float, float, BoundingBox] | None = None  # lat, lng, radius_km, box
    cursor: tuple[datetime, uuid.UUID] | None = None
    limit: int = 20


async def list_drops(rt: ServiceRuntime, q: DropQuery) -> dict[str, Any]:
    async with public_reading(rt) as conn:
        store_id = q.store_id
        if q.store_slug is not None:
            store = await repo.get_store_by_slug(conn, q.store_slug)
            if store is None:
                return {"items": [], "next_cursor": None}
            store_id = store["id"]
        rows = await repo.public_drops(conn, statuses=q.statuses, store_id=store_id, window_from=q.window_from,
                                       window_to=q.window_to, near=q.near, cursor=q.cursor, limit=q.limit + 1)
    return views.page([views.drop_view(r) for r in rows], rows, q.limit, "starts_at")


async def get_drop(rt: ServiceRuntime, drop_id: uuid.UUID) -> dict[str, Any]:
    async with public_reading(rt) as conn:
        row = await repo.drop_view(conn, drop_id, public=True)
    if row is None:
        raise NotFound("no such drop")
    return views.drop_view(row)


async def get_private_drop(rt: ServiceRuntime, principal: Principal, drop_id: uuid.UUID) -> dict[str, Any]:
    """A draft, for its store's owner or staff (everyone else: 404)."""
    async with reading(rt) as uow:
        store = await locate(uow, principal, "drops", drop_id, STAFF)
        row = await repo.drop_view(uow.conn, drop_id, store_id=store["id"])
    if row is None:
        raise NotFound("no such drop")
    return views.drop_view(row)


async def list_stores(rt: ServiceRuntime, *, cursor: tuple[datetime, uuid.UUID] | None, limit: int) -> dict[str, Any]:
    async with public_reading(rt) as conn:
        rows = await repo.list_stores(conn, cursor=cursor, limit=limit + 1)
    return views.page([views.store_view(r) for r in rows], rows, limit, "created_at")


async def get_store(rt: ServiceRuntime, ref: str) -> dict[str, Any]:
    """By id or by slug."""
    async with public_reading(rt) as conn:
        try:
            row = await repo.get_store(conn, uuid.UUID(ref))
        except ValueError:
            row = await repo.get_store_by_slug(conn, ref.lower())
    if row is None:
        raise NotFound("no such store")
    return views.store_view(row)
