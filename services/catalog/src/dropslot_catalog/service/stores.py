"""Stores, their branches and their products."""

from __future__ import annotations

import uuid
from typing import Any

from dropslot_contracts.events.catalog import (
    BranchCreated,
    BranchDeleted,
    BranchUpdated,
    DropUpdated,
    ProductCreated,
    ProductUpdated,
    StoreCreated,
    StoreUpdated,
)
from dropslot_kit.app import ServiceRuntime
from dropslot_kit.auth import Principal
from dropslot_kit.errors import NotFound
from dropslot_kit.memberships import OWNER, STAFF, grant
from sqlalchemy.exc import IntegrityError

from .. import views
from ..adapters import repo
from ..api.schemas import BranchCreate, BranchUpdate, ProductCreate, ProductUpdate, StoreCreate, StoreUpdate
from ..domain import lifecycle
from ..errors import SkuTaken, SlugTaken
from .common import changed, locate, reading, store_scope, writing

Page = dict[str, Any]
Cursor = tuple[Any, uuid.UUID] | None


# --- stores -------------------------------------------------------------------------------------
async def create_store(rt: ServiceRuntime, principal: Principal, body: StoreCreate) -> dict[str, Any]:
    store_id = uuid.uuid4()
    tenant_key = f"t_{uuid.uuid4().hex}"
    async with writing(rt) as uow:
        row = await repo.insert_store(uow.conn, id=store_id, name=body.name, slug=body.slug, tenant_key=tenant_key,
                                      logo_url=body.logo_url, created_by=principal.user_id)
        if row is None:
            raise SlugTaken(f"the slug {body.slug!r} is taken", slug_value=body.slug)
        # The creator manages the store at once, before identity (fed by the event below)
        # puts the role in a new token.
        await grant(uow.conn, store_id, principal.user_id, "store_owner")
        view = views.store_view(row)
        uow.emit(StoreCreated(store_id=store_id, tenant_key=tenant_key, name=body.name, slug=body.slug,
                              owner_user_id=principal.user_id, logo_url=body.logo_url),
                 store_id=store_id, tenant_key=tenant_key, after=view)
    return {**view, "owner_user_id": str(principal.user_id)}


async def update_store(rt: ServiceRuntime, principal: Principal, store_id: uuid.UUID,
                       body: StoreUpdate) -> dict[str, Any]:
    async with writing(rt) as uow:
        await store_scope(uow, principal, store_id, OWNER)
        current = await repo.get_store(uow.conn, store_id, for_update=True)
        assert current is not None
        changes = changed(current, body.given())
        if not changes:
            return views.store_view(current)
        try:
            row = await repo.update_store(uow.conn, store_id, changes)
        except IntegrityError as exc:
            if repo.constraint_of(exc) == "idx_stores_slug":
                raise SlugTaken(f"the slug {changes['slug']!r} is taken", slug_value=changes["slug"]) from None
            raise
        assert row is not None
        view = views.store_view(row)
        uow.emit(StoreUpdated(store_id=store_id, tenant_key=row["tenant_key"], name=row["name"], slug=row["slug"],
                              logo_url=row["logo_url"]),
                 store_id=store_id, tenant_key=row["tenant_key"], before=views.store_view(current), after=view)
    return view


# --- branches -----------------------------------------------------------------------------------
async def create_branch(rt: ServiceRuntime, principal: Principal, store_id: uuid.UUID,
                        body: BranchCreate) -> dict[str, Any]:
    async with writing(rt) as uow:
        store = await store_scope(uow, principal, store_id, OWNER)
        fields = {**body.model_dump(exclude={"opening_hours"}), "opening_hours": body.opening_hours.as_json()}
        row = await repo.insert_branch(uow.conn, id=uuid.uuid4(), store_id=store_id, tenant_key=store["tenant_key"],
                                       fields=fields)
        view = views.branch_view(row)
        uow.emit(BranchCreated(store_id=store_id, branch=views.branch_snapshot(row)),
                 store_id=store_id, tenant_key=store["tenant_key"], after=view)
    return view


async def list_branches(rt: ServiceRuntime, principal: Principal, store_id: uuid.UUID, *,
                        cursor: Cursor, limit: int) -> Page:
    async with reading(rt) as uow:
        await store_scope(uow, principal, store_id, STAFF)
        rows = await repo.list_branches(uow.conn, store_id, cursor=cursor, limit=limit + 1)
    return views.page([views.branch_view(r) for r in rows], rows, limit, "created_at")


async def get_branch(rt: ServiceRuntime, principal: Principal, store_id: uuid.UUID,
                     branch_id: uuid.UUID) -> dict[str, Any]:
    async with reading(rt) as uow:
        await store_scope(uow, principal, store_id, STAFF)
        row = await repo.get_branch(uow.conn, store_id, branch_id)
    if row is None:
        raise NotFound("no such branch")
    return views.branch_view(row)


