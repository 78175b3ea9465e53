"""Booking's own metrics: the group-commit batch size, the reserve transaction's duration, and how
many refused requests' Idempotency-Key lookups share one query.
(Attempts per drop and outcome are the kit's `reservations_total`, `telemetry.record_reservation`.)"""

from __future__ import annotations

from prometheus_client import Histogram

BATCH_SIZE = Histogram(
    "booking_reserve_batch_size", "Requests taken by one reserve transaction (group commit)",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128),
)
RESERVE_TXN = Histogram(
    "booking_reserve_transaction_seconds", "Duration of one reserve transaction (one round trip, commit included)",
    buckets=(0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0),
)
KEY_LOOKUP_BATCH = Histogram(
    "booking_key_lookup_batch_size", "Idempotency-Key lookups of refused requests answered by one query",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512),
)
