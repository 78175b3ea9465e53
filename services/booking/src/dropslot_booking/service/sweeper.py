"""Background work every replica runs (supervised by the kit; claimed with FOR UPDATE SKIP
LOCKED, so replicas share it without doing anything twice):

- hold expiry: a PENDING reservation past `expires_at` is EXPIRED and its seat freed (to the
  waitlist first) - unless its payment is in flight (processing / requires_action /
  requires_capture) and it has not been extended yet: then the hold is extended once by
  `booking_payment_grace_seconds` and `booking.reservation.expiring` (final_check=True) asks
  payments for the intent's true status (SAGA.md);
- hold reminders: `booking.reservation.expiring` (final_check=False) `booking_hold_reminder_minutes`
  before a hold lapses;
- waitlist offers that lapsed pass to the next in line; entries of slots that started or drops
  that closed lapse;
- rebalance: a seat free while people wait (freed in a race with someone joining) is offered;
- cancelled drops: their reservations are cancelled (refunded) and their lines closed;
- idempotency keys older than `booking_idempotency_ttl_hours` are forgotten.
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import timedelta
from typing import Any

from dropslot_contracts.events.booking import (
    HoldExpiring,
    ReservationCancelled,
    ReservationExpired,
    WaitlistOfferLapsed,
)

from ..adapters import drops as drop_repo
from ..adapters import reservations as res_repo
from ..adapters import slots as slot_repo
from ..adapters import waitlist as wl_repo
from ..adapters.sql import set_scope
from ..domain import states
from . import seats
from .runtime import Booking
from .views import audit_view, reservation_snapshot, waitlist_entry

log = logging.getLogger("dropslot.booking.sweeper")


async def expire_holds(bk: Booking) -> int:
    now = bk.clock()
    grace = timedelta(seconds=bk.settings.booking_payment_grace_seconds)
    async with bk.db.uow() as uow:
        await set_scope(uow.conn, all_rows=True)
        rows = await res_repo.claim_lapsed_holds(uow.conn, now, bk.settings.booking_sweep_batch)
        expired: list[dict[str, Any]] = []
        for r in rows:
            if r["payment_status"] in states.PAYMENT_IN_FLIGHT and not r["hold_deferred"]:
                await res_repo.update_fields(uow.conn, r["id"], expires_at=now + grace, hold_deferred=True)
                deferred = {**r, "expires_at": now + grace}
                uow.emit(HoldExpiring(reservation=reservation_snapshot(deferred), final_check=True),
                         store_id=r["store_id"], tenant_key=r["tenant_key"])
                continue
            await res_repo.transition(uow.conn, r["id"], from_states=(states.PENDING,), to=states.EXPIRED, now=now)
            after = {**r, "state": states.EXPIRED, "expired_at": now}
            expired.append(after)
            uow.emit(ReservationExpired(reservation=reservation_snapshot(after)), store_id=r["store_id"],
                     tenant_key=r["tenant_key"], before=audit_view(r), after=audit_view(after))
        await seats.release(bk, uow, now=now, reservations=expired)
    return len(rows)


async def remind_holds(bk: Booking) -> int:
    now = bk.clock()
    remind_before = bk.minutes(bk.settings.booking_hold_reminder_minutes)
    async with bk.db.uow() as uow:
        await set_scope(uow.conn, all_rows=True)
        rows = await res_repo.claim_reminders(uow.conn, now, remind_before, bk.settings.booking_sweep_batch)
        for r in rows:
            await res_repo.update_fields(uow.conn, r["id"], reminded=True)
            uow.emit(HoldExpiring(reservation=reservation_snapshot(r), final_check=False),
                     store_id=r["store_id"], tenant_key=r["tenant_key"])
    return len(rows)


async def lapse_offers(bk: Booking) -> int:
    now = bk.clock()
    async with bk.db.uow() as uow:
        await set_scope(uow.conn, all_rows=True)
        lapsed = await wl_repo.claim_lapsed_offers(uow.conn, now, bk.settings.booking_sweep_batch)
        closed = await wl_repo.claim_closed_lines(uow.conn, now, bk.settings.booking_sweep_batch)
        seen = {e["id"] for e in lapsed}
        closed = [e for e in closed if e["id"] not in seen]
        for entry, reason in [*((e, "offer_expired") for e in lapsed), *((e, _closed_reason(e, now)) for e in closed)]:
            await wl_repo.set_state(uow.conn, entry["id"], from_states=(entry["state"],), to=states.LAPSED, now=now,
                                    reason=reason)
            uow.emit(WaitlistOfferLapsed(entry=waitlist_entry({**entry, "state": states.LAPSED}), reason=reason),
                     store_id=entry["store_id"], tenant_key=entry["tenant_key"],
                     before={"state": entry["state"]}, after={"state": states.LAPSED, "reason": reason})
        offers = [e for e in [*lapsed, *closed] if e["state"] == states.OFFERED]
        await seats.release(bk, uow, now=now, offers=offers)
    return len(lapsed) + len(closed)


def _closed_reason(entry: dict[str, Any], now: Any) -> str:
    return "slot_started" if entry["slot_start"] <= now else "drop_closed"


async def rebalance(bk: Booking) -> int:
    now = bk.clock()
    done = 0
    async with bk.db.uow() as uow:
        await set_scope(uow.conn, all_rows=True)
        slot_ids = await slot_repo.slots_to_rebalance(uow.conn, now)
    for slot_id in slot_ids:
        async with bk.db.uow() as uow:
            await set_scope(uow.conn, all_rows=True)
            if await slot_repo.try_lock(uow.conn, slot_id):
                await seats.release(bk, uow, now=now, slots=[slot_id])
                done += 1
    return done


async def close_cancelled_drops(bk: Booking) -> int:
    now = bk.clock()
    total = 0
    async with bk.db.uow() as uow:
        drop_ids = await drop_repo.cancelled_drops_to_clean(uow.conn)
    for drop_id in drop_ids:
        async with bk.db.uow() as uow:
            await set_scope(uow.conn, all_rows=True)
            rows = await res_repo.claim_active_of_drop(uow.conn, drop_id, bk.settings.booking_sweep_batch)
            cancelled = []
            for r in rows:
                await res_repo.transition(uow.conn, r["id"], from_states=tuple(states.CANCELLABLE),
                                          to=states.CANCELLED, now=now, cancel_reason="drop_cancelled")
                after = {**r, "state": states.CANCELLED, "cancelled_at": now, "cancel_reason": "drop_cancelled"}
                cancelled.append(after)
                uow.emit(ReservationCancelled(reservation=reservation_snapshot(after), reason="drop_cancelled",
                                              refund=bool(r["requires_payment"])),
                         store_id=r["store_id"], tenant_key=r["tenant_key"], before=audit_view(r),
                         after=audit_view(after))
            await seats.release(bk, uow, now=now, reservations=cancelled)
            total += len(rows)
            if not rows and not await _drop_has_open_rows(uow, drop_id):
                await drop_repo.mark_cleanup_done(uow.conn, drop_id)
    return total


async def _drop_has_open_rows(uow: Any, drop_id: Any) -> bool:
    from ..adapters.sql import one

    row = await one(
        uow.conn,
        """SELECT EXISTS (SELECT 1 FROM reservations WHERE drop_id = :d AND state IN ('PENDING', 'CONFIRMED'))
               OR EXISTS (SELECT 1 FROM waitlist WHERE drop_id = :d AND state IN ('WAITING', 'OFFERED')) AS open""",
        d=drop_id,
    )
    return bool(row and row["open"])


async def forget_idempotency_keys(bk: Booking) -> int:
    before = bk.clock() - timedelta(hours=bk.settings.booking_idempotency_ttl_hours)
    async with bk.db.uow() as uow:
        return await res_repo.cleanup_idempotency(uow.conn, before)


JOBS = (
    ("expire-holds", expire_holds),
    ("remind-holds", remind_holds),
    ("lapse-offers", lapse_offers),
    ("rebalance", rebalance),
    ("close-cancelled-drops", close_cancelled_drops),
)


async def sweep_once(bk: Booking) -> dict[str, int]:
    """One pass of every job (tests call this directly). A failing job does not stop the others."""
    done: dict[str, int] = {}
    for name, job in JOBS:
        try:
            done[name] = await job(bk)
        except Exception:
            log.exception("sweeper job %s failed", name)
            done[name] = -1
    return done


async def run(bk: Booking) -> None:
    """The supervised loop: every `booking_sweep_seconds`, sooner while there is more to do."""
    last_cleanup = 0.0
    while True:
        done = await sweep_once(bk)
        if time.monotonic() - last_cleanup > 60:
            try:
                await forget_idempotency_keys(bk)
            except Exception:
                log.exception("idempotency cleanup failed")
            last_cleanup = time.monotonic()
        busy = any(n >= bk.settings.booking_sweep_batch for n in done.values())
        await asyncio.sleep(0.05 if busy else bk.settings.booking_sweep_seconds)