async def update_branch(rt: ServiceRuntime, principal: Principal, store_id: uuid.UUID, branch_id: uuid.UUID,
                        body: BranchUpdate) -> dict[str, Any]:
    async with writing(rt) as uow:
        store = await store_scope(uow, principal, store_id, OWNER)
        current = await repo.get_branch(uow.conn, store_id, branch_id, for_update=True)
        if current is None:
            raise NotFound("no such branch")
        given = body.given()
        if "opening_hours" in given:
            given["opening_hours"] = body.opening_hours.as_json() if body.opening_hours else {}
        cur = {**current, "lat": float(current["lat"]), "lng": float(current["lng"])}
        changes = changed(cur, given)
        if not changes:
            return views.branch_view(current)
        row = await repo.update_branch(uow.conn, store_id, branch_id, changes)
        assert row is not None
        view = views.branch_view(row)
        uow.emit(BranchUpdated(store_id=store_id, branch=views.branch_snapshot(row)),
                 store_id=store_id, tenant_key=store["tenant_key"], before=views.branch_view(current), after=view)
    return view


async def delete_branch(rt: ServiceRuntime, principal: Principal, store_id: uuid.UUID, branch_id: uuid.UUID) -> None:
    async with writing(rt) as uow:
        store = await store_scope(uow, principal, store_id, OWNER)
        row = await repo.delete_branch(uow.conn, store_id, branch_id)
        if row is None:
            raise NotFound("no such branch")
        uow.emit(BranchDeleted(store_id=store_id, branch_id=branch_id),
                 store_id=store_id, tenant_key=store["tenant_key"], before=views.branch_view(row))


# --- products -----------------------------------------------------------------------------------
def _product_event(cls: type[ProductCreated] | type[ProductUpdated], row: repo.Row) -> ProductCreated:
    return cls(product_id=row["id"], store_id=row["store_id"], name=row["name"], sku=row["sku"],
               price_cents=row["price_cents"], currency=row["currency"], is_active=row["is_active"],
               description=row["description"], images=list(row["images"] or []))


async def create_product(rt: ServiceRuntime, principal: Principal, store_id: uuid.UUID,
                         body: ProductCreate) -> dict[str, Any]:
    async with writing(rt) as uow:
        store = await store_scope(uow, principal, store_id, OWNER)
        row = await repo.insert_product(uow.conn, id=uuid.uuid4(), store_id=store_id, tenant_key=store["tenant_key"],
                                        fields=body.model_dump())
        if row is None:
            raise SkuTaken(f"the SKU {body.sku!r} is already used in this store", sku=body.sku)
        view = views.product_view(row)
        uow.emit(_product_event(ProductCreated, row), store_id=store_id, tenant_key=store["tenant_key"], after=view)
    return view


async def list_products(rt: ServiceRuntime, principal: Principal, store_id: uuid.UUID, *, cursor: Cursor,
                        limit: int, active: bool | None) -> Page:
    async with reading(rt) as uow:
        await store_scope(uow, principal, store_id, STAFF)
        rows = await repo.list_products(uow.conn, store_id, cursor=cursor, limit=limit + 1, active=active)
    return views.page([views.product_view(r) for r in rows], rows, limit, "created_at")


async def get_product(rt: ServiceRuntime, principal: Principal, store_id: uuid.UUID | None,
                      product_id: uuid.UUID) -> dict[str, Any]:
    async with reading(rt) as uow:
        if store_id is None:
            store_id = (await locate(uow, principal, "products", product_id, STAFF))["id"]
        else:
            await store_scope(uow, principal, store_id, STAFF)
        row = await repo.get_product(uow.conn, store_id, product_id)
    if row is None:
        raise NotFound("no such product")
    return views.product_view(row)


# Product fields that drop snapshots carry: changing one re-announces the product's drops.
SNAPSHOT_FIELDS = ("name", "price_cents", "currency")


async def update_product(rt: ServiceRuntime, principal: Principal, store_id: uuid.UUID | None,
                         product_id: uuid.UUID, body: ProductUpdate) -> dict[str, Any]:
    async with writing(rt) as uow:
        if store_id is None:
            store = await locate(uow, principal, "products", product_id, OWNER)
            store_id = store["id"]
        else:
            store = await store_scope(uow, principal, store_id, OWNER)
        current = await repo.get_product(uow.conn, store_id, product_id, for_update=True)
        if current is None:
            raise NotFound("no such product")
        changes = changed(current, body.given())
        if not changes:
            return views.product_view(current)
        open_drops = await repo.lock_open_drops_of_product(uow.conn, store_id, product_id)
        lifecycle.check_product_change(changes, current, [d["id"] for d in open_drops if d["status"] == "LIVE"])
        re_announce = [d["id"] for d in open_drops] if any(f in changes for f in SNAPSHOT_FIELDS) else []
        before_drops = {r["id"]: r for r in await repo.drop_views(uow.conn, re_announce)}
        try:
            row = await repo.update_product(uow.conn, store_id, product_id, changes)
        except IntegrityError as exc:
            if repo.constraint_of(exc) == "idx_products_sku":
                sku = changes["sku"]
                raise SkuTaken(f"the SKU {sku!r} is already used in this store", sku=sku) from None
            raise
        assert row is not None
        view = views.product_view(row)
        tk = store["tenant_key"]
        uow.emit(_product_event(ProductUpdated, row), store_id=store_id, tenant_key=tk,
                 before=views.product_view(current), after=view)
        # Booking keeps drops from catalog.drop.* only: tell it the new name/price/currency.
        for drop in await repo.drop_views(uow.conn, re_announce):
            uow.emit(DropUpdated(drop=views.drop_snapshot(drop), changed=["product"]), store_id=store_id,
                     tenant_key=tk, before=views.drop_view(before_drops[drop["id"]]), after=views.drop_view(drop))
    return view
