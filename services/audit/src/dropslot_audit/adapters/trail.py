"""All SQL on `audit_logs`: append an entry, read a filtered page, manage monthly partitions."""

from __future__ import annotations

import asyncio
import gzip
import json
import os
import uuid
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection

from ..domain.partitions import PARENT, Month
from ..domain.trail import AuditEntry

_INSERT = text("""
    INSERT INTO audit_logs (event_id, actor_user_id, action, entity, entity_id, store_id, tenant_key,
                            before, after, data, ip, ua, producer, correlation_id, created_at)
    VALUES (:event_id, :actor_user_id, :action, :entity, :entity_id, :store_id, :tenant_key,
            CAST(:before AS jsonb), CAST(:after AS jsonb), CAST(:data AS jsonb), :ip, :ua, :producer,
            :correlation_id, :created_at)
    ON CONFLICT (event_id, created_at) DO NOTHING
""")

NO_PARTITION_SQLSTATE = "23514"  # check_violation: "no partition of relation ... found for row"


def _json(value: Any) -> str | None:
    return None if value is None else json.dumps(value, default=str)


# Months whose partition this process has seen, per database: the hot path then inserts
# without a savepoint or a catalog lookup. Retention elsewhere may drop a month that is still
# listed here; the insert then fails, the entry is forgotten, and the kit's retry creates it.
_known_months: dict[str, set[Month]] = {}


async def insert_entry(conn: AsyncConnection, entry: AuditEntry) -> None:
    """Append one entry (see `insert_entries`)."""
    await insert_entries(conn, [entry])


async def insert_entries(conn: AsyncConnection, entries: list[AuditEntry]) -> None:
    """Append entries in one statement. An event for a month without a partition (a replay from
    long ago, a clock far ahead) creates that month's partition first, in this transaction."""
    if not entries:
        return
    rows = [
        {
            "event_id": e.event_id, "actor_user_id": e.actor_user_id, "action": e.action,
            "entity": e.entity, "entity_id": e.entity_id, "store_id": e.store_id,
            "tenant_key": e.tenant_key, "before": _json(e.before), "after": _json(e.after),
            "data": _json(e.data), "ip": e.ip, "ua": e.ua, "producer": e.producer,
            "correlation_id": e.correlation_id, "created_at": e.created_at,
        }
        for e in entries
    ]
    known = _known_months.setdefault(conn.engine.url.render_as_string(), set())
    months = {Month.of(e.created_at) for e in entries}
    for month in sorted(months - known):
        await create_partition(conn, month)
        known.add(month)
    try:
        await conn.execute(_INSERT, rows)
    except DBAPIError as exc:
        if getattr(exc.orig, "sqlstate", None) == NO_PARTITION_SQLSTATE and "partition" in str(exc.orig):
            known.difference_update(months)
        raise


# --- reading -----------------------------------------------------------------------------------
_COLUMNS = (
    "id, event_id, actor_user_id, action, entity, entity_id, store_id, before, after, data, ip, ua,"
    " producer, correlation_id, created_at"
)


@dataclass(frozen=True)
class TrailFilter:
    entity: str | None = None
    entity_id: str | None = None
    actor_user_id: uuid.UUID | None = None
    store_id: uuid.UUID | None = None
    action: str | None = None
    since: datetime | None = None  # inclusive
    until: datetime | None = None  # exclusive
    # None: every store (platform admin); otherwise only rows of these stores (store owner).
    visible_stores: frozenset[uuid.UUID] | None = None


async def list_entries(
    conn: AsyncConnection, f: TrailFilter, *, limit: int, after: tuple[datetime, uuid.UUID] | None
) -> list[dict[str, Any]]:
    """A page in (created_at, id) order. Only the filters given become predicates, so each
    query can use its index and the time bounds prune partitions."""
    where: list[str] = []
    params: dict[str, Any] = {"limit": limit}
    for column, value in (
        ("entity", f.entity), ("entity_id", f.entity_id), ("actor_user_id", f.actor_user_id),
        ("store_id", f.store_id), ("action", f.action),
    ):
        if value is not None:
            where.append(f"{column} = :{column}")
            params[column] = value
    if f.since is not None:
        where.append("created_at >= :since")
        params["since"] = f.since
    if f.until is not None:
        where.append("created_at < :until")
        params["until"] = f.until
    if f.visible_stores is not None:
        where.append("store_id = ANY(:stores)")
        params["stores"] = list(f.visible_stores)
    if after is not None:
        where.append("(created_at, id) > (:after_at, :after_id)")
        params["after_at"], params["after_id"] = after
    sql = f"SELECT {_COLUMNS} FROM audit_logs"
    if where:
        sql += " WHERE " + " AND ".join(where)
    sql += " ORDER BY created_at, id LIMIT :limit"
    rows = await conn.execute(text(sql), params)
    return [dict(r._mapping) for r in rows]


