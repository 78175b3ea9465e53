"""The local copy of catalog's drops (and of the stores they belong to)."""

from __future__ import annotations

import json
import uuid
from datetime import datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from .sql import Row, execute, one

_UPSERT = """
INSERT INTO drops (
    drop_id, store_id, tenant_key, store_name, product_id, product_name, name, status, starts_at, ends_at,
    opens_at, rule, max_per_user, hold_minutes, waitlist_enabled, waitlist_offer_minutes,
    cancel_until_minutes_before, refund_on_cancel, require_verified_email, price_cents, currency, event_at,
    cancelled_at, updated_at)
VALUES (
    :drop_id, :store_id, :tenant_key, :store_name, :product_id, :product_name, :name, :status, :starts_at,
    :ends_at, :opens_at, CAST(:rule AS jsonb), :max_per_user, :hold_minutes, :waitlist_enabled,
    :waitlist_offer_minutes, :cancel_until_minutes_before, :refund_on_cancel, :require_verified_email,
    :price_cents, :currency, :event_at, :cancelled_at, now())
ON CONFLICT (drop_id) DO UPDATE SET
    store_id = EXCLUDED.store_id, tenant_key = EXCLUDED.tenant_key, store_name = EXCLUDED.store_name,
    product_id = EXCLUDED.product_id, product_name = EXCLUDED.product_name, name = EXCLUDED.name,
    status = EXCLUDED.status, starts_at = EXCLUDED.starts_at, ends_at = EXCLUDED.ends_at,
    opens_at = EXCLUDED.opens_at, rule = EXCLUDED.rule, max_per_user = EXCLUDED.max_per_user,
    hold_minutes = EXCLUDED.hold_minutes, waitlist_enabled = EXCLUDED.waitlist_enabled,
    waitlist_offer_minutes = EXCLUDED.waitlist_offer_minutes,
    cancel_until_minutes_before = EXCLUDED.cancel_until_minutes_before,
    refund_on_cancel = EXCLUDED.refund_on_cancel, require_verified_email = EXCLUDED.require_verified_email,
    price_cents = EXCLUDED.price_cents, currency = EXCLUDED.currency, event_at = EXCLUDED.event_at,
    cancelled_at = COALESCE(drops.cancelled_at, EXCLUDED.cancelled_at), updated_at = now()
-- Events can arrive out of order (retries): an older snapshot never overwrites a newer one,
-- and a cancelled drop stays cancelled.
WHERE drops.event_at <= EXCLUDED.event_at AND drops.status <> 'CANCELLED'
RETURNING status
"""


async def upsert_drop(conn: AsyncConnection, values: dict[str, Any]) -> str | None:
    """Apply a drop snapshot; returns the stored status, or None when the snapshot was stale."""
    params = {**values, "rule": json.dumps(values["rule"])}
    row = await one(conn, _UPSERT, **params)
    return row["status"] if row else None


async def sync_slots_sellable(conn: AsyncConnection, drop_id: uuid.UUID, sellable: bool) -> int:
    """Mirror "the drop is LIVE" onto its slots (the hot path checks it on the slot row).

    Waits for in-flight reserve transactions holding a slot's lock, so once this commits no
    reservation of a closed drop can still commit."""
    return await execute(
        conn,
        "UPDATE slots SET sellable = :s, updated_at = now() WHERE drop_id = :d AND sellable IS DISTINCT FROM :s",
        d=drop_id, s=sellable,
    )


async def get_drop(conn: AsyncConnection, drop_id: uuid.UUID, *, lock: bool = False) -> Row | None:
    return await one(conn, "SELECT * FROM drops WHERE drop_id = :d" + (" FOR SHARE" if lock else ""), d=drop_id)


async def upsert_store(conn: AsyncConnection, store_id: uuid.UUID, tenant_key: str, name: str | None) -> None:
    await execute(
        conn,
        """INSERT INTO stores (store_id, tenant_key, name) VALUES (:s, :t, :n)
           ON CONFLICT (store_id) DO UPDATE SET tenant_key = EXCLUDED.tenant_key,
               name = COALESCE(EXCLUDED.name, stores.name), updated_at = now()""",
        s=store_id, t=tenant_key, n=name,
    )


async def tenant_of_store(conn: AsyncConnection, store_id: uuid.UUID) -> str | None:
    row = await one(
        conn,
        """SELECT tenant_key FROM stores WHERE store_id = :s
           UNION ALL SELECT tenant_key FROM drops WHERE store_id = :s LIMIT 1""",
        s=store_id,
    )
    return row["tenant_key"] if row else None


async def cancelled_drops_to_clean(conn: AsyncConnection, limit: int = 10) -> list[uuid.UUID]:
    from .sql import all_rows

    rows = await all_rows(
        conn, "SELECT drop_id FROM drops WHERE status = 'CANCELLED' AND NOT cleanup_done LIMIT :l", l=limit
    )
    return [r["drop_id"] for r in rows]


async def mark_cleanup_done(conn: AsyncConnection, drop_id: uuid.UUID) -> None:
    await execute(conn, "UPDATE drops SET cleanup_done = true WHERE drop_id = :d", d=drop_id)


def drop_values(snapshot: Any, rule: Any, status: str, event_at: datetime) -> dict[str, Any]:
    """Row values of a catalog `DropSnapshot` with its parsed rule."""
    return {
        "drop_id": snapshot.drop_id,
        "store_id": snapshot.store_id,
        "tenant_key": snapshot.tenant_key,
        "store_name": snapshot.store_name,
        "product_id": snapshot.product_id,
        "product_name": snapshot.product_name,
        "name": snapshot.name,
        "status": status,
        "starts_at": snapshot.starts_at,
        "ends_at": snapshot.ends_at,
        "opens_at": snapshot.opens_at or rule.opens_at,
        "rule": rule.as_json(),
        "max_per_user": rule.max_per_user,
        "hold_minutes": rule.hold_minutes,
        "waitlist_enabled": rule.waitlist_enabled,
        "waitlist_offer_minutes": rule.waitlist_offer_minutes,
        "cancel_until_minutes_before": rule.cancel_until_minutes_before,
        "refund_on_cancel": rule.refund_on_cancel,
        "require_verified_email": rule.require_verified_email,
        "price_cents": snapshot.price_cents,
        "currency": snapshot.currency,
        "event_at": event_at,
        "cancelled_at": event_at if status == "CANCELLED" else None,
    }
