"""The reserve transaction on raw asyncpg (the hot path), and the group-commit batcher.

SQLAlchemy costs ~0.1-0.2 ms CPU per statement; here every request is one call of
`booking.reserve_seats` (see the migration) on a small dedicated pool, in autocommit: one
round trip, one short transaction, the slot row locked only for its tail and the commit.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import asyncpg
from dropslot_kit.settings import KitSettings

from ..service.metrics import BATCH_SIZE, RESERVE_TXN

log = logging.getLogger("dropslot.booking.hot")

SLOT_VIEW = """
SELECT s.id, s.drop_id, s.store_id, s.tenant_key, s.start_time, s.end_time, s.capacity_total,
       s.capacity_reserved, s.capacity_waitlist, s.sellable,
       d.name AS drop_name, d.product_name, d.store_name, d.status AS drop_status, d.price_cents, d.currency,
       d.hold_minutes, d.max_per_user, d.waitlist_enabled, d.require_verified_email
FROM booking.slots s JOIN booking.drops d ON d.drop_id = s.drop_id WHERE s.id = $1
"""

STORED = (
    "SELECT fingerprint, status, response::text AS response FROM booking.idempotency_keys"
    " WHERE user_id = $1 AND key = $2"
)

STORED_MANY = """
SELECT k.user_id, k.key, k.fingerprint, k.status, k.response::text AS response
FROM booking.idempotency_keys k JOIN unnest($1::uuid[], $2::text[]) AS q(user_id, key)
  ON k.user_id = q.user_id AND k.key = q.key
"""

RESERVE = """
SELECT r_idx, r_outcome FROM booking.reserve_seats(
    $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20, $21)
