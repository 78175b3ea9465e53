"""Row-level security, indexes and the scheduler, against the real database, as the
catalog's own (non-superuser) role through the kit's Database."""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

import pytest
from dropslot_catalog.adapters import repo
from dropslot_catalog.adapters.cache import PublicCache
from dropslot_catalog.domain.geo import bounding_box
from dropslot_catalog.service import scheduler
from dropslot_kit.db import Database
from dropslot_kit.testing import eventually
from sqlalchemy.exc import DBAPIError

from .conftest import iso


@pytest.fixture
def db(catalog_app) -> Database:
    """The catalog app's own pool: its role, its settings (and no extra connections)."""
    return catalog_app.state.rt.db  # type: ignore[no-any-return]


async def _tenant_of(db: Database, store_id: str) -> str:
    async with db.uow() as uow:
        return (await uow.execute("SELECT tenant_key FROM stores WHERE id = :id", {"id": store_id})).scalar_one()


async def _count(uow, table: str, store_id: str) -> int:
    return (await uow.execute(f"SELECT count(*) FROM {table} WHERE store_id = :s", {"s": store_id})).scalar_one()


async def test_the_service_role_cannot_bypass_row_level_security(db):
    async with db.uow() as uow:
        role = (await uow.execute("SELECT rolsuper, rolbypassrls FROM pg_roles WHERE rolname = current_user")).one()
        assert tuple(role) == (False, False)
        rows = (await uow.execute(
            "SELECT relname, relrowsecurity, relforcerowsecurity, pg_get_userbyid(relowner) = current_user "
            "FROM pg_class WHERE relnamespace = 'catalog'::regnamespace AND relname IN ('branches', 'products', 'drops')"
        )).all()
    # Row-level security is on, and forced: the service role owns these tables, and an owner
    # would otherwise be exempt from its own policies.
    assert sorted(tuple(r) for r in rows) == [(t, True, True, True) for t in ("branches", "drops", "products")]


async def test_without_a_tenant_no_private_row_is_visible_or_writable(direct_api, db):
    owner, store, branch, product = await direct_api.shop()
    draft = await direct_api.drop(owner, store, product)
    other_owner, other_store, _, _ = await direct_api.shop()
    tenant, other_tenant = await _tenant_of(db, store["id"]), await _tenant_of(db, other_store["id"])

    async with db.uow() as uow:  # no tenant set: a query that "forgot" it
        assert [await _count(uow, t, store["id"]) for t in ("branches", "products", "drops")] == [0, 0, 0]
        assert (await uow.execute("SELECT count(*) FROM drops WHERE status = 'DRAFT'")).scalar_one() == 0
        assert (await uow.execute("UPDATE products SET name = 'x' WHERE id = :id", {"id": product["id"]})).rowcount == 0
        assert (await uow.execute("DELETE FROM branches WHERE id = :id", {"id": branch["id"]})).rowcount == 0
    async with db.uow(tenant_key=other_tenant) as uow:  # another store's tenant
        assert [await _count(uow, t, store["id"]) for t in ("branches", "products", "drops")] == [0, 0, 0]
    async with db.uow(tenant_key=tenant) as uow:  # its own tenant
        assert [await _count(uow, t, store["id"]) for t in ("branches", "products", "drops")] == [1, 1, 1]

    # Writing a row into another tenant is refused by the policy's WITH CHECK.
    with pytest.raises(DBAPIError, match="row-level security"):
        async with db.uow(tenant_key=other_tenant) as uow:
            await uow.execute(
                "INSERT INTO branches (id, store_id, tenant_key, name, address, lat, lng) "
                "VALUES (:id, :s, :t, 'x', 'y', 1, 1)", {"id": uuid.uuid4(), "s": store["id"], "t": tenant})

    # Once published, the drop, its product and the store's branches are public: readable
    # without a tenant, still not writable.
    await direct_api.publish(owner, draft)
    async with db.uow() as uow:
        assert [await _count(uow, t, store["id"]) for t in ("branches", "products", "drops")] == [1, 1, 1]
        assert (await uow.execute("UPDATE drops SET name = 'x' WHERE id = :id", {"id": draft["id"]})).rowcount == 0
    unpublished = await direct_api.product(owner, store)
    async with db.uow() as uow:
        found = await uow.execute("SELECT 1 FROM products WHERE id = :id", {"id": unpublished["id"]})
        assert found.first() is None  # a product in no published drop stays private


