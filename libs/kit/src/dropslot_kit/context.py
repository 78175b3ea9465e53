"""Per-request (or per-message) context: who acts, and which request/correlation this is."""

from __future__ import annotations

import contextvars
import dataclasses
import uuid
from dataclasses import dataclass, field

from dropslot_contracts import Actor


@dataclass(frozen=True)
class CallContext:
    actor: Actor = field(default_factory=Actor)
    correlation_id: str | None = None
    request_id: str | None = None


_EMPTY = CallContext()  # frozen, so sharing it as the default is safe
_current: contextvars.ContextVar[CallContext] = contextvars.ContextVar("dropslot_call", default=_EMPTY)  # noqa: B039


def current() -> CallContext:
    return _current.get()


def set_current(ctx: CallContext) -> contextvars.Token[CallContext]:
    return _current.set(ctx)


def reset(token: contextvars.Token[CallContext]) -> None:
    _current.reset(token)


def act_as(user_id: uuid.UUID) -> None:
    """Name the person acting in this call (the events it emits carry them), keeping the ip and
    user agent the request came with."""
    ctx = current()
    actor = Actor(user_id=user_id, ip=ctx.actor.ip, user_agent=ctx.actor.user_agent)
    set_current(dataclasses.replace(ctx, actor=actor))
