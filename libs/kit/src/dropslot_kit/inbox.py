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


async def claim(conn: AsyncConnection, event_id: uuid.UUID, handler: str) -> bool:
    """True the first time this handler sees the event (inside the caller's transaction)."""
    result = await conn.execute(_CLAIM, {"e": event_id, "h": handler})
    return result.first() is not None
