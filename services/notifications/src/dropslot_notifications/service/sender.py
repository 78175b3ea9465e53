"""The sender loop: renders and delivers PENDING notifications.

Runs in every replica (supervised by the kit). Each round leases a batch of due rows
(`FOR UPDATE SKIP LOCKED`, most urgent first) in a short transaction, delivers them
concurrently with no transaction open, then records each outcome (and emits
`notifications.notification.sent|failed`) in one transaction. The lease is guarded by the
attempt counter, so a replica whose lease ran out cannot overwrite a newer attempt.

Outcomes: delivered -> SENT; a transient failure -> PENDING again after a jittered
exponential backoff (until `max_attempts`, then FAILED); a permanent failure (template error,
5xx SMTP reply, invalid address, a provider's 4xx) -> FAILED at once. The error is kept in
`last_error` either way.

Waiting for data from other queues: an email whose recipient's contact is not known yet is
retried (up to `contact_wait_seconds`, then FAILED); a reservation message written before its
drop was known (`messages.AWAITING_DROP`) looks the drop up again each time it is claimed, and
is retried until it is there or `drop_wait_seconds` have passed since the row was written, then
sent without the drop's details. Both go through the same lease and fenced outcome as any retry.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import asyncpg
from dropslot_contracts.events.notifications import NotificationFailed, NotificationSent
from dropslot_kit.db import Database, UnitOfWork
from dropslot_kit.waiting import woken
from prometheus_client import Counter, Histogram

from ..adapters import repository as repo
from ..adapters.channels import Transport
from ..config import Settings
from ..domain import messages as msgs
from ..domain.failures import DeliveryFailure, PermanentFailure, TransientFailure
from ..domain.model import Channel, retry_delay
from ..rendering import Renderer

log = logging.getLogger("dropslot.notifications.sender")

WAKE_CHANNEL = "notifications_pending"

SENT = Counter("dropslot_notifications_sent_total", "Notifications delivered", ["channel", "template"])
FAILED = Counter("dropslot_notifications_failed_total", "Notifications given up on", ["channel", "template"])
RETRIED = Counter("dropslot_notifications_retried_total", "Delivery attempts that will be retried",
                  ["channel", "template"])
LATENCY = Histogram("dropslot_notifications_delivery_seconds", "From row created to delivered", ["channel"],
                    buckets=(0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 300, 1800))


@dataclass(frozen=True)
class Outcome:
    kind: str  # "sent" | "retry" | "failed"
    error: str | None = None
    recipient: str | None = None
    subject: str | None = None
    delay: float = 0.0


class Sender:
    def __init__(self, settings: Settings, db: Database, renderer: Renderer, transports: dict[Channel, Transport]):
        self.settings = settings
        self.db = db
        self.renderer = renderer
        self.transports = transports
        self._wake = asyncio.Event()
        self._listener: asyncpg.Connection | None = None
        self._sem = asyncio.Semaphore(settings.notifications_send_concurrency)

    # --- the loop -------------------------------------------------------------------------------
    async def run(self) -> None:
        try:
            while True:
                await self._ensure_listener()
                self._wake.clear()  # before the round: a wake-up during it means "go again"
                sent = await self.send_once()
                if sent >= self.settings.notifications_send_batch:
                    continue  # a backlog: keep going
                await woken(self._wake, self.settings.notifications_poll_seconds)
        finally:
            await self._close_listener()

    async def _ensure_listener(self) -> None:
        """LISTEN for new rows, so a waitlist offer leaves within milliseconds, not a poll
        interval. Failing to listen only costs latency: polling still runs."""
        if self._listener is not None and not self._listener.is_closed():
            return
        try:
            self._listener = await asyncpg.connect(
                self.settings.plain_service_dsn(),
                server_settings={"application_name": "dropslot-notifications-sender"},
            )
            await self._listener.add_listener(WAKE_CHANNEL, lambda *_: self._wake.set())
        except (OSError, asyncpg.PostgresError) as exc:
            log.warning("sender cannot LISTEN (%r); polling only", exc)
            self._listener = None

    async def _close_listener(self) -> None:
        if self._listener is not None:
            with contextlib.suppress(Exception):
                await self._listener.close()
            self._listener = None

    # --- one round --------------------------------------------------------------------------------
    async def send_once(self) -> int:
        s = self.settings
        async with self.db.uow() as uow:
            claimed = await repo.claim_due(uow.conn, s.notifications_send_batch, s.notifications_lease_seconds)
        if not claimed:
            return 0
        awaited = [d for n in claimed if (d := n.payload.get(msgs.AWAITING_DROP))]
        async with self.db.engine.connect() as conn:
            contacts = await repo.contacts_for(conn, [n.user_id for n in claimed])
            drops = await repo.drops_info(conn, awaited)
        outcomes = await asyncio.gather(*(self._guarded(n, contacts, drops) for n in claimed))
        async with self.db.uow() as uow:
            for n, outcome in zip(claimed, outcomes, strict=True):
                await self._record(uow, n, outcome)
        return len(claimed)

    async def _guarded(self, n: repo.Claimed, contacts: dict[uuid.UUID, repo.Contact],
                       drops: dict[str, msgs.DropInfo]) -> Outcome:
        async with self._sem:
            try:
                return await self.deliver(n, contacts.get(n.user_id), drops)
            except Exception as exc:  # a bug here must not take the batch down: retry later
                log.exception("unexpected error delivering notification %s", n.id)
                return self._retry_or_give_up(n, TransientFailure(f"internal error: {type(exc).__name__}: {exc}"))

    async def deliver(self, n: repo.Claimed, contact: repo.Contact | None,
                      drops: dict[str, msgs.DropInfo] | None = None) -> Outcome:
        """`drops`: the local copy of the drops that claimed rows await (see `_with_drop`)."""
        s = self.settings
        if contact is not None and contact.status == "deleted":
            return Outcome("failed", "the recipient's account is deleted")
        recipient = n.recipient
        if recipient is None and n.channel is Channel.EMAIL:
            recipient = contact.email if contact is not None else None
            if recipient is None:
                age = (datetime.now(UTC) - n.created_at).total_seconds()
                if age > s.notifications_contact_wait_seconds:
                    return Outcome("failed", f"no contact details for user {n.user_id} after {age:.0f}s")
                # Identity's events travel in another queue and may simply not be here yet.
                return self._retry_or_give_up(n, TransientFailure("recipient's contact details not known yet"))
        if recipient is None:
            return Outcome("failed", f"no {n.channel} address for the recipient")
        transport = self.transports.get(n.channel)
        if transport is None:
            return Outcome("failed", f"channel {n.channel} is not configured", recipient)
        payload, waiting = self._with_drop(n, drops or {})
        if waiting is not None:
            return waiting
        context = {
            **payload,
            "user": {"name": contact.name if contact else None, "email": contact.email if contact else None},
            "base_url": s.public_base_url.rstrip("/"),
            "notification_id": str(n.id),
        }
        try:
            rendered = self.renderer.render(n.template, n.channel, context)
        except PermanentFailure as exc:
            return Outcome("failed", exc.reason, recipient)
        try:
            await transport.send(notification_id=n.id, template=n.template, to=recipient, message=rendered)
        except DeliveryFailure as exc:
            if exc.permanent:
                return Outcome("failed", exc.reason, recipient, rendered.subject)
            out = self._retry_or_give_up(n, exc)
            return Outcome(out.kind, out.error, recipient, rendered.subject, out.delay)
        return Outcome("sent", None, recipient, rendered.subject)

    def _with_drop(self, n: repo.Claimed, drops: dict[str, msgs.DropInfo]) -> tuple[dict[str, Any], Outcome | None]:
        """The payload to render, or a retry while the drop it awaits may still come.

        Only rows written while their drop was unknown await one. Found now: the drop's part of
        the message (branch, store, time zone) is filled in from the local copy. Not found: retried
        with the usual backoff, never past the bound, so the last look is at the bound; after it
        the message goes out as written, without them. This never fails a message."""
        drop_id = n.payload.get(msgs.AWAITING_DROP)
        if drop_id is None:
            return n.payload, None
        drop = drops.get(str(drop_id))
        if drop is not None:
            return msgs.with_drop(n.payload, drop), None
        s = self.settings
        age = (datetime.now(UTC) - n.created_at).total_seconds()
        remaining = s.notifications_drop_wait_seconds - age
        if remaining > 0:
            # Catalog's events travel in another queue: the drop may simply not be here yet.
            return n.payload, Outcome("retry", f"waiting for the details of drop {drop_id} (not known yet)",
                                      delay=min(self._backoff(n), remaining))
        log.warning("notification %s (%s/%s): drop %s still not known after %.1fs; sending it without the "
                    "drop's details (branch, store, time zone)", n.id, n.template, n.channel, drop_id, age)
        return n.payload, None

    def _backoff(self, n: repo.Claimed) -> float:
        s = self.settings
        return retry_delay(n.attempts, base=s.notifications_retry_base_seconds, cap=s.notifications_retry_max_seconds)

    def _retry_or_give_up(self, n: repo.Claimed, exc: DeliveryFailure) -> Outcome:
        if n.attempts >= self.settings.notifications_max_attempts:
            return Outcome("failed", f"gave up after {n.attempts} attempts: {exc.reason}")
        return Outcome("retry", exc.reason, delay=self._backoff(n))

    async def _record(self, uow: UnitOfWork, n: repo.Claimed, o: Outcome) -> None:
        labels = (str(n.channel), n.template)
        if o.kind == "sent":
            if await repo.mark_sent(uow.conn, n, o.recipient, o.subject):
                SENT.labels(*labels).inc()
                LATENCY.labels(str(n.channel)).observe(max(0.0, time.time() - n.created_at.timestamp()))
                uow.emit(NotificationSent(notification_id=n.id, user_id=n.user_id, channel=str(n.channel),
                                          template=n.template))
        elif o.kind == "retry":
            if await repo.mark_retry(uow.conn, n, o.error or "", o.delay):
                RETRIED.labels(*labels).inc()
                log.info("notification %s (%s/%s) attempt %d failed, retrying in %.1fs: %s",
                         n.id, n.template, n.channel, n.attempts, o.delay, o.error)
        elif await repo.mark_failed(uow.conn, n, o.error or "failed", o.recipient, o.subject):
            FAILED.labels(*labels).inc()
            log.warning("notification %s (%s/%s) FAILED: %s", n.id, n.template, n.channel, o.error)
            uow.emit(NotificationFailed(notification_id=n.id, user_id=n.user_id, channel=str(n.channel),
                                        template=n.template, error=o.error or "failed"))
