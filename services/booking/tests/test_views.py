"""The reserve hot path writes a new reservation's 201 body and events as text
(`views.new_reservation_texts`); they must be what the models write, byte for byte."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from dropslot_booking.config import Settings
from dropslot_booking.domain import states
from dropslot_booking.service.views import (
    audit_view,
    envelope,
    envelope_json,
    new_reservation_texts,
    reservation_body,
    reservation_snapshot,
    slot_texts,
)
from dropslot_contracts import Actor, Envelope
from dropslot_contracts.events.booking import ReservationConfirmed, ReservationCreated, ReservationSnapshot
from dropslot_kit import context


def a_row(*, paid: bool, note: str | None, name: str = "Limited \"sneaker\" ✓") -> tuple[dict[str, Any], dict[str, Any]]:
    # Microseconds of 0 on the slot start: pydantic and isoformat must agree there too.
    start = datetime(2026, 12, 24, 9, 0, tzinfo=UTC)
    now = datetime.now(UTC)
    view = {"id": uuid.uuid4(), "drop_id": uuid.uuid4(), "store_id": uuid.uuid4(), "tenant_key": "tenant-ü",
            "start_time": start, "end_time": start + timedelta(minutes=30)}
    rid = uuid.uuid4()
    row: dict[str, Any] = {
        "id": rid, "state": states.PENDING if paid else states.CONFIRMED, "slot_id": view["id"],
        "drop_id": view["drop_id"], "store_id": view["store_id"], "user_id": uuid.uuid4(),
        "expires_at": now + timedelta(minutes=10) if paid else None, "requires_payment": paid,
        "amount_cents": 1500 if paid else 0, "currency": "EUR", "slot_start": view["start_time"],
        "slot_end": view["end_time"], "drop_name": "Winter drop", "product_name": name, "store_name": None,
        "customer_note": note, "created_at": now, "confirmed_at": None if paid else now,
    }
    if not paid:
        row["checkin_token"] = "header.claims.signature"
        row["qr_code_url"] = f"https://dropslot.example/api/v1/reservations/{rid}/qr.svg"
    return row, view


@pytest.mark.parametrize("paid", [False, True])
@pytest.mark.parametrize("note", [None, "bring a friend — \"quoted\"\n€"])
@pytest.mark.parametrize("actor", [Actor(), Actor(user_id=uuid.uuid4(), ip="203.0.113.9", user_agent='App "1.0" ✓')])
def test_new_reservation_texts_are_what_the_models_write(paid: bool, note: str | None, actor: Actor) -> None:
    settings = Settings()
    row, view = a_row(paid=paid, note=note)
    token = context.set_current(context.CallContext(actor=actor, correlation_id=None, request_id="req-1"))
    try:
        body, tail, traceparent = new_reservation_texts(settings, row, slot_texts(view))
        model = envelope(settings, ReservationCreated(reservation=reservation_snapshot(row)),
                         store_id=view["store_id"], tenant_key=view["tenant_key"], after=audit_view(row))
    finally:
        context.reset(token)

    assert body == json.dumps(reservation_body(row), ensure_ascii=False, separators=(",", ":"))
    assert traceparent is None  # tracing is off here
    model = model.model_copy(update={"occurred_at": row["created_at"]})
    for event in (ReservationCreated, ReservationConfirmed):
        expected = model.model_copy(update={"type": event.TYPE, "version": event.VERSION})
        text = envelope_json(expected.id, event.TYPE, event.VERSION, tail)
        assert text == expected.model_dump_json()
        parsed = Envelope.model_validate_json(text)
        assert parsed == expected
        assert parsed.typed() == event(reservation=reservation_snapshot(row))


def test_every_snapshot_field_is_written() -> None:
    """A field added to the contract's snapshot must be added to the hot path's text too."""
    row, view = a_row(paid=False, note=None)
    _, tail, _ = new_reservation_texts(Settings(), row, slot_texts(view))
    data = json.loads(envelope_json(uuid.uuid4(), ReservationCreated.TYPE, 1, tail))["data"]
    assert list(data["reservation"]) == list(ReservationSnapshot.model_fields)
