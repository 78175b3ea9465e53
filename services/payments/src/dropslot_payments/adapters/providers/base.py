"""The provider interface every payment processor adapter implements.

Money moves only through these calls. Every mutating call carries an idempotency key
derived from (reservation, operation), so a retry after a timeout or a crash cannot
charge, capture or refund twice. Callbacks are only a hint that something changed:
callers re-fetch the intent (`retrieve`) and trust that.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from ...domain.payment import IntentSnapshot


class ProviderError(Exception):
    """Base of adapter errors."""


class ProviderUnavailable(ProviderError):
    """Network trouble, rate limits, 5xx: retry later with the same idempotency key."""


class ProviderStateError(ProviderError):
    """The intent is not in a state that allows the call (e.g. cancel while `processing`).
    Not worth retrying as is: re-fetch the intent and decide again."""


class ProviderRejected(ProviderError):
    """A permanent refusal (invalid amount or currency, authentication to the provider...)."""

    def __init__(self, message: str, *, code: str | None = None):
        super().__init__(message)
        self.code = code


class InvalidCallback(ProviderError):
    """The callback's signature (or shape) is not valid; nothing may change."""


@dataclass(frozen=True)
class ProviderEvent:
    """One callback from a provider, already authenticated."""

    id: str
    type: str
    intent_id: str | None
    created: int | None = None
    payload: dict[str, Any] = field(default_factory=dict)
    # Our ids as the provider echoes them back from the intent's metadata.
    metadata: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ProviderRefund:
    id: str
    amount: int
    status: str  # pending | succeeded | failed | canceled


@runtime_checkable
class PaymentProvider(Protocol):
    name: str

    async def create_intent(
        self, amount: int, currency: str, idempotency_key: str, metadata: Mapping[str, str]
    ) -> IntentSnapshot:
        """A manual-capture intent for exactly `amount` minor units of `currency`."""
        ...

    async def retrieve(self, intent_id: str) -> IntentSnapshot: ...

    async def capture(self, intent_id: str, idempotency_key: str) -> IntentSnapshot: ...

    async def cancel(self, intent_id: str, idempotency_key: str) -> IntentSnapshot: ...

    async def refund(self, intent_id: str, amount: int | None, idempotency_key: str) -> ProviderRefund:
        """Refund `amount` (None: everything not yet refunded) of a captured intent."""
        ...

    def verify_and_parse_callback(self, headers: Mapping[str, str], body: bytes) -> ProviderEvent:
        """Authenticate a callback (raises InvalidCallback) and parse it."""
        ...

    async def close(self) -> None: ...
