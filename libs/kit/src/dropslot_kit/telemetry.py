"""Tracing, JSON logs and Prometheus metrics.

Tracing uses the OpenTelemetry SDK when an OTLP endpoint is configured (or a test
installs an exporter); otherwise the API's no-op tracer still carries incoming trace
context along, so propagation costs almost nothing on the hot path.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Mapping
from typing import Any

from opentelemetry import propagate, trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from prometheus_client import Counter, Gauge, Histogram

from . import context

_provider: TracerProvider | None = None

# --- metrics -------------------------------------------------------------------------------------
HTTP_REQUESTS = Counter("http_requests_total", "HTTP requests", ["service", "method", "route", "status"])
HTTP_LATENCY = Histogram(
    "http_request_duration_seconds",
    "HTTP request latency",
    ["service", "method", "route"],
    buckets=(0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
MESSAGES_PUBLISHED = Counter("messages_published_total", "Events published by the outbox relay", ["service"])
MESSAGES_CONSUMED = Counter("messages_consumed_total", "Events consumed", ["service", "handler", "outcome"])
MESSAGES_RETRIED = Counter("messages_retried_total", "Events sent to a retry queue", ["service", "handler"])
MESSAGES_DEAD = Counter("messages_dead_lettered_total", "Events sent to a dead-letter queue", ["service", "handler"])
OUTBOX_BACKLOG = Gauge("outbox_backlog", "Unpublished outbox events", ["service"])
OUTBOX_OLDEST_AGE = Gauge("outbox_oldest_age_seconds", "Age of the oldest unpublished event", ["service"])


# --- tracing -------------------------------------------------------------------------------------
def setup_tracing(service: str, otlp_endpoint: str | None) -> None:
    global _provider
    if _provider is not None:
        return
    if not otlp_endpoint:
        return
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    provider = _ensure_provider(service)
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=otlp_endpoint.rstrip("/") + "/v1/traces")))


def _ensure_provider(service: str) -> TracerProvider:
    global _provider
    if _provider is None:
        _provider = TracerProvider(resource=Resource.create({"service.name": service}))
        trace.set_tracer_provider(_provider)
    return _provider


def add_span_processor(service: str, processor: SpanProcessor) -> None:
    """Used by tests (in-memory exporter) and by setup_tracing."""
    _ensure_provider(service).add_span_processor(processor)


def tracer(name: str = "dropslot") -> trace.Tracer:
    return trace.get_tracer(name)


def inject_headers(carrier: dict[str, str] | None = None) -> dict[str, str]:
    carrier = carrier if carrier is not None else {}
    propagate.inject(carrier)
    return carrier


def extract_context(carrier: Mapping[str, Any]) -> Any:
    return propagate.extract({k: str(v) for k, v in carrier.items() if v is not None})


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
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(
        JsonFormatter(service) if as_json else logging.Formatter(f"%(asctime)s {service} %(levelname)s %(name)s %(message)s")
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # Per-message and per-request INFO lines cost real throughput in a drop; keep them quiet.
    for noisy in ("faststream", "faststream.access", "aio_pika", "aiormq", "uvicorn.access", "httpx"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def tracing_enabled() -> bool:
    return _provider is not None
