"""When to try a delivery again.

`schedule[n]` is the delay before attempt n+1 (`schedule[0]` is the first attempt, normally
0). After the last attempt fails the delivery is given up (owners can replay it).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime


def next_delay(
    failures: int,
    schedule: Sequence[float],
    *,
    scale: float = 1.0,
    jitter: float = 0.0,
    retry_after: float | None = None,
    retry_after_max: float = 86_400.0,
    rand: random.Random | None = None,
) -> float | None:
    """Seconds until the next attempt after `failures` failed attempts in a row, or None when
    the schedule is exhausted. Jitter spreads retries of many deliveries that failed together
    (an endpoint that was down) so they do not return as one burst. A receiver's Retry-After
    pushes the attempt later, never earlier than the schedule."""
    if failures < 1:
        raise ValueError("failures counts failed attempts, at least 1")
    if failures >= len(schedule):
        return None
    delay = max(0.0, schedule[failures] * scale)
    if jitter > 0 and delay > 0:
        r = (rand or random).uniform(-jitter, jitter)
        delay *= 1.0 + r
    if retry_after is not None:
        delay = max(delay, min(retry_after, retry_after_max))
    return delay


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Retry-After is delay-seconds or an HTTP-date (RFC 9110 §10.2.3); None when absent or bad."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())
