"""DropSlot audit service: the app factory (`uvicorn dropslot_audit.main:create_app --factory`).

Who did what, from every event: the `trail` consumer (pattern `#`) appends one row per event
to `audit_logs` (actor, action = event type, entity and id, store, before/after, time), and
`GET /api/v1/audit-logs` reads it. The table is append-only (a trigger refuses UPDATE, DELETE
and TRUNCATE) and partitioned by month; a background loop creates partitions ahead and, with
`DROPSLOT_AUDIT_RETENTION_MONTHS` > 0, drops whole months past retention, archiving each to
`DROPSLOT_AUDIT_ARCHIVE_DIR` (gzipped CSV) first when that is set.
"""

from dropslot_kit.app import ServiceRuntime, create_service_app
from fastapi import FastAPI

from . import service
from .api import router
from .config import Settings
from .consumers import build_consumers


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()

    async def partitions(rt: ServiceRuntime) -> None:
        assert rt.db is not None
        await service.partition_loop(rt.db, settings)

    return create_service_app(
        settings,
        title="DropSlot audit",
        routers=[router],
        consumers=build_consumers(),
        background=[("audit-partitions", partitions)],
    )
