"""The delivery loop: runs in every webhooks replica (supervised by the kit) and sends due
deliveries, signed per Standard Webhooks.

- Work is claimed in the database (`repository.claim`): a lease per delivery, so two workers
  never send the same event at once, and an exact per-endpoint cap on attempts in flight
  across replicas (1 while the endpoint is failing), so a slow or dead endpoint occupies a
  few slots and never the whole pool: other stores' events keep flowing.
- New deliveries wake the loop through LISTEN/NOTIFY; polling is the fallback and what picks
  up retries coming due.
- Every attempt is kept (status, duration, the first KB of the answer, the error). Outcomes
  are written in batches (one transaction for everything that finished meanwhile), which
  keeps the database work per delivery small in a burst. Failures go back on the retry
  schedule; a failing endpoint is probed now and then with its oldest waiting delivery, and
  its first success releases everything waiting; a 410 or a run of failures longer than the
  configured window disables the endpoint and emits `webhooks.endpoint.disabled`.
- A stopping worker lets its attempts in flight finish and be recorded.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
from dropslot_contracts.events.webhooks import EndpointDisabled
from dropslot_kit import telemetry
from dropslot_kit.db import Database
from dropslot_kit.waiting import woken
from opentelemetry.trace import SpanKind
from sqlalchemy.exc import SQLAlchemyError

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
RECORD_BATCH = 200
RECORD_RETRIES = 8


@dataclass
class Outcome:
    job: dict[str, Any]
    result: AttemptResult
    done: asyncio.Future[None]


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
        self._task_jobs: dict[asyncio.Task[None], uuid.UUID] = {}
        self._outcomes: asyncio.Queue[Outcome] = asyncio.Queue()
        self._listener: asyncpg.Connection | None = None
        self._listener_retry_at = 0.0
        self.sent = 0

    # --- the loop --------------------------------------------------------------------------------
    async def run(self) -> None:
        await self.sender.start()
        recorder = asyncio.create_task(self._record_loop())
        try:
            while True:
                await self._ensure_listener()
                self._wake.clear()
                free = self.settings.webhooks_max_inflight - len(self._inflight)
                claimed = 0
                if free > 0:
                    try:
                        jobs = await self.claim(free)
                    except (OSError, SQLAlchemyError, asyncpg.PostgresError) as exc:
                        # The database is away: keep what is in flight (its outcomes wait in the
                        # recorder) and try again shortly, rather than crash and drop it all.
                        log.warning("webhooks: cannot claim deliveries (%r); retrying", exc)
                        await asyncio.sleep(1.0)
                        continue
                    claimed = len(jobs)
                    for job in jobs:
                        task = asyncio.create_task(self._deliver(job))
                        self._inflight.add(task)
                        self._task_jobs[task] = job["id"]
                        task.add_done_callback(self._done)
                if claimed and len(self._inflight) < self.settings.webhooks_max_inflight:
                    continue  # there may be more due right now
                await woken(self._wake, self.settings.webhooks_poll_seconds)
        finally:
            await self.stop()
            recorder.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await recorder

    async def stop(self) -> None:
        """Let attempts in flight finish and their outcomes be written (a few seconds at most),
        so a restart does not send them again; cancel the rest and hand their deliveries back
        at once (another replica retries them, same webhook-id)."""
        pending = set(self._inflight)
        if pending:
            _, pending = await asyncio.wait(pending, timeout=self.settings.webhooks_shutdown_grace_seconds)
        unfinished = []
        for task in pending:
            task.cancel()
            unfinished.append(self._task_jobs.get(task))
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)
            with contextlib.suppress(Exception):
                async with self.db.uow() as uow:
                    await repo.scope_system(uow.conn)
                    await repo.release_leases(uow.conn, [j for j in unfinished if j is not None], self.token)
        if self._listener is not None:
            with contextlib.suppress(Exception):
                await self._listener.close()
            self._listener = None
        await self.sender.close()

    def _done(self, task: asyncio.Task[None]) -> None:
        self._inflight.discard(task)
        self._task_jobs.pop(task, None)
        if not task.cancelled() and task.exception() is not None:
            log.error("delivery task failed", exc_info=task.exception())
        self._wake.set()  # a slot (global and per endpoint) is free again

    async def _ensure_listener(self) -> None:
        if self._listener is not None and not self._listener.is_closed():
            return
        if time.monotonic() < self._listener_retry_at:
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
            self._listener_retry_at = time.monotonic() + 5.0

    async def claim(self, free: int) -> list[dict[str, Any]]:
        async with self.db.uow() as uow:
            await repo.scope_system(uow.conn)
            cap = self.settings.webhooks_endpoint_concurrency
            jobs = await repo.claim(uow.conn, free=free, cap=cap, lease_seconds=self.lease_seconds,
                                    token=self.token)
            jobs += await repo.claim_probes(uow.conn, free=free - len(jobs), interval_seconds=self.probe_interval,
                                            lease_seconds=self.lease_seconds, token=self.token)
            return jobs

    @property
    def probe_interval(self) -> float:
        return self.settings.webhooks_probe_interval_seconds * self.settings.webhooks_retry_scale

    @property
    def lease_seconds(self) -> float:
        # Longer than any attempt can take (and its outcome to be written), so a lease never
        # lapses under a live attempt; it only matters when a worker died mid-delivery.
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
            result = AttemptResult(datetime.now(UTC), 0.0, None, None, f"cannot sign: {exc}")
        else:
            timestamp = int(time.time())
            headers = {
                "webhook-id": msg_id,
                "webhook-timestamp": str(timestamp),
                "webhook-signature": signing.signature_header(keys, msg_id, timestamp, body),
            }
            with telemetry.continued_span(
                f"webhook deliver {job['type']}", job.get("traceparent"), kind=SpanKind.CLIENT,
                attributes={"webhook.endpoint_id": str(job["endpoint_id"]), "webhook.id": msg_id},
            ):
                result = await self.sender.send(job["url"], headers, body)
            _record_metric(result, job["type"])
        # The slot stays taken until the outcome is written (the lease says in flight till then).
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        await self._outcomes.put(Outcome(job, result, done))
        await done

    # --- writing outcomes ------------------------------------------------------------------------
    async def _record_loop(self) -> None:
        while True:
            batch = [await self._outcomes.get()]
            while len(batch) < RECORD_BATCH and not self._outcomes.empty():
                batch.append(self._outcomes.get_nowait())
            error: Exception | None = None
            for attempt in range(RECORD_RETRIES):
                try:
                    await self.record(batch)
                    error = None
                    break
                except (OSError, SQLAlchemyError, asyncpg.PostgresError) as exc:
                    # The attempts happened: try hard to write them, or their leases lapse and
                    # the events are sent again (same webhook-id, but still a repeat).
                    error = exc
                    log.warning("webhooks: could not record %d outcomes (%r), try %d", len(batch), exc, attempt + 1)
                    await asyncio.sleep(min(0.5 * 2**attempt, 10.0))
                except Exception as exc:  # a bug: never let it stop the recorder (every delivery waits on it)
                    log.exception("webhooks: recording %d outcomes failed", len(batch))
                    error = exc
                    break
            for o in batch:
                if o.done.done():
                    continue
                if error is None:
                    o.done.set_result(None)
                else:
                    o.done.set_exception(error)

    def _plan(self, o: Outcome) -> tuple[str, datetime | None]:
        """(delivery status, next attempt) after this outcome."""
        s, r = self.settings, o.result
        if r.success:
            return "delivered", None
        if r.status_code == 410:
            # Left pending behind the disabled endpoint: if the owner re-enables it, nothing was lost.
            return "pending", datetime.now(UTC)
        if o.job["probe"]:
            return "pending", None  # a failed probe leaves the delivery on its own schedule
        delay = next_delay(
            o.job["retry_count"] + 1, s.webhooks_retry_schedule_seconds, scale=s.webhooks_retry_scale,
            jitter=s.webhooks_retry_jitter, retry_after=r.retry_after,
            retry_after_max=s.webhooks_retry_after_max_seconds,
        )
        if delay is None:
            return "failed", None
        return "pending", datetime.now(UTC) + timedelta(seconds=delay)

    async def record(self, batch: list[Outcome]) -> None:
        async with self.db.uow() as uow:
            await repo.scope_system(uow.conn)
            # Deliveries of an endpoint deleted meanwhile are gone with it: nothing to record.
            # The others are locked against deletion until this transaction ends.
            existing = await repo.lock_deliveries(uow.conn, [o.job["id"] for o in batch],
                                                  [o.job["endpoint_id"] for o in batch])
            await self._record(uow, [o for o in batch if o.job["id"] in existing])
        self.sent += sum(1 for o in batch if o.result.success)

    async def _record(self, uow: Any, batch: list[Outcome]) -> None:
        if not batch:
            return
        attempts, finishes = [], []
        last_ok: dict[uuid.UUID, bool] = {}  # endpoint -> was its latest outcome a success?
        failure_run_start: dict[uuid.UUID, datetime] = {}
        gone: set[uuid.UUID] = set()
        for o in batch:
            job, r = o.job, o.result
            status, next_at = self._plan(o)
            attempts.append({
                "webhook_event_id": job["id"], "endpoint_id": job["endpoint_id"], "store_id": job["store_id"],
                "attempt_number": job["attempt_count"] + 1, "url": redact_url(job["url"]),
                "started_at": r.started_at, "duration_ms": int(r.duration * 1000), "status_code": r.status_code,
                "success": r.success, "response_body": r.response_body, "error": r.error, "worker": self.name,
            })
            finishes.append({
                "ok": r.success, "status": status, "next": next_at, "started": r.started_at, "code": r.status_code,
                "err": r.error, "id": job["id"], "token": self.token, "probe": job["probe"],
            })
            ep = job["endpoint_id"]
            if r.success:
                failure_run_start.pop(ep, None)
            else:
                failure_run_start.setdefault(ep, r.started_at)
                if r.status_code == 410:
                    gone.add(ep)
            last_ok[ep] = r.success
        await repo.insert_attempts(uow.conn, attempts)
        await repo.finish_attempts(uow.conn, finishes)
        await repo.endpoints_recovered(uow.conn, [ep for ep, ok in last_ok.items() if ok])
        failing = await repo.endpoints_failed(uow.conn, failure_run_start, self.probe_interval)
        window = timedelta(seconds=self.settings.webhooks_disable_after_seconds)
        now = datetime.now(UTC)
        for ep in sorted(set(failing) | gone):
            reason = "gone" if ep in gone else "failing" if now - failing[ep] >= window else None
            if reason is not None:
                last = next(o.result for o in reversed(batch) if o.job["endpoint_id"] == ep)
                await self._disable(uow, ep, reason, failing.get(ep), last)

    async def _disable(self, uow: Any, endpoint_id: uuid.UUID, reason: str, failing_since: datetime | None,
                       last: AttemptResult) -> None:
        row = await repo.disable_endpoint(uow.conn, endpoint_id, reason)
        if row is None:
            return  # already inactive
        log.warning("webhooks: endpoint %s disabled (%s)", row["id"], reason)
        uow.emit(EndpointDisabled(endpoint_id=row["id"], store_id=row["store_id"], url=redact_url(row["url"]),
                                  reason=reason, failing_since=failing_since, last_status_code=last.status_code,
                                  last_error=last.error),
                 store_id=row["store_id"])


def _record_metric(result: AttemptResult, event_type: str) -> None:
    # webhook_deliveries_total{event_type, outcome} and webhook_delivery_duration_seconds on /metrics.
    telemetry.record_webhook_delivery(result.outcome, result.duration, event_type=event_type)


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
