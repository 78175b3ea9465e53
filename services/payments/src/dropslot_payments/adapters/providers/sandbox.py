"""`sandbox`: a card processor that behaves like a real one, with its own state.

It lives in the payments schema but shares nothing with the payments tables: intents,
idempotency records, refunds, events and outbound callbacks are in `sandbox_*` tables,
changed in the sandbox's own transactions, exactly as if it ran elsewhere. Payments talks
to it only through the provider interface and learns about changes from its callbacks:

- callbacks are sent asynchronously over HTTP to `{public_base_url}/api/v1/payments/
  providers/sandbox/webhook` (through the gateway), signed `Sandbox-Signature: t=..,v1=..`
  (HMAC-SHA256, Stripe's scheme) with `DROPSLOT_PAYMENTS_SANDBOX_WEBHOOK_SECRET`;
- delivery is a loop over `sandbox_callbacks` (claimed with SKIP LOCKED, retried with
  backoff until a 2xx), so pending callbacks survive a restart;
- `DROPSLOT_PAYMENTS_SANDBOX_DUPLICATE_RATE` sends that share of callbacks twice,
  `DROPSLOT_PAYMENTS_SANDBOX_SHUFFLE` delivers them in random order and
  `DROPSLOT_PAYMENTS_SANDBOX_DROP_RATE` loses that share, as real providers sometimes do;
  `..._CALLBACK_DELAY_SECONDS` delays every callback;
- a second loop settles `processing` authorizations when their time comes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import secrets
import time
from collections.abc import Mapping
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from dropslot_kit.db import Database
from dropslot_kit.waiting import woken
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from ...config import Settings
from ...domain import sandbox as sm
from ...domain import signature
from ...domain.payment import IntentSnapshot, IntentStatus
from .base import InvalidCallback, ProviderEvent, ProviderRefund, ProviderRejected, ProviderStateError

log = logging.getLogger("dropslot.payments.sandbox")

SIGNATURE_HEADER = "Sandbox-Signature"
SUPPORTED_CURRENCIES_RE = r"^[A-Z]{3}$"
MAX_CALLBACK_ATTEMPTS = 50

_COLUMNS = (
    "id, amount, currency, status, client_secret, metadata, amount_capturable, amount_received, "
    "amount_refunded, last_payment_error, next_action, cancellation_reason, behavior, settle_at, "
    "callbacks_lost, created_at"
)


def _now() -> datetime:
    return datetime.now(UTC)


def _json(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str | bytes) else value


def _row_to_intent(row: Any) -> sm.SandboxIntent:
    m = row._mapping
    return sm.SandboxIntent(
        id=m["id"], amount=m["amount"], currency=m["currency"], status=IntentStatus(m["status"]),
        client_secret=m["client_secret"], created_at=m["created_at"], metadata=_json(m["metadata"]) or {},
        amount_capturable=m["amount_capturable"], amount_received=m["amount_received"],
        amount_refunded=m["amount_refunded"], last_payment_error=_json(m["last_payment_error"]),
        next_action=_json(m["next_action"]), cancellation_reason=m["cancellation_reason"],
        behavior=sm.CardBehavior(m["behavior"]) if m["behavior"] else None, settle_at=m["settle_at"],
        callbacks_lost=m["callbacks_lost"],
    )


def snapshot_of(intent: sm.SandboxIntent) -> IntentSnapshot:
    err = intent.last_payment_error or {}
    return IntentSnapshot(
        id=intent.id, status=intent.status, amount=intent.amount, currency=intent.currency.upper(),
        amount_capturable=intent.amount_capturable, amount_received=intent.amount_received,
        amount_refunded=intent.amount_refunded, client_secret=intent.client_secret,
        last_error_code=(err.get("decline_code") or err.get("code")) if err else None,
        last_error_message=err.get("message") if err else None, next_action=intent.next_action,
        cancellation_reason=intent.cancellation_reason, metadata=dict(intent.metadata),
    )


class SandboxProvider:
    name = "sandbox"

    # A pool of its own, as if the processor ran elsewhere: a customer's card step holds the
    # payment's row lock (payments' pool) while the sandbox commits the step (this pool), so the
    # two never wait on each other's connections. Small: one kept open, more only under load.
    POOL = {"db_pool_size": 1, "db_max_overflow": 7}

    def __init__(self, settings: Settings):
        self.settings = settings
        self.db = Database(settings.model_copy(update=self.POOL))
        self._secret = settings.payments_sandbox_webhook_secret.get_secret_value()
        self._callbacks_wake = asyncio.Event()
        self._settle_wake = asyncio.Event()
        self._http: httpx.AsyncClient | None = None

    # --- the server-side API (what payments calls) ----------------------------------------------
    async def create_intent(
        self, amount: int, currency: str, idempotency_key: str, metadata: Mapping[str, str]
    ) -> IntentSnapshot:
        if amount <= 0 or amount > 99_999_999:
            raise ProviderRejected(f"invalid amount {amount}", code="amount_invalid")
        if len(currency) != 3 or not currency.isalpha():
            raise ProviderRejected(f"invalid currency {currency!r}", code="currency_invalid")
        request = {"amount": amount, "currency": currency.upper(), "metadata": dict(metadata)}
        async with self._tx() as conn:
            replay = await self._idempotent(conn, idempotency_key, "create", request)
            if replay is not None:
                return await self._retrieve(conn, replay["id"])
            intent_id = f"pi_sbx_{secrets.token_hex(12)}"
            intent = sm.SandboxIntent(
                id=intent_id, amount=amount, currency=currency.upper(), status=IntentStatus.REQUIRES_PAYMENT_METHOD,
                client_secret=f"{intent_id}_secret_{secrets.token_urlsafe(18)}", created_at=_now(),
                metadata=dict(metadata),
            )
            await conn.execute(text(
                "INSERT INTO sandbox_intents (id, amount, currency, status, client_secret, metadata, created_at,"
                " updated_at) VALUES (:id, :a, :c, :s, :cs, CAST(:m AS jsonb), :t, :t)"),
                {"id": intent.id, "a": intent.amount, "c": intent.currency, "s": intent.status.value,
                 "cs": intent.client_secret, "m": json.dumps(intent.metadata), "t": intent.created_at})
            await self._record_events(conn, intent, [sm.EV_CREATED])
            await self._remember(conn, idempotency_key, {"id": intent.id})
        self._callbacks_wake.set()
        return snapshot_of(intent)

    async def retrieve(self, intent_id: str) -> IntentSnapshot:
        async with self.db.engine.connect() as conn:
            return await self._retrieve(conn, intent_id)

    async def capture(self, intent_id: str, idempotency_key: str) -> IntentSnapshot:
        return await self._mutate(intent_id, idempotency_key, "capture", sm.capture)

    async def cancel(self, intent_id: str, idempotency_key: str) -> IntentSnapshot:
        return await self._mutate(intent_id, idempotency_key, "cancel", sm.cancel)

    async def refund(self, intent_id: str, amount: int | None, idempotency_key: str) -> ProviderRefund:
        async with self._tx() as conn:
            replay = await self._idempotent(conn, idempotency_key, "refund", {"intent": intent_id, "amount": amount})
            if replay is not None:
                return ProviderRefund(replay["id"], replay["amount"], replay["status"])
            intent = await self._lock(conn, intent_id)
            try:
                after, events, refunded = sm.refund(intent, amount)
            except sm.SandboxError as exc:
                raise ProviderStateError(str(exc)) from None
            refund_id = f"re_sbx_{secrets.token_hex(12)}"
            await conn.execute(text(
                "INSERT INTO sandbox_refunds (id, intent_id, amount, status) VALUES (:id, :i, :a, 'succeeded')"),
                {"id": refund_id, "i": intent_id, "a": refunded})
            await self._save(conn, after)
            await self._record_events(conn, after, events, extra={"refund": {"id": refund_id, "amount": refunded}})
            result = {"id": refund_id, "amount": refunded, "status": "succeeded"}
            await self._remember(conn, idempotency_key, result)
        self._callbacks_wake.set()
        return ProviderRefund(refund_id, refunded, "succeeded")

    def verify_and_parse_callback(self, headers: Mapping[str, str], body: bytes) -> ProviderEvent:
        header = next((v for k, v in headers.items() if k.lower() == SIGNATURE_HEADER.lower()), None)
        try:
            signature.verify(self._secret, header, body, tolerance=self.settings.payments_webhook_tolerance_seconds)
            payload = json.loads(body)
            obj = payload["data"]["object"]
            intent_id = obj.get("payment_intent") if obj.get("object") == "charge" else obj.get("id")
            return ProviderEvent(
                id=str(payload["id"]), type=str(payload["type"]), intent_id=intent_id,
                created=payload.get("created"), payload=payload, metadata=dict(obj.get("metadata") or {}),
            )
        except signature.InvalidSignature as exc:
            raise InvalidCallback(str(exc)) from None
        except (ValueError, KeyError, TypeError, AttributeError):
            raise InvalidCallback("malformed callback body") from None

    async def close(self) -> None:
        if self._http is not None:
            await self._http.aclose()
            self._http = None
        await self.db.dispose()

    # --- the client-side API (the "card form", called by our sandbox routes) ------------------------
    async def confirm(self, intent_id: str, card_number: str, *, authenticate_url: str) -> sm.SandboxIntent:
        number = sm.normalize_card_number(card_number)
        card = sm.TEST_CARDS.get(number)
        if card is None:
            raise sm.UnknownCard("Use one of the sandbox test cards (see the payments README).")
        s = self.settings
        async with self._tx() as conn:
            intent = await self._lock(conn, intent_id)
            after, events = sm.confirm(
                intent, card, now=_now(), processing=timedelta(seconds=s.payments_sandbox_processing_seconds),
                slow_processing=timedelta(seconds=s.payments_sandbox_slow_processing_seconds),
                authenticate_url=authenticate_url,
            )
            await self._save(conn, after)
            await self._record_events(conn, after, events)
        self._callbacks_wake.set()
        self._settle_wake.set()
        return after

    async def authenticate(self, intent_id: str, *, succeed: bool) -> sm.SandboxIntent:
        async with self._tx() as conn:
            intent = await self._lock(conn, intent_id)
            after, events = sm.authenticate(
                intent, succeed=succeed, now=_now(),
                processing=timedelta(seconds=self.settings.payments_sandbox_processing_seconds),
            )
            await self._save(conn, after)
            await self._record_events(conn, after, events)
        self._callbacks_wake.set()
        self._settle_wake.set()
        return after

    async def intent(self, intent_id: str) -> sm.SandboxIntent:
        async with self.db.engine.connect() as conn:
            row = (await conn.execute(text(f"SELECT {_COLUMNS} FROM sandbox_intents WHERE id = :id"),
                                      {"id": intent_id})).first()
        if row is None:
            raise ProviderStateError(f"No such payment_intent: {intent_id}")
        return _row_to_intent(row)

    # --- background loops (run in every replica; SKIP LOCKED keeps them apart) ---------------------
    async def run_settler(self) -> None:
        """Resolves `processing` authorizations whose time has come."""
        while True:
            settled = await self.settle_due()
            if settled:
                self._callbacks_wake.set()
                continue
            await self._sleep_until("SELECT min(settle_at) FROM sandbox_intents WHERE status = 'processing'",
                                    self._settle_wake)

    async def settle_due(self, limit: int = 100) -> int:
        async with self._tx() as conn:
            rows = (await conn.execute(text(
                f"SELECT {_COLUMNS} FROM sandbox_intents WHERE status = 'processing' AND settle_at <= now()"
                " ORDER BY settle_at LIMIT :n FOR UPDATE SKIP LOCKED"), {"n": limit})).all()
            for row in rows:
                intent = _row_to_intent(row)
                after, events = sm.settle(intent)
                await self._save(conn, replace(after, callbacks_lost=False))
                await self._record_events(conn, after, events)
        return len(rows)

    async def run_callbacks(self) -> None:
        """Delivers signed callbacks; a callback is retried with backoff until it gets a 2xx."""
        while True:
            sent = await self.deliver_due()
            if sent:
                continue
            await self._sleep_until(
                "SELECT min(due_at) FROM sandbox_callbacks WHERE delivered_at IS NULL AND NOT lost",
                self._callbacks_wake,
            )

    async def deliver_due(self, limit: int = 50) -> int:
        shuffle = self.settings.payments_sandbox_shuffle
        order = "random()" if shuffle else "c.due_at, c.id"
        lease = self.settings.payments_sandbox_callback_timeout_seconds + 10
        async with self._tx() as conn:
            rows = (await conn.execute(text(
                f"""
                WITH due AS (
                    SELECT c.id FROM sandbox_callbacks c
                    WHERE c.delivered_at IS NULL AND NOT c.lost AND c.due_at <= now()
                    ORDER BY {order} LIMIT :n FOR UPDATE SKIP LOCKED)
                UPDATE sandbox_callbacks c SET due_at = now() + make_interval(secs => :lease),
                       attempts = c.attempts + 1
                FROM due, sandbox_events e WHERE c.id = due.id AND e.id = c.event_id
                RETURNING c.id, c.attempts, e.payload"""), {"n": limit, "lease": lease})).all()
        if not rows:
            return 0
        rows = list(rows)
        if shuffle:
            random.shuffle(rows)
            await asyncio.gather(*(self._deliver(r.id, r.attempts, _json(r.payload)) for r in rows))
        else:
            for r in rows:
                await self._deliver(r.id, r.attempts, _json(r.payload))
        return len(rows)

    # --- internals --------------------------------------------------------------------------------
    @contextlib.asynccontextmanager
    async def _tx(self) -> Any:
        async with self.db.engine.begin() as conn:
            yield conn

    async def _sleep_until(self, next_sql: str, wake: asyncio.Event, cap: float = 1.0) -> None:
        async with self.db.engine.connect() as conn:
            nxt = (await conn.execute(text(next_sql))).scalar()
        wait = cap if nxt is None else max(0.0, min(cap, (nxt - _now()).total_seconds()))
        wake.clear()
        if wait > 0:
            await woken(wake, wait)

    async def _deliver(self, callback_id: int, attempts: int, payload: dict[str, Any]) -> None:
        if self._http is None:
            self._http = httpx.AsyncClient(timeout=self.settings.payments_sandbox_callback_timeout_seconds)
        body = json.dumps(payload, separators=(",", ":")).encode()
        headers = {
            "content-type": "application/json", "user-agent": "DropSlot-Sandbox/1.0",
            SIGNATURE_HEADER: signature.sign_header(self._secret, body),
        }
        status: int | None = None
        error: str | None = None
        try:
            resp = await self._http.post(self.settings.sandbox_callback_url(), content=body, headers=headers)
            status = resp.status_code
            if not 200 <= status < 300:
                error = f"HTTP {status}: {resp.text[:200]}"
        except httpx.HTTPError as exc:
            error = f"{type(exc).__name__}: {exc}"[:300]
        async with self._tx() as conn:
            if error is None:
                await conn.execute(text(
                    "UPDATE sandbox_callbacks SET delivered_at = now(), last_status = :s, last_error = NULL"
                    " WHERE id = :id"), {"id": callback_id, "s": status})
                return
            backoff = min(300.0, 0.5 * 2 ** min(attempts, 10)) * random.uniform(0.75, 1.0)
            give_up = attempts >= MAX_CALLBACK_ATTEMPTS
            await conn.execute(text(
                "UPDATE sandbox_callbacks SET due_at = now() + make_interval(secs => :b), last_status = :s,"
                " last_error = :e, lost = :lost WHERE id = :id"),
                {"id": callback_id, "b": backoff, "s": status, "e": error, "lost": give_up})
        log.warning("sandbox callback %s failed (attempt %d%s): %s", callback_id, attempts,
                    ", giving up" if give_up else "", error)

    async def _retrieve(self, conn: AsyncConnection, intent_id: str) -> IntentSnapshot:
        row = (await conn.execute(text(f"SELECT {_COLUMNS} FROM sandbox_intents WHERE id = :id"),
                                  {"id": intent_id})).first()
        if row is None:
            raise ProviderStateError(f"No such payment_intent: {intent_id}")
        return snapshot_of(_row_to_intent(row))

    async def _lock(self, conn: AsyncConnection, intent_id: str) -> sm.SandboxIntent:
        row = (await conn.execute(text(f"SELECT {_COLUMNS} FROM sandbox_intents WHERE id = :id FOR UPDATE"),
                                  {"id": intent_id})).first()
        if row is None:
            raise ProviderStateError(f"No such payment_intent: {intent_id}")
        return _row_to_intent(row)

    async def _mutate(self, intent_id: str, key: str, operation: str, step: Any) -> IntentSnapshot:
        async with self._tx() as conn:
            replay = await self._idempotent(conn, key, operation, {"intent": intent_id})
            if replay is not None:
                return await self._retrieve(conn, replay["id"])
            intent = await self._lock(conn, intent_id)
            try:
                after, events = step(intent)
            except sm.SandboxError as exc:
                raise ProviderStateError(str(exc)) from None
            await self._save(conn, after)
            await self._record_events(conn, after, events)
            await self._remember(conn, key, {"id": intent_id})
        self._callbacks_wake.set()
        return snapshot_of(after)

    async def _idempotent(
        self, conn: AsyncConnection, key: str, operation: str, request: dict[str, Any]
    ) -> dict[str, Any] | None:
        """None the first time a key is seen (the caller then does the work); else the stored
        result. A concurrent first use of the same key waits here for the other to commit."""
        fresh = (await conn.execute(text(
            "INSERT INTO sandbox_idempotency (key, operation, request) VALUES (:k, :o, CAST(:r AS jsonb))"
            " ON CONFLICT DO NOTHING RETURNING key"), {"k": key, "o": operation, "r": json.dumps(request)})).first()
        if fresh is not None:
            return None
        row = (await conn.execute(text(
            "SELECT operation, request, response FROM sandbox_idempotency WHERE key = :k"), {"k": key})).one()
        if row.operation != operation or _json(row.request) != request:
            # Stripe: "Keys for idempotent requests can only be used with the same parameters".
            raise ProviderRejected(f"idempotency key {key!r} was used for another request", code="idempotency_error")
        return _json(row.response)

    async def _remember(self, conn: AsyncConnection, key: str, response: dict[str, Any]) -> None:
        await conn.execute(text("UPDATE sandbox_idempotency SET response = CAST(:r AS jsonb) WHERE key = :k"),
                           {"k": key, "r": json.dumps(response)})

    async def _save(self, conn: AsyncConnection, i: sm.SandboxIntent) -> None:
        await conn.execute(text(
            """UPDATE sandbox_intents SET status = :s, amount_capturable = :ac, amount_received = :ar,
                   amount_refunded = :af, last_payment_error = CAST(:lpe AS jsonb), next_action = CAST(:na AS jsonb),
                   cancellation_reason = :cr, behavior = :b, settle_at = :sa, callbacks_lost = :cl, updated_at = now()
               WHERE id = :id"""),
            {"id": i.id, "s": i.status.value, "ac": i.amount_capturable, "ar": i.amount_received,
             "af": i.amount_refunded, "lpe": json.dumps(i.last_payment_error) if i.last_payment_error else None,
             "na": json.dumps(i.next_action) if i.next_action else None, "cr": i.cancellation_reason,
             "b": i.behavior.value if i.behavior else None, "sa": i.settle_at, "cl": i.callbacks_lost})

    async def _record_events(
        self, conn: AsyncConnection, intent: sm.SandboxIntent, types: list[str], extra: dict[str, Any] | None = None
    ) -> None:
        s = self.settings
        for ev_type in types:
            event_id = f"evt_sbx_{secrets.token_hex(12)}"
            obj = intent.public()
            if ev_type == sm.EV_REFUNDED:
                obj = {"id": f"ch_sbx_{intent.id[7:]}", "object": "charge", "payment_intent": intent.id,
                       "amount": intent.amount_received, "amount_captured": intent.amount_received,
                       "amount_refunded": intent.amount_refunded, "currency": intent.currency.lower(),
                       "refunded": intent.amount_refunded >= intent.amount_received,
                       "metadata": dict(intent.metadata), **(extra or {})}
            payload = {"id": event_id, "object": "event", "type": ev_type, "created": int(time.time()),
                       "livemode": False, "data": {"object": obj}}
            await conn.execute(text(
                "INSERT INTO sandbox_events (id, type, intent_id, payload) VALUES (:id, :t, :i, CAST(:p AS jsonb))"),
                {"id": event_id, "t": ev_type, "i": intent.id, "p": json.dumps(payload)})
            delays = [s.payments_sandbox_callback_delay_seconds]
            if s.payments_sandbox_duplicate_rate > 0 and random.random() < s.payments_sandbox_duplicate_rate:
                delays.append(s.payments_sandbox_callback_delay_seconds)
            dropped = s.payments_sandbox_drop_rate > 0 and random.random() < s.payments_sandbox_drop_rate
            for delay in delays:
                if s.payments_sandbox_shuffle:
                    delay += random.uniform(0, s.payments_sandbox_shuffle_window_seconds)
                await conn.execute(text(
                    "INSERT INTO sandbox_callbacks (event_id, due_at, lost)"
                    " VALUES (:e, now() + make_interval(secs => :d), :lost)"),
                    {"e": event_id, "d": delay, "lost": intent.callbacks_lost or dropped})
