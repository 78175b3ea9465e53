"""Outbox → RabbitMQ → inbox, against the real PostgreSQL and RabbitMQ.

A producer (the catalog schema) writes events in its transactions; a consumer (the audit
schema) records their effect in a probe table. Nothing of ours is mocked: the relay, the
topology, retries and the dead-letter queue are the kit's own.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid

import aio_pika
import orjson
import pytest
from dropslot_contracts import Envelope
from dropslot_contracts.events.catalog import ProductCreated, StoreUpdated
from dropslot_kit.broker import EventConsumers, Messaging, json_events_in, topic_matches
from dropslot_kit.db import Database
from dropslot_kit.dlq import peek
from dropslot_kit.outbox import CC_HEADER, EVENTS_HEADER, OutboxRelay
from dropslot_kit.settings import KitSettings
from dropslot_kit.testing import drop_test_resources, eventually, fresh_settings
from dropslot_kit.testproxy import TcpProxy
from prometheus_client import REGISTRY
from sqlalchemy import text


@pytest.fixture(scope="module")
def test_settings(infra):
    """This module's own database and broker namespace. The session's database may also serve a
    whole system started by another test, whose catalog relay would take the harness's events."""
    settings = fresh_settings(infra, "kitmsg")
    yield settings
    drop_test_resources(settings)


def store_event(name: str = "s", tenant: str = "t1") -> StoreUpdated:
    return StoreUpdated(store_id=uuid.uuid4(), tenant_key=tenant, name=name, slug=name)


def product_event(name: str) -> ProductCreated:
    """An event of another kind, which the harness's consumer (`catalog.store.*`) is not bound to
    but whose data has a `name` its handler would record."""
    return ProductCreated(product_id=uuid.uuid4(), store_id=uuid.uuid4(), name=name, sku=name, price_cents=100,
                          currency="EUR", is_active=True)


class Harness:
    """One producer and one consumer service, wired by the kit exactly as services are."""

    def __init__(self, settings, *, rabbit_url: str | None = None):
        self.handler = f"probe_{uuid.uuid4().hex[:8]}"
        self.fail_names: set[str] = set()
        self.skip_names: set[str] = set()
        s = settings.model_copy(update={"retry_delays_ms": [100, 200]})
        self.producer_settings = s.model_copy(update={"service": "catalog", **({"rabbit_url": rabbit_url} if rabbit_url else {})})
        self.consumer_settings = s.model_copy(update={"service": "audit"})
        self.producer_db = Database(self.producer_settings)
        self.consumer_db = Database(self.consumer_settings)
        consumers = EventConsumers("audit")

        @consumers.on("catalog.store.*", name=self.handler, wants=lambda _type, data: data["name"] not in self.skip_names)
        async def record(env: Envelope, uow) -> None:
            if env.data["name"] in self.fail_names:
                raise RuntimeError("poison")
            # Which transaction handled it, and which tenant row-level security saw.
            await uow.execute(
                "INSERT INTO kit_probe (event_id, handler, name, txid, tenant)"
                " VALUES (:e, :h, :n, txid_current(), current_setting('dropslot.tenant', true))",
                {"e": env.id, "h": self.handler, "n": env.data["name"]})

        self.producer = Messaging(self.producer_settings, self.producer_db)
        self.consumer = Messaging(self.consumer_settings, self.consumer_db, consumers)
        self.relay = OutboxRelay(self.producer_settings, self._publish)
        self.relay_task: asyncio.Task | None = None

    async def _publish(self, rk, body, mid, headers):
        await self.producer.publish_raw(rk, body, message_id=mid, headers=headers)

    async def start(self, *, relay: bool = True) -> None:
        async with self.consumer_db.engine.begin() as conn:
            await conn.execute(text(
                "CREATE TABLE IF NOT EXISTS kit_probe (event_id uuid, handler text, name text, txid bigint, tenant text,"
                " at timestamptz DEFAULT now())"
            ))
        await self.producer.start()
        await self.consumer.start()
        if relay:
            self.start_relay()

    def start_relay(self) -> None:
        self.relay_task = asyncio.create_task(self.relay.run())

    async def stop_relay(self) -> None:
        if self.relay_task:
            self.relay_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.relay_task
            self.relay_task = None
        await self.relay.close()

    async def stop(self) -> None:
        await self.stop_relay()
        await self.consumer.stop()
        await self.producer.stop()
        await self.producer_db.dispose()
        await self.consumer_db.dispose()

    async def emit(self, *names: str, tenant: str = "t1") -> list[uuid.UUID]:
        return await self.emit_events(*(store_event(n, tenant) for n in names), tenant=tenant)

    async def emit_events(self, *events, tenant: str = "t1") -> list[uuid.UUID]:
        """Events of any kind, written in one transaction, in this order."""
        async with self.producer_db.uow() as uow:
            envs = [uow.emit(e, tenant_key=tenant) for e in events]
        return [e.id for e in envs]

    async def rows(self) -> list[dict]:
        async with self.consumer_db.engine.connect() as conn:
            result = await conn.execute(
                text("SELECT name, txid, tenant FROM kit_probe WHERE handler = :h"), {"h": self.handler}
            )
            return [dict(r._mapping) for r in result]

    async def effects(self, handler: str | None = None) -> dict[str, int]:
        """What a consumer recorded in the probe table (the harness's own, or `handler`)."""
        async with self.consumer_db.engine.connect() as conn:
            rows = await conn.execute(
                text("SELECT name, count(*) FROM kit_probe WHERE handler = :h GROUP BY name"),
                {"h": handler or self.handler},
            )
            return {name: n for name, n in rows}

    async def outbox_count(self) -> int:
        async with self.producer_db.engine.connect() as conn:
            return (await conn.execute(text("SELECT count(*) FROM outbox"))).scalar_one()


