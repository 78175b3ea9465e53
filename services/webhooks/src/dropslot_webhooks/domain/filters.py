"""Which event types an endpoint receives.

An endpoint lists exact types (`booking.reservation.confirmed`) and/or patterns, segment by
segment: `*` matches one segment, except as the last segment, where it matches the rest
(`booking.*` is everything booking sends, `booking.reservation.*` every reservation event,
`*.reservation.created` works too); `#` matches any number of segments (AMQP style). An empty
list means every event.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from functools import lru_cache

_SEGMENT = re.compile(r"^([a-z][a-z0-9_]*|\*|#)$")

# Event types that concern a store but are commands between our services, not facts for
# third parties.
INTERNAL_TYPES = frozenset({"booking.refund.requested"})
# What the webhooks consumer listens to (AMQP binding patterns): everything concerning a store
# that the issue names: reservations, waitlist, check-ins, slots, payments, drops, products.
SUBSCRIBED_PATTERNS = ("booking.#", "payments.#", "catalog.drop.*", "catalog.product.*")


class InvalidPattern(ValueError):
    pass


def validate_pattern(pattern: str) -> str:
    pattern = pattern.strip()
    if not pattern or len(pattern) > 200:
        raise InvalidPattern("an event type is 1-200 characters")
    segments = pattern.split(".")
    if any(not _SEGMENT.match(s) for s in segments):
        raise InvalidPattern(f"{pattern!r} is not an event type or pattern (e.g. booking.reservation.*)")
    return pattern


@lru_cache(maxsize=4096)
def _matches(pattern: str, event_type: str, amqp: bool) -> bool:
    return _match(tuple(pattern.split(".")), tuple(event_type.split(".")), amqp)


def _match(pat: Sequence[str], seg: Sequence[str], amqp: bool) -> bool:
    if not pat:
        return not seg
    head = pat[0]
    if head == "#":
        return any(_match(pat[1:], seg[i:], amqp) for i in range(len(seg) + 1))
    if not seg:
        return False
    if head == "*":
        if len(pat) == 1 and not amqp:
            return True  # our filters: a trailing `*` takes the rest
        return _match(pat[1:], seg[1:], amqp)
    return head == seg[0] and _match(pat[1:], seg[1:], amqp)


def matches(pattern: str, event_type: str) -> bool:
    return _matches(pattern, event_type, False)


def wants(event_types: Iterable[str] | None, event_type: str) -> bool:
    """Does an endpoint with this filter receive this event? Empty/None: everything."""
    types = list(event_types or ())
    return not types or any(matches(p, event_type) for p in types)


def deliverable(event_type: str) -> bool:
    """Is this an event type a store's endpoint can receive at all?"""
    return event_type not in INTERNAL_TYPES and any(_matches(b, event_type, True) for b in SUBSCRIBED_PATTERNS)


def deliverable_types(known: Iterable[str]) -> list[str]:
    return sorted({t for t in known if deliverable(t)})


def normalize(event_types: Iterable[str], known: Iterable[str]) -> list[str]:
    """Validate a filter: each entry a well-formed pattern that matches at least one event a
    store can receive (catches typos like `booking.reservaton.created`). Order kept, no dups."""
    known_types = deliverable_types(known)
    out: list[str] = []
    for raw in event_types:
        p = validate_pattern(raw)
        if not any(matches(p, t) for t in known_types):
            raise InvalidPattern(f"{p!r} matches no event a store receives")
        if p not in out:
            out.append(p)
    return out


def _segment_regex(segment: str, last: bool) -> str:
    # Each piece carries its leading dot; the type is matched as "." + type.
    if segment == "#":
        return r"(?:\.[^.]+)*"
    if segment == "*":
        return r"(?:\.[^.]+)+" if last else r"\.[^.]+"
    return r"\." + segment  # segments are [a-z0-9_]: nothing to escape


def to_regex(event_types: Iterable[str] | None) -> str | None:
    """The filter as one regular expression (valid in Python and PostgreSQL), matched against
    "." + event type, so the database can fan an event out in one statement. None: everything.
    Must agree with `wants` (tested)."""
    types = list(event_types or ())
    if not types:
        return None
    alternatives = []
    for p in types:
        segs = p.split(".")
        alternatives.append("".join(_segment_regex(s, i == len(segs) - 1) for i, s in enumerate(segs)))
    return "^(?:" + "|".join(f"(?:{a})" for a in alternatives) + ")$"
