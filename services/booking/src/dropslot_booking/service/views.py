"""What a reservation / waitlist entry looks like to clients (API bodies) and to other
services (event snapshots), built from one row shape (see adapters.reservations.VIEW)."""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from dropslot_contracts import Envelope, Event, TraceContext
from dropslot_contracts.events.booking import ReservationSnapshot, WaitlistEntry
from dropslot_kit import context, telemetry

from ..config import Settings
from ..domain import states


def utcnow() -> datetime:
    return datetime.now(UTC)


def iso(value: datetime | None) -> str | None:
    if value is None:
        return None
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def qr_url(settings: Settings, reservation_id: uuid.UUID) -> str:
    return f"{settings.public_base_url.rstrip('/')}/api/v1/reservations/{reservation_id}/qr.svg"


def reservation_body(r: Mapping[str, Any]) -> dict[str, Any]:
    token = r.get("checkin_token") if r["state"] in (states.CONFIRMED, states.CHECKED_IN) else None
    payment = None
    if r["requires_payment"]:
        payment = {
            "required": True,
            "id": str(r["payment_id"]) if r.get("payment_id") else None,
            "status": r.get("payment_status"),
            "provider": r.get("payment_provider"),
            "amount_cents": r["amount_cents"],
            "currency": r["currency"],
        }
    return {
        "id": str(r["id"]),
        "state": r["state"],
        "slot_id": str(r["slot_id"]),
        "drop_id": str(r["drop_id"]),
        "store_id": str(r["store_id"]),
        "user_id": str(r["user_id"]),
        "expires_at": iso(r.get("expires_at")) if r["state"] == states.PENDING else None,
        "qr_code_url": r.get("qr_code_url") if token else None,
        "checkin_token": token,
        "payment": payment,
        "requires_payment": r["requires_payment"],
        "amount_cents": r["amount_cents"],
        "currency": r["currency"],
        "slot": {"start_time": iso(r["slot_start"]), "end_time": iso(r["slot_end"])},
        "drop_name": r.get("drop_name"),
        "product_name": r.get("product_name"),
        "store_name": r.get("store_name"),
        "customer_note": r.get("customer_note"),
        "cancel_reason": r.get("cancel_reason"),
        "waitlist_entry_id": str(r["waitlist_entry_id"]) if r.get("waitlist_entry_id") else None,
        "created_at": iso(r.get("created_at")),
        "confirmed_at": iso(r.get("confirmed_at")),
        "cancelled_at": iso(r.get("cancelled_at")),
        "expired_at": iso(r.get("expired_at")),
        "checked_in_at": iso(r.get("checked_in_at")),
    }


def reservation_snapshot(r: Mapping[str, Any]) -> ReservationSnapshot:
    confirmed = r["state"] in (states.CONFIRMED, states.CHECKED_IN)
    return ReservationSnapshot(
        reservation_id=r["id"],
        slot_id=r["slot_id"],
        drop_id=r["drop_id"],
        store_id=r["store_id"],
        user_id=r["user_id"],
        state=r["state"],
        slot_start=r["slot_start"],
        slot_end=r["slot_end"],
        amount_cents=r["amount_cents"],
        currency=r["currency"],
        requires_payment=r["requires_payment"],
        expires_at=r.get("expires_at") if r["state"] == states.PENDING else None,
        drop_name=r.get("drop_name"),
        product_name=r.get("product_name"),
        store_name=r.get("store_name"),
        qr_code_url=r.get("qr_code_url") if confirmed else None,
        checkin_token=r.get("checkin_token") if confirmed else None,
        customer_note=r.get("customer_note"),
        payment_id=r.get("payment_id"),
        payment_status=r.get("payment_status"),
        cancel_reason=r.get("cancel_reason"),
        created_at=r.get("created_at"),
        confirmed_at=r.get("confirmed_at"),
        cancelled_at=r.get("cancelled_at"),
        expired_at=r.get("expired_at"),
        checked_in_at=r.get("checked_in_at"),
    )


