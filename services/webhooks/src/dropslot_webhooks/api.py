"""HTTP routes (API.md, webhooks). Thin: parse, call the use case, shape the answer.

Endpoints are managed under `/stores/{store_id}/webhook-endpoints[/{eid}...]`; the same
endpoint calls and the delivery log also answer under `/webhook-endpoints/{eid}...`.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any, Literal

from dropslot_kit.auth import CurrentUser
from fastapi import APIRouter, Body, Query, Request, Response
from pydantic import BaseModel, Field

from .domain.filters import deliverable_types
from .service import EndpointInput, Webhooks

router = APIRouter(prefix="/api/v1", tags=["webhooks"])

Limit = Annotated[int, Query(ge=1, le=200)]
Status = Literal["pending", "delivered", "failed"]


def _svc(request: Request) -> Webhooks:
    return request.app.state.rt.extras["webhooks"]  # type: ignore[no-any-return]


class EndpointCreate(BaseModel):
    url: str = Field(min_length=1, max_length=2048, examples=["https://example.com/webhooks/dropslot"])
    event_types: list[str] = Field(default_factory=list, max_length=100,
                                   description="exact types or patterns (booking.reservation.*); empty: all")
    description: str | None = Field(default=None, max_length=500)
    active: bool = True


class EndpointPatch(BaseModel):
    url: str | None = Field(default=None, min_length=1, max_length=2048)
    active: bool | None = None
    event_types: list[str] | None = Field(default=None, max_length=100)
    description: str | None = Field(default=None, max_length=500)


class RotateSecret(BaseModel):
    grace_seconds: float | None = Field(default=None, ge=0, le=7 * 86_400,
                                        description="how long the old secret keeps signing (default 24 h)")


class ReplaySince(BaseModel):
    since: datetime
    only_failed: bool = False


# --- catalogue of event types --------------------------------------------------------------------
@router.get("/webhook-endpoints/event-types")
async def event_types(request: Request) -> dict[str, Any]:
    """The event types an endpoint can subscribe to."""
    return {"items": deliverable_types(_svc(request).known_types)}


# --- endpoints under a store ---------------------------------------------------------------------
@router.post("/stores/{store_id}/webhook-endpoints", status_code=201)
async def create_endpoint(store_id: uuid.UUID, body: EndpointCreate, user: CurrentUser,
                          request: Request) -> dict[str, Any]:
    return await _svc(request).create_endpoint(
        user, store_id, EndpointInput(body.url, body.event_types, body.description, body.active)
    )


@router.get("/stores/{store_id}/webhook-endpoints")
async def list_endpoints(store_id: uuid.UUID, user: CurrentUser, request: Request, limit: Limit = 50,
                         cursor: str | None = None) -> dict[str, Any]:
    return await _svc(request).list_endpoints(user, store_id, limit, cursor)


async def _get(request: Request, user: CurrentUser, eid: uuid.UUID, store_id: uuid.UUID | None) -> dict[str, Any]:
    return await _svc(request).get_endpoint(user, eid, store_id)


async def _patch(request: Request, user: CurrentUser, eid: uuid.UUID, body: EndpointPatch,
                 store_id: uuid.UUID | None) -> dict[str, Any]:
    return await _svc(request).update_endpoint(user, eid, body.model_dump(exclude_unset=True), store_id)


async def _delete(request: Request, user: CurrentUser, eid: uuid.UUID, store_id: uuid.UUID | None) -> Response:
    await _svc(request).delete_endpoint(user, eid, store_id)
    return Response(status_code=204)


async def _rotate(request: Request, user: CurrentUser, eid: uuid.UUID, body: RotateSecret | None,
                  store_id: uuid.UUID | None) -> dict[str, Any]:
    return await _svc(request).rotate_secret(user, eid, body.grace_seconds if body else None, store_id)


@router.get("/stores/{store_id}/webhook-endpoints/{eid}")
async def get_store_endpoint(store_id: uuid.UUID, eid: uuid.UUID, user: CurrentUser,
                             request: Request) -> dict[str, Any]:
    return await _get(request, user, eid, store_id)


@router.patch("/stores/{store_id}/webhook-endpoints/{eid}")
async def patch_store_endpoint(store_id: uuid.UUID, eid: uuid.UUID, body: EndpointPatch, user: CurrentUser,
                               request: Request) -> dict[str, Any]:
    return await _patch(request, user, eid, body, store_id)


@router.delete("/stores/{store_id}/webhook-endpoints/{eid}", status_code=204)
async def delete_store_endpoint(store_id: uuid.UUID, eid: uuid.UUID, user: CurrentUser,
                                request: Request) -> Response:
    return await _delete(request, user, eid, store_id)


@router.post("/stores/{store_id}/webhook-endpoints/{eid}/rotate-secret")
async def rotate_store_endpoint_secret(
    store_id: uuid.UUID, eid: uuid.UUID, user: CurrentUser, request: Request,
    body: Annotated[RotateSecret | None, Body()] = None,
) -> dict[str, Any]:
    return await _rotate(request, user, eid, body, store_id)


# --- the same, addressed by endpoint id alone ----------------------------------------------------
@router.get("/webhook-endpoints/{eid}")
async def get_endpoint(eid: uuid.UUID, user: CurrentUser, request: Request) -> dict[str, Any]:
    return await _get(request, user, eid, None)


@router.patch("/webhook-endpoints/{eid}")
async def patch_endpoint(eid: uuid.UUID, body: EndpointPatch, user: CurrentUser, request: Request) -> dict[str, Any]:
    return await _patch(request, user, eid, body, None)


@router.delete("/webhook-endpoints/{eid}", status_code=204)
async def delete_endpoint(eid: uuid.UUID, user: CurrentUser, request: Request) -> Response:
    return await _delete(request, user, eid, None)


@router.post("/webhook-endpoints/{eid}/rotate-secret")
async def rotate_endpoint_secret(eid: uuid.UUID, user: CurrentUser, request: Request,
                                 body: Annotated[RotateSecret | None, Body()] = None) -> dict[str, Any]:
    return await _rotate(request, user, eid, body, None)


# --- delivery log and replay ---------------------------------------------------------------------
@router.get("/webhook-endpoints/{eid}/events")
async def list_events(eid: uuid.UUID, user: CurrentUser, request: Request, limit: Limit = 50,
                      cursor: str | None = None, status: Status | None = None,
                      type: str | None = None) -> dict[str, Any]:  # noqa: A002  (the query name)
    return await _svc(request).list_events(user, eid, limit, cursor, status, type)


@router.get("/webhook-endpoints/{eid}/events/{delivery_id}")
async def get_event(eid: uuid.UUID, delivery_id: uuid.UUID, user: CurrentUser, request: Request) -> dict[str, Any]:
    return await _svc(request).get_event(user, eid, delivery_id)


@router.get("/webhook-endpoints/{eid}/events/{delivery_id}/attempts")
async def list_attempts(eid: uuid.UUID, delivery_id: uuid.UUID, user: CurrentUser, request: Request,
                        limit: Limit = 50, cursor: str | None = None) -> dict[str, Any]:
    return await _svc(request).list_attempts(user, eid, delivery_id, limit, cursor)


@router.post("/webhook-endpoints/{eid}/events/{delivery_id}/replay", status_code=202)
async def replay_event(eid: uuid.UUID, delivery_id: uuid.UUID, user: CurrentUser,
                       request: Request) -> dict[str, Any]:
    return await _svc(request).replay_event(user, eid, delivery_id)


@router.post("/webhook-endpoints/{eid}/replay", status_code=202)
async def replay_since(eid: uuid.UUID, body: ReplaySince, user: CurrentUser, request: Request) -> dict[str, Any]:
    return await _svc(request).replay_since(user, eid, body.since, body.only_failed)
