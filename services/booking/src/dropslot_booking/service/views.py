"""What a reservation / waitlist entry looks like to clients (API bodies) and to other
services (event snapshots), built from one row shape (see adapters.reservations.VIEW)."""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import orjson
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


# --- a new reservation's texts, for the reserve hot path -----------------------------------------
# `prepare` (reserve.py) runs once per seat a drop storm takes. Building the snapshot model, its
# envelope (each validated) and dumping them cost ~100 µs a reservation here, more than its
# check-in token. The builders below write the same JSON from strings computed once per slot
# view, with orjson (json.dumps of the 201 body alone was ~15 µs): tests/test_views.py holds
# them equal to the models' own output (and fails when the contract gains a field they do not
# write).
def _json(value: Any) -> str:
    """Compact JSON, as pydantic's `model_dump_json` writes it (no spaces, UTF-8 kept)."""
    return orjson.dumps(value).decode()


def slot_texts(view: dict[str, Any]) -> dict[str, str]:
    """The slot view's ids and times as text, computed once per cached view (kept in it)."""
    texts = view.get("_texts")
    if texts is None:
        texts = view["_texts"] = {
            "slot_id": str(view["id"]), "drop_id": str(view["drop_id"]), "store_id": str(view["store_id"]),
            "start": iso(view["start_time"]) or "", "end": iso(view["end_time"]) or "",
            "tenant_key": _json(view["tenant_key"]),
        }
    return texts


def new_reservation_texts(
    settings: Settings, r: Mapping[str, Any], texts: Mapping[str, str]
) -> tuple[str, str, str | None]:
    """(201 body, `created` envelope without its head, the envelope's traceparent) of a
    reservation `prepare` has just built: the body as `reservation_body(r)` in compact JSON, the
    envelope as `envelope(settings, ReservationCreated(...), ...).model_dump_json()` minus its
    first three fields (id, type, version: see `envelope_json`)."""
    rid, user_id = str(r["id"]), str(r["user_id"])
    state = r["state"]
    confirmed = state == states.CONFIRMED
    pending = state == states.PENDING
    token = r.get("checkin_token") if confirmed else None
    qr = r.get("qr_code_url") if token else None
    created, confirmed_at = iso(r["created_at"]), iso(r.get("confirmed_at"))
    expires = iso(r.get("expires_at"))
    payment = {"required": True, "id": None, "status": None, "provider": None,
               "amount_cents": r["amount_cents"], "currency": r["currency"]} if r["requires_payment"] else None
    body = _json({
        "id": rid, "state": state, "slot_id": texts["slot_id"], "drop_id": texts["drop_id"],
        "store_id": texts["store_id"], "user_id": user_id, "expires_at": expires if pending else None,
        "qr_code_url": qr, "checkin_token": token, "payment": payment,
        "requires_payment": r["requires_payment"], "amount_cents": r["amount_cents"], "currency": r["currency"],
        "slot": {"start_time": texts["start"], "end_time": texts["end"]},
        "drop_name": r.get("drop_name"), "product_name": r.get("product_name"), "store_name": r.get("store_name"),
        "customer_note": r.get("customer_note"), "cancel_reason": None, "waitlist_entry_id": None,
        "created_at": created, "confirmed_at": confirmed_at, "cancelled_at": None, "expired_at": None,
        "checked_in_at": None,
    })
    snapshot = _json({
        "reservation_id": rid, "slot_id": texts["slot_id"], "drop_id": texts["drop_id"],
        "store_id": texts["store_id"], "user_id": user_id, "state": state, "slot_start": texts["start"],
        "slot_end": texts["end"], "amount_cents": r["amount_cents"], "currency": r["currency"],
        "requires_payment": r["requires_payment"], "expires_at": expires if pending else None,
        "drop_name": r.get("drop_name"), "product_name": r.get("product_name"),
        "qr_code_url": r.get("qr_code_url") if confirmed else None, "checkin_token": token,
        "store_name": r.get("store_name"), "customer_note": r.get("customer_note"), "payment_id": None,
        "payment_status": None, "cancel_reason": None, "created_at": created, "confirmed_at": confirmed_at,
        "cancelled_at": None, "expired_at": None, "checked_in_at": None,
    })
    after = _json({"state": state, "slot_id": texts["slot_id"], "user_id": user_id, "expires_at": expires,
                   "cancel_reason": None, "payment_status": None})
    ctx = context.current()
    actor = ctx.actor
    carrier = telemetry.inject_headers()
    traceparent = carrier.get("traceparent")
    tail = (
        f',"occurred_at":"{created}","producer":{_json(settings.service)},"store_id":"{texts["store_id"]}"'
        f',"tenant_key":{texts["tenant_key"]}'
        f',"actor":{{"user_id":{_json(str(actor.user_id) if actor.user_id else None)},'
        f'"ip":{_json(actor.ip)},"user_agent":{_json(actor.user_agent)}}}'
        f',"correlation_id":{_json(ctx.correlation_id or ctx.request_id)}'
        f',"trace":{{"traceparent":{_json(traceparent)},"tracestate":{_json(carrier.get("tracestate"))}}}'
        f',"before":null,"after":{after},"data":{{"reservation":{snapshot}}}}}'
    )
    return body, tail, traceparent


def envelope_json(event_id: uuid.UUID, event_type: str, version: int, tail: str) -> str:
    """An envelope's JSON from its head (id, type, version) and a tail from new_reservation_texts."""
    return f'{{"id":"{event_id}","type":"{event_type}","version":{version}{tail}'


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
