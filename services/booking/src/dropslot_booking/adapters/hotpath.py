"""The reserve transaction on raw asyncpg (the hot path), and the group-commit batcher.

SQLAlchemy costs ~0.1-0.2 ms CPU per statement; here every transaction is one call of
`booking.reserve_seats` (see the migrations; `booking.reserve_batch` for a large batch of one
slot, `booking.reserve_slots` for several slots) on a small dedicated pool, in autocommit: one
round trip, one short transaction, each slot row locked only for its tail and the commit.
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
from dropslot_kit.coalesce import Coalescer
from dropslot_kit.settings import KitSettings

from ..service.metrics import BATCH_SIZE, KEY_LOOKUP_BATCH, RESERVE_TXN

log = logging.getLogger("dropslot.booking.hot")

SLOT_VIEW = """
SELECT s.id, s.drop_id, s.store_id, s.tenant_key, s.start_time, s.end_time, s.capacity_total,
       s.capacity_reserved, s.capacity_waitlist, s.sellable,
       d.name AS drop_name, d.product_name, d.store_name, d.status AS drop_status, d.price_cents, d.currency,
       d.hold_minutes, d.max_per_user, d.waitlist_enabled, d.require_verified_email
FROM booking.slots s JOIN booking.drops d ON d.drop_id = s.drop_id WHERE s.id = $1
"""

# A slot's public availability (booking_0004): one statement, with the waiting-list count.
SLOT_AVAILABILITY = "SELECT * FROM booking.slot_availability($1)"

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

# Many requests for one slot: the same transaction as a set, a statement per step (booking_0005).
# PostgreSQL's CPU per request, alone on one connection: dearer for one request, level with the
# loop up to ~16, cheaper from there (80 against 93 µs at 24, 45-97 against 65-127 at 40).
RESERVE_BATCH = RESERVE.replace("booking.reserve_seats(", "booking.reserve_batch(")
SET_FROM = 16


def reserve_sql(seats: int) -> str:
    return RESERVE_BATCH if seats >= SET_FROM else RESERVE


# Several slots: the whole transaction in one call (booking_0006), the slots' requests one run
# after another in the arrays, the slots in id order.
RESERVE_SLOTS = """
SELECT r_idx, r_outcome FROM booking.reserve_slots(
    $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20, $21, $22, $23)
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


def events_in_order(seats: Sequence[Seat]) -> list[tuple[int, Outbox]]:
    """(seat number from 1, event) for the seats' events, seat by seat, each in its own order."""
    return [(i, ob) for i, seat in enumerate(seats, start=1) for ob in seat.outbox]


def _seat_arrays(seats: Sequence[Seat]) -> list[list[Any]]:
    """The per-request arrays of `reserve_seats` (and of the other two forms), in order."""
    return [
        [s.id for s in seats], [s.user_id for s in seats], [s.key for s in seats],
        [s.fingerprint for s in seats], [s.response for s in seats], [s.state for s in seats],
        [s.expires_at for s in seats], [s.confirmed_at for s in seats], [s.note for s in seats],
        [s.token for s in seats], [s.qr_code_url for s in seats], [s.amount_cents for s in seats],
        [s.currency for s in seats], [s.requires_payment for s in seats],
    ]


def _outbox_arrays(seats: Sequence[Seat]) -> list[list[Any]]:
    """The outbox arrays: each event with its seat's number (from 1), seat by seat."""
    events = events_in_order(seats)
    return [[i for i, _ in events], [ob.id for _, ob in events], [ob.routing_key for _, ob in events],
            [ob.envelope for _, ob in events], [ob.traceparent for _, ob in events]]


def reserve_args(slot_id: uuid.UUID, now: datetime, seats: Sequence[Seat]) -> list[Any]:
    """The arguments of `reserve_seats` / `reserve_batch` for one slot's requests."""
    return [slot_id, now, *_seat_arrays(seats), *_outbox_arrays(seats)]


