"""Every replica's slot cache hears of a change made in another replica.

Each replica caches its unlocked read of a slot for `booking_slot_cache_seconds` (runtime
SlotCache), and a read that said "sold out" is what refuses a drop's crowd without touching the
slot's row. When a seat is given back (a cancellation, an expiry, a failed payment, a lapsed
offer), a slot grows, or a drop changes state, the replica doing it forgets its own read; the
other replicas, and the gateway's repeated refusals that follow their reads (kit refusals), went
on refusing for up to the cache's life. So the transaction that makes such a change also
announces it (`announce`: `pg_notify`, delivered at commit and only if it commits), and every
replica listens (`listen`) and forgets those reads: a freed seat can be reserved through any
replica as soon as its transaction committed.

Listening is a help, not a condition for correctness: reservations are decided by the reserve
transaction, and a replica that is not listening (its listener reconnecting) still forgets every
read after the cache's life. When the listener (re)connects, the replica forgets everything it
cached, as it may have missed announcements meanwhile.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Iterable

import asyncpg
from dropslot_kit.db import UnitOfWork
from sqlalchemy import text

from .runtime import Booking, SlotCache

log = logging.getLogger("dropslot.booking.slotnews")

CHANNEL = "booking_slots"
PER_NOTIFY = 200  # ids per notification (a payload holds at most 8,000 bytes; an id takes 38)
CHECK_SECONDS = 5.0  # how often the listener's connection is checked (a dead one is replaced)


async def announce(uow: UnitOfWork, *, slots: Iterable[uuid.UUID] = (), drops: Iterable[uuid.UUID] = ()) -> None:
    """When this transaction commits, every replica forgets its reads of these slots and of every
    slot of these drops."""
    items = sorted({f"s{s}" for s in slots} | {f"d{d}" for d in drops})
    for i in range(0, len(items), PER_NOTIFY):
        await uow.conn.execute(text("SELECT pg_notify(:channel, :payload)"),
                               {"channel": CHANNEL, "payload": ",".join(items[i:i + PER_NOTIFY])})


def heard(cache: SlotCache, payload: str) -> None:
    """Forget what an announcement names (anything unreadable in it is skipped)."""
    for item in payload.split(","):
        try:
            kind, ident = item[:1], uuid.UUID(item[1:])
        except ValueError:
            continue
        if kind == "s":
            cache.forget(ident)
        elif kind == "d":
            cache.forget_drop(ident)


async def listen(bk: Booking) -> None:
    """Hear announcements for as long as the replica runs, reconnecting when the connection is lost."""
    backoff = 0.5
    while True:
        conn: asyncpg.Connection | None = None
        try:
            conn = await asyncpg.connect(bk.settings.plain_service_dsn(), server_settings={
                "application_name": f"dropslot-{bk.settings.service}-slotnews"})
            await conn.add_listener(CHANNEL, lambda _c, _pid, _ch, payload: heard(bk.slot_cache, payload))
            bk.slot_cache.entries.clear()  # announcements may have gone unheard until now
            backoff = 0.5
            while True:
                await asyncio.sleep(CHECK_SECONDS)
                await asyncio.wait_for(conn.execute("SELECT 1"), CHECK_SECONDS)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("slot announcements unheard, listening again in %.1fs: %r", backoff, exc)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 10.0)
        finally:
            if conn is not None and not conn.is_closed():
                conn.terminate()
