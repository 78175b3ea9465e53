"""Waitlist entries: join, leave, accept, lapse. Fair order is `seq` (a sequence, taken at join)."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncConnection

from .sql import Row, all_rows, one

VIEW = """
SELECT w.*, s.start_time AS slot_start, s.end_time AS slot_end, d.name AS drop_name, d.product_name,
       d.store_name
FROM waitlist w JOIN slots s ON s.id = w.slot_id JOIN drops d ON d.drop_id = w.drop_id
"""


async def get(conn: AsyncConnection, entry_id: uuid.UUID, *, lock: bool = False) -> Row | None:
    return await one(conn, VIEW + " WHERE w.id = :id" + (" FOR UPDATE OF w" if lock else ""), id=entry_id)


async def join(
    conn: AsyncConnection, *, entry_id: uuid.UUID, slot: Row, user_id: uuid.UUID, now: datetime
) -> Row | None:
    """None when the user is already in this slot's line."""
    return await one(
        conn,
        """INSERT INTO waitlist (id, slot_id, drop_id, store_id, tenant_key, user_id, state, position, created_at,
                                 updated_at)
           VALUES (:id, :s, :d, :st, :t, :u, 'WAITING',
                   1 + (SELECT count(*) FROM waitlist WHERE slot_id = :s AND state = 'WAITING'), :now, :now)
           ON CONFLICT (slot_id, user_id) WHERE state IN ('WAITING', 'OFFERED') DO NOTHING
           RETURNING id""",
        id=entry_id, s=slot["id"], d=slot["drop_id"], st=slot["store_id"], t=slot["tenant_key"], u=user_id, now=now,
    )


async def active_entry(conn: AsyncConnection, slot_id: uuid.UUID, user_id: uuid.UUID) -> Row | None:
    return await one(
        conn,
        VIEW + " WHERE w.slot_id = :s AND w.user_id = :u AND w.state IN ('WAITING', 'OFFERED')",
        s=slot_id, u=user_id,
    )


async def position(conn: AsyncConnection, entry: Row) -> int:
    """Place in line now: 1 + the entries still waiting ahead (an offered entry is at 0)."""
    if entry["state"] != "WAITING":
        return 0
    row = await one(
        conn,
        "SELECT count(*) AS n FROM waitlist WHERE slot_id = :s AND state = 'WAITING' AND seq < :q",
        s=entry["slot_id"], q=entry["seq"],
    )
    return 1 + int(row["n"] if row else 0)


async def set_state(
    conn: AsyncConnection, entry_id: uuid.UUID, *, from_states: tuple[str, ...], to: str, now: datetime,
    reservation_id: uuid.UUID | None = None, reason: str | None = None, require_live_offer: bool = False,
) -> bool:
    cond = " AND offer_expires_at > :now" if require_live_offer else ""
    row = await one(
        conn,
        f"""UPDATE waitlist SET state = :to, updated_at = :now,
                reservation_id = COALESCE(:r, reservation_id), close_reason = COALESCE(:why, close_reason)
            WHERE id = :id AND state = ANY(:f){cond} RETURNING id""",
        id=entry_id, to=to, now=now, r=reservation_id, why=reason, f=list(from_states),
    )
    return row is not None


async def list_for_user(
    conn: AsyncConnection, user_id: uuid.UUID, *, after: tuple[datetime, uuid.UUID] | None, limit: int,
) -> list[Row]:
    cond = " AND (w.created_at, w.id) < (:cc, :ci)" if after else ""
    return await all_rows(
        conn,
        VIEW + f" WHERE w.user_id = :u {cond} ORDER BY w.created_at DESC, w.id DESC LIMIT :l",
        u=user_id, l=limit, cc=after[0] if after else None, ci=after[1] if after else None,
    )


async def claim_lapsed_offers(conn: AsyncConnection, now: datetime, limit: int) -> list[Row]:
    return await all_rows(
        conn,
        VIEW + """ WHERE w.state = 'OFFERED' AND w.offer_expires_at <= :now
                   ORDER BY w.offer_expires_at LIMIT :l FOR UPDATE OF w SKIP LOCKED""",
        now=now, l=limit,
    )


async def claim_closed_lines(conn: AsyncConnection, now: datetime, limit: int) -> list[Row]:
    """Entries still in line for a slot that started, or a drop that is no longer live."""
    return await all_rows(
        conn,
        VIEW + """ WHERE w.state IN ('WAITING', 'OFFERED')
                     AND (s.start_time <= :now OR d.status IN ('ENDED', 'CANCELLED'))
                   LIMIT :l FOR UPDATE OF w SKIP LOCKED""",
        now=now, l=limit,
    )
