"""Inbox: a consumer records (event id, handler) in the same transaction as its effect.

A redelivered event finds its row and is skipped, so at-least-once delivery has
exactly-once effect.
"""

from __future__ import annotations

import uuid

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

_CLAIM_MANY = text(
    "INSERT INTO inbox (event_id, handler) SELECT e, :h FROM unnest(CAST(:ids AS uuid[])) AS e "
    "ON CONFLICT DO NOTHING RETURNING event_id"
)


async def claim_many(conn: AsyncConnection, event_ids: list[uuid.UUID], handler: str) -> set[uuid.UUID]:
    """The ids among `event_ids` this handler has not seen before, claimed in one statement
    (inside the caller's transaction, so a rollback un-claims them)."""
    if not event_ids:
        return set()
    result = await conn.execute(_CLAIM_MANY, {"ids": list(dict.fromkeys(event_ids)), "h": handler})
    return {row[0] for row in result}
