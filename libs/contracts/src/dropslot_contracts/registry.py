"""Registry from (event type, version) to its pydantic model."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TypeVar

from .envelope import Event, routing_key_for

E = TypeVar("E", bound=Event)

_REGISTRY: dict[tuple[str, int], type[Event]] = {}


class UnknownEvent(LookupError):
    pass


def register(cls: type[E]) -> type[E]:
    routing_key_for(cls.TYPE)
    key = (cls.TYPE, cls.VERSION)
    if key in _REGISTRY and _REGISTRY[key] is not cls:
        raise ValueError(f"event {key} registered twice")
    _REGISTRY[key] = cls
    return cls


def model_for(event_type: str, version: int = 1) -> type[Event]:
    _load_all()
    try:
        return _REGISTRY[(event_type, version)]
    except KeyError:
        raise UnknownEvent(f"{event_type} v{version}") from None


def all_events() -> Iterator[type[Event]]:
    _load_all()
    yield from sorted(_REGISTRY.values(), key=lambda c: (c.TYPE, c.VERSION))


def _load_all() -> None:
    from . import events  # noqa: F401  (importing registers every event module)
