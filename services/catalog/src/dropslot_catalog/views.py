"""Rows -> what the API answers (JSON-ready dicts) and what events carry (snapshots).

Times are rendered as UTC ISO 8601 with a `Z`, ids as strings, coordinates as numbers, the
same way everywhere, so cached and uncached answers are byte-for-byte alike.
"""

from __future__ import annotations

import base64
import binascii
import json
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from dropslot_contracts import ReservationRule
from dropslot_contracts.events.catalog import BranchSnapshot, DropSnapshot

Row = Mapping[str, Any]


def iso(value: datetime | None) -> str | None:
    if value is None:
        return None
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _num(value: Any) -> float | None:
    return None if value is None else float(value)


def _json(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str | bytes) else value


def store_view(row: Row) -> dict[str, Any]:
    return {
        "id": str(row["id"]),
        "name": row["name"],
        "slug": row["slug"],
        "logo_url": row["logo_url"],
        "created_at": iso(row["created_at"]),
        "updated_at": iso(row["updated_at"]),
    }


def branch_view(row: Row) -> dict[str, Any]:
    return {
        "id": str(row["id"]),
        "store_id": str(row["store_id"]),
        "name": row["name"],
        "address": row["address"],
        "lat": _num(row["lat"]),
        "lng": _num(row["lng"]),
        "phone": row["phone"],
        "opening_hours": _json(row["opening_hours"]),
        "created_at": iso(row["created_at"]),
        "updated_at": iso(row["updated_at"]),
    }


def product_view(row: Row) -> dict[str, Any]:
    return {
        "id": str(row["id"]),
        "store_id": str(row["store_id"]),
        "name": row["name"],
        "sku": row["sku"],
        "description": row["description"],
        "images": _json(row["images"]),
        "price_cents": row["price_cents"],
        "currency": row["currency"],
        "is_active": row["is_active"],
        "created_at": iso(row["created_at"]),
        "updated_at": iso(row["updated_at"]),
    }


def drop_view(row: Row) -> dict[str, Any]:
    """A drop with its product, store and branches (a row of `repo.DROP_VIEW`)."""
    branches = [
        {"id": str(b["id"]), "name": b["name"], "address": b["address"], "lat": _num(b["lat"]),
         "lng": _num(b["lng"]), "phone": b["phone"], "opening_hours": b["opening_hours"]}
        for b in _json(row["branches"]) or []
    ]
    out = {
        "id": str(row["id"]),
        "store_id": str(row["store_id"]),
        "product_id": str(row["product_id"]),
        "name": row["name"],
        "status": row["status"],
        "starts_at": iso(row["starts_at"]),
        "ends_at": iso(row["ends_at"]),
        "opens_at": iso(row["opens_at"]),
        "reservation_rule": _json(row["reservation_rule"]),
        "price_cents": row["price_cents"],
        "currency": row["currency"],
        "requires_payment": row["price_cents"] > 0,
        "published_at": iso(row["published_at"]),
        "live_at": iso(row["live_at"]),
        "ended_at": iso(row["ended_at"]),
        "cancelled_at": iso(row["cancelled_at"]),
        "cancel_reason": row["cancel_reason"],
        "created_at": iso(row["created_at"]),
        "updated_at": iso(row["updated_at"]),
        "product": {
            "id": str(row["product_id"]),
            "name": row["product_name"],
            "sku": row["product_sku"],
            "description": row["product_description"],
            "images": _json(row["product_images"]),
            "price_cents": row["price_cents"],
            "currency": row["currency"],
            "is_active": row["product_is_active"],
        },
        "store": {
            "id": str(row["store_id"]),
            "name": row["store_name"],
            "slug": row["store_slug"],
            "logo_url": row["store_logo_url"],
        },
        "branches": branches,
    }
    if "distance_km" in row and row["distance_km"] is not None:
        out["distance_km"] = round(float(row["distance_km"]), 3)
    return out


def drop_snapshot(row: Row) -> DropSnapshot:
    """All booking, notifications and webhooks need about a drop, with the full rule."""
    rule = ReservationRule.parse(_json(row["reservation_rule"]))
    if rule.opens_at is None and row["opens_at"] is not None:
        rule = rule.model_copy(update={"opens_at": row["opens_at"]})
    return DropSnapshot(
        drop_id=row["id"],
        store_id=row["store_id"],
        tenant_key=row["tenant_key"],
        store_name=row["store_name"],
        store_slug=row["store_slug"],
        product_id=row["product_id"],
        product_name=row["product_name"],
        name=row["name"],
        status=row["status"],
        starts_at=row["starts_at"],
        ends_at=row["ends_at"],
        opens_at=row["opens_at"],
        reservation_rule=rule.as_json(),
        price_cents=row["price_cents"],
        currency=row["currency"],
        requires_payment=row["price_cents"] > 0,
        published_at=row["published_at"],
        branches=[
            BranchSnapshot(id=b["id"], name=b["name"], address=b["address"], lat=float(b["lat"]),
                           lng=float(b["lng"]), phone=b["phone"], opening_hours=b["opening_hours"])
            for b in _json(row["branches"]) or []
        ],
    )


def branch_snapshot(row: Row) -> BranchSnapshot:
    return BranchSnapshot(id=row["id"], name=row["name"], address=row["address"], lat=float(row["lat"]),
                          lng=float(row["lng"]), phone=row["phone"], opening_hours=_json(row["opening_hours"]))


# --- cursors: opaque to clients, (sort key, id) inside ------------------------------------------
def encode_cursor(key: datetime, id_: uuid.UUID | str) -> str:
    raw = json.dumps([iso(key), str(id_)], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, uuid.UUID]:
    """ValueError on anything that is not a cursor we made."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        key, id_ = json.loads(raw)
        at = datetime.fromisoformat(key.replace("Z", "+00:00"))
        if at.tzinfo is None:
            raise ValueError("naive time in cursor")
        return at, uuid.UUID(id_)
    except (binascii.Error, json.JSONDecodeError, TypeError, AttributeError, UnicodeDecodeError) as exc:
        raise ValueError("invalid cursor") from exc


def page(items: list[dict[str, Any]], rows: list[Row], limit: int, key: str) -> dict[str, Any]:
    """`{items, next_cursor}` from `limit + 1` fetched rows."""
    more = len(rows) > limit
    next_cursor = encode_cursor(rows[limit - 1][key], rows[limit - 1]["id"]) if more else None
    return {"items": items[:limit], "next_cursor": next_cursor}
