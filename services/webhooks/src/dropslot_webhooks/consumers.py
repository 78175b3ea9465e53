"""What the webhooks service consumes: every event that concerns a store (fanned out to the
store's endpoints), and the store memberships that authorize owners."""

from __future__ import annotations

from dropslot_contracts import Envelope
from dropslot_kit.broker import EventConsumers
from dropslot_kit.db import UnitOfWork
from dropslot_kit.memberships import consume_memberships

from . import service
from .domain.filters import SUBSCRIBED_PATTERNS

consumers = EventConsumers("webhooks")
consume_memberships(consumers)


@consumers.on(*SUBSCRIBED_PATTERNS, name="fanout", prefetch=100)
async def fan_out(env: Envelope, uow: UnitOfWork) -> None:
    await service.fan_out(env, uow)
