"""RabbitMQ topology, publishing and consuming with FastStream.

Topology (names prefixed by the broker namespace, `dropslot` by default):
- `<ns>.events`: the one durable topic exchange; routing key = event type.
- `<ns>.<service>.<handler>`: a quorum queue per consumer, bound by pattern, with a
  delivery limit and a dead-letter exchange, so a message that keeps crashing the
  process ends in the DLQ instead of looping.
- `<queue>.retry.<n>`: delay queues (message TTL growing with n) that dead-letter back
  into the consumer queue. A handler error moves the message one step along; after
  the last step it goes to `<queue>.dlq`, where an operator can list and replay it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from dropslot_contracts import Envelope
from faststream import AckPolicy
from faststream.rabbit import ExchangeType, RabbitBroker, RabbitExchange, RabbitQueue
from faststream.rabbit.annotations import RabbitMessage
from faststream.rabbit.schemas import Channel, QueueType
from opentelemetry.trace import SpanKind

from . import context, inbox, telemetry
from .context import CallContext
from .settings import KitSettings

if TYPE_CHECKING:
    from .db import Database, UnitOfWork

log = logging.getLogger("dropslot.broker")

Handler = Callable[["Envelope", "UnitOfWork"], Awaitable[None]]
ATTEMPT_HEADER = "x-dropslot-attempt"


def events_exchange(settings: KitSettings) -> RabbitExchange:
    return RabbitExchange(f"{settings.broker_namespace}.events", type=ExchangeType.TOPIC, durable=True)


def dlx_exchange(settings: KitSettings) -> RabbitExchange:
    return RabbitExchange(f"{settings.broker_namespace}.dlx", type=ExchangeType.DIRECT, durable=True)


def make_broker(settings: KitSettings) -> RabbitBroker:
    return RabbitBroker(
        settings.rabbit_url,
        # Per-message INFO logging costs about a third of consumer throughput.
        log_level=logging.DEBUG,
        graceful_timeout=10.0,
        reconnect_interval=1.0,
        fail_fast=False,
        app_id=f"dropslot-{settings.service}",
    )


@dataclass
class Consumer:
    name: str
    patterns: tuple[str, ...]
    fn: Handler
    prefetch: int | None = None


@dataclass
class EventConsumers:
    """What a service consumes. The kit declares queues, retries, DLQ and the inbox."""

    service: str
    consumers: list[Consumer] = field(default_factory=list)

    def on(self, *patterns: str, name: str | None = None, prefetch: int | None = None) -> Callable[[Handler], Handler]:
        def register(fn: Handler) -> Handler:
            self.consumers.append(Consumer(name or fn.__name__, patterns, fn, prefetch))
            return fn

        return register


class Messaging:
    """Owns the broker for one service process: publishes and runs the consumers."""

    def __init__(self, settings: KitSettings, db: Database | None, consumers: EventConsumers | None = None):
        self.settings = settings
        self.db = db
        self.consumers = consumers.consumers if consumers else []
        self.broker = make_broker(settings)
        self.exchange = events_exchange(settings)
        self.dlx = dlx_exchange(settings)
        self._subscribers: dict[str, Any] = {}
        for consumer in self.consumers:
            self._subscribe(consumer)

    def queue_name(self, consumer: Consumer) -> str:
        return f"{self.settings.broker_namespace}.{self.settings.service}.{consumer.name}"

    def _subscribe(self, consumer: Consumer) -> None:
        qname = self.queue_name(consumer)
        queue = RabbitQueue(
            qname,
            queue_type=QueueType.QUORUM,
            durable=True,
            arguments={
                "x-delivery-limit": self.settings.delivery_limit,
                "x-dead-letter-exchange": self.dlx.name,
                "x-dead-letter-routing-key": qname,
            },
        )
        sub = self.broker.subscriber(
            queue,
            self.exchange,
            ack_policy=AckPolicy.NACK_ON_ERROR,
            channel=Channel(prefetch_count=consumer.prefetch or self.settings.prefetch),
            no_reply=True,
        )

        async def on_message(message: RabbitMessage) -> None:
            await self._handle(consumer, qname, message)

        sub(on_message)
        self._subscribers[qname] = sub

    async def start(self) -> None:
        await self.broker.start()
        await self.declare_topology()

    async def declare_topology(self) -> None:
        await self.broker.declare_exchange(self.exchange)
        await self.broker.declare_exchange(self.dlx)
        for consumer in self.consumers:
            qname = self.queue_name(consumer)
            # Queue bindings: one per pattern (FastStream binds only one routing key itself).
            queue = await self.broker.declare_queue(self._subscribers[qname].queue)
            exchange = await self.broker.declare_exchange(self.exchange)
            for pattern in consumer.patterns:
                await queue.bind(exchange, routing_key=pattern)
            dlq = await self.broker.declare_queue(
                RabbitQueue(f"{qname}.dlq", queue_type=QueueType.QUORUM, durable=True)
            )
            await dlq.bind(await self.broker.declare_exchange(self.dlx), routing_key=qname)
            for i, delay in enumerate(self.settings.retry_delays_ms):
                await self.broker.declare_queue(
                    RabbitQueue(
                        f"{qname}.retry.{i}",
                        durable=True,
                        arguments={
                            "x-message-ttl": delay,
                            "x-dead-letter-exchange": "",
                            "x-dead-letter-routing-key": qname,
                        },
                    )
                )

    async def stop(self) -> None:
        await self.broker.stop()

    async def publish_raw(
        self, routing_key: str, body: bytes, *, message_id: str, headers: dict[str, Any], exchange: Any = None
    ) -> None:
        await self.broker.publish(
            body,
            exchange=self.exchange if exchange is None else exchange,
            routing_key=routing_key,
            message_id=message_id,
            headers=headers,
            content_type="application/json",
            persist=True,
            timeout=self.settings.publish_timeout_seconds,
        )

    async def _handle(self, consumer: Consumer, qname: str, message: Any) -> None:
        raw: bytes = message.body
        headers: dict[str, Any] = dict(message.headers or {})
        try:
            env = Envelope.model_validate_json(raw)
        except ValueError as exc:
            log.error("poison message on %s (not an envelope): %s", qname, exc)
            await self._dead_letter(consumer, qname, raw, headers, f"not an envelope: {exc}")
            return
        token = context.set_current(
            CallContext(actor=env.actor, correlation_id=env.correlation_id, request_id=env.correlation_id)
        )
        try:
            # The relay's publish span (message header) is the nearest parent; the envelope's own
            # trace context (the request that emitted it) is the fallback, e.g. for a hand-made
            # publish or a replay from the dead-letter queue that lost its headers.
            carrier: dict[str, Any] = env.trace.model_dump(exclude_none=True)
            if headers.get("traceparent"):
                carrier = {k: headers[k] for k in ("traceparent", "tracestate") if headers.get(k)}
            parent = telemetry.extract_context(carrier)
            with telemetry.tracer().start_as_current_span(
                f"consume {env.type}", context=parent, kind=SpanKind.CONSUMER,
                attributes={"messaging.system": "rabbitmq", "messaging.destination.name": qname,
                            "messaging.message.id": str(env.id)},
            ):
                await self._run_handler(consumer, env)
            telemetry.MESSAGES_CONSUMED.labels(self.settings.service, consumer.name, "ok").inc()
        except Exception as exc:  # the handler failed: retry later, or dead-letter
            telemetry.MESSAGES_CONSUMED.labels(self.settings.service, consumer.name, "error").inc()
            await self._retry_or_dead_letter(consumer, qname, raw, headers, exc, str(env.id))
        finally:
            context.reset(token)

    async def _run_handler(self, consumer: Consumer, env: Envelope) -> None:
        if self.db is None:
            await consumer.fn(env, None)  # type: ignore[arg-type]
            return
        async with self.db.uow(tenant_key=env.tenant_key) as uow:
            if await inbox.claim(uow.conn, env.id, consumer.name):
                await consumer.fn(env, uow)

    async def _retry_or_dead_letter(
        self, consumer: Consumer, qname: str, raw: bytes, headers: dict[str, Any], exc: Exception, msg_id: str
    ) -> None:
        attempt = int(headers.get(ATTEMPT_HEADER, 0) or 0)
        headers = {**headers, "x-dropslot-error": f"{type(exc).__name__}: {exc}"[:500]}
        if attempt < len(self.settings.retry_delays_ms):
            log.warning("handler %s failed (attempt %d), retrying: %r", consumer.name, attempt + 1, exc)
            telemetry.MESSAGES_RETRIED.labels(self.settings.service, consumer.name).inc()
            await self.publish_raw(
                f"{qname}.retry.{attempt}", raw, message_id=msg_id,
                headers={**headers, ATTEMPT_HEADER: attempt + 1}, exchange="",
            )
        else:
            log.error("handler %s failed %d times, dead-lettering: %r", consumer.name, attempt + 1, exc)
            await self._dead_letter(consumer, qname, raw, headers, str(exc), msg_id)

    async def _dead_letter(
        self, consumer: Consumer, qname: str, raw: bytes, headers: dict[str, Any], reason: str, msg_id: str = ""
    ) -> None:
        telemetry.MESSAGES_DEAD.labels(self.settings.service, consumer.name).inc()
        await self.publish_raw(
            qname, raw, message_id=msg_id, headers={**headers, "x-dropslot-error": reason[:500]}, exchange=self.dlx
        )

    async def consumers_attached(self) -> dict[str, bool]:
        """Per queue: is our consumer registered on the broker right now (not just declared)?"""
        out: dict[str, bool] = {}
        for qname, sub in self._subscribers.items():
            attached = getattr(sub, "_consumer_tag", None) is not None
            if attached:
                try:
                    q = await asyncio.wait_for(self._passive_queue(qname), timeout=2)
                    attached = (q.declaration_result.consumer_count or 0) > 0
                except Exception as exc:
                    log.debug("readiness probe of %s failed: %r", qname, exc)
                    attached = False
            out[qname] = attached
        return out

    async def _passive_queue(self, qname: str) -> Any:
        # FastStream's declarer caches declarations; readiness needs the broker's answer now.
        # A short-lived channel each time: a kept one can be left half-open by a cancelled
        # check during an outage and then report "detached" forever.
        connection = self.broker._connection  # noqa: SLF001  (no public accessor in FastStream 0.7)
        channel = await connection.channel()
        try:
            return await channel.declare_queue(qname, passive=True)
        finally:
            with contextlib.suppress(Exception):
                await channel.close()

    async def ping(self) -> bool:
        return await self.broker.ping(timeout=2.0)
