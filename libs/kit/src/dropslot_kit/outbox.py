"""Outbox relay: publishes committed events with publisher confirms.

Woken by LISTEN/NOTIFY (a statement trigger on the outbox), with a polling fallback.
Rows are claimed with `FOR UPDATE SKIP LOCKED`, so several replicas relay safely; a
batch is published with all its confirms in flight at once (one-at-a-time confirms cap
a drop at ~1,300 events/s here) and each publish is bounded by a timeout, because a
publish can hang while the broker connection is down. Published rows are deleted in
the same transaction that claimed them; a crash before that commit republishes, which
the consumers' inbox makes harmless.

Consecutive events (in outbox order) travel as one message whose body is a JSON array of their
envelopes (header `x-dropslot-events`), up to `outbox_message_events`. In a drop storm the
broker and every consumer otherwise pay their per-message cost (frames, properties, a task, a
quorum-queue write, an ack) for each of thousands of small events: measured here ~0.3-0.5 ms of
consumer CPU and ~0.7 ms of RabbitMQ per event, more than booking spends on the reservation.

A message may carry events of several types: its routing key is its first event's type and
RabbitMQ's sender-selected distribution header `CC` lists the others, so the topic exchange
routes it to every queue bound to any of them, once per queue. A free reservation writes
`created` then `confirmed`: grouped by routing key alone, every reserve transaction was two
messages, and neighbouring transactions could never share one. Each consumer handles only the
events its own patterns bind (`broker.topic_matches`) and acknowledges the others with the
message. The kit's consumers handle each event of a message on its own (inbox, retries and
dead-lettering per event). Order is kept: a message is a run of the outbox, and messages are
published in outbox order. While tracing is on, every event still travels alone, with its own
publish span.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
from opentelemetry.trace import SpanKind

from . import telemetry
from .settings import KitSettings
from .waiting import woken

log = logging.getLogger("dropslot.outbox")

Publish = Callable[[str, bytes, str, dict[str, Any]], Awaitable[None]]
EVENTS_HEADER = "x-dropslot-events"  # a message carrying this many envelopes as a JSON array
CC_HEADER = "CC"  # RabbitMQ's sender-selected distribution: more routing keys for one message


def _body(row: asyncpg.Record) -> bytes:
    return row["envelope"].encode() if isinstance(row["envelope"], str) else bytes(row["envelope"])


class OutboxRelay:
    def __init__(self, settings: KitSettings, publish: Publish, *, schema: str | None = None):
        self.settings = settings
        self.schema = schema or settings.service
        self.publish = publish
        self.channel = f"{self.schema}_outbox"
        self._wake = asyncio.Event()
        self._pool: asyncpg.Pool | None = None
        self._listener: asyncpg.Connection | None = None
        self.published = 0
        self.healthy = True

    def wake(self) -> None:
        """Relay now: for a writer that committed outbox rows without NOTIFY (the booking hot
        path skips it, NOTIFY serialises commits cluster-wide while a hot row is locked)."""
        self._wake.set()

    async def _connect(self) -> None:
        dsn = self.settings.plain_service_dsn()
        settings = {"search_path": self.schema, "application_name": f"dropslot-{self.settings.service}-relay"}
        if self._pool is None:
            self._pool = await asyncpg.create_pool(dsn, min_size=1, max_size=2, server_settings=settings)
        if self._listener is None or self._listener.is_closed():
            self._listener = await asyncpg.connect(dsn, server_settings=settings)
            await self._listener.add_listener(self.channel, lambda *_: self._wake.set())

    async def run(self) -> None:
        backoff = 0.5
        while True:
            try:
                await self._connect()
                self._wake.set()  # events may have been written while nobody listened
                while True:
                    self._wake.clear()
                    while (sent := await self.relay_once()) >= self.settings.outbox_batch:
                        pass
                    self.healthy = True
                    backoff = 0.5
                    if sent < 0:  # the broker refused: back off instead of spinning
                        await asyncio.sleep(1.0)
                        continue
                    await woken(self._wake, self.settings.outbox_poll_seconds)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.healthy = False
                log.warning("outbox relay for %s failed, retrying in %.1fs: %r", self.schema, backoff, exc)
                await self._close_listener()
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 10.0)

    async def relay_once(self) -> int:
        """Publish one batch. Returns how many were published, or -1 if publishing failed."""
        assert self._pool is not None
        async with self._pool.acquire() as conn, conn.transaction():
            rows = await conn.fetch(
                "SELECT id, routing_key, envelope, traceparent FROM outbox"
                " ORDER BY seq LIMIT $1 FOR UPDATE SKIP LOCKED",
                self.settings.outbox_batch,
            )
            if not rows:
                return 0
            groups = self._messages(rows)
            results = await asyncio.gather(*(self._publish_group(g) for g in groups), return_exceptions=True)
            done = [r["id"] for g, res in zip(groups, results, strict=True) if not isinstance(res, BaseException)
                    for r in g]
            failed = [(r["id"], repr(res)[:500]) for g, res in zip(groups, results, strict=True)
                      if isinstance(res, BaseException) for r in g]
            if done:
                await conn.execute("DELETE FROM outbox WHERE id = ANY($1::uuid[])", done)
                telemetry.MESSAGES_PUBLISHED.labels(self.settings.service).inc(len(done))
                self.published += len(done)
            if failed:
                await conn.executemany(
                    "UPDATE outbox SET attempts = attempts + 1, last_error = $2 WHERE id = $1", failed
                )
                log.warning("outbox: %d of %d publishes failed: %s", len(failed), len(rows), failed[0][1])
                return -1
            return len(done)

    def _messages(self, rows: list[asyncpg.Record]) -> list[list[asyncpg.Record]]:
        """Rows in outbox order, cut into runs of at most `outbox_message_events` (one message each)."""
        most = 1 if telemetry.tracing_enabled() else max(1, self.settings.outbox_message_events)
        return [rows[i : i + most] for i in range(0, len(rows), most)]

    async def _publish_group(self, rows: list[asyncpg.Record]) -> None:
        if len(rows) == 1:
            await self._publish_row(rows[0])
            return
        body = b"[" + b",".join(_body(r) for r in rows) + b"]"
        first = rows[0]["routing_key"]
        headers: dict[str, Any] = {EVENTS_HEADER: len(rows)}
        others = sorted({r["routing_key"] for r in rows} - {first})
        if others:
            headers[CC_HEADER] = others
        async with asyncio.timeout(self.settings.publish_timeout_seconds):
            await self.publish(first, body, str(rows[0]["id"]), headers)

    async def _publish_row(self, row: asyncpg.Record) -> None:
        headers: dict[str, Any] = {}
        if row["traceparent"]:
            headers["traceparent"] = row["traceparent"]
        body = _body(row)
        # The relay runs later, in another task: continue the trace stored in the row, so the
        # time an event waited in the outbox shows in the trace, and hand the consumer this
        # publish span as its parent (message header `traceparent`).
        traced = bool(row["traceparent"]) and telemetry.tracing_enabled()
        span = telemetry.continued_span(
            f"publish {row['routing_key']}", row["traceparent"], kind=SpanKind.PRODUCER,
            attributes={"messaging.system": "rabbitmq", "messaging.destination.name": row["routing_key"],
                        "messaging.message.id": str(row["id"])},
        ) if traced else contextlib.nullcontext()
        with span:
            if traced:
                telemetry.inject_headers(headers)
            async with asyncio.timeout(self.settings.publish_timeout_seconds):  # no task per row, unlike wait_for
                await self.publish(row["routing_key"], body, str(row["id"]), headers)

    async def measure_backlog(self) -> tuple[int, float]:
        """(unpublished events, age in seconds of the oldest); also sets the gauges."""
        assert self._pool is not None
        row = await self._pool.fetchrow(
            "SELECT count(*) AS n, COALESCE(EXTRACT(EPOCH FROM now() - min(created_at)), 0) AS age FROM outbox"
        )
        n, age = int(row["n"]), float(row["age"])
        telemetry.OUTBOX_BACKLOG.labels(self.settings.service).set(n)
        telemetry.OUTBOX_OLDEST_AGE.labels(self.settings.service).set(age)
        return n, age

    async def _close_listener(self) -> None:
        if self._listener is not None:
            with contextlib.suppress(Exception):
                await self._listener.close()
            self._listener = None

    async def close(self) -> None:
        await self._close_listener()
        if self._pool is not None:
            await self._pool.close()
            self._pool = None