def reserve_slots_args(now: datetime, groups: Sequence[tuple[uuid.UUID, Sequence[Seat]]]) -> list[Any]:
    """The arguments of `reserve_slots` for several slots' requests, the slots in the given order."""
    seats = [seat for _, group in groups for seat in group]
    return [now, [slot_id for slot_id, _ in groups], [len(group) for _, group in groups], SET_FROM,
            *_seat_arrays(seats), *_outbox_arrays(seats)]


# Warming a new connection up (HotPath.start): a throwaway drop with two slots, written and
# reserved inside a transaction that is always rolled back, so nothing of it is ever seen.
WARM_DROP = """
INSERT INTO booking.drops (drop_id, store_id, tenant_key, name, status, starts_at, ends_at, rule,
    max_per_user, hold_minutes, waitlist_enabled, waitlist_offer_minutes, cancel_until_minutes_before,
    refund_on_cancel, require_verified_email, price_cents, currency, event_at)
VALUES ($1, $2, 'warm-up', 'warm-up', 'LIVE', now(), now() + interval '2 days', '{}', 1000, 10, false, 10, 0,
    false, false, 0, 'EUR', now() + interval '1 day')
"""
WARM_SLOTS = """
INSERT INTO booking.slots (id, drop_id, store_id, tenant_key, start_time, end_time, capacity_total, sellable)
SELECT s.id, $2, $3, 'warm-up', now() + make_interval(days => 1, hours => s.n::int),
       now() + make_interval(days => 1, hours => s.n::int + 1), 1000, true
FROM unnest($1::uuid[]) WITH ORDINALITY AS s(id, n)
"""


class _RollBack(Exception):
    pass


def _warm_seat(now: datetime) -> Seat:
    """A request of a person of its own, with a key of its own."""
    env = '{"warm_up": true}'
    return Seat(id=uuid.uuid4(), user_id=uuid.uuid4(), key=uuid.uuid4().hex, fingerprint="warm-up", response=env,
                state="CONFIRMED", expires_at=None, confirmed_at=now, note=None, token=None, qr_code_url=None,
                amount_cents=0, currency="EUR", requires_payment=False,
                outbox=[Outbox(uuid.uuid4(), "booking.warm_up", env, None) for _ in range(2)])


async def warm_up(conn: asyncpg.Connection) -> list[str]:
    """Run every statement of the hot path on a new connection before the pool hands it out,
    and return the reserve calls' outcomes (all 'ok' when it worked). A backend's first call of
    a reserve function compiles it and plans its statements: ~13-19 ms against ~2 ms after
    (40 requests through `reserve_batch` on a fresh connection, idle machine), and the next four
    calls are ~0.5 ms dearer again while PostgreSQL still plans them for their parameters. Left
    to the first storm, that is the first transactions of every connection of every replica in
    the very second a drop opens. Everything written here (a drop, two slots, their
    reservations, keys, counts and outbox rows) is rolled back."""
    now = _utcnow()
    drop, store, slots = uuid.uuid4(), uuid.uuid4(), sorted([uuid.uuid4(), uuid.uuid4()])
    outcomes: list[str] = []
    try:
        async with conn.transaction():
            await conn.execute(WARM_DROP, drop, store)
            await conn.execute(WARM_SLOTS, slots, drop, store)
            for _ in range(5):  # past PostgreSQL's five custom plans of each statement
                batch = [_warm_seat(now) for _ in range(SET_FROM)]
                rows = await conn.fetch(RESERVE_BATCH, *reserve_args(slots[0], now, batch))
                rows += await conn.fetch(RESERVE, *reserve_args(slots[1], now, [_warm_seat(now)]))
                rows += await conn.fetch(RESERVE_SLOTS, *reserve_slots_args(now, [
                    (slots[0], [_warm_seat(now) for _ in range(SET_FROM)]),
                    (slots[1], [_warm_seat(now)])]))
                outcomes += [r["r_outcome"] for r in rows]
                await conn.fetch(STORED_MANY, [s.user_id for s in batch], [s.key for s in batch])
                await conn.fetchrow(STORED, batch[0].user_id, batch[0].key)
                await conn.fetchrow(SLOT_VIEW, slots[0])
                await conn.fetchrow(SLOT_AVAILABILITY, slots[0])
            raise _RollBack
    except _RollBack:
        pass
    return outcomes


