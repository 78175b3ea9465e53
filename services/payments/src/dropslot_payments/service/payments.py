"""Use cases: booking events in, provider truth in, the customer's card step, owner refunds,
and the events we emit.

Every function here runs inside one unit of work: the payment row (locked), the provider
calls still to make (`payment_ops`), and the events (outbox) commit together. Provider I/O
never happens here; the ops worker (`service/worker.py`) makes the calls and comes back
through `apply_snapshot`.

Who an event names
------------------
`Envelope.actor` (what the audit trail shows as actor, ip and user agent) is the person whose
action caused the event, with the address and user agent of that person's request; an empty
actor means no person did. Events are emitted under the call context of what caused them: a
request, a consumed event (the kit's consumer restores its actor), or a provider call the
worker makes for an op - every op keeps the context of whoever queued it (`payment_ops.origin`)
and the worker restores it while it runs the op. So:

- `created` (or `failed` when the provider refuses to make an intent): the actor of the booking
  event that asked for the intent - `booking.reservation.created`, i.e. the customer who
  reserved, with the ip/ua of the reserve request.
- The customer's sandbox card form (`POST .../sandbox/confirm`, `.../sandbox/authenticate`):
  `status_changed` (to `processing` or `requires_action`), or `status_changed` + `failed` for a
  declined card or a failed 3-D Secure step, name the customer with the ip/ua of that request,
  as does anything those steps queue. (With Stripe the customer confirms at Stripe itself:
  payments hears of it only through the callback below.)
- The provider's signed callbacks, and reconciliation: no person. `authorized`, the
  `status_changed` it comes with, and whatever a callback's re-fetch reveals carry an empty
  actor - the callback's address and user agent are the provider's, so they are not kept;
  only the request's correlation id is.
- Booking's lifecycle events (confirmed, cancelled, expired, the hold's final check, refund
  requested): whatever actor booking's event carries - the customer who cancelled, staff who
  cancelled, nobody for booking's sweepers or for a confirmation that followed `authorized`. So
  the `succeeded` of a capture after such a confirmation names nobody, the `canceled` after a
  customer's cancellation names the customer.
- An owner's refund (`POST /payments/{id}/refund`): `refunded` and its `status_changed` name the
  store owner who asked.
"""

from __future__ import annotations

import logging
import uuid
from datetime import UTC, datetime
from typing import Any

from dropslot_contracts import Actor, Envelope
from dropslot_contracts.events.booking import HoldExpiring, RefundRequested, ReservationCancelled, ReservationEvent
from dropslot_contracts.events.payments import (
    PaymentAuthorized,
    PaymentCanceled,
    PaymentCreated,
    PaymentEvent,
    PaymentFailed,
    PaymentRefunded,
    PaymentStatusChanged,
    PaymentSucceeded,
)
from dropslot_kit import context
from dropslot_kit.auth import Principal
from dropslot_kit.context import CallContext
from dropslot_kit.db import UnitOfWork
from dropslot_kit.errors import NotFound
from dropslot_kit.memberships import OWNER, authorize_store

from .. import metrics
from ..adapters import repository as repo
from ..adapters.repository import PaymentRow
from ..domain import payment as dom
from ..domain.payment import CAPTURED, Command, IntentSnapshot, Milestone, ReservationState, Status
from ..errors import PaymentNotCaptured, RefundExceedsCaptured

log = logging.getLogger("dropslot.payments")

RESERVATION_STATE_BY_EVENT = {
    "booking.reservation.created": ReservationState.PENDING,
    "booking.reservation.confirmed": ReservationState.CONFIRMED,
    "booking.reservation.cancelled": ReservationState.CANCELLED,
    "booking.reservation.expired": ReservationState.EXPIRED,
    "booking.reservation.expiring": ReservationState.PENDING,
}


def idempotency_key(reservation_id: uuid.UUID, operation: str) -> str:
    """Provider idempotency keys come from (reservation, operation): `<r>:create` (one intent
    per reservation), `<r>:capture:<op>` / `<r>:cancel:<op>` (per queued call) and
    `<r>:refund:<refund id>` (per refund we record)."""
    return f"{reservation_id}:{operation}"


