"""The clock's moves: SCHEDULED -> LIVE at `opens_at`, LIVE -> ENDED at `ends_at`.

Runs in every replica. Each pass finds due drops (an indexed query, no tenant needed: such
drops are public) and moves each in its own short transaction, in its own tenant, with a
conditional update (`claim_transition`): when replicas race for one drop, exactly one
moves it and emits the event; the rest skip it. The database's clock decides, so replicas
with skewed clocks agree.
"""

from __future__ import annotations

import asyncio
import logging

from dropslot_contracts.events.catalog import DropEnded, DropLive
from dropslot_kit.app import ServiceRuntime

from .. import views
from ..adapters import repo
from ..config import Settings
from ..metrics import DROP_TRANSITIONS
from .common import cache

log = logging.getLogger("dropslot.catalog.scheduler")


async def run_pass(rt: ServiceRuntime) -> int:
    """Move what is due now; returns how many drops moved."""
    assert rt.db is not None
    settings = rt.settings
    batch = settings.catalog_scheduler_batch if isinstance(settings, Settings) else 100
    async with rt.db.uow() as uow:
        due = await repo.due_drops(uow.conn, limit=batch)
    moved = 0
    for d in due:
        async with rt.db.uow(tenant_key=d["tenant_key"]) as uow:
            if not await repo.claim_transition(uow.conn, d["id"], d["target"]):
                continue  # another replica moved it, or it is being moved right now
            row = await repo.drop_view(uow.conn, d["id"], store_id=d["store_id"])
            assert row is not None
            after = views.drop_view(row)
            before = {**after, "status": "SCHEDULED" if d["target"] == "LIVE" else "LIVE"}
            event = DropLive if d["target"] == "LIVE" else DropEnded
            uow.emit(event(drop=views.drop_snapshot(row)), store_id=row["store_id"], tenant_key=row["tenant_key"],
                     before=before, after=after)
        moved += 1
        DROP_TRANSITIONS.labels(d["target"], "clock").inc()
        log.info("drop %s is %s", d["id"], d["target"])
    if moved:
        await cache(rt).invalidate()
    return moved


async def run(rt: ServiceRuntime) -> None:
    """The background loop (supervised by the kit: a crash is logged and it restarts)."""
    settings = rt.settings
    tick = settings.catalog_scheduler_tick_seconds if isinstance(settings, Settings) else 1.0
    while True:
        moved = await run_pass(rt)
        # More may be due right away (a full batch, or a drop that opened and ended at once).
        await asyncio.sleep(0 if moved else tick)
