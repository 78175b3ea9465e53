"""HTTP routes (mounted under /api/v1, reached through the gateway).

- `GET /notifications?limit=&cursor=&status=&channel=&template=`: the caller's messages, newest
  first, `{items, next_cursor}`; `GET /notifications/{id}`: one of them.
- `GET /notifications/preferences` · `PUT /notifications/preferences {email, sms, push, phone?,
  push_token?}`: channel switches (email on, SMS and push off by default). In the PUT, `phone` and
  `push_token` left out keep their value, `null` clears them; SMS needs a phone (E.164), push a
  device token (422 otherwise). Account mail (verification, password reset) is always emailed.
- `POST /drops/{id}/subscriptions` (201, or 200 if already subscribed) · `DELETE` (204) ·
  `GET /drops/{id}/subscription`: "notify me when this drop goes live".
- `GET /notifications/dev/mailbox[/{id}[/html]]`: the dev SMTP catcher's mail (404 when the
  catcher is off, i.e. whenever a real SMTP host is configured).
"""

from __future__ import annotations

import base64
import binascii
import json
import uuid
from datetime import datetime
from typing import Annotated, Any, Literal

from dropslot_kit.auth import CurrentUser
from dropslot_kit.errors import Conflict, NotFound, Problem
from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import HTMLResponse, JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from .adapters import repository as repo
from .adapters.catcher import Mailbox
from .domain.model import Preferences, PreferencesError, check_preferences

router = APIRouter(prefix="/api/v1", tags=["notifications"])


class InvalidCursor(Problem):
    status, slug, title = 400, "invalid-cursor", "The cursor is not valid"


class InvalidPreferences(Problem):
    status, slug, title = 422, "validation-error", "Request validation failed"


class DropClosed(Conflict):
    slug, title = "drop-closed", "The drop has ended or was cancelled"


class DropAlreadyLive(Conflict):
    slug, title = "drop-already-live", "The drop is already live"


# --- schemas ------------------------------------------------------------------------------------
class NotificationOut(BaseModel):
    id: uuid.UUID
    channel: str
    template: str
    status: str
    subject: str | None = None
    recipient: str | None = None
    attempts: int
    last_error: str | None = None
    event_type: str
    created_at: datetime
    updated_at: datetime
    sent_at: datetime | None = None
    next_attempt_at: datetime | None = None


class NotificationPage(BaseModel):
    items: list[NotificationOut]
    next_cursor: str | None


class PreferencesIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    email: bool
    sms: bool
    push: bool
    phone: str | None = Field(default=None, max_length=16, description="E.164, e.g. +4915112345678")
    push_token: str | None = Field(default=None, min_length=1, max_length=4096)


class PreferencesOut(BaseModel):
    email: bool
    sms: bool
    push: bool
    phone: str | None
    push_token: str | None
    available_channels: list[str]


class SubscriptionOut(BaseModel):
    drop_id: uuid.UUID
    subscribed: bool
    created_at: datetime | None = None
    notified_at: datetime | None = None


# --- cursor ---------------------------------------------------------------------------------------
def encode_cursor(created_at: datetime, nid: uuid.UUID) -> str:
    raw = json.dumps([created_at.isoformat(), str(nid)]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, uuid.UUID]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        at, nid = json.loads(raw)
        return datetime.fromisoformat(at), uuid.UUID(nid)
    except (ValueError, TypeError, binascii.Error, json.JSONDecodeError):
        raise InvalidCursor("pass back the next_cursor of a previous page unchanged") from None


def _rt(request: Request) -> Any:
    return request.app.state.rt


# --- the user's notifications --------------------------------------------------------------------------
@router.get("/notifications", response_model=NotificationPage)
async def list_notifications(
    request: Request,
    user: CurrentUser,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    cursor: str | None = None,
    status: Literal["PENDING", "SENT", "FAILED"] | None = None,
    channel: Literal["email", "sms", "push"] | None = None,
    template: str | None = Query(default=None, max_length=64),
) -> NotificationPage:
    after = decode_cursor(cursor) if cursor else None
    async with _rt(request).db.uow() as uow:
        rows = await repo.list_for_user(uow.conn, user.user_id, limit=limit + 1, after=after, status=status,
                                        channel=channel, template=template)
    more = len(rows) > limit
    rows = rows[:limit]
    nxt = encode_cursor(rows[-1]["created_at"], rows[-1]["id"]) if more and rows else None
    return NotificationPage(items=[NotificationOut(**r) for r in rows], next_cursor=nxt)


def _prefs_out(request: Request, p: Preferences) -> PreferencesOut:
    available = sorted(str(c) for c in request.app.state.notification_channels)
    return PreferencesOut(email=p.email, sms=p.sms, push=p.push, phone=p.phone, push_token=p.push_token,
                          available_channels=available)


