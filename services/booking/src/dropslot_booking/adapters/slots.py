"""Slots: creation, public availability, capacity changes, and giving seats back."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from .sql import Row, all_rows, one

_SLOT_COLUMNS = """s.id, s.drop_id, s.store_id, s.tenant_key, s.start_time, s.end_time, s.capacity_total,
    s.capacity_reserved, s.capacity_waitlist, s.sellable, s.created_at, s.updated_at"""

_WAITLIST_LENGTH = "(SELECT count(*) FROM waitlist w WHERE w.slot_id = s.id AND w.state = 'WAITING')"


async def insert_slot(
    conn: AsyncConnection, *, slot_id: uuid.UUID, drop: Row, start: datetime, end: datetime, capacity: int,
    sellable: bool,
) -> Row | None:
    """None when a slot with the same times already exists in the drop."""
    return await one(
        conn,
        f"""INSERT INTO slots AS s (id, drop_id, store_id, tenant_key, start_time, end_time, capacity_total, sellable)
            VALUES (:id, :d, :st, :t, :a, :b, :c, :sell)
            ON CONFLICT (drop_id, start_time, end_time) DO NOTHING
            RETURNING {_SLOT_COLUMNS}, 0::bigint AS waitlist_length""",
        id=slot_id, d=drop["drop_id"], st=drop["store_id"], t=drop["tenant_key"], a=start, b=end, c=capacity,
        sell=sellable,
    )


async def get_slot(conn: AsyncConnection, slot_id: uuid.UUID) -> Row | None:
    return await one(
        conn,
        f"SELECT {_SLOT_COLUMNS}, {_WAITLIST_LENGTH} AS waitlist_length FROM slots s WHERE s.id = :id",
        id=slot_id,
    )


async def get_slot_with_drop(conn: AsyncConnection, slot_id: uuid.UUID) -> Row | None:
    return await one(
        conn,
        f"""SELECT {_SLOT_COLUMNS}, d.name AS drop_name, d.product_name, d.store_name, d.status AS drop_status,
                   d.waitlist_enabled, d.waitlist_offer_minutes, d.max_per_user, d.require_verified_email,
                   d.price_cents, d.currency, d.hold_minutes, d.ends_at AS drop_ends_at
            FROM slots s JOIN drops d ON d.drop_id = s.drop_id WHERE s.id = :id""",
        id=slot_id,
    )


async def list_slots(
    conn: AsyncConnection, drop_id: uuid.UUID, *, after: tuple[datetime, uuid.UUID] | None, limit: int
) -> list[Row]:
    cond = "AND (s.start_time, s.id) > (:cs, :ci)" if after else ""
    return await all_rows(
        conn,
        f"""SELECT {_SLOT_COLUMNS}, {_WAITLIST_LENGTH} AS waitlist_length FROM slots s
            WHERE s.drop_id = :d {cond} ORDER BY s.start_time, s.id LIMIT :l""",
        d=drop_id, l=limit, cs=after[0] if after else None, ci=after[1] if after else None,
    )


async def resize(conn: AsyncConnection, slot_id: uuid.UUID, capacity: int) -> Row | None:
    """New capacity, only if it is not below what is taken (None otherwise)."""
    return await one(
        conn,
        f"""UPDATE slots s SET capacity_total = :c, updated_at = now()
            WHERE s.id = :id AND :c >= s.capacity_reserved + s.capacity_waitlist
            RETURNING {_SLOT_COLUMNS}, {_WAITLIST_LENGTH} AS waitlist_length""",
        id=slot_id, c=capacity,
    )


async def release_and_offer(
    conn: AsyncConnection,
    slot_id: uuid.UUID,
    *,
    now: datetime,
    minute_seconds: float,
    reserved: int = 0,
    waitlist: int = 0,
) -> tuple[Row, list[Row]]:
    """Give seats back to a slot (from reservations and/or waitlist offers) and offer every free
    seat to the people waiting, first come first served. Freed seats go to the waitlist before
    the public: this runs under the slot's row lock, in the transaction that freed them.

    Waiting entries locked by someone else (leaving right now) are skipped rather than waited
    for, so this never waits on a row while holding the slot; the sweeper's rebalance offers any
    seat that stays free while people wait. Returns the slot after and the entries offered.
    """
    slot = await one(
        conn,
        f"""SELECT {_SLOT_COLUMNS}, d.waitlist_enabled, d.waitlist_offer_minutes, d.name AS drop_name,
                   d.product_name, d.store_name
            FROM slots s JOIN drops d ON d.drop_id = s.drop_id WHERE s.id = :id FOR UPDATE OF s""",
        id=slot_id,
    )
    assert slot is not None, f"slot {slot_id} vanished"
    new_reserved = slot["capacity_reserved"] - reserved
    new_waitlist = slot["capacity_waitlist"] - waitlist
    free = slot["capacity_total"] - new_reserved - new_waitlist
    offered: list[Row] = []
    if free > 0 and slot["sellable"] and slot["waitlist_enabled"] and slot["start_time"] > now:
        expires = now + timedelta(seconds=slot["waitlist_offer_minutes"] * minute_seconds)
        offered = await all_rows(
            conn,
            """UPDATE waitlist SET state = 'OFFERED', offered_at = :now, offer_expires_at = :exp, updated_at = :now
               WHERE id IN (SELECT id FROM waitlist WHERE slot_id = :id AND state = 'WAITING'
                            ORDER BY seq LIMIT :n FOR UPDATE SKIP LOCKED)
               RETURNING *""",
            id=slot_id, n=free, now=now, exp=expires,
        )
        offered.sort(key=lambda r: r["seq"])
        new_waitlist += len(offered)
    if reserved or waitlist or offered:
        await one(
            conn,
            """UPDATE slots SET capacity_reserved = :r, capacity_waitlist = :w, updated_at = :now
               WHERE id = :id RETURNING id""",
            id=slot_id, r=new_reserved, w=new_waitlist, now=now,
        )
    after: dict[str, Any] = {**slot, "capacity_reserved": new_reserved, "capacity_waitlist": new_waitlist}
    return after, offered


async def take_seat(conn: AsyncConnection, slot_id: uuid.UUID, *, now: datetime, from_waitlist: bool = False) -> bool:
    """One seat for one reservation: from a waitlist offer already held (always there), or the
    conditional update of the hot path (only if free, the drop live and the slot not started)."""
    if from_waitlist:
        row = await one(
            conn,
            """UPDATE slots SET capacity_waitlist = capacity_waitlist - 1, capacity_reserved = capacity_reserved + 1,
                   updated_at = :now WHERE id = :id AND capacity_waitlist > 0 RETURNING id""",
            id=slot_id, now=now,
        )
    else:
        row = await one(
            conn,
            """UPDATE slots SET capacity_reserved = capacity_reserved + 1, updated_at = :now
               WHERE id = :id AND sellable AND start_time > :now
                 AND capacity_reserved + capacity_waitlist < capacity_total RETURNING id""",
            id=slot_id, now=now,
        )
    return row is not None


async def slots_to_rebalance(conn: AsyncConnection, now: datetime, limit: int = 50) -> list[uuid.UUID]:
    """Slots with a free seat while people wait (a seat freed in a race with someone joining)."""
    rows = await all_rows(
        conn,
        """SELECT s.id FROM slots s
           WHERE s.sellable AND s.start_time > :now AND s.capacity_reserved + s.capacity_waitlist < s.capacity_total
             AND EXISTS (SELECT 1 FROM waitlist w WHERE w.slot_id = s.id AND w.state = 'WAITING')
           LIMIT :l""",
        now=now, l=limit,
    )
    return [r["id"] for r in rows]


async def try_lock(conn: AsyncConnection, slot_id: uuid.UUID) -> bool:
    """Lock a slot unless someone holds it (the sweeper never queues behind a hot slot)."""
    row = await one(conn, "SELECT id FROM slots WHERE id = :id FOR UPDATE SKIP LOCKED", id=slot_id)
    return row is not None
