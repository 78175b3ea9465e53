"""Inbox: a consumer records (event id, handler) in the same transaction as its effect.

A redelivered event finds its row and is skipped, so at-least-once delivery has
exactly-once effect.
"""

from __future__ import annotations

import uuid

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

_CLAIM = text(
    "INSERT INTO inbox (event_id, handler) VALUES (:e, :h) ON CONFLICT DO NOTHING RETURNING event_id"
)
_CLAIM_MANY = text(
    "INSERT INTO inbox (event_id, handler) SELECT e, :h FROM unnest(CAST(:ids AS uuid[])) AS e "
    "ON CONFLICT DO NOTHING RETURNING event_id"
)


async def claim(conn: AsyncConnection, event_id: uuid.UUID, handler: str) -> bool:
    """True the first time this handler sees the event (inside the caller's transaction)."""
    result = await conn.execute(_CLAIM, {"e": event_id, "h": handler})
    return result.first() is not None


async def claim_many(conn: AsyncConnection, event_ids: list[uuid.UUID], handler: str) -> set[uuid.UUID]:
    """The ids among `event_ids` this handler has not seen before, claimed in one statement."""
    if not event_ids:
        return set()
    result = await conn.execute(_CLAIM_MANY, {"ids": list(dict.fromkeys(event_ids)), "h": handler})
    return {row[0] for row in result}
