"""What booking consumes: catalog's drops and stores, store memberships, and payments (saga)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from dropslot_contracts import Envelope
from dropslot_kit.broker import EventConsumers
from dropslot_kit.db import UnitOfWork
from dropslot_kit.memberships import consume_memberships

from .service import drops, saga
from .service.runtime import Booking

GetBooking = Callable[[], Awaitable[Booking]]


def build_consumers(get_booking: GetBooking) -> EventConsumers:
    consumers = EventConsumers("booking")
    consume_memberships(consumers)

    @consumers.on("catalog.drop.*", name="drops")
    async def on_drop(env: Envelope, uow: UnitOfWork) -> None:
        await drops.on_drop_event(await get_booking(), env, uow)

    @consumers.on("catalog.store.created", "catalog.store.updated", name="stores")
    async def on_store(env: Envelope, uow: UnitOfWork) -> None:
        await drops.on_store_event(await get_booking(), env, uow)

    @consumers.on("payments.payment.*", name="payments")
    async def on_payment(env: Envelope, uow: UnitOfWork) -> None:
        await saga.on_payment_event(await get_booking(), env, uow)

    return consumers


class BookingHolder:
    """Consumers start before the app's start-up hook has built the runtime: they wait for it."""

    def __init__(self) -> None:
        self._ready = asyncio.Event()
        self._booking: Booking | None = None

    def set(self, booking: Booking) -> None:
        self._booking = booking
        self._ready.set()

    async def get(self) -> Booking:
        if self._booking is None:
            await asyncio.wait_for(self._ready.wait(), 60)
        assert self._booking is not None
        return self._booking