@router.get("/notifications/preferences", response_model=PreferencesOut)
async def get_preferences(request: Request, user: CurrentUser) -> PreferencesOut:
    async with _rt(request).db.uow() as uow:
        prefs = await repo.get_preferences(uow.conn, user.user_id)
    return _prefs_out(request, prefs)


@router.put("/notifications/preferences", response_model=PreferencesOut)
async def put_preferences(request: Request, user: CurrentUser, body: PreferencesIn) -> PreferencesOut:
    async with _rt(request).db.uow() as uow:
        current = await repo.lock_preferences(uow.conn, user.user_id)
        given = body.model_fields_set
        prefs = Preferences(
            email=body.email, sms=body.sms, push=body.push,
            phone=body.phone if "phone" in given else current.phone,
            push_token=body.push_token if "push_token" in given else current.push_token,
        )
        try:
            check_preferences(prefs)
        except PreferencesError as exc:
            # Raising rolls the unit of work back: nothing is half-written.
            raise InvalidPreferences("Some fields are invalid",
                                     errors=[{"name": exc.field_name, "reason": exc.reason}]) from None
        await repo.put_preferences(uow.conn, user.user_id, prefs)
    return _prefs_out(request, prefs)


# --- dev mailbox (before /notifications/{id}, which would otherwise swallow the path) ------------------
def _mailbox(request: Request) -> Mailbox:
    mailbox: Mailbox | None = _rt(request).extras.get("mailbox")
    if mailbox is None:
        raise NotFound("the dev mailbox exists only while the dev SMTP catcher runs")
    return mailbox


@router.get("/notifications/dev/mailbox", include_in_schema=False)
async def dev_mailbox(request: Request, limit: Annotated[int, Query(ge=1, le=500)] = 50) -> JSONResponse:
    return JSONResponse({"items": _mailbox(request).list(limit)})


@router.get("/notifications/dev/mailbox/{message_id}", include_in_schema=False)
async def dev_mail(request: Request, message_id: str) -> JSONResponse:
    mail = _mailbox(request).read(message_id)
    if mail is None:
        raise NotFound("no such message")
    return JSONResponse(mail)


@router.get("/notifications/dev/mailbox/{message_id}/html", include_in_schema=False)
async def dev_mail_html(request: Request, message_id: str) -> Response:
    mail = _mailbox(request).read(message_id)
    if mail is None or not mail["html"]:
        raise NotFound("no such message")
    return HTMLResponse(mail["html"])


@router.get("/notifications/{notification_id}", response_model=NotificationOut)
async def get_notification(request: Request, user: CurrentUser, notification_id: uuid.UUID) -> NotificationOut:
    async with _rt(request).db.uow() as uow:
        row = await repo.get_for_user(uow.conn, user.user_id, notification_id)
    if row is None:
        raise NotFound("no such notification")
    return NotificationOut(**row)


# --- "notify me" per drop ----------------------------------------------------------------------------
@router.post("/drops/{drop_id}/subscriptions", response_model=SubscriptionOut, status_code=201)
async def subscribe(request: Request, response: Response, user: CurrentUser, drop_id: uuid.UUID) -> SubscriptionOut:
    async with _rt(request).db.uow() as uow:
        # The local copy of the drop may lag catalog by a moment (a drop published a second
        # ago may still read DRAFT here, or not be known at all): those are accepted, and the
        # live event finds the subscription. Only a drop known to be past that point is refused.
        status = await repo.drop_status(uow.conn, drop_id)
        if status in ("ENDED", "CANCELLED"):
            raise DropClosed(f"the drop is {status.lower()}")
        if status == "LIVE":
            raise DropAlreadyLive("the drop is live: reserve a slot now")
        created, since = await repo.subscribe(uow.conn, drop_id, user.user_id)
    if not created:
        response.status_code = 200
    return SubscriptionOut(drop_id=drop_id, subscribed=True, created_at=since)


@router.delete("/drops/{drop_id}/subscriptions", status_code=204)
async def unsubscribe(request: Request, user: CurrentUser, drop_id: uuid.UUID) -> Response:
    async with _rt(request).db.uow() as uow:
        await repo.unsubscribe(uow.conn, drop_id, user.user_id)
    return Response(status_code=204)


@router.get("/drops/{drop_id}/subscription", response_model=SubscriptionOut)
async def get_subscription(request: Request, user: CurrentUser, drop_id: uuid.UUID) -> SubscriptionOut:
    async with _rt(request).db.uow() as uow:
        row = await repo.subscription(uow.conn, drop_id, user.user_id)
    if row is None:
        return SubscriptionOut(drop_id=drop_id, subscribed=False)
    return SubscriptionOut(drop_id=drop_id, subscribed=True, **row)

