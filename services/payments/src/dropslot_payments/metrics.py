"""Prometheus metrics of payments (served on /metrics with the kit's)."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

CALLBACKS = Counter("payments_callbacks_total", "Provider callbacks received",
                    ["provider", "outcome"])  # outcome: new | duplicate | invalid_signature
PROVIDER_CALLS = Counter("payments_provider_calls_total", "Calls to a payment provider",
                         ["provider", "operation", "outcome"])  # ok | state_error | rejected | unavailable
PROVIDER_LATENCY = Histogram("payments_provider_call_seconds", "Latency of provider calls", ["provider", "operation"],
                             buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
MILESTONES = Counter("payments_milestones_total", "Payment milestones (authorized, succeeded, failed, ...)",
                     ["provider", "milestone"])
RECONCILED = Counter("payments_reconciliation_checks_total", "Payments reconciliation asked the provider about",
                     ["outcome"])  # asked | repaired
