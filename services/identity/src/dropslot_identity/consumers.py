"""What identity consumes: `catalog.store.created` makes the store's creator its owner."""

from __future__ import annotations

from dropslot_contracts import Envelope
from dropslot_kit.broker import EventConsumers
from dropslot_kit.db import UnitOfWork

from .service import on_store_created

consumers = EventConsumers("identity")


@consumers.on("catalog.store.created", name="store-owners")
async def store_owners(env: Envelope, uow: UnitOfWork) -> None:
    await on_store_created(env, uow)