async def _reset(conn: asyncpg.Connection) -> None:
    """Released connections need no reset query: only single statements and short explicit
    transactions run here (SQL functions whose settings are transaction-local). Only a
    transaction left open (cancelled mid-way) is rolled back: no round trip otherwise."""
    if conn.is_in_transaction():
        await conn.execute("ROLLBACK")


class HotPath:
    def __init__(self, settings: KitSettings, *, pool_size: int = 6):
        self.settings = settings
        self.pool_size = pool_size
        self.pool: asyncpg.Pool | None = None
        self.warmed = 0  # connections warmed up (warm_up) since start
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
                    # No session state to undo: skip asyncpg's reset query (advisory unlock,
                    # CLOSE ALL, UNLISTEN, RESET ALL), a round trip on every release (~4 % of a
                    # replica's CPU in a storm); see _reset.
                    reset=_reset,
                    init=self._warm_up,
                    # Kept, warm, for the whole life of the replica: a drop opens after hours of
                    # quiet, and a connection replaced mid-storm would be cold again.
                    max_inactive_connection_lifetime=0,
                    max_queries=1_000_000_000,
                )
                return
            except asyncpg.exceptions.TooManyConnectionsError:
                if attempt == 9:
                    raise
                log.warning("no database connection slot for the reserve pool yet; retrying")
                await asyncio.sleep(1 + attempt)

    async def _warm_up(self, conn: asyncpg.Connection) -> None:
        """The pool's `init`: a connection whose warm-up fails (an error PostgreSQL reports) is
        still handed out, cold; a lost connection fails the pool's start as any would."""
        try:
            outcomes = await warm_up(conn)
        except asyncpg.PostgresError as exc:
            log.warning("could not warm up a reserve connection (%r); it starts cold", exc)
            return
        if any(o != "ok" for o in outcomes):
            log.warning("warming up a reserve connection was refused seats (%s); it starts cold", sorted(set(outcomes)))
            return
        self.warmed += 1

    async def close(self) -> None:
        if self.pool is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.pool.close(), 5)
            self.pool = None

    async def slot_view(self, slot_id: uuid.UUID) -> asyncpg.Record | None:
        assert self.pool is not None
        return await self.pool.fetchrow(SLOT_VIEW, slot_id)

    async def slot_availability(self, slot_id: uuid.UUID) -> asyncpg.Record | None:
        assert self.pool is not None
        return await self.pool.fetchrow(SLOT_AVAILABILITY, slot_id)

    async def stored(self, user_id: uuid.UUID, key: str) -> asyncpg.Record | None:
        assert self.pool is not None
        return await self.pool.fetchrow(STORED, user_id, key)

    async def reserve(self, slot_id: uuid.UUID, now: datetime, seats: Sequence[Seat]) -> list[str]:
        """Outcome per seat, in order, after the transaction committed."""
        return (await self.reserve_groups(now, [(slot_id, seats)]))[0]

    async def reserve_groups(
        self, now: datetime, groups: Sequence[tuple[uuid.UUID, Sequence[Seat]]]
    ) -> list[list[str]]:
        """Outcomes per group of seats, after the commit. One call in autocommit: one round trip,
        no BEGIN/COMMIT. One slot is a call of `reserve_seats` (`reserve_batch` for a large
        batch); several slots are ONE call of `reserve_slots` (one transaction, one commit, one
        outbox wake), which takes the slots in id order: two replicas lock slot rows in the same
        order, so they cannot deadlock over them. The granted seats' events are written seat by
        seat (the refused seats' never are)."""
        assert self.pool is not None
        order = sorted(range(len(groups)), key=lambda g: groups[g][0])
        seats = sum(len(group) for _, group in groups)
        if len(groups) == 1:
            sql, args = reserve_sql(seats), reserve_args(groups[0][0], now, groups[0][1])
        else:
            sql, args = RESERVE_SLOTS, reserve_slots_args(now, [groups[g] for g in order])

        for attempt in range(3):
            try:
                started = time.perf_counter()
                flat = _outcomes(await self.pool.fetch(sql, *args), seats)
                RESERVE_TXN.observe(time.perf_counter() - started)
                break
            except asyncpg.exceptions.DeadlockDetectedError:
                # Slot rows are locked in one order, but a person's rows (their per-drop count,
                # their Idempotency-Key) may be taken in another by a twin request of theirs in
                # the other replica's transaction: PostgreSQL picks a victim; run it again.
                if attempt == 2:
                    raise
                log.warning("deadlock in a reserve transaction of %d slot(s); retrying", len(groups))
        outcomes: list[list[str]] = [[] for _ in groups]  # flat is in slot-id order: back to the caller's
        at = 0
        for g in order:
            outcomes[g], at = flat[at : at + len(groups[g][1])], at + len(groups[g][1])
        if self.on_commit is not None and "ok" in flat:
            self.on_commit()
        return outcomes