@pytest.fixture
async def harness(test_settings):
    h = Harness(test_settings)
    await h.start()
    yield h
    await h.stop()


async def test_event_reaches_other_service_once_even_when_delivered_twice(harness, test_settings):
    [event_id] = await harness.emit("twice")
    await eventually(lambda: _has(harness, "twice"), what="first delivery")
    # Deliver the very same envelope again, as a redelivery after a lost ack would.
    env = Envelope.wrap(store_event("twice"), producer="catalog").model_copy(update={"id": event_id})
    await harness.producer.publish_raw(env.routing_key, env.model_dump_json().encode(),
                                       message_id=str(event_id), headers={})
    await harness.emit("marker")  # published after the duplicate; handled after it
    await eventually(lambda: _has(harness, "marker"), what="marker")
    assert (await harness.effects())["twice"] == 1


async def test_event_is_not_published_when_its_transaction_rolls_back(harness):
    with pytest.raises(RuntimeError):
        async with harness.producer_db.uow() as uow:
            uow.emit(store_event("rolled-back"))
            raise RuntimeError("business rule failed after emitting")
    await harness.emit("after-rollback")
    await eventually(lambda: _has(harness, "after-rollback"), what="later event")
    assert "rolled-back" not in await harness.effects()
    assert await harness.outbox_count() == 0


async def test_poison_message_is_dead_lettered_after_retries_while_others_flow(harness, test_settings):
    harness.fail_names.add("poison")
    await harness.emit("poison")
    await harness.emit("good-1", "good-2")
    await eventually(lambda: _has(harness, "good-1", "good-2"), what="later messages")
    qname = f"{test_settings.broker_namespace}.audit.{harness.handler}"

    async def dead() -> aio_pika.abc.AbstractIncomingMessage | None:
        conn = await aio_pika.connect(test_settings.rabbit_url)
        async with conn:
            ch = await conn.channel()
            q = await ch.declare_queue(f"{qname}.dlq", passive=True)
            msg = await q.get(fail=False, no_ack=True)
            return msg

    msg = await eventually(dead, timeout=20, what="message in the DLQ")
    assert Envelope.model_validate_json(msg.body).data["name"] == "poison"
    assert msg.headers["x-dropslot-attempt"] == 2  # two retries (100 ms, 200 ms), then dead-lettered
    assert "poison" in msg.headers["x-dropslot-error"]
    assert "poison" not in await harness.effects()


