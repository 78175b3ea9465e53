"""Waitlist: join a full slot, leave, accept an offer.

Fair order is the order of joining (a sequence). When a seat frees, the first entry still
waiting is OFFERED it for the rule's `waitlist_offer_minutes`, the seat held for it (counted in
`capacity_waitlist`); accepting turns the offer into a reservation under the normal payment
rule; an offer that lapses passes to the next in line (sweeper).
"""

from __future__ import annotations

import uuid
from typing import Any

from dropslot_contracts.events.booking import (
    ReservationConfirmed,
    ReservationCreated,
    WaitlistAccepted,
    WaitlistJoined,
    WaitlistLeft,
)
from dropslot_kit.auth import Principal
from dropslot_kit.errors import NotFound

from ..adapters import reservations as res_repo
from ..adapters import slots as slot_repo
from ..adapters import waitlist as repo
from ..adapters.sql import set_scope
from ..domain import states
from ..errors import (
    AlreadyOnWaitlist,
    AlreadyReserved,
    DropNotLive,
    EmailNotVerified,
    LimitReached,
    NoOffer,
    NotOnWaitlist,
    OfferExpired,
    SeatsAvailable,
    SlotClosed,
    WaitlistClosed,
)
from . import seats
from .runtime import Booking
from .views import (
    audit_view,
    decode_cursor,
    page,
    qr_url,
    reservation_body,
    reservation_snapshot,
    waitlist_body,
    waitlist_entry,
)


async def join(bk: Booking, principal: Principal, slot_id: uuid.UUID) -> dict[str, Any]:
    now = bk.clock()
    async with bk.db.uow() as uow:
        await set_scope(uow.conn, all_rows=True)
        slot = await slot_repo.get_slot_with_drop(uow.conn, slot_id)
        if slot is None:
            raise NotFound("no such slot")
        if slot["drop_status"] != "LIVE" or not slot["sellable"]:
            raise DropNotLive(f"the drop is {slot['drop_status'].lower()}")
        if slot["start_time"] <= now:
            raise SlotClosed("this slot has started")
        if not slot["waitlist_enabled"]:
            raise WaitlistClosed("this drop has no waitlist")
        if slot["require_verified_email"] and not principal.email_verified:
            raise EmailNotVerified("this drop requires a verified email address")
        if slot["capacity_reserved"] + slot["capacity_waitlist"] < slot["capacity_total"]:
            free = slot["capacity_total"] - slot["capacity_reserved"] - slot["capacity_waitlist"]
            raise SeatsAvailable("seats are available in this slot: reserve one", available=free)
        if await res_repo.has_active_in_slot(uow.conn, slot_id, principal.user_id):
            raise AlreadyReserved("you already hold a reservation for this slot")
        entry_id = uuid.uuid4()
        if await repo.join(uow.conn, entry_id=entry_id, slot=slot, user_id=principal.user_id, now=now) is None:
            existing = await repo.active_entry(uow.conn, slot_id, principal.user_id)
            raise AlreadyOnWaitlist("you are already in this slot's line",
                                    entry_id=str(existing["id"]) if existing else None)
        entry = await repo.get(uow.conn, entry_id)
        assert entry is not None
        position = await repo.position(uow.conn, entry)
        uow.emit(WaitlistJoined(entry=waitlist_entry(entry, position)), store_id=entry["store_id"],
                 tenant_key=entry["tenant_key"], after={"state": states.WAITING, "position": position})
    return waitlist_body(entry, position)


async def _load_own(uow: Any, principal: Principal, entry_id: uuid.UUID, *, lock: bool = False) -> dict[str, Any]:
    await set_scope(uow.conn, all_rows=True)
    entry = await repo.get(uow.conn, entry_id, lock=lock)
    if entry is None or entry["user_id"] != principal.user_id:
        raise NotFound("no such waitlist entry")
    return entry


async def get(bk: Booking, principal: Principal, entry_id: uuid.UUID) -> dict[str, Any]:
    async with bk.db.uow() as uow:
        entry = await _load_own(uow, principal, entry_id)
        position = await repo.position(uow.conn, entry)
    return waitlist_body(entry, position)


async def list_mine(bk: Booking, principal: Principal, *, limit: int, cursor: str | None) -> dict[str, Any]:
    async with bk.db.uow() as uow:
        await set_scope(uow.conn, user_id=principal.user_id)
        rows = await repo.list_for_user(uow.conn, principal.user_id, after=decode_cursor(cursor), limit=limit + 1)
        positions = {r["id"]: await repo.position(uow.conn, r) for r in rows}
    return page(rows, limit, lambda r: waitlist_body(r, positions[r["id"]]))


