"""Payment providers by name."""

from __future__ import annotations

from ...config import Settings
from .base import PaymentProvider
from .sandbox import SandboxProvider


def build_providers(settings: Settings) -> dict[str, PaymentProvider]:
    """Every configured provider: payments made earlier with another provider keep working
    after the default (`payments_provider`) changes."""
    providers: dict[str, PaymentProvider] = {}
    if settings.payments_sandbox_enabled:
        providers["sandbox"] = SandboxProvider(settings)
    if settings.stripe_api_key is not None and settings.stripe_webhook_secret is not None:
        from .stripe import StripeProvider

        providers["stripe"] = StripeProvider(settings)
    if settings.payments_provider not in providers:
        raise RuntimeError(
            f"payments provider {settings.payments_provider!r} is not configured "
            "(stripe needs DROPSLOT_STRIPE_API_KEY and DROPSLOT_STRIPE_WEBHOOK_SECRET; "
            "the sandbox needs DROPSLOT_PAYMENTS_SANDBOX_ENABLED=true)"
        )
    return providers
