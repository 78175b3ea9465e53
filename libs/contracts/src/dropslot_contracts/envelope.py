"""The one envelope every DropSlot event travels in.

The envelope is what the broker, the outbox, the inbox and the audit trail see;
`data` is the typed payload of one registered event model (see `registry`).
The envelope's `id` is the idempotency key of the event everywhere.
"""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, field_validator

ROUTING_KEY_RE = re.compile(r"^[a-z][a-z0-9_]*\.[a-z][a-z0-9_]*\.[a-z][a-z0-9_]*$")


def routing_key_for(event_type: str) -> str:
    """Routing key rule: the routing key *is* the event type, `<service>.<entity>.<verb>`."""
    if not ROUTING_KEY_RE.match(event_type):
        raise ValueError(f"event type {event_type!r} is not <service>.<entity>.<verb>")
    return event_type


def utcnow() -> datetime:
    return datetime.now(UTC)


class Actor(BaseModel):
    """Who caused the event, carried from the original request."""

    model_config = ConfigDict(frozen=True)

    user_id: uuid.UUID | None = None
    ip: str | None = None
    user_agent: str | None = None


SYSTEM = Actor()


class TraceContext(BaseModel):
    """W3C trace context, so a consumer continues the producer's trace."""

    traceparent: str | None = None
    tracestate: str | None = None


class Event(BaseModel):
    """Base of every event payload: a past-tense fact.

    Subclasses set `TYPE` (`<service>.<entity>.<verb>`) and `VERSION`. Contracts are
    additive: add optional fields, never change a field's meaning; a breaking change is
    a new class with `VERSION + 1`, published beside the old one.
    """

    model_config = ConfigDict(extra="allow")

    TYPE: ClassVar[str]
    VERSION: ClassVar[int] = 1


class Envelope(BaseModel):
    id: uuid.UUID = Field(default_factory=uuid.uuid4)
    type: str
    version: int = 1
    occurred_at: datetime = Field(default_factory=utcnow)
    producer: str
    store_id: uuid.UUID | None = None
    tenant_key: str | None = None
    actor: Actor = Field(default_factory=Actor)
    correlation_id: str | None = None
    trace: TraceContext = Field(default_factory=TraceContext)
    # Snapshots for audit of a change; the producing service fills them.
    before: dict[str, Any] | None = None
    after: dict[str, Any] | None = None
    data: dict[str, Any]

    @field_validator("type")
    @classmethod
    def _type_is_routing_key(cls, v: str) -> str:
        return routing_key_for(v)

    @property
    def routing_key(self) -> str:
        return self.type

    def typed(self) -> Event:
        """The payload parsed as its registered model."""
        from .registry import model_for

        return model_for(self.type, self.version).model_validate(self.data)

    @classmethod
    def wrap(
        cls,
        event: Event,
        *,
        producer: str,
        store_id: uuid.UUID | None = None,
        tenant_key: str | None = None,
        actor: Actor | None = None,
        correlation_id: str | None = None,
        trace: TraceContext | None = None,
        before: dict[str, Any] | None = None,
        after: dict[str, Any] | None = None,
    ) -> Envelope:
        return cls(
            type=event.TYPE,
            version=event.VERSION,
            producer=producer,
            store_id=store_id,
            tenant_key=tenant_key,
            actor=actor or Actor(),
            correlation_id=correlation_id,
            trace=trace or TraceContext(),
            before=before,
            after=after,
            data=event.model_dump(mode="json"),
        )
