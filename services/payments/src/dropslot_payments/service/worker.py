"""Background loops: the provider-operations worker and reconciliation.

Both run in every replica. Work is claimed with `FOR UPDATE SKIP LOCKED` plus a lease
(`locked_until`), so the provider call itself happens outside any transaction and a
crashed worker's op is picked up again when its lease runs out; the idempotency key
makes that retry harmless at the provider. An op runs under the call context (actor,
correlation id) of whatever queued it, so its events name the person who caused them
(see `service/payments.py`); reconciliation queues in nobody's name.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections import defaultdict
from datetime import UTC, datetime
from typing import Any

import asyncpg
from dropslot_kit import context
from dropslot_kit.db import Database
from dropslot_kit.waiting import woken

from .. import metrics
from ..adapters import repository as repo
from ..adapters.providers.base import (
    PaymentProvider,
    ProviderRejected,
    ProviderStateError,
    ProviderUnavailable,
)
from ..config import Settings
from ..domain.payment import ENDED, IntentSnapshot, Status
from . import payments as uc

log = logging.getLogger("dropslot.payments.worker")
NOTIFY_CHANNEL = "payments_ops"


def _now() -> datetime:
    return datetime.now(UTC)


class OpsWorker:
    def __init__(self, settings: Settings, db: Database, providers: dict[str, PaymentProvider]):
        self.settings = settings
        self.db = db
        self.providers = providers
        self._wake = asyncio.Event()
        self._listener: asyncpg.Connection | None = None
        self._listen_retry_at = 0.0
        self._sem = asyncio.Semaphore(max(1, settings.payments_ops_concurrency))

    async def run(self) -> None:
        try:
            while True:
                await self._ensure_listener()
                self._wake.clear()
                if await self.run_once():
                    continue
                await self._idle()
        finally:
            await self._drop_listener()

    async def _ensure_listener(self) -> None:
        """LISTEN/NOTIFY only wakes the worker early; without it the worker still polls. So a
        missing connection (database restarting, no free slot) is retried now and then
        instead of stopping the work."""
        if self._listener is not None and not self._listener.is_closed():
            return
        now = asyncio.get_running_loop().time()
        if now < self._listen_retry_at:
            return
        self._listen_retry_at = now + 10.0
        try:
            self._listener = await asyncpg.connect(
                self.settings.plain_service_dsn(), timeout=5,
                server_settings={"search_path": "payments", "application_name": "dropslot-payments-ops"},
            )
            await self._listener.add_listener(NOTIFY_CHANNEL, lambda *_: self._wake.set())
        except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
            log.warning("payments ops: no LISTEN connection (%r); polling every %.1fs", exc,
                        self.settings.payments_ops_poll_seconds)
            await self._drop_listener()

    async def _drop_listener(self) -> None:
        if self._listener is not None:
            with contextlib.suppress(Exception):
                await self._listener.close()
        self._listener = None

    async def _idle(self) -> None:
        async with self.db.engine.connect() as conn:
            nxt = await repo.next_op_due(conn)
        wait = self.settings.payments_ops_poll_seconds
        if nxt is not None:
            wait = max(0.0, min(wait, (nxt - _now()).total_seconds()))
        if wait > 0:
            await woken(self._wake, wait)

    async def run_once(self) -> int:
        """Claim due ops and run them: one payment's ops in order, different payments at once."""
        async with self.db.engine.begin() as conn:
            ops = await repo.claim_ops(conn, self.settings.payments_ops_concurrency * 4,
                                       self.settings.payments_ops_lease_seconds)
        if not ops:
            return 0
        by_payment: dict[Any, list[repo.Op]] = defaultdict(list)
        for op in ops:
            by_payment[op.payment_id].append(op)

        async def run_chain(chain: list[repo.Op]) -> None:
            async with self._sem:
                for op in chain:
                    try:
                        await self.process(op)
                    except Exception as exc:  # a bug or the database: retry later, keep the loop alive
                        log.exception("payment op %s (%s) crashed", op.id, op.kind)
                        with contextlib.suppress(Exception):
                            async with self.db.engine.begin() as conn:
                                await repo.retry_op(conn, op.id, self._backoff(op.attempts), repr(exc))

        await asyncio.gather(*(run_chain(c) for c in by_payment.values()))
        return len(ops)

    def _backoff(self, attempts: int) -> float:
        cap = self.settings.payments_ops_max_backoff_seconds
        return min(cap, 0.5 * 2 ** min(attempts, 12)) * random.uniform(0.7, 1)

    async def process(self, op: repo.Op) -> None:
        """Run one op under the call context of whoever queued it (`op.origin`): the events it
        leads to name that person, as if emitted where the op was asked for."""
        token = context.set_current(op.origin)
        try:
            await self._process(op)
        finally:
            context.reset(token)

    async def _process(self, op: repo.Op) -> None:
        async with self.db.uow() as uow:
            await repo.set_scope(uow.conn, repo.SYSTEM_SCOPE)
            p = await repo.get(uow.conn, op.payment_id)
            refund = await repo.get_refund(uow.conn, op.refund_id) if op.refund_id else None
        assert p is not None, f"op {op.id} for a missing payment"
        provider = self.providers.get(p.provider)
        if provider is None:
            await self._retry(op, f"provider {p.provider!r} is not configured here")
            return
        fetched_at = _now()
        started = time.perf_counter()
        snap: IntentSnapshot | None = None
        refund_result: tuple[str, str | None, str | None] | None = None  # (status, provider id, error)
        rejected: ProviderRejected | None = None
        rid = p.reservation_id
        try:
            intent_id = p.provider_intent_id
            if op.kind == "create" or intent_id is None:
                if intent_id is None and (p.status != Status.CREATING or p.reservation_state in ENDED):
                    await self._close_without_intent(op)  # nothing to create any more
                    return
                # Same key every time: a retry (or a sync that overtook us) gets the same intent back.
                snap = await provider.create_intent(
                    p.amount_cents, p.currency, uc.idempotency_key(rid, "create"),
                    {"payment_id": str(p.id), "reservation_id": str(rid), "store_id": str(p.store_id)},
                )
            elif op.kind in ("capture", "cancel"):
                # One key per op: its retries (timeouts, crashes) replay safely, while a later op
                # - after the intent refused the call in another state - is not answered with the
                # stored refusal (Stripe keeps the result of a request that began executing).
                # An intent is captured or canceled once at most, whatever the key.
                key = uc.idempotency_key(rid, f"{op.kind}:{op.id}")
                call = provider.capture(intent_id, key) if op.kind == "capture" else provider.cancel(intent_id, key)
                snap = await self._or_retrieve(provider, intent_id, call)
            elif op.kind == "refund":
                assert refund is not None
                if refund.status == "pending":
                    try:
                        result = await provider.refund(intent_id, refund.amount_cents,
                                                       uc.idempotency_key(rid, f"refund:{refund.id}"))
                        refund_result = ("succeeded" if result.status != "failed" else "failed", result.id, None)
                    except (ProviderStateError, ProviderRejected) as exc:
                        refund_result = ("failed", None, str(exc))
                snap = await provider.retrieve(intent_id)
            else:  # sync
                snap = await provider.retrieve(intent_id)
        except ProviderUnavailable as exc:
            metrics.PROVIDER_CALLS.labels(p.provider, op.kind, "unavailable").inc()
            await self._retry(op, str(exc))
            return
        except ProviderRejected as exc:
            metrics.PROVIDER_CALLS.labels(p.provider, op.kind, "rejected").inc()
            rejected = exc
        except ProviderStateError as exc:
            # Even a re-fetch was refused (the provider does not know the intent): retrying the
            # same call cannot help. Keep the op as failed for an operator; reconciliation asks
            # again later with a fresh op.
            metrics.PROVIDER_CALLS.labels(p.provider, op.kind, "state_error").inc()
            log.error("payment %s: provider %s refused %s: %s", p.id, p.provider, op.kind, exc)
            async with self.db.engine.begin() as conn:
                await repo.fail_op(conn, op.id, str(exc))
            return
        else:
            metrics.PROVIDER_CALLS.labels(p.provider, op.kind, "ok").inc()
        metrics.PROVIDER_LATENCY.labels(p.provider, op.kind).observe(time.perf_counter() - started)

        async with self.db.uow() as uow:
            await repo.set_scope(uow.conn, repo.SYSTEM_SCOPE)
            locked = await repo.lock(uow.conn, op.payment_id)
            assert locked is not None
            if refund is not None and refund_result is not None:
                status, provider_refund_id, error = refund_result
                await repo.finish_refund(uow.conn, refund.id, status=status, provider_refund_id=provider_refund_id,
                                         error=error)
                if error:
                    log.warning("refund %s of payment %s failed: %s", refund.id, p.id, error)
            if rejected is not None:
                await self._rejected(uow, locked, op, rejected)
            else:
                assert snap is not None
                await uc.apply_snapshot(uow, locked, snap, fetched_at=fetched_at, cause=f"{op.kind}:{op.cause or ''}",
                                        refund=refund)
            await repo.finish_op(uow.conn, op.id)

    async def _or_retrieve(self, provider: PaymentProvider, intent_id: str, call: Any) -> IntentSnapshot:
        """A call the intent's state does not allow is not retried: re-fetch and decide again."""
        try:
            return await call
        except ProviderStateError as exc:
            metrics.PROVIDER_CALLS.labels(provider.name, "capture_or_cancel", "state_error").inc()
            log.info("provider refused on %s (%s); re-fetching the intent", intent_id, exc)
            return await provider.retrieve(intent_id)

    async def _rejected(self, uow: Any, p: repo.PaymentRow, op: repo.Op, exc: ProviderRejected) -> None:
        log.error("provider %s rejected %s for payment %s: %s", p.provider, op.kind, p.id, exc)
        if op.kind == "create" or p.provider_intent_id is None:
            await uc.fail_without_intent(uow, p, f"provider_rejected:{exc.code}", f"{op.kind}:rejected")

    async def _retry(self, op: repo.Op, error: str) -> None:
        delay = self._backoff(op.attempts)
        log.warning("payment op %s (%s) will retry in %.1fs: %s", op.id, op.kind, delay, error)
        async with self.db.engine.begin() as conn:
            await repo.retry_op(conn, op.id, delay, error)

    async def _close_without_intent(self, op: repo.Op) -> None:
        async with self.db.uow() as uow:
            await repo.set_scope(uow.conn, repo.SYSTEM_SCOPE)
            p = await repo.lock(uow.conn, op.payment_id)
            if p is not None:
                await uc.decide(uow, p, f"{op.kind}:{op.cause or ''}")
            await repo.finish_op(uow.conn, op.id)


