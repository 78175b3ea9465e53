"""The trail against the real PostgreSQL and RabbitMQ: events published through the broker
become rows, the API filters and pages them by role, rows cannot be changed, and monthly
partitions are created ahead, on demand, and dropped (archived first) past retention."""

from __future__ import annotations

import csv
import gzip
import io
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from dropslot_audit.adapters import trail as repo
from dropslot_audit.domain.partitions import Month
from dropslot_audit.domain.trail import entry_from_envelope
from dropslot_audit.service import maintain_partitions
from dropslot_contracts import Actor, Envelope
from dropslot_contracts.events.booking import ReservationCreated, ReservationSnapshot
from dropslot_contracts.events.catalog import StoreCreated, StoreUpdated
from dropslot_contracts.events.identity import UserRegistered
from dropslot_kit.testing import eventually
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from .conftest import AuditUnderTest


def store_created(store_id: uuid.UUID, owner: uuid.UUID) -> StoreCreated:
    return StoreCreated(store_id=store_id, tenant_key=f"t-{store_id.hex[:8]}", name="S", slug=f"s-{store_id.hex[:8]}",
                        owner_user_id=owner)


def store_updated(store_id: uuid.UUID, name: str) -> StoreUpdated:
    return StoreUpdated(store_id=store_id, tenant_key=f"t-{store_id.hex[:8]}", name=name, slug=f"s-{store_id.hex[:8]}")


def reservation(store_id: uuid.UUID, user_id: uuid.UUID) -> ReservationCreated:
    now = datetime.now(UTC)
    return ReservationCreated(reservation=ReservationSnapshot(
        reservation_id=uuid.uuid4(), slot_id=uuid.uuid4(), drop_id=uuid.uuid4(), store_id=store_id, user_id=user_id,
        state="PENDING", slot_start=now, slot_end=now + timedelta(hours=1), amount_cents=1500, currency="EUR",
        requires_payment=True, checkin_token=None,
    ))


async def wait_rows(audit: AuditUnderTest, n: int, **params: Any) -> list[dict[str, Any]]:
    async def check() -> list[dict[str, Any]] | None:
        rows = await audit.logs(**params)
        return rows if len(rows) >= n else None

    return await eventually(check, timeout=30, what=f"{n} audit rows for {params}")


async def test_a_published_event_becomes_one_row_with_actor_entity_store_and_snapshots(audit):
    store, customer = uuid.uuid4(), uuid.uuid4()
    actor = Actor(user_id=customer, ip="203.0.113.7", user_agent="AuditProbe/2.1 (test)")
    env = await audit.publisher.emit(reservation(store, customer), producer="booking", actor=actor,
                                     before=None, after={"state": "PENDING"})
    rid = env.data["reservation"]["reservation_id"]
    [row] = await wait_rows(audit, 1, entity="reservation", entity_id=rid)
    assert row["action"] == "booking.reservation.created" and row["entity"] == "reservation"
    assert row["actor_user_id"] == str(customer)
    assert (row["ip"], row["ua"]) == ("203.0.113.7", "AuditProbe/2.1 (test)")
    assert row["store_id"] == str(store)  # found in the payload: the envelope named no store
    assert row["before"] is None and row["after"] == {"state": "PENDING"}
    assert row["event_id"] == str(env.id) and row["producer"] == "booking"
    assert datetime.fromisoformat(row["created_at"]) == env.occurred_at
    assert row["data"]["reservation"]["amount_cents"] == 1500


async def test_a_redelivered_event_is_written_once(audit):
    store = uuid.uuid4()
    env = Envelope.wrap(store_updated(store, "twice"), producer="catalog", store_id=store)
    await audit.publisher.send(env)
    await audit.publisher.send(env)  # the same event id again, as after a lost ack
    await audit.publisher.emit(store_updated(store, "marker"), producer="catalog", store_id=store)
    rows = await wait_rows(audit, 2, entity="store", entity_id=str(store))
    assert [r["data"]["name"] for r in rows] == ["twice", "marker"]
    # And below the inbox, the table itself refuses a second row for the event.
    async with audit.app.state.rt.db.uow() as uow:
        await repo.insert_entry(uow.conn, entry_from_envelope(env))
    assert len(await audit.logs(entity="store", entity_id=str(store))) == 2


