"""RabbitMQ topology, publishing and consuming with FastStream.

Topology (names prefixed by the broker namespace, `dropslot` by default):
- `<ns>.events`: the one durable topic exchange; routing key = event type.
- `<ns>.<service>.<handler>`: a quorum queue per consumer, bound by pattern, with a
  delivery limit and a dead-letter exchange, so a message that keeps crashing the
  process ends in the DLQ instead of looping.
- `<queue>.retry.<n>`: delay queues (message TTL growing with n) that dead-letter back
  into the consumer queue. A handler error moves the message one step along; after
  the last step it goes to `<queue>.dlq`, where an operator can list and replay it.

Consuming is batched (group commit): deliveries of one consumer that arrive while its
transaction is in flight are handled together in the next one — one BEGIN/COMMIT, one
inbox statement, one outbox write for the lot — and each is acknowledged only after that
commit. Under a storm this turns hundreds of small transactions a second into a few large
ones; when idle a batch is one message, so nothing waits. If anything in a batch fails, the
batch is rolled back and its messages are handled again one transaction each, so only the
failing one is retried or dead-lettered.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import aio_pika
import orjson
from aio_pika.abc import AbstractIncomingMessage
from dropslot_contracts import Envelope
from faststream.rabbit import ExchangeType, RabbitBroker, RabbitExchange, RabbitQueue
from faststream.rabbit.schemas import QueueType
from opentelemetry.trace import SpanKind, StatusCode
from pydantic import TypeAdapter

from . import context, inbox, telemetry
from .context import CallContext
from .outbox import CC_HEADER, EVENTS_HEADER
from .settings import KitSettings

if TYPE_CHECKING:
    from .db import Database, UnitOfWork

log = logging.getLogger("dropslot.broker")

Handler = Callable[["Envelope", "UnitOfWork"], Awaitable[None]]
Wants = Callable[[str, dict[str, Any]], bool]  # (event type, its data), read from the JSON
ManyHandler = Callable[[list["Envelope"], "UnitOfWork"], Awaitable[None]]
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


def topic_matches(pattern: str, key: str) -> bool:
    """Whether a topic exchange routes `key` to a binding of `pattern`: words split by dots, `*`
    stands for exactly one word, `#` for zero or more."""
    words, keys = pattern.split("."), key.split(".")

    def match(i: int, j: int) -> bool:
        if i == len(words):
            return j == len(keys)
        if words[i] == "#":
            return any(match(i + 1, k) for k in range(j, len(keys) + 1))
        return j < len(keys) and words[i] in ("*", keys[j]) and match(i + 1, j + 1)

    return match(0, 0)


@dataclass
class Consumer:
    name: str
    patterns: tuple[str, ...]
    fn: Handler | None = None
    prefetch: int | None = None
    many: ManyHandler | None = None  # takes a whole batch at once (e.g. one multi-row INSERT)
    wants: Wants | None = None  # False: acknowledged unhandled, before any database work
    _binds: dict[str, bool] = field(default_factory=dict, repr=False)

    def binds(self, event_type: str) -> bool:
        """Whether this consumer's queue is bound to events of this type (a message of several
        events may also carry types the queue is not bound to: outbox.py)."""
        known = self._binds.get(event_type)
        if known is None:
            if len(self._binds) > 1000:  # types are few; a flood of odd ones must not grow this
                self._binds.clear()
            known = self._binds[event_type] = any(topic_matches(p, event_type) for p in self.patterns)
        return known


@dataclass
class EventConsumers:
    """What a service consumes. The kit declares queues, retries, DLQ and the inbox."""

    service: str
    consumers: list[Consumer] = field(default_factory=list)

    def on(self, *patterns: str, name: str | None = None, prefetch: int | None = None,
           wants: Wants | None = None) -> Callable[[Handler], Handler]:
        """A handler called once per event, inside the (batch's) transaction.

        `wants(type, data)`, if given, picks the events the handler acts on out of those its
        patterns bind (when a routing key cannot tell, e.g. free and paid reservations): the
        others are acknowledged without a transaction or an inbox row. It sees the event's
        `type` and `data` as the message's JSON has them, before the envelope is validated
        (validating a free drop's storm of reservations only to drop them was a third of
        payments' CPU), so it must be cheap, pure, and answer True for anything it does not
        recognise: malformed events then still reach validation, the retries and dead-lettering."""

        def register(fn: Handler) -> Handler:
            self.consumers.append(Consumer(name or fn.__name__, patterns, fn=fn, prefetch=prefetch, wants=wants))
            return fn

        return register

    def on_many(
        self, *patterns: str, name: str | None = None, prefetch: int | None = None
    ) -> Callable[[ManyHandler], ManyHandler]:
        """A handler called once per batch with the events not seen before, in delivery order.
        It runs with no per-event call context (actor, trace): for sinks that emit nothing."""

        def register(fn: ManyHandler) -> ManyHandler:
            self.consumers.append(Consumer(name or fn.__name__, patterns, many=fn, prefetch=prefetch))
            return fn

        return register


_ENVELOPES = TypeAdapter(list[Envelope])


def envelopes_in(body: bytes) -> list[Envelope]:
    """The events a message carries: one envelope, or a JSON array of envelopes (the outbox
    relay sends neighbouring events together). ValueError if neither."""
    if body.lstrip()[:1] == b"[":
        envs = _ENVELOPES.validate_json(body)
        if not envs:
            raise ValueError("an empty list of events")
        return envs
    return [Envelope.model_validate_json(body)]


def json_events_in(body: bytes) -> list[Any]:
    """The events a message carries as parsed JSON, not validated (what `wants` reads; taps and
    tools that do not validate). ValueError if the body is not JSON, or an empty array."""
    data = orjson.loads(body)  # orjson.JSONDecodeError is a ValueError
    if isinstance(data, list):
        if not data:
            raise ValueError("an empty list of events")
        return data
    return [data]


def _queue_description(consumer: Consumer) -> str:
    """What /asyncapi.json says about a consumer's queue, message framing included."""
    return (
        f"Events with routing keys {', '.join(consumer.patterns)}. A message body is one event "
        f"envelope (a JSON object), or, when the header {EVENTS_HEADER} = N is present, a JSON "
        "array of N envelopes: neighbouring events that the outbox relay sent together, routed by "
        f"the first one's type and by the other types it holds (header {CC_HEADER}). Only the "
        "envelopes whose type these routing keys bind are handled, each retried and "
        "dead-lettered on its own."
    )


def _wanted(consumer: Consumer, event: Any, several: bool) -> bool:
    """False only for an event that has a type and data to show it and that, in a message of
    several, has a type the consumer is not bound to, or that `wants` turns down."""
    if not isinstance(event, dict) or not isinstance(event.get("type"), str) or not isinstance(event.get("data"), dict):
        return True  # not an envelope: validation dead-letters it
    if several and not consumer.binds(event["type"]):
        return False
    if consumer.wants is None:
        return True
    try:
        return consumer.wants(event["type"], event["data"])
    except Exception:  # a bug in the filter: let the handler (and its retries) see the event
        log.exception("consumer %s: wants() failed on %s; handling it", consumer.name, event.get("id"))
        return True


@dataclass
class _Delivery:
    env: Envelope
    parent: Any  # the OpenTelemetry context the consume span continues
    done: asyncio.Future[None]


class _Batcher:
    """Collects one consumer's deliveries and hands them to `run` in batches, one at a time."""

    def __init__(self, run: Callable[[list[_Delivery]], Awaitable[None]], max_size: int, linger: float = 0.0):
        self._run = run
        self._max = max_size
        self._linger = linger
        self._busy = False  # the last batch had company: more is probably on its way
        self._pending: list[_Delivery] = []
        self._task: asyncio.Task[None] | None = None

    async def submit(self, env: Envelope, parent: Any) -> None:
        item = _Delivery(env, parent, asyncio.get_running_loop().create_future())
        self._pending.append(item)
        if self._task is None:
            self._task = asyncio.create_task(self._drain())
        await asyncio.shield(item.done)

    async def _drain(self) -> None:
        try:
            while self._pending:
                if self._busy and self._linger and len(self._pending) < self._max:
                    # Under load, wait a moment so the next transaction carries more: fewer,
                    # larger batches cost less per event. Idle, a lone event goes at once.
                    await asyncio.sleep(self._linger)
                batch, self._pending = self._pending[: self._max], self._pending[self._max :]
                self._busy = len(batch) > 1
                try:
                    await self._run(batch)
                except BaseException as exc:  # noqa: BLE001 - handed to every waiter of the batch
                    for item in batch:
                        if not item.done.done():
                            item.done.set_exception(exc)
                    if not isinstance(exc, Exception):
                        raise
        finally:
            self._task = None


class _Acks:
    """Acknowledges one consumer channel's deliveries in bulk: `basic.ack(multiple=True)` up to
    the highest tag below which every delivery is settled, once per turn of the event loop.

    A batch of 60 events was 60 ack frames, each a write to the socket and work for the broker
    (a sixth of a consumer's CPU in a storm); now it is one. Delivery tags on a channel count
    1, 2, 3, ... and each consumer has a channel of its own, so "everything up to T" is exactly
    the deliveries this consumer has seen; a delivery settled otherwise (nacked back to the
    queue) is passed over, and the tag sent is always one still to acknowledge. A delivery whose
    handling is still running holds back the acknowledgement of those after it (they wait in
    the channel's prefetch); a reconnect opens a new channel with its own count, and what was
    not acknowledged on the old one is redelivered (the inbox makes that harmless).
    """

    def __init__(self, channel: Any) -> None:
        self.channel = channel
        self.next_tag = 1  # the lowest delivery not yet acknowledged or otherwise settled
        self.ok: set[int] = set()
        self.passed: set[int] = set()
        self.scheduled = False
        self.sending: set[asyncio.Task[None]] = set()

    def done(self, tag: int) -> None:
        self.ok.add(tag)
        self._schedule()

    def settled_otherwise(self, tag: int) -> None:
        self.passed.add(tag)
        self._schedule()

    def _schedule(self) -> None:
        if not self.scheduled:
            self.scheduled = True
            asyncio.get_running_loop().call_soon(self.flush)

    def flush(self) -> None:
        self.scheduled = False
        tag, last_ok = self.next_tag, 0
        while True:
            if tag in self.ok:
                self.ok.discard(tag)
                last_ok = tag
            elif tag in self.passed:
                self.passed.discard(tag)
            else:
                break
            tag += 1
        self.next_tag = tag
        if last_ok:
            task = asyncio.create_task(self._send(last_ok))
            self.sending.add(task)
            task.add_done_callback(self.sending.discard)

    async def _send(self, tag: int) -> None:
        try:
            await self.channel.basic_ack(tag, multiple=True)
        except Exception as exc:  # noqa: BLE001 - the channel is gone: the broker redelivers
            log.warning("could not acknowledge deliveries up to %d (%r); they will be redelivered", tag, exc)

    async def drain(self) -> None:
        self.flush()
        if self.sending:
            await asyncio.wait(set(self.sending), timeout=5.0)


class Messaging:
    """Owns the broker for one service process: publishes and runs the consumers.

    FastStream connects (robustly) and declares the topology. Messages themselves go through
    aio-pika on that connection: one channel per consumer with its prefetch, one confirming
    channel for publishing. FastStream's per-message machinery (dependency injection,
    middlewares, a thread hop) cost more CPU than the handlers themselves during a storm, and
    the kit already does what it offered — decoding, retries, dead-lettering, the inbox,
    acknowledging after the commit. FastStream still describes the consumers for
    `/asyncapi.json` (on a broker that is never started).
    """

    def __init__(self, settings: KitSettings, db: Database | None, consumers: EventConsumers | None = None):
        self.settings = settings
        self.db = db
        self.consumers = consumers.consumers if consumers else []
        self.broker = make_broker(settings)
        self.spec_broker = make_broker(settings)  # documentation only: never started
        self.exchange = events_exchange(settings)
        self.dlx = dlx_exchange(settings)
        self._queues: dict[str, RabbitQueue] = {}
        self._attached: dict[str, tuple[Any, Any, str]] = {}  # queue -> (channel, queue, consumer tag)
        self._batchers: dict[str, _Batcher] = {}
        self._in_flight: set[asyncio.Task[Any]] = set()
        self._acks: dict[int, _Acks] = {}  # id(aiormq channel) -> its acknowledgements
        self._publish_channel: Any = None
        self._publish_targets: dict[str, Any] = {}
        # One opening of the publish channel at a time: publishes racing to open it each opened
        # their own, and messages sent on two channels may reach a queue out of order.
        self._publish_opening = asyncio.Lock()
        for consumer in self.consumers:
            self._describe(consumer)

    def queue_name(self, consumer: Consumer) -> str:
        return f"{self.settings.broker_namespace}.{self.settings.service}.{consumer.name}"

    def _describe(self, consumer: Consumer) -> None:
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
        self._queues[qname] = queue

        async def on_message(message: Any) -> None:  # the handler of the AsyncAPI description
            return None

        self.spec_broker.subscriber(queue, self.exchange, no_reply=True, title=qname,
                                    description=_queue_description(consumer))(on_message)

    async def start(self) -> None:
        await self.broker.start()
        await self.declare_topology()
        for consumer in self.consumers:
            await self._start_consumer(consumer)

    async def _start_consumer(self, consumer: Consumer) -> None:
        qname = self.queue_name(consumer)
        connection = self.broker._connection  # noqa: SLF001  (no public accessor in FastStream 0.7)
        if connection is None:
            raise ConnectionError("not connected to the broker")
        channel = await connection.channel()  # robust: re-opened, with its QoS and consumer, after a reconnect
        await channel.set_qos(prefetch_count=consumer.prefetch or self.settings.prefetch)
        queue = await channel.declare_queue(qname, passive=True)

        async def on_message(message: AbstractIncomingMessage) -> None:
            try:
                acks = self._acks_for(message.channel)
            except aio_pika.exceptions.ChannelInvalidStateError:
                return  # delivered on a channel closed since: the broker delivers it again
            task = asyncio.current_task()
            if task is not None:
                self._in_flight.add(task)
            tag = message.delivery_tag
            assert tag is not None
            try:
                await self._handle(consumer, qname, message)
            except Exception:
                # Not even the retry queue took it (broker trouble): back to the queue; the
                # queue's delivery limit dead-letters a message that keeps failing this way.
                log.exception("consumer %s could not settle a message; requeued", consumer.name)
                with contextlib.suppress(Exception):
                    await message.nack(requeue=True)
                acks.settled_otherwise(tag)
                return
            finally:
                if task is not None:
                    self._in_flight.discard(task)
            acks.done(tag)

        tag = await queue.consume(on_message, no_ack=False)
        self._attached[qname] = (channel, queue, tag)

    async def declare_topology(self) -> None:
        events = await self.broker.declare_exchange(self.exchange)
        dlx = await self.broker.declare_exchange(self.dlx)
        for consumer in self.consumers:
            qname = self.queue_name(consumer)
            # Queue bindings: one per pattern.
            queue = await self.broker.declare_queue(self._queues[qname])
            for pattern in consumer.patterns:
                await queue.bind(events, routing_key=pattern)
            dlq = await self.broker.declare_queue(
                RabbitQueue(f"{qname}.dlq", queue_type=QueueType.QUORUM, durable=True)
            )
            await dlq.bind(dlx, routing_key=qname)
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
        """Stop taking messages, let the ones in hand finish (bounded), then disconnect."""
        for channel, queue, tag in self._attached.values():
            with contextlib.suppress(Exception):
                if not channel.is_closed:
                    await queue.cancel(tag)
        if self._in_flight:
            await asyncio.wait(set(self._in_flight), timeout=10.0)
        for acks in list(self._acks.values()):
            await acks.drain()
        for channel, _, _ in self._attached.values():
            with contextlib.suppress(Exception):
                await channel.close()
        self._attached.clear()
        if self._publish_channel is not None:
            with contextlib.suppress(Exception):
                await self._publish_channel.close()
            self._publish_channel = None
            self._publish_targets.clear()
        await self.broker.stop()

    async def publish_raw(
        self, routing_key: str, body: bytes, *, message_id: str, headers: dict[str, Any], exchange: Any = None
    ) -> None:
        """Publish and wait for the broker's confirm. `exchange`: None = the events exchange, ""
        = the default exchange (straight to a queue), or a RabbitExchange (the DLX).

        Straight through aio-pika on a confirming channel of FastStream's connection: the
        outbox relay publishes every event of the system, and FastStream's publish path cost
        more CPU than the rest of the relay."""
        name = self.exchange.name if exchange is None else exchange if isinstance(exchange, str) else exchange.name
        target = await self._publish_exchange(name)
        message = aio_pika.Message(
            body, message_id=message_id, headers=headers, content_type="application/json",
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT, app_id=f"dropslot-{self.settings.service}",
        )
        await target.publish(message, routing_key=routing_key, mandatory=False,
                             timeout=self.settings.publish_timeout_seconds)

    async def _publish_exchange(self, name: str) -> Any:
        target = self._publish_targets.get(name)
        if target is not None and not target.channel.is_closed:
            return target  # no await on the way: publishes keep the order they were called in
        async with self._publish_opening:
            return await self._open_publish_exchange(name)

    async def _open_publish_exchange(self, name: str) -> Any:
        target = self._publish_targets.get(name)
        if target is None or target.channel.is_closed:
            if self._publish_channel is None or self._publish_channel.is_closed:
                connection = self.broker._connection  # noqa: SLF001  (no public accessor in FastStream 0.7)
                if connection is None:
                    raise ConnectionError("not connected to the broker")
                self._publish_channel = await connection.channel(publisher_confirms=True)
                self._publish_targets.clear()
            channel = self._publish_channel
            target = channel.default_exchange if name == "" else await channel.get_exchange(name, ensure=False)
            self._publish_targets[name] = target
        return target

    def _acks_for(self, channel: Any) -> _Acks:
        acks = self._acks.get(id(channel))
        if acks is None or acks.channel is not channel:
            # A new channel (first delivery, or re-opened after a reconnect); forget closed ones.
            self._acks = {k: a for k, a in self._acks.items() if not a.channel.is_closed}
            acks = self._acks[id(channel)] = _Acks(channel)
        return acks

    async def _handle(self, consumer: Consumer, qname: str, message: Any) -> None:
        raw: bytes = message.body
        headers: dict[str, Any] = dict(message.headers or {})
        headers.pop(CC_HEADER, None)  # how this message was routed; a retry goes to one queue
        try:
            if consumer.wants is None:
                envs = envelopes_in(raw)
                carried = len(envs)
                if carried > 1:  # the relay's: it may carry types this queue is not bound to
                    envs = [env for env in envs if consumer.binds(env.type)]
            else:
                # Events the handler does not want are acknowledged with the message, here, from
                # the JSON alone: not validated, no task each (payments and a free drop's storm).
                events = json_events_in(raw)
                carried = len(events)
                envs = [Envelope.model_validate(event) for event in events if _wanted(consumer, event, carried > 1)]
        except ValueError as exc:  # pydantic's ValidationError is one
            log.error("poison message on %s (not an envelope): %s", qname, exc)
            await self._dead_letter(consumer, qname, raw, headers, f"not an envelope: {exc}")
            return
        whole = len(envs) == carried  # the message's body is exactly the events to handle
        if not whole:
            telemetry.MESSAGES_CONSUMED.labels(self.settings.service, consumer.name, "skipped").inc(carried - len(envs))
            if not envs:
                return
        if len(envs) == 1 and whole:  # its body, array or not, is what a retry sends on
            await self._handle_one(consumer, qname, envs[0], headers, raw)
            return
        # Several events in one message (the outbox relay's): each is handled, and retried or
        # dead-lettered, on its own; together they still share the consumer's transactions.
        headers.pop(EVENTS_HEADER, None)
        results = await asyncio.gather(*(self._handle_one(consumer, qname, env, headers, None) for env in envs),
                                       return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                raise result  # not even the retry queue took one: the whole message goes back

    async def _handle_one(self, consumer: Consumer, qname: str, env: Envelope, headers: dict[str, Any],
                          raw: bytes | None) -> None:
        # The relay's publish span (message header) is the nearest parent; the envelope's own
        # trace context (the request that emitted it) is the fallback, e.g. for a hand-made
        # publish or a replay from the dead-letter queue that lost its headers.
        carrier: dict[str, Any] = env.trace.model_dump(exclude_none=True)
        if headers.get("traceparent"):
            carrier = {k: headers[k] for k in ("traceparent", "tracestate") if headers.get(k)}
        parent = telemetry.extract_context(carrier)
        try:
            if self.db is None:
                await self._run_alone(consumer, env, parent)
            else:
                await self._batcher(consumer).submit(env, parent)
            telemetry.MESSAGES_CONSUMED.labels(self.settings.service, consumer.name, "ok").inc()
        except Exception as exc:  # the handler failed: retry later, or dead-letter
            telemetry.MESSAGES_CONSUMED.labels(self.settings.service, consumer.name, "error").inc()
            body = raw if raw is not None else env.model_dump_json().encode()  # alone from here on
            await self._retry_or_dead_letter(consumer, qname, body, headers, exc, str(env.id))

    def _batcher(self, consumer: Consumer) -> _Batcher:
        batcher = self._batchers.get(consumer.name)
        if batcher is None:
            size = self.settings.consume_batch_max if self.settings.consume_batching else 1

            async def run(batch: list[_Delivery]) -> None:
                await self._run_batch(consumer, batch)

            linger = self.settings.consume_batch_linger_ms / 1000
            batcher = self._batchers[consumer.name] = _Batcher(run, size, linger)
        return batcher

    @contextlib.contextmanager
    def _consuming(self, consumer: Consumer, env: Envelope, parent: Any) -> Any:
        """The call context (actor, correlation) and the CONSUMER span of one event."""
        token = context.set_current(
            CallContext(actor=env.actor, correlation_id=env.correlation_id, request_id=env.correlation_id)
        )
        try:
            with telemetry.tracer().start_as_current_span(**self._span_args(consumer, env, parent)) as span:
                yield span
        finally:
            context.reset(token)

    def _span_args(self, consumer: Consumer, env: Envelope, parent: Any) -> dict[str, Any]:
        return {
            "name": f"consume {env.type}", "context": parent, "kind": SpanKind.CONSUMER,
            "attributes": {"messaging.system": "rabbitmq", "messaging.destination.name": self.queue_name(consumer),
                           "messaging.message.id": str(env.id)},
        }

    async def _run_alone(self, consumer: Consumer, env: Envelope, parent: Any) -> None:
        """A consumer without a database (no inbox): the handler alone."""
        with self._consuming(consumer, env, parent):
            if consumer.many is not None:
                await consumer.many([env], None)  # type: ignore[arg-type]
            else:
                assert consumer.fn is not None
                await consumer.fn(env, None)  # type: ignore[arg-type]

    async def _run_batch(self, consumer: Consumer, batch: list[_Delivery]) -> None:
        """All of `batch` in one transaction; if that fails, each on its own, so only the
        failing event is retried. Resolves every delivery's future."""
        try:
            await self._transaction(consumer, batch)
        except Exception as exc:
            if len(batch) == 1:
                batch[0].done.set_exception(exc)
                return
            log.info("batch of %d on %s failed (%r): handling each alone", len(batch), consumer.name, exc)
            for item in batch:
                try:
                    await self._transaction(consumer, [item])
                except Exception as one:  # noqa: BLE001 - this event's own failure
                    item.done.set_exception(one)
                else:
                    item.done.set_result(None)
            return
        for item in batch:
            item.done.set_result(None)
        telemetry.CONSUME_BATCH.labels(self.settings.service, consumer.name).observe(len(batch))

    async def _transaction(self, consumer: Consumer, batch: list[_Delivery]) -> None:
        assert self.db is not None
        async with self.db.uow() as uow:
            fresh = await inbox.claim_many(uow.conn, [item.env.id for item in batch], consumer.name)
            todo = []
            for item in batch:  # a duplicate inside the batch has its effect once, too
                if item.env.id in fresh:
                    fresh.discard(item.env.id)
                    todo.append(item)
            if consumer.many is not None:
                if todo:
                    await self._run_many(consumer, todo, uow)
                return
            assert consumer.fn is not None
            for item in todo:
                with self._consuming(consumer, item.env, item.parent):
                    await uow.switch_tenant(item.env.tenant_key)
                    await consumer.fn(item.env, uow)

    async def _run_many(self, consumer: Consumer, todo: list[_Delivery], uow: UnitOfWork) -> None:
        """One call for the batch; each event still gets its CONSUMER span in its own trace."""
        assert consumer.many is not None
        tracer = telemetry.tracer()
        spans = [tracer.start_span(**self._span_args(consumer, item.env, item.parent)) for item in todo]
        try:
            await consumer.many([item.env for item in todo], uow)
        except Exception as exc:
            for span in spans:
                span.record_exception(exc)
                span.set_status(StatusCode.ERROR)
            raise
        finally:
            for span in spans:
                span.end()

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
        for consumer in self.consumers:
            qname = self.queue_name(consumer)
            attached = qname in self._attached
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
        if connection is None:
            raise ConnectionError("not connected to the broker")
        channel = await connection.channel()
        try:
            return await channel.declare_queue(qname, passive=True)
        finally:
            with contextlib.suppress(Exception):
                await channel.close()

    async def ping(self) -> bool:
        return await self.broker.ping(timeout=2.0)