async def test_events_the_handler_does_not_want_are_acknowledged_without_touching_the_database(
        harness, test_settings):
    harness.skip_names.update({"free-1", "free-2", "free-3", "free-4"})
    skipped = await harness.emit("free-1", "free-2")
    await harness.emit("paid-1")
    # Wanted and unwanted events in one message (the relay sends neighbours together).
    skipped += (mixed := await harness.emit("free-3", "paid-2", "free-4"))[::2]
    await eventually(lambda: _has(harness, "paid-1", "paid-2"), what="the wanted events")
    assert await harness.effects() == {"paid-1": 1, "paid-2": 1}
    assert len(mixed) == 3
    async with harness.consumer_db.engine.connect() as conn:
        seen = (await conn.execute(text("SELECT event_id FROM inbox WHERE handler = :h AND event_id = ANY(:ids)"),
                                   {"h": harness.handler, "ids": skipped})).all()
    assert seen == []  # no inbox row: no transaction was spent on them
    await harness.consumer.stop()  # settles every acknowledgement
    conn = await aio_pika.connect(test_settings.rabbit_url)
    async with conn:
        queue = await (await conn.channel()).declare_queue(
            f"{test_settings.broker_namespace}.audit.{harness.handler}", passive=True)
        assert queue.declaration_result.message_count == 0  # acknowledged, not left behind or requeued


async def test_what_is_not_an_envelope_is_dead_lettered_though_wants_reads_it_first(harness, test_settings):
    """`wants` reads the JSON before validation: a body that is not JSON, and an event without a
    type and data to judge, still go to the dead-letter queue, and the events after them flow."""
    harness.skip_names.add("free")
    qname = f"{test_settings.broker_namespace}.audit.{harness.handler}"
    good = Envelope.wrap(store_event("free"), producer="catalog").model_dump(mode="json")
    for body in (b"not json", orjson.dumps([good, {"id": "no type, no data"}])):
        await harness.producer.publish_raw("catalog.store.updated", body, message_id=str(uuid.uuid4()), headers={})
    await harness.emit("after-poison")
    await eventually(lambda: _has(harness, "after-poison"), what="the event after the poison")

    async def both_dead():
        rows = await peek(test_settings, qname)
        return rows if len(rows) == 2 else None

    rows = await eventually(both_dead, timeout=20, what="both poison messages in the DLQ")
    assert all("not an envelope" in row["error"] for row in rows)
    assert "free" not in await harness.effects()


async def test_a_burst_is_handled_in_few_transactions_each_event_once(harness):
    names = [f"burst-{i}" for i in range(300)]
    await harness.emit(*names)
    await eventually(lambda: _has(harness, *names), timeout=30, what="all 300 events")
    rows = await harness.rows()
    assert sorted(r["name"] for r in rows) == sorted(names)  # each exactly once
    transactions = {r["txid"] for r in rows}
    assert len(transactions) < len(names) / 4, f"{len(transactions)} transactions for {len(names)} events"


async def test_deliveries_are_acknowledged_in_bulk_and_none_is_left_out(harness, test_settings, monkeypatch):
    """One basic.ack(multiple) per settled stretch instead of one frame per event; every
    delivery is covered before the consumer stops, so nothing comes back to the queue."""
    import aiormq

    acks: list[tuple[int, bool]] = []
    real = aiormq.Channel.basic_ack

    async def spy(self, delivery_tag, multiple=False, wait=True):
        acks.append((delivery_tag, multiple))
        return await real(self, delivery_tag, multiple=multiple, wait=wait)

    monkeypatch.setattr(aiormq.Channel, "basic_ack", spy)
    await harness.stop_relay()
    # One message per event, as when events do not neighbour one another.
    harness.relay.settings = harness.relay.settings.model_copy(update={"outbox_message_events": 1})
    names = [f"ack-{i}" for i in range(200)]
    await harness.emit(*names)
    harness.start_relay()
    await eventually(lambda: _has(harness, *names), timeout=30, what="all 200 events")

    async def all_acknowledged() -> bool:
        return bool(acks) and max(tag for tag, _ in acks) == 200

    await eventually(all_acknowledged, timeout=10, what="an acknowledgement covering delivery 200")
    assert all(multiple for _, multiple in acks) and len(acks) < 200 / 4, acks
    await harness.consumer.stop()  # unacknowledged deliveries would go back to the queue now
    conn = await aio_pika.connect(test_settings.rabbit_url)
    try:
        channel = await conn.channel()
        queue = await channel.declare_queue(f"{test_settings.broker_namespace}.audit.{harness.handler}", passive=True)
        assert queue.declaration_result.message_count == 0
    finally:
        await conn.close()


