"""DropSlot event contracts."""

from .envelope import SYSTEM, Actor, Envelope, Event, TraceContext, routing_key_for
from .registry import UnknownEvent, all_events, model_for, register
from .rules import ReservationRule, StrictReservationRule

__all__ = [
    "SYSTEM",
    "Actor",
    "Envelope",
    "Event",
    "ReservationRule",
    "StrictReservationRule",
    "TraceContext",
    "UnknownEvent",
    "all_events",
    "model_for",
    "register",
    "routing_key_for",
]
