"""All of catalog's SQL. Functions take the unit of work's connection; the caller decides
the transaction and the tenant (row-level security does the rest, see the 0002 migration).

Tenant-scoped lookups still filter by `store_id` explicitly: with a tenant set, the
`public_read` policies also show other stores' published rows, which an admin call for
one store must not pick up.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from ..domain.geo import BoundingBox

Row = Mapping[str, Any]


def constraint_of(exc: IntegrityError) -> str | None:
    """Name of the violated constraint (asyncpg's error hangs under SQLAlchemy's)."""
    cause: Any = exc.orig
    for _ in range(3):
        name = getattr(cause, "constraint_name", None)
        if name:
            return str(name)
        cause = getattr(cause, "__cause__", None)
        if cause is None:
            break
    return None


def _jsonb(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


async def _one(conn: AsyncConnection, sql: str, params: dict[str, Any]) -> Row | None:
    res = await conn.execute(text(sql), params)
    row = res.mappings().first()
    return dict(row) if row is not None else None


async def _all(conn: AsyncConnection, sql: str, params: dict[str, Any]) -> list[Row]:
    res = await conn.execute(text(sql), params)
    return [dict(r) for r in res.mappings().all()]


def _set_clause(
    fields: Mapping[str, Any], allowed: Sequence[str], jsonb: Sequence[str] = ()
) -> tuple[str, dict[str, Any]]:
    """`SET a = :a, ...` from whitelisted column names (never from client input)."""
    parts, params = [], {}
    for name, value in fields.items():
        if name not in allowed:
            raise ValueError(f"column {name} is not updatable")
        if name in jsonb:
            parts.append(f"{name} = CAST(:{name} AS jsonb)")
            params[name] = _jsonb(value)
        else:
            parts.append(f"{name} = :{name}")
            params[name] = value
    parts.append("updated_at = now()")
    return ", ".join(parts), params


def _after(cursor: tuple[Any, uuid.UUID] | None, cols: str) -> str:
    return f" AND ({cols}) > (:c_key, :c_id)" if cursor else ""


def _cursor_params(cursor: tuple[Any, uuid.UUID] | None) -> dict[str, Any]:
    return {"c_key": cursor[0], "c_id": cursor[1]} if cursor else {}


# --- stores (the tenant directory: no row-level security) ----------------------------------------
STORE_COLS = "id, name, slug, tenant_key, logo_url, created_by, created_at, updated_at"


async def insert_store(conn: AsyncConnection, *, id: uuid.UUID, name: str, slug: str, tenant_key: str,
                       logo_url: str | None, created_by: uuid.UUID) -> Row | None:
    """None when the slug is taken (no aborted transaction: ON CONFLICT)."""
    return await _one(conn, f"""
        INSERT INTO stores (id, name, slug, tenant_key, logo_url, created_by)
        VALUES (:id, :name, :slug, :tk, :logo, :by)
        ON CONFLICT (slug) DO NOTHING
        RETURNING {STORE_COLS}""",
        {"id": id, "name": name, "slug": slug, "tk": tenant_key, "logo": logo_url, "by": created_by})


async def get_store(conn: AsyncConnection, store_id: uuid.UUID, *, for_update: bool = False) -> Row | None:
    lock = " FOR UPDATE" if for_update else ""
    return await _one(conn, f"SELECT {STORE_COLS} FROM stores WHERE id = :id{lock}", {"id": store_id})


async def get_store_by_slug(conn: AsyncConnection, slug: str) -> Row | None:
    return await _one(conn, f"SELECT {STORE_COLS} FROM stores WHERE slug = :slug", {"slug": slug})


async def stores_by_ids(conn: AsyncConnection, ids: Sequence[uuid.UUID]) -> list[Row]:
    if not ids:
        return []
    return await _all(conn, f"SELECT {STORE_COLS} FROM stores WHERE id = ANY(:ids) ORDER BY created_at, id",
                      {"ids": list(ids)})


async def list_stores(conn: AsyncConnection, *, cursor: tuple[datetime, uuid.UUID] | None, limit: int,
                      ids: Sequence[uuid.UUID] | None = None) -> list[Row]:
    only = " AND id = ANY(:ids)" if ids is not None else ""
    return await _all(conn, f"""
        SELECT {STORE_COLS} FROM stores WHERE true{only}{_after(cursor, "created_at, id")}
        ORDER BY created_at, id LIMIT :limit""",
        {"limit": limit, **_cursor_params(cursor), **({"ids": list(ids)} if ids is not None else {})})


async def update_store(conn: AsyncConnection, store_id: uuid.UUID, fields: Mapping[str, Any]) -> Row | None:
    sets, params = _set_clause(fields, ("name", "slug", "logo_url"))
    return await _one(conn, f"UPDATE stores SET {sets} WHERE id = :id RETURNING {STORE_COLS}",
                      {**params, "id": store_id})


# --- branches -----------------------------------------------------------------------------------
BRANCH_COLS = "id, store_id, name, address, lat, lng, phone, opening_hours, created_at, updated_at"


async def insert_branch(conn: AsyncConnection, *, id: uuid.UUID, store_id: uuid.UUID, tenant_key: str,
                        fields: Mapping[str, Any]) -> Row:
    row = await _one(conn, f"""
        INSERT INTO branches (id, store_id, tenant_key, name, address, lat, lng, phone, opening_hours)
        VALUES (:id, :sid, :tk, :name, :address, :lat, :lng, :phone, CAST(:hours AS jsonb))
        RETURNING {BRANCH_COLS}""",
        {"id": id, "sid": store_id, "tk": tenant_key, "name": fields["name"], "address": fields["address"],
         "lat": float(fields["lat"]), "lng": float(fields["lng"]), "phone": fields.get("phone"),
         "hours": _jsonb(fields.get("opening_hours") or {})})
    assert row is not None
    return row


async def get_branch(conn: AsyncConnection, store_id: uuid.UUID, branch_id: uuid.UUID,
                     *, for_update: bool = False) -> Row | None:
    lock = " FOR UPDATE" if for_update else ""
    return await _one(conn, f"SELECT {BRANCH_COLS} FROM branches WHERE id = :id AND store_id = :sid{lock}",
                      {"id": branch_id, "sid": store_id})


async def list_branches(conn: AsyncConnection, store_id: uuid.UUID, *, cursor: tuple[datetime, uuid.UUID] | None,
                        limit: int) -> list[Row]:
    return await _all(conn, f"""
        SELECT {BRANCH_COLS} FROM branches WHERE store_id = :sid{_after(cursor, "created_at, id")}
        ORDER BY created_at, id LIMIT :limit""", {"sid": store_id, "limit": limit, **_cursor_params(cursor)})


async def update_branch(conn: AsyncConnection, store_id: uuid.UUID, branch_id: uuid.UUID,
                        fields: Mapping[str, Any]) -> Row | None:
    fields = {k: (float(v) if k in ("lat", "lng") else v) for k, v in fields.items()}
    sets, params = _set_clause(fields, ("name", "address", "lat", "lng", "phone", "opening_hours"),
                               jsonb=("opening_hours",))
    return await _one(conn, f"UPDATE branches SET {sets} WHERE id = :id AND store_id = :sid RETURNING {BRANCH_COLS}",
                      {**params, "id": branch_id, "sid": store_id})


async def delete_branch(conn: AsyncConnection, store_id: uuid.UUID, branch_id: uuid.UUID) -> Row | None:
    return await _one(conn, f"DELETE FROM branches WHERE id = :id AND store_id = :sid RETURNING {BRANCH_COLS}",
                      {"id": branch_id, "sid": store_id})


# --- products -----------------------------------------------------------------------------------
PRODUCT_COLS = ("id, store_id, name, sku, description, images, price_cents, currency, is_active, "
                "created_at, updated_at")


async def insert_product(conn: AsyncConnection, *, id: uuid.UUID, store_id: uuid.UUID, tenant_key: str,
                         fields: Mapping[str, Any]) -> Row | None:
    """None when the SKU is taken in this store."""
    return await _one(conn, f"""
        INSERT INTO products (id, store_id, tenant_key, name, sku, description, images, price_cents, currency,
                              is_active)
        VALUES (:id, :sid, :tk, :name, :sku, :description, CAST(:images AS jsonb), :price, :currency, :active)
        ON CONFLICT (store_id, sku) DO NOTHING
        RETURNING {PRODUCT_COLS}""",
        {"id": id, "sid": store_id, "tk": tenant_key, "name": fields["name"], "sku": fields["sku"],
         "description": fields.get("description"), "images": _jsonb(fields.get("images") or []),
         "price": fields["price_cents"], "currency": fields["currency"], "active": fields.get("is_active", True)})


async def get_product(conn: AsyncConnection, store_id: uuid.UUID, product_id: uuid.UUID,
                      *, for_update: bool = False) -> Row | None:
    lock = " FOR UPDATE" if for_update else ""
    return await _one(conn, f"SELECT {PRODUCT_COLS} FROM products WHERE id = :id AND store_id = :sid{lock}",
                      {"id": product_id, "sid": store_id})


async def list_products(conn: AsyncConnection, store_id: uuid.UUID, *, cursor: tuple[datetime, uuid.UUID] | None,
                        limit: int, active: bool | None = None) -> list[Row]:
    flt = " AND is_active = :active" if active is not None else ""
    return await _all(conn, f"""
        SELECT {PRODUCT_COLS} FROM products WHERE store_id = :sid{flt}{_after(cursor, "created_at, id")}
        ORDER BY created_at, id LIMIT :limit""",
        {"sid": store_id, "limit": limit, **_cursor_params(cursor), **({"active": active} if flt else {})})


async def update_product(conn: AsyncConnection, store_id: uuid.UUID, product_id: uuid.UUID,
                         fields: Mapping[str, Any]) -> Row | None:
    sets, params = _set_clause(fields, ("name", "sku", "description", "images", "price_cents", "currency",
                                        "is_active"), jsonb=("images",))
    return await _one(conn, f"UPDATE products SET {sets} WHERE id = :id AND store_id = :sid RETURNING {PRODUCT_COLS}",
                      {**params, "id": product_id, "sid": store_id})


async def lock_open_drops_of_product(conn: AsyncConnection, store_id: uuid.UUID,
                                     product_id: uuid.UUID) -> list[Row]:
    """The product's drops that are not over, locked: a drop cannot go LIVE (the scheduler
    updates it) between our price check and our commit."""
    return await _all(conn, """
        SELECT id, status FROM drops
        WHERE product_id = :pid AND store_id = :sid AND status IN ('DRAFT', 'SCHEDULED', 'LIVE')
        ORDER BY id FOR UPDATE""", {"pid": product_id, "sid": store_id})


async def find_store_of(conn: AsyncConnection, table: str, row_id: uuid.UUID) -> uuid.UUID | None:
    """The store of a branch/product/drop, as far as the current tenant and the public
    policies let this transaction see it."""
    if table not in ("products", "drops", "branches"):  # an identifier, never client input
        raise ValueError(f"not a tenant table: {table}")
    row = await _one(conn, f"SELECT store_id FROM {table} WHERE id = :id", {"id": row_id})
    return row["store_id"] if row else None


# --- drops --------------------------------------------------------------------------------------
DROP_COLS = ("id, store_id, tenant_key, product_id, name, starts_at, ends_at, opens_at, reservation_rule, status, "
             "published_at, live_at, ended_at, cancelled_at, cancel_reason, created_at, updated_at")

# A drop with its store, product and branches: what API answers and event snapshots carry.
DROP_VIEW_TEMPLATE = """
SELECT d.id, d.store_id, d.tenant_key, d.product_id, d.name, d.status, d.starts_at, d.ends_at, d.opens_at,
       d.reservation_rule, d.published_at, d.live_at, d.ended_at, d.cancelled_at, d.cancel_reason,
       d.created_at, d.updated_at,
       s.name AS store_name, s.slug AS store_slug, s.logo_url AS store_logo_url,
       p.name AS product_name, p.sku AS product_sku, p.description AS product_description,
       p.images AS product_images, p.price_cents, p.currency, p.is_active AS product_is_active,
       COALESCE(br.items, '[]'::json) AS branches{extra}
