from __future__ import annotations

from ..envelope import Event
from ..registry import register


@register
class PartitionDropped(Event):
    """Retention removed a month of audit rows (archived first when configured)."""

    TYPE = "audit.partition.dropped"
    partition: str
    archived_to: str | None = None
