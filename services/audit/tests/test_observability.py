"""Traces, metrics and logs, observed from outside against real infrastructure.

- One trace: a request through the gateway, the service that handles it, the outbox relay's
  publish and the consumer of its event share one trace id, each span the child of the last
  hop (in-process gateway and audit service on real ports, real RabbitMQ, in-memory exporter).
- Metrics: an audit service *process* reaches RabbitMQ through a TCP proxy the test cuts; its
  `/metrics` shows the outbox backlog rise while the broker is unreachable and drain after,
  and its `DROPSLOT_TRACE_FILE` shows the relay and the consumer continuing the stored trace.
- Logs: every line the process writes is JSON, uvicorn's own included.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
import uvicorn
from dropslot_audit.main import create_app
from dropslot_contracts import Envelope, TraceContext
from dropslot_contracts.events.catalog import StoreUpdated
from dropslot_gateway.config import Settings as GatewaySettings
from dropslot_gateway.main import Gateway
from dropslot_gateway.server import GatewayServer
from dropslot_kit import context, telemetry
from dropslot_kit.context import CallContext
from dropslot_kit.db import Database, write_outbox
from dropslot_kit.launcher import free_port
from dropslot_kit.settings import KitSettings
from dropslot_kit.testing import delete_namespace, env_for, eventually
from dropslot_kit.testproxy import TcpProxy
from fastapi import APIRouter, Request
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from .conftest import audit_settings


class Served:
    """An ASGI app on a real loopback port, in this process."""

    def __init__(self, app: Any):
        self.port = free_port()
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, lifespan="on",
                                                    log_config=None, access_log=False))
        self.task: asyncio.Task[None] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def __aenter__(self) -> Served:
        self.task = asyncio.create_task(self.server.serve())
        while not self.server.started:
            if self.task.done():
                self.task.result()
                raise RuntimeError("server stopped during start-up")
            await asyncio.sleep(0.05)
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.server.should_exit = True
        if self.task is not None:
            await self.task


# A route only this test adds: a command that commits a change and its event, like any service's.
probe = APIRouter(prefix="/api/v1")


@probe.post("/audit-logs/_probe", status_code=201)
async def emit_probe_event(request: Request) -> dict[str, str]:
    store_id = uuid.uuid4()
    async with request.app.state.rt.db.uow() as uow:
        env = uow.emit(StoreUpdated(store_id=store_id, tenant_key="t", name="traced", slug="traced"),
                       store_id=store_id)
    return {"event_id": str(env.id), "store_id": str(store_id)}


class _UntilModuleEnds(SimpleSpanProcessor):
    """Exports while this module runs, then nothing: OpenTelemetry's tracer provider cannot be
    unset, so later tests in this process still trace, but no span piles up in memory."""

    on = True

    def on_end(self, span: ReadableSpan) -> None:
        if self.on:
            super().on_end(span)


@pytest.fixture(scope="module")
def spans() -> Iterator[InMemorySpanExporter]:
    """Tracing on in this process (the kit's provider, as with an OTLP endpoint)."""
    exporter = InMemorySpanExporter()
    processor = _UntilModuleEnds(exporter)
    was = telemetry._provider
    telemetry.add_span_processor("dropslot-test", processor)
    yield exporter
    processor.on = False
    exporter.clear()
    # The kit's "tracing is on" goes back to what it was: with it on, every later test of this
    # process would take the services' traced paths (FastAPI instead of the direct routes).
    telemetry._provider = was


async def test_one_trace_from_the_gateway_request_to_the_consumer_of_its_event(spans, audit_db, keys):
    signer, jwks = keys
    settings = audit_settings(audit_db, jwks_url=jwks.url)
    app = create_app(settings)  # after tracing is on: the app is instrumented as in production
    app.include_router(probe)
    try:
        async with Served(app) as service:
            gw_settings = GatewaySettings(upstreams={"audit": [service.url]}, jwks_url=jwks.url,
                                          rate_limit_enabled=False, log_json=False)
            async with GatewayServer(Gateway(gw_settings), port=free_port()) as gateway, \
                    httpx.AsyncClient(base_url=gateway.url) as http:
                r = await http.post("/api/v1/audit-logs/_probe")
                assert r.status_code == 201, r.text
                event_id = r.json()["event_id"]

                def consumed() -> ReadableSpan | None:
                    return next((s for s in spans.get_finished_spans() if s.kind == SpanKind.CONSUMER
                                 and s.attributes.get("messaging.message.id") == event_id
                                 and str(s.attributes.get("messaging.destination.name")).endswith(".audit.trail")),
                                None)

                async def check() -> ReadableSpan | None:
                    return consumed()

                consumer = await eventually(check, timeout=30, what="the consumer span of the event")
                # The consumer's work is in the trail too.
                r = await http.get("/api/v1/audit-logs", params={"entity": "store", "entity_id": r.json()["store_id"]},
                                   headers={"Authorization": "Bearer " + signer.token(
                                       roles=[{"code": "platform_admin", "store_id": None}])})
                assert [i["event_id"] for i in r.json()["items"]] == [event_id]
    finally:
        with contextlib.suppress(Exception):
            await delete_namespace(settings)

    finished = spans.get_finished_spans()
    by_id = {s.context.span_id: s for s in finished}
    trace_id = consumer.context.trace_id
    chain = []
    span: ReadableSpan | None = consumer
    while span is not None:
        chain.append(span)
        span = by_id.get(span.parent.span_id) if span.parent is not None else None
    kinds = [(s.kind, s.name) for s in reversed(chain)]
    assert all(s.context.trace_id == trace_id for s in chain)
    # (the test's own instrumented httpx call) -> gateway SERVER -> gateway's upstream CLIENT call
    # -> audit's SERVER span -> ... -> relay PRODUCER -> CONSUMER
    assert kinds[kinds.index((SpanKind.SERVER, "gateway POST audit")):] == [
        (SpanKind.SERVER, "gateway POST audit"),
        (SpanKind.CLIENT, "POST"),  # the gateway's upstream call (its own CLIENT span)
        (SpanKind.SERVER, "POST /api/v1/audit-logs/_probe"),
        (SpanKind.PRODUCER, "publish catalog.store.updated"),  # the outbox relay, later, in another task
        (SpanKind.CONSUMER, "consume catalog.store.updated"),
    ], kinds
    producer = chain[1]
    assert producer.attributes["messaging.message.id"] == event_id


@pytest.fixture
def restored_logging() -> Iterator[None]:
    """setup_logging rewires the root and uvicorn loggers of this process: put them back, so
    later tests do not log into this test's (closed) capture."""
    names = ("", "uvicorn", "uvicorn.error", "uvicorn.access", "uvicorn.asgi")
    saved = [(lg, lg.handlers[:], lg.level, lg.propagate) for lg in (logging.getLogger(n) for n in names)]
    yield
    for lg, handlers, level, propagate in saved:
        lg.handlers[:] = handlers
        lg.setLevel(level)
        lg.propagate = propagate


def test_log_lines_are_json_with_trace_and_request_ids(spans, capsys, restored_logging):
    telemetry.setup_logging("audit", "INFO", as_json=True)
    token = context.set_current(CallContext(request_id="req-123", correlation_id="req-123"))
    try:
        with telemetry.tracer().start_as_current_span("work") as span:
            logging.getLogger("dropslot.test").info("inside a request")
            # uvicorn's own loggers now go through the same JSON handler
            logging.getLogger("uvicorn.error").warning("from uvicorn")
    finally:
        context.reset(token)
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.strip()]
    ours = [line for line in lines if line["msg"] in ("inside a request", "from uvicorn")]
    assert len(ours) == 2
    for line in ours:
        assert line["trace_id"] == f"{span.get_span_context().trace_id:032x}"
        assert line["request_id"] == "req-123" and line["service"] == "audit"


