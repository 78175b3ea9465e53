"""All SQL of the payments tables (the sandbox's own tables are in providers/sandbox.py).

Row-level security: `payments` and `payment_refunds` are tenant-scoped. A transaction sees
rows of the tenant set in `dropslot.tenant`, or every row when it declares the system
scope `*` explicitly (consumers, background loops, and a customer's own payments, which
are then filtered by user id). A transaction that sets nothing sees nothing.
"""

from __future__ import annotations

import base64
import json
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from dropslot_contracts import Actor
from dropslot_kit.context import CallContext
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from ..domain.payment import IntentStatus, PaymentFacts, ReservationState, Status

SYSTEM_SCOPE = "*"

_PAYMENT_COLUMNS = """
    id, reservation_id, user_id, store_id, tenant_key, provider, provider_intent_id, client_secret,
    amount_cents, currency, status, intent_status, captured_cents, refunded_cents, failure_reason,
    next_action, reservation_state, reservation_event_at, reservation_confirmed, refund_on_cancel,
    refund_requested, cancel_requested, snapshot_at, created_at, updated_at
"""


@dataclass
class PaymentRow:
    id: uuid.UUID
    reservation_id: uuid.UUID
    user_id: uuid.UUID
    store_id: uuid.UUID
    tenant_key: str | None
    provider: str
    provider_intent_id: str | None
    client_secret: str | None
    amount_cents: int
    currency: str
    status: Status
    intent_status: IntentStatus | None
    captured_cents: int
    refunded_cents: int
    failure_reason: str | None
    next_action: dict[str, Any] | None
    reservation_state: ReservationState
    reservation_event_at: datetime | None
    reservation_confirmed: bool
    refund_on_cancel: bool
    refund_requested: bool
    cancel_requested: bool
    snapshot_at: datetime | None
    created_at: datetime
    updated_at: datetime

    @classmethod
    def from_row(cls, row: Any) -> PaymentRow:
        m = dict(row._mapping)
        m["status"] = Status(m["status"])
        m["intent_status"] = IntentStatus(m["intent_status"]) if m["intent_status"] else None
        m["reservation_state"] = ReservationState(m["reservation_state"])
        if isinstance(m["next_action"], str):
            m["next_action"] = json.loads(m["next_action"])
        return cls(**m)

    def facts(self, refund_ledger_cents: int = 0) -> PaymentFacts:
        return PaymentFacts(
            status=self.status, amount_cents=self.amount_cents, has_intent=self.provider_intent_id is not None,
            intent_status=self.intent_status, captured_cents=self.captured_cents,
            refunded_cents=self.refunded_cents, failure_reason=self.failure_reason,
            reservation_state=self.reservation_state, reservation_confirmed=self.reservation_confirmed,
            refund_on_cancel=self.refund_on_cancel, refund_requested=self.refund_requested,
            cancel_requested=self.cancel_requested, refund_ledger_cents=refund_ledger_cents,
        )


async def set_scope(conn: AsyncConnection, tenant_key: str) -> None:
    await conn.execute(text("SELECT set_config('dropslot.tenant', :t, true)"), {"t": tenant_key})


# --- payments ------------------------------------------------------------------------------------
async def insert_payment(
    conn: AsyncConnection, *, payment_id: uuid.UUID, reservation_id: uuid.UUID, user_id: uuid.UUID,
    store_id: uuid.UUID, tenant_key: str | None, provider: str, amount_cents: int, currency: str,
    reservation_state: ReservationState, reservation_event_at: datetime,
) -> bool:
    row = (await conn.execute(text(
        """INSERT INTO payments (id, reservation_id, user_id, store_id, tenant_key, provider, amount_cents, currency,
                                 status, reservation_state, reservation_event_at)
           VALUES (:id, :r, :u, :s, :t, :p, :a, :c, 'creating', :rs, :at)
           ON CONFLICT (reservation_id) DO NOTHING RETURNING id"""),
        {"id": payment_id, "r": reservation_id, "u": user_id, "s": store_id, "t": tenant_key, "p": provider,
         "a": amount_cents, "c": currency, "rs": reservation_state.value, "at": reservation_event_at})).first()
    return row is not None


async def lock_by_reservation(conn: AsyncConnection, reservation_id: uuid.UUID) -> PaymentRow | None:
    row = (await conn.execute(text(f"SELECT {_PAYMENT_COLUMNS} FROM payments WHERE reservation_id = :r FOR UPDATE"),
                              {"r": reservation_id})).first()
    return PaymentRow.from_row(row) if row else None