# --- events ------------------------------------------------------------------------------------
def _payload(p: PaymentRow, status: Status) -> dict[str, Any]:
    return dict(
        payment_id=p.id, store_id=p.store_id, reservation_id=p.reservation_id, user_id=p.user_id,
        provider=p.provider, status=status.value, amount_cents=p.amount_cents, currency=p.currency,
        provider_intent_id=p.provider_intent_id, captured_cents=p.captured_cents,
        total_refunded_cents=p.refunded_cents,
    )


def _emit(uow: UnitOfWork, p: PaymentRow, event: PaymentEvent, before: Status | None) -> None:
    uow.emit(event, store_id=p.store_id, tenant_key=p.tenant_key,
             before={"status": before.value} if before else None, after={"status": event.status})


async def _announce_status(uow: UnitOfWork, p: PaymentRow, old: Status, cause: str) -> None:
    """Record a status change (p already carries the new state) and announce it:
    `status_changed` for every change, `created` for the first one."""
    await repo.record_transition(uow.conn, p.id, old, p.status, cause)
    if old == Status.CREATING:
        _emit(uow, p, PaymentCreated(**_payload(p, p.status)), None)
    else:
        _emit(uow, p, PaymentStatusChanged(**_payload(p, p.status), previous_status=old.value),
              old)


# --- provider truth ------------------------------------------------------------------------------
async def apply_snapshot(
    uow: UnitOfWork, p: PaymentRow, snap: IntentSnapshot, *, fetched_at: datetime, cause: str,
    refund: repo.RefundRow | None = None,
) -> PaymentRow:
    """Bring a (locked) payment in line with the intent as the provider reports it.

    The same path serves callbacks, our own calls' results, the hold's final check and
    reconciliation. A snapshot fetched before the one already applied is ignored, so two
    workers racing with different views cannot move a payment backwards.
    """
    if p.snapshot_at is not None and fetched_at < p.snapshot_at:
        await decide(uow, p, cause)
        return p
    if snap.amount != p.amount_cents or snap.currency.upper() != p.currency:
        log.error("payment %s: provider intent %s is for %s %s, expected %s %s", p.id, snap.id, snap.amount,
                  snap.currency, p.amount_cents, p.currency)
        if p.status != Status.FAILED and p.status not in CAPTURED:
            old = p.status
            await repo.update(uow.conn, p.id, status=Status.FAILED, failure_reason="amount_mismatch")
            p.status, p.failure_reason = Status.FAILED, "amount_mismatch"
            await _announce_status(uow, p, old, cause)
            _emit(uow, p, PaymentFailed(**_payload(p, Status.FAILED), reason="amount_mismatch"),
                  old)
        return p

    ledger = await repo.refund_ledger(uow.conn, p.id)
    before = p.facts(ledger)
    out = dom.apply_snapshot(before, snap)
    fields: dict[str, object] = {"snapshot_at": fetched_at, "next_action": out.next_action}
    if out.intent_status != p.intent_status:
        fields["intent_status"] = out.intent_status
    if p.provider_intent_id is None:
        fields.update(provider_intent_id=snap.id, client_secret=snap.client_secret)
        p.provider_intent_id, p.client_secret = snap.id, snap.client_secret
    old_status = p.status
    if out.status != old_status:
        fields["status"] = out.status  # (only on a change: it also resets reconciliation's backoff)
    fields.update(captured_cents=out.captured_cents, refunded_cents=out.refunded_cents,
                  failure_reason=out.failure_reason)
    await repo.update(uow.conn, p.id, **fields)
    p.status, p.intent_status, p.next_action = out.status, out.intent_status, out.next_action
    p.captured_cents, p.refunded_cents, p.failure_reason = out.captured_cents, out.refunded_cents, out.failure_reason
    p.snapshot_at = fetched_at
    if out.status != old_status:
        await _announce_status(uow, p, old_status, cause)

    for m in out.milestones:
        metrics.MILESTONES.labels(p.provider, m.value).inc()
        base = _payload(p, out.status)
        match m:
            case Milestone.AUTHORIZED:
                _emit(uow, p, PaymentAuthorized(**base), old_status)
            case Milestone.SUCCEEDED:
                _emit(uow, p, PaymentSucceeded(**base), old_status)
            case Milestone.FAILED:
                _emit(uow, p, PaymentFailed(**base, reason=out.failure_reason or "failed"), old_status)
            case Milestone.CANCELED:
                _emit(uow, p, PaymentCanceled(**base, reason=_cancel_reason(p)), old_status)
            case Milestone.REFUNDED:
                _emit(uow, p, PaymentRefunded(
                    **base, refunded_cents=out.refunded_delta,
                    refund_id=refund.id if refund else None, reason=refund.reason if refund else None,
                ), old_status)
    await decide(uow, p, cause)
    return p