class Reconciler:
    """Asks the provider about payments stuck in a non-final state and applies the answer
    through the same path as callbacks (a `sync` op), repairing what callbacks missed."""

    def __init__(self, settings: Settings, db: Database):
        self.settings = settings
        self.db = db

    async def run(self) -> None:
        last_cleanup = 0.0
        while True:
            await self.run_once()
            if time.monotonic() - last_cleanup > 3600:
                await self.housekeeping()
                last_cleanup = time.monotonic()
            await asyncio.sleep(self.settings.payments_reconcile_interval_seconds)

    async def run_once(self, *, stale_seconds: float | None = None) -> int:
        s = self.settings
        async with self.db.uow() as uow:
            await repo.set_scope(uow.conn, repo.SYSTEM_SCOPE)
            ids = await repo.claim_stale(
                uow.conn, stale_seconds=s.payments_reconcile_stale_seconds if stale_seconds is None else stale_seconds,
                max_backoff_seconds=s.payments_reconcile_max_backoff_seconds, limit=s.payments_reconcile_batch,
            )
            for payment_id in ids:
                p = await repo.get(uow.conn, payment_id)
                if p is None:
                    continue
                if p.provider_intent_id is None:
                    await uc.decide(uow, p, "reconcile")  # the create op was lost or failed: decide again
                else:
                    await repo.enqueue_op(uow.conn, p.id, "sync", cause="reconcile")
        if ids:
            metrics.RECONCILED.labels("asked").inc(len(ids))
            log.info("reconciliation: asked the provider about %d payments", len(ids))
        return len(ids)

    async def housekeeping(self) -> None:
        """Forget what no longer matters: finished provider calls, delivered sandbox callbacks
        (a week), provider events (30 days: providers retry a callback for ~3 days)."""
        async with self.db.engine.begin() as conn:
            await repo.forget_old(conn)