def test_a_background_loop_continues_the_trace_it_stored(spans):
    """What a delivery worker does: store the request's traceparent with the work, continue it
    later in another task; an outbound call inside becomes a child span."""
    with telemetry.tracer().start_as_current_span("request") as request_span:
        stored = telemetry.current_traceparent()
    assert stored is not None and f"{request_span.get_span_context().trace_id:032x}" in stored
    with telemetry.continued_span("deliver webhook", stored, kind=SpanKind.PRODUCER) as later:
        assert telemetry.current_traceparent() != stored  # outbound calls now name this span
    done = {s.context.span_id: s for s in spans.get_finished_spans()}[later.get_span_context().span_id]
    assert done.context.trace_id == request_span.get_span_context().trace_id
    assert done.parent is not None and done.parent.span_id == request_span.get_span_context().span_id
    with telemetry.continued_span("no stored trace", None) as fresh:
        assert fresh.get_span_context().trace_id != request_span.get_span_context().trace_id


def test_reservation_and_webhook_metrics_are_exposed_with_their_labels():
    drop = uuid.uuid4()
    telemetry.record_reservation(drop, accepted=True)
    telemetry.record_reservation(drop, accepted=False, reason="sold-out")
    telemetry.record_webhook_delivery("success", 0.12, event_type="booking.reservation.confirmed")
    text = generate_latest().decode()
    assert f'reservations_total{{drop_id="{drop}",outcome="accepted",reason="",service="audit"}} 1.0' in text
    assert f'reservations_total{{drop_id="{drop}",outcome="refused",reason="sold-out",service="audit"}} 1.0' in text
    assert 'webhook_deliveries_total{event_type="booking.reservation.confirmed",outcome="success",service="audit"}' in text
    assert 'webhook_delivery_duration_seconds_bucket{le="0.25",outcome="success",service="audit"}' in text


# --- a real process behind a broker connection the test can cut ----------------------------------
def metric(text: str, name: str, **labels: str) -> float | None:
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return None