FROM {source}
JOIN stores s ON s.id = d.store_id
JOIN products p ON p.id = d.product_id
LEFT JOIN LATERAL (
    SELECT json_agg(json_build_object(
               'id', b.id, 'name', b.name, 'address', b.address, 'lat', b.lat, 'lng', b.lng,
               'phone', b.phone, 'opening_hours', b.opening_hours) ORDER BY b.created_at, b.id) AS items
    FROM branches b WHERE b.store_id = d.store_id
) br ON true
"""
DROP_VIEW = DROP_VIEW_TEMPLATE.format(extra="", source="drops d")


async def insert_drop(conn: AsyncConnection, *, id: uuid.UUID, store_id: uuid.UUID, tenant_key: str,
                      product_id: uuid.UUID, name: str, starts_at: datetime, ends_at: datetime,
                      rule: dict[str, Any]) -> None:
    await conn.execute(text("""
        INSERT INTO drops (id, store_id, tenant_key, product_id, name, starts_at, ends_at, reservation_rule)
        VALUES (:id, :sid, :tk, :pid, :name, :starts, :ends, CAST(:rule AS jsonb))"""),
        {"id": id, "sid": store_id, "tk": tenant_key, "pid": product_id, "name": name, "starts": starts_at,
         "ends": ends_at, "rule": _jsonb(rule)})


async def get_drop(conn: AsyncConnection, store_id: uuid.UUID, drop_id: uuid.UUID,
                   *, for_update: bool = False) -> Row | None:
    lock = " FOR UPDATE" if for_update else ""
    return await _one(conn, f"SELECT {DROP_COLS} FROM drops WHERE id = :id AND store_id = :sid{lock}",
                      {"id": drop_id, "sid": store_id})


async def update_drop(conn: AsyncConnection, store_id: uuid.UUID, drop_id: uuid.UUID,
                      fields: Mapping[str, Any]) -> None:
    sets, params = _set_clause(
        fields,
        ("name", "product_id", "starts_at", "ends_at", "opens_at", "reservation_rule", "status", "published_at",
         "live_at", "ended_at", "cancelled_at", "cancel_reason"),
        jsonb=("reservation_rule",),
    )
    await conn.execute(text(f"UPDATE drops SET {sets} WHERE id = :id AND store_id = :sid"),
                       {**params, "id": drop_id, "sid": store_id})


async def drop_views(conn: AsyncConnection, ids: Sequence[uuid.UUID]) -> list[Row]:
    if not ids:
        return []
    return await _all(conn, DROP_VIEW + " WHERE d.id = ANY(:ids) ORDER BY d.starts_at, d.id",
                      {"ids": list(ids)})


async def drop_view(conn: AsyncConnection, drop_id: uuid.UUID, *, store_id: uuid.UUID | None = None,
                    public: bool = False) -> Row | None:
    where = " WHERE d.id = :id"
    params: dict[str, Any] = {"id": drop_id}
    if store_id is not None:
        where += " AND d.store_id = :sid"
        params["sid"] = store_id
    if public:
        # Redundant with row-level security when no tenant is set; explicit so a caller
        # with a tenant set still gets the public answer only.
        where += " AND d.status <> 'DRAFT'"
    return await _one(conn, DROP_VIEW + where, params)


async def list_store_drops(conn: AsyncConnection, store_id: uuid.UUID, *, statuses: Sequence[str] | None,
                           cursor: tuple[datetime, uuid.UUID] | None, limit: int) -> list[Row]:
    flt = " AND d.status = ANY(:statuses)" if statuses else ""
    return await _all(conn, DROP_VIEW + f"""
        WHERE d.store_id = :sid{flt}{_after(cursor, "d.created_at, d.id")}
        ORDER BY d.created_at, d.id LIMIT :limit""",
        {"sid": store_id, "limit": limit, **_cursor_params(cursor),
         **({"statuses": list(statuses or ())} if flt else {})})


# --- public browsing ----------------------------------------------------------------------------
def _distance(alias: str) -> str:
    """Great-circle distance (km) from (:near_lat, :near_lng) to a branch."""
    return (
        f"(6371.0088 * 2 * asin(least(1.0, sqrt("
        f"power(sin(radians({alias}.lat - :near_lat) / 2), 2) + "
        f"cos(radians(:near_lat)) * cos(radians({alias}.lat)) * "
        f"power(sin(radians({alias}.lng - :near_lng) / 2), 2)))))"
    )


PUBLIC_STATUS_SQL = {
    # Inlined constants (never client text), so the planner can match the partial indexes.
    frozenset({"LIVE"}): "d.status = 'LIVE'",
    frozenset({"SCHEDULED"}): "d.status = 'SCHEDULED'",
    frozenset({"SCHEDULED", "LIVE"}): "d.status IN ('SCHEDULED', 'LIVE')",
}


def public_drops_sql(*, statuses: frozenset[str], store: bool, window_from: bool, window_to: bool,
                     near: BoundingBox | None, cursor: bool) -> str:
    """One page of public drops: the page's ids are chosen first (filters, order, limit,
    served by the partial indexes), and only those rows are joined to their product,
    store and branches."""
    where = [PUBLIC_STATUS_SQL[statuses]]
    if store:
        where.append("d.store_id = :store_id")
    if window_from:
        where.append("d.ends_at > :window_from")
    if window_to:
        where.append("d.starts_at < :window_to")
    extra = ""
    if near is not None:
        # Float comparisons are LEAKPROOF, so the box is an index condition even under
        # row-level security; the exact distance is checked on what the box lets through.
        box = "nb.lat BETWEEN :lat_min AND :lat_max"
        if near.lng_min is not None:
            box += " AND nb.lng BETWEEN :lng_min AND :lng_max"
        where.append(f"d.store_id IN (SELECT nb.store_id FROM branches nb WHERE {box} "
                     f"AND {_distance('nb')} <= :radius_km)")
        extra = (f",\n       (SELECT min({_distance('nd')}) FROM branches nd "
                 "WHERE nd.store_id = d.store_id) AS distance_km")
    if cursor:
        where.append("(d.starts_at, d.id) > (:c_key, :c_id)")
    page = (f"(SELECT d.id FROM drops d WHERE {' AND '.join(where)} "
            "ORDER BY d.starts_at, d.id LIMIT :limit) page JOIN drops d ON d.id = page.id")
    return DROP_VIEW_TEMPLATE.format(extra=extra, source=page) + " ORDER BY d.starts_at, d.id"


async def public_drops(conn: AsyncConnection, *, statuses: frozenset[str], store_id: uuid.UUID | None,
                       window_from: datetime | None, window_to: datetime | None,
                       near: tuple[float, float, float, BoundingBox] | None,
                       cursor: tuple[datetime, uuid.UUID] | None, limit: int) -> list[Row]:
    sql = public_drops_sql(statuses=statuses, store=store_id is not None, window_from=window_from is not None,
                           window_to=window_to is not None, near=near[3] if near else None, cursor=cursor is not None)
    params: dict[str, Any] = {"limit": limit, **_cursor_params(cursor)}
    if store_id is not None:
        params["store_id"] = store_id
    if window_from is not None:
        params["window_from"] = window_from
    if window_to is not None:
        params["window_to"] = window_to
    if near is not None:
        lat, lng, radius, box = near
        params.update(near_lat=lat, near_lng=lng, radius_km=radius, lat_min=box.lat_min, lat_max=box.lat_max)
        if box.lng_min is not None and box.lng_max is not None:
            params.update(lng_min=box.lng_min, lng_max=box.lng_max)
    return await _all(conn, sql, params)


# --- the scheduler ------------------------------------------------------------------------------
async def due_drops(conn: AsyncConnection, *, limit: int) -> list[Row]:
    """Drops whose next move is due, across all stores. Run without a tenant: SCHEDULED and
    LIVE drops are public, so the public policy shows them; the moves themselves run in
    each drop's own tenant."""
    return await _all(conn, """
        (SELECT id, store_id, tenant_key, 'LIVE' AS target FROM drops
          WHERE status = 'SCHEDULED' AND opens_at <= now() ORDER BY opens_at LIMIT :limit)
        UNION ALL
        (SELECT id, store_id, tenant_key, 'ENDED' AS target FROM drops
          WHERE status = 'LIVE' AND ends_at <= now() ORDER BY ends_at LIMIT :limit)""", {"limit": limit})


