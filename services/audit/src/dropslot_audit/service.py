"""Use cases: record an event, read the trail, keep the monthly partitions."""

from __future__ import annotations

import asyncio
import logging
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from dropslot_contracts import Envelope
from dropslot_contracts.events.audit import PartitionDropped
from dropslot_kit.auth import Principal
from dropslot_kit.db import Database, UnitOfWork
from dropslot_kit.errors import Forbidden, Problem
from dropslot_kit.memberships import OWNER, authorize_store, member_store_ids
from sqlalchemy.exc import DBAPIError

from .adapters import trail as repo
from .config import Settings
from .domain import cursor as cursors
from .domain.partitions import months_to_create, partitions_to_drop
from .domain.trail import entry_from_envelope

log = logging.getLogger("dropslot.audit")


class InvalidCursor(Problem):
    status, slug, title = 400, "invalid-cursor", "Invalid cursor"


# --- recording ---------------------------------------------------------------------------------
async def record(uow: UnitOfWork, envs: list[Envelope]) -> None:
    """One row per event, a whole batch in one statement; the kit's inbox (same transaction)
    makes a redelivery a no-op, and the unique (event_id, created_at) would too."""
    await repo.insert_entries(uow.conn, [entry_from_envelope(env) for env in envs])


# --- reading -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class TrailQuery:
    entity: str | None = None
    entity_id: str | None = None
    actor_user_id: uuid.UUID | None = None
    store_id: uuid.UUID | None = None
    action: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    limit: int = 50
    cursor: str | None = None


async def list_trail(db: Database, principal: Principal, q: TrailQuery) -> dict[str, Any]:
    """Platform admins read everything; a store owner reads the rows of the stores they own
    (rows without a store, such as sign-ups, are admin-only); anyone else is refused."""
    after = None
    if q.cursor:
        try:
            after = cursors.decode(q.cursor)
        except cursors.BadCursor as exc:
            raise InvalidCursor(str(exc)) from None
    async with db.uow() as uow:
        visible: frozenset[uuid.UUID] | None = None
        if not principal.is_platform_admin:
            if q.store_id is not None:
                await authorize_store(uow.conn, principal, q.store_id, OWNER)
                visible = frozenset({q.store_id})
            else:
                visible = frozenset(await member_store_ids(uow.conn, principal, OWNER))
                if not visible:
                    raise Forbidden("the audit trail is for platform admins and store owners")
        f = repo.TrailFilter(
            entity=q.entity, entity_id=q.entity_id, actor_user_id=q.actor_user_id, store_id=q.store_id,
            action=q.action, since=q.since, until=q.until, visible_stores=visible,
        )
        rows = await repo.list_entries(uow.conn, f, limit=q.limit + 1, after=after)
    page, more = rows[: q.limit], len(rows) > q.limit
    next_cursor = cursors.encode(page[-1]["created_at"], page[-1]["id"]) if more and page else None
    return {"items": page, "next_cursor": next_cursor}


# --- partitions --------------------------------------------------------------------------------
@dataclass
class MaintenanceReport:
    created: list[str]
    dropped: list[str]
    archived: list[str]
    skipped: bool = False


async def maintain_partitions(db: Database, settings: Settings, *, now: datetime | None = None) -> MaintenanceReport:
    """Create the current and the next `audit_partitions_ahead` months; with retention on, drop
    (archiving first when configured) every partition older than the window. One replica at a
    time; each partition is dropped in three steps so the parent is locked only briefly:
    detach (commit) -> archive the now-standalone table -> drop it and emit
    `audit.partition.dropped` in one transaction."""
    now = now or datetime.now(UTC)
    report = MaintenanceReport([], [], [])
    async with db.engine.connect() as lock_conn:
        if not await repo.try_maintenance_lock(lock_conn):
            await lock_conn.commit()
            report.skipped = True
            return report
        await lock_conn.commit()
        try:
            for month in months_to_create(now, settings.audit_partitions_ahead):
                async with db.uow() as uow:
                    if await repo.create_partition(uow.conn, month):
                        report.created.append(month.partition)
            if settings.audit_retention_months > 0:
                async with db.uow() as uow:
                    attached = await repo.attached_partitions(uow.conn)
                    leftovers = await repo.detached_partitions(uow.conn)
                doomed = partitions_to_drop(attached, now, settings.audit_retention_months)
                for name in doomed:
                    async with db.uow() as uow:
                        await repo.detach_partition(uow.conn, name)
                # Detached by an interrupted earlier run, or just now.
                for name in sorted(set(doomed) | set(leftovers)):
                    try:
                        archived = await _drop_one(db, settings, name)
                    except (OSError, DBAPIError):
                        # Not dropped without its archive; the next run (daily) tries again.
                        log.exception("audit partition %s: archiving or dropping failed", name)
                        continue
                    report.dropped.append(name)
                    if archived:
                        report.archived.append(archived)
        finally:
            await repo.unlock_maintenance(lock_conn)
            await lock_conn.commit()
    if report.created or report.dropped:
        log.info("audit partitions: created %s, dropped %s", report.created, report.dropped)
    return report


async def _drop_one(db: Database, settings: Settings, name: str) -> str | None:
    archived_to: str | None = None
    if settings.audit_archive_dir:
        async with db.uow() as uow:
            archived_to = await repo.archive_table(uow.conn, name, settings.audit_archive_dir)
    async with db.uow() as uow:
        await repo.drop_table(uow.conn, name)
        uow.emit(PartitionDropped(partition=name, archived_to=archived_to))
    return archived_to


async def partition_loop(db: Database, settings: Settings) -> None:
    """Supervised by the kit: a crash is logged and the loop restarted."""
    while True:
        await maintain_partitions(db, settings)
        await asyncio.sleep(settings.audit_maintenance_interval_seconds)
