"""Use cases for incoming events: keep the local copies current and write PENDING notification
rows. They run inside the consumer's unit of work (with the inbox row), do no network I/O, and
leave rendering and delivery to the sender loop.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from typing import Any

from dropslot_contracts import Envelope
from dropslot_contracts.events import booking, catalog, identity, payments, webhooks
from dropslot_kit.db import UnitOfWork

from ..adapters import repository as repo
from ..domain import messages as msgs
from ..domain.failures import RecipientsNotKnownYet
from ..domain.model import TEMPLATES, Intent, Planner, Preferences

log = logging.getLogger("dropslot.notifications.handlers")


@dataclass(frozen=True)
class HandlerDeps:
    base_url: str
    verify_path: str
    reset_path: str
    planner: Planner


async def notify(uow: UnitOfWork, env: Envelope, intents: list[Intent], deps: HandlerDeps) -> int:
    """Write one PENDING row per intent and channel the user wants (and we can deliver)."""
    if not intents:
        return 0
    users = [i.user_id for i in intents if not TEMPLATES[i.template].account]
    prefs = await repo.preferences_for(uow.conn, users)
    planned = []
    for intent in intents:
        planned.extend(deps.planner.plan(intent, prefs.get(intent.user_id) or Preferences()))
    await repo.insert_notifications(uow.conn, planned, event_id=env.id, event_type=env.type)
    return len(planned)


def _iso(value: Any) -> str | None:
    return value.isoformat() if value is not None else None


# --- identity ------------------------------------------------------------------------------------
async def on_identity(env: Envelope, uow: UnitOfWork, deps: HandlerDeps) -> None:
    ev = env.typed()
    conn, at = uow.conn, env.occurred_at
    if isinstance(ev, identity.UserRegistered):
        await repo.upsert_contact(conn, ev.user_id, email=ev.email, name=ev.name, status=ev.status,
                                  email_verified=ev.email_verified, at=at)
        if ev.verification_token and not ev.email_verified:
            await notify(uow, env, [msgs.verification_intent(
                user_id=ev.user_id, email=ev.email, name=ev.name, token=ev.verification_token,
                expires_at=_iso(ev.verification_expires_at), welcome=True, base_url=deps.base_url,
                path=deps.verify_path,
            )], deps)
    elif isinstance(ev, identity.UserUpdated):
        await repo.upsert_contact(conn, ev.user_id, email=ev.email, name=ev.name, status=ev.status,
                                  email_verified=ev.email_verified, at=at)
    elif isinstance(ev, identity.UserStatusChanged):
        await repo.set_contact_status(conn, ev.user_id, ev.status, at)
        if ev.status == "deleted":  # terminal in identity: forget what we hold about the person
            await repo.forget_user(conn, ev.user_id, at)
    elif isinstance(ev, identity.EmailVerified):
        await repo.mark_contact_verified(conn, ev.user_id, ev.email, ev.name)
    elif isinstance(ev, identity.PasswordChanged):
        # A security notice: account mail, so it goes whatever the preferences say.
        await notify(uow, env, [msgs.password_changed_intent(
            user_id=ev.user_id, email=ev.email, name=ev.name, reason=ev.reason, at=_iso(env.occurred_at),
            base_url=deps.base_url,
        )], deps)
    elif isinstance(ev, identity.EmailVerificationRequested):
        await notify(uow, env, [msgs.verification_intent(
            user_id=ev.user_id, email=ev.email, name=ev.name, token=ev.token, expires_at=_iso(ev.expires_at),
            welcome=False, base_url=deps.base_url, path=deps.verify_path,
        )], deps)
    elif isinstance(ev, identity.RoleGranted | identity.RoleRevoked):
        if ev.code == "store_owner" and ev.store_id is not None:
            await repo.set_store_owner(conn, ev.store_id, ev.user_id, isinstance(ev, identity.RoleGranted), at)
    elif isinstance(ev, identity.PasswordResetRequested):
        await notify(uow, env, [msgs.password_reset_intent(
            user_id=ev.user_id, email=ev.email, name=ev.name, token=ev.token, expires_at=_iso(ev.expires_at),
            base_url=deps.base_url, path=deps.reset_path,
        )], deps)


# --- catalog ----------------------------------------------------------------------------------------
async def on_catalog(env: Envelope, uow: UnitOfWork, deps: HandlerDeps) -> None:
    ev = env.typed()
    conn, at = uow.conn, env.occurred_at
    if isinstance(ev, catalog.StoreCreated | catalog.StoreUpdated):
        await repo.upsert_store(conn, ev.store_id, ev.name, at)
        if isinstance(ev, catalog.StoreCreated):
            await repo.set_store_owner(conn, ev.store_id, ev.owner_user_id, True, at)
        return
    if not isinstance(ev, catalog.DropEvent):
        return
    snap = ev.drop.model_dump(mode="json")
    await repo.upsert_drop(conn, snap, at)
    # A drop published straight into LIVE may not get a separate `live` event; either way each
    # subscriber is told once (take_live_subscribers marks them).
    if isinstance(ev, catalog.DropLive) or (isinstance(ev, catalog.DropPublished) and ev.drop.status == "LIVE"):
        subscribers = await repo.take_live_subscribers(conn, ev.drop.drop_id)
        if subscribers:
            store = snap.get("store_name") or await repo.store_name(conn, ev.drop.store_id)
            view = msgs.drop_view(snap, store, deps.base_url)
            await notify(uow, env, [
                Intent(u, "drop_live", {"drop": view}, dedupe_key=str(ev.drop.drop_id)) for u in subscribers
            ], deps)
            log.info("drop %s is live: %d subscribers to notify", ev.drop.drop_id, len(subscribers))


# --- booking ---------------------------------------------------------------------------------------
_RESERVATION_TEMPLATES: dict[type, str] = {
    booking.ReservationConfirmed: "reservation_confirmed",
    booking.ReservationExpired: "reservation_expired",
    booking.ReservationCancelled: "reservation_cancelled",
    booking.HoldExpiring: "hold_expiring",
}
_WAITLIST_TEMPLATES: dict[type, str] = {
    booking.WaitlistJoined: "waitlist_joined",
    booking.WaitlistOfferMade: "waitlist_offer",
    booking.WaitlistOfferLapsed: "waitlist_offer_lapsed",
}


async def on_booking(env: Envelope, uow: UnitOfWork, deps: HandlerDeps) -> None:
    ev = env.typed()
    conn = uow.conn
    if isinstance(ev, booking.ReservationEvent):
        snap = ev.reservation.model_dump(mode="json")
        await repo.remember_reservation(conn, snap, env.occurred_at)
        template = _RESERVATION_TEMPLATES.get(type(ev))
        if template is None:
            return  # created / checked in: nothing to tell (payments' events follow a paid hold)
        rid = str(ev.reservation.reservation_id)
        extra: dict[str, Any] = {}
        dedupe = rid
        if isinstance(ev, booking.HoldExpiring):
            if ev.final_check:
                return  # booking's prompt for payments to ask the provider, not a reminder
            dedupe = f"{rid}:{ev.reservation.expires_at}"
        elif isinstance(ev, booking.ReservationCancelled):
            if ev.reason == "payment_failed":
                return  # the payment_failed message (from payments) already says so
            extra["cancellation"] = msgs.cancellation(ev.reason, ev.refund)
        drop = await repo.drop_info(conn, ev.reservation.drop_id)
        await notify(uow, env, [msgs.reservation_intent(template, snap, drop, deps.base_url, dedupe=dedupe,
                                                        extra=extra)], deps)
    elif isinstance(ev, booking.WaitlistEvent):
        template = _WAITLIST_TEMPLATES.get(type(ev))
        if template is None:
            return
        entry = ev.entry.model_dump(mode="json")
        dedupe = str(ev.entry.entry_id)
        if template != "waitlist_joined":
            dedupe += f":{ev.entry.offer_expires_at}"
        drop = await repo.drop_info(conn, ev.entry.drop_id)
        reason = ev.reason if isinstance(ev, booking.WaitlistOfferLapsed) else None
        view = msgs.entry_view(entry, drop, deps.base_url, reason=reason)
        await notify(uow, env, [Intent(ev.entry.user_id, template, {"entry": view}, dedupe_key=dedupe)], deps)


# --- payments --------------------------------------------------------------------------------------
async def on_payments(env: Envelope, uow: UnitOfWork, deps: HandlerDeps) -> None:
    ev = env.typed()
    if not isinstance(ev, payments.PaymentFailed | payments.PaymentRefunded):
        return
    conn = uow.conn
    snap = await repo.reservation_snapshot(conn, ev.reservation_id)
    user_id = ev.user_id or (uuid.UUID(str(snap["user_id"])) if snap else None)
    if user_id is None:
        log.warning("%s for reservation %s names no user and no booking event did: nobody to tell",
                    env.type, ev.reservation_id)
        return
    if snap is not None:
        drop = await repo.drop_info(conn, snap.get("drop_id"))
        reservation = msgs.reservation_view(snap, drop, deps.base_url)
    else:
        reservation = msgs.unknown_reservation(ev.reservation_id, deps.base_url)
    if isinstance(ev, payments.PaymentFailed):
        payload = {"reservation": reservation, "payment": {
            "id": str(ev.payment_id), "reason": ev.reason, "amount_cents": ev.amount_cents, "currency": ev.currency,
        }}
        intent = Intent(user_id, "payment_failed", payload, dedupe_key=str(ev.payment_id))
    else:
        payload = {"reservation": reservation, "refund": {
            "refunded_cents": ev.refunded_cents, "total_refunded_cents": ev.total_refunded_cents,
            "currency": ev.currency,
        }}
        intent = Intent(user_id, "refund_issued", payload,
                        dedupe_key=f"{ev.payment_id}:{ev.total_refunded_cents}")
    await notify(uow, env, [intent], deps)


# --- webhooks --------------------------------------------------------------------------------------
async def on_webhooks(env: Envelope, uow: UnitOfWork, deps: HandlerDeps) -> None:
    ev = env.typed()
    conn, at = uow.conn, env.occurred_at
    if isinstance(ev, webhooks.EndpointCreated):
        await repo.upsert_endpoint(conn, ev.endpoint_id, ev.store_id, ev.url, at, description=ev.description,
                                   set_description=True)
    elif isinstance(ev, webhooks.EndpointUpdated):
        await repo.upsert_endpoint(conn, ev.endpoint_id, ev.store_id, ev.url, at)
    elif isinstance(ev, webhooks.EndpointDeleted):
        await repo.forget_endpoint(conn, ev.endpoint_id)
    elif isinstance(ev, webhooks.EndpointDisabled):
        owners = await repo.store_owners(conn, ev.store_id)
        name = await repo.store_name(conn, ev.store_id)
        if not owners or name is None:
            # catalog.store.created may still be on its way (another queue; the owner may already
            # be known from identity's role.granted, the store's name not yet): retried, then
            # dead-lettered for an operator (e.g. a store older than this copy of its owners).
            raise RecipientsNotKnownYet(f"store {ev.store_id} (owner or name) not known yet to tell that webhook "
                                        f"endpoint {ev.endpoint_id} was disabled ({ev.reason})")
        await notify(uow, env, msgs.endpoint_disabled_intents(
            owners, store_id=ev.store_id, store_name=name,
            endpoint_id=ev.endpoint_id, url=ev.url, description=await repo.endpoint_description(conn, ev.endpoint_id),
            reason=ev.reason, failing_since=_iso(ev.failing_since), last_status_code=ev.last_status_code,
            last_error=ev.last_error, disabled_at=_iso(at), base_url=deps.base_url,
        ), deps)