def _outcomes(rows: Sequence[asyncpg.Record], n: int) -> list[str]:
    outcomes = [""] * n
    for r in rows:
        outcomes[r["r_idx"] - 1] = r["r_outcome"]
    return outcomes


class KeyLookups(Coalescer[tuple[uuid.UUID, str], Any]):
    """Coalesces the idempotency lookups of refused requests (kit coalesce): while one query is
    in flight, the lookups that arrive wait and share the next one. In a storm thousands of
    refusals per second each need "did this key already get a 201?"; one round trip answers all
    that are waiting.

    While lookups keep coming, one connection is held for all their queries: taking it from the
    pool and giving it back cost ~100 µs of CPU per query here (asyncpg's acquire and release),
    more than the query itself (~60-90 µs for a batch of ~10 keys). It goes back to the pool as
    soon as nobody waits, and after any failed query (a broken connection is not reused)."""

    queue: list[tuple[tuple[uuid.UUID, str], asyncio.Future[Any]]]  # Coalescer's, spelled out for mypy

    def __init__(self, hot: HotPath, *, max_batch: int = 500):
        super().__init__(max_batch=max_batch)
        self.hot = hot
        self.queries = 0

    async def get(self, user_id: uuid.UUID, key: str) -> Any:
        return await self.ask((user_id, key))

    async def serve(self) -> None:
        """Batch after batch on one connection until nobody waits or a query fails."""
        assert self.hot.pool is not None
        try:
            conn = await self.hot.pool.acquire()
        except Exception as exc:  # no connection: everyone waiting now gets the error
            waiting, self.queue = self.queue, []
            self.fail(waiting, exc)
            return
        try:
            while self.queue:
                batch = self.take()
                try:
                    rows = await conn.fetch(STORED_MANY, [q[0] for q, _ in batch], [q[1] for q, _ in batch])
                except Exception as exc:
                    self.fail(batch, exc)
                    return  # the connection goes back to the pool; the rest wait for another one
                self.queries += 1
                KEY_LOOKUP_BATCH.observe(len(batch))
                found = {(r["user_id"], r["key"]): r for r in rows}
                self.settle(batch, [found.get(q) for q, _ in batch])
        finally:
            await self.hot.pool.release(conn)


@dataclass
class _Waiting:
    seat: Seat
    future: asyncio.Future[str]


