"""One audit entry per event: who (actor), what (action = event type), to what (entity, id),
which store, and the before/after snapshots the producer put in the envelope."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from dropslot_contracts import Envelope

REDACTED = "[redacted]"
# Keys whose values must not be copied into an append-only, long-lived trail: single-use
# tokens (email verification, password reset), check-in tokens, webhook and payment secrets.
_SECRET_MARKERS = ("token", "secret", "password")

# Identity events a person causes for their own account before holding an access token
# (sign-up, sign-in, verify, reset): the request is anonymous, but the actor is that user.
SELF_SERVICE_EVENTS = frozenset({
    "identity.user.registered",
    "identity.session.created",
    "identity.user.email_verified",
    "identity.user.password_changed",
})

# When the payload has no id of the entity named in the type, the most specific id it
# carries identifies what the event is about (e.g. `booking.refund.requested` -> reservation).
_FALLBACK_ID_KEYS = (
    "id", "reservation_id", "payment_id", "entry_id", "slot_id", "drop_id", "product_id",
    "endpoint_id", "notification_id", "user_id", "store_id",
)
# Where a payload nests its entity under another name than the type's entity segment.
_NESTED_AS = {"waitlist": "entry"}


@dataclass(frozen=True)
class AuditEntry:
    event_id: uuid.UUID
    action: str
    entity: str
    entity_id: str | None
    store_id: uuid.UUID | None
    tenant_key: str | None
    actor_user_id: uuid.UUID | None
    ip: str | None
    ua: str | None
    before: dict[str, Any] | None
    after: dict[str, Any] | None
    data: dict[str, Any]
    producer: str
    correlation_id: str | None
    created_at: datetime  # when the action happened (the event's occurred_at)


def redact(value: Any) -> Any:
    if isinstance(value, dict):
        return {
            k: (REDACTED if v is not None and _is_secret(k) else redact(v)) for k, v in value.items()
        }
    if isinstance(value, list):
        return [redact(v) for v in value]
    return value


def _is_secret(key: str) -> bool:
    k = key.lower()
    return any(m in k for m in _SECRET_MARKERS)


def _as_id(value: Any) -> str | None:
    if value is None or isinstance(value, dict | list | bool):
        return None
    return str(value)


def derive_entity(event_type: str, data: dict[str, Any]) -> tuple[str, str | None]:
    """`<service>.<entity>.<verb>` names the entity; the payload gives its id."""
    entity = event_type.split(".")[1]
    nested = data.get(_NESTED_AS.get(entity, entity))
    if isinstance(nested, dict):
        for key in (f"{entity}_id", f"{_NESTED_AS.get(entity, entity)}_id", "id"):
            if (found := _as_id(nested.get(key))) is not None:
                return entity, found
    elif (found := _as_id(nested)) is not None:  # e.g. audit.partition.dropped: {"partition": name}
        return entity, found
    if (found := _as_id(data.get(f"{entity}_id"))) is not None:
        return entity, found
    for key in _FALLBACK_ID_KEYS:
        if (found := _as_id(data.get(key))) is not None:
            return entity, found
    return entity, None


def derive_store(env: Envelope) -> uuid.UUID | None:
    """The envelope's store, else one the payload names (top level or in its entity)."""
    if env.store_id is not None:
        return env.store_id
    candidates = [env.data] + [v for v in env.data.values() if isinstance(v, dict)]
    for d in candidates:
        raw = d.get("store_id")
        if raw:
            try:
                return uuid.UUID(str(raw))
            except ValueError:
                continue
    return None


def derive_actor(env: Envelope) -> uuid.UUID | None:
    if env.actor.user_id is not None:
        return env.actor.user_id
    if env.type in SELF_SERVICE_EVENTS and env.data.get("user_id"):
        try:
            return uuid.UUID(str(env.data["user_id"]))
        except ValueError:
            return None
    return None


def entry_from_envelope(env: Envelope) -> AuditEntry:
    entity, entity_id = derive_entity(env.type, env.data)
    return AuditEntry(
        event_id=env.id,
        action=env.type,
        entity=entity,
        entity_id=entity_id,
        store_id=derive_store(env),
        tenant_key=env.tenant_key,
        actor_user_id=derive_actor(env),
        ip=env.actor.ip,
        ua=env.actor.user_agent,
        before=redact(env.before) if env.before is not None else None,
        after=redact(env.after) if env.after is not None else None,
        data=redact(env.data),
        producer=env.producer,
        correlation_id=env.correlation_id,
        created_at=env.occurred_at,
    )
