"""Tracing, JSON logs and Prometheus metrics.

Tracing uses the OpenTelemetry SDK when an OTLP endpoint is configured, when
`DROPSLOT_TRACE_FILE` names a file (finished spans as JSON lines: for tests and local
debugging), or when a test installs an exporter; otherwise the API's no-op tracer still
carries incoming trace context along, so propagation costs almost nothing on the hot path.
When tracing is on, outbound HTTP (httpx and aiohttp clients) is instrumented too, so a
call to a provider or a webhook endpoint is a child span that carries `traceparent`.
Sampling follows the SDK's standard `OTEL_TRACES_SAMPLER` / `OTEL_TRACES_SAMPLER_ARG`.

Metrics other services record (names as scraped on `/metrics`):
- `reservations_total{service, drop_id, outcome, reason}` via `record_reservation(...)`
- `webhook_deliveries_total{service, event_type, outcome}` and
  `webhook_delivery_duration_seconds{service, outcome}` via `record_webhook_delivery(...)`

Work done later by a background loop keeps its request's trace with `current_traceparent()`
(store it with the work) and `continued_span(name, traceparent)` (wrap the work in it).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from typing import Any

from opentelemetry import propagate, trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.trace import SpanKind
from prometheus_client import Counter, Gauge, Histogram

from . import context

_provider: TracerProvider | None = None
# The service this process runs as (set by setup_logging/setup_tracing), so the helpers
# below can label their metrics without every caller passing it.
_service = "unknown"

# --- metrics -------------------------------------------------------------------------------------
HTTP_REQUESTS = Counter("http_requests_total", "HTTP requests", ["service", "method", "route", "status"])
HTTP_LATENCY = Histogram(
    "http_request_duration_seconds",
    "HTTP request latency",
    ["service", "method", "route"],
    buckets=(0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
_REQUEST_METRICS: dict[tuple[str, str, str, int], tuple[Any, Any]] = {}


def record_request(service: str, method: str, route: str, status: int, seconds: float) -> None:
    """Count one HTTP request and observe its latency. The two metrics' children are looked up
    once per label set: `labels()` (its lock, its label tuple) on every request was ~2 % of the
    gateway's CPU in a drop storm. Services, methods, routes (templates) and statuses are few; past
    1,024 label sets the lookup is simply not kept."""
    key = (service, method, route, status)
    pair = _REQUEST_METRICS.get(key)
    if pair is None:
        pair = (HTTP_REQUESTS.labels(service, method, route, str(status)), HTTP_LATENCY.labels(service, method, route))
        if len(_REQUEST_METRICS) < 1024:
            _REQUEST_METRICS[key] = pair
    pair[0].inc()
    pair[1].observe(seconds)


MESSAGES_PUBLISHED = Counter("messages_published_total", "Events published by the outbox relay", ["service"])
MESSAGES_CONSUMED = Counter("messages_consumed_total", "Events consumed", ["service", "handler", "outcome"])
CONSUME_BATCH = Histogram(
    "messages_consume_batch_size", "Events handled per consumer transaction", ["service", "handler"],
    buckets=(1, 2, 4, 8, 16, 32, 64, 128),
)
MESSAGES_RETRIED = Counter("messages_retried_total", "Events sent to a retry queue", ["service", "handler"])
MESSAGES_DEAD = Counter("messages_dead_lettered_total", "Events sent to a dead-letter queue", ["service", "handler"])
OUTBOX_BACKLOG = Gauge("outbox_backlog", "Unpublished outbox events", ["service"])
OUTBOX_OLDEST_AGE = Gauge("outbox_oldest_age_seconds", "Age of the oldest unpublished event", ["service"])
# Per drop: a drop has a few hundred to a few thousand seats and lives for days, so the label
# set stays small; `reason` is the problem slug of a refusal (sold-out, limit-reached, ...).
RESERVATIONS = Counter(
    "reservations_total", "Reservation attempts by outcome", ["service", "drop_id", "outcome", "reason"]
)
WEBHOOK_DELIVERIES = Counter(
    "webhook_deliveries_total", "Webhook delivery attempts by outcome", ["service", "event_type", "outcome"]
)
WEBHOOK_LATENCY = Histogram(
    "webhook_delivery_duration_seconds",
    "Time from sending a webhook to the endpoint's answer (or the failure)",
    ["service", "outcome"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)


_RESERVATION_METRICS: dict[tuple[Any, bool, str], Any] = {}


def record_reservation(drop_id: Any, accepted: bool, reason: str = "") -> None:
    """Count one reservation attempt for a drop: `accepted=True`, or refused with the problem slug
    as `reason` (e.g. "sold-out", "limit-reached", "drop-not-live", "slot-closed"). The counter's
    child is looked up once per (drop, outcome), as record_request's: every attempt of a storm
    counts here. Drops come and go, so the lookups kept are dropped all at once past 4,096."""
    key = (drop_id, accepted, reason)
    child = _RESERVATION_METRICS.get(key)
    if child is None:
        if len(_RESERVATION_METRICS) >= 4096:
            _RESERVATION_METRICS.clear()
        child = _RESERVATION_METRICS[key] = RESERVATIONS.labels(
            _service, str(drop_id), "accepted" if accepted else "refused", "" if accepted else reason)
    child.inc()


def record_webhook_delivery(outcome: str, seconds: float, *, event_type: str = "") -> None:
    """One delivery attempt: outcome "success" (2xx), "failure" (other status), "timeout" or
    "error" (connection refused, TLS, ...); `seconds` from sending to the answer or the failure."""
    WEBHOOK_DELIVERIES.labels(_service, event_type, outcome).inc()
    WEBHOOK_LATENCY.labels(_service, outcome).observe(seconds)


# --- tracing -------------------------------------------------------------------------------------
def setup_tracing(service: str, otlp_endpoint: str | None, trace_file: str | None = None) -> None:
    """Turn tracing on when an OTLP endpoint or a trace file (`DROPSLOT_TRACE_FILE`) is given."""
    global _provider, _service
    _service = service
    if _provider is not None:
        return
    trace_file = trace_file or os.environ.get("DROPSLOT_TRACE_FILE") or None
    if not otlp_endpoint and not trace_file:
        return
    provider = _ensure_provider(service)
    if otlp_endpoint:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        endpoint = otlp_endpoint.rstrip("/") + "/v1/traces"
        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint)))
    if trace_file:
        # Synchronous on purpose: a test reads the file right after the request; not for production.
        provider.add_span_processor(SimpleSpanProcessor(JsonLinesSpanExporter(trace_file, service)))


def _ensure_provider(service: str) -> TracerProvider:
    global _provider
    if _provider is None:
        current = trace.get_tracer_provider()
        if isinstance(current, TracerProvider):
            # OpenTelemetry's global provider is set once per process and never replaced: if one
            # was set before (tracing turned on, then off again, as tests do), it is the one.
            _provider = current
        else:
            _provider = TracerProvider(resource=Resource.create({"service.name": service}))
            trace.set_tracer_provider(_provider)
            _instrument_http_clients()
    return _provider


def _instrument_http_clients() -> None:
    """Outbound HTTP becomes child spans carrying `traceparent` (providers, webhook endpoints,
    the gateway's upstream calls). Only when tracing is on: it costs a span per request."""
    try:
        from opentelemetry.instrumentation.aiohttp_client import AioHttpClientInstrumentor
        from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor
    except ImportError:  # pragma: no cover - both are kit dependencies
        return
    if not HTTPXClientInstrumentor().is_instrumented_by_opentelemetry:
        HTTPXClientInstrumentor().instrument()
    if not AioHttpClientInstrumentor().is_instrumented_by_opentelemetry:
        AioHttpClientInstrumentor().instrument()


class JsonLinesSpanExporter(SpanExporter):
    """Appends each finished span as one JSON line; several processes may share the file
    (one `write` per line on an O_APPEND descriptor)."""

    def __init__(self, path: str, service: str):
        self.path = path
        self.service = service
        self._lock = threading.Lock()
        self._fd: int | None = None

    def export(self, spans: Any) -> SpanExportResult:
        lines = []
        for span in spans:
            lines.append(json.dumps(span_to_dict(span, self.service), default=str) + "\n")
        data = "".join(lines).encode()
        with self._lock:
            if self._fd is None:
                self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            os.write(self._fd, data)
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None


def span_to_dict(span: ReadableSpan, service: str | None = None) -> dict[str, Any]:
    ctx = span.get_span_context()
    parent = span.parent
    return {
        "service": service or span.resource.attributes.get("service.name"),
        "name": span.name,
        "kind": span.kind.name,
        "trace_id": f"{ctx.trace_id:032x}" if ctx else None,
        "span_id": f"{ctx.span_id:016x}" if ctx else None,
        "parent_span_id": f"{parent.span_id:016x}" if parent else None,
        "start_ns": span.start_time,
        "end_ns": span.end_time,
        "status": span.status.status_code.name,
        "attributes": dict(span.attributes or {}),
    }


def add_span_processor(service: str, processor: SpanProcessor) -> None:
    """Used by tests (in-memory exporter) and by setup_tracing."""
    _ensure_provider(service).add_span_processor(processor)


def tracer(name: str = "dropslot") -> trace.Tracer:
    return trace.get_tracer(name)


def inject_headers(carrier: dict[str, str] | None = None) -> dict[str, str]:
    carrier = carrier if carrier is not None else {}
    # Without our tracer provider every span is non-recording and nothing would be written:
    # skip the propagators (booking builds two envelopes per reservation, each asking).
    if _provider is not None:
        propagate.inject(carrier)
    return carrier


def extract_context(carrier: Mapping[str, Any]) -> Any:
    return propagate.extract({k: str(v) for k, v in carrier.items() if v is not None})


def current_traceparent() -> str | None:
    """The W3C `traceparent` of the current span, to store with work a background loop does
    later (a webhook delivery row, a provider call queued in a table): the outbox does the same."""
    return inject_headers().get("traceparent")


@contextlib.contextmanager
def continued_span(
    name: str, traceparent: str | None, *, kind: SpanKind = SpanKind.INTERNAL,
    attributes: Mapping[str, Any] | None = None,
) -> Iterator[trace.Span]:
    """Continue a stored trace in a background loop: a span whose parent is `traceparent` (a new
    trace when None). Outbound HTTP inside it becomes its child and carries the trace on."""
    parent = extract_context({"traceparent": traceparent}) if traceparent else None
    with tracer().start_as_current_span(name, context=parent, kind=kind, attributes=dict(attributes or {})) as span:
        yield span


def current_trace_ids() -> tuple[str | None, str | None]:
    span = trace.get_current_span()
    ctx = span.get_span_context()
    if not ctx.is_valid:
        return None, None
    return f"{ctx.trace_id:032x}", f"{ctx.span_id:016x}"


# --- logging -------------------------------------------------------------------------------------
class JsonFormatter(logging.Formatter):
    def __init__(self, service: str):
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        trace_id, span_id = current_trace_ids()
        ctx = context.current()
        out: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "service": self.service,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if trace_id:
            out["trace_id"], out["span_id"] = trace_id, span_id
        if ctx.request_id:
            out["request_id"] = ctx.request_id
        if ctx.correlation_id and ctx.correlation_id != ctx.request_id:
            out["correlation_id"] = ctx.correlation_id
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def setup_logging(service: str, level: str = "INFO", as_json: bool = True) -> None:
    global _service
    _service = service
    handler = logging.StreamHandler(sys.stdout)
    plain = logging.Formatter(f"%(asctime)s {service} %(levelname)s %(name)s %(message)s")
    handler.setFormatter(JsonFormatter(service) if as_json else plain)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # Per-message and per-request INFO lines cost real throughput in a drop; keep them quiet.
    for noisy in ("faststream", "faststream.access", "aio_pika", "aiormq", "uvicorn.access", "httpx"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # uvicorn configured its own plain-text handlers before it loaded the app: route its loggers
    # to ours, so its lines (errors, tracebacks) are JSON with the request and trace ids too.
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access", "uvicorn.asgi"):
        lg = logging.getLogger(name)
        lg.handlers[:] = []
        lg.propagate = True


def tracing_enabled() -> bool:
    return _provider is not None