async def test_admins_see_everything_owners_their_stores_and_others_are_refused(audit):
    mine, theirs, owner, stranger = uuid.uuid4(), uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    # The owner's token predates the store: the membership comes from catalog.store.created.
    await audit.publisher.emit(store_created(mine, owner), producer="catalog", actor=Actor(user_id=owner), store_id=mine)
    await audit.publisher.emit(store_created(theirs, stranger), producer="catalog", store_id=theirs)
    await audit.publisher.emit(store_updated(mine, "renamed"), producer="catalog", store_id=mine)
    signup = await audit.publisher.emit(UserRegistered(user_id=stranger, email="s@example.com", name="S"),
                                        producer="identity")
    await wait_rows(audit, 1, entity="user", entity_id=str(stranger))
    owner_h = audit.as_user(owner)

    async def owner_sees_both() -> list[dict[str, Any]] | None:
        rows = await audit.logs(owner_h, entity="store")
        return rows if len(rows) == 2 else None

    rows = await eventually(owner_sees_both, timeout=30, what="owner's view of their store")
    assert {r["store_id"] for r in rows} == {str(mine)}
    assert [r["action"] for r in rows] == ["catalog.store.created", "catalog.store.updated"]
    assert await audit.logs(owner_h, store_id=mine) == rows
    r = await audit.http.get("/audit-logs", params={"store_id": str(theirs)}, headers=owner_h)
    assert r.status_code == 404 and r.headers["content-type"] == "application/problem+json"
    # A row without a store (a sign-up) is the platform admin's only, as is the other store.
    assert await audit.logs(owner_h, entity="user", entity_id=str(stranger)) == []
    [row] = await audit.logs(entity="user", entity_id=str(stranger))
    assert row["store_id"] is None and row["event_id"] == str(signup.id)
    assert {str(mine), str(theirs)} <= {r["store_id"] for r in await audit.logs(entity="store")}
    r = await audit.http.get("/audit-logs", headers=audit.as_user(uuid.uuid4()))
    assert r.status_code == 403 and r.json()["type"].endswith("/forbidden")
    staff = audit.as_user(uuid.uuid4(), roles=[{"code": "store_staff", "store_id": str(mine)}])
    assert (await audit.http.get("/audit-logs", headers=staff)).status_code == 403
    r = await audit.http.get("/audit-logs")
    assert r.status_code == 401 and r.headers["content-type"] == "application/problem+json"


async def test_pages_follow_time_then_id_without_gaps_or_repeats(audit):
    store = uuid.uuid4()
    base = datetime.now(UTC) - timedelta(minutes=5)
    # Published out of order; two share one instant (the id breaks the tie).
    offsets = [4, 0, 3, 1, 1, 6, 2]
    for i, off in enumerate(offsets):
        env = Envelope.wrap(store_updated(store, f"n{i}"), producer="catalog", store_id=store)
        await audit.publisher.send(env.model_copy(update={"occurred_at": base + timedelta(seconds=off)}))
    everything = await wait_rows(audit, len(offsets), entity="store", entity_id=str(store))
    keys = [(datetime.fromisoformat(r["created_at"]), uuid.UUID(r["id"])) for r in everything]
    assert keys == sorted(keys)  # time, then id for the two that share an instant
    assert [at for at, _ in keys] == sorted(base + timedelta(seconds=o) for o in offsets)
    pages, cursor = [], None
    while True:
        params = {"entity": "store", "entity_id": str(store), "limit": "3", **({"cursor": cursor} if cursor else {})}
        body = (await audit.http.get("/audit-logs", params=params, headers=audit.as_admin())).json()
        pages.append(body["items"])
        cursor = body["next_cursor"]
        if not cursor:
            break
    assert [len(p) for p in pages] == [3, 3, 1]
    assert [r["id"] for p in pages for r in p] == [r["id"] for r in everything]
    # Time window: [from, to) around the middle entries.
    window = await audit.logs(entity="store", entity_id=str(store),
                              **{"from": (base + timedelta(seconds=1)).isoformat(),
                                 "to": (base + timedelta(seconds=4)).isoformat()})
    assert sorted(r["data"]["name"] for r in window) == ["n2", "n3", "n4", "n6"]


@pytest.mark.parametrize(("params", "status", "slug"), [
    ({"cursor": "not-a-cursor"}, 400, "invalid-cursor"),
    ({"limit": "0"}, 422, "validation-error"),
    ({"limit": "201"}, 422, "validation-error"),
    ({"from": "yesterday"}, 422, "validation-error"),
    ({"from": "2026-01-01T00:00:00"}, 422, "validation-error"),  # no zone: ambiguous
    ({"from": "2026-02-01T00:00:00Z", "to": "2026-01-01T00:00:00Z"}, 422, "validation-error"),
    ({"actor_user_id": "nope"}, 422, "validation-error"),
])
async def test_bad_queries_are_problems(audit, params, status, slug):
    r = await audit.http.get("/audit-logs", params=params, headers=audit.as_admin())
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/problem+json"
    assert r.json()["type"].endswith("/" + slug)