class SlotBatcher:
    """Group commit inside a replica.

    The first request starts a transaction at once; requests that arrive while it is in flight
    wait (nothing else) and are taken together by the next one: up to `max_batch` per slot, from
    up to `max_slots` slots, all in one transaction of one call (`HotPath.reserve_groups`).
    Across many slots (a drop of 20 slots) it turns a small transaction per slot, each with its
    commit and its outbox messages, into one. Every request is answered only after the
    transaction holding it committed, so nothing in memory is needed for correctness: a crash
    loses only unanswered requests whose transaction did not commit (and a retry with the same
    Idempotency-Key finds those that did). If PostgreSQL refuses a transaction of several slots
    (other than as a deadlock victim), each slot's batch is tried again on its own, so a failure
    stays with the slot it belongs to.
    """

    def __init__(self, hot: HotPath, *, max_batch: int = 64, linger_ms: float = 0.0, clock: Any = None,
                 max_slots: int = 32):
        self.hot = hot
        self.max_batch = max_batch
        self.max_slots = max_slots
        self.linger = linger_ms / 1000.0
        self.clock = clock
        self.queues: dict[uuid.UUID, list[_Waiting]] = {}
        self.running = False
        self.batches = 0
        self.batched_seats = 0
        self._tasks: set[asyncio.Task[None]] = set()

    async def submit(self, slot_id: uuid.UUID, seat: Seat) -> str:
        fut: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self.queues.setdefault(slot_id, []).append(_Waiting(seat, fut))
        if not self.running:
            self.running = True
            task = asyncio.create_task(self._drain())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        # The transaction goes on if this request is cancelled (client gone): its seat is kept
        # and a retry with the same Idempotency-Key gets the stored answer.
        return await asyncio.shield(fut)

    def _take(self) -> list[tuple[uuid.UUID, list[_Waiting]]]:
        groups = []
        for slot_id in list(self.queues)[: self.max_slots]:  # the longest-waiting slots first
            queue = self.queues[slot_id]
            groups.append((slot_id, queue[: self.max_batch]))
            del queue[: self.max_batch]
            if not queue:
                del self.queues[slot_id]
        return groups

    async def _drain(self) -> None:
        try:
            while self.queues:
                if self.linger:
                    await asyncio.sleep(self.linger)
                groups = self._take()
                now = self.clock() if self.clock else _utcnow()
                started = time.perf_counter()
                try:
                    outcomes = await self.hot.reserve_groups(now, [(s, [w.seat for w in b]) for s, b in groups])
                except Exception as exc:
                    # Only an error the server reported means the transaction surely rolled back
                    # (a connection lost at COMMIT may hide a commit): only then is each slot tried
                    # again on its own; otherwise every request gets the error (503, and a retry
                    # with its Idempotency-Key finds a seat that was in fact taken).
                    alone_ok = isinstance(exc, asyncpg.PostgresError) and not isinstance(
                        exc, (asyncpg.exceptions.DeadlockDetectedError, asyncpg.exceptions.PostgresConnectionError))
                    if len(groups) == 1 or not alone_ok:
                        _fail(groups, exc)
                        continue
                    log.warning("a reserve transaction of %d slots failed (%r): each slot on its own",
                                len(groups), exc)
                    outcomes = []
                    for slot_id, batch in groups:
                        try:
                            outcomes.append(await self.hot.reserve(slot_id, now, [w.seat for w in batch]))
                        except Exception as alone:
                            _fail([(slot_id, batch)], alone)
                            outcomes.append([])
                for (_, batch), outs in zip(groups, outcomes, strict=True):
                    if not outs:
                        continue
                    self.batches += 1
                    self.batched_seats += len(batch)
                    BATCH_SIZE.observe(len(batch))
                    for w, outcome in zip(batch, outs, strict=True):
                        if not w.future.done():
                            w.future.set_result(outcome)
                if log.isEnabledFor(logging.DEBUG):
                    took = 1000 * (time.perf_counter() - started)
                    log.debug("%d slot(s), %d seats in %.1f ms", len(groups), sum(len(b) for _, b in groups), took)
        finally:
            self.running = False
            if self.queues:  # pragma: no cover - only if the loop above was cancelled mid-way
                _fail(list(self.queues.items()), RuntimeError("booking is shutting down"))
                self.queues.clear()

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


def _fail(groups: Sequence[tuple[uuid.UUID, list[_Waiting]]], exc: BaseException) -> None:
    for _, batch in groups:
        for w in batch:
            if not w.future.done():
                w.future.set_exception(exc)


def _utcnow() -> datetime:
    from datetime import UTC

    return datetime.now(UTC)