async def test_each_event_of_a_batch_runs_under_its_own_tenant(harness):
    """Row-level security in a batch: the tenant is switched per event, and cleared for none."""
    await harness.stop_relay()  # let them pile up, so they arrive as one batch
    await harness.emit(*[f"a-{i}" for i in range(20)], tenant="tenant-a")
    await harness.emit(*[f"b-{i}" for i in range(20)], tenant="tenant-b")
    async with harness.producer_db.uow() as uow:
        for i in range(20):
            uow.emit(StoreUpdated(store_id=uuid.uuid4(), tenant_key="x", name=f"none-{i}", slug="n"), tenant_key=None)
    harness.start_relay()
    names = [f"{p}-{i}" for p in ("a", "b", "none") for i in range(20)]
    await eventually(lambda: _has(harness, *names), timeout=30, what="all 60 events")
    rows = await harness.rows()
    want = {"a": "tenant-a", "b": "tenant-b", "none": ""}
    assert all(r["tenant"] == want[r["name"].split("-")[0]] for r in rows), rows
    assert len({r["txid"] for r in rows}) < len(rows)  # they did share transactions


async def test_a_failing_event_in_a_batch_fails_alone(harness, test_settings):
    """The poisoned event is retried and dead-lettered; its batch-mates each take effect once."""
    harness.fail_names.add("bad")
    await harness.stop_relay()
    names = [f"mate-{i}" for i in range(40)]
    await harness.emit(*names[:20], "bad", *names[20:])
    harness.start_relay()
    await eventually(lambda: _has(harness, *names), timeout=30, what="the batch-mates")
    qname = f"{test_settings.broker_namespace}.audit.{harness.handler}"

    dead = await eventually(lambda: peek(test_settings, qname), timeout=20, what="the bad event in the DLQ")
    assert len(dead) == 1 and "poison" in dead[0]["error"]
    assert dead[0]["type"] == "catalog.store.updated" and dead[0]["event_id"]  # that one event, alone
    effects = await harness.effects()
    assert "bad" not in effects and all(effects[n] == 1 for n in names)


