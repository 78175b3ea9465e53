"""The delivery loop: runs in every webhooks replica (supervised by the kit) and sends due
deliveries, signed per Standard Webhooks.

- Work is claimed in the database (`repository.claim`): a lease per delivery, so two workers
  never send the same event at once, and an exact per-endpoint cap on attempts in flight
  across replicas (1 while the endpoint is failing), so a slow or dead endpoint occupies a
  few slots and never the whole pool: other stores' events keep flowing.
- New deliveries wake the loop through LISTEN/NOTIFY; polling is the fallback and what picks
  up retries coming due.
- Every attempt is kept (status, duration, the first KB of the answer, the error). Failures
  go back on the retry schedule; a 410 or a run of failures longer than the configured window
  disables the endpoint and emits `webhooks.endpoint.disabled`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
from dropslot_contracts.events.webhooks import EndpointDisabled
from dropslot_kit import telemetry
from dropslot_kit.db import Database

from .adapters import repository as repo
from .adapters.http import AttemptResult, Sender
from .adapters.secretbox import SecretBox, SecretBoxError
from .config import Settings
from .domain import signing
from .domain.schedule import next_delay
from .domain.ssrf import AddressPolicy
from .service import redact_url

log = logging.getLogger("dropslot.webhooks.delivery")
CHANNEL = "webhooks_deliveries"


class DeliveryWorker:
    def __init__(self, settings: Settings, db: Database, box: SecretBox, *, name: str | None = None,
                 sender: Sender | None = None):
        self.settings = settings
        self.db = db
        self.box = box
        self.name = name or f"{settings.service}-{uuid.uuid4().hex[:6]}"
        self.sender = sender or Sender(
            AddressPolicy.from_cidrs(settings.webhooks_allowed_networks),
            allow_http=settings.webhooks_allow_http, timeout=settings.webhooks_timeout_seconds,
            body_limit=settings.webhooks_response_body_limit, max_connections=settings.webhooks_max_inflight,
        )
        self.token = uuid.uuid4()  # this worker's lease token
        self._wake = asyncio.Event()
        self._inflight: set[asyncio.Task[None]] = set()
        self._listener: asyncpg.Connection | None = None
        self.sent = 0

    # --- the loop --------------------------------------------------------------------------------
    async def run(self) -> None:
        await self.sender.start()
        try:
            while True:
                await self._ensure_listener()
                self._wake.clear()
                free = self.settings.webhooks_max_inflight - len(self._inflight)
                claimed = 0
                if free > 0:
                    jobs = await self.claim(free)
                    claimed = len(jobs)
                    for job in jobs:
                        task = asyncio.create_task(self._deliver(job))
                        self._inflight.add(task)
                        task.add_done_callback(self._done)
                if claimed and len(self._inflight) < self.settings.webhooks_max_inflight:
                    continue  # there may be more due right now
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self.settings.webhooks_poll_seconds)
        finally:
            await self.stop()

    async def stop(self) -> None:
        """Cancel what is in flight: those leases lapse and another worker takes the deliveries
        over (same webhook-id, so receivers that got it already drop the duplicate)."""
        for task in list(self._inflight):
            task.cancel()
        if self._inflight:
            await asyncio.gather(*self._inflight, return_exceptions=True)
        if self._listener is not None:
            with contextlib.suppress(Exception):
                await self._listener.close()
            self._listener = None
        await self.sender.close()

    def _done(self, task: asyncio.Task[None]) -> None:
        self._inflight.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("delivery task failed", exc_info=task.exception())
        self._wake.set()  # a slot (global and per endpoint) is free again

    async def _ensure_listener(self) -> None:
        if self._listener is not None and not self._listener.is_closed():
            return
        try:
            self._listener = await asyncpg.connect(
                self.settings.plain_service_dsn(),
                server_settings={"search_path": self.db.schema, "application_name": f"dropslot-{self.name}-listen"},
            )
            await self._listener.add_listener(CHANNEL, lambda *_: self._wake.set())
        except (OSError, asyncpg.PostgresError) as exc:
            # Without the listener we still poll; try again on the next turn.
            log.warning("webhooks: cannot LISTEN for new deliveries (%r); polling", exc)
            self._listener = None

    async def claim(self, free: int) -> list[dict[str, Any]]:
        async with self.db.uow() as uow:
            await repo.scope_system(uow.conn)
            cap = self.settings.webhooks_endpoint_concurrency
            return await repo.claim(uow.conn, free=free, cap=cap, lease_seconds=self.lease_seconds,
                                    token=self.token)

    @property
    def lease_seconds(self) -> float:
        # Longer than any attempt can take, so a lease never lapses under a live attempt.
        return max(self.settings.webhooks_lease_seconds, self.settings.webhooks_timeout_seconds * 2 + 5)

    # --- one attempt -----------------------------------------------------------------------------
    def signing_keys(self, job: dict[str, Any]) -> list[bytes]:
        keys = [signing.secret_key(self.box.decrypt(job["secret"], job["endpoint_id"]))]
        expires = job["previous_secret_expires_at"]
        if job["previous_secret"] and expires is not None and expires > datetime.now(UTC):
            keys.append(signing.secret_key(self.box.decrypt(job["previous_secret"], job["endpoint_id"])))
        return keys

    async def _deliver(self, job: dict[str, Any]) -> None:
        body = job["payload"].encode()
        msg_id = str(job["id"])
        try:
            keys = self.signing_keys(job)
        except (SecretBoxError, signing.InvalidSecret) as exc:
            log.error("webhooks: cannot sign for endpoint %s: %s", job["endpoint_id"], exc)
            now = datetime.now(UTC)
            await self.record(job, AttemptResult(now, 0.0, None, None, f"cannot sign: {exc}"))
            return
        timestamp = int(time.time())
        headers = {
            "webhook-id": msg_id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": signing.signature_header(keys, msg_id, timestamp, body),
        }
        result = await self.sender.send(job["url"], headers, body)
        _record_metric(result, job["type"])
        await self.record(job, result)

    async def record(self, job: dict[str, Any], result: AttemptResult) -> None:
        s = self.settings
        gone = result.status_code == 410
        status, next_at = "delivered", None
        if not result.success:
            delay = None if gone else next_delay(
                job["retry_count"] + 1, s.webhooks_retry_schedule_seconds, scale=s.webhooks_retry_scale,
                jitter=s.webhooks_retry_jitter, retry_after=result.retry_after,
                retry_after_max=s.webhooks_retry_after_max_seconds,
            )
            if delay is None and not gone:
                status = "failed"
            else:
                # A 410 leaves the delivery pending behind the disabled endpoint: if the owner
                # re-enables it, nothing was lost.
                status = "pending"
                next_at = datetime.now(UTC) + timedelta(seconds=delay or 0.0)
        async with self.db.uow() as uow:
            await repo.scope_system(uow.conn)
            await repo.insert_attempt(uow.conn, {
                "webhook_event_id": job["id"], "endpoint_id": job["endpoint_id"], "store_id": job["store_id"],
                "attempt_number": job["attempt_count"] + 1, "url": redact_url(job["url"]),
                "started_at": result.started_at, "duration_ms": int(result.duration * 1000),
                "status_code": result.status_code, "success": result.success,
                "response_body": result.response_body, "error": result.error, "worker": self.name,
            })
            held = await repo.finish_attempt(
                uow.conn, delivery_id=job["id"], token=self.token, success=result.success, status=status,
                next_attempt_at=next_at, started_at=result.started_at, status_code=result.status_code,
                error=result.error,
            )
            if not held:
                log.warning("webhooks: lease on %s lapsed during the attempt; outcome logged only", job["id"])
            if result.success:
                await repo.endpoint_recovered(uow.conn, job["endpoint_id"])
                self.sent += 1
                return
            failing_since = await repo.endpoint_failed(uow.conn, job["endpoint_id"], result.started_at)
            reason = None
            if gone:
                reason = "gone"
            elif failing_since is not None and datetime.now(UTC) - failing_since >= timedelta(
                    seconds=s.webhooks_disable_after_seconds):
                reason = "failing"
            if reason is not None:
                row = await repo.disable_endpoint(uow.conn, job["endpoint_id"], reason)
                if row is not None:
                    log.warning("webhooks: endpoint %s disabled (%s)", row["id"], reason)
                    uow.emit(EndpointDisabled(endpoint_id=row["id"], store_id=row["store_id"],
                                              url=redact_url(row["url"]), reason=reason,
                                              failing_since=failing_since, last_status_code=result.status_code,
                                              last_error=result.error),
                             store_id=row["store_id"])


def _record_metric(result: AttemptResult, event_type: str) -> None:
    # The kit's helper labels webhook_deliveries_total / webhook_delivery_duration_seconds.
    record = getattr(telemetry, "record_webhook_delivery", None)
    if record is not None:
        record(result.outcome, result.duration, event_type=event_type)


async def retention_loop(settings: Settings, db: Database) -> None:
    """Finished deliveries (and their attempts) older than the retention window go, a batch at a
    time; expired previous secrets are dropped."""
    while True:
        older = datetime.now(UTC) - timedelta(days=settings.webhooks_retention_days)
        while True:
            async with db.uow() as uow:
                await repo.scope_system(uow.conn)
                await repo.drop_expired_previous_secrets(uow.conn)
                n = await repo.purge_finished(uow.conn, older, 1000)
            if n < 1000:
                break
        await asyncio.sleep(3600)
