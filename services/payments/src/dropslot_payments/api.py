"""HTTP routes (mounted under /api/v1, reached through the gateway)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any

from dropslot_kit.app import ServiceRuntime
from dropslot_kit.auth import CurrentUser, Principal
from dropslot_kit.errors import NotFound
from dropslot_kit.memberships import STAFF, has_store_role
from fastapi import APIRouter, Body, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from . import metrics
from .adapters import repository as repo
from .adapters.providers.base import InvalidCallback, PaymentProvider
from .adapters.providers.sandbox import SandboxProvider, snapshot_of
from .adapters.repository import PaymentRow
from .config import Settings
from .domain import sandbox as sm
from .domain.payment import ReservationState, Status
from .errors import (
    AuthenticationFailed,
    CardDeclined,
    InvalidCursor,
    InvalidSignature,
    NotSandboxPayment,
    PaymentNotConfirmable,
    UnknownTestCard,
)
from .service import payments as uc

router = APIRouter(prefix="/api/v1/payments", tags=["payments"])


class PaymentOut(BaseModel):
    id: uuid.UUID
    reservation_id: uuid.UUID
    provider: str
    status: str
    amount_cents: int
    currency: str
    client_secret: str | None = Field(None, description="only for the reservation's owner")
    captured_cents: int
    refunded_cents: int
    failure_reason: str | None = None
    next_action: dict[str, Any] | None = Field(None, description="what the customer must do when requires_action")
    created_at: datetime
    updated_at: datetime


class PaymentPage(BaseModel):
    """A page of payments. Filtered by `reservation_id` (one payment per reservation), the
    payment's fields are repeated at the top level for convenience."""

    model_config = ConfigDict(extra="allow")

    items: list[PaymentOut]
    next_cursor: str | None = None


class ConfirmCard(BaseModel):
    card_number: str = Field(min_length=12, max_length=23, pattern=r"^[0-9][0-9 \-]*$",
                             examples=["4242424242424242"])


class Authenticate(BaseModel):
    succeed: bool = True


class RefundIn(BaseModel):
    amount_cents: int | None = Field(None, gt=0, le=99_999_999, description="default: all that is left")


class RefundOut(BaseModel):
    id: uuid.UUID
    payment_id: uuid.UUID
    amount_cents: int
    currency: str
    status: str
    reason: str
    created_at: datetime


def _rt(request: Request) -> ServiceRuntime:
    return request.app.state.rt


def _providers(request: Request) -> dict[str, PaymentProvider]:
    return _rt(request).extras["providers"]


def _out(p: PaymentRow, *, owner: bool) -> PaymentOut:
    return PaymentOut(
        id=p.id, reservation_id=p.reservation_id, provider=p.provider, status=p.status.value,
        amount_cents=p.amount_cents, currency=p.currency, client_secret=p.client_secret if owner else None,
        captured_cents=p.captured_cents, refunded_cents=p.refunded_cents, failure_reason=p.failure_reason,
        next_action=p.next_action if owner and p.status == Status.REQUIRES_ACTION else None,
        created_at=p.created_at, updated_at=p.updated_at,
    )


async def _visible(conn: Any, principal: Principal, p: PaymentRow) -> bool:
    """The reservation's owner, or staff of the store it was paid to."""
    return p.user_id == principal.user_id or await has_store_role(conn, principal, p.store_id, STAFF)