async def test_neighbouring_events_of_one_kind_travel_in_one_message_in_order(harness, test_settings):
    conn = await aio_pika.connect(test_settings.rabbit_url)
    async with conn:
        channel = await conn.channel()
        exchange = await channel.get_exchange(f"{test_settings.broker_namespace}.events")
        tap = await channel.declare_queue(exclusive=True, auto_delete=True)
        await tap.bind(exchange, routing_key="catalog.store.*")
        messages: list[aio_pika.abc.AbstractIncomingMessage] = []

        async def keep(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            messages.append(message)

        await tap.consume(keep, no_ack=True)
        await harness.stop_relay()
        names = [f"kind-{i}" for i in range(150)]
        await harness.emit(*names)  # one transaction: 150 neighbours with one routing key
        harness.start_relay()
        await eventually(lambda: _has(harness, *names), timeout=30, what="every event handled")

        async def tapped() -> bool:
            return sum(len(json_events_in(m.body)) for m in messages) == 150

        await eventually(tapped, what="the tap")
    carried = [json_events_in(m.body) for m in messages]
    assert [len(c) for c in carried] == [100, 50]  # outbox_message_events per message
    assert [m.headers.get(EVENTS_HEADER) for m in messages] == [100, 50]
    assert [m.routing_key for m in messages] == ["catalog.store.updated"] * 2
    assert all(CC_HEADER not in m.headers for m in messages)  # one kind: no other routing key
    assert [e["data"]["name"] for c in carried for e in c] == names  # in outbox order
    assert (await harness.effects()) == dict.fromkeys(names, 1)


async def test_events_of_several_kinds_travel_together_and_each_queue_handles_only_its_own(harness, test_settings):
    """A run of the outbox is one message whatever its events' types: routed by its first event's
    type and, through RabbitMQ's `CC` header, by the others. A queue bound to only one of the types
    still gets it, once; its consumer handles the events of its type, each once, and acknowledges
    the others unhandled: with `wants` (the harness's consumer, `catalog.store.*`) and without (a
    second one, `catalog.product.*`)."""
    products_handler = f"products_{uuid.uuid4().hex[:8]}"
    consumers = EventConsumers("audit")

    @consumers.on("catalog.product.*", name=products_handler)
    async def record_product(env: Envelope, uow) -> None:
        await uow.execute("INSERT INTO kit_probe (event_id, handler, name) VALUES (:e, :h, :n)",
                          {"e": env.id, "h": products_handler, "n": env.data["name"]})

    products = Messaging(harness.consumer_settings, harness.consumer_db, consumers)
    await products.start()
    conn = await aio_pika.connect(test_settings.rabbit_url)
    try:
        channel = await conn.channel()
        exchange = await channel.get_exchange(f"{test_settings.broker_namespace}.events")
        taps: dict[str, list[aio_pika.abc.AbstractIncomingMessage]] = {"products": [], "both": []}
        # Bound only to the type that is never a message's first: it is reached by CC alone.
        only_products = await channel.declare_queue(exclusive=True, auto_delete=True)
        await only_products.bind(exchange, routing_key="catalog.product.created")
        # Bound to both types: still one copy of each message.
        both = await channel.declare_queue(exclusive=True, auto_delete=True)
        await both.bind(exchange, routing_key="catalog.store.updated")
        await both.bind(exchange, routing_key="catalog.product.created")
        for name, queue in (("products", only_products), ("both", both)):
            async def keep(message: aio_pika.abc.AbstractIncomingMessage, into=taps[name]) -> None:
                into.append(message)

            await queue.consume(keep, no_ack=True)

        await harness.stop_relay()
        stores = [f"store-{i}" for i in range(60)]
        goods = [f"product-{i}" for i in range(60)]
        order = [n for pair in zip(stores, goods, strict=True) for n in pair]  # store, product, store, ...
        ids = await harness.emit_events(*(store_event(n) if n.startswith("store") else product_event(n)
                                          for n in order))  # one transaction
        store_ids, product_ids = ids[::2], ids[1::2]
        harness.start_relay()

        async def handled() -> bool:
            return await _has(harness, *stores) and set(await harness.effects(products_handler)) >= set(goods)

        await eventually(handled, timeout=30, what="every event handled by the consumer of its type")

        async def tapped() -> bool:
            return all(sum(len(json_events_in(m.body)) for m in tap) == len(order) for tap in taps.values())

        await eventually(tapped, what="both taps")
        # Settle everything in hand (a stray event of the wrong type would be handled by now).
        await harness.consumer.stop()
        await products.stop()
    finally:
        await products.stop()
        await conn.close()

    for tap in taps.values():
        carried = [json_events_in(m.body) for m in tap]
        assert [len(c) for c in carried] == [100, 20]  # as few messages as the size cap allows
        assert [e["data"]["name"] for c in carried for e in c] == order  # in outbox order, kinds mixed
        assert [m.routing_key for m in tap] == ["catalog.store.updated"] * 2  # the first event's type
        assert [m.headers.get(CC_HEADER) for m in tap] == [["catalog.product.created"]] * 2  # the other one
        assert [m.headers.get(EVENTS_HEADER) for m in tap] == [100, 20]

    # Each consumer handled the events of its own type, each once, and none of the other's.
    assert await harness.effects() == dict.fromkeys(stores, 1)
    assert await harness.effects(products_handler) == dict.fromkeys(goods, 1)
    assert _skipped(harness.handler) == len(goods) and _skipped(products_handler) == len(stores)
    async with harness.consumer_db.engine.connect() as db:
        claimed = (await db.execute(
            text("SELECT handler, event_id FROM inbox WHERE handler = ANY(:h) AND event_id = ANY(:ids)"),
            {"h": [harness.handler, products_handler], "ids": ids})).all()
    assert {(h, e) for h, e in claimed} == ({(harness.handler, e) for e in store_ids}
                                            | {(products_handler, e) for e in product_ids})
    # Nothing retried, dead-lettered or left behind.
    conn = await aio_pika.connect(test_settings.rabbit_url)
    async with conn:
        channel = await conn.channel()
        for handler in (harness.handler, products_handler):
            qname = f"{test_settings.broker_namespace}.audit.{handler}"
            for name in (qname, f"{qname}.dlq"):
                queue = await channel.declare_queue(name, passive=True)
                assert queue.declaration_result.message_count == 0, name


@pytest.mark.parametrize("delays", [[100, 200], []], ids=["after-retries", "at-once"])
async def test_a_failing_event_of_a_mixed_message_is_retried_alone_without_its_routing(harness, test_settings, delays):
    """An event of a message of several types that fails is retried and dead-lettered alone: its
    own envelope, without the message's `CC` routing (a retry goes to one queue) or event count.
    (RabbitMQ itself drops `CC` when a retry queue dead-letters back with its routing key, so only
    a dead-lettering without retries shows the kit's own dropping of it.)"""
    harness.consumer.settings = harness.consumer.settings.model_copy(update={"retry_delays_ms": delays})
    harness.fail_names.add("bad")
    await harness.emit_events(product_event("p-0"), store_event("s-0"), store_event("bad"), product_event("p-1"),
                              store_event("s-1"))  # one message: routed by catalog.product.created, CC the stores
    await eventually(lambda: _has(harness, "s-0", "s-1"), what="the good store events")
    qname = f"{test_settings.broker_namespace}.audit.{harness.handler}"

    async def dead() -> aio_pika.abc.AbstractIncomingMessage | None:
        conn = await aio_pika.connect(test_settings.rabbit_url)
        async with conn:
            queue = await (await conn.channel()).declare_queue(f"{qname}.dlq", passive=True)
            return await queue.get(fail=False, no_ack=True)

    msg = await eventually(dead, timeout=20, what="the bad event in the DLQ")
    assert Envelope.model_validate_json(msg.body).data["name"] == "bad"  # one envelope, not the array
    assert msg.headers.get("x-dropslot-attempt", 0) == len(delays) and "poison" in msg.headers["x-dropslot-error"]
    assert CC_HEADER not in msg.headers and EVENTS_HEADER not in msg.headers
    assert await harness.effects() == {"s-0": 1, "s-1": 1}


async def test_first_publishes_racing_each_other_open_one_channel(harness):
    """The relay publishes a batch's messages at once. On a producer's first publish each of them
    found no channel and opened its own, so two messages of one routing key could reach a queue
    out of order (the test above failed now and then)."""
    name = harness.producer.exchange.name
    targets = await asyncio.gather(*(harness.producer._publish_exchange(name) for _ in range(5)))
    assert all(t is targets[0] for t in targets)


def test_the_relay_cuts_the_outbox_into_runs_whatever_their_routing_keys():
    relay = OutboxRelay(KitSettings(service="catalog", outbox_message_events=3), lambda *a: None)
    rows = [{"id": i, "routing_key": rk} for i, rk in enumerate("aaaabab")]
    assert [[r["id"] for r in g] for g in relay._messages(rows)] == [[0, 1, 2], [3, 4, 5], [6]]


async def test_a_message_is_routed_by_its_first_type_and_cc_lists_the_others_sorted():
    sent: list[tuple[str, bytes, str, dict]] = []

    async def publish(rk, body, mid, headers):
        sent.append((rk, body, mid, headers))

    relay = OutboxRelay(KitSettings(service="catalog"), publish)

    def rows(*keys: str) -> list[dict]:
        return [{"id": f"id-{i}", "routing_key": k, "envelope": orjson.dumps({"n": i}).decode(), "traceparent": None}
                for i, k in enumerate(keys)]

    await relay._publish_group(rows("m.b", "m.c", "m.b", "m.a", "m.c"))
    await relay._publish_group(rows("m.a", "m.a"))
    await relay._publish_group(rows("m.z"))
    (rk1, body1, mid1, h1), (rk2, _, _, h2), (rk3, _, _, h3) = sent
    assert (rk1, mid1, h1) == ("m.b", "id-0", {EVENTS_HEADER: 5, CC_HEADER: ["m.a", "m.c"]})
    assert orjson.loads(body1) == [{"n": i} for i in range(5)]
    assert (rk2, h2) == ("m.a", {EVENTS_HEADER: 2})  # one kind: no CC
    assert (rk3, h3) == ("m.z", {})  # alone: a plain envelope


@pytest.mark.parametrize(("pattern", "key", "routed"), [
    ("booking.#", "booking", True),
    ("booking.#", "booking.reservation.created", True),
    ("booking.*", "booking.reservation.created", False),
    ("booking.*", "booking", False),
    ("booking.*", "booking.reservation", True),
    ("*.reservation.*", "booking.reservation.created", True),
    ("*.reservation.*", "booking.reservation", False),
    ("#.created", "booking.reservation.created", True),
    ("#.created", "created", True),
    ("#.created", "booking.reservation.confirmed", False),
    ("booking.#.created", "booking.created", True),
    ("booking.#.created", "booking.a.b.created", True),
    ("booking.reservation.created", "booking.reservation.created", True),
    ("booking.reservation.created", "booking.reservation.confirmed", False),
    ("booking.reservation", "booking.reservation.created", False),
    ("#", "anything.at.all", True),
    ("#", "one", True),
    ("*", "one", True),
    ("*", "one.two", False),
    ("catalog.store.*", "catalog.product.created", False),
])
def test_topic_matches_routes_as_a_topic_exchange_does(pattern, key, routed):
    """`*` is exactly one word, `#` zero or more."""
    assert topic_matches(pattern, key) is routed


async def test_duplicates_inside_one_batch_take_effect_once(harness):
    env = Envelope.wrap(store_event("dup"), producer="catalog")
    body = env.model_dump_json().encode()
    await asyncio.gather(*(harness.producer.publish_raw(env.routing_key, body, message_id=str(env.id), headers={})
                           for _ in range(10)))
    await harness.emit("after-dups")
    await eventually(lambda: _has(harness, "dup", "after-dups"), what="the duplicated event")
    await asyncio.sleep(0.3)
    assert (await harness.effects())["dup"] == 1


async def test_dead_lettered_message_can_be_listed_and_replayed(harness, test_settings):
    from dropslot_kit.dlq import replay

    harness.fail_names.add("flaky")
    await harness.emit("flaky")
    qname = f"{test_settings.broker_namespace}.audit.{harness.handler}"

    async def in_dlq():
        return await peek(test_settings, qname)

    rows = await eventually(in_dlq, timeout=20, what="message in the DLQ")
    assert rows[0]["type"] == "catalog.store.updated" and "poison" in rows[0]["error"]
    harness.fail_names.clear()  # the bug is fixed; the operator replays
    assert await replay(test_settings, qname) == 1
    await eventually(lambda: _has(harness, "flaky"), what="replayed message applied")
    assert await peek(test_settings, qname) == []


async def test_consumers_reattach_after_the_broker_connection_drops(test_settings):
    from urllib.parse import urlsplit

    target = urlsplit(test_settings.rabbit_url)
    proxy = TcpProxy(target.hostname or "127.0.0.1", target.port or 5672)
    await proxy.start()
    h = Harness(test_settings)
    h.consumer_settings = h.consumer_settings.model_copy(
        update={"rabbit_url": f"amqp://guest:guest@127.0.0.1:{proxy.port}/"})
    h.consumer = Messaging(h.consumer_settings, h.consumer_db, h.consumer.consumers and _rebind(h))
    await h.start()
    try:
        assert all((await h.consumer.consumers_attached()).values())
        await proxy.stop()
        await eventually(lambda: _detached(h), timeout=20, what="readiness to notice the lost consumer")
        await proxy.start()
        await eventually(lambda: _attached(h), timeout=40, what="consumers to come back")
        await h.emit("after-reconnect")
        await eventually(lambda: _has(h, "after-reconnect"), timeout=20, what="delivery after reconnect")
    finally:
        await h.stop()
        await proxy.stop()


def _rebind(h: Harness) -> EventConsumers:
    consumers = EventConsumers("audit")
    for c in h.consumer.consumers:
        consumers.consumers.append(c)
    return consumers


async def _attached(h: Harness) -> bool:
    states = await h.consumer.consumers_attached()
    return bool(states) and all(states.values())


async def _detached(h: Harness) -> bool:
    return not await _attached(h)


async def test_events_written_while_relay_is_down_are_published_when_it_returns(harness):
    await harness.stop_relay()
    names = [f"offline-{i}" for i in range(50)]
    for chunk in range(0, 50, 10):
        await harness.emit(*names[chunk:chunk + 10])
    await asyncio.sleep(0.5)
    assert await harness.outbox_count() == 50 and not (await harness.effects())
    harness.start_relay()
    await eventually(lambda: _has(harness, *names), timeout=20, what="all 50 events")
    assert all(n == 1 for n in (await harness.effects()).values())
    assert await harness.outbox_count() == 0


async def test_events_written_while_broker_is_unreachable_are_published_when_it_returns(test_settings):
    """The producer reaches RabbitMQ through a proxy we cut: a real network outage."""
    from urllib.parse import urlsplit

    target = urlsplit(test_settings.rabbit_url)
    proxy = TcpProxy(target.hostname or "127.0.0.1", target.port or 5672)
    await proxy.start()
    h = Harness(test_settings, rabbit_url=f"amqp://guest:guest@127.0.0.1:{proxy.port}/")
    await h.start()
    try:
        await h.emit("before-outage")
        await eventually(lambda: _has(h, "before-outage"), what="event before the outage")
        await proxy.stop()  # the broker is now unreachable for the producer
        names = [f"outage-{i}" for i in range(20)]
        await h.emit(*names)
        await asyncio.sleep(1.5)
        assert "outage-0" not in await h.effects()
        assert await h.outbox_count() == 20  # kept, not lost
        await proxy.start()
        await eventually(lambda: _has(h, *names), timeout=40, what="events after the outage")
        assert all(n == 1 for n in (await h.effects()).values())
    finally:
        await h.stop()
        await proxy.stop()


async def _has(h: Harness, *names: str) -> bool:
    effects = await h.effects()
    return all(n in effects for n in names)


def _skipped(handler: str) -> float:
    """Events this consumer acknowledged unhandled (its metric)."""
    labels = {"service": "audit", "handler": handler, "outcome": "skipped"}
    return REGISTRY.get_sample_value("messages_consumed_total", labels) or 0


async def test_ready_is_a_503_problem_naming_what_is_down(test_settings):
    """A service whose broker link is cut says so on /ready instead of failing the check itself."""
    from urllib.parse import urlsplit

    import httpx
    from dropslot_kit.app import create_service_app

    target = urlsplit(test_settings.rabbit_url)
    proxy = TcpProxy(target.hostname or "127.0.0.1", target.port or 5672)
    await proxy.start()
    settings = test_settings.model_copy(update={"service": "audit", "rabbit_url": f"amqp://guest:guest@127.0.0.1:{proxy.port}/"})
    consumers = EventConsumers("audit")

    @consumers.on("catalog.store.*", name=f"ready_{uuid.uuid4().hex[:6]}")
    async def noop(env, uow) -> None:
        return None

    app = create_service_app(settings, title="probe", consumers=consumers)
    try:
        async with app.router.lifespan_context(app):
            client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://probe")
            assert (await client.get("/ready")).status_code == 200
            await proxy.stop()

            async def not_ready():
                r = await client.get("/ready")
                return r if r.status_code == 503 else None

            r = await eventually(not_ready, timeout=20, what="/ready to turn 503")
            body = r.json()
            assert r.headers["content-type"] == "application/problem+json"
            assert body["status"] == 503 and body["state"] == "not-ready"
            assert body["checks"]["broker"] != "ok" or "detached" in body["checks"]["consumers"].values()
            await proxy.start()
            await eventually(lambda: _ok(client), timeout=40, what="/ready to recover")
    finally:
        await proxy.stop()


async def _ok(client) -> bool:
    return (await client.get("/ready")).status_code == 200


def test_the_asyncapi_document_describes_each_queue_and_batched_messages(test_settings):
    """/asyncapi.json is built from the consumers, without a broker connection."""
    from faststream.specification import AsyncAPI

    consumers = EventConsumers("audit")

    @consumers.on("catalog.store.*", name="stores")
    async def stores(env, uow):  # pragma: no cover - never called here
        return None

    messaging = Messaging(test_settings.model_copy(update={"service": "audit"}), None, consumers)
    spec = AsyncAPI(messaging.spec_broker, title="dropslot-audit").to_specification().to_json()
    assert messaging.queue_name(consumers.consumers[0]) in spec
    assert "catalog.store.*" in spec
    assert EVENTS_HEADER in spec and "JSON array" in spec
