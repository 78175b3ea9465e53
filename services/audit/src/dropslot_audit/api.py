"""`GET /api/v1/audit-logs`: the trail, filtered, in time order, cursor-paginated."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any

from dropslot_kit.auth import CurrentUser
from dropslot_kit.errors import Problem
from fastapi import APIRouter, Query, Request
from pydantic import AwareDatetime, BaseModel

from . import service

router = APIRouter(prefix="/api/v1", tags=["audit"])


class InvalidRange(Problem):
    status, slug, title = 422, "validation-error", "Request validation failed"


class AuditLogOut(BaseModel):
    id: uuid.UUID
    event_id: uuid.UUID
    actor_user_id: uuid.UUID | None
    action: str
    entity: str
    entity_id: str | None
    store_id: uuid.UUID | None
    before: dict[str, Any] | None
    after: dict[str, Any] | None
    # The event's payload (secrets redacted): the full fact, also when the producer gave no
    # before/after snapshots.
    data: dict[str, Any] | None
    ip: str | None
    ua: str | None
    producer: str
    correlation_id: str | None
    created_at: datetime


class AuditLogPage(BaseModel):
    items: list[AuditLogOut]
    next_cursor: str | None


@router.get("/audit-logs", response_model=AuditLogPage)
async def list_audit_logs(
    request: Request,
    principal: CurrentUser,
    entity: Annotated[str | None, Query(max_length=64)] = None,
    entity_id: Annotated[str | None, Query(max_length=200)] = None,
    actor_user_id: uuid.UUID | None = None,
    store_id: uuid.UUID | None = None,
    action: Annotated[str | None, Query(max_length=128)] = None,
    from_: Annotated[AwareDatetime | None, Query(alias="from")] = None,
    to: AwareDatetime | None = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
) -> dict[str, Any]:
    """Platform admin: every entry. Store owner: the entries of their stores. `from` is
    inclusive, `to` exclusive; items come oldest first (time, then id)."""
    if from_ is not None and to is not None and from_ >= to:
        raise InvalidRange("`from` must be before `to`", errors=[{"name": "from", "reason": "must be before to"}])
    q = service.TrailQuery(
        entity=entity, entity_id=entity_id, actor_user_id=actor_user_id, store_id=store_id, action=action,
        since=from_, until=to, limit=limit, cursor=cursor,
    )
    rt = request.app.state.rt
    return await service.list_trail(rt.db, principal, q)
