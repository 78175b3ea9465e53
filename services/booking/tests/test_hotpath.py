"""`booking.reserve_seats` (the reserve transaction) called directly with crafted batches, and the
single-transaction path (group commit off) under the same races as the batched one."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import uuid
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import asyncpg
import pytest
from dropslot_booking.adapters.hotpath import SET_FROM, Outbox, Seat, warm_up
from dropslot_booking.adapters.sql import all_rows, one, set_scope
from dropslot_booking.service.metrics import RESERVE_TXN

from .conftest import Cluster

pytestmark = pytest.mark.asyncio


def seat(user: uuid.UUID | None = None, key: str | None = None) -> Seat:
    rid = uuid.uuid4()
    return Seat(id=rid, user_id=user or uuid.uuid4(), key=key, fingerprint="fp", response=json.dumps({"id": str(rid)}),
                state="CONFIRMED", expires_at=None, confirmed_at=datetime.now(UTC), note=None, token="t",
                qr_code_url="q", amount_cents=0, currency="EUR", requires_payment=False,
                outbox=[Outbox(uuid.uuid4(), "booking.reservation.created", '{"n": 1}', None),
                        Outbox(uuid.uuid4(), "booking.reservation.confirmed", '{"n": 2}', None)])


async def fresh_slot(cluster: Cluster, capacity: int, rule: dict | None = None) -> dict:
    store = await cluster.store(cluster.user())
    drop = await cluster.drop(store, rule=rule)
    return await cluster.slot(store, drop, capacity=capacity)


async def outbox_ids(cluster: Cluster, ids: list[uuid.UUID]) -> int:
    async with cluster.booking.db.uow() as uow:
        row = await one(uow.conn, "SELECT count(*) AS n FROM outbox WHERE id = ANY(:ids)", ids=ids)
    return int(row["n"]) if row else 0


async def test_a_batch_gets_the_free_seats_in_arrival_order_and_nothing_else(cluster: Cluster) -> None:
    slot = await fresh_slot(cluster, capacity=4)
    seats = [seat() for _ in range(10)]
    hot = cluster.booking.hot
    # The relay may already have published (and deleted) the granted seats' events: look at
    # the refused ones, which must never have reached the outbox.
    outcomes = await hot.reserve(uuid.UUID(slot["id"]), datetime.now(UTC), seats)
    assert outcomes == ["ok"] * 4 + ["sold_out"] * 6
    refused_events = [ob.id for s in seats[4:] for ob in s.outbox]
    assert await outbox_ids(cluster, refused_events) == 0
    async with cluster.booking.db.uow() as uow:
        await set_scope(uow.conn, all_rows=True)
        rows = await all_rows(uow.conn, "SELECT id FROM reservations WHERE slot_id = :s", s=uuid.UUID(slot["id"]))
    assert {r["id"] for r in rows} == {s.id for s in seats[:4]}
    assert await hot.reserve(uuid.UUID(slot["id"]), datetime.now(UTC), [seat()]) == ["sold_out"]
    assert await cluster.invariants() == []


async def test_twins_in_one_batch(cluster: Cluster) -> None:
    slot = await fresh_slot(cluster, capacity=10, rule={"max_per_user": 3})
    sid = uuid.UUID(slot["id"])
    user, other = uuid.uuid4(), uuid.uuid4()
    key = uuid.uuid4().hex
    outcomes = await cluster.booking.hot.reserve(sid, datetime.now(UTC), [
        seat(user), seat(user),                 # same user, same slot: one reservation per slot
        seat(other, key), seat(other, key),     # same Idempotency-Key: the second finds the first
    ])
    assert outcomes == ["ok", "already_reserved", "ok", "idempotent"]
    assert await cluster.invariants() == []


@pytest.mark.parametrize("sql", ["reserve_seats", "reserve_batch"])
async def test_what_a_batch_refuses_leaves_nothing_behind(cluster: Cluster, sql: str) -> None:
    """Requests refused after their rows were written (the per-drop limit; no seat left at the
    moment of selling out) keep no reservation, no Idempotency-Key, no count and no event, in
    both forms of the transaction."""
    from dropslot_booking.adapters.hotpath import RESERVE, RESERVE_BATCH, reserve_args

    store = await cluster.store(cluster.user())
    drop = await cluster.drop(store, rule={"max_per_user": 1})
    earlier = await cluster.slot(store, drop, capacity=5, start_in=timedelta(hours=2))
    slot = await cluster.slot(store, drop, capacity=2)
    hot, now = cluster.booking.hot, datetime.now(UTC)
    holder = uuid.uuid4()
    assert await hot.reserve(uuid.UUID(earlier["id"]), now, [seat(holder, "held")]) == ["ok"]
    batch = [seat(uuid.uuid4(), "a"), seat(holder, "x"), seat(uuid.uuid4(), "b"), seat(uuid.uuid4(), "c"),
             seat(uuid.uuid4(), "d")]
    assert hot.pool is not None
    rows = await hot.pool.fetch(RESERVE if sql == "reserve_seats" else RESERVE_BATCH,
                                *reserve_args(uuid.UUID(slot["id"]), now, batch))
    assert [r["r_outcome"] for r in sorted(rows, key=lambda r: r["r_idx"])] == [
        "ok", "limit", "ok", "sold_out", "sold_out"]
    refused = [batch[1], batch[3], batch[4]]
    assert await outbox_ids(cluster, [ob.id for s in refused for ob in s.outbox]) == 0
    async with cluster.booking.db.uow() as uow:
        await set_scope(uow.conn, all_rows=True)
        reservations = await all_rows(uow.conn, "SELECT id FROM reservations WHERE id = ANY(:ids)",
                                      ids=[s.id for s in batch])
        keys = await all_rows(uow.conn, "SELECT key FROM idempotency_keys WHERE user_id = ANY(:users)",
                              users=[s.user_id for s in batch])
        counts = await all_rows(uow.conn, "SELECT user_id, active FROM drop_user_counts WHERE user_id = ANY(:users)",
                                users=[s.user_id for s in batch])
    assert {r["id"] for r in reservations} == {batch[0].id, batch[2].id}
    assert sorted(r["key"] for r in keys) == ["a", "b", "held"]
    assert {r["user_id"]: r["active"] for r in counts if r["active"]} == {
        batch[0].user_id: 1, holder: 1, batch[2].user_id: 1}
    assert await cluster.invariants() == []


@pytest.mark.parametrize("sql", ["reserve_seats", "reserve_batch"])
async def test_both_forms_of_the_transaction_decide_a_batch_alike(cluster: Cluster, sql: str) -> None:
    """`reserve_seats` (a loop, what a lone request runs) and `reserve_batch` (a statement per
    step, what a batch runs) give the same outcomes for the same crafted batch."""
    from dropslot_booking.adapters.hotpath import RESERVE, RESERVE_BATCH, SET_FROM, reserve_args, reserve_sql

    store = await cluster.store(cluster.user())
    drop = await cluster.drop(store, rule={"max_per_user": 1})
    earlier = await cluster.slot(store, drop, capacity=5, start_in=timedelta(hours=2))
    slot = await cluster.slot(store, drop, capacity=3)
    hot, now = cluster.booking.hot, datetime.now(UTC)
    holder, twin, double = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    assert await hot.reserve(uuid.UUID(earlier["id"]), now, [seat(holder, "held")]) == ["ok"]
    batch = [seat(twin, "k"), seat(twin, "k"), seat(holder, "x"), seat(double, "d1"), seat(double, "d2"),
             seat(uuid.uuid4(), "a"), seat(uuid.uuid4(), "b"), seat(uuid.uuid4(), None)]
    assert hot.pool is not None
    assert reserve_sql(len(batch)) == RESERVE and reserve_sql(SET_FROM) == RESERVE_BATCH  # what the hot path picks
    rows = await hot.pool.fetch(RESERVE if sql == "reserve_seats" else RESERVE_BATCH,
                                *reserve_args(uuid.UUID(slot["id"]), now, batch))
    outcomes = [r["r_outcome"] for r in sorted(rows, key=lambda r: r["r_idx"])]
    assert outcomes == ["ok", "idempotent", "limit", "ok", "already_reserved", "ok", "sold_out", "sold_out"]
    assert await cluster.invariants() == []


async def test_per_user_limit_across_slots_in_separate_batches(cluster: Cluster) -> None:
    store = await cluster.store(cluster.user())
    drop = await cluster.drop(store, rule={"max_per_user": 1})
    a = await cluster.slot(store, drop, capacity=5)

    b = await cluster.slot(store, drop, capacity=5, start_in=timedelta(hours=2))
    user = uuid.uuid4()
    hot = cluster.booking.hot
    results = await asyncio.gather(
        hot.reserve(uuid.UUID(a["id"]), datetime.now(UTC), [seat(user)]),
        hot.reserve(uuid.UUID(b["id"]), datetime.now(UTC), [seat(user)]),
    )
    assert sorted(r[0] for r in results) == ["limit", "ok"]
    assert await cluster.invariants() == []


async def test_closed_slots_refuse_whole_batches_without_writing(cluster: Cluster) -> None:
    store = await cluster.store(cluster.user())
    drop = await cluster.drop(store, status="SCHEDULED")
    slot = await cluster.slot(store, drop, capacity=5)
    assert await cluster.booking.hot.reserve(uuid.UUID(slot["id"]), datetime.now(UTC), [seat(), seat()]) == [
        "not_live", "not_live"]
    assert await cluster.booking.hot.reserve(uuid.uuid4(), datetime.now(UTC), [seat()]) == ["not_found"]


async def test_single_transaction_path_keeps_every_guarantee(cluster: Cluster) -> None:
    """Group commit off (one transaction per request): the same race, limits and idempotency."""
    saved = [r.booking.batcher for r in cluster.replicas]
    for r in cluster.replicas:
        r.app.state.rt.extras["booking"] = dataclasses.replace(r.booking, batcher=None)
    try:
        store = await cluster.store(cluster.user())
        drop = await cluster.drop(store, rule={"max_per_user": 1})
        slot = await cluster.slot(store, drop, capacity=20)
        users = [cluster.user() for _ in range(120)]
        results = await asyncio.gather(*(cluster.reserve(u, slot["id"], key=uuid.uuid4().hex) for u in users))
        assert sorted(r.status_code for r in results).count(201) == 20
        greedy = cluster.user()
        slot2 = await cluster.slot(store, drop, capacity=20, start_in=timedelta(hours=3))
        results = await asyncio.gather(*(cluster.reserve(greedy, slot2["id"]) for _ in range(10)))
        assert [r.status_code for r in results].count(201) == 1
        key = uuid.uuid4().hex
        twin = cluster.user()
        results = await asyncio.gather(*(cluster.reserve(twin, slot2["id"], key=key) for _ in range(6)))
        assert {r.status_code for r in results} == {201} and len({r.json()["id"] for r in results}) == 1
        assert await cluster.invariants() == []
    finally:
        for r, batcher in zip(cluster.replicas, saved, strict=True):
            r.app.state.rt.extras["booking"] = dataclasses.replace(r.booking, batcher=batcher)


async def test_several_slots_share_one_transaction_and_each_keeps_its_capacity(cluster: Cluster) -> None:
    store = await cluster.store(cluster.user())
    drop = await cluster.drop(store, rule={"max_per_user": 1})
    slots = [uuid.UUID((await cluster.slot(store, drop, capacity=3, start_in=timedelta(hours=1 + i)))["id"])
             for i in range(3)]
    greedy = uuid.uuid4()
    groups = [(slots[0], [seat(greedy)] + [seat() for _ in range(4)]),
              (slots[1], [seat(greedy)] + [seat() for _ in range(4)]),  # one seat per person per drop
              (slots[2], [seat() for _ in range(5)])]
    hot = cluster.booking.hot
    wake, hot.on_commit = hot.on_commit, None  # the relay polls (1 s): the rows are likely still there
    try:
        outcomes = await hot.reserve_groups(datetime.now(UTC), groups)
        async with cluster.booking.db.uow() as uow:
            rows = await all_rows(uow.conn, "SELECT id, routing_key FROM outbox ORDER BY seq")
    finally:
        hot.on_commit = wake
    # Slots go in id order: greedy gets a seat in whichever comes first, is at the limit in the other.
    assert sorted(outcomes[:2]) == [["limit", "ok", "ok", "ok", "sold_out"], ["ok", "ok", "ok", "sold_out", "sold_out"]]
    assert outcomes[2] == ["ok"] * 3 + ["sold_out"] * 2
    assert await cluster.invariants() == []
    # The granted seats' events only, seat by seat in slot-id order, each seat's in its order. Of
    # those the relay has not published yet (it may have taken some), the order is the same.
    granted = [s for (_, seats), outs in sorted(zip(groups, outcomes, strict=True), key=lambda go: go[0][0])
               for s, o in zip(seats, outs, strict=True) if o == "ok"]
    expected = [ob.id for s in granted for ob in s.outbox]
    left = [r["id"] for r in rows if r["id"] in set(expected)]
    assert left == [i for i in expected if i in set(left)]
    refused = [ob.id for (_, seats), outs in zip(groups, outcomes, strict=True) for s, o in zip(seats, outs, strict=True)
               if o != "ok" for ob in s.outbox]
    assert await outbox_ids(cluster, refused) == 0


async def test_in_a_transaction_of_several_slots_each_slot_is_decided_as_alone(cluster: Cluster) -> None:
    """`reserve_slots` (one call for several slots) decides each slot's run as that slot's own
    call would: the loop below SET_FROM requests, the set form from there."""
    from dropslot_booking.adapters.hotpath import SET_FROM

    store = await cluster.store(cluster.user())
    drop = await cluster.drop(store, rule={"max_per_user": 1})
    earlier = await cluster.slot(store, drop, capacity=5, start_in=timedelta(hours=5))
    small = uuid.UUID((await cluster.slot(store, drop, capacity=3, start_in=timedelta(hours=2)))["id"])
    big = uuid.UUID((await cluster.slot(store, drop, capacity=10, start_in=timedelta(hours=3)))["id"])
    hot, now = cluster.booking.hot, datetime.now(UTC)
    holder, twin, double, other_twin = uuid.uuid4(), uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    assert await hot.reserve(uuid.UUID(earlier["id"]), now, [seat(holder, "held")]) == ["ok"]
    small_batch = [seat(twin, "k"), seat(twin, "k"), seat(holder, "x"), seat(double, "d1"), seat(double, "d2"),
                   seat(uuid.uuid4(), "a"), seat(uuid.uuid4(), "b"), seat(uuid.uuid4(), None)]
    big_batch = [seat(other_twin, "t"), seat(other_twin, "t")] + [seat(uuid.uuid4(), None) for _ in range(SET_FROM + 2)]
    outcomes = await hot.reserve_groups(now, [(big, big_batch), (small, small_batch)])
    assert outcomes[1] == ["ok", "idempotent", "limit", "ok", "already_reserved", "ok", "sold_out", "sold_out"]
    assert outcomes[0] == ["ok", "idempotent"] + ["ok"] * 9 + ["sold_out"] * (SET_FROM - 7)
    refused = [s for group, outs in zip((big_batch, small_batch), outcomes, strict=True)
               for s, o in zip(group, outs, strict=True) if o != "ok"]
    assert await outbox_ids(cluster, [ob.id for s in refused for ob in s.outbox]) == 0
    assert await cluster.invariants() == []


async def test_a_call_for_several_slots_whose_counts_do_not_split_its_requests_is_refused(cluster: Cluster) -> None:
    from dropslot_booking.adapters.hotpath import RESERVE_SLOTS, reserve_slots_args

    slot = uuid.UUID((await fresh_slot(cluster, capacity=5))["id"])
    hot, now = cluster.booking.hot, datetime.now(UTC)
    batch = [seat(), seat()]
    args = reserve_slots_args(now, [(slot, batch)])
    args[2] = [3]  # three requests said, two given
    assert hot.pool is not None
    with pytest.raises(asyncpg.exceptions.RaiseError, match="one run per slot"):
        await hot.pool.fetch(RESERVE_SLOTS, *args)
    assert await outbox_ids(cluster, [ob.id for s in batch for ob in s.outbox]) == 0
    assert await cluster.invariants() == []


async def test_the_batcher_takes_many_slots_at_once_and_sells_each_exactly(cluster: Cluster) -> None:
    store = await cluster.store(cluster.user())
    drop = await cluster.drop(store)
    slots = [uuid.UUID((await cluster.slot(store, drop, capacity=5, start_in=timedelta(hours=1 + i)))["id"])
             for i in range(4)]
    batcher = cluster.booking.batcher
    assert batcher is not None
    def transactions() -> float:
        return sum(s.value for m in RESERVE_TXN.collect() for s in m.samples if s.name.endswith("_count"))

    before = transactions()
    requests = [(slots[i % 4], seat()) for i in range(40)]
    outcomes = await asyncio.gather(*(batcher.submit(sid, s) for sid, s in requests))
    for sid in slots:
        got = [o for (s, _), o in zip(requests, outcomes, strict=True) if s == sid]
        assert got.count("ok") == 5 and got.count("sold_out") == 5
    # All 40 were queued before the first transaction started: one transaction for the 4 slots
    # (a slot at a time, it would be 4).
    assert transactions() - before == 1
    assert await cluster.invariants() == []


async def test_a_failing_slot_in_a_shared_transaction_fails_alone(cluster: Cluster) -> None:
    store = await cluster.store(cluster.user())
    drop = await cluster.drop(store)
    good = uuid.UUID((await cluster.slot(store, drop, capacity=5))["id"])
    bad = uuid.UUID((await cluster.slot(store, drop, capacity=5, start_in=timedelta(hours=2)))["id"])
    broken = dataclasses.replace(seat(), state="NOT-A-STATE")  # the reservations table refuses it
    batcher = cluster.booking.batcher
    assert batcher is not None
    results = await asyncio.gather(batcher.submit(good, seat()), batcher.submit(bad, broken),
                                   return_exceptions=True)
    assert results[0] == "ok"
    assert isinstance(results[1], Exception)
    assert await cluster.invariants() == []


# --- the Idempotency-Key lookups of refused requests (KeyLookups) --------------------------------------
class _CountingPool:
    """The hot pool as KeyLookups sees it, counting what it takes and gives back (other users of
    the real pool, such as another replica's background work, do not count)."""

    def __init__(self, pool: Any):
        self.pool = pool
        self.acquired = 0
        self.released = 0

    async def acquire(self) -> Any:
        self.acquired += 1
        return await self.pool.acquire()

    async def release(self, conn: Any) -> None:
        self.released += 1
        await self.pool.release(conn)


def _lookups(cluster: Cluster) -> tuple[Any, _CountingPool]:
    from dropslot_booking.adapters.hotpath import KeyLookups

    pool = _CountingPool(cluster.booking.hot.pool)
    return KeyLookups(SimpleNamespace(pool=pool)), pool  # type: ignore[arg-type]


async def _stored_keys(cluster: Cluster, n: int) -> list[tuple[uuid.UUID, str]]:
    slot = await fresh_slot(cluster, capacity=n)
    pairs = [(uuid.uuid4(), uuid.uuid4().hex) for _ in range(n)]
    outcomes = await cluster.booking.hot.reserve(uuid.UUID(slot["id"]), datetime.now(UTC),
                                                 [seat(u, k) for u, k in pairs])
    assert outcomes == ["ok"] * n
    return pairs


async def test_waiting_key_lookups_share_one_query_and_give_the_connection_back(cluster: Cluster) -> None:
    stored = await _stored_keys(cluster, 3)
    fresh = [(uuid.uuid4(), uuid.uuid4().hex) for _ in range(40)]
    stranger_with_a_stored_key = (uuid.uuid4(), stored[0][1])  # a key is someone's: (user, key)
    lookups, pool = _lookups(cluster)
    asked = stored + fresh + [stranger_with_a_stored_key]
    answers = await asyncio.gather(*(lookups.get(u, k) for u, k in asked))
    assert lookups.queries == 1  # all were waiting before the first query went out
    assert [a is not None for a in answers] == [True] * 3 + [False] * 41
    assert {(a["fingerprint"], a["status"]) for a in answers[:3]} == {("fp", 201)}
    assert all(json.loads(a["response"])["id"] for a in answers[:3])
    # Nobody waits any more: the drain ends and the connection it held is back in the pool.
    await asyncio.gather(*lookups._tasks)
    assert not lookups.running and (pool.acquired, pool.released) == (1, 1)
    # Lookups that arrive while a query is in flight share the next one, on the same connection:
    # it is taken from the pool once for as long as lookups keep coming.
    first = asyncio.ensure_future(lookups.get(*fresh[0]))
    await asyncio.sleep(0)  # the first query is on its way
    later = [asyncio.ensure_future(lookups.get(u, k)) for u, k in stored]
    assert await first is None and all(await asyncio.gather(*later))
    await asyncio.gather(*lookups._tasks)
    assert lookups.queries == 3 and (pool.acquired, pool.released) == (2, 2)


async def test_a_failed_key_lookup_fails_its_own_batch_only(cluster: Cluster) -> None:
    (user, key), = await _stored_keys(cluster, 1)
    lookups, pool = _lookups(cluster)
    bad = asyncio.ensure_future(lookups.get(uuid.uuid4(), "nul \x00 in a key"))  # PostgreSQL refuses it
    await asyncio.sleep(0)
    after = asyncio.ensure_future(lookups.get(user, key))  # waits for the next query
    with pytest.raises(Exception, match="0x00"):
        await bad
    assert (await after)["status"] == 201  # served on a fresh connection
    await asyncio.gather(*lookups._tasks)
    assert (pool.acquired, pool.released) == (2, 2)  # the failed query's connection went back


async def test_a_cancelled_key_lookup_leaves_the_others_be(cluster: Cluster) -> None:
    (user, key), = await _stored_keys(cluster, 1)
    lookups, _ = _lookups(cluster)
    gone = asyncio.ensure_future(lookups.get(uuid.uuid4(), "client went away"))
    kept = asyncio.ensure_future(lookups.get(user, key))
    await asyncio.sleep(0)
    gone.cancel()
    assert (await kept)["status"] == 201
    with pytest.raises(asyncio.CancelledError):
        await gone
    assert lookups.queries == 1


async def test_reserve_connections_start_warm_and_the_warm_up_leaves_nothing_behind(cluster: Cluster) -> None:
    for replica in cluster.replicas:
        hot = replica.booking.hot
        assert hot.warmed >= hot.pool_size  # every connection, before the pool handed it out
    conn = await asyncpg.connect(cluster.booking.hot.settings.plain_service_dsn(),
                                 server_settings={"search_path": "booking"})
    try:
        outcomes = await warm_up(conn)
        assert not conn.is_in_transaction()
    finally:
        await conn.close()
    # Five rounds: SET_FROM seats through reserve_batch, one through reserve_seats, and both
    # forms again in one reserve_slots call. Every one was granted a seat, so rows were written...
    assert outcomes == ["ok"] * 5 * 2 * (SET_FROM + 1)
    # ...and none of them is left.
    async with cluster.booking.db.uow() as uow:
        await set_scope(uow.conn, all_rows=True)
        left = await one(uow.conn, """
            SELECT (SELECT count(*) FROM drops WHERE tenant_key = 'warm-up')
                 + (SELECT count(*) FROM slots WHERE tenant_key = 'warm-up')
                 + (SELECT count(*) FROM reservations WHERE tenant_key = 'warm-up')
                 + (SELECT count(*) FROM idempotency_keys WHERE fingerprint = 'warm-up')
                 + (SELECT count(*) FROM outbox WHERE routing_key = 'booking.warm_up') AS n""")
    assert left is not None and left["n"] == 0
    assert await cluster.invariants() == []
