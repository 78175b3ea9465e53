"""The sold-out shortcut: booking's repeatable refusals, given again by the gateway (kit refusals).

Booking marks a 409 `sold-out` with how long its own slot cache will keep giving that refusal
(and whether the drop requires a verified email). Until then, the gateway answers a
`POST /api/v1/reservations` for that slot with the same answer itself, after its own checks
(token, rate limits), when booking could only have given it too:

- a signed-in person whose token the gateway verified, with a verified email if the drop
  requires one (otherwise booking answers `email-not-verified` first);
- a JSON object body whose `slot_id` is exactly the marked slot's id and that carries no
  `customer_note` (booking validates notes before anything else: those go to booking);
- no Idempotency-Key, or one of 1-255 characters (API.md; any other goes to booking for its
  422) that has no stored answer: booking is asked that, for many requests in one call
  (`Refusals.stored`), and a request whose key has one (a retry of a reservation that
  succeeded, or a key reused for another request) is forwarded, to get its stored 201 or 422.

Anything else, and every request when a lookup fails, is forwarded as always. So a sold-out
slot is told "sold out" by the same bytes, without each refusal crossing to a booking replica
and back, for no longer than booking said: at most 0.1 s (`booking_repeat_refusal_seconds`)
after a seat is freed by something that did not pass through this gateway (an expiry, a failed
payment, another gateway replica); a change that does pass through it ends the repeat at once.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson
from dropslot_kit import refusals
from dropslot_kit.auth import PROOF_HEADER, Principal
from dropslot_kit.coalesce import Coalescer
from prometheus_client import Counter

from .upstream import ConnectFailed, UpstreamPool

log = logging.getLogger("dropslot.gateway.refusals")

RESERVE_PATH = "/api/v1/reservations"
MAX_KEY = 255  # API.md: an Idempotency-Key is 1-255 characters
PROOF = PROOF_HEADER.encode()

REPEATED = Counter("gateway_refusals_repeated_total",
                   "Sold-out refusals the gateway gave itself, repeating booking's (kit refusals)")
LOOKUPS = Counter("gateway_idempotency_lookups_total",
                  "Idempotency-Key lookups asked of booking for repeated refusals", ["outcome"])


class LookupFailed(Exception):
    """Booking could not say whether keys have stored answers: their requests are forwarded."""


@dataclass(slots=True)
class Refusal:
    until: float  # time.monotonic() until which booking said it may be repeated
    verified_only: bool
    status: int
    headers: list[tuple[bytes, bytes]]  # booking's answer headers, without the request id
    body: bytes


class Refusals:
    """The repeatable refusals seen from booking, by slot id, and the key lookups."""

    def __init__(self, pool: UpstreamPool, replicas: Callable[[], list[str]], vouch: Callable[[str], str | None],
                 *, max_slots: int = 10_000, max_batch: int = 500):
        self.pool = pool
        self.replicas = replicas  # booking's base URLs, in the order to try them
        self.vouch = vouch  # the gateway's proof for a body it sends (None without keys)
        self.max_slots = max_slots
        self.slots: dict[str, Refusal] = {}
        self.lookups: Coalescer[tuple[str, str], bool] = Coalescer(
            self._stored_batch, max_batch=min(max_batch, refusals.MAX_LOOKUP))

    def learn(self, value: bytes, status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
        """Booking's answer carried the header (`value`): remember it for as long as it says."""
        parsed = refusals.parse(value)
        if parsed is None:
            return
        slot_id, seconds, verified_only = parsed
        now = time.monotonic()
        if slot_id not in self.slots and len(self.slots) >= self.max_slots:
            self.slots = {k: r for k, r in self.slots.items() if r.until > now}
            if len(self.slots) >= self.max_slots:
                return
        self.slots[slot_id] = Refusal(now + seconds, verified_only, status, headers, body)

    def candidate(self, body: bytes, principal: Principal, key: bytes | None) -> Refusal | None:
        """The refusal booking would give this request from its cache now, if the gateway may give
        it (module docstring), before the key lookup."""
        if key is not None and not 1 <= len(key) <= MAX_KEY:
            return None
        try:
            data: Any = orjson.loads(body)
        except ValueError:
            return None
        if not isinstance(data, dict) or data.get("customer_note") is not None:
            return None
        slot_id = data.get("slot_id")
        if not isinstance(slot_id, str):
            return None
        entry = self.slots.get(slot_id)
        if entry is None:
            return None
        if time.monotonic() >= entry.until:
            del self.slots[slot_id]
            return None
        if entry.verified_only and not principal.email_verified:
            return None
        return entry

    async def answer(self, body: bytes, principal: Principal, key: bytes | None) -> Refusal | None:
        """The refusal to give this request here, or None: forward it."""
        entry = self.candidate(body, principal, key)
        if entry is None:
            return None
        if key is not None:
            try:
                if await self.stored(str(principal.user_id), key.decode("latin-1")):
                    return None
            except LookupFailed as exc:
                log.debug("idempotency lookup failed, forwarding: %s", exc)
                return None
        REPEATED.inc()
        return entry

    async def stored(self, user_id: str, key: str) -> bool:
        """Whether booking holds a stored answer for (person, key). Lookups that arrive while one
        is in flight share the next one (kit coalesce)."""
        return await self.lookups.ask((user_id, key))

    async def _stored_batch(self, pairs: list[tuple[str, str]]) -> list[bool]:
        try:
            found = await self._ask(pairs)
        except Exception as exc:  # each waiter forwards its request instead
            LOOKUPS.labels("failed").inc()
            if isinstance(exc, LookupFailed):
                raise
            raise LookupFailed(repr(exc)) from exc
        LOOKUPS.labels("ok").inc()
        return [i in found for i in range(len(pairs))]

    async def _ask(self, pairs: list[tuple[str, str]]) -> set[int]:
        body = orjson.dumps({"keys": pairs})  # each pair as [user id, key]
        proof = self.vouch(body.decode("latin-1"))
        if proof is None:
            raise LookupFailed("no gateway proof key to vouch for the lookup")
        headers = [(b"content-type", b"application/json"), (PROOF, proof.encode())]
        for base_url in self.replicas():
            try:
                status, _, payload = await self.pool.request(base_url, "POST", refusals.LOOKUP_PATH, headers, body)
            except ConnectFailed:
                continue  # nothing reached that replica: the next one
            if status != 200:
                raise LookupFailed(f"booking answered the lookup with {status}")
            found = orjson.loads(payload).get("found")
            if not isinstance(found, list):
                raise LookupFailed("booking's lookup answer has no list of found keys")
            return set(found)
        raise LookupFailed("no booking replica reachable")

    async def close(self) -> None:
        await self.lookups.close()