async def test_public_queries_and_the_scheduler_use_their_indexes(db):
    """EXPLAIN the exact SQL the service runs (seq scans disabled, so the plan shows which
    index can serve it; on a few test rows the planner would rightly prefer a seq scan)."""
    t = datetime.now(UTC)
    cases = [
        (repo.public_drops_sql(statuses=frozenset({"SCHEDULED", "LIVE"}), store=False, window_from=False,
                               window_to=False, near=None, cursor=True),
         {"limit": 21, "c_key": t, "c_id": uuid.uuid4()}, "ix_drops_public_starts_at"),
        (repo.public_drops_sql(statuses=frozenset({"LIVE"}), store=True, window_from=True, window_to=True,
                               near=None, cursor=False),
         {"limit": 21, "store_id": uuid.uuid4(), "window_from": t, "window_to": t + timedelta(days=1)},
         "ix_drops_public_store"),
        (repo.public_drops_sql(statuses=frozenset({"SCHEDULED"}), store=False, window_from=False, window_to=False,
                               near=bounding_box(52.5, 13.4, 10), cursor=False),
         {"limit": 21, "near_lat": 52.5, "near_lng": 13.4, "radius_km": 10.0, "lat_min": 52.4, "lat_max": 52.6,
          "lng_min": 13.2, "lng_max": 13.6}, "ix_branches_lat_lng"),
    ]
    async with db.uow() as uow:
        await uow.execute("SET LOCAL enable_seqscan = off")
        for sql, params, index in cases:
            plan = "\n".join(r[0] for r in await uow.execute("EXPLAIN " + sql, params))
            # Every table (row-level security subqueries included) is reached through an index.
            assert "Seq Scan" not in plan, plan
            assert index in plan, plan
        plan = "\n".join(r[0] for r in await uow.execute(
            "EXPLAIN SELECT id FROM drops WHERE status = 'SCHEDULED' AND opens_at <= now() ORDER BY opens_at LIMIT 100"))
        assert "ix_drops_due_open" in plan, plan
        plan = "\n".join(r[0] for r in await uow.execute(
            "EXPLAIN SELECT id FROM drops WHERE status = 'LIVE' AND ends_at <= now() ORDER BY ends_at LIMIT 100"))
        assert "ix_drops_due_end" in plan, plan
        plan = "\n".join(r[0] for r in await uow.execute(
            "EXPLAIN SELECT id FROM drops WHERE product_id = :p", {"p": uuid.uuid4()}))
        assert "idx_drops_product_id" in plan, plan  # the seed's index, on drops where it belongs


async def test_replicas_racing_for_due_drops_move_each_once(direct_api, catalog_settings, events):
    """Three extra schedulers (own pools, like replicas) hammer the same due drop alongside
    the app's own: it goes LIVE once and ENDED once, with one event each."""
    owner, store, _, product = await direct_api.shop()
    t0 = datetime.now(UTC)
    drop = await direct_api.drop(owner, store, product, starts_at=iso(t0 + timedelta(seconds=2)),
                                 ends_at=iso(t0 + timedelta(seconds=3)),
                                 reservation_rule={"opens_at": iso(t0 + timedelta(seconds=1.5))})
    assert (await direct_api.publish(owner, drop))["status"] == "SCHEDULED"

    small = catalog_settings.model_copy(update={"db_pool_size": 1, "db_max_overflow": 0})
    replicas = [SimpleNamespace(db=Database(small), settings=small, extras={
        "cache": PublicCache(small.redis_url, small.broker_namespace, ttl_seconds=60)})
        for _ in range(3)]

    async def hammer(rt) -> int:
        moved, deadline = 0, time.monotonic() + 5
        while time.monotonic() < deadline:
            moved += await scheduler.run_pass(rt)
            await asyncio.sleep(0.01)
        return moved

    try:
        await asyncio.gather(*(hammer(rt) for rt in replicas))
    finally:
        for rt in replicas:
            await rt.db.dispose()
            await rt.extras["cache"].close()
    # A later event is a marker: the relay publishes in order, so once it arrives every
    # event about the drop (duplicates included, if there were any) has arrived too.
    marker = await direct_api.store(owner)
    await eventually(lambda: _arrived(events, marker["id"]), timeout=20, what="marker event")
    assert len(events.of("catalog.drop.live", drop__drop_id=drop["id"])) == 1
    assert len(events.of("catalog.drop.ended", drop__drop_id=drop["id"])) == 1
    r = await direct_api.http.get(f"/drops/{drop['id']}")
    assert r.json()["status"] == "ENDED"


async def _arrived(events, store_id: str) -> bool:
    return bool(events.of("catalog.store.created", store_id=store_id))
