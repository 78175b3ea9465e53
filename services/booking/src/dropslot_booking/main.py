"""DropSlot booking service: the app factory (`uvicorn dropslot_booking.main:create_app --factory`).

Slots, reservations, waitlist and check-in (API.md, booking section). Runs as several
stateless replicas: all state is in PostgreSQL (schema `booking`); the per-replica caches
(slot reads, verified tokens, the group-commit queues) are hints and never needed for
correctness.
"""

from __future__ import annotations

from dropslot_kit import refusals
from dropslot_kit.app import ServiceApp, ServiceRuntime, create_service_app

from .adapters import keys
from .adapters.hotpath import HotPath, SlotBatcher
from .api import router
from .api.fast import MAX_BODY, PATH, SLOT_PATH, lookup_answer, reserve_answer, slot_answer
from .config import Settings
from .consumers import BookingHolder, build_consumers
from .service import slotnews, sweeper
from .service.runtime import Booking, SlotCache


def create_app(settings: Settings | None = None) -> ServiceApp:
    settings = settings or Settings()
    holder = BookingHolder()

    async def on_startup(rt: ServiceRuntime) -> None:
        assert rt.db is not None
        hot = HotPath(settings, pool_size=settings.booking_pool_size)
        if rt.relay is not None:
            hot.on_commit = rt.relay.wake
        await hot.start()
        async with rt.db.uow() as uow:
            tokens = await keys.load_or_create(uow.conn)
        batcher = None
        if settings.booking_batching:
            batcher = SlotBatcher(hot, max_batch=settings.booking_batch_max, linger_ms=settings.booking_batch_linger_ms)
        bk = Booking(settings=settings, db=rt.db, hot=hot, tokens=tokens, batcher=batcher,
                     slot_cache=SlotCache(settings.booking_slot_cache_seconds))
        rt.extras["booking"] = bk
        holder.set(bk)

    async def on_shutdown(rt: ServiceRuntime) -> None:
        bk: Booking | None = rt.extras.get("booking")
        if bk is not None:
            if bk.batcher is not None:
                await bk.batcher.close()
            await bk.hot.close()

    async def sweep(rt: ServiceRuntime) -> None:
        await sweeper.run(await holder.get())

    async def hear_slot_news(rt: ServiceRuntime) -> None:
        await slotnews.listen(await holder.get())

    app = create_service_app(
        settings,
        title="DropSlot booking",
        routers=[router],
        consumers=build_consumers(holder.get),
        background=[("sweeper", sweep), ("slot-news", hear_slot_news)],
        on_startup=on_startup,
        on_shutdown=on_shutdown,
    )
    if settings.booking_fast_reserve:
        # Straight from the parsed request, inside the kit's request context, before FastAPI's layers.
        app.add_direct_route("POST", PATH, reserve_answer, max_body=MAX_BODY)
        # The slot's public availability, which the crowd reloads: one statement, no FastAPI.
        # (A body, which FastAPI would ignore, is ignored too.)
        app.add_direct_route("GET", SLOT_PATH, slot_answer)
        # The gateway's question behind its repeated sold-out answers (kit refusals): only while
        # the reserve route is direct does booking mark refusals the gateway may repeat.
        app.add_direct_route("POST", refusals.LOOKUP_PATH, lookup_answer, max_body=400 * refusals.MAX_LOOKUP)
    return app
