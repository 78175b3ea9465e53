"""Reading, cancelling and rendering reservations."""

from __future__ import annotations

import io
import uuid
from typing import Any

import segno
from dropslot_contracts.events.booking import ReservationCancelled
from dropslot_kit.auth import Principal
from dropslot_kit.db import UnitOfWork, loads
from dropslot_kit.errors import NotFound
from dropslot_kit.memberships import STAFF, authorize_store, has_store_role

from ..adapters import drops as drop_repo
from ..adapters import reservations as repo
from ..adapters.sql import Row, set_scope
from ..domain import rules, states
from ..errors import NotCancellable, ReservationNotConfirmed, TooLateToCancel
from . import seats
from .runtime import Booking
from .views import audit_view, decode_cursor, page, reservation_body, reservation_snapshot


async def load_visible(
    uow: UnitOfWork, principal: Principal, reservation_id: uuid.UUID, *, lock: bool = False
) -> tuple[Row, bool]:
    """The reservation if the caller owns it or works at its store (else 404); and whether the
    caller acts as the store."""
    await set_scope(uow.conn, all_rows=True)
    r = await repo.get(uow.conn, reservation_id, lock=lock)
    if r is None:
        raise NotFound("no such reservation")
    staff = await has_store_role(uow.conn, principal, r["store_id"], STAFF)
    if r["user_id"] != principal.user_id and not staff:
        raise NotFound("no such reservation")
    return r, staff


async def get(bk: Booking, principal: Principal, reservation_id: uuid.UUID) -> dict[str, Any]:
    async with bk.db.uow() as uow:
        r, _ = await load_visible(uow, principal, reservation_id)
    return reservation_body(r)


async def list_mine(
    bk: Booking, principal: Principal, *, state: str | None, limit: int, cursor: str | None
) -> dict[str, Any]:
    async with bk.db.uow() as uow:
        await set_scope(uow.conn, user_id=principal.user_id)
        rows = await repo.list_for_user(uow.conn, principal.user_id, state=state, after=decode_cursor(cursor),
                                        limit=limit + 1)
    return page(rows, limit, reservation_body)


async def list_for_store(
    bk: Booking, principal: Principal, store_id: uuid.UUID, *, slot_id: uuid.UUID | None, state: str | None,
    limit: int, cursor: str | None,
) -> dict[str, Any]:
    async with bk.db.uow() as uow:
        await authorize_store(uow.conn, principal, store_id, STAFF)
        tenant = await drop_repo.tenant_of_store(uow.conn, store_id)
        # Store staff see their tenant's rows only (row-level security does the filtering too).
        await set_scope(uow.conn, tenant_key=tenant or "-")
        rows = await repo.list_for_store(uow.conn, store_id, slot_id=slot_id, state=state,
                                         after=decode_cursor(cursor), limit=limit + 1)
    return page(rows, limit, reservation_body)


async def cancel(bk: Booking, principal: Principal, reservation_id: uuid.UUID) -> dict[str, Any]:
    """The customer cancels until the rule's deadline; the store's owner/staff at any time (and
    the customer is then refunded in full). Cancelling a cancelled reservation answers it again."""
    now = bk.clock()
    async with bk.db.uow() as uow:
        await set_scope(uow.conn, all_rows=True)
        peek, staff = await load_visible(uow, principal, reservation_id)
        if peek["state"] == states.CANCELLED:
            return reservation_body(peek)
        if peek["state"] not in states.CANCELLABLE:
            raise NotCancellable(f"a {peek['state'].lower()} reservation cannot be cancelled", state=peek["state"])
        by_store = staff and peek["user_id"] != principal.user_id
        rule = rules.parse_rule(loads(peek["drop_rule"]))
        if not staff and not rules.may_customer_cancel(now, peek["slot_start"], rule,
                                                                         bk.settings.booking_minute_seconds):
            deadline = rules.cancel_deadline(peek["slot_start"], rule, bk.settings.booking_minute_seconds)
            raise TooLateToCancel("the cancellation deadline has passed", cancel_deadline=deadline.isoformat())
        reason = "store" if by_store else "customer"
        if not await repo.transition(uow.conn, reservation_id, from_states=tuple(states.CANCELLABLE),
                                     to=states.CANCELLED, now=now, cancel_reason=reason):
            # Someone else moved it meanwhile (expiry, payment failure): answer what it is now.
            r = await repo.get(uow.conn, reservation_id)
            assert r is not None
            if r["state"] == states.CANCELLED:
                return reservation_body(r)
            raise NotCancellable(f"a {r['state'].lower()} reservation cannot be cancelled", state=r["state"])
        r = await repo.get(uow.conn, reservation_id)
        assert r is not None
        await seats.release(bk, uow, now=now, reservations=[r])
        refund = rules.refund_on_cancel(by_store=by_store, requires_payment=r["requires_payment"], rule=rule)
        uow.emit(
            ReservationCancelled(reservation=reservation_snapshot(r), reason=reason, refund=refund),
            store_id=r["store_id"], tenant_key=r["tenant_key"], before=audit_view(peek), after=audit_view(r),
        )
    return reservation_body(r)


async def qr(bk: Booking, principal: Principal, reservation_id: uuid.UUID, kind: str) -> bytes:
    async with bk.db.uow() as uow:
        r, _ = await load_visible(uow, principal, reservation_id)
    if r["state"] not in (states.CONFIRMED, states.CHECKED_IN) or not r["checkin_token"]:
        raise ReservationNotConfirmed("the QR code exists once the reservation is confirmed", state=r["state"])
    code = segno.make(r["checkin_token"], error="m")
    buf = io.BytesIO()
    if kind == "svg":
        code.save(buf, kind="svg", scale=4, border=2, xmldecl=True)
    else:
        code.save(buf, kind="png", scale=6, border=2)
    return buf.getvalue()
