"""Booking's side of the payments saga (/work/brief/SAGA.md).

- every `payments.payment.*` event updates the local copy of the payment (id, status,
  provider) on the reservation, newest event wins;
- `authorized` or `succeeded`: a PENDING reservation is CONFIRMED (even if its hold lapsed a
  moment ago but the sweeper has not expired it: the seat is still its own). An EXPIRED
  reservation (or one cancelled because an earlier attempt failed) tries to take a seat again
  with the same conditional update as the hot path; if it gets one it is CONFIRMED, otherwise
  booking asks for the money back (`booking.refund.requested`, reason "seat_lost"). A
  reservation the customer or the store cancelled is not revived: its late payment is refunded
  (reason "reservation_cancelled"). Refunds are requested at most once per reservation.
  Already CONFIRMED/CHECKED_IN: nothing (idempotent).
- `failed`: a PENDING reservation is CANCELLED (reason "payment_failed") and its seat freed.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from dropslot_contracts import Envelope
from dropslot_contracts.events.booking import RefundRequested, ReservationCancelled, ReservationConfirmed
from dropslot_kit.db import UnitOfWork

from ..adapters import reservations as repo
from ..adapters import slots as slot_repo
from ..adapters.sql import set_scope
from ..domain import states
from . import seats
from .runtime import Booking
from .views import audit_view, qr_url, reservation_snapshot

SUCCESS = ("payments.payment.authorized", "payments.payment.succeeded")


async def on_payment_event(bk: Booking, env: Envelope, uow: UnitOfWork) -> None:
    data = env.data
    try:
        rid = uuid.UUID(str(data["reservation_id"]))
    except (KeyError, ValueError):
        return
    await set_scope(uow.conn, all_rows=True)
    r = await repo.get(uow.conn, rid, lock=True)
    if r is None:
        return  # not one of ours
    now = bk.clock()
    await _record_payment(uow, r, data, env.occurred_at)
    if env.type in SUCCESS:
        await _paid(bk, uow, r, now, env)
    elif env.type == "payments.payment.failed" and r["state"] == states.PENDING:
        await _failed(bk, uow, r, now, str(data.get("reason") or "payment_failed"))


async def _record_payment(uow: UnitOfWork, r: dict[str, Any], data: dict[str, Any], at: datetime) -> None:
    if r["payment_event_at"] is not None and r["payment_event_at"] > at:
        return  # an older event arriving late must not overwrite a newer status
    fields = {
        "payment_id": uuid.UUID(str(data["payment_id"])) if data.get("payment_id") else r["payment_id"],
        "payment_status": data.get("status") or r["payment_status"],
        "payment_provider": data.get("provider") or r["payment_provider"],
        "payment_event_at": at,
    }
    await repo.update_fields(uow.conn, r["id"], **fields)
    r.update(fields)


async def confirm(
    bk: Booking, uow: UnitOfWork, r: dict[str, Any], now: datetime, *, from_states: tuple[str, ...]
) -> bool:
    token = bk.sign_checkin(r, now)
    url = qr_url(bk.settings, r["id"])
    if not await repo.transition(uow.conn, r["id"], from_states=from_states, to=states.CONFIRMED, now=now,
                                 checkin_token=token, qr_code_url=url):
        return False
    after = await repo.get(uow.conn, r["id"])
    assert after is not None
    uow.emit(ReservationConfirmed(reservation=reservation_snapshot(after)), store_id=r["store_id"],
             tenant_key=r["tenant_key"], before=audit_view(r), after=audit_view(after))
    return True


async def _paid(bk: Booking, uow: UnitOfWork, r: dict[str, Any], now: datetime, env: Envelope) -> None:
    if r["state"] in (states.CONFIRMED, states.CHECKED_IN):
        return
    if r["state"] == states.PENDING:
        await confirm(bk, uow, r, now, from_states=(states.PENDING,))
        return
    revivable = r["state"] == states.EXPIRED or (
        r["state"] == states.CANCELLED and r["cancel_reason"] == "payment_failed"
    )
    if revivable and await _retake_seat(bk, uow, r, now):
        await confirm(bk, uow, r, now, from_states=(r["state"],))
        return
    if not r["refund_requested"]:
        await repo.update_fields(uow.conn, r["id"], refund_requested=True)
        uow.emit(
            RefundRequested(reservation_id=r["id"], user_id=r["user_id"],
                            reason="seat_lost" if revivable else "reservation_cancelled"),
            store_id=r["store_id"], tenant_key=r["tenant_key"],
        )


async def _retake_seat(bk: Booking, uow: UnitOfWork, r: dict[str, Any], now: datetime) -> bool:
    """The hot path's conditions, in booking's lock order (reservation row, counter, slot)."""
    if await repo.has_active_in_slot(uow.conn, r["slot_id"], r["user_id"]):
        return False
    if not await repo.count_up(uow.conn, r["drop_id"], r["user_id"], r["max_per_user"]):
        return False
    if not await slot_repo.take_seat(uow.conn, r["slot_id"], now=now):
        await repo.count_down(uow.conn, [(r["drop_id"], r["user_id"])])
        return False
    return True


async def _failed(bk: Booking, uow: UnitOfWork, r: dict[str, Any], now: datetime, reason: str) -> None:
    if not await repo.transition(uow.conn, r["id"], from_states=(states.PENDING,), to=states.CANCELLED, now=now,
                                 cancel_reason="payment_failed"):
        return
    after = await repo.get(uow.conn, r["id"])
    assert after is not None
    await seats.release(bk, uow, now=now, reservations=[after])
    uow.emit(ReservationCancelled(reservation=reservation_snapshot(after), reason="payment_failed", refund=False),
             store_id=r["store_id"], tenant_key=r["tenant_key"], before=audit_view(r), after=audit_view(after))