"""


@dataclass
class Outbox:
    id: uuid.UUID
    routing_key: str
    envelope: str
    traceparent: str | None


@dataclass
class Seat:
    """One reservation request, fully prepared before the transaction (ids, events, answer)."""

    id: uuid.UUID
    user_id: uuid.UUID
    key: str | None
    fingerprint: str
    response: str
    state: str
    expires_at: datetime | None
    confirmed_at: datetime | None
    note: str | None
    token: str | None
    qr_code_url: str | None
    amount_cents: int
    currency: str
    requires_payment: bool
    outbox: list[Outbox] = field(default_factory=list)


def reserve_args(slot_id: uuid.UUID, now: datetime, seats: Sequence[Seat]) -> list[Any]:
    ob_owner: list[int] = []
    ob_ids: list[uuid.UUID] = []
    ob_rks: list[str] = []
    ob_envs: list[str] = []
    ob_tps: list[str | None] = []
    # Every seat's first event (created), then every seat's second (confirmed): the outbox
    # relay sends neighbouring events of one routing key as one message, so a batch of
    # reservations becomes two messages, not two per reservation. Each reservation's own
    # events keep their order.
    order = sorted((k, i) for i, seat in enumerate(seats, start=1) for k in range(len(seat.outbox)))
    for k, i in order:
        ob = seats[i - 1].outbox[k]
        ob_owner.append(i)
        ob_ids.append(ob.id)
        ob_rks.append(ob.routing_key)
        ob_envs.append(ob.envelope)
        ob_tps.append(ob.traceparent)
    return [
        slot_id, now,
        [s.id for s in seats], [s.user_id for s in seats], [s.key for s in seats],
        [s.fingerprint for s in seats], [s.response for s in seats], [s.state for s in seats],
        [s.expires_at for s in seats], [s.confirmed_at for s in seats], [s.note for s in seats],
        [s.token for s in seats], [s.qr_code_url for s in seats], [s.amount_cents for s in seats],
        [s.currency for s in seats], [s.requires_payment for s in seats],
        ob_owner, ob_ids, ob_rks, ob_envs, ob_tps,
    ]


async def _nothing_to_reset(conn: asyncpg.Connection) -> None:
    return None


class HotPath:
    def __init__(self, settings: KitSettings, *, pool_size: int = 6):
        self.settings = settings
        self.pool_size = pool_size
        self.pool: asyncpg.Pool | None = None
        # Called after a reserve transaction committed outbox rows: reserve_seats writes them
        # without NOTIFY (booking_0003), so this replica wakes its own relay.
        self.on_commit: Callable[[], None] | None = None

    async def start(self) -> None:
        # Every connection is opened up front: a storm must not be the moment the pool grows
        # (PostgreSQL may have no connection slot left then; with batching a few suffice).
        for attempt in range(10):
            try:
                self.pool = await asyncpg.create_pool(
                    self.settings.plain_service_dsn(),
                    min_size=self.pool_size,
                    max_size=self.pool_size,
                    server_settings={"search_path": "booking",
                                     "application_name": f"dropslot-{self.settings.service}-hot"},
                    # Only single statements run here (SQL functions whose settings are
                    # transaction-local), so there is no session state to undo: skip asyncpg's
                    # reset query (advisory unlock, CLOSE ALL, UNLISTEN, RESET ALL), a round trip
                    # on every release (~4 % of a replica's CPU in a storm).
                    reset=_nothing_to_reset,
                )
                return
            except asyncpg.exceptions.TooManyConnectionsError:
                if attempt == 9:
                    raise
                log.warning("no database connection slot for the reserve pool yet; retrying")
                await asyncio.sleep(1 + attempt)

    async def close(self) -> None:
        if self.pool is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.pool.close(), 5)
            self.pool = None

    async def slot_view(self, slot_id: uuid.UUID) -> asyncpg.Record | None:
        assert self.pool is not None
        return await self.pool.fetchrow(SLOT_VIEW, slot_id)

    async def stored(self, user_id: uuid.UUID, key: str) -> asyncpg.Record | None:
        assert self.pool is not None
        return await self.pool.fetchrow(STORED, user_id, key)

    async def reserve(self, slot_id: uuid.UUID, now: datetime, seats: Sequence[Seat]) -> list[str]:
        """Outcome per seat, in order, after the transaction committed."""
        assert self.pool is not None
        args = reserve_args(slot_id, now, seats)
        for attempt in range(3):
            try:
                started = time.perf_counter()
                rows = await self.pool.fetch(RESERVE, *args)
                RESERVE_TXN.observe(time.perf_counter() - started)
                break
            except asyncpg.exceptions.DeadlockDetectedError:
                # Cannot happen with booking's lock order; retried anyway rather than failing a customer.
                if attempt == 2:
                    raise
                log.warning("deadlock in reserve_seats; retrying")
        outcomes = [""] * len(seats)
        for r in rows:
            outcomes[r["r_idx"] - 1] = r["r_outcome"]
        if self.on_commit is not None and "ok" in outcomes:
            self.on_commit()
        return outcomes


class KeyLookups:
    """Coalesces the idempotency lookups of refused requests: while one query is in flight, the
    lookups that arrive wait and share the next one. In a storm thousands of refusals per second
    each need "did this key already get a 201?"; one round trip answers all that are waiting."""

    def __init__(self, hot: HotPath, *, max_batch: int = 500):
        self.hot = hot
        self.max_batch = max_batch
        self.queue: list[tuple[uuid.UUID, str, asyncio.Future[Any]]] = []
        self.running = False
        self.queries = 0
        self._tasks: set[asyncio.Task[None]] = set()

    async def get(self, user_id: uuid.UUID, key: str) -> Any:
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.queue.append((user_id, key, fut))
        if not self.running:
            self.running = True
            task = asyncio.create_task(self._drain())
            self._tasks.add(task)  # the loop only keeps weak references to tasks
            task.add_done_callback(self._tasks.discard)
        return await asyncio.shield(fut)

    async def _drain(self) -> None:
        try:
            while self.queue:
                batch = self.queue[: self.max_batch]
                del self.queue[: self.max_batch]
                assert self.hot.pool is not None
                try:
                    rows = await self.hot.pool.fetch(STORED_MANY, [b[0] for b in batch], [b[1] for b in batch])
                except Exception as exc:
                    for _, _, fut in batch:
                        if not fut.done():
                            fut.set_exception(exc)
                    continue
                self.queries += 1
                found = {(r["user_id"], r["key"]): r for r in rows}
                for user_id, key, fut in batch:
                    if not fut.done():
                        fut.set_result(found.get((user_id, key)))
        finally:
            self.running = False


@dataclass
class _Waiting:
    seat: Seat
    future: asyncio.Future[str]


class SlotBatcher:
    """Group commit per slot inside a replica.

    The first request for a slot starts a transaction at once; requests for the same slot that
    arrive while it is in flight wait (nothing else) and are taken together by the next one, up
    to `max_batch`. Every request is answered only after the transaction holding it committed,
    so nothing in memory is needed for correctness: a crash loses only unanswered requests whose
    transaction did not commit (and a retry with the same Idempotency-Key finds those that did).
    """

    def __init__(self, hot: HotPath, *, max_batch: int = 64, linger_ms: float = 0.0, clock: Any = None):
        self.hot = hot
        self.max_batch = max_batch
        self.linger = linger_ms / 1000.0
        self.clock = clock
        self.queues: dict[uuid.UUID, list[_Waiting]] = {}
        self.running: set[uuid.UUID] = set()
        self.batches = 0
        self.batched_seats = 0
        self._tasks: set[asyncio.Task[None]] = set()

    async def submit(self, slot_id: uuid.UUID, seat: Seat) -> str:
        fut: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self.queues.setdefault(slot_id, []).append(_Waiting(seat, fut))
        if slot_id not in self.running:
            self.running.add(slot_id)
            task = asyncio.create_task(self._drain(slot_id))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        # The transaction goes on if this request is cancelled (client gone): its seat is kept
        # and a retry with the same Idempotency-Key gets the stored answer.
        return await asyncio.shield(fut)

    async def _drain(self, slot_id: uuid.UUID) -> None:
        try:
            while True:
                queue = self.queues.get(slot_id)
                if not queue:
                    return
                if self.linger:
                    await asyncio.sleep(self.linger)
                batch = queue[: self.max_batch]
                del queue[: self.max_batch]
                now = self.clock() if self.clock else _utcnow()
                started = time.perf_counter()
                try:
                    outcomes = await self.hot.reserve(slot_id, now, [w.seat for w in batch])
                except Exception as exc:
                    for w in batch:
                        if not w.future.done():
                            w.future.set_exception(exc)
                    continue
                self.batches += 1
                self.batched_seats += len(batch)
                BATCH_SIZE.observe(len(batch))
                if log.isEnabledFor(logging.DEBUG):
                    took = 1000 * (time.perf_counter() - started)
                    log.debug("slot %s: batch of %d in %.1f ms", slot_id, len(batch), took)
                for w, outcome in zip(batch, outcomes, strict=True):
                    if not w.future.done():
                        w.future.set_result(outcome)
        finally:
            self.running.discard(slot_id)
            if not self.queues.get(slot_id):
                self.queues.pop(slot_id, None)
            else:  # pragma: no cover - only if the loop above was cancelled mid-way
                for w in self.queues.pop(slot_id, []):
                    if not w.future.done():
                        w.future.set_exception(RuntimeError("booking is shutting down"))

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


def _utcnow() -> datetime:
    from datetime import UTC

    return datetime.now(UTC)
