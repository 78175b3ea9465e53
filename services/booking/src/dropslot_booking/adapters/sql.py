"""Small helpers over the kit's SQLAlchemy connection: cached `text()` and dict rows."""

from __future__ import annotations

import functools
import uuid
from typing import Any

from sqlalchemy import TextClause, text
from sqlalchemy.ext.asyncio import AsyncConnection

Row = dict[str, Any]


@functools.lru_cache(maxsize=512)
def _sql(statement: str) -> TextClause:
    return text(statement)


async def one(conn: AsyncConnection, statement: str, **params: Any) -> Row | None:
    result = await conn.execute(_sql(statement), params)
    row = result.mappings().first()
    return dict(row) if row is not None else None


async def all_rows(conn: AsyncConnection, statement: str, **params: Any) -> list[Row]:
    result = await conn.execute(_sql(statement), params)
    return [dict(r) for r in result.mappings().all()]


async def scalar(conn: AsyncConnection, statement: str, **params: Any) -> Any:
    result = await conn.execute(_sql(statement), params)
    return result.scalar()


async def execute(conn: AsyncConnection, statement: str, **params: Any) -> int:
    result = await conn.execute(_sql(statement), params)
    return int(result.rowcount or 0)


async def set_scope(
    conn: AsyncConnection,
    *,
    all_rows: bool = False,
    user_id: uuid.UUID | None = None,
    tenant_key: str | None = None,
) -> None:
    """What row-level security lets this transaction see of reservations and waitlist entries:
    every row (`all_rows`, for sweepers and consumers), one user's rows, or one tenant's."""
    await conn.execute(
        _sql(
            "SELECT set_config('dropslot.scope', :s, true), set_config('dropslot.user', :u, true),"
            " set_config('dropslot.tenant', :t, true)"
        ),
        {"s": "all" if all_rows else "", "u": str(user_id) if user_id else "", "t": tenant_key or ""},
    )