async def leave(bk: Booking, principal: Principal, entry_id: uuid.UUID) -> None:
    """Leaving is idempotent; leaving with an offer open gives its seat to the next in line."""
    now = bk.clock()
    async with bk.db.uow() as uow:
        entry = await _load_own(uow, principal, entry_id, lock=True)
        if entry["state"] == states.LEFT:
            return
        if entry["state"] not in states.IN_LINE:
            raise NotOnWaitlist(f"this entry is {entry['state'].lower()}", state=entry["state"])
        await repo.set_state(uow.conn, entry_id, from_states=tuple(states.IN_LINE), to=states.LEFT, now=now)
        if entry["state"] == states.OFFERED:
            await seats.release(bk, uow, now=now, offers=[entry])
        uow.emit(WaitlistLeft(entry=waitlist_entry({**entry, "state": states.LEFT})), store_id=entry["store_id"],
                 tenant_key=entry["tenant_key"], before={"state": entry["state"]}, after={"state": states.LEFT})


async def accept(bk: Booking, principal: Principal, entry_id: uuid.UUID) -> dict[str, Any]:
    """Turn an open offer into a reservation (201). Accepting twice answers the same reservation."""
    now = bk.clock()
    async with bk.db.uow() as uow:
        entry = await _load_own(uow, principal, entry_id, lock=True)
        if entry["state"] == states.ACCEPTED and entry["reservation_id"]:
            r = await res_repo.get(uow.conn, entry["reservation_id"])
            assert r is not None
            return reservation_body(r)
        if entry["state"] == states.WAITING:
            raise NoOffer("no seat has been offered to you yet", position=await repo.position(uow.conn, entry))
        if entry["state"] != states.OFFERED or entry["offer_expires_at"] <= now:
            raise OfferExpired("this offer is no longer open", state=entry["state"])
        slot = await slot_repo.get_slot_with_drop(uow.conn, entry["slot_id"])
        assert slot is not None
        if slot["require_verified_email"] and not principal.email_verified:
            raise EmailNotVerified("this drop requires a verified email address")

        rid = uuid.uuid4()
        paid = slot["price_cents"] > 0
        state = states.initial_state(slot["price_cents"])
        row: dict[str, Any] = {
            "id": rid, "slot_id": slot["id"], "drop_id": slot["drop_id"], "store_id": slot["store_id"],
            "tenant_key": slot["tenant_key"], "user_id": principal.user_id, "state": state, "customer_note": None,
            "amount_cents": slot["price_cents"], "currency": slot["currency"], "requires_payment": paid,
            "expires_at": bk.hold_until(now, slot["hold_minutes"]) if paid else None,
            "waitlist_entry_id": entry_id, "created_at": now, "confirmed_at": None if paid else now,
            "slot_start": slot["start_time"], "slot_end": slot["end_time"], "drop_name": slot["drop_name"],
            "product_name": slot["product_name"], "store_name": slot["store_name"],
            "checkin_token": None, "qr_code_url": None,
        }
        if state == states.CONFIRMED:
            row["checkin_token"] = bk.sign_checkin(row, now)
            row["qr_code_url"] = qr_url(bk.settings, rid)
        # Lock order: waitlist row (held) -> reservation -> per-user counter -> slot.
        await repo.set_state(uow.conn, entry_id, from_states=(states.OFFERED,), to=states.ACCEPTED, now=now,
                             reservation_id=rid)
        insert = {k: row[k] for k in (
            "id", "slot_id", "drop_id", "store_id", "tenant_key", "user_id", "state", "customer_note", "qr_code_url",
            "checkin_token", "amount_cents", "currency", "requires_payment", "expires_at", "waitlist_entry_id",
            "created_at", "confirmed_at")}
        if not await res_repo.insert(uow.conn, insert):
            raise AlreadyReserved("you already hold a reservation for this slot")
        if not await res_repo.count_up(uow.conn, slot["drop_id"], principal.user_id, slot["max_per_user"]):
            raise LimitReached(f"at most {slot['max_per_user']} reservation(s) per person in this drop",
                               max_per_user=slot["max_per_user"])
        taken = await slot_repo.take_seat(uow.conn, slot["id"], now=now, from_waitlist=True)
        assert taken, "an open offer always holds its seat"
        bk.slot_cache.forget(slot["id"])
        snapshot = reservation_snapshot(row)
        accepted = {**entry, "state": states.ACCEPTED, "reservation_id": rid}
        uow.emit(WaitlistAccepted(entry=waitlist_entry(accepted), reservation_id=rid), store_id=slot["store_id"],
                 tenant_key=slot["tenant_key"], before={"state": states.OFFERED}, after={"state": states.ACCEPTED})
        uow.emit(ReservationCreated(reservation=snapshot), store_id=slot["store_id"], tenant_key=slot["tenant_key"],
                 after=audit_view(row))
        if state == states.CONFIRMED:
            uow.emit(ReservationConfirmed(reservation=snapshot), store_id=slot["store_id"],
                     tenant_key=slot["tenant_key"], after=audit_view(row))
    return reservation_body(row)
