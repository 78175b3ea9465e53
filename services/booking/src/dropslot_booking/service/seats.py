"""Giving seats back: the one path every cancellation, expiry, payment failure, lapsed offer and
capacity increase takes, so freed seats always go to the waitlist before the public.

Lock order everywhere in booking: reservation / waitlist rows -> per-user counters (sorted)
-> slot rows (sorted). The reserve transaction takes its locks in the same order, so no cycle
(and no deadlock) can form between them.
"""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Iterable
from datetime import datetime
from typing import Any

from dropslot_contracts.events.booking import WaitlistOfferMade
from dropslot_kit.db import UnitOfWork

from ..adapters import reservations as res_repo
from ..adapters import slots as slot_repo
from . import slotnews
from .runtime import Booking
from .views import waitlist_entry


async def release(
    bk: Booking,
    uow: UnitOfWork,
    *,
    now: datetime,
    reservations: Iterable[dict[str, Any]] = (),
    offers: Iterable[dict[str, Any]] = (),
    slots: Iterable[uuid.UUID] = (),
) -> None:
    """Seats of `reservations` (already moved out of an active state in this transaction) and of
    `offers` (waitlist entries no longer OFFERED) go back to their slots, and each touched slot
    (plus `slots`, e.g. one whose capacity grew) offers its free seats to the people waiting."""
    reservations = list(reservations)
    offers = list(offers)
    await res_repo.count_down(uow.conn, [(r["drop_id"], r["user_id"]) for r in reservations])
    freed_reserved = Counter(r["slot_id"] for r in reservations)
    freed_offers = Counter(o["slot_id"] for o in offers)
    for slot_id in sorted(set(freed_reserved) | set(freed_offers) | set(slots)):
        after, offered = await slot_repo.release_and_offer(
            uow.conn, slot_id, now=now, minute_seconds=bk.settings.booking_minute_seconds,
            reserved=freed_reserved[slot_id], waitlist=freed_offers[slot_id],
        )
        emit_offers(uow, after, offered)
    if freed_reserved or freed_offers:
        freed = set(freed_reserved) | set(freed_offers)
        for slot_id in freed:
            bk.slot_cache.forget(slot_id)
        await slotnews.announce(uow, slots=freed)  # every replica, once this commits


def emit_offers(uow: UnitOfWork, slot: dict[str, Any], offered: list[dict[str, Any]]) -> None:
    for entry in offered:
        view = {**slot, **entry, "id": entry["id"]}
        uow.emit(
            WaitlistOfferMade(entry=waitlist_entry(view, 0)),
            store_id=entry["store_id"], tenant_key=entry["tenant_key"],
            before={"state": "WAITING"}, after={"state": "OFFERED", "offer_expires_at": str(entry["offer_expires_at"])},
        )
