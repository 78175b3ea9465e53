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


# Prefetch counts messages, and booking's outbox relay packs up to 100 events into one: at 100
# a storm's backlog sat parsed in memory (5,000 reservations on one slot took the peak RSS to
# 150.8 MB, over the 150 MB target). 32 messages still hold up to 3,200 events to fan out.
@consumers.on(*SUBSCRIBED_PATTERNS, name="fanout", prefetch=32)
async def fan_out(env: Envelope, uow: UnitOfWork) -> None:
    await service.fan_out(env, uow)
