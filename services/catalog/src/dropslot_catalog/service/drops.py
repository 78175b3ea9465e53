"""Drops: create, change, publish, cancel (by the owner); read (owner, staff, public)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from dropslot_contracts import ReservationRule
from dropslot_contracts.events.catalog import DropCancelled, DropCreated, DropLive, DropPublished, DropUpdated
from dropslot_kit.app import ServiceRuntime
from dropslot_kit.auth import Principal
from dropslot_kit.db import UnitOfWork
from dropslot_kit.errors import NotFound
from dropslot_kit.memberships import OWNER, STAFF

from .. import views
from ..adapters import repo
from ..api.schemas import DropCreate, DropUpdate
from ..domain import lifecycle
from ..domain.lifecycle import DropState, DropStatus
from ..errors import ProductInactive, ValidationFailed
from ..metrics import DROP_TRANSITIONS
from .common import locate, reading, store_scope, writing

Cursor = tuple[Any, uuid.UUID] | None


def _emit(uow: UnitOfWork, event: Any, row: repo.Row, *, before: dict[str, Any] | None = None) -> None:
    uow.emit(event, store_id=row["store_id"], tenant_key=row["tenant_key"], before=before, after=views.drop_view(row))


async def _view(uow: UnitOfWork, store_id: uuid.UUID, drop_id: uuid.UUID) -> repo.Row:
    row = await repo.drop_view(uow.conn, drop_id, store_id=store_id)
    if row is None:
        raise NotFound("no such drop")
    return row


async def create_drop(rt: ServiceRuntime, principal: Principal, store_id: uuid.UUID,
                      body: DropCreate) -> dict[str, Any]:
    async with writing(rt) as uow:
        store = await store_scope(uow, principal, store_id, OWNER)
        if await repo.get_product(uow.conn, store_id, body.product_id) is None:
            raise ValidationFailed("product_id", "no such product in this store")
        drop_id = uuid.uuid4()
        rule = ReservationRule.model_validate(body.reservation_rule.model_dump())
        await repo.insert_drop(uow.conn, id=drop_id, store_id=store_id, tenant_key=store["tenant_key"],
                               product_id=body.product_id, name=body.name, starts_at=body.starts_at,
                               ends_at=body.ends_at, rule=rule.as_json())
        row = await _view(uow, store_id, drop_id)
        _emit(uow, DropCreated(drop=views.drop_snapshot(row)), row)
    return views.drop_view(row)


async def update_drop(rt: ServiceRuntime, principal: Principal, store_id: uuid.UUID | None, drop_id: uuid.UUID,
                      body: DropUpdate) -> dict[str, Any]:
    async with writing(rt) as uow:
        if store_id is None:
            store_id = (await locate(uow, principal, "drops", drop_id, OWNER))["id"]
        else:
            await store_scope(uow, principal, store_id, OWNER)
        current = await repo.get_drop(uow.conn, store_id, drop_id, for_update=True)
        if current is None:
            raise NotFound("no such drop")
        status = DropStatus(current["status"])
        old_rule = ReservationRule.parse(current["reservation_rule"])
        given = body.given()
        changes: dict[str, Any] = {k: v for k, v in given.items() if k != "reservation_rule" and current[k] != v}
        if body.reservation_rule is not None:
            patch = body.reservation_rule.model_dump(mode="json", include=body.reservation_rule.model_fields_set)
            new_rule = ReservationRule.parse({**old_rule.as_json(), **patch})
            if status is DropStatus.SCHEDULED and new_rule.opens_at is None:
                new_rule = new_rule.effective(current["published_at"])  # "publish time", which has passed
            if new_rule != old_rule:
                changes["reservation_rule"] = new_rule
        if not changes:
            return views.drop_view(await _view(uow, store_id, drop_id))

        lifecycle.check_drop_change(
            DropState(status, current["product_id"], current["starts_at"], current["ends_at"], old_rule), changes
        )
        starts: datetime = changes["starts_at"] if "starts_at" in changes else current["starts_at"]
        ends: datetime = changes["ends_at"] if "ends_at" in changes else current["ends_at"]
        rule: ReservationRule = changes.get("reservation_rule", old_rule)
        if starts >= ends:
            field = "ends_at" if "ends_at" in changes else "starts_at"
            raise ValidationFailed(field, "ends_at must be after starts_at")
        if rule.opens_at is not None and rule.opens_at >= ends:
            raise ValidationFailed("reservation_rule.opens_at", "reservations must open before the drop ends")
        if "product_id" in changes and await repo.get_product(uow.conn, store_id, changes["product_id"]) is None:
            raise ValidationFailed("product_id", "no such product in this store")

        before = views.drop_view(await _view(uow, store_id, drop_id))
        fields = dict(changes)
        if "reservation_rule" in changes:
            fields["reservation_rule"] = rule.as_json()
            if status is DropStatus.SCHEDULED:
                fields["opens_at"] = rule.opens_at  # the scheduler opens it at the new time
        await repo.update_drop(uow.conn, store_id, drop_id, fields)
        row = await _view(uow, store_id, drop_id)
        _emit(uow, DropUpdated(drop=views.drop_snapshot(row), changed=sorted(changes)), row, before=before)
    return views.drop_view(row)


async def publish_drop(rt: ServiceRuntime, principal: Principal, drop_id: uuid.UUID) -> dict[str, Any]:
    async with writing(rt) as uow:
        store_id = (await locate(uow, principal, "drops", drop_id, OWNER))["id"]
        current = await repo.get_drop(uow.conn, store_id, drop_id, for_update=True)
        if current is None:
            raise NotFound("no such drop")
        status = DropStatus(current["status"])
        now = await repo.db_now(uow.conn)
        published = lifecycle.publish(status, ReservationRule.parse(current["reservation_rule"]),
                                      current["ends_at"], now)
        product = await repo.get_product(uow.conn, store_id, current["product_id"])
        if product is None or not product["is_active"]:
            raise ProductInactive("activate the product before publishing its drop")
        before = views.drop_view(await _view(uow, store_id, drop_id))
        fields: dict[str, Any] = {
            "status": published.status.value,
            "opens_at": published.opens_at,
            "reservation_rule": published.rule.as_json(),
            "published_at": now,
        }
        if published.status is DropStatus.LIVE:
            fields["live_at"] = now
        await repo.update_drop(uow.conn, store_id, drop_id, fields)
        row = await _view(uow, store_id, drop_id)
        snapshot = views.drop_snapshot(row)
        _emit(uow, DropPublished(drop=snapshot), row, before=before)
        if published.status is DropStatus.LIVE:
            _emit(uow, DropLive(drop=snapshot), row, before=before)
    DROP_TRANSITIONS.labels(published.status.value, "owner").inc()
    return views.drop_view(row)


async def cancel_drop(rt: ServiceRuntime, principal: Principal, drop_id: uuid.UUID,
                      reason: str | None) -> dict[str, Any]:
    async with writing(rt) as uow:
        store_id = (await locate(uow, principal, "drops", drop_id, OWNER))["id"]
        current = await repo.get_drop(uow.conn, store_id, drop_id, for_update=True)
        if current is None:
            raise NotFound("no such drop")
        target = lifecycle.cancel(DropStatus(current["status"]))
        before = views.drop_view(await _view(uow, store_id, drop_id))
        now = await repo.db_now(uow.conn)
        await repo.update_drop(uow.conn, store_id, drop_id,
                               {"status": target.value, "cancelled_at": now, "cancel_reason": reason})
        row = await _view(uow, store_id, drop_id)
        _emit(uow, DropCancelled(drop=views.drop_snapshot(row), reason=reason), row, before=before)
    DROP_TRANSITIONS.labels(target.value, "owner").inc()
    return views.drop_view(row)


async def list_store_drops(rt: ServiceRuntime, principal: Principal, store_id: uuid.UUID, *,
                           statuses: list[str] | None, cursor: Cursor, limit: int) -> dict[str, Any]:
    async with reading(rt) as uow:
        await store_scope(uow, principal, store_id, STAFF)
        rows = await repo.list_store_drops(uow.conn, store_id, statuses=statuses, cursor=cursor, limit=limit + 1)
    return views.page([views.drop_view(r) for r in rows], rows, limit, "created_at")


async def get_store_drop(rt: ServiceRuntime, principal: Principal, store_id: uuid.UUID | None,
                         drop_id: uuid.UUID) -> dict[str, Any]:
    """A drop in any state, for the store's owner and staff."""
    async with reading(rt) as uow:
        if store_id is None:
            store_id = (await locate(uow, principal, "drops", drop_id, STAFF))["id"]
        else:
            await store_scope(uow, principal, store_id, STAFF)
        row = await _view(uow, store_id, drop_id)
    return views.drop_view(row)
