"""Reservations (outside the hot path's insert): reads, state changes, per-user counters."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from .sql import Row, all_rows, execute, one

ACTIVE_SQL = "('PENDING', 'CONFIRMED', 'CHECKED_IN')"

# A reservation with what its snapshot and body need from its slot and drop.
VIEW = """
SELECT r.*, s.start_time AS slot_start, s.end_time AS slot_end, d.name AS drop_name, d.product_name,
       d.store_name, d.status AS drop_status, d.cancel_until_minutes_before, d.refund_on_cancel,
       d.max_per_user, d.rule AS drop_rule
FROM reservations r JOIN slots s ON s.id = r.slot_id JOIN drops d ON d.drop_id = r.drop_id
"""


async def get(conn: AsyncConnection, reservation_id: uuid.UUID, *, lock: bool = False) -> Row | None:
    return await one(conn, VIEW + " WHERE r.id = :id" + (" FOR UPDATE OF r" if lock else ""), id=reservation_id)


async def list_for_user(
    conn: AsyncConnection, user_id: uuid.UUID, *, state: str | None, after: tuple[datetime, uuid.UUID] | None,
    limit: int,
) -> list[Row]:
    cond = " AND (r.created_at, r.id) < (:cc, :ci)" if after else ""
    cond += " AND r.state = :st" if state else ""
    return await all_rows(
        conn,
        VIEW + f" WHERE r.user_id = :u {cond} ORDER BY r.created_at DESC, r.id DESC LIMIT :l",
        u=user_id, st=state, l=limit, cc=after[0] if after else None, ci=after[1] if after else None,
    )


async def list_for_store(
    conn: AsyncConnection, store_id: uuid.UUID, *, slot_id: uuid.UUID | None, state: str | None,
    after: tuple[datetime, uuid.UUID] | None, limit: int,
) -> list[Row]:
    cond = " AND (r.created_at, r.id) < (:cc, :ci)" if after else ""
    cond += " AND r.state = :st" if state else ""
    cond += " AND r.slot_id = :sl" if slot_id else ""
    return await all_rows(
        conn,
        VIEW + f" WHERE r.store_id = :s {cond} ORDER BY r.created_at DESC, r.id DESC LIMIT :l",
        s=store_id, st=state, sl=slot_id, l=limit, cc=after[0] if after else None,
        ci=after[1] if after else None,
    )


async def transition(
    conn: AsyncConnection, reservation_id: uuid.UUID, *, from_states: tuple[str, ...], to: str, now: datetime,
    **extra: Any,
) -> bool:
    """Move a reservation to `to` if it is in one of `from_states` (a conditional update, so
    two replicas reacting to the same fact cannot both win)."""
    sets = ["state = :to", "updated_at = :now"]
    stamp = {"CONFIRMED": "confirmed_at", "CANCELLED": "cancelled_at", "EXPIRED": "expired_at",
             "CHECKED_IN": "checked_in_at"}.get(to)
    if stamp:
        sets.append(f"{stamp} = :now")
    for column in extra:
        sets.append(f"{column} = :x_{column}")
    params = {f"x_{k}": v for k, v in extra.items()}
    rows = await execute(
        conn,
        f"UPDATE reservations SET {', '.join(sets)} WHERE id = :id AND state = ANY(:from_states)",
        id=reservation_id, to=to, now=now, from_states=list(from_states), **params,
    )
    return rows == 1


async def update_fields(conn: AsyncConnection, reservation_id: uuid.UUID, **fields: Any) -> None:
    sets = ", ".join(f"{k} = :x_{k}" for k in fields)
    await execute(
        conn, f"UPDATE reservations SET {sets}, updated_at = now() WHERE id = :id",
        id=reservation_id, **{f"x_{k}": v for k, v in fields.items()},
    )


async def has_active_in_slot(conn: AsyncConnection, slot_id: uuid.UUID, user_id: uuid.UUID) -> bool:
    row = await one(
        conn, f"SELECT 1 AS x FROM reservations WHERE slot_id = :s AND user_id = :u AND state IN {ACTIVE_SQL}",
        s=slot_id, u=user_id,
    )
    return row is not None


async def insert(conn: AsyncConnection, values: dict[str, Any]) -> bool:
    """A reservation outside the hot path (a waitlist accept). False when the user already holds
    an active reservation for the slot."""
    row = await one(
        conn,
        f"""INSERT INTO reservations (
                id, slot_id, drop_id, store_id, tenant_key, user_id, state, customer_note, qr_code_url,
                checkin_token, amount_cents, currency, requires_payment, expires_at, waitlist_entry_id,
                created_at, confirmed_at, updated_at)
            VALUES (:id, :slot_id, :drop_id, :store_id, :tenant_key, :user_id, :state, :customer_note,
                :qr_code_url, :checkin_token, :amount_cents, :currency, :requires_payment, :expires_at,
                :waitlist_entry_id, :created_at, :confirmed_at, :created_at)
            ON CONFLICT (slot_id, user_id) WHERE state IN {ACTIVE_SQL} DO NOTHING
            RETURNING id""",
        **values,
    )
    return row is not None


# --- per-user counters (max_per_user) ---------------------------------------------------------
async def count_up(conn: AsyncConnection, drop_id: uuid.UUID, user_id: uuid.UUID, limit: int) -> bool:
    """One more active reservation for this user in this drop, if under the limit. The row lock
    of the upsert serialises concurrent requests of the same user."""
    row = await one(
        conn,
        """INSERT INTO drop_user_counts AS c (drop_id, user_id, active) VALUES (:d, :u, 1)
           ON CONFLICT (drop_id, user_id) DO UPDATE SET active = c.active + 1 WHERE c.active < :lim
           RETURNING active""",
        d=drop_id, u=user_id, lim=limit,
    )
    return row is not None


async def count_down(conn: AsyncConnection, pairs: list[tuple[uuid.UUID, uuid.UUID]]) -> None:
    """One fewer active reservation per (drop, user) pair; in a fixed order, so two
    transactions releasing the same users never wait on each other in a cycle."""
    for drop_id, user_id in sorted(pairs):
        await execute(
            conn, "UPDATE drop_user_counts SET active = active - 1 WHERE drop_id = :d AND user_id = :u",
            d=drop_id, u=user_id,
        )


# --- sweeper claims (FOR UPDATE SKIP LOCKED: every replica sweeps, none twice) -------------------
async def claim_lapsed_holds(conn: AsyncConnection, now: datetime, limit: int) -> list[Row]:
    return await all_rows(
        conn,
        VIEW + """ WHERE r.state = 'PENDING' AND r.expires_at <= :now
                   ORDER BY r.expires_at LIMIT :l FOR UPDATE OF r SKIP LOCKED""",
        now=now, l=limit,
    )


async def claim_reminders(conn: AsyncConnection, now: datetime, remind_before: float, limit: int) -> list[Row]:
    return await all_rows(
        conn,
        VIEW + """ WHERE r.state = 'PENDING' AND NOT r.reminded AND NOT r.hold_deferred
                     AND r.expires_at > :now
                     AND r.expires_at - make_interval(secs => :rb) <= :now
                     AND r.expires_at - make_interval(secs => :rb) > r.created_at
                   LIMIT :l FOR UPDATE OF r SKIP LOCKED""",
        now=now, rb=remind_before, l=limit,
    )


async def claim_active_of_drop(conn: AsyncConnection, drop_id: uuid.UUID, limit: int) -> list[Row]:
    return await all_rows(
        conn,
        VIEW + """ WHERE r.drop_id = :d AND r.state IN ('PENDING', 'CONFIRMED')
                    LIMIT :l FOR UPDATE OF r SKIP LOCKED""",
        d=drop_id, l=limit,
    )


async def cleanup_idempotency(conn: AsyncConnection, before: datetime, limit: int = 5000) -> int:
    return await execute(
        conn,
        """DELETE FROM idempotency_keys WHERE ctid = ANY (ARRAY(
               SELECT ctid FROM idempotency_keys WHERE created_at < :b LIMIT :l))""",
        b=before, l=limit,
    )
