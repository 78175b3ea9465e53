"""DropSlot payments service: the app factory (`uvicorn dropslot_payments.main:create_app --factory`)."""

from __future__ import annotations

from dropslot_kit.app import ServiceRuntime, create_service_app
from fastapi import FastAPI

from .adapters.providers import build_providers
from .adapters.providers.sandbox import SandboxProvider
from .api import router
from .config import Settings
from .consumers import build_consumers
from .service.worker import OpsWorker, Reconciler


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()

    async def on_startup(rt: ServiceRuntime) -> None:
        assert rt.db is not None
        providers = build_providers(settings)
        rt.extras["providers"] = providers
        rt.extras["ops"] = OpsWorker(settings, rt.db, providers)
        rt.extras["reconciler"] = Reconciler(settings, rt.db)

    async def on_shutdown(rt: ServiceRuntime) -> None:
        for provider in rt.extras.get("providers", {}).values():
            await provider.close()

    async def ops_loop(rt: ServiceRuntime) -> None:
        await rt.extras["ops"].run()

    async def reconcile_loop(rt: ServiceRuntime) -> None:
        await rt.extras["reconciler"].run()

    async def sandbox_settle_loop(rt: ServiceRuntime) -> None:
        sandbox = rt.extras["providers"].get("sandbox")
        if isinstance(sandbox, SandboxProvider):
            await sandbox.run_settler()

    async def sandbox_callback_loop(rt: ServiceRuntime) -> None:
        sandbox = rt.extras["providers"].get("sandbox")
        if isinstance(sandbox, SandboxProvider):
            await sandbox.run_callbacks()

    background = [("payments-ops", ops_loop), ("payments-reconcile", reconcile_loop)]
    if settings.payments_sandbox_enabled:
        background += [("sandbox-settle", sandbox_settle_loop), ("sandbox-callbacks", sandbox_callback_loop)]
    return create_service_app(
        settings, title="DropSlot payments", routers=[router], consumers=build_consumers(settings),
        background=background, on_startup=on_startup, on_shutdown=on_shutdown,
    )