async def test_outbox_backlog_on_metrics_rises_while_the_broker_is_cut_and_drains_after(audit_db, tmp_path):
    settings = audit_settings(audit_db)
    target = urlsplit(settings.rabbit_url)
    proxy = TcpProxy(target.hostname or "127.0.0.1", target.port or 5672)
    await proxy.start()
    trace_file, log_file = tmp_path / "spans.jsonl", tmp_path / "audit.log"
    env = {
        **os.environ, **env_for(settings),
        "DROPSLOT_RABBIT_URL": f"amqp://guest:guest@127.0.0.1:{proxy.port}/",
        "DROPSLOT_TRACE_FILE": str(trace_file), "DROPSLOT_LOG_JSON": "true", "DROPSLOT_LOG_LEVEL": "INFO",
        "DROPSLOT_PUBLISH_TIMEOUT_SECONDS": "2", "DROPSLOT_DB_POOL_SIZE": "3", "DROPSLOT_DB_MAX_OVERFLOW": "2",
    }
    port = free_port()
    proc = spawn_audit(env, port, log_file)
    base = f"http://127.0.0.1:{port}"
    db = Database(KitSettings(**{**settings.model_dump(), "service": "audit"}))
    try:
        async with httpx.AsyncClient(base_url=base, timeout=5) as http:

            async def ready() -> bool:
                assert proc.poll() is None, log_file.read_text()[-3000:]
                with contextlib.suppress(httpx.HTTPError):
                    return (await http.get("/ready")).status_code == 200
                return False

            await eventually(ready, timeout=60, what="the audit process to be ready")

            async def scrape(name: str) -> float | None:
                return metric((await http.get("/metrics")).text, name, service="audit")

            async def backlog_is(n: int) -> bool:
                return await scrape("outbox_backlog") == n

            await eventually(lambda: backlog_is(0), timeout=20, what="an empty outbox at start")
            published_before = await scrape("messages_published_total") or 0.0

            await proxy.stop()  # RabbitMQ is now unreachable for this process only
            trace_id, parent_span = uuid.uuid4().hex, uuid.uuid4().hex[:16]
            traceparent = f"00-{trace_id}-{parent_span}-01"
            envs = [Envelope.wrap(StoreUpdated(store_id=uuid.uuid4(), tenant_key="t", name=f"cut-{i}", slug="s"),
                                  producer="audit", trace=TraceContext(traceparent=traceparent))
                    for i in range(5)]
            async with db.uow() as uow:  # committed by the service while the broker is away
                await write_outbox(uow.conn, envs)

            await eventually(lambda: backlog_is(5), timeout=30, what="the backlog gauge to show 5 waiting events")
            await asyncio.sleep(2.5)  # the oldest event keeps ageing while nothing can be published
            assert await scrape("outbox_backlog") == 5
            assert (await scrape("outbox_oldest_age_seconds") or 0) >= 2

            await proxy.start()  # the broker is back: the relay drains the outbox
            await eventually(lambda: backlog_is(0), timeout=60, what="the backlog to drain after the outage")
            assert (await scrape("messages_published_total") or 0) >= published_before + 5
            assert await scrape("outbox_oldest_age_seconds") == 0

        # The same process consumed them (pattern `#`), continuing the trace stored in the outbox.
        async def consumed_spans() -> list[dict[str, Any]] | None:
            if not trace_file.exists():
                return None
            lines = [json.loads(x) for x in trace_file.read_text().splitlines() if x.strip()]
            found = [s for s in lines if s["trace_id"] == trace_id]
            return found if sum(s["kind"] == "CONSUMER" for s in found) >= 5 else None

        found = await eventually(consumed_spans, timeout=30, what="consumer spans in the trace file")
        producers = {s["span_id"]: s for s in found if s["kind"] == "PRODUCER"}
        assert {s["parent_span_id"] for s in producers.values()} == {parent_span}
        for s in found:
            if s["kind"] == "CONSUMER" and s["attributes"]["messaging.destination.name"].endswith(".audit.trail"):
                assert s["parent_span_id"] in producers
        ids = {str(e.id) for e in envs}
        async with db.uow() as uow:
            rows = (await uow.execute("SELECT event_id FROM audit_logs WHERE event_id = ANY(:ids)",
                                      {"ids": [e.id for e in envs]})).all()
        assert {str(r[0]) for r in rows} == ids
    finally:
        stop_process(proc)
        await proxy.stop()
        await db.dispose()
        with contextlib.suppress(Exception):
            await delete_namespace(settings)

    lines = [line for line in log_file.read_text().splitlines() if line.strip()]
    assert lines, "the process wrote no log lines"
    parsed = [json.loads(line) for line in lines]  # every line is JSON, uvicorn's included
    assert all(p["service"] == "audit" for p in parsed)
    assert any(p["logger"].startswith("uvicorn") for p in parsed)


def spawn_audit(env: dict[str, str], port: int, log_file: Path) -> subprocess.Popen[bytes]:
    """The audit service as `make dev` runs it (uvicorn factory), its output in a file."""
    with open(log_file, "wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "dropslot_audit.main:create_app", "--factory", "--host", "127.0.0.1",
             "--port", str(port), "--log-level", "info", "--no-access-log"],
            env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
        )


def stop_process(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