@pytest.mark.parametrize("statement", [
    "UPDATE audit_logs SET action = 'forged' WHERE event_id = :e",
    "DELETE FROM audit_logs WHERE event_id = :e",
    "TRUNCATE audit_logs",
    "TRUNCATE {partition}",
])
async def test_rows_cannot_be_changed_or_removed_even_by_the_owning_role(audit, statement):
    store = uuid.uuid4()
    env = await audit.publisher.emit(store_updated(store, "immutable"), producer="catalog", store_id=store)
    await wait_rows(audit, 1, entity_id=str(store))
    db = audit.app.state.rt.db
    with pytest.raises(DBAPIError) as exc:
        async with db.uow() as uow:
            sql = statement.format(partition=Month.of(env.occurred_at).partition)
            await uow.execute(sql, {"e": env.id})
    assert "permission denied" in str(exc.value) or "append-only" in str(exc.value)
    [row] = await audit.logs(entity_id=str(store))
    assert row["action"] == "catalog.store.updated"


async def test_partitions_ahead_on_demand_and_retention_with_archive(audit, tmp_path):
    db, settings = audit.app.state.rt.db, audit.app.state.rt.settings
    now = datetime.now(UTC)
    # An event from five months ago (a replay) finds no partition: the consumer creates one.
    old_store = uuid.uuid4()
    old = Envelope.wrap(store_updated(old_store, "ancient"), producer="catalog", store_id=old_store,
                        actor=Actor(user_id=uuid.uuid4(), ip="192.0.2.1", user_agent="Old/1"))
    old = old.model_copy(update={"occurred_at": now - timedelta(days=150)})
    await audit.publisher.send(old)
    [row] = await wait_rows(audit, 1, entity_id=str(old_store))
    old_partition = Month.of(old.occurred_at).partition
    ahead = {Month.of(now).plus(i).partition for i in range(3)}

    async def partitions_ahead() -> list[str] | None:
        async with db.uow() as uow:
            attached = await repo.attached_partitions(uow.conn)
        return attached if ahead <= set(attached) else None

    attached = await eventually(partitions_ahead, timeout=20, what="the loop creating this and the next 2 months")
    assert old_partition in attached

    keep = settings.model_copy(update={"audit_retention_months": 2, "audit_archive_dir": str(tmp_path)})
    report = await maintain_partitions(db, keep, now=now)
    assert old_partition in report.dropped and not report.skipped
    async with db.uow() as uow:
        attached = await repo.attached_partitions(uow.conn)
        leftovers = (await uow.execute("SELECT to_regclass(:n)", {"n": old_partition})).scalar_one()
    assert old_partition not in attached and leftovers is None
    assert Month.of(now).partition in attached and Month.of(now).plus(-2).partition not in report.dropped
    assert await audit.logs(entity_id=str(old_store)) == []

    archive = tmp_path / f"{old_partition}.csv.gz"
    assert str(archive) in report.archived
    with gzip.open(archive, "rt") as fh:
        rows = list(csv.DictReader(io.StringIO(fh.read())))
    assert [(r["event_id"], r["ip"], r["ua"]) for r in rows if r["entity_id"] == str(old_store)] == [
        (str(old.id), "192.0.2.1", "Old/1")]

    # The drop is itself an event, and so it is in the trail.
    [dropped] = await wait_rows(audit, 1, action="audit.partition.dropped", entity_id=old_partition)
    assert dropped["data"] == {"partition": old_partition, "archived_to": str(archive)}

    # A straggler for the dropped month is not lost: the consumer still believed the partition
    # existed, its first attempt fails, and the retry creates the month again.
    late = Envelope.wrap(store_updated(old_store, "straggler"), producer="catalog", store_id=old_store)
    await audit.publisher.send(late.model_copy(update={"occurred_at": old.occurred_at + timedelta(seconds=1)}))
    [row] = await wait_rows(audit, 1, entity_id=str(old_store))
    assert row["data"]["name"] == "straggler"


async def test_maintenance_runs_in_one_replica_at_a_time(audit):
    db, settings = audit.app.state.rt.db, audit.app.state.rt.settings
    async with db.engine.connect() as holder:
        assert await repo.try_maintenance_lock(holder)
        await holder.commit()
        try:
            assert (await maintain_partitions(db, settings)).skipped
        finally:
            await repo.unlock_maintenance(holder)
            await holder.commit()
    assert not (await maintain_partitions(db, settings)).skipped


async def test_sql_of_the_owner_view_uses_the_store_index(audit):
    """The owner's view must not scan the trail: its filter is served by the store index."""
    async with audit.app.state.rt.db.uow() as uow:
        await uow.execute("SET LOCAL enable_seqscan = off")
        plan = "\n".join(r[0] for r in await uow.conn.execute(text(
            "EXPLAIN SELECT id FROM audit_logs WHERE store_id = ANY(:s) ORDER BY created_at, id LIMIT 51"),
            {"s": [uuid.uuid4()]}))
    assert "store_id" in plan and "Seq Scan" not in plan
