"""What catalog consumes: only store memberships (who may manage which store), kept by
the kit's handler from `catalog.store.created` and `identity.role.granted/revoked`."""

from __future__ import annotations

from dropslot_kit.broker import EventConsumers
from dropslot_kit.memberships import consume_memberships

consumers = EventConsumers("catalog")
consume_memberships(consumers)