def _cancel_reason(p: PaymentRow) -> str:
    if p.refund_requested:
        return "refund_requested"
    if p.reservation_state == ReservationState.EXPIRED:
        return "reservation_expired"
    if p.reservation_state == ReservationState.CANCELLED:
        return "reservation_cancelled"
    return "canceled"


async def _queue(uow: UnitOfWork, payment_id: uuid.UUID, kind: str, *, cause: str,
                 refund_id: uuid.UUID | None = None) -> None:
    """Queue a provider call for the worker, in the name of whoever asks now (see above)."""
    await repo.enqueue_op(uow.conn, payment_id, kind, refund_id=refund_id, cause=cause, origin=context.current())


async def decide(uow: UnitOfWork, p: PaymentRow, cause: str) -> None:
    """Queue the provider call the saga still needs (see domain.payment.next_command)."""
    # The refund ledger only matters once money was captured (one query less otherwise).
    ledger = await repo.refund_ledger(uow.conn, p.id) if p.status in CAPTURED else 0
    command = dom.next_command(p.facts(ledger))
    match command:
        case None:
            return
        case Command.CREATE:
            await _queue(uow, p.id, "create", cause=cause)
        case Command.CAPTURE:
            await _queue(uow, p.id, "capture", cause=cause)
        case Command.CANCEL:
            if not p.cancel_requested:
                # Marked before the call: the provider's callback may come back before the
                # call's own answer, and must read as "we canceled", not "the provider did".
                await repo.update(uow.conn, p.id, cancel_requested=True)
                p.cancel_requested = True
            await _queue(uow, p.id, "cancel", cause=cause)
        case Command.REFUND_REMAINING:
            amount = p.captured_cents - max(p.refunded_cents, ledger)
            # booking.refund.requested (a late payment: seat lost, or reservation cancelled meanwhile)
            # or a cancellation with refund=True.
            reason = "refund_requested" if p.refund_requested else "reservation_cancelled"
            refund = await repo.insert_refund(uow.conn, payment_id=p.id, tenant_key=p.tenant_key,
                                              amount_cents=amount, reason=reason, requested_by=None)
            await _queue(uow, p.id, "refund", refund_id=refund.id, cause=cause)
        case Command.ABANDON:
            # The reservation ended before any intent existed: nothing to cancel at the provider.
            await repo.record_transition(uow.conn, p.id, p.status, Status.CANCELED, cause)
            await repo.update(uow.conn, p.id, status=Status.CANCELED)
            p.status = Status.CANCELED
            _emit(uow, p, PaymentCanceled(**_payload(p, Status.CANCELED), reason=_cancel_reason(p)),
                  Status.CREATING)


async def fail_without_intent(uow: UnitOfWork, p: PaymentRow, reason: str, cause: str) -> None:
    """No intent can be made (the provider refuses the amount or currency): the payment fails,
    and booking cancels the reservation."""
    if p.status != Status.CREATING:
        return
    old = p.status
    await repo.update(uow.conn, p.id, status=Status.FAILED, failure_reason=reason)
    p.status, p.failure_reason = Status.FAILED, reason
    await _announce_status(uow, p, old, cause)
    _emit(uow, p, PaymentFailed(**_payload(p, Status.FAILED), reason=reason), old)