async def lock(conn: AsyncConnection, payment_id: uuid.UUID) -> PaymentRow | None:
    row = (await conn.execute(text(f"SELECT {_PAYMENT_COLUMNS} FROM payments WHERE id = :id FOR UPDATE"),
                              {"id": payment_id})).first()
    return PaymentRow.from_row(row) if row else None


async def get(conn: AsyncConnection, payment_id: uuid.UUID) -> PaymentRow | None:
    row = (await conn.execute(text(f"SELECT {_PAYMENT_COLUMNS} FROM payments WHERE id = :id"),
                              {"id": payment_id})).first()
    return PaymentRow.from_row(row) if row else None


async def find_by_intent(conn: AsyncConnection, provider: str, intent_id: str) -> uuid.UUID | None:
    return (await conn.execute(text(
        "SELECT id FROM payments WHERE provider = :p AND provider_intent_id = :i"),
        {"p": provider, "i": intent_id})).scalar()


def encode_cursor(created_at: datetime, payment_id: uuid.UUID) -> str:
    raw = json.dumps([created_at.isoformat(), str(payment_id)]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, uuid.UUID]:
    raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
    at, pid = json.loads(raw)
    return datetime.fromisoformat(at), uuid.UUID(pid)


async def list_payments(
    conn: AsyncConnection, *, user_id: uuid.UUID | None = None, reservation_id: uuid.UUID | None = None,
    limit: int = 50, cursor: tuple[datetime, uuid.UUID] | None = None,
) -> list[PaymentRow]:
    """Newest first; keyset pagination on (created_at, id). Rows without an intent yet are hidden."""
    where = ["status <> 'creating'"]
    params: dict[str, Any] = {"n": limit}
    if user_id is not None:
        where.append("user_id = :u")
        params["u"] = user_id
    if reservation_id is not None:
        where.append("reservation_id = :r")
        params["r"] = reservation_id
    if cursor is not None:
        where.append("(created_at, id) < (:ca, :ci)")
        params["ca"], params["ci"] = cursor
    rows = await conn.execute(text(
        f"SELECT {_PAYMENT_COLUMNS} FROM payments WHERE {' AND '.join(where)}"
        " ORDER BY created_at DESC, id DESC LIMIT :n"), params)
    return [PaymentRow.from_row(r) for r in rows]


_UPDATABLE = {
    "provider_intent_id", "client_secret", "status", "intent_status", "captured_cents", "refunded_cents",
    "failure_reason", "next_action", "reservation_state", "reservation_event_at", "reservation_confirmed",
    "refund_on_cancel", "refund_requested", "cancel_requested", "snapshot_at", "tenant_key",
}


async def update(conn: AsyncConnection, payment_id: uuid.UUID, **fields: Any) -> None:
    if not fields:
        return
    unknown = set(fields) - _UPDATABLE
    assert not unknown, unknown
    sets = []
    params: dict[str, Any] = {"id": payment_id}
    for k, v in fields.items():
        if k == "next_action":
            sets.append("next_action = CAST(:next_action AS jsonb)")
            v = json.dumps(v) if v is not None else None
        else:
            sets.append(f"{k} = :{k}")
        params[k] = v.value if hasattr(v, "value") and not isinstance(v, bool | int) else v
    # Moving on resets reconciliation's backoff: a stuck payment is asked about promptly again.
    if "status" in fields or "intent_status" in fields:
        sets.append("next_reconcile_at = NULL, reconcile_attempts = 0")
    await conn.execute(text(f"UPDATE payments SET {', '.join(sets)}, updated_at = now() WHERE id = :id"), params)


async def record_transition(
    conn: AsyncConnection, payment_id: uuid.UUID, from_status: Status | None, to_status: Status, cause: str
) -> None:
    await conn.execute(text(
        "INSERT INTO payment_transitions (payment_id, from_status, to_status, cause) VALUES (:p, :f, :t, :c)"),
        {"p": payment_id, "f": from_status.value if from_status else None, "t": to_status.value, "c": cause[:200]})


# --- refunds -------------------------------------------------------------------------------------
@dataclass
class RefundRow:
    id: uuid.UUID
    payment_id: uuid.UUID
    amount_cents: int
    status: str
    reason: str
    requested_by: uuid.UUID | None
    provider_refund_id: str | None
    created_at: datetime


async def insert_refund(
    conn: AsyncConnection, *, payment_id: uuid.UUID, tenant_key: str | None, amount_cents: int, reason: str,
    requested_by: uuid.UUID | None,
) -> RefundRow:
    row = (await conn.execute(text(
        """INSERT INTO payment_refunds (id, payment_id, tenant_key, amount_cents, status, reason, requested_by)
           VALUES (:id, :p, :t, :a, 'pending', :r, :u)
           RETURNING id, payment_id, amount_cents, status, reason, requested_by, provider_refund_id, created_at"""),
        {"id": uuid.uuid4(), "p": payment_id, "t": tenant_key, "a": amount_cents, "r": reason,
         "u": requested_by})).one()
    return RefundRow(**row._mapping)