def audit_view(r: Mapping[str, Any]) -> dict[str, Any]:
    """The before/after of a reservation for audit (no check-in token: it is a credential)."""
    return {
        "state": r["state"],
        "slot_id": str(r["slot_id"]),
        "user_id": str(r["user_id"]),
        "expires_at": iso(r.get("expires_at")),
        "cancel_reason": r.get("cancel_reason"),
        "payment_status": r.get("payment_status"),
    }


def waitlist_body(w: Mapping[str, Any], position: int) -> dict[str, Any]:
    return {
        "id": str(w["id"]),
        "slot_id": str(w["slot_id"]),
        "drop_id": str(w["drop_id"]),
        "store_id": str(w["store_id"]),
        "user_id": str(w["user_id"]),
        "state": w["state"],
        "position": position,
        "offer_expires_at": iso(w.get("offer_expires_at")) if w["state"] == states.OFFERED else None,
        "reservation_id": str(w["reservation_id"]) if w.get("reservation_id") else None,
        "slot": {"start_time": iso(w.get("slot_start")), "end_time": iso(w.get("slot_end"))},
        "drop_name": w.get("drop_name"),
        "created_at": iso(w.get("created_at")),
    }


def waitlist_entry(w: Mapping[str, Any], position: int = 0) -> WaitlistEntry:
    return WaitlistEntry(
        entry_id=w["id"],
        slot_id=w["slot_id"],
        drop_id=w["drop_id"],
        store_id=w["store_id"],
        user_id=w["user_id"],
        position=position,
        state=w["state"],
        offer_expires_at=w.get("offer_expires_at") if w["state"] == states.OFFERED else None,
        slot_start=w.get("slot_start") or w.get("start_time"),
        slot_end=w.get("slot_end") or w.get("end_time"),
        drop_name=w.get("drop_name"),
        product_name=w.get("product_name"),
        store_name=w.get("store_name"),
    )


def slot_body(s: Mapping[str, Any]) -> dict[str, Any]:
    available = max(0, s["capacity_total"] - s["capacity_reserved"] - s["capacity_waitlist"])
    return {
        "id": str(s["id"]),
        "drop_id": str(s["drop_id"]),
        "store_id": str(s["store_id"]),
        "start_time": iso(s["start_time"]),
        "end_time": iso(s["end_time"]),
        "capacity_total": s["capacity_total"],
        "capacity_reserved": s["capacity_reserved"],
        "capacity_waitlist": s["capacity_waitlist"],
        "available": available,
        "waitlist_length": int(s.get("waitlist_length") or 0),
        "sellable": s["sellable"],
    }


def envelope(
    settings: Settings,
    event: Event,
    *,
    store_id: uuid.UUID | None,
    tenant_key: str | None,
    before: dict[str, Any] | None = None,
    after: dict[str, Any] | None = None,
) -> Envelope:
    """The envelope `UnitOfWork.emit` would build (actor, correlation, trace from the request
    context), for the hot path, which writes its outbox rows inside `reserve_seats`."""
    ctx = context.current()
    carrier = telemetry.inject_headers()
    return Envelope.wrap(
        event,
        producer=settings.service,
        store_id=store_id,
        tenant_key=tenant_key,
        actor=ctx.actor,
        correlation_id=ctx.correlation_id or ctx.request_id,
        trace=TraceContext(**{k: v for k, v in carrier.items() if k in ("traceparent", "tracestate")}),
        before=before,
        after=after,
    )


# --- cursors ---------------------------------------------------------------------------------------
def encode_cursor(at: datetime, row_id: uuid.UUID) -> str:
    raw = json.dumps([at.isoformat(), str(row_id)]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str | None) -> tuple[datetime, uuid.UUID] | None:
    from ..errors import Problem

    if not cursor:
        return None
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        at, rid = json.loads(raw)
        return datetime.fromisoformat(at), uuid.UUID(rid)
    except (ValueError, TypeError):
        raise Problem("cursor is not valid") from None


def page(rows: list[dict[str, Any]], limit: int, body: Any, key: str = "created_at") -> dict[str, Any]:
    """`{items, next_cursor}`: `rows` holds up to limit + 1 rows (the extra one says there is more)."""
    more = len(rows) > limit
    rows = rows[:limit]
    return {
        "items": [body(r) for r in rows],
        "next_cursor": encode_cursor(rows[-1][key], rows[-1]["id"]) if more and rows else None,
    }
