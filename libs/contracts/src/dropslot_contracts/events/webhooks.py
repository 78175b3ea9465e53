from __future__ import annotations

import uuid

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
    TYPE = "webhooks.endpoint.disabled"
    reason: str  # gone | failing
