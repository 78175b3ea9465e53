"""Reserve a seat: the hot path of a drop.

One request = an unlocked (cached) read of the slot, then one short transaction
(`booking.reserve_seats`, one round trip) that takes the seat with a conditional update and
writes the reservation, its idempotency record and its outbox events together. With
`booking_batching` on, requests for the same slot that arrive while a transaction for it is in
flight share the next transaction (group commit), each answered after that commit.

Idempotency-Key: the 201 answer is stored with the reservation (same transaction) under (user,
key), so a retry gets the first answer, byte for byte, with its status; the same key with a
different request is 422 `idempotency-key-reused`. A refused request changed nothing, so it is
not stored: its retry is judged afresh (and finds the stored 201 if the first attempt in fact
succeeded).
"""

from __future__ import annotations

import hashlib
import json
import uuid
from datetime import datetime
from typing import Any

from dropslot_contracts.events.booking import ReservationConfirmed, ReservationCreated
from dropslot_kit import telemetry
from dropslot_kit.auth import Principal
from dropslot_kit.errors import NotFound, Problem

from ..adapters.hotpath import Outbox, Seat
from ..domain import states
from ..errors import (
    DropNotLive,
    EmailNotVerified,
    IdempotencyKeyReused,
    LimitReached,
    SlotClosed,
    SoldOut,
)
from .runtime import Booking
from .views import envelope_json, new_reservation_texts, qr_url, slot_texts


def fingerprint(*parts: Any) -> str:
    return hashlib.sha256(json.dumps([str(p) if p is not None else None for p in parts]).encode()).hexdigest()[:32]


def replay(stored: Any, fp: str) -> tuple[int, str]:
    if stored["fingerprint"] != fp:
        raise IdempotencyKeyReused("this Idempotency-Key was used for a different request")
    return int(stored["status"]), str(stored["response"])


def sold_out(view: dict[str, Any], now: datetime) -> SoldOut:
    open_ = bool(view["waitlist_enabled"] and view["sellable"] and view["start_time"] > now)
    return SoldOut("every seat of this slot is taken", waitlist_open=open_, slot_id=str(view["id"]))


def precheck(view: dict[str, Any], principal: Principal, now: datetime) -> Problem | None:
    """Refusals decided from the unlocked read (the transaction re-checks all but the email)."""
    if view["drop_status"] != "LIVE" or not view["sellable"]:
        return DropNotLive(f"the drop is {view['drop_status'].lower()}", drop_status=view["drop_status"])
    if view["start_time"] <= now:
        return SlotClosed("this slot has started")
    if view["require_verified_email"] and not principal.email_verified:
        return EmailNotVerified("this drop requires a verified email address")
    if view["capacity_reserved"] + view["capacity_waitlist"] >= view["capacity_total"]:
        return sold_out(view, now)
    return None


def prepare(
    bk: Booking, principal: Principal, view: dict[str, Any], note: str | None, key: str | None, fp: str,
    now: datetime,
) -> Seat:
    """Everything the transaction writes, built before it starts (ids, token, answer, events)."""
    rid = uuid.uuid4()
    paid = view["price_cents"] > 0
    state = states.initial_state(view["price_cents"])
    row: dict[str, Any] = {
        "id": rid,
        "state": state,
        "slot_id": view["id"],
        "drop_id": view["drop_id"],
        "store_id": view["store_id"],
        "user_id": principal.user_id,
        "expires_at": bk.hold_until(now, view["hold_minutes"]) if paid else None,
        "requires_payment": paid,
        "amount_cents": view["price_cents"],
        "currency": view["currency"],
        "slot_start": view["start_time"],
        "slot_end": view["end_time"],
        "drop_name": view["drop_name"],
        "product_name": view["product_name"],
        "store_name": view["store_name"],
        "customer_note": note,
        "created_at": now,
        "confirmed_at": None if paid else now,
    }
    if state == states.CONFIRMED:
        row["checkin_token"] = bk.sign_checkin(row, now)
        row["qr_code_url"] = qr_url(bk.settings, rid)
    # The 201 body and the events as text, without building (and validating) the snapshot and
    # envelope models: `views.new_reservation_texts` writes what they would.
    body, tail, traceparent = new_reservation_texts(bk.settings, row, slot_texts(view))
    events: list[type[ReservationCreated] | type[ReservationConfirmed]] = [ReservationCreated]
    if state == states.CONFIRMED:
        events.append(ReservationConfirmed)  # same snapshot, actor, trace and moment, its own id
    outbox = []
    for event in events:
        event_id = uuid.uuid4()
        outbox.append(Outbox(event_id, event.TYPE, envelope_json(event_id, event.TYPE, event.VERSION, tail),
                             traceparent))
    return Seat(
        id=rid, user_id=principal.user_id, key=key, fingerprint=fp, response=body,
        state=state, expires_at=row["expires_at"], confirmed_at=row["confirmed_at"], note=note,
        token=row.get("checkin_token"), qr_code_url=row.get("qr_code_url"), amount_cents=view["price_cents"],
        currency=view["currency"], requires_payment=paid, outbox=outbox,
    )


async def reserve(
    bk: Booking, principal: Principal, slot_id: uuid.UUID, note: str | None, key: str | None
) -> tuple[int, str]:
    """(status, JSON body) of a 201 or of a replayed answer; refusals raise their Problem."""
    fp = fingerprint("POST /reservations", slot_id, note)
    now = bk.clock()
    view = await bk.slot_cache.get(bk.hot, slot_id)
    if view is None:
        return await _refuse(bk, principal, key, fp, None, NotFound("no such slot"))
    problem = precheck(view, principal, now)
    if problem is not None:
        return await _refuse(bk, principal, key, fp, view, problem)

    seat = prepare(bk, principal, view, note, key, fp, now)
    outcome = ""
    for _ in range(2):
        if bk.batcher is not None:
            outcome = await bk.batcher.submit(slot_id, seat)
        else:
            outcome = (await bk.hot.reserve(slot_id, now, [seat]))[0]
        if outcome == "ok":
            telemetry.record_reservation(view["drop_id"], True)
            return 201, seat.response
        if outcome != "idempotent":
            break
        assert key is not None
        stored = await bk.stored_answer(principal.user_id, key)
        if stored is not None:
            return replay(stored, fp)
        # The twin request that held this key in the same batch was undone: judge this one afresh.

    if outcome == "sold_out":
        bk.slot_cache.mark_sold_out(slot_id)
        problem = sold_out(view, now)
    elif outcome == "limit":
        problem = LimitReached(f"at most {view['max_per_user']} reservation(s) per person in this drop",
                               max_per_user=view["max_per_user"])
    elif outcome == "already_reserved":
        # One reservation per person per slot: the same limit family as max_per_user for clients.
        problem = LimitReached("you already hold a reservation for this slot", max_per_user=view["max_per_user"])
    elif outcome == "not_live":
        bk.slot_cache.forget(slot_id)
        problem = DropNotLive("the drop is not live")
    elif outcome == "closed":
        problem = SlotClosed("this slot has started")
    elif outcome == "not_found":
        problem = NotFound("no such slot")
    else:
        problem = Problem(f"unexpected outcome {outcome!r}")
    return await _refuse(bk, principal, key, fp, view, problem)


async def _refuse(
    bk: Booking, principal: Principal, key: str | None, fp: str, view: dict[str, Any] | None, problem: Problem
) -> tuple[int, str]:
    if key is not None:
        stored = await bk.stored_answer(principal.user_id, key)
        if stored is not None:
            return replay(stored, fp)
    if view is not None:
        telemetry.record_reservation(view["drop_id"], False, problem.slug)
    raise problem