# --- partitions --------------------------------------------------------------------------------
async def create_partition(conn: AsyncConnection, month: Month) -> bool:
    """Create the month's partition if it is missing. True when it was created now."""
    name = month.partition
    # Concurrent creators (the loop, many consumers seeing a new month at once) queue here, and
    # the later ones find the table, instead of failing on "already exists" and retrying.
    await conn.execute(text("SELECT pg_advisory_xact_lock(hashtext('dropslot.audit.create_partition'))"))
    exists = await conn.execute(text("SELECT to_regclass(:n) IS NOT NULL"), {"n": name})
    if exists.scalar_one():
        return False
    # Names and bounds come from `Month` (digits only), never from input: safe to inline.
    await conn.execute(text(
        f"CREATE TABLE IF NOT EXISTS {name} PARTITION OF {PARENT}"
        f" FOR VALUES FROM ('{month.start.isoformat()}') TO ('{month.end.isoformat()}')"
    ))
    await conn.execute(text(
        f"CREATE OR REPLACE TRIGGER audit_logs_no_truncate BEFORE TRUNCATE ON {name}"
        " FOR EACH STATEMENT EXECUTE FUNCTION audit_logs_immutable()"
    ))
    return True


async def attached_partitions(conn: AsyncConnection) -> list[str]:
    rows = await conn.execute(text("""
        SELECT c.relname FROM pg_inherits i
        JOIN pg_class c ON c.oid = i.inhrelid
        JOIN pg_class p ON p.oid = i.inhparent
        WHERE p.oid = to_regclass(:parent)
        ORDER BY c.relname
    """), {"parent": PARENT})
    return [r[0] for r in rows]


async def detached_partitions(conn: AsyncConnection) -> list[str]:
    """Monthly tables in our schema no longer attached: left by a retention run that stopped
    between detaching and dropping (they are archived and dropped on the next run)."""
    rows = await conn.execute(text("""
        SELECT c.relname FROM pg_class c
        WHERE c.relnamespace = current_schema()::regnamespace AND c.relkind = 'r'
          AND c.relname LIKE :pattern AND NOT c.relispartition
        ORDER BY c.relname
    """), {"pattern": PARENT + "\\_y%"})
    return [r[0] for r in rows if Month.from_partition(r[0]) is not None]


async def detach_partition(conn: AsyncConnection, name: str) -> None:
    _check_name(name)
    await conn.execute(text(f"ALTER TABLE {PARENT} DETACH PARTITION {name}"))


async def drop_table(conn: AsyncConnection, name: str) -> None:
    _check_name(name)
    await conn.execute(text(f"DROP TABLE IF EXISTS {name}"))


async def archive_table(conn: AsyncConnection, name: str, directory: str) -> str:
    """Stream a (detached) partition to `<dir>/<name>.csv.gz` with COPY, durably: written to a
    temporary name, fsynced, then renamed, so a file under the final name is always complete."""
    _check_name(name)
    target = Path(directory) / f"{name}.csv.gz"
    partial = target.with_name(target.name + ".partial")
    target.parent.mkdir(parents=True, exist_ok=True)
    raw = await conn.get_raw_connection()
    driver = raw.driver_connection
    assert driver is not None
    fh = await asyncio.to_thread(open, partial, "wb")
    try:
        gz = gzip.GzipFile(fileobj=fh, mode="wb")
        # asyncpg writes each chunk to a file-like output in a worker thread.
        await driver.copy_from_query(
            f"SELECT {_COLUMNS}, tenant_key, recorded_at FROM {name} ORDER BY created_at, id",
            output=gz, format="csv", header=True,
        )
        await asyncio.to_thread(_finish, gz, fh)
    finally:
        fh.close()
    await asyncio.to_thread(os.replace, partial, target)
    return str(target)


def _finish(gz: gzip.GzipFile, fh: Any) -> None:
    gz.close()
    fh.flush()
    os.fsync(fh.fileno())


def _check_name(name: str) -> None:
    if Month.from_partition(name) is None:
        raise ValueError(f"not an audit partition: {name!r}")


async def try_maintenance_lock(conn: AsyncConnection) -> bool:
    """One replica maintains partitions at a time (session lock, released by `unlock`)."""
    got = await conn.execute(text("SELECT pg_try_advisory_lock(hashtext('dropslot.audit.partitions'))"))
    return bool(got.scalar_one())


async def unlock_maintenance(conn: AsyncConnection) -> None:
    await conn.execute(text("SELECT pg_advisory_unlock(hashtext('dropslot.audit.partitions'))"))
