"""The delivery machinery against the real PostgreSQL and real HTTP receivers on loopback:
fan-out, workers, retries, leases, per-endpoint limits, disabling, connect-time SSRF checks.
(The same flows through the broker and the gateway are in test_e2e.py.)"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections import Counter

from aiohttp import web
from dropslot_kit.testing import eventually
from dropslot_webhooks.adapters import repository as repo
from dropslot_webhooks.delivery import DeliveryWorker
from sqlalchemy import text

from .conftest import Harness
from .receiver import Received, Receiver, envelope_of_type, reservation_envelope


async def test_event_is_delivered_signed_with_a_small_body(harness: Harness) -> None:
    rx = await Receiver().start()
    try:
        ep = await harness.endpoint(rx.url)
        env = reservation_envelope(harness.store_id)
        assert await harness.fan_out(env) == 1
        harness.start_worker()
        await eventually(lambda: _count(rx, 1), timeout=20, what="delivery")
        req = rx.requests[0]
        body = req.verify(ep["secret"])
        assert set(body) == {"type", "timestamp", "data"}
        assert body["type"] == "booking.reservation.created"
        assert body["data"]["reservation"]["store_id"] == str(harness.store_id)
        assert req.headers["content-type"] == "application/json"
        [d] = await eventually(lambda: _delivered(harness, ep["id"]), timeout=10, what="delivered")
        assert req.id == str(d["id"]) and d["event_id"] == env.id
    finally:
        await rx.stop()


async def test_fan_out_is_idempotent_and_respects_filters_and_active(harness: Harness) -> None:
    everything = await harness.endpoint("http://127.0.0.1:9/a")
    reservations = await harness.endpoint("http://127.0.0.1:9/b", ["booking.reservation.*"])
    payments = await harness.endpoint("http://127.0.0.1:9/c", ["payments.payment.succeeded"])
    other_store = await harness.endpoint("http://127.0.0.1:9/d", store_id=uuid.uuid4())
    paused = await harness.endpoint("http://127.0.0.1:9/e")
    await harness.svc.update_endpoint(harness_admin(), paused["id"], {"active": False})
    env = reservation_envelope(harness.store_id)
    await harness.fan_out(env)
    await harness.fan_out(env)  # the same event again (a redelivery) adds nothing
    assert await harness.fan_out(envelope_of_type("payments.payment.succeeded", harness.store_id)) == 2
    assert await harness.fan_out(envelope_of_type("booking.refund.requested", harness.store_id)) == 0
    counts = {name: len(await harness.deliveries(ep["id"])) for name, ep in
              (("all", everything), ("res", reservations), ("pay", payments), ("other", other_store),
               ("paused", paused))}
    assert counts == {"all": 2, "res": 1, "pay": 1, "other": 0, "paused": 0}


def harness_admin():  # noqa: ANN201
    from .conftest import ADMIN

    return ADMIN


async def test_receiver_failing_three_times_gets_the_event_on_the_fourth_attempt(harness: Harness) -> None:
    rx = await Receiver(lambda _r, n: web.Response(status=500, text="boom" * 2000) if n <= 3
                        else web.Response(status=200)).start()
    try:
        ep = await harness.endpoint(rx.url)
        await harness.fan_out(reservation_envelope(harness.store_id))
        harness.start_worker()
        await eventually(lambda: _count(rx, 4), timeout=60, what="four attempts")
        [d] = await eventually(lambda: _delivered(harness, ep["id"]), timeout=10, what="delivered")
        attempts = await harness.attempts(d["id"])
        assert [a["status_code"] for a in attempts] == [500, 500, 500, 200]
        assert [a["attempt_number"] for a in attempts] == [1, 2, 3, 4]
        assert len(set(rx.ids())) == 1  # one webhook-id across retries
        assert all(len(a["response_body"]) <= 4096 for a in attempts)
        assert attempts[0]["response_body"].startswith("boomboom")
        # The retries followed the (scaled) schedule: 0.05 s, then 3 s (+/- 20 %).
        gaps = [b.at - a.at for a, b in zip(rx.requests, rx.requests[1:], strict=False)]
        assert gaps[1] >= 2.3, gaps
        endpoint = await harness.svc.get_endpoint(harness_admin(), ep["id"])
        assert endpoint["failing_since"] is None and endpoint["active"]
    finally:
        await rx.stop()


async def test_receiver_down_during_100_events_gets_all_after_it_returns(harness: Harness) -> None:
    rx = Receiver()
    ep = await harness.endpoint(rx.url)  # nothing listens there yet
    harness.start_worker()
    for _ in range(10):
        await harness.fan_out(*(reservation_envelope(harness.store_id) for _ in range(10)))
    rows = await harness.deliveries(ep["id"])
    assert len(rows) == 100

    async def all_tried() -> bool:
        return all(r["attempt_count"] >= 1 for r in await harness.deliveries(ep["id"]))

    await eventually(all_tried, timeout=60, what="every event tried while the receiver is down")
    await rx.start()
    try:
        await eventually(lambda: _unique(rx, 100), timeout=120, what="all 100 events after the receiver returned")
        assert Counter(rx.ids()).most_common(1)[0][1] == 1  # no webhook-id twice
        assert set(rx.ids()) == {str(r["id"]) for r in rows}
        assert all(r.verify(ep["secret"]) for r in rx.requests)
    finally:
        await rx.stop()


async def test_a_failing_endpoint_is_probed_so_its_backlog_flows_soon_after_it_returns(harness: Harness) -> None:
    # Retries an hour apart, probes every second: only a probe can find the receiver back.
    settings = harness.settings.model_copy(update={
        "webhooks_retry_schedule_seconds": [0.0, 3600.0, 3600.0], "webhooks_retry_scale": 1.0,
        "webhooks_probe_interval_seconds": 1.0})
    rx = Receiver()
    ep = await harness.endpoint(rx.url)
    await harness.fan_out(*(reservation_envelope(harness.store_id) for _ in range(5)))
    harness.start_worker(settings)

    async def probed_while_down() -> bool:
        rows = await harness.deliveries(ep["id"])
        return sum(r["attempt_count"] for r in rows) >= 8  # 5 first attempts, then probes

    await eventually(probed_while_down, timeout=30, what="probes while the receiver is down")
    rows = await harness.deliveries(ep["id"])
    # Failed probes do not move a delivery along its schedule: one failure each, retry in an hour.
    assert [r["retry_count"] for r in rows] == [1] * 5
    assert all(r["delivery_status"] == "pending" for r in rows)
    await rx.start()
    try:
        await eventually(lambda: _unique(rx, 5), timeout=15, what="the backlog after the receiver returned")
        await eventually(lambda: _delivered(harness, ep["id"]), timeout=10, what="all delivered")
    finally:
        await rx.stop()


async def test_410_disables_the_endpoint_and_tells_the_owner(harness: Harness) -> None:
    rx = await Receiver(lambda _r, _n: web.Response(status=410)).start()
    try:
        ep = await harness.endpoint(rx.url)
        await harness.fan_out(*(reservation_envelope(harness.store_id) for _ in range(3)))
        harness.start_worker()

        async def disabled() -> dict | None:
            e = await harness.svc.get_endpoint(harness_admin(), ep["id"])
            return e if not e["active"] else None

        e = await eventually(disabled, timeout=20, what="endpoint disabled")
        assert e["disabled_reason"] == "gone"
        sent = len(rx.requests)  # those already in flight when the first 410 came back
        await harness.fan_out(reservation_envelope(harness.store_id))
        await asyncio.sleep(1.0)
        assert sent <= 3 and len(rx.requests) == sent  # nothing more goes to a disabled endpoint
        outbox = await _outbox(harness, "webhooks.endpoint.disabled")
        assert any(o["data"]["endpoint_id"] == str(ep["id"]) and o["data"]["reason"] == "gone" and
                   o["store_id"] == str(harness.store_id) for o in outbox)
        pending = [d for d in await harness.deliveries(ep["id"]) if d["delivery_status"] == "pending"]
        assert len(pending) == 3  # kept (and no new ones): re-enabling the endpoint delivers them
        rx.behaviour = lambda _r, _n: web.Response(status=200)
        await harness.svc.update_endpoint(harness_admin(), ep["id"], {"active": True})
        await eventually(lambda: _unique(rx, 3), timeout=20, what="delivery after re-enabling")
    finally:
        await rx.stop()


async def test_endpoint_failing_longer_than_the_window_is_disabled(harness: Harness) -> None:
    settings = harness.settings.model_copy(update={"webhooks_disable_after_seconds": 1.0})
    rx = await Receiver(lambda _r, _n: web.Response(status=500)).start()
    try:
        ep = await harness.endpoint(rx.url)
        harness.start_worker(settings)
        for _ in range(40):
            await harness.fan_out(reservation_envelope(harness.store_id))
            e = await harness.svc.get_endpoint(harness_admin(), ep["id"])
            if not e["active"]:
                break
            await asyncio.sleep(0.2)
        assert not e["active"] and e["disabled_reason"] == "failing"
        assert any(o["data"]["endpoint_id"] == str(ep["id"]) and o["data"]["reason"] == "failing"
                   for o in await _outbox(harness, "webhooks.endpoint.disabled"))
    finally:
        await rx.stop()


async def test_slow_endpoint_does_not_delay_others_and_keeps_its_concurrency_cap(harness: Harness) -> None:
    async def slow(_r: Received, _n: int) -> web.Response:
        await asyncio.sleep(5)
        return web.Response(status=200)

    slow_rx, fast_rx = await Receiver(slow).start(), await Receiver().start()
    try:
        slow_ep = await harness.endpoint(slow_rx.url)
        fast_ep = await harness.endpoint(fast_rx.url, store_id=uuid.uuid4())
        await harness.fan_out(*(reservation_envelope(harness.store_id) for _ in range(30)))
        # Two replicas' workers share the work, at most 4 attempts in flight per endpoint.
        settings = harness.settings.model_copy(update={"webhooks_endpoint_concurrency": 4})
        harness.start_worker(settings, name="w1")
        harness.start_worker(settings, name="w2")
        await eventually(lambda: _count(slow_rx, 1), timeout=20, what="slow endpoint busy")
        await harness.fan_out(*(reservation_envelope(fast_ep["store_id"]) for _ in range(20)))
        await eventually(lambda: _unique(fast_rx, 20), timeout=20, what="fast endpoint served")
        # Served while the slow endpoint's first attempts were still waiting for their answers.
        assert max(r.at for r in fast_rx.requests) < slow_rx.requests[0].at + 5
        await asyncio.sleep(5.5)
        cap = settings.webhooks_endpoint_concurrency
        assert slow_rx.max_inflight == cap  # across both workers, never more
        assert len(slow_rx.requests) <= 3 * cap
        assert Counter(slow_rx.ids()).most_common(1)[0][1] == 1
        assert slow_ep["id"]
    finally:
        await slow_rx.stop()
        await fast_rx.stop()


async def test_two_workers_never_send_the_same_event_twice(harness: Harness) -> None:
    rx = await Receiver().start()
    try:
        await harness.endpoint(rx.url)
        settings = harness.settings.model_copy(update={"webhooks_endpoint_concurrency": 16})
        for name in ("w1", "w2", "w3"):
            harness.start_worker(settings, name=name)
        for _ in range(4):
            await harness.fan_out(*(reservation_envelope(harness.store_id) for _ in range(50)))
        await eventually(lambda: _unique(rx, 200), timeout=60, what="200 deliveries")
        await asyncio.sleep(0.5)
        assert len(rx.requests) == 200 and len(set(rx.ids())) == 200
        assert rx.max_inflight <= 16
    finally:
        await rx.stop()


async def test_deleting_an_endpoint_mid_delivery_loses_nothing_of_the_others(harness: Harness) -> None:
    async def slow(_r: Received, _n: int) -> web.Response:
        await asyncio.sleep(1.5)
        return web.Response(status=200)

    doomed_rx, other_rx = await Receiver(slow).start(), await Receiver(slow).start()
    try:
        doomed = await harness.endpoint(doomed_rx.url)
        other = await harness.endpoint(other_rx.url, ["booking.reservation.*"])
        await harness.fan_out(*(reservation_envelope(harness.store_id) for _ in range(3)))
        harness.start_worker()
        await eventually(lambda: _count(doomed_rx, 3), timeout=20, what="attempts in flight")
        await harness.svc.delete_endpoint(harness_admin(), doomed["id"])  # while they are in flight
        rows = await eventually(lambda: _delivered(harness, other["id"]), timeout=20, what="the other's outcomes")
        assert len(rows) == 3
        assert [len(await harness.attempts(r["id"])) for r in rows] == [1, 1, 1]
        await harness.fan_out(reservation_envelope(harness.store_id))
        await eventually(lambda: _count(other_rx, 4), timeout=20, what="the worker carries on")
    finally:
        await doomed_rx.stop()
        await other_rx.stop()


async def test_a_stopping_worker_finishes_its_attempts_so_nothing_is_sent_twice(harness: Harness) -> None:
    async def slow(_r: Received, _n: int) -> web.Response:
        await asyncio.sleep(1.0)
        return web.Response(status=200)

    rx = await Receiver(slow).start()
    try:
        ep = await harness.endpoint(rx.url)
        await harness.fan_out(*(reservation_envelope(harness.store_id) for _ in range(5)))
        harness.start_worker(name="old")
        await eventually(lambda: _count(rx, 5), timeout=20, what="attempts in flight")
        await harness.stop_workers()  # a deploy: the replica stops while its attempts are in flight
        rows = await harness.deliveries(ep["id"])
        assert [r["delivery_status"] for r in rows] == ["delivered"] * 5
        harness.start_worker(name="new")
        await asyncio.sleep(1.0)
        assert len(rx.requests) == 5
    finally:
        await rx.stop()


async def test_a_lapsed_lease_is_taken_over_by_another_worker(harness: Harness) -> None:
    rx = await Receiver().start()
    try:
        ep = await harness.endpoint(rx.url)
        await harness.fan_out(reservation_envelope(harness.store_id))
        settings = harness.settings.model_copy(update={"webhooks_timeout_seconds": 0.5,
                                                       "webhooks_lease_seconds": 0.0})
        dead = DeliveryWorker(settings, harness.db, harness.svc.box, name="dies")
        assert len(await dead.claim(10)) == 1  # claimed, then the worker "dies" without sending
        harness.start_worker(settings, name="survivor")
        await asyncio.sleep(2.0)
        assert rx.requests == []  # the lease (6 s here) is still held
        await eventually(lambda: _count(rx, 1), timeout=20, what="delivery after the lease lapsed")
        [d] = await eventually(lambda: _delivered(harness, ep["id"]), timeout=10, what="delivered")
        assert len(await harness.attempts(d["id"])) == 1
    finally:
        await rx.stop()


async def test_retry_after_is_honoured(harness: Harness) -> None:
    rx = await Receiver(lambda _r, n: web.Response(status=503, headers={"Retry-After": "2"}) if n == 1
                        else web.Response(status=200)).start()
    try:
        await harness.endpoint(rx.url)
        await harness.fan_out(reservation_envelope(harness.store_id))
        harness.start_worker()
        await eventually(lambda: _count(rx, 2), timeout=20, what="retry")
        assert rx.requests[1].at - rx.requests[0].at >= 1.9
    finally:
        await rx.stop()


async def test_redirects_are_not_followed(harness: Harness) -> None:
    target = await Receiver().start()
    rx = await Receiver(lambda _r, _n: web.Response(status=302, headers={"Location": target.url})).start()
    try:
        ep = await harness.endpoint(rx.url)
        await harness.fan_out(reservation_envelope(harness.store_id))
        harness.start_worker()
        await eventually(lambda: _count(rx, 2), timeout=20, what="two attempts")
        assert target.requests == []
        [d] = await harness.deliveries(ep["id"])
        assert [a["status_code"] for a in await harness.attempts(d["id"])][:2] == [302, 302]
    finally:
        await rx.stop()
        await target.stop()


async def test_address_is_checked_again_at_connect_time(harness: Harness) -> None:
    """A name that resolved to a public address at creation may resolve to a private one
    later: the worker checks the address it connects to (here `localhost`, with loopback no
    longer allowed, stands for such a name)."""
    rx = await Receiver().start()
    try:
        ep = await harness.endpoint(rx.url)
        async with harness.db.uow() as uow:
            await repo.scope_system(uow.conn)
            await uow.conn.execute(text("UPDATE webhook_endpoints SET url = :u WHERE id = :e"),
                                   {"u": f"http://localhost:{rx.port}/hook", "e": ep["id"]})
        await harness.fan_out(reservation_envelope(harness.store_id), reservation_envelope(harness.store_id))
        harness.start_worker(harness.settings.model_copy(update={"webhooks_allowed_networks": []}))

        async def tried() -> list[dict]:
            rows = await harness.deliveries(ep["id"])
            return [a for r in rows for a in await harness.attempts(r["id"])]

        attempts = await eventually(tried, timeout=20, what="an attempt")
        assert attempts[0]["status_code"] is None and "address not allowed" in attempts[0]["error"]
        await harness.stop_workers()
        # A literal IP is checked before connecting too.
        async with harness.db.uow() as uow:
            await repo.scope_system(uow.conn)
            await uow.conn.execute(text("UPDATE webhook_endpoints SET url = :u WHERE id = :e"),
                                   {"u": rx.url, "e": ep["id"]})
            await uow.conn.execute(text("UPDATE webhook_events SET next_attempt_at = now() WHERE endpoint_id = :e"),
                                   {"e": ep["id"]})
        harness.start_worker(harness.settings.model_copy(update={"webhooks_allowed_networks": []}))

        async def errors() -> list[str]:
            return [a["error"] for a in await tried() if a["error"] and "127.0.0.1" in a["error"]]

        assert "not allowed" in (await eventually(errors, timeout=20, what="literal refused"))[0]
        assert rx.requests == []
    finally:
        await rx.stop()


async def test_postgresql_reads_the_filter_regex_as_python_does(harness: Harness) -> None:
    from dropslot_contracts import all_events
    from dropslot_webhooks.domain import filters

    from .test_domain import FILTERS

    types = [c.TYPE for c in all_events()] + ["a.b.c.d", "booking.x.y.created"]
    async with harness.db.uow() as uow:
        for patterns in FILTERS:
            rx = filters.to_regex(patterns)
            if rx is None:
                continue
            rows = await uow.conn.execute(text("SELECT t FROM unnest(CAST(:ts AS text[])) t WHERE ('.' || t) ~ :rx"),
                                          {"ts": types, "rx": rx})
            assert sorted(r[0] for r in rows) == sorted(t for t in types if filters.wants(patterns, t)), patterns


async def test_rows_are_invisible_without_a_store_scope(harness: Harness) -> None:
    ep = await harness.endpoint("http://127.0.0.1:9/x")
    async with harness.db.uow() as uow:
        assert (await uow.conn.execute(text("SELECT count(*) FROM webhook_endpoints"))).scalar_one() == 0
        await repo.scope_store(uow.conn, uuid.uuid4())
        assert (await uow.conn.execute(text("SELECT count(*) FROM webhook_endpoints"))).scalar_one() == 0
        await repo.scope_store(uow.conn, harness.store_id)
        rows = (await uow.conn.execute(text("SELECT id FROM webhook_endpoints"))).scalars().all()
        assert rows == [ep["id"]]


async def test_secret_is_encrypted_at_rest(harness: Harness) -> None:
    ep = await harness.endpoint("http://127.0.0.1:9/x")
    [row] = await harness.system("SELECT secret FROM webhook_endpoints WHERE id = :e", {"e": ep["id"]})
    assert ep["secret"] not in row["secret"] and ep["secret"][6:] not in row["secret"]
    assert harness.svc.box.decrypt(row["secret"], ep["id"]) == ep["secret"]


# --- helpers -------------------------------------------------------------------------------------
async def _count(rx: Receiver, n: int) -> bool:
    return len(rx.requests) >= n


async def _unique(rx: Receiver, n: int) -> bool:
    return len(set(rx.ids())) >= n


async def _delivered(h: Harness, endpoint_id: uuid.UUID) -> list[dict]:
    rows = await h.deliveries(endpoint_id)
    return rows if rows and all(r["delivery_status"] == "delivered" for r in rows) else []


async def _outbox(h: Harness, event_type: str) -> list[dict]:
    async with h.db.uow() as uow:
        rows = await uow.conn.execute(text("SELECT envelope::text FROM outbox WHERE routing_key = :t"),
                                      {"t": event_type})
        return [json.loads(r[0]) for r in rows]


async def test_delivery_continues_the_trace_of_the_event_that_caused_it(harness: Harness) -> None:
    """One reservation is one trace from the gateway to the webhook delivery: the consumer's
    trace is kept on the delivery row and the worker's send continues it."""
    from dropslot_kit import telemetry
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    telemetry.add_span_processor("webhooks", SimpleSpanProcessor(exporter))
    rx = await Receiver().start()
    try:
        await harness.endpoint(rx.url)
        with telemetry.tracer().start_as_current_span("consume booking.reservation.created") as consume:
            trace_id = consume.get_span_context().trace_id
            assert await harness.fan_out(reservation_envelope(harness.store_id)) == 1
        harness.start_worker()
        await eventually(lambda: _count(rx, 1), timeout=20, what="delivery")

        async def deliver_span():  # noqa: ANN202
            return [s for s in exporter.get_finished_spans() if s.name.startswith("webhook deliver")]

        [span] = await eventually(deliver_span, timeout=10, what="the delivery span")
        assert span.context.trace_id == trace_id
        assert span.parent is not None and span.parent.span_id == consume.get_span_context().span_id
    finally:
        await rx.stop()
