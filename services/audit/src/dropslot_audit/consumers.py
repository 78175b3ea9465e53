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
    # Prefetch counts messages, and the relay packs up to 100 events into one: 256 let a storm's
    # backlog sit parsed in memory (12,000 events took audit's peak RSS to 157 MB). 32 messages
    # still fill every 64-event batch, from one message of a storm or 32 single-event ones.
    @consumers.on_many("#", name="trail", prefetch=32)
    async def on_events(envs: list[Envelope], uow: UnitOfWork) -> None:
        await service.record(uow, envs)

    return consumers