async def next_due_at(conn: AsyncConnection) -> datetime | None:
    row = await _one(conn, """
        SELECT least((SELECT min(opens_at) FROM drops WHERE status = 'SCHEDULED'),
                     (SELECT min(ends_at) FROM drops WHERE status = 'LIVE')) AS at""", {})
    return row["at"] if row else None


async def claim_transition(conn: AsyncConnection, drop_id: uuid.UUID, target: str) -> bool:
    """Make the clock's move if it is still due: a conditional update, so when several
    replicas race for the same drop exactly one moves it (the others wait on the row lock,
    then find the condition false). SKIP LOCKED lets a replica pass over a drop another
    replica is moving right now instead of waiting for it."""
    if target == "LIVE":
        sql = """UPDATE drops SET status = 'LIVE', live_at = now(), updated_at = now()
                 WHERE id = (SELECT id FROM drops WHERE id = :id AND status = 'SCHEDULED' AND opens_at <= now()
                             FOR UPDATE SKIP LOCKED)
                 RETURNING id"""
    else:
        sql = """UPDATE drops SET status = 'ENDED', ended_at = now(), updated_at = now()
                 WHERE id = (SELECT id FROM drops WHERE id = :id AND status = 'LIVE' AND ends_at <= now()
                             FOR UPDATE SKIP LOCKED)
                 RETURNING id"""
    return await _one(conn, sql, {"id": drop_id}) is not None


async def db_now(conn: AsyncConnection) -> datetime:
    row = await _one(conn, "SELECT now() AS now", {})
    assert row is not None
    return row["now"]  # type: ignore[no-any-return]
