"""Booking's own Prometheus metrics (scraped on /metrics with the kit's)."""

from __future__ import annotations

from typing import Any

from prometheus_client import Counter, Histogram

RESERVE_ATTEMPTS = Counter(
    "booking_reserve_attempts_total", "Reservation attempts by outcome", ["outcome", "reason"]
)
BATCH_SIZE = Histogram(
    "booking_reserve_batch_size", "Requests taken by one reserve transaction (group commit)",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128),
)


def record_reservation(drop_id: Any, accepted: bool, reason: str = "") -> None:
    """One attempt: accepted, or refused with the problem slug as reason. (Per drop would make
    the label set grow with every drop; the drop is in the logs and events.)"""
    RESERVE_ATTEMPTS.labels("accepted" if accepted else "refused", "" if accepted else reason).inc()
