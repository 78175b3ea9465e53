"""Webhooks settings (environment variables `DROPSLOT_WEBHOOKS_*`)."""

from __future__ import annotations

from dropslot_kit.settings import KitSettings
from pydantic import Field

# Standard Webhooks' recommended schedule: the first attempt at once, then retries after these
# delays (seconds): 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h. Eight attempts over ~28 hours.
DEFAULT_SCHEDULE = [0.0, 5.0, 300.0, 1800.0, 7200.0, 18000.0, 36000.0, 36000.0]


class Settings(KitSettings):
    service: str = "webhooks"

    # Destinations: https only unless allowed; addresses outside the public internet are refused
    # (at creation and again at connect time) unless they fall in one of these CIDRs.
    webhooks_allow_http: bool = False
    webhooks_allowed_networks: list[str] = Field(default_factory=list)

    # Retries: delay before attempt n (the first is 0), multiplied by `retry_scale` (tests use
    # 0.01), each with +/- `retry_jitter` relative jitter. `Retry-After` on 429/503 is honoured
    # (never earlier than the schedule, at most `retry_after_max_seconds`).
    webhooks_retry_schedule_seconds: list[float] = Field(default_factory=lambda: list(DEFAULT_SCHEDULE))
    webhooks_retry_scale: float = 1.0
    webhooks_retry_jitter: float = 0.2
    webhooks_retry_after_max_seconds: float = 86_400.0

    # A failing endpoint is probed this often (scaled like the schedule) with its oldest waiting
    # delivery, so a receiver that comes back gets its backlog within minutes, not hours.
    webhooks_probe_interval_seconds: float = 300.0

    # An endpoint failing continuously this long is disabled (an answer of 410 disables at once).
    webhooks_disable_after_seconds: float = 5 * 86_400.0

    # One attempt: total timeout, and how much of the receiver's answer is kept.
    webhooks_timeout_seconds: float = 15.0
    webhooks_response_body_limit: int = 4096

    # Delivery workers (one loop per replica): attempts in flight per replica, attempts in flight
    # per endpoint across all replicas (1 while the endpoint is failing), the lease on a claimed
    # delivery (must outlast an attempt), and the polling fallback of the NOTIFY wake-up.
    webhooks_max_inflight: int = 256
    webhooks_endpoint_concurrency: int = 32
    webhooks_lease_seconds: float = 120.0
    webhooks_poll_seconds: float = 0.5
    # On shutdown, attempts in flight get this long to finish and be recorded.
    webhooks_shutdown_grace_seconds: float = 5.0

    # Secrets: rotation keeps the old secret signing beside the new one this long (default 24 h).
    webhooks_secret_grace_seconds: float = 86_400.0
    # Keys (base64 of 32 bytes) that encrypt endpoint secrets at rest; the first encrypts, all
    # decrypt (so a key can be rotated). Empty: a key derived from the database password, which
    # is only acceptable on a dev machine (a warning is logged).
    webhooks_secret_keys: list[str] = Field(default_factory=list)

    webhooks_max_endpoints_per_store: int = 20
    # Delivered and failed deliveries (with their attempts) are kept this long.
    webhooks_retention_days: float = 30.0