# --- booking events --------------------------------------------------------------------------------
async def on_reservation_event(uow: UnitOfWork, env: Envelope, *, provider: str) -> None:
    event = env.typed()
    assert isinstance(event, ReservationEvent)
    r = event.reservation
    if not r.requires_payment or r.amount_cents <= 0:
        return  # free drops: nothing to pay
    await repo.set_scope(uow.conn, repo.SYSTEM_SCOPE)
    p = await repo.lock_by_reservation(uow.conn, r.reservation_id)
    state = _reservation_state(env.type, r.state)
    if p is None:
        # Any reservation event carries the whole snapshot, so the payment can start from
        # whichever arrives first (retries may reorder them).
        await repo.insert_payment(
            uow.conn, payment_id=uuid.uuid4(), reservation_id=r.reservation_id, user_id=r.user_id,
            store_id=r.store_id, tenant_key=env.tenant_key, provider=provider, amount_cents=r.amount_cents,
            currency=r.currency.upper(), reservation_state=state, reservation_event_at=env.occurred_at,
        )
        p = await repo.lock_by_reservation(uow.conn, r.reservation_id)
        assert p is not None
    fields: dict[str, object] = {}
    newer = p.reservation_event_at is None or env.occurred_at >= p.reservation_event_at
    if newer and (state != p.reservation_state or env.occurred_at != p.reservation_event_at):
        fields.update(reservation_state=state, reservation_event_at=env.occurred_at)
        p.reservation_state = state
    if state in (ReservationState.CONFIRMED, ReservationState.CHECKED_IN) and not p.reservation_confirmed:
        fields["reservation_confirmed"] = p.reservation_confirmed = True
    if isinstance(event, ReservationCancelled) and event.refund != p.refund_on_cancel:
        fields["refund_on_cancel"] = p.refund_on_cancel = event.refund
    if p.tenant_key is None and env.tenant_key:
        fields["tenant_key"] = p.tenant_key = env.tenant_key
    await repo.update(uow.conn, p.id, **fields)
    if isinstance(event, HoldExpiring) and event.final_check and p.provider_intent_id is not None:
        # Booking holds the seat once more because money may be on its way: ask the provider now.
        await _queue(uow, p.id, "sync", cause="hold_final_check")
    await decide(uow, p, env.type)


def _reservation_state(event_type: str, snapshot_state: str) -> ReservationState:
    try:
        return ReservationState(snapshot_state)
    except ValueError:
        return RESERVATION_STATE_BY_EVENT.get(event_type, ReservationState.PENDING)


async def on_refund_requested(uow: UnitOfWork, env: Envelope) -> None:
    event = env.typed()
    assert isinstance(event, RefundRequested)
    await repo.set_scope(uow.conn, repo.SYSTEM_SCOPE)
    p = await repo.lock_by_reservation(uow.conn, event.reservation_id)
    if p is None:
        log.warning("refund requested for reservation %s, which has no payment", event.reservation_id)
        return
    if not p.refund_requested:
        await repo.update(uow.conn, p.id, refund_requested=True)
        p.refund_requested = True
    await decide(uow, p, f"{env.type}:{event.reason}")


