"""Every event of the system lands in the trail; store memberships feed the owner view."""

from __future__ import annotations

from dropslot_contracts import Envelope
from dropslot_kit.broker import EventConsumers
from dropslot_kit.db import UnitOfWork
from dropslot_kit.memberships import consume_memberships

from . import service


def build_consumers() -> EventConsumers:
    consumers = EventConsumers("audit")
    consume_memberships(consumers)

    # The busiest consumer of the system (every event): a batch is one multi-row INSERT.
    @consumers.on_many("#", name="trail", prefetch=256)
    async def on_events(envs: list[Envelope], uow: UnitOfWork) -> None:
        await service.record(uow, envs)

    return consumers