@router.get("", response_model=PaymentPage, response_model_exclude_none=False)
async def list_payments(
    request: Request, principal: CurrentUser,
    reservation_id: uuid.UUID | None = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 50,
    cursor: str | None = None,
) -> dict[str, Any]:
    try:
        after = repo.decode_cursor(cursor) if cursor else None
    except (ValueError, TypeError):
        raise InvalidCursor("pass back a next_cursor you were given") from None
    db = _rt(request).db
    assert db is not None
    async with db.uow() as uow:
        await repo.set_scope(uow.conn, repo.SYSTEM_SCOPE)
        if reservation_id is not None:
            rows = await repo.list_payments(uow.conn, reservation_id=reservation_id, limit=1)
            rows = [p for p in rows if await _visible(uow.conn, principal, p)]
        else:
            rows = await repo.list_payments(uow.conn, user_id=principal.user_id, limit=limit + 1, cursor=after)
    more = len(rows) > limit
    rows = rows[:limit]
    items = [_out(p, owner=p.user_id == principal.user_id) for p in rows]
    body: dict[str, Any] = {
        "items": [i.model_dump(mode="json") for i in items],
        "next_cursor": repo.encode_cursor(rows[-1].created_at, rows[-1].id) if more and rows else None,
    }
    if reservation_id is not None and items:
        body.update(items[0].model_dump(mode="json"))
    return body


async def _load_visible(request: Request, principal: Principal, payment_id: uuid.UUID) -> PaymentRow:
    db = _rt(request).db
    assert db is not None
    async with db.uow() as uow:
        await repo.set_scope(uow.conn, repo.SYSTEM_SCOPE)
        p = await repo.get(uow.conn, payment_id)
        if p is None or p.status == Status.CREATING or not await _visible(uow.conn, principal, p):
            raise NotFound("no such payment")
        return p


@router.get("/{payment_id}", response_model=PaymentOut)
async def get_payment(request: Request, principal: CurrentUser, payment_id: uuid.UUID) -> PaymentOut:
    p = await _load_visible(request, principal, payment_id)
    return _out(p, owner=p.user_id == principal.user_id)


async def _sandbox_payment(request: Request, principal: Principal, payment_id: uuid.UUID) -> tuple[
        PaymentRow, SandboxProvider]:
    p = await _load_visible(request, principal, payment_id)
    if p.user_id != principal.user_id:
        raise NotFound("no such payment")  # only the customer pays
    if p.provider != "sandbox":
        raise NotSandboxPayment(f"this payment uses {p.provider}; confirm it with that provider")
    sandbox = _providers(request).get("sandbox")
    assert isinstance(sandbox, SandboxProvider)
    return p, sandbox


def _intent_body(p: PaymentRow, intent: sm.SandboxIntent) -> dict[str, Any]:
    return {"id": str(p.id), "payment_id": str(p.id), "intent_id": intent.id, "status": intent.status.value,
            "amount_cents": intent.amount, "currency": intent.currency, "next_action": intent.next_action,
            "last_payment_error": intent.last_payment_error}


def _confirmable(p: PaymentRow) -> None:
    if p.status != Status.REQUIRES_PAYMENT_METHOD or p.reservation_state != ReservationState.PENDING \
            or p.provider_intent_id is None:
        raise PaymentNotConfirmable(
            f"the payment is {p.status.value} and its reservation {p.reservation_state.value.lower()}",
            payment_status=p.status.value,
        )


@router.post("/{payment_id}/sandbox/confirm")
async def sandbox_confirm(
    request: Request, principal: CurrentUser, payment_id: uuid.UUID, body: ConfirmCard
) -> dict[str, Any]:
    """The sandbox's card form. 4242424242424242 authorizes (processing, then requires_capture),
    4000000000000002 is declined (402 card-declined), 4000002500003155 needs 3-D Secure:
    the answer is `requires_action` with `next_action.sandbox_authenticate` naming
    `POST /payments/{id}/sandbox/authenticate {succeed}`. The payment takes the intent's new
    status at once (`payments.payment.status_changed`, in the customer's name); what the
    processor does next follows from its callbacks."""
    p, sandbox = await _sandbox_payment(request, principal, payment_id)
    settings: Settings = _rt(request).settings
    authenticate_url = f"{settings.public_base_url.rstrip('/')}/api/v1/payments/{p.id}/sandbox/authenticate"
    db = _rt(request).db
    assert db is not None
    async with db.uow() as uow:
        locked = await uc.lock_for_customer(uow, p.id)
        _confirmable(locked)
        assert locked.provider_intent_id is not None
        try:
            intent = await sandbox.confirm(locked.provider_intent_id, body.card_number,
                                           authenticate_url=authenticate_url)
        except sm.UnknownCard as exc:
            raise UnknownTestCard(str(exc), test_cards=sorted(sm.TEST_CARDS)) from None
        except sm.SandboxError as exc:
            raise PaymentNotConfirmable(str(exc), payment_status=locked.status.value) from None
        await uc.apply_customer_step(uow, locked, snapshot_of(intent), cause="sandbox_confirm")
    if intent.last_payment_error:
        err = intent.last_payment_error
        raise CardDeclined(err.get("message"), decline_code=err.get("decline_code"), payment_id=str(p.id),
                           intent_status=intent.status.value)
    return _intent_body(p, intent)