async def refund_ledger(conn: AsyncConnection, payment_id: uuid.UUID) -> int:
    """Refunds asked for that did not fail: pending ones count, so two concurrent requests
    cannot together exceed what was captured."""
    return int((await conn.execute(text(
        "SELECT COALESCE(sum(amount_cents), 0) FROM payment_refunds WHERE payment_id = :p AND status <> 'failed'"),
        {"p": payment_id})).scalar_one())


async def get_refund(conn: AsyncConnection, refund_id: uuid.UUID) -> RefundRow | None:
    row = (await conn.execute(text(
        "SELECT id, payment_id, amount_cents, status, reason, requested_by, provider_refund_id, created_at"
        " FROM payment_refunds WHERE id = :id"), {"id": refund_id})).first()
    return RefundRow(**row._mapping) if row else None


async def finish_refund(
    conn: AsyncConnection, refund_id: uuid.UUID, *, status: str, provider_refund_id: str | None = None,
    error: str | None = None,
) -> None:
    await conn.execute(text(
        "UPDATE payment_refunds SET status = :s, provider_refund_id = COALESCE(:pr, provider_refund_id),"
        " error = :e, updated_at = now() WHERE id = :id"),
        {"id": refund_id, "s": status, "pr": provider_refund_id, "e": error})


# --- provider operations (the work queue of calls to the provider) -------------------------------
@dataclass
class Op:
    id: int
    payment_id: uuid.UUID
    kind: str
    refund_id: uuid.UUID | None
    attempts: int
    cause: str | None
    # The call context (actor, correlation id) of whoever queued the op: the worker runs it
    # under that context, so its events name the person who caused them.
    origin: CallContext = field(default_factory=CallContext)


def _origin_json(origin: CallContext | None) -> str | None:
    if origin is None:
        return None
    actor = origin.actor.model_dump(mode="json", exclude_none=True)
    correlation_id = origin.correlation_id or origin.request_id
    if not actor and not correlation_id:
        return None  # nobody in particular (a background loop)
    return json.dumps({"actor": actor, "correlation_id": correlation_id})


def _origin_of(raw: Any) -> CallContext:
    data = json.loads(raw) if isinstance(raw, str | bytes) else raw
    if not data:
        return CallContext()
    correlation_id = data.get("correlation_id")
    return CallContext(actor=Actor.model_validate(data.get("actor") or {}), correlation_id=correlation_id,
                       request_id=correlation_id)


async def enqueue_op(
    conn: AsyncConnection, payment_id: uuid.UUID, kind: str, *, refund_id: uuid.UUID | None = None,
    cause: str | None = None, origin: CallContext | None = None,
) -> None:
    """At most one pending op per (payment, kind[, refund]). Asking again while that op is
    running marks it to run once more afterwards, so a change seen meanwhile is not missed;
    that second run is the new asker's, so it takes the new cause and origin. A waiting op
    keeps those of whoever queued it first."""
    dedup = f"{kind}:{refund_id}" if refund_id else kind
    await conn.execute(text(
        """INSERT INTO payment_ops (payment_id, kind, dedup_key, refund_id, cause, origin)
           VALUES (:p, :k, :d, :r, :c, CAST(:o AS jsonb))
           ON CONFLICT (payment_id, dedup_key) WHERE status = 'pending'
           DO UPDATE SET
               again = payment_ops.again
                   OR (payment_ops.locked_until IS NOT NULL AND payment_ops.locked_until > now()),
               cause = CASE WHEN payment_ops.locked_until > now() THEN EXCLUDED.cause ELSE payment_ops.cause END,
               origin = CASE WHEN payment_ops.locked_until > now() THEN EXCLUDED.origin ELSE payment_ops.origin END"""),
        {"p": payment_id, "k": kind, "d": dedup, "r": refund_id, "c": cause, "o": _origin_json(origin)})


async def claim_ops(conn: AsyncConnection, limit: int, lease_seconds: float) -> list[Op]:
    rows = await conn.execute(text(
        """WITH due AS (
               SELECT id FROM payment_ops
               WHERE status = 'pending' AND due_at <= now() AND (locked_until IS NULL OR locked_until < now())
               ORDER BY due_at, id LIMIT :n FOR UPDATE SKIP LOCKED)
           UPDATE payment_ops o SET locked_until = now() + make_interval(secs => :lease), attempts = o.attempts + 1
           FROM due WHERE o.id = due.id
           RETURNING o.id, o.payment_id, o.kind, o.refund_id, o.attempts, o.cause, o.origin"""),
        {"n": limit, "lease": lease_seconds})
    return [Op(**{**r._mapping, "origin": _origin_of(r.origin)}) for r in rows]


