"""What notifications consumes: one queue per source service, bound to exactly the events that
become messages or feed the local copies (so booking's busiest events cost nothing here)."""

from __future__ import annotations

from dropslot_contracts import Envelope
from dropslot_kit.broker import EventConsumers
from dropslot_kit.db import UnitOfWork

from .service import handlers
from .service.handlers import HandlerDeps


def build_consumers(deps: HandlerDeps) -> EventConsumers:
    consumers = EventConsumers("notifications")

    @consumers.on(
        "identity.user.registered", "identity.user.updated", "identity.user.status_changed",
        "identity.user.email_verified", "identity.user.password_changed", "identity.email_verification.requested",
        "identity.password_reset.requested", "identity.role.granted", "identity.role.revoked",
        name="identity",
    )
    async def identity_events(env: Envelope, uow: UnitOfWork) -> None:
        await handlers.on_identity(env, uow, deps)

    @consumers.on("catalog.store.created", "catalog.store.updated", "catalog.drop.*", name="catalog")
    async def catalog_events(env: Envelope, uow: UnitOfWork) -> None:
        await handlers.on_catalog(env, uow, deps)

    @consumers.on(
        "booking.reservation.created", "booking.reservation.confirmed", "booking.reservation.cancelled",
        "booking.reservation.expired", "booking.reservation.expiring",
        "booking.waitlist.joined", "booking.waitlist.offered", "booking.waitlist.lapsed",
        name="booking",
    )
    async def booking_events(env: Envelope, uow: UnitOfWork) -> None:
        await handlers.on_booking(env, uow, deps)

    @consumers.on("payments.payment.failed", "payments.payment.refunded", name="payments")
    async def payments_events(env: Envelope, uow: UnitOfWork) -> None:
        await handlers.on_payments(env, uow, deps)

    @consumers.on(
        "webhooks.endpoint.created", "webhooks.endpoint.updated", "webhooks.endpoint.deleted",
        "webhooks.endpoint.disabled",
        name="webhooks",
    )
    async def webhooks_events(env: Envelope, uow: UnitOfWork) -> None:
        await handlers.on_webhooks(env, uow, deps)

    return consumers
