"""Refusals the gateway may repeat: what booking and the gateway agree on (the sold-out shortcut).

After a slot sells out, a drop's crowd keeps asking for it, thousands of requests a second, and
every one of them gets the same 409 `sold-out`. Booking answers those from its per-replica slot
cache without touching the slot's row, but each still crossed the gateway to a replica and back
(half of a refusal's CPU on this two-core machine went to that hop). So booking marks such an
answer with `HEADER`: the slot, for how long the gateway may repeat it (never longer than its own
cache would answer the same, and at most `booking_repeat_refusal_seconds`, 0.1 s), and whether the
drop requires a verified email. For that long the gateway gives
the same answer itself to a reservation request for that slot from a signed-in person, unless
the request is one booking might answer otherwise (gateway.refusals has the exact rules).

One thing booking checks before refusing is not in the answer: whether the request's
Idempotency-Key already has a stored answer (a retry of a reservation that did succeed gets its
201 back). The gateway asks booking that, for many requests at once, at `LOOKUP_PATH` (the body
vouched for by the gateway's body proof, `auth.body_proof`, which no token proof can pass for),
and forwards those that have one.

The header is the gateway's to read and drop: clients never see it.
"""

from __future__ import annotations

HEADER = b"x-dropslot-repeatable-refusal"
LOOKUP_PATH = "/internal/v1/idempotency-lookups"
MAX_LOOKUP = 1000  # keys per lookup request


def directive(slot_id: str, seconds: float, verified_only: bool) -> tuple[bytes, bytes]:
    """The header booking adds to a refusal the gateway may repeat for `seconds`."""
    return HEADER, b"%s %.3f %d" % (slot_id.encode("ascii"), seconds, 1 if verified_only else 0)


def parse(value: bytes) -> tuple[str, float, bool] | None:
    """(slot id, seconds, verified only) from the header; None if it is not one we wrote."""
    parts = value.split()
    if len(parts) != 3 or parts[2] not in (b"0", b"1"):
        return None
    try:
        seconds = float(parts[1])
        slot_id = parts[0].decode("ascii")
    except (ValueError, UnicodeDecodeError):
        return None
    if not 0 < seconds <= 60:
        return None
    return slot_id, seconds, parts[2] == b"1"