@router.post("/{payment_id}/sandbox/authenticate")
async def sandbox_authenticate(
    request: Request, principal: CurrentUser, payment_id: uuid.UUID,
    body: Annotated[Authenticate | None, Body()] = None,
) -> dict[str, Any]:
    """Completes (or fails, with `{"succeed": false}`) the 3-D Secure step of a card that asked for it."""
    p, sandbox = await _sandbox_payment(request, principal, payment_id)
    if p.provider_intent_id is None:
        raise PaymentNotConfirmable("the payment has no intent yet", payment_status=p.status.value)
    db = _rt(request).db
    assert db is not None
    async with db.uow() as uow:
        locked = await uc.lock_for_customer(uow, p.id)
        try:
            intent = await sandbox.authenticate(p.provider_intent_id, succeed=(body or Authenticate()).succeed)
        except sm.SandboxError as exc:
            raise PaymentNotConfirmable(str(exc), payment_status=locked.status.value) from None
        await uc.apply_customer_step(uow, locked, snapshot_of(intent), cause="sandbox_authenticate")
    if intent.last_payment_error:
        raise AuthenticationFailed(intent.last_payment_error.get("message"), payment_id=str(p.id),
                                   intent_status=intent.status.value)
    return _intent_body(p, intent)


@router.post("/{payment_id}/refund", status_code=202, response_model=RefundOut)
async def refund_payment(
    request: Request, principal: CurrentUser, payment_id: uuid.UUID,
    body: Annotated[RefundIn | None, Body()] = None,
) -> RefundOut:
    """Store owners refund a captured payment, fully (no amount) or partly; never more than
    was captured minus what is refunded or being refunded (409 refund-exceeds-captured).
    Accepted (202): the provider call follows; `payments.payment.refunded` announces it."""
    db = _rt(request).db
    assert db is not None
    async with db.uow() as uow:
        refund, p = await uc.request_refund(uow, principal, payment_id, body.amount_cents if body else None)
    return RefundOut(id=refund.id, payment_id=p.id, amount_cents=refund.amount_cents, currency=p.currency,
                     status=refund.status, reason=refund.reason, created_at=refund.created_at)


@router.post("/providers/{provider}/webhook")
async def provider_webhook(request: Request, provider: str) -> JSONResponse:
    """Callbacks from a provider; authenticated by signature only (no token). A bad
    signature is 400 and changes nothing; a replay is 200 and changes nothing either."""
    adapter = _providers(request).get(provider)
    if adapter is None:
        raise NotFound(f"unknown provider {provider!r}")
    raw = await request.body()
    try:
        event = adapter.verify_and_parse_callback(request.headers, raw)
    except InvalidCallback as exc:
        metrics.CALLBACKS.labels(provider, "invalid_signature").inc()
        raise InvalidSignature(str(exc)) from None
    db = _rt(request).db
    assert db is not None
    async with db.uow() as uow:
        fresh = await uc.record_callback(
            uow, provider=provider, event_id=event.id, event_type=event.type, intent_id=event.intent_id,
            payload=event.payload, metadata=event.metadata,
        )
    metrics.CALLBACKS.labels(provider, "new" if fresh else "duplicate").inc()
    return JSONResponse({"received": True, "duplicate": not fresh})
