"""The local copy of drops, from `catalog.drop.*` events (each carries the full snapshot).

A drop is reservable while its local status is LIVE (catalog's scheduler emits
`catalog.drop.live` / `ended` / `cancelled`). The status is mirrored onto its slots
(`sellable`), which the reserve transaction checks on the row it locks. A cancelled drop's
reservations and waitlist entries are closed by the sweeper in chunks (see sweeper.py), so
that a drop of thousands of seats is not cancelled in one giant transaction.
"""

from __future__ import annotations

import uuid

from dropslot_contracts import Envelope
from dropslot_contracts.events.catalog import DropSnapshot
from dropslot_kit.db import UnitOfWork

from ..adapters import drops as repo
from ..adapters.sql import set_scope
from ..domain import rules
from . import slotnews
from .runtime import Booking

STATUS_BY_EVENT = {
    "catalog.drop.live": "LIVE",
    "catalog.drop.ended": "ENDED",
    "catalog.drop.cancelled": "CANCELLED",
}


async def on_drop_event(bk: Booking, env: Envelope, uow: UnitOfWork) -> None:
    snapshot = DropSnapshot.model_validate(env.data["drop"])
    rule = rules.parse_rule(snapshot.reservation_rule)
    # The event type is the fact; the snapshot's status says the same unless catalog lagged.
    status = STATUS_BY_EVENT.get(env.type, snapshot.status.upper())
    await set_scope(uow.conn, all_rows=True)
    await repo.upsert_store(uow.conn, snapshot.store_id, snapshot.tenant_key, snapshot.store_name)
    stored = await repo.upsert_drop(uow.conn, repo.drop_values(snapshot, rule, status, env.occurred_at))
    if stored is None:
        return  # stale snapshot (an older event delivered late)
    await repo.sync_slots_sellable(uow.conn, snapshot.drop_id, stored == "LIVE")
    bk.slot_cache.forget_drop(snapshot.drop_id)
    await slotnews.announce(uow, drops=[snapshot.drop_id])  # the other replicas, once committed


async def on_store_event(bk: Booking, env: Envelope, uow: UnitOfWork) -> None:
    data = env.data
    await repo.upsert_store(uow.conn, uuid.UUID(str(data["store_id"])), str(data["tenant_key"]), data.get("name"))
