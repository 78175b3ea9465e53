"""DropSlot webhooks service: the app factory (`uvicorn dropslot_webhooks.main:create_app --factory`).

Store owners register endpoints; every event that concerns a store is fanned out to the
store's matching endpoints and delivered, signed per Standard Webhooks, by a delivery loop
in every replica (see `delivery.py`).
"""

from __future__ import annotations

import os

from dropslot_kit.app import ServiceRuntime, create_service_app
from fastapi import FastAPI

from .api import router
from .config import Settings
from .consumers import consumers
from .delivery import DeliveryWorker, retention_loop
from .service import Webhooks


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()

    async def on_startup(rt: ServiceRuntime) -> None:
        assert rt.db is not None
        svc = Webhooks(settings, rt.db)
        rt.extras["webhooks"] = svc

    async def deliveries(rt: ServiceRuntime) -> None:
        svc: Webhooks = rt.extras["webhooks"]
        assert rt.db is not None
        name = os.environ.get("DROPSLOT_INSTANCE") or settings.service
        await DeliveryWorker(settings, rt.db, svc.box, name=name).run()

    async def retention(rt: ServiceRuntime) -> None:
        assert rt.db is not None
        await retention_loop(settings, rt.db)

    return create_service_app(
        settings,
        title="DropSlot webhooks",
        routers=[router],
        consumers=consumers,
        background=[("webhook-deliveries", deliveries), ("webhook-retention", retention)],
        on_startup=on_startup,
    )