async def finish_op(conn: AsyncConnection, op_id: int, *, error: str | None = None) -> None:
    """Done, unless it was asked for again while running: then it runs once more, now."""
    await conn.execute(text(
        """UPDATE payment_ops SET
               status = CASE WHEN again THEN 'pending' ELSE 'done' END,
               again = false, locked_until = NULL, due_at = now(), last_error = :e, updated_at = now()
           WHERE id = :id"""), {"id": op_id, "e": error})


async def fail_op(conn: AsyncConnection, op_id: int, error: str) -> None:
    await conn.execute(text(
        "UPDATE payment_ops SET status = 'failed', locked_until = NULL, last_error = :e, updated_at = now()"
        " WHERE id = :id"), {"id": op_id, "e": error[:500]})


async def retry_op(conn: AsyncConnection, op_id: int, delay_seconds: float, error: str) -> None:
    await conn.execute(text(
        """UPDATE payment_ops SET due_at = now() + make_interval(secs => :d), locked_until = NULL, again = false,
               last_error = :e, updated_at = now() WHERE id = :id"""),
        {"id": op_id, "d": delay_seconds, "e": error[:500]})


async def next_op_due(conn: AsyncConnection) -> datetime | None:
    return (await conn.execute(text(
        "SELECT min(GREATEST(due_at, COALESCE(locked_until, due_at))) FROM payment_ops WHERE status = 'pending'"
    ))).scalar()


# --- provider callbacks --------------------------------------------------------------------------
async def record_provider_event(
    conn: AsyncConnection, *, provider: str, event_id: str, event_type: str, intent_id: str | None,
    payload: dict[str, Any],
) -> bool:
    """True the first time this provider event is seen; a replay changes nothing."""
    row = (await conn.execute(text(
        """INSERT INTO provider_events (provider, event_id, type, intent_id, payload)
           VALUES (:p, :e, :t, :i, CAST(:b AS jsonb)) ON CONFLICT DO NOTHING RETURNING event_id"""),
        {"p": provider, "e": event_id, "t": event_type, "i": intent_id, "b": json.dumps(payload)})).first()
    return row is not None


# --- reconciliation ------------------------------------------------------------------------------
async def claim_stale(
    conn: AsyncConnection, *, stale_seconds: float, max_backoff_seconds: float, limit: int
) -> list[uuid.UUID]:
    """Payments in an open state, unchanged for a while and not asked about recently; each is
    pushed back with a growing interval, so a customer who never pays is not polled forever."""
    rows = await conn.execute(text(
        """WITH due AS (
               SELECT id FROM payments
               WHERE status IN ('creating', 'requires_payment_method', 'requires_action', 'processing',
                                'requires_capture')
                 AND updated_at < now() - make_interval(secs => :stale)
                 AND (next_reconcile_at IS NULL OR next_reconcile_at <= now())
               ORDER BY next_reconcile_at NULLS FIRST, updated_at LIMIT :n FOR UPDATE SKIP LOCKED)
           UPDATE payments p SET reconcile_attempts = p.reconcile_attempts + 1,
               next_reconcile_at = now() + make_interval(
                   secs => LEAST(:maxb, :stale * power(2, LEAST(p.reconcile_attempts, 16))))
           FROM due WHERE p.id = due.id RETURNING p.id"""),
        {"stale": stale_seconds, "maxb": max_backoff_seconds, "n": limit})
    return [r.id for r in rows]


# --- housekeeping --------------------------------------------------------------------------------
async def forget_old(conn: AsyncConnection, batch: int = 5000) -> None:
    await conn.execute(text(
        "DELETE FROM payment_ops WHERE id IN (SELECT id FROM payment_ops WHERE status <> 'pending'"
        " AND updated_at < now() - interval '7 days' LIMIT :n)"), {"n": batch})
    await conn.execute(text(
        "DELETE FROM sandbox_callbacks WHERE id IN (SELECT id FROM sandbox_callbacks WHERE (delivered_at IS NOT NULL"
        " OR lost) AND due_at < now() - interval '7 days' LIMIT :n)"), {"n": batch})
    await conn.execute(text(
        "DELETE FROM provider_events WHERE (provider, event_id) IN (SELECT provider, event_id FROM provider_events"
        " WHERE received_at < now() - interval '30 days' LIMIT :n)"), {"n": batch})
