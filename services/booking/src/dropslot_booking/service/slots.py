"""Slots of a drop: created by the store's owner or staff (one by one or generated), inside the
drop's window; capacity may grow (freed seats go to the waitlist first) and shrink only down
to what is taken."""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import datetime, timedelta
from typing import Any

from dropslot_contracts.events.booking import SlotCreated, SlotUpdated
from dropslot_kit.auth import Principal
from dropslot_kit.db import UnitOfWork
from dropslot_kit.errors import NotFound, Problem
from dropslot_kit.memberships import STAFF, authorize_store

from ..adapters import drops as drop_repo
from ..adapters import slots as repo
from ..adapters.sql import Row, set_scope
from ..errors import CapacityBelowTaken, DropClosed, SlotExists, SlotOutsideDrop
from . import seats, slotnews
from .runtime import Booking
from .views import slot_body

MAX_GENERATED = 1000


async def _drop_for_admin(bk: Booking, uow: UnitOfWork, principal: Principal, drop_id: uuid.UUID) -> Row:
    """The drop, once the caller may manage its store.

    The store owner often creates slots right after creating the drop in catalog; catalog's
    event (and the store membership) may not have reached booking yet. Wait a little for them
    (`booking_drop_wait_seconds`) instead of answering 404 to a request that is about to be valid.
    """
    deadline = time.monotonic() + bk.settings.booking_drop_wait_seconds
    while True:
        drop = await drop_repo.get_drop(uow.conn, drop_id)
        problem: Problem | None = None
        if drop is None:
            problem = NotFound("no such drop")
        else:
            try:
                await authorize_store(uow.conn, principal, drop["store_id"], STAFF)
                return drop
            except NotFound as exc:
                problem = exc
        if time.monotonic() >= deadline:
            raise problem
        # A fresh snapshot next time round (READ COMMITTED: each statement sees new commits).
        await asyncio.sleep(0.2)


def _check_window(drop: Row, start: datetime, end: datetime) -> None:
    if drop["status"] in ("ENDED", "CANCELLED"):
        raise DropClosed(f"the drop is {drop['status'].lower()}")
    if end <= start:
        raise SlotOutsideDrop("end_time must be after start_time")
    if start < drop["starts_at"] or end > drop["ends_at"]:
        raise SlotOutsideDrop(
            "slots must lie within the drop's window",
            drop_starts_at=drop["starts_at"].isoformat(), drop_ends_at=drop["ends_at"].isoformat(),
        )


async def create(
    bk: Booking, principal: Principal, drop_id: uuid.UUID, start: datetime, end: datetime, capacity: int
) -> dict[str, Any]:
    async with bk.db.uow() as uow:
        await set_scope(uow.conn, all_rows=True)
        await _drop_for_admin(bk, uow, principal, drop_id)
        # FOR SHARE: a concurrent status change of the drop waits for us (or we for it), so the
        # slot's `sellable` matches the drop's status when both have committed.
        drop = await drop_repo.get_drop(uow.conn, drop_id, lock=True)
        assert drop is not None
        _check_window(drop, start, end)
        slot = await repo.insert_slot(uow.conn, slot_id=uuid.uuid4(), drop=drop, start=start, end=end,
                                      capacity=capacity, sellable=drop["status"] == "LIVE")
        if slot is None:
            raise SlotExists("a slot with these times already exists in this drop")
        _emit_created(uow, slot)
    return slot_body(slot)


