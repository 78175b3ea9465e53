"""Booking's check-in signing keys, stored in its schema so every replica signs with the same key."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncConnection

from ..domain.tokens import CheckinTokens, SigningKey
from .sql import all_rows, execute


async def load_or_create(conn: AsyncConnection) -> CheckinTokens:
    """The active key (created by the first replica that starts; a concurrent start by another
    replica loses the unique index race harmlessly and loads the winner's key)."""
    rows = await all_rows(conn, "SELECT kid, private_pem, public_pem, active FROM signing_keys ORDER BY created_at")
    if not any(r["active"] for r in rows):
        fresh = SigningKey.generate()
        await execute(
            conn,
            """INSERT INTO signing_keys (kid, private_pem, public_pem, active) VALUES (:k, :p, :q, true)
               ON CONFLICT DO NOTHING""",
            k=fresh.kid, p=fresh.private_pem(), q=fresh.public_pem(),
        )
        rows = await all_rows(conn, "SELECT kid, private_pem, public_pem, active FROM signing_keys ORDER BY created_at")
    keys = [SigningKey.from_pem(r["kid"], r["private_pem"], r["public_pem"]) for r in rows]
    active = next(k for k, r in zip(keys, rows, strict=True) if r["active"])
    return CheckinTokens(active, [k for k in keys if k.kid != active.kid])
