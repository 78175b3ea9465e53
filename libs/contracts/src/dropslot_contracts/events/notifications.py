from __future__ import annotations

import uuid

from ..envelope import Event
from ..registry import register


class NotificationEvent(Event):
    notification_id: uuid.UUID
    user_id: uuid.UUID
    channel: str
    template: str


@register
class NotificationSent(NotificationEvent):
    TYPE = "notifications.notification.sent"


@register
class NotificationFailed(NotificationEvent):
    TYPE = "notifications.notification.failed"
    error: str
