"""Catalog's public HTTP API (API.md, catalog section), mounted under /api/v1.

Store admin calls (owner; staff may read) address a store's branches, products and drops
under `/stores/{id}/...`; products and drops may also be addressed by their own id
(`/products/{id}`, `/drops/{id}`). Everything of a store an outsider asks for is 404.
Public reads (`GET /stores`, `/stores/{id}`, `/drops`, `/drops/{id}`) are cached.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated

from dropslot_contracts.rules import as_utc
from dropslot_kit.auth import CurrentUser, OptionalUser
from dropslot_kit.errors import NotFound
from fastapi import APIRouter, Query, Request, Response

from .. import views
from ..domain.geo import bounding_box, parse_point
from ..domain.lifecycle import DropStatus
from ..errors import ValidationFailed
from ..service import drops, public, stores
from .caching import private_json, public_json
from .schemas import (
    BranchCreate,
    BranchUpdate,
    CancelBody,
    DropCreate,
    DropUpdate,
    ProductCreate,
    ProductUpdate,
    StoreCreate,
    StoreUpdate,
)

router = APIRouter(prefix="/api/v1")

Limit = Annotated[int, Query(ge=1, le=100, description="page size")]
CursorQ = Annotated[str | None, Query(description="next_cursor of the previous page")]
PUBLIC_STATUSES = {"live": "LIVE", "upcoming": "SCHEDULED", "scheduled": "SCHEDULED"}  # the state's name works too
DEFAULT_RADIUS_KM = 25.0


def _cursor(value: str | None) -> tuple[datetime, uuid.UUID] | None:
    if value is None:
        return None
    try:
        return views.decode_cursor(value)
    except ValueError:
        raise ValidationFailed("cursor", "not a cursor this API returned", location="query") from None


def _rt(request: Request):  # type: ignore[no-untyped-def]
    return request.app.state.rt


# --- stores -------------------------------------------------------------------------------------
@router.post("/stores", status_code=201, tags=["stores"], summary="Create a store (the caller owns it at once)")
async def create_store(request: Request, body: StoreCreate, user: CurrentUser) -> Response:
    return private_json(await stores.create_store(_rt(request), user, body), 201)


@router.get("/stores", tags=["stores"], summary="Stores (public)")
async def list_stores(request: Request, limit: Limit = 20, cursor: CursorQ = None) -> Response:
    c = _cursor(cursor)
    return await public_json(request, "stores", lambda: public.list_stores(_rt(request), cursor=c, limit=limit))


@router.get("/stores/{store_ref}", tags=["stores"], summary="A store by id or slug (public)")
async def get_store(request: Request, store_ref: str) -> Response:
    return await public_json(request, "store", lambda: public.get_store(_rt(request), store_ref))


@router.patch("/stores/{store_id}", tags=["stores"], summary="Change a store (owner)")
async def update_store(request: Request, store_id: uuid.UUID, body: StoreUpdate, user: CurrentUser) -> Response:
    return private_json(await stores.update_store(_rt(request), user, store_id, body))


# --- branches -----------------------------------------------------------------------------------
@router.post("/stores/{store_id}/branches", status_code=201, tags=["branches"])
async def create_branch(request: Request, store_id: uuid.UUID, body: BranchCreate, user: CurrentUser) -> Response:
    return private_json(await stores.create_branch(_rt(request), user, store_id, body), 201)


@router.get("/stores/{store_id}/branches", tags=["branches"])
async def list_branches(request: Request, store_id: uuid.UUID, user: CurrentUser, limit: Limit = 20,
                        cursor: CursorQ = None) -> Response:
    return private_json(await stores.list_branches(_rt(request), user, store_id, cursor=_cursor(cursor), limit=limit))


@router.get("/stores/{store_id}/branches/{branch_id}", tags=["branches"])
async def get_branch(request: Request, store_id: uuid.UUID, branch_id: uuid.UUID, user: CurrentUser) -> Response:
    return private_json(await stores.get_branch(_rt(request), user, store_id, branch_id))


@router.patch("/stores/{store_id}/branches/{branch_id}", tags=["branches"])
async def update_branch(request: Request, store_id: uuid.UUID, branch_id: uuid.UUID, body: BranchUpdate,
                        user: CurrentUser) -> Response:
    return private_json(await stores.update_branch(_rt(request), user, store_id, branch_id, body))


@router.delete("/stores/{store_id}/branches/{branch_id}", status_code=204, tags=["branches"])
async def delete_branch(request: Request, store_id: uuid.UUID, branch_id: uuid.UUID, user: CurrentUser) -> Response:
    await stores.delete_branch(_rt(request), user, store_id, branch_id)
    return Response(status_code=204)


# --- products -----------------------------------------------------------------------------------
@router.post("/stores/{store_id}/products", status_code=201, tags=["products"])
async def create_product(request: Request, store_id: uuid.UUID, body: ProductCreate, user: CurrentUser) -> Response:
    return private_json(await stores.create_product(_rt(request), user, store_id, body), 201)


@router.get("/stores/{store_id}/products", tags=["products"])
async def list_products(request: Request, store_id: uuid.UUID, user: CurrentUser, limit: Limit = 20,
                        cursor: CursorQ = None, is_active: bool | None = None) -> Response:
    return private_json(await stores.list_products(_rt(request), user, store_id, cursor=_cursor(cursor), limit=limit,
                                                   active=is_active))


@router.get("/stores/{store_id}/products/{product_id}", tags=["products"])
async def get_product(request: Request, store_id: uuid.UUID, product_id: uuid.UUID, user: CurrentUser) -> Response:
    return private_json(await stores.get_product(_rt(request), user, store_id, product_id))


@router.patch("/stores/{store_id}/products/{product_id}", tags=["products"])
async def update_product(request: Request, store_id: uuid.UUID, product_id: uuid.UUID, body: ProductUpdate,
                         user: CurrentUser) -> Response:
    return private_json(await stores.update_product(_rt(request), user, store_id, product_id, body))


@router.get("/products/{product_id}", tags=["products"])
async def get_product_by_id(request: Request, product_id: uuid.UUID, user: CurrentUser) -> Response:
    return private_json(await stores.get_product(_rt(request), user, None, product_id))


@router.patch("/products/{product_id}", tags=["products"])
async def update_product_by_id(request: Request, product_id: uuid.UUID, body: ProductUpdate,
                               user: CurrentUser) -> Response:
    return private_json(await stores.update_product(_rt(request), user, None, product_id, body))


# --- drops (store admin) ------------------------------------------------------------------------
def _admin_statuses(status: str | None) -> list[str] | None:
    if not status:
        return None
    out = []
    for part in status.split(","):
        name = part.strip().upper()
        name = {"UPCOMING": "SCHEDULED"}.get(name, name)
        if name not in DropStatus.__members__:
            raise ValidationFailed("status", f"unknown status {part.strip()!r}; one of "
                                   + ", ".join(DropStatus.__members__), location="query")
        out.append(name)
    return out


@router.post("/stores/{store_id}/drops", status_code=201, tags=["drops"], summary="Create a drop (in DRAFT)")
async def create_drop(request: Request, store_id: uuid.UUID, body: DropCreate, user: CurrentUser) -> Response:
    return private_json(await drops.create_drop(_rt(request), user, store_id, body), 201)


@router.get("/stores/{store_id}/drops", tags=["drops"], summary="The store's drops in every state (owner, staff)")
async def list_store_drops(request: Request, store_id: uuid.UUID, user: CurrentUser, limit: Limit = 20,
                           cursor: CursorQ = None, status: str | None = None) -> Response:
    return private_json(await drops.list_store_drops(_rt(request), user, store_id, statuses=_admin_statuses(status),
                                                     cursor=_cursor(cursor), limit=limit))


@router.get("/stores/{store_id}/drops/{drop_id}", tags=["drops"])
async def get_store_drop(request: Request, store_id: uuid.UUID, drop_id: uuid.UUID, user: CurrentUser) -> Response:
    return private_json(await drops.get_store_drop(_rt(request), user, store_id, drop_id))


@router.patch("/stores/{store_id}/drops/{drop_id}", tags=["drops"])
async def update_store_drop(request: Request, store_id: uuid.UUID, drop_id: uuid.UUID, body: DropUpdate,
                            user: CurrentUser) -> Response:
    return private_json(await drops.update_drop(_rt(request), user, store_id, drop_id, body))


@router.patch("/drops/{drop_id}", tags=["drops"], summary="Change a drop (limited once published: 409)")
async def update_drop(request: Request, drop_id: uuid.UUID, body: DropUpdate, user: CurrentUser) -> Response:
    return private_json(await drops.update_drop(_rt(request), user, None, drop_id, body))


@router.post("/drops/{drop_id}/publish", tags=["drops"], summary="DRAFT -> SCHEDULED (or LIVE if already open)")
async def publish_drop(request: Request, drop_id: uuid.UUID, user: CurrentUser) -> Response:
    return private_json(await drops.publish_drop(_rt(request), user, drop_id))


@router.post("/drops/{drop_id}/cancel", tags=["drops"], summary="-> CANCELLED")
async def cancel_drop(request: Request, drop_id: uuid.UUID, user: CurrentUser,
                      body: CancelBody | None = None) -> Response:
    return private_json(await drops.cancel_drop(_rt(request), user, drop_id, body.reason if body else None))


# --- drops (public) -----------------------------------------------------------------------------
@router.get("/drops", tags=["drops"], summary="Upcoming and live drops, with product, store and branches (public)")
async def list_drops(
    request: Request,
    status: Annotated[str | None, Query(description="live, upcoming, or both comma-separated (default)")] = None,
    store: Annotated[str | None, Query(description="store id or slug")] = None,
    near: Annotated[str | None, Query(description="lat,lng: drops with a branch within radius_km")] = None,
    radius_km: Annotated[float, Query(gt=0, le=20_000)] = DEFAULT_RADIUS_KM,
    window_from: Annotated[datetime | None, Query(alias="from", description="drops ending after this")] = None,
    window_to: Annotated[datetime | None, Query(alias="to", description="drops starting before this")] = None,
    limit: Limit = 20,
    cursor: CursorQ = None,
) -> Response:
    statuses = set()
    for part in (status or "live,upcoming").split(","):
        name = PUBLIC_STATUSES.get(part.strip().lower())
        if name is None:
            raise ValidationFailed("status", "status must be live, upcoming or both (comma-separated)",
                                   location="query")
        statuses.add(name)
    store_id, store_slug = None, None
    if store:
        try:
            store_id = uuid.UUID(store)
        except ValueError:
            store_slug = store.strip().lower()
    point = None
    if near is not None:
        try:
            lat, lng = parse_point(near)
        except ValueError as exc:
            raise ValidationFailed("near", str(exc), location="query") from None
        point = (lat, lng, radius_km, bounding_box(lat, lng, radius_km))
    wf = as_utc(window_from) if window_from else None
    wt = as_utc(window_to) if window_to else None
    if wf and wt and wf >= wt:
        raise ValidationFailed("to", "to must be after from", location="query")
    q = public.DropQuery(statuses=frozenset(statuses), store_id=store_id, store_slug=store_slug, window_from=wf,
                         window_to=wt, near=point, cursor=_cursor(cursor), limit=limit)
    return await public_json(request, "drops", lambda: public.list_drops(_rt(request), q))


@router.get("/drops/{drop_id}", tags=["drops"], summary="A drop with product, store and branches (public; "
            "a draft only for its store's owner and staff)")
async def get_drop(request: Request, drop_id: uuid.UUID, user: OptionalUser) -> Response:
    try:
        return await public_json(request, "drop", lambda: public.get_drop(_rt(request), drop_id))
    except NotFound:
        if user is None:
            raise
    return private_json(await public.get_private_drop(_rt(request), user, drop_id))