async def generate(
    bk: Booking, principal: Principal, drop_id: uuid.UUID, every_minutes: int, capacity: int
) -> dict[str, Any]:
    """Consecutive slots of `every_minutes` covering the drop's window (a last partial interval
    is left out); slots that already exist with the same times are kept as they are."""
    async with bk.db.uow() as uow:
        await set_scope(uow.conn, all_rows=True)
        await _drop_for_admin(bk, uow, principal, drop_id)
        drop = await drop_repo.get_drop(uow.conn, drop_id, lock=True)
        assert drop is not None
        step = timedelta(minutes=every_minutes)
        starts: list[datetime] = []
        t = drop["starts_at"]
        while t + step <= drop["ends_at"]:
            starts.append(t)
            t += step
            if len(starts) > MAX_GENERATED:
                raise SlotOutsideDrop(f"that would make more than {MAX_GENERATED} slots")
        if not starts:
            raise SlotOutsideDrop("the drop's window is shorter than one slot")
        _check_window(drop, starts[0], starts[-1] + step)
        created = []
        for start in starts:
            slot = await repo.insert_slot(uow.conn, slot_id=uuid.uuid4(), drop=drop, start=start, end=start + step,
                                          capacity=capacity, sellable=drop["status"] == "LIVE")
            if slot is not None:
                _emit_created(uow, slot)
                created.append(slot)
    return {"items": [slot_body(s) for s in created], "next_cursor": None}


def _emit_created(uow: UnitOfWork, slot: Row) -> None:
    uow.emit(
        SlotCreated(slot_id=slot["id"], drop_id=slot["drop_id"], store_id=slot["store_id"],
                    start_time=slot["start_time"], end_time=slot["end_time"], capacity_total=slot["capacity_total"]),
        store_id=slot["store_id"], tenant_key=slot["tenant_key"],
        after={"capacity_total": slot["capacity_total"], "start_time": str(slot["start_time"])},
    )


async def resize(bk: Booking, principal: Principal, slot_id: uuid.UUID, capacity: int) -> dict[str, Any]:
    now = bk.clock()
    async with bk.db.uow() as uow:
        await set_scope(uow.conn, all_rows=True)
        before = await repo.get_slot(uow.conn, slot_id)
        if before is None:
            raise NotFound("no such slot")
        await authorize_store(uow.conn, principal, before["store_id"], STAFF)
        slot = await repo.resize(uow.conn, slot_id, capacity)
        if slot is None:
            current = await repo.get_slot(uow.conn, slot_id)
            assert current is not None
            raise CapacityBelowTaken(
                "capacity cannot shrink below the seats taken",
                taken=current["capacity_reserved"] + current["capacity_waitlist"],
            )
        if capacity > before["capacity_total"]:
            await seats.release(bk, uow, now=now, slots=[slot_id])
            slot = await repo.get_slot(uow.conn, slot_id)
            assert slot is not None
        bk.slot_cache.forget(slot_id)
        await slotnews.announce(uow, slots=[slot_id])  # more seats, or fewer: every replica
        uow.emit(
            SlotUpdated(slot_id=slot_id, drop_id=slot["drop_id"], store_id=slot["store_id"],
                        capacity_total=slot["capacity_total"]),
            store_id=slot["store_id"], tenant_key=slot["tenant_key"],
            before={"capacity_total": before["capacity_total"]}, after={"capacity_total": slot["capacity_total"]},
        )
    return slot_body(slot)


async def list_for_drop(bk: Booking, drop_id: uuid.UUID, *, limit: int, cursor: str | None) -> dict[str, Any]:
    from .views import decode_cursor, encode_cursor

    after = decode_cursor(cursor)
    async with bk.db.uow() as uow:
        await set_scope(uow.conn, all_rows=True)  # waitlist lengths are counted over every user
        rows = await repo.list_slots(uow.conn, drop_id, after=after, limit=limit + 1)
    more = len(rows) > limit
    rows = rows[:limit]
    return {
        "items": [slot_body(r) for r in rows],
        "next_cursor": encode_cursor(rows[-1]["start_time"], rows[-1]["id"]) if more and rows else None,
    }


async def get(bk: Booking, slot_id: uuid.UUID) -> dict[str, Any]:
    """A slot's public availability: one statement (`booking.slot_availability`, which counts
    the waiting list over every user) on the hot path's pool, for the direct route and FastAPI's."""
    slot = await bk.hot.slot_availability(slot_id)
    if slot is None:
        raise NotFound("no such slot")
    return slot_body(slot)