# --- callbacks -----------------------------------------------------------------------------------
async def record_callback(
    uow: UnitOfWork, *, provider: str, event_id: str, event_type: str, intent_id: str | None,
    payload: dict[str, object], metadata: dict[str, str],
) -> bool:
    """Store an authenticated provider event before it acts; queue a re-fetch of its intent.
    Returns False for a replay (which then has no effect at all)."""
    await repo.set_scope(uow.conn, repo.SYSTEM_SCOPE)
    fresh = await repo.record_provider_event(uow.conn, provider=provider, event_id=event_id, event_type=event_type,
                                             intent_id=intent_id, payload=payload)
    if not fresh or intent_id is None:
        return fresh
    payment_id = await repo.find_by_intent(uow.conn, provider, intent_id)
    if payment_id is None and metadata.get("payment_id"):
        # The callback overtook our own record of the intent: the metadata names the payment.
        try:
            candidate = await repo.get(uow.conn, uuid.UUID(metadata["payment_id"]))
        except ValueError:
            candidate = None
        if candidate and candidate.provider == provider and candidate.provider_intent_id in (None, intent_id):
            payment_id = candidate.id
    if payment_id is None:
        log.info("%s event %s (%s) for unknown intent %s stored", provider, event_id, event_type, intent_id)
        return fresh
    # The provider is not a person: what its callback leads to names nobody (only the
    # request's correlation id is kept).
    ctx = context.current()
    await repo.enqueue_op(uow.conn, payment_id, "sync", cause=f"callback:{event_type}",
                          origin=CallContext(actor=Actor(), correlation_id=ctx.correlation_id or ctx.request_id))
    return fresh


# --- the customer's card form (sandbox) ------------------------------------------------------------
async def lock_for_customer(uow: UnitOfWork, payment_id: uuid.UUID) -> PaymentRow:
    """The payment, locked from before the customer's card step until its outcome is applied
    (`apply_customer_step`). The step is a short transaction in the sandbox's own tables, not a
    network call; holding the lock across it means no re-fetch of the intent (a callback's,
    reconciliation's) can apply in between: one that read the intent before the step waits,
    then is ignored as older; one that reads it after sees at least the step's result."""
    await repo.set_scope(uow.conn, repo.SYSTEM_SCOPE)
    p = await repo.lock(uow.conn, payment_id)
    if p is None:
        raise NotFound("no such payment")
    return p


async def apply_customer_step(uow: UnitOfWork, p: PaymentRow, snap: IntentSnapshot, *, cause: str) -> PaymentRow:
    """The intent as the customer's own step (card confirmed, 3-D Secure done) left it, applied
    in the request that made the step: the status change (`processing`, `requires_action`, or
    `failed` for a decline) and its events name the customer, with that request's address and
    user agent. The provider's callbacks about the same change come later and find nothing new."""
    # Stamped after the step returned (the step's result is at least that fresh): any re-fetch
    # that began earlier counts as older than this.
    return await apply_snapshot(uow, p, snap, fetched_at=datetime.now(UTC), cause=cause)


# --- store owners ----------------------------------------------------------------------------------
async def request_refund(
    uow: UnitOfWork, principal: Principal, payment_id: uuid.UUID, amount_cents: int | None
) -> tuple[repo.RefundRow, PaymentRow]:
    await repo.set_scope(uow.conn, repo.SYSTEM_SCOPE)
    found = await repo.get(uow.conn, payment_id)
    if found is None:
        raise NotFound("no such payment")
    await authorize_store(uow.conn, principal, found.store_id, OWNER)
    if found.tenant_key:
        # From here on the request runs as the store's tenant (row-level security).
        await repo.set_scope(uow.conn, found.tenant_key)
    p = await repo.lock(uow.conn, payment_id)
    if p is None:
        raise NotFound("no such payment")
    if p.status not in CAPTURED:
        raise PaymentNotCaptured(f"the payment is {p.status.value}; only captured payments can be refunded",
                                 payment_status=p.status.value)
    ledger = await repo.refund_ledger(uow.conn, p.id)
    available = dom.refundable_cents(p.facts(ledger))
    amount = available if amount_cents is None else amount_cents
    if amount <= 0 or amount > available:
        raise RefundExceedsCaptured(
            f"at most {available} {p.currency} minor units can still be refunded",
            refundable_cents=available, captured_cents=p.captured_cents, currency=p.currency,
        )
    refund = await repo.insert_refund(uow.conn, payment_id=p.id, tenant_key=p.tenant_key, amount_cents=amount,
                                      reason="store_owner", requested_by=principal.user_id)
    await _queue(uow, p.id, "refund", refund_id=refund.id, cause="store_owner_refund")
    return refund, p
