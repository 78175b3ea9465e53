"""Payments settings (environment variables `DROPSLOT_<FIELD>`)."""

from __future__ import annotations

from dropslot_kit.settings import KitSettings
from pydantic import SecretStr

# A dev-only default: the sandbox is a fake card processor, its secret protects nothing real.
# Deployments set DROPSLOT_PAYMENTS_SANDBOX_WEBHOOK_SECRET (or disable the sandbox).
DEV_SANDBOX_SECRET = "sbx_whsec_dropslot_dev_only"


class Settings(KitSettings):
    service: str = "payments"
    # Payments is not on the hot path: keep few idle connections (PostgreSQL's slots are shared
    # by every service), burst above that when the ops worker is busy.
    db_pool_size: int = 4
    db_max_overflow: int = 8

    # Provider of new payments: "sandbox" (built in, default) or "stripe".
    payments_provider: str = "sandbox"

    # --- sandbox: a card processor with its own state, living in the payments schema ----------
    payments_sandbox_enabled: bool = True
    payments_sandbox_webhook_secret: SecretStr = SecretStr(DEV_SANDBOX_SECRET)
    # Where the sandbox posts its callbacks; default `{public_base_url}` + the webhook path,
    # i.e. through the gateway, like a real provider.
    payments_sandbox_callback_url: str | None = None
    payments_sandbox_callback_delay_seconds: float = 0.5
    # Chaos a real provider shows: a share of callbacks sent twice, and delivery in random order.
    payments_sandbox_duplicate_rate: float = 0.0
    # ...and a share of callbacks never sent at all (reconciliation must repair those).
    payments_sandbox_drop_rate: float = 0.0
    payments_sandbox_shuffle: bool = False
    payments_sandbox_shuffle_window_seconds: float = 1.0
    # How long a card authorization stays `processing` (the "slow" test card: much longer).
    payments_sandbox_processing_seconds: float = 0.3
    payments_sandbox_slow_processing_seconds: float = 20.0
    payments_sandbox_callback_timeout_seconds: float = 5.0

    # --- stripe (official SDK) ------------------------------------------------------------------
    stripe_api_key: SecretStr | None = None
    stripe_webhook_secret: SecretStr | None = None
    # Only for tests or a local emulator (e.g. stripe-mock); None talks to api.stripe.com.
    stripe_api_base: str | None = None
    stripe_max_network_retries: int = 2
    stripe_timeout_seconds: float = 20.0

    # --- callbacks, provider operations, reconciliation -----------------------------------------
    payments_webhook_tolerance_seconds: int = 300
    payments_ops_concurrency: int = 4
    payments_ops_poll_seconds: float = 1.0
    payments_ops_lease_seconds: float = 30.0
    payments_ops_max_backoff_seconds: float = 60.0
    # An intent in a non-final state unchanged for this long is asked about (then with backoff).
    payments_reconcile_stale_seconds: float = 20.0
    payments_reconcile_interval_seconds: float = 5.0
    payments_reconcile_max_backoff_seconds: float = 3600.0
    payments_reconcile_batch: int = 100

    def sandbox_callback_url(self) -> str:
        if self.payments_sandbox_callback_url:
            return self.payments_sandbox_callback_url
        return self.public_base_url.rstrip("/") + "/api/v1/payments/providers/sandbox/webhook"
