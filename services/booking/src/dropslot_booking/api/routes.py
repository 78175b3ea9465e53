"""Booking's public routes (API.md, booking section), mounted under /api/v1."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Literal

from dropslot_contracts.rules import as_utc
from fastapi import APIRouter, Header, Query, Response
from pydantic import BaseModel, Field, field_validator

from ..service import checkin, reservations, reserve, slots, waitlist
from .deps import BookingDep, Caller, limit_param

router = APIRouter(prefix="/api/v1")

ReservationState = Literal["PENDING", "CONFIRMED", "CHECKED_IN", "CANCELLED", "EXPIRED"]


class _Times(BaseModel):
    @field_validator("start_time", "end_time", check_fields=False)
    @classmethod
    def _utc(cls, v: datetime) -> datetime:
        return as_utc(v)


class SlotIn(_Times):
    start_time: datetime
    end_time: datetime
    capacity_total: int = Field(ge=1, le=1_000_000)


class GenerateIn(BaseModel):
    every_minutes: int = Field(ge=1, le=24 * 60)
    capacity_total: int = Field(ge=1, le=1_000_000)


class SlotPatch(BaseModel):
    capacity_total: int = Field(ge=0, le=1_000_000)


class ReserveIn(BaseModel):
    slot_id: uuid.UUID
    customer_note: str | None = Field(default=None, max_length=500)


class CheckinIn(BaseModel):
    token: str = Field(min_length=1, max_length=4096)


IdempotencyKey = Annotated[str | None, Header(alias="Idempotency-Key", max_length=255)]


def _json(status: int, body: str) -> Response:
    return Response(content=body, status_code=status, media_type="application/json")


# --- slots ---------------------------------------------------------------------------------------
@router.post("/drops/{drop_id}/slots", status_code=201, tags=["slots"])
async def create_slot(drop_id: uuid.UUID, body: SlotIn, user: Caller, bk: BookingDep) -> dict:
    return await slots.create(bk, user, drop_id, body.start_time, body.end_time, body.capacity_total)


@router.post("/drops/{drop_id}/slots/generate", status_code=201, tags=["slots"])
async def generate_slots(drop_id: uuid.UUID, body: GenerateIn, user: Caller, bk: BookingDep) -> dict:
    return await slots.generate(bk, user, drop_id, body.every_minutes, body.capacity_total)


@router.get("/drops/{drop_id}/slots", tags=["slots"])
async def list_slots(
    drop_id: uuid.UUID, bk: BookingDep, limit: int | None = Query(None, ge=1, le=500), cursor: str | None = None
) -> dict:
    return await slots.list_for_drop(bk, drop_id, limit=max(1, min(limit or 100, 500)), cursor=cursor)


@router.get("/slots/{slot_id}", tags=["slots"])
async def get_slot(slot_id: uuid.UUID, bk: BookingDep) -> dict:
    return await slots.get(bk, slot_id)


@router.patch("/slots/{slot_id}", tags=["slots"])
async def update_slot(slot_id: uuid.UUID, body: SlotPatch, user: Caller, bk: BookingDep) -> dict:
    return await slots.resize(bk, user, slot_id, body.capacity_total)


# --- reservations ----------------------------------------------------------------------------------
@router.post("/reservations", status_code=201, tags=["reservations"])
async def create_reservation(body: ReserveIn, user: Caller, bk: BookingDep, key: IdempotencyKey = None) -> Response:
    status, payload = await reserve.reserve(bk, user, body.slot_id, body.customer_note, key)
    return _json(status, payload)


@router.get("/reservations", tags=["reservations"])
async def list_reservations(
    user: Caller, bk: BookingDep, state: ReservationState | None = None,
    limit: int | None = Query(None, ge=1, le=200), cursor: str | None = None,
) -> dict:
    return await reservations.list_mine(bk, user, state=state, limit=limit_param(limit), cursor=cursor)


@router.get("/reservations/{reservation_id}", tags=["reservations"])
async def get_reservation(reservation_id: uuid.UUID, user: Caller, bk: BookingDep) -> dict:
    return await reservations.get(bk, user, reservation_id)


@router.post("/reservations/{reservation_id}/cancel", tags=["reservations"])
async def cancel_reservation(reservation_id: uuid.UUID, user: Caller, bk: BookingDep) -> dict:
    return await reservations.cancel(bk, user, reservation_id)


@router.get("/reservations/{reservation_id}/qr.svg", tags=["reservations"], response_class=Response)
async def reservation_qr_svg(reservation_id: uuid.UUID, user: Caller, bk: BookingDep) -> Response:
    return Response(await reservations.qr(bk, user, reservation_id, "svg"), media_type="image/svg+xml")


@router.get("/reservations/{reservation_id}/qr.png", tags=["reservations"], response_class=Response)
async def reservation_qr_png(reservation_id: uuid.UUID, user: Caller, bk: BookingDep) -> Response:
    return Response(await reservations.qr(bk, user, reservation_id, "png"), media_type="image/png")


@router.get("/stores/{store_id}/reservations", tags=["reservations"])
async def store_reservations(
    store_id: uuid.UUID, user: Caller, bk: BookingDep, slot_id: uuid.UUID | None = None,
    state: ReservationState | None = None, limit: int | None = Query(None, ge=1, le=200), cursor: str | None = None,
) -> dict:
    return await reservations.list_for_store(bk, user, store_id, slot_id=slot_id, state=state,
                                             limit=limit_param(limit), cursor=cursor)


# --- waitlist ------------------------------------------------------------------------------------
@router.post("/slots/{slot_id}/waitlist", status_code=201, tags=["waitlist"])
async def join_waitlist(slot_id: uuid.UUID, user: Caller, bk: BookingDep) -> dict:
    return await waitlist.join(bk, user, slot_id)


@router.get("/waitlist", tags=["waitlist"])
async def my_waitlist(
    user: Caller, bk: BookingDep, limit: int | None = Query(None, ge=1, le=200), cursor: str | None = None
) -> dict:
    return await waitlist.list_mine(bk, user, limit=limit_param(limit), cursor=cursor)


@router.get("/waitlist/{entry_id}", tags=["waitlist"])
async def get_waitlist_entry(entry_id: uuid.UUID, user: Caller, bk: BookingDep) -> dict:
    return await waitlist.get(bk, user, entry_id)


@router.delete("/waitlist/{entry_id}", status_code=204, tags=["waitlist"], response_class=Response)
async def leave_waitlist(entry_id: uuid.UUID, user: Caller, bk: BookingDep) -> Response:
    await waitlist.leave(bk, user, entry_id)
    return Response(status_code=204)


@router.post("/waitlist/{entry_id}/accept", status_code=201, tags=["waitlist"])
async def accept_offer(entry_id: uuid.UUID, user: Caller, bk: BookingDep) -> dict:
    return await waitlist.accept(bk, user, entry_id)


# --- check-in ------------------------------------------------------------------------------------
@router.post("/checkins", tags=["checkins"])
async def redeem_checkin(body: CheckinIn, user: Caller, bk: BookingDep) -> dict:
    return await checkin.redeem(bk, user, body.token)


@router.get("/checkins/public-key", tags=["checkins"])
async def checkin_public_key(bk: BookingDep) -> dict:
    return checkin.public_key(bk)


__all__ = ["router"]
