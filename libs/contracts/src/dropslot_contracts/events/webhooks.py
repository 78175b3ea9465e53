from __future__ import annotations

import uuid
from datetime import datetime

from ..envelope import Event
from ..registry import register


class EndpointEvent(Event):
    endpoint_id: uuid.UUID
    store_id: uuid.UUID
    url: str


@register
class EndpointCreated(EndpointEvent):
    TYPE = "webhooks.endpoint.created"
    event_types: list[str] = []
    description: str | None = None


@register
class EndpointUpdated(EndpointEvent):
    TYPE = "webhooks.endpoint.updated"
    active: bool
    event_types: list[str] = []


@register
class EndpointSecretRotated(EndpointEvent):
    TYPE = "webhooks.endpoint.secret_rotated"


@register
class EndpointDeleted(EndpointEvent):
    TYPE = "webhooks.endpoint.deleted"


@register
class EndpointDisabled(EndpointEvent):
    """Deliveries stopped: the receiver answered 410 Gone (`reason` "gone"), or failed without a
    success for the configured window, 5 days by default ("failing"). Owners re-enable it with
    PATCH {active: true}; what waited is then delivered."""

    TYPE = "webhooks.endpoint.disabled"
    reason: str  # gone | failing
    failing_since: datetime | None = None
    last_status_code: int | None = None
    last_error: str | None = None
