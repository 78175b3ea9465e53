"""DropSlot catalog service: the app factory (`uvicorn dropslot_catalog.main:create_app --factory`).

Stores, branches, products and drops, isolated per store by PostgreSQL row-level security
(see `migrations/versions/*_catalog_0002_*.py` for the policies and why public reads can
never see a draft), the drop lifecycle with its scheduler, and cached public browsing.
"""

from __future__ import annotations

from dropslot_kit.app import ServiceRuntime, create_service_app
from fastapi import FastAPI

from . import errors
from .adapters.cache import PublicCache
from .api import router
from .config import Settings
from .consumers import consumers
from .service import scheduler


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()

    async def startup(rt: ServiceRuntime) -> None:
        rt.extras["cache"] = PublicCache(settings.redis_url, settings.broker_namespace,
                                         ttl_seconds=settings.catalog_cache_ttl_seconds,
                                         enabled=settings.catalog_cache_enabled)

    async def shutdown(rt: ServiceRuntime) -> None:
        cache = rt.extras.get("cache")
        if cache is not None:
            await cache.close()

    app = create_service_app(
        settings,
        title="DropSlot catalog",
        routers=[router],
        consumers=consumers,
        background=[("drop-scheduler", scheduler.run)],
        on_startup=startup,
        on_shutdown=shutdown,
    )
    errors.install(app)
    return app
